"""Orchestration benchmarks of the batch flows (numbers go to BENCHMARKS.md).

1. Overhead: N one-second warp jobs (presets on the astronaut photo) through the render flow (Prefect
   flow run, shards as tasks, Ray actor pool, done markers, results Parquet) against the same renders
   in a plain loop (one process, renderer loaded once), both including each process's imports and model
   load ("cold"; also shown against a warmed-up loop). Overhead at w workers = w * flow time / loop
   time - 1: the worker-seconds the flow spends beyond the loop's (0 % = perfect).
   Also against two cold plain loops at once (the rows dealt out between them: what 2 workers give on
   this machine with no orchestration), and per job: the 2-worker flow on 3N jobs minus N jobs (actor
   start, model load and the flow's fixed costs cancel) against the warm loop's seconds per job.
2. Scaling: flow time with 1 Ray worker / with 2 workers (2.0x = perfect on 2 cores).
3. Curation: frames/s of the curation flow (2 workers) against the curation unit alone in a loop.
4. Reruns from the command line: ``facepose render-batch`` of a 1-job manifest (fresh process: Prefect's
   temporary server, Ray, the render) against a rerun of the 100-job manifest with everything done.
5. Scale of the bookkeeping: planning a manifest of ``--rows`` rows (100,000), and its results
   bookkeeping with simulated result rows (one part a shard, a compaction, the summary), against the
   rendering time those rows account for (at the warm loop's seconds per job).

    python bench/bench_orchestration.py                 # 100 jobs, 6 curation videos of 8 s, 100,000 rows
    python bench/bench_orchestration.py --jobs 20 --videos 2 --video-seconds 2 --rows 10000  # a quick look

Ray starts once (2 CPUs) and Prefect's temporary server once, before any timing; each flow run
still pays for starting its actors, which is part of the overhead measured. The command-line runs come
last, after this process's Ray has shut down. Outputs go to local disk.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_worker_niceness", "0")  # as tasks.pool's local Ray: actors at the loop's priority

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

PRESETS = ["nod", "smile", "head_shake", "idle", "tilt", "listen", "look_around", "surprise", "calm_talk", "lively_talk"]


def write_manifest(path: Path, reference: Path, n: int) -> list[dict]:
    from facepose import manifest as mf

    rows = [{"job_id": f"job{i:04d}", "reference": str(reference), "driver": f"preset:{PRESETS[i % len(PRESETS)]}", "seconds": 1} for i in range(n)]
    mf.write_rows(str(path), rows)
    return rows


def plain_loop(manifest: Path, out: Path, warm: bool) -> float:
    """The same renders in one process, renderer loaded once. ``warm``: after one untimed job."""
    import cv2

    from facepose import manifest as mf
    from facepose.config import Config
    from facepose.render.base import get_renderer
    from facepose.render.job import render_video

    cv2.setNumThreads(1)  # as in the actors: one thread per worker
    rows = mf.read_rows(str(manifest))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = Config()
    renderer = get_renderer("warp", cfg)
    if warm:
        render_video(rows[0]["reference"], rows[0]["driver"], str(out / "warmup.mp4"), seconds=1, cfg=cfg, renderer=renderer)
        t0 = time.perf_counter()
    for r in rows:
        render_video(r["reference"], r["driver"], str(out / f"{r['job_id']}.mp4"), seconds=1, cfg=cfg, renderer=renderer)
    return time.perf_counter() - t0


def cold_loop(manifest: Path, out: Path) -> float:
    """The plain loop as a user runs it: a fresh process (interpreter, imports, model load, renders)."""
    import subprocess

    code = f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_orchestration as b; from pathlib import Path; b.plain_loop(Path({str(manifest)!r}), Path({str(out)!r}), False)"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return time.perf_counter() - t0


def parallel_loops(manifest: Path, out: Path, n: int) -> float:
    """``n`` cold plain loops at once in fresh processes, the manifest's rows dealt out between them: what
    ``n`` workers can do on this machine with no orchestration at all (each loads its own models)."""
    import subprocess

    from facepose import manifest as mf

    rows = mf.read_rows(str(manifest))
    parts = []
    for k in range(n):
        part = out / f"part{k}.csv"
        part.parent.mkdir(parents=True, exist_ok=True)
        mf.write_rows(str(part), rows[k::n])
        parts.append(part)
    code = "import sys; sys.path.insert(0, {b!r}); import bench_orchestration as b; from pathlib import Path; b.plain_loop(Path(sys.argv[1]), Path(sys.argv[2]), False)".format(b=str(ROOT / "bench"))
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(part), str(out / part.stem)], env=dict(os.environ, OMP_NUM_THREADS="1")) for part in parts]
    if any(proc.wait() for proc in procs):
        raise RuntimeError("a plain loop failed")
    return time.perf_counter() - t0


def flow_run(manifest: Path, out: Path, workers: int, shard: int) -> tuple[float, dict]:
    from flows.render import run_render_batch

    t0 = time.perf_counter()
    summary = run_render_batch(str(manifest), str(out), overrides=[f"render.workers={workers}", f"render.shard_size={shard}"])
    wall = time.perf_counter() - t0
    assert summary["ok"] + summary["skipped"] == summary["jobs"], summary["errors"][:3]
    return wall, summary


def cli(*args: str) -> float:
    """Wall time of ``facepose ARGS`` in a fresh process."""
    import subprocess

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "facepose.cli", *args], check=False, capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return time.perf_counter() - t0


def bookkeeping(d: Path, reference: Path, n: int, shard: int) -> dict[str, float]:
    """Plan a manifest of ``n`` rows, then write one simulated result part a shard, compact and summarize."""
    import resource

    from facepose import manifest as mf
    from facepose.batch import get_kind
    from facepose.batch.plan import plan_run
    from facepose.batch.results import iter_shards, write_part
    from facepose.batch.summary import finish, record_plan
    from facepose.config import Config

    manifest = d / "big.csv"
    write_manifest(manifest, reference, n)
    kind, out = get_kind("render", Config()), str(d / "big-out")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    plan = plan_run(kind, str(manifest), out)
    plan_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    record_plan(kind, plan)
    for i, jobs in enumerate(iter_shards(plan.todo, shard)):
        rows = [mf.result_row(j["job_id"], "ok", output=j["output"], frames=24, seconds=1.0, render_s=0.2, input_digest=j["input_digest"]) for j in jobs]
        write_part(kind, out, plan.run_id, f"{i:06d}", rows)
    parts_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    summary = finish(kind, plan, grace_s=0.0, t0=t0)
    finish_s = time.perf_counter() - t2
    assert summary["ok"] == n, summary["ok"]
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t3 = time.perf_counter()
    again = plan_run(kind, str(manifest), out)
    replan_s = time.perf_counter() - t3
    assert not again.todo
    return {"plan_s": plan_s, "parts_s": parts_s, "finish_s": finish_s, "replan_s": replan_s, "rss_mb": (rss1 - rss0) / 1024}


def plan_memory(n: int) -> dict[str, float]:
    """Peak RSS growth of the driver for a manifest of ``n`` rows, in a fresh process: ``--dry-run``
    planning (read, validate, digest), then simulated results for every row (one part a shard),
    compaction, and a rerun plan with everything done. MB over the process after its imports."""
    import json
    import subprocess

    code = f"""
