"""Dataset curation: a curation manifest of videos -> face clips, poses, audio features and an index in
the curated-dataset layout (DESIGN.md) under an output prefix.

Extract (the manifest; videos whose done marker matches their inputs are skipped) -> transform (shards
of videos, one Prefect task each, curated by a pool of Ray actors that keep the face models loaded;
:mod:`facepose.curate` is the per-video unit) -> load (``<out>/results.parquet``, one row a video,
merged after every shard; a summary with clips kept, clips dropped by reason and frames/s).
"""

from __future__ import annotations

import contextvars
import logging
import time
from typing import Any, Optional, Sequence

import tasks.pool  # noqa: E402,F401 - sets Ray's environment defaults before anything imports ray

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from facepose import curate as cu
from facepose import storage
from facepose.config import load_config
from facepose.manifest import curate_result
from tasks.actors import CurateActor
from tasks.common import ProgressCallback, RunProgress, run_on_pool
from tasks.curate import curate_shard, plan_curate, write_results

log = logging.getLogger(__name__)

_progress: contextvars.ContextVar[Optional[ProgressCallback]] = contextvars.ContextVar("facepose_curate_progress", default=None)


def _crashed(row: dict, exc: BaseException) -> dict:
    return curate_result(row["video_id"], "error", error_kind="internal", transient=True, input_digest=row.get("input_digest"),
                         error=f"video {row['video_id']!r}: the curation worker failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); rerun to retry")


@flow(name="curate", log_prints=False)
def curate_flow(manifest: str, out: str, overrides: Optional[list[str]] = None, config_files: Optional[list[str]] = None) -> dict[str, Any]:
    """Curate every video of ``manifest`` (CSV, JSONL or Parquet with ``video_id``, ``video``, optional
    ``audio``, ``start``, ``end``) into the dataset prefix ``out``. ``overrides``: ``key=value`` config
    overrides (``curate.min_face_px=96``). Returns the summary (:func:`facepose.curate.summarize`
    plus ``out``, ``results`` and ``errors``)."""
    logger = get_run_logger()
    t0 = time.perf_counter()

    # Extract: config, manifest, done markers
    cfg = load_config(overrides or [], config_files or [])
    storage.configure(cfg.storage)
    storage.ensure_bucket(out)
    plan = plan_curate(manifest, out, cfg)
    logger.info("%s: %d videos: %d to curate, %d already done, %d bad rows", manifest, plan.total, len(plan.todo), len(plan.done), len(plan.failed))
    for row in plan.failed:
        logger.warning("video %s: %s", row["video_id"], row["error"])
    progress = RunProgress(plan.total, "video_id", _progress.get(), artifact_key="curate-progress", description=f"Curating {manifest} -> {out}")
    for row in plan.done + plan.failed:
        progress.add(row)
    results_uri = cu.results_uri(out)
    write_results(results_uri, plan.done + plan.failed)  # videos a killed run finished, bad rows

    # Transform: shards of videos -> Prefect tasks -> Ray actors; each shard's rows merged as it lands
    t_work = time.perf_counter()
    ran: list[dict] = []
    if plan.todo:
        ran = run_on_pool(
            [v.to_row() for v in plan.todo], cfg=cfg, section=cfg.curate, actor=CurateActor,
            submit_shard=lambda i, videos, pool_key, progress_key: curate_shard.submit(i, videos, out, pool_key, progress_key),
            progress=progress, on_crash=_crashed, on_rows=lambda rows: write_results(results_uri, rows), logger=logger,
        )
    work_s = time.perf_counter() - t_work

    # Load: summary and artifacts
    progress.publish()
    this_run = ran + plan.failed + [dict(r, status="skipped") for r in plan.done]
    summary = cu.summarize(this_run, work_s, sum(int(r["frames"]) for r in ran if r["status"] == "ok"))
    summary.update(
        work_s=work_s, wall_s=time.perf_counter() - t0, out=out, results=results_uri, flow_run_id=str(flow_run.id),
        errors=[{"video_id": r["video_id"], "error": r["error"], "error_kind": r["error_kind"]} for r in this_run if r["status"] == "error"],
    )
    this_run.sort(key=lambda r: (r["status"] != "error", r["video_id"]))
    create_table_artifact(
        table=[{k: r.get(k) for k in ("video_id", "status", "frames", "clips", "kept", "dropped", "elapsed_s", "error")} for r in this_run[:500]],
        key="curate-summary", description=f"Videos of this run: {summary['kept']} clips kept, dropped {summary['dropped'] or 'none'}, {summary['frames_per_s']:.1f} frames/s",
    )
    logger.info("curated %d videos: %d ok, %d failed, %d skipped; %d clips kept, dropped %s; %.1f frames/s",
                summary["videos"], summary["ok"], summary["error"], summary["skipped"], summary["kept"], summary["dropped"] or "none", summary["frames_per_s"])
    return summary


def run_curate(
    manifest: str,
    out: str,
    overrides: Sequence[str] = (),
    progress: Optional[ProgressCallback] = None,
    config_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Curate a manifest as a Prefect flow run (what ``facepose curate`` calls).

    progress: ``progress(done, total, result_row)`` from worker threads as each video finishes.
    Returns the summary: ``videos``, ``ok``, ``error``, ``skipped``, ``clips``, ``kept``, ``dropped``
    ({reason: count}), ``frames``, ``frames_per_s`` (over ``work_s``, the transform stage),
    ``frames_per_worker_s``, ``wall_s``, ``out``, ``results``, ``errors``, ``flow_run_id``."""
    token = _progress.set(progress)
    try:
        return curate_flow(manifest, out, overrides=list(overrides), config_files=[str(f) for f in config_files])
    finally:
        _progress.reset(token)
