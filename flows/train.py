"""Training: the diffusion model (stage 1 or 2) or Audio2Pose on a curated dataset, data-parallel with
Ray Train, checkpoints in storage (local or ``s3://``).

Extract (the training config, the dataset's usable clips, a write check of the checkpoint storage:
bad input fails here, before any worker starts) -> transform (``TorchTrainer`` with
``cfg.scaling.num_workers`` workers; :func:`facepose.train.step.fit` on each) -> load (the run's metric
history, checkpoints and validation renders; a summary table artifact).

A run lives in ``<output>/<name>/``: ``clips.parquet`` (the clips it trains on, listed once for all
workers), ``checkpoint_<step>/`` folders (``pipeline/``, which
:func:`facepose.render.diffusion.checkpoint.load_pipeline` loads, or ``audio2pose/``, the Audio2PoseNet save_pretrained folder that ``audio2pose.checkpoint`` takes; and
``state.pt``), ``validation/step_<step>.mp4`` and ``metrics.jsonl``. Running the same ``name`` again
resumes it from its latest checkpoint (the step counter and the optimizer state carry on);
``resume_from`` starts a new run from any checkpoint.

Locally: ``run_train(["stage1", "tiny"], ["data.dataset=..."])`` starts Ray on this machine. On a
cluster: set ``RAY_ADDRESS`` (and ``PREFECT_API_URL``), or deploy with ``prefect.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Optional, Sequence

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

import tasks.pool  # noqa: F401 - Ray's environment defaults before anything imports ray
from facepose import storage
from facepose.config import load_config
from facepose.errors import StorageError
from facepose.train.config import TrainConfig, load_train_config, split_overrides
from facepose.train.step import AUDIO2POSE_DIR, PIPELINE_DIR, latest_checkpoint_uri
from tasks.pool import STORAGE_ENV, ray_session
from tasks.train import check_inputs, check_resources, fit_on_ray, write_clips

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, dict], None]  # (step, steps, the metric row)


def new_run_name(cfg: TrainConfig) -> str:
    stage = f"-stage{cfg.stage}" if cfg.kind == "diffusion" else ""
    return f"{cfg.kind}{stage}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def output_root(output: str) -> str:
    """Local outputs as absolute paths (Ray Train needs them); URIs as they are."""
    return output.rstrip("/") if storage.is_remote(output) else os.path.abspath(storage.parse(output).path)


def check_writable(storage_path: str, filesystem: Any, run_uri: str, name: str) -> None:
    """Write and delete a probe file in the run folder, through the filesystem Ray Train will use.
    Raises StorageError naming the URI when that fails."""
    import pyarrow.fs

    fs = filesystem or pyarrow.fs.LocalFileSystem()
    folder = f"{storage_path}/{name}"
    probe = f"{folder}/.facepose-write-check"
    try:
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, ValueError) as e:
        raise StorageError(f"checkpoint storage {run_uri} is not writable ({str(e).splitlines()[0][:160]}); "
                           "set output= to a folder or bucket this job can write") from None


def read_history(run_uri: str) -> list[dict[str, Any]]:
    uri = storage.join(run_uri, "metrics.jsonl")
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]


def summarize(cfg: TrainConfig, name: str, run_uri: str, checkpoint: Optional[str], history: list[dict[str, Any]],
              clips: int, wall_s: float) -> dict[str, Any]:
    """The run's summary: where its checkpoint and model are, its metrics, what it skipped."""
    model = None
    if checkpoint:
        model = storage.join(checkpoint, PIPELINE_DIR if cfg.kind == "diffusion" else AUDIO2POSE_DIR)
    last = history[-1] if history else {}
    losses = [r["loss"] for r in history]
    k = max(1, len(losses) // 5)
    rates = [r["samples_per_s"] for r in history[1:]] or [r["samples_per_s"] for r in history]
    validation = sorted(u for u in storage.listdir(storage.join(run_uri, "validation")) if u.endswith(".mp4"))
    return {
        "name": name, "run": run_uri, "kind": cfg.kind, "stage": cfg.stage if cfg.kind == "diffusion" else None,
        "steps": int(last.get("step", 0)), "checkpoint": checkpoint, "model": model, "clips": clips,
        "workers": cfg.scaling.num_workers, "loss_first": sum(losses[:k]) / k if losses else None,
        "loss_last": sum(losses[-k:]) / k if losses else None,
        "samples_per_s": sum(rates) / len(rates) if rates else None,
        "skipped_clips": int(last.get("skipped_clips", 0)), "validation": validation, "history": history, "wall_s": wall_s,
    }


@flow(name="train", log_prints=False)
def train_flow(configs: Optional[list[str]] = None, overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """Train from ``configs`` (names in ``configs/train/`` or YAML paths, merged in order; default
    ``["stage1"]``) and ``key=value`` overrides (``data.dataset=s3://ds``, ``steps=2000``,
    ``scaling.num_workers=8``; ``storage.*`` and ``batch.*`` go to the run config).
    Returns the summary (:func:`summarize`)."""
    logger = get_run_logger()
    t0 = time.perf_counter()

    # Extract: config, the dataset's clips, a writable checkpoint storage
    train_overrides, run_overrides = split_overrides(overrides or [])
    cfg = load_train_config(configs or ["stage1"], train_overrides)
    run_cfg = load_config(run_overrides)
    storage.configure(run_cfg.storage)
    name = cfg.name or new_run_name(cfg)
    output = output_root(cfg.output)
    run_uri = storage.join(output, name)
    inputs = check_inputs(cfg, run_uri)
    storage_path, filesystem = storage.arrow_filesystem(output)
    check_writable(storage_path, filesystem, run_uri, name)
    clips_uri = write_clips(storage.join(run_uri, "clips.parquet"), inputs["clips"])
    logger.info("training %s%s on %s (%d clips) with %d worker(s) into %s", cfg.kind, f" stage {cfg.stage}" if cfg.kind == "diffusion" else "",
                cfg.data.dataset, len(inputs["clips"]), cfg.scaling.num_workers, run_uri)

    # Transform: Ray Train workers run facepose.train.step.fit
    env = {k: os.environ[k] for k in STORAGE_ENV if os.environ.get(k)}
    with ray_session(run_cfg.batch):
        if not (os.environ.get("RAY_ADDRESS") or run_cfg.batch.ray_address):  # a local Ray: no autoscaler adds nodes
            check_resources(cfg)
        result = fit_on_ray(cfg, name, run_uri, clips_uri, storage_path, filesystem, inputs["resume_from"], asdict(run_cfg.storage), env)

    # Load: metrics, checkpoint and validation renders of the run
    checkpoint = None
    if getattr(result, "checkpoint", None) is not None:
        path = result.checkpoint.path
        checkpoint = f"s3://{path}" if storage.is_remote(output) else path
    checkpoint = checkpoint or latest_checkpoint_uri(run_uri)
    summary = summarize(cfg, name, run_uri, checkpoint, read_history(run_uri), len(inputs["clips"]), time.perf_counter() - t0)
    create_table_artifact(
        table=[{k: r.get(k) for k in ("step", "loss", "lr", "samples_per_s", "skipped_clips")} for r in summary["history"][-500:]],
        key="train-metrics", description=f"Run {name}: {summary['steps']} steps, checkpoint {checkpoint}, model {summary['model']}",
    )
    logger.info("run %s: %d steps, loss %.4f -> %.4f, %.1f samples/s, %d clips skipped; model %s", name, summary["steps"],
                summary["loss_first"] or 0.0, summary["loss_last"] or 0.0, summary["samples_per_s"] or 0.0, summary["skipped_clips"], summary["model"])
    return summary


def run_train(configs: Sequence[str] = ("stage1",), overrides: Sequence[str] = (), progress: Optional[ProgressFn] = None) -> dict[str, Any]:
    """Train as a Prefect flow run (what ``facepose train`` calls).

    configs: names in ``configs/train/`` or YAML paths, merged in order (``["stage2", "tiny"]``);
    overrides: ``key=value`` (``data.dataset=s3://ds``, ``output=s3://runs``, ``name=anna-v1`` to name
    or resume a run); progress: ``progress(step, steps, metrics)`` as metric rows appear.
    Returns the summary: ``name``, ``run``, ``checkpoint``, ``model``, ``steps``, ``loss_first``,
    ``loss_last``, ``samples_per_s``, ``skipped_clips``, ``validation``, ``history``, ``wall_s``."""
    train_overrides, run_overrides = split_overrides(list(overrides))
    cfg = load_train_config(list(configs), train_overrides)
    overrides = list(overrides)
    if cfg.name is None:
        cfg = replace(cfg, name=new_run_name(cfg))
        overrides.append(f"name={cfg.name}")
    stop = threading.Event()
    watcher = None
    if progress is not None:
        run_uri = storage.join(output_root(cfg.output), cfg.name)
        watcher = threading.Thread(target=_watch, args=(run_uri, cfg.steps, progress, stop), daemon=True, name="train-progress")
        watcher.start()
    try:
        return train_flow(list(configs), overrides)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=5)


def _watch(run_uri: str, steps: int, progress: ProgressFn, stop: threading.Event, every_s: float = 2.0) -> None:
    """Call ``progress`` for each new metric row of the run (polls ``metrics.jsonl``)."""
    seen = 0
    while True:
        final = stop.wait(every_s)
        try:
            rows = read_history(run_uri)
        except Exception:  # noqa: BLE001 - progress is best effort; the flow reports real errors
            rows = []
        for row in rows[seen:]:
            progress(int(row["step"]), steps, row)
        seen = max(seen, len(rows))
        if final:
            return