import json, resource, sys, tempfile, time
sys.path.insert(0, {str(ROOT / 'bench')!r})
from pathlib import Path
import bench_orchestration as b
from facepose import manifest as mf
from facepose.batch import get_kind
from facepose.batch.plan import plan_run
from facepose.batch.results import compact, iter_shards, write_part
from facepose.config import Config
from tasks.run import run_batch
from PIL import Image
from skimage import data
d = Path(tempfile.mkdtemp(prefix="bench-rss-"))
Image.fromarray(data.astronaut()).save(d / "a.png")
b.write_manifest(d / "m.csv", d / "a.png", {n})
b.write_manifest(d / "one.csv", d / "a.png", 1)
run_batch("render", str(d / "one.csv"), str(d / "out1"), dry_run=True)  # imports and first-call costs, before the baseline
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
r0 = rss(); t0 = time.perf_counter()
s = run_batch("render", str(d / "m.csv"), str(d / "out"), dry_run=True)
assert s["to_run"] == {n}, s
plan_s, r1 = time.perf_counter() - t0, rss()
kind, out = get_kind("render", Config()), str(d / "out")
plan = plan_run(kind, str(d / "m.csv"), out)
for i, jobs in enumerate(iter_shards(plan.todo, 25)):
    write_part(kind, out, plan.run_id, f"{{i:06d}}", [mf.result_row(j["job_id"], "ok", output=j["output"], frames=24, seconds=1.0, input_digest=j["input_digest"]) for j in jobs])
