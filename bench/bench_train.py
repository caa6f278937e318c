"""Training throughput at tiny size on CPU: samples/s per Ray Train worker, and scaling from 1 to 2 workers.

Curates two short talking-face videos (skimage's astronaut moving along a known path, 1.5 s and 2 s,
128 px crops) with facepose.curate into a temporary dataset, starts a local Ray with one CPU per worker,
then runs the training flow (``configs/train/stage1.yaml`` + ``tiny.yaml``: 64x64 frames, tiny models,
one torch thread per worker, data decoded in the training process) with 1 worker, then 2. Samples/s are
the flow's own metrics (the samples of the steps between two reports over their wall time, summed over
workers), averaged over the reports after ``--warmup`` steps; worker start-up, the reports themselves and
the final checkpoint are not counted.
Scaling = samples/s with N workers / samples/s with 1.

    .venv/bin/python bench/bench_train.py [--steps 40] [--batch-size 2] [--workers 1,2] [--stage 1] [--frames 1]
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback (docs/environment.md, "Ray")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")  # reports do not wait 2 s each
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests.fixtures_batch


def make_dataset(work: Path) -> str:
    """Two curated talking-face clips (36 and 48 frames at 24 fps, 128 px) under ``work/ds``."""
    from skimage import data

    from facepose import curate as cu
    from facepose.config import load_config
    from facepose.manifest import CurateJob
    from tests.fixtures_batch import write_face_video

    photo = np.ascontiguousarray(data.astronaut())
    curator = cu.Curator(load_config(["curate.clip_size=128"]))
    for i, vid in enumerate(("a", "b")):
        video = write_face_video(work / f"{vid}.mp4", photo, seconds=1.5 + 0.5 * i, amplitude=0.05 + 0.02 * i)
        result = curator(CurateJob(vid, video), str(work / "ds")).result
        if result["status"] != "ok":
            raise SystemExit(f"curation failed: {result['error']}")
    return str(work / "ds")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=2, help="samples per worker per step")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--stage", type=int, default=1, choices=(1, 2))
    p.add_argument("--frames", type=int, default=0, help="target frames per sample (default 1 in stage 1, 4 in stage 2)")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the average")
    p.add_argument("--log-every", type=int, default=5, help="steps per metric report (each report syncs the workers)")
    p.add_argument("--dataset", default=None, help="a curated dataset prefix (default: make a tiny one)")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    frames = args.frames or (1 if args.stage == 1 else 4)

    import ray

    logging.basicConfig(level=logging.WARNING)
    ray.init(num_cpus=max(counts), include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    from flows.train import run_train

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        dataset = args.dataset or make_dataset(Path(tmp))
        for n in counts:
            t0 = time.perf_counter()
            summary = run_train([f"stage{args.stage}", "tiny"], [
                f"data.dataset={dataset}", f"output={tmp}/runs", f"name=bench-{n}-{int(time.time())}", f"steps={args.steps}",
                f"batch_size={args.batch_size}", f"data.num_frames={frames}", f"checkpoint_every={args.steps}", "validate_every=0",
                f"log_every={args.log_every}", f"scaling.num_workers={n}", "scaling.cpus_per_worker=1",
            ])
            # rows after the warm-up; the last one (it saves the checkpoint) is left out
            steady = [r for r in summary["history"] if r["step"] > args.warmup and r["step"] < args.steps]
            rate = float(np.mean([r["samples_per_s"] for r in steady]))
            rows.append((n, rate, rate / n, n * args.batch_size / rate, time.perf_counter() - t0))
    ray.shutdown()

    base = rows[0][1]
    print(f"\n### Training throughput, stage {args.stage}, tiny (64x64, {frames} target frame(s)/sample), CPU\n")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.steps} steps, {args.batch_size} samples/worker/step, "
          f"reports every {args.log_every} steps, mean after step {args.warmup}; gloo, 1 CPU and 1 torch thread per worker\n")
    print("| workers | samples/s | samples/s per worker | s/step | scaling vs 1 worker | run wall s (incl. start-up) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, rate, per, step_s, wall in rows:
        print(f"| {n} | {rate:.2f} | {per:.2f} | {step_s:.3f} | {rate / base:.2f}x | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