del plan, jobs
t1 = time.perf_counter(); compact(kind, out, 0.0); compact_s = time.perf_counter() - t1
again = plan_run(kind, str(d / "m.csv"), out)
assert not again.todo and len(again.kept) == {n}
print(json.dumps(dict(plan_s=plan_s, plan_mb=r1 - r0, compact_s=compact_s, all_mb=rss() - r0)))
"""
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT))))
    return json.loads(res.stdout.strip().splitlines()[-1])


def actor_start(workers: int) -> float:
    """Seconds until ``workers`` render actors have loaded their models (as a flow's pool does)."""
    from facepose.config import Config
    from tasks.actor import KindActor
    from tasks.pool import ActorPool

    t0 = time.perf_counter()
    pool = ActorPool(KindActor, ("render", Config(), "/tmp"), workers, on_crash=lambda row, exc: row)
    pool.wait_ready()
    dt = time.perf_counter() - t0
    pool.shutdown()
    return dt


def curation_videos(d: Path, n: int, seconds: float) -> Path:
    from make_examples import espeak, moving_face_frames
    from skimage import data

    from facepose import manifest as mf
    from facepose.media.audio import load_audio
    from facepose.media.video import write_video
    from facepose.timeline import FPS, SAMPLE_RATE

    face = data.astronaut()
    speech = load_audio(espeak("Hello there, this is a benchmark of the curation flow.", d / "s.wav"), sr=SAMPLE_RATE)
    rows = []
    for i in range(n):
        path = d / f"v{i}.mp4"
        write_video(str(path), moving_face_frames(face, seconds, size=256), fps=FPS, audio=speech, sample_rate=SAMPLE_RATE, crf=23)
        rows.append({"video_id": f"v{i}", "video": str(path)})
    mf.write_rows(str(d / "curate.csv"), rows)
    return d / "curate.csv"


def curate_unit(manifest: Path, out: Path) -> tuple[float, int]:
    import cv2

    from facepose import manifest as mf
    from facepose.config import Config
    from facepose.curate import Curator

    cv2.setNumThreads(1)
    cur = Curator(Config())
    jobs, _ = mf.parse_curate_rows(mf.read_rows(str(manifest)))
    cur(jobs[0], str(out / "warmup"))  # imports and first-call costs, untimed
    t0 = time.perf_counter()
    frames = sum(cur(job, str(out)).result["frames"] for job in jobs)
    return time.perf_counter() - t0, frames


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100, help="one-second warp jobs (default 100)")
    p.add_argument("--shard", type=int, default=25, help="jobs per Prefect task")
    p.add_argument("--repeat", type=int, default=1, help="runs of each render configuration, interleaved; the fastest counts (for noisy machines)")
    p.add_argument("--videos", type=int, default=6, help="curation videos")
    p.add_argument("--video-seconds", type=float, default=8.0, help="length of each curation video")
    p.add_argument("--rows", type=int, default=100_000, help="rows of the planning/bookkeeping manifest")
    p.add_argument("--skip-curation", action="store_true", help="leave out the curation section")
    p.add_argument("--plan-memory", type=int, nargs="+", metavar="ROWS",
                   help="only measure the driver's peak RSS planning (--dry-run) manifests of these sizes, then results and a rerun plan")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.plan_memory:
        print("| rows | dry-run plan s | its peak RSS growth MB | compaction s | peak RSS growth after results, compaction, rerun plan MB |")
        print("|---:|---:|---:|---:|---:|")
        for n in args.plan_memory:
            m = plan_memory(n)
            print(f"| {n:,} | {m['plan_s']:.1f} | {m['plan_mb']:.0f} | {m['compact_s']:.2f} | {m['all_mb']:.0f} |", flush=True)
        return 0

    import ray
    from PIL import Image
    from skimage import data

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        d = Path(tmp)
        ref = d / "astronaut.png"
        Image.fromarray(data.astronaut()).save(ref)
        manifest = d / "jobs.csv"
        write_manifest(manifest, ref, args.jobs)

        write_manifest(d / "warm.csv", ref, 2)
        flow_run(d / "warm.csv", d / "warm", 2, 1)  # Prefect's temporary server, imports: untimed

        big = d / "jobs-x3.csv"
        write_manifest(big, ref, 3 * args.jobs)
        cold, warm, par, par_big, flow1, flow1_big, flow2, flow2_big = [], [], [], [], [], [], [], []
        for r in range(args.repeat):  # interleaved, so a burst of outside load hits every configuration
            cold.append(cold_loop(manifest, d / f"cold{r}"))
            warm.append(plain_loop(manifest, d / f"loop{r}", warm=True))
            par.append(parallel_loops(manifest, d / f"par{r}", 2))
            par_big.append(parallel_loops(big, d / f"parx3-{r}", 2))
            flow1.append(flow_run(manifest, d / f"flow1-{r}", 1, args.shard)[0])
            flow1_big.append(flow_run(big, d / f"flow1x3-{r}", 1, args.shard)[0])
            flow2.append(flow_run(manifest, d / f"flow2-{r}", 2, args.shard)[0])
            flow2_big.append(flow_run(big, d / f"flow2x3-{r}", 2, args.shard)[0])
        loop_s = min(warm)
        cold_s, par_s, flow1_s, flow2_s, flow2_big_s = min(cold), min(par), min(flow1), min(flow2), min(flow2_big)
        per_job = 2 * (flow2_big_s - flow2_s) / (2 * args.jobs)  # worker-seconds per extra job, fixed costs cancelled
        par_job = 2 * (min(par_big) - par_s) / (2 * args.jobs)
        solo_job = (min(flow1_big) - flow1_s) / (2 * args.jobs)  # 1 worker: the flow process has the other core
        rerun_s, s3 = flow_run(manifest, d / "flow2-0", 2, args.shard)  # everything done: planning only
        cpu0 = time.process_time()
        _, last = flow_run(manifest, d / "where", 2, args.shard)  # where a 2-worker run's time goes
        driver_cpu = time.process_time() - cpu0  # this process: the flow, its shard threads, Ray's driver threads
        start_s = actor_start(2)

        write_manifest(d / "one.csv", ref, 1)
        book = bookkeeping(d, ref, args.rows, args.shard)

        if not args.skip_curation:
            (d / "videos").mkdir()
            cm = curation_videos(d / "videos", args.videos, args.video_seconds)
            unit_s, unit_frames = curate_unit(cm, d / "unit")
            from flows.curate import run_curate

            t0 = time.perf_counter()
            cs = run_curate(str(cm), str(d / "dataset"), overrides=["curate.workers=2", "curate.shard_size=2"])
            cflow_s = time.perf_counter() - t0
        ray.shutdown()  # the command line starts its own Ray: this one would only compete with it
        one_cli = cli("render-batch", str(d / "one.csv"), "-o", str(d / "cli-one"))
        noop_cli = cli("render-batch", str(manifest), "-o", str(d / "flow2-0"))

    video_s = args.jobs * 1.0
    print(f"## Orchestration ({args.jobs} one-second warp jobs, shards of {args.shard}, 2 CPUs, local disk, best of {args.repeat})\n")
    print("| run | wall s | jobs/s | overhead vs cold loop | vs warm loop |")
    print("|---|---:|---:|---:|---:|")
    print(f"| plain loop, fresh process (imports, model load, renders) | {cold_s:.1f} | {args.jobs / cold_s:.2f} | - | - |")
    print(f"| plain loop, warm (renders only) | {loop_s:.1f} | {args.jobs / loop_s:.2f} | - | - |")
    print(f"| flow, 1 Ray worker | {flow1_s:.1f} | {args.jobs / flow1_s:.2f} | {flow1_s / cold_s - 1:+.1%} | {flow1_s / loop_s - 1:+.1%} |")
    print(f"| flow, 2 Ray workers (x2 worker-seconds) | {flow2_s:.1f} | {args.jobs / flow2_s:.2f} | {2 * flow2_s / cold_s - 1:+.1%} | {2 * flow2_s / loop_s - 1:+.1%} |")
    print(f"| no orchestration: 2 plain loops at once, fresh processes (x2 worker-seconds) | {par_s:.1f} | {args.jobs / par_s:.2f} | {2 * par_s / cold_s - 1:+.1%} | {2 * par_s / loop_s - 1:+.1%} |")
    print(f"| rerun, all done (skips {s3['skipped']}) | {rerun_s:.1f} | - | - |")
    print(f"\nScaling 1 -> 2 workers: {flow1_s / flow2_s:.2f}x; 2 workers vs the cold loop: {cold_s / flow2_s:.2f}x; "
          f"video rendered: {video_s:.0f} s in {flow2_s:.1f} s wall (2 workers).\n")
    print(f"Per job at 2 workers, fixed costs cancelled ({3 * args.jobs} jobs minus {args.jobs}): the flow {per_job:.3f} worker-s "
          f"({flow2_big_s:.1f} s - {flow2_s:.1f} s), 2 plain loops at once {par_job:.3f} ({min(par_big):.1f} s - {par_s:.1f} s), "
          f"one warm loop {loop_s / args.jobs:.3f} s. **Per-job overhead of the flow over plain loops on the same 2 cores: "
          f"{per_job / par_job - 1:+.1%}**; over one loop on one core {per_job / (loop_s / args.jobs) - 1:+.1%}, of which running two "
          f"processes at once costs {par_job / (loop_s / args.jobs) - 1:+.1%} with no orchestration. Fixed cost of a 2-worker run over "
          f"2 plain loops: {flow2_s - par_s:+.1f} s wall.\n")
    print(f"With the flow process on a core of its own (1 worker, {3 * args.jobs} jobs minus {args.jobs}): {solo_job:.3f} s a job, "
          f"**{solo_job / (loop_s / args.jobs) - 1:+.1%} over the warm loop**. The flow process used {driver_cpu:.1f} s of CPU in a "
          f"2-worker run of {args.jobs} jobs ({1000 * driver_cpu / args.jobs:.0f} ms a job; Prefect's server and Ray's daemons come on top), "
          f"CPU the 2 workers lose when they share its 2 cores.\n")
    print(f"Where a 2-worker run's {last['wall_s']:.1f} s go: planning and results before work {last['wall_s'] - last['work_s']:.1f} s "
          f"(of which the summary and compaction after it), transform stage {last['work_s']:.1f} s (2 actors starting and loading "
          f"their models: {start_s:.1f} s; renders at the warm loop's pace: {loop_s / 2:.1f} s).\n")
    print("## Reruns from the command line\n")
    print(f"`facepose render-batch` of a 1-job manifest (fresh process): {one_cli:.1f} s; a rerun of the {args.jobs}-job manifest with "
          f"everything done: {noop_cli:.2f} s ({noop_cli / one_cli:.0%} of the 1-job run).\n")
    render_s = args.rows * loop_s / args.jobs
    keep = book["parts_s"] + book["finish_s"]
    print(f"## Bookkeeping at {args.rows:,} rows (local disk)\n")
    print("| step | s |")
    print("|---|---:|")
    print(f"| plan (read, validate, digest {args.rows:,} rows; no results yet) | {book['plan_s']:.1f} |")
    print(f"| write {args.rows // args.shard:,} result parts (simulated rows) | {book['parts_s']:.1f} |")
    print(f"| summary and compaction into results.parquet (once) | {book['finish_s']:.1f} |")
    print(f"| rerun plan (everything done) | {book['replan_s']:.1f} |")
    print(f"\nBookkeeping {keep:.1f} s against {render_s:,.0f} s of rendering at the warm loop's pace: {keep / render_s:.2%}; "
          f"the driver's peak RSS grew {book['rss_mb']:.0f} MB.\n")
    if args.skip_curation:
        return 0
    print(f"## Curation ({args.videos} videos x {args.video_seconds:g} s at 24 fps, 256x256, speech audio)\n")
    print("| run | frames | wall s | frames/s |")
    print("|---|---:|---:|---:|")
    print(f"| unit alone, 1 process | {unit_frames} | {unit_s:.1f} | {unit_frames / unit_s:.1f} |")
    print(f"| flow, 2 Ray workers (wall incl. planning, actor start) | {cs['frames']} | {cflow_s:.1f} | {cs['frames'] / cflow_s:.1f} |")
    print(f"| flow, 2 Ray workers (its transform stage) | {cs['frames']} | {cs['work_s']:.1f} | {cs['frames_per_s']:.1f} |")
    print(f"\nPer worker inside the flow: {cs['frames_per_worker_s']:.1f} frames/s (the unit alone: {unit_frames / unit_s:.1f}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
