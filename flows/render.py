"""Batch rendering: a render manifest -> mp4s at their output URIs and a results Parquet.

Extract (the manifest, earlier results and done markers) -> transform (shards of jobs, one Prefect task
each, rendered by a pool of Ray actors that keep the renderer loaded) -> load (results merged into
``<out>/results.parquet``, one row a job, after every shard; a summary table artifact).

Reruns are idempotent by job_id and input digest: ok jobs with unchanged inputs are skipped, jobs whose
inputs changed render again, failed jobs rerun with ``retry_failed`` (transient storage failures always
rerun). A run killed midway loses nothing: each finished job's done marker is picked up by the next run.

Locally: ``run_render_batch(manifest, out)`` starts Ray on this machine (Prefect runs without a server).
On a cluster: set ``RAY_ADDRESS`` and ``PREFECT_API_URL``, or deploy with ``prefect.yaml``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Any, Optional, Sequence

import tasks.pool  # noqa: E402,F401 - sets Ray's environment defaults before anything imports ray

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from facepose import manifest as mf
from facepose import storage
from facepose.config import load_config
from tasks.actors import RenderActor
from tasks.common import ProgressCallback, RunProgress, run_on_pool
from tasks.pool import ray_session
from tasks.render import plan_render, render_shard, write_results

log = logging.getLogger(__name__)

# The caller's progress callback (not a flow parameter: parameters must be plain data).
_progress: contextvars.ContextVar[Optional[ProgressCallback]] = contextvars.ContextVar("facepose_render_progress", default=None)

TABLE_ROWS = 500  # rows of the summary table artifact (errors first)


def _crashed(row: dict, exc: BaseException) -> dict:
    """The result of a job whose actor process died (or a pool that shut down under it)."""
    return mf.result_row(row["job_id"], "error", output=row.get("output"), input_digest=row.get("input_digest"), error_kind="internal",
                         error=f"job {row['job_id']!r}: the render worker failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); rerun to retry",
                         transient=True)


@flow(name="render-batch", log_prints=False)
def render_flow(
    manifest: str,
    out: str,
    overrides: Optional[list[str]] = None,
    retry_failed: bool = False,
    config_files: Optional[list[str]] = None,
) -> dict[str, Any]:
    """Render every job of ``manifest`` (CSV, JSONL or Parquet; a path or s3:// URI) under the output
    prefix ``out``.

    overrides: ``key=value`` config overrides (``render.workers=4``, ``render.backend=diffusion``);
    retry_failed: rerun jobs that failed before with the same inputs; config_files: YAML files merged
    onto the config. Returns the summary (see :func:`summarize`)."""
    logger = get_run_logger()
    t0 = time.perf_counter()

    # Extract: config, manifest, earlier results
    cfg = load_config(overrides or [], config_files or [])
    storage.configure(cfg.storage)
    storage.ensure_bucket(out)
    plan = plan_render(manifest, out, cfg, retry_failed)
    results_uri = mf.results_uri(out, cfg)
    logger.info("%s: %d jobs: %d to render, %d already done, %d bad rows", manifest, plan.total, len(plan.todo), len(plan.done), len(plan.failed))
    for row in plan.failed:
        logger.warning("job %s: %s", row["job_id"], row["error"])
    progress = RunProgress(plan.total, "job_id", _progress.get(), artifact_key="render-progress", description=f"Rendering {manifest} -> {out}")
    for row in plan.done + plan.failed:
        progress.add(row)
    # jobs a killed run finished (done markers) and bad rows go into the results before any work
    results = write_results(results_uri, plan.previous or {}, plan.done + plan.failed)

    # Transform: shards of jobs -> Prefect tasks -> Ray actors; each shard's results merged as it lands
    def merge(rows: list[dict]) -> None:
        nonlocal results
        results = write_results(results_uri, {r["job_id"]: r for r in results}, rows)

    ran: list[dict] = []
    if plan.todo:
        ran = run_on_pool(
            [job.to_row() for job in plan.todo], cfg=cfg, section=cfg.render, actor=RenderActor,
            submit_shard=render_shard.submit, progress=progress, on_crash=_crashed, on_rows=merge, logger=logger,
        )

    # Load: summary and artifacts
    progress.publish()
    summary = summarize(plan, ran, out, results_uri, time.perf_counter() - t0)
    _table_artifact(plan, ran)
    logger.info(
        "%d jobs: %d rendered ok, %d failed, %d skipped (done before); results at %s",
        summary["jobs"], summary["ok"], summary["error"], summary["skipped"], results_uri,
    )
    return summary


def summarize(plan: mf.RenderPlan, ran: list[dict], out: str, results_uri: str, wall_s: float) -> dict[str, Any]:
    """A run's summary: counts by status (``skipped`` = done by an earlier run), this run's rendered
    video seconds, where the results are, and the failed jobs with their errors."""
    now = ran + plan.failed
    ok = [r for r in ran if r["status"] == "ok"]
    errors = [r for r in now if r["status"] == "error"]
    return {
        "jobs": plan.total, "ok": len(ok), "error": len(errors), "skipped": len(plan.done),
        "video_s": sum(r["seconds"] for r in ok), "render_s": sum(r["render_s"] for r in ok), "wall_s": wall_s,
        "out": out, "results": results_uri, "outputs": [r["output"] for r in ok], "flow_run_id": str(flow_run.id),
        "errors": [{"job_id": r["job_id"], "error": r["error"], "error_kind": r["error_kind"]} for r in errors],
    }


def _table_artifact(plan: mf.RenderPlan, ran: list[dict]) -> None:
    rows = [dict(r, status="skipped") for r in plan.done] + ran + plan.failed
    rows.sort(key=lambda r: (r["status"] != "error", r["job_id"]))
    table = [{"job_id": r["job_id"], "status": r["status"], "seconds": round(float(r.get("seconds") or 0), 2),
              "render_s": round(float(r.get("render_s") or 0), 2), "output": r.get("output") or "", "error": r.get("error") or ""}
             for r in rows[:TABLE_ROWS]]
    more = f" (first {TABLE_ROWS} of {len(rows)}, errors first)" if len(rows) > TABLE_ROWS else ""
    create_table_artifact(table=table, key="render-summary", description=f"Render jobs of this run{more}")


def run_render_batch(
    manifest: str,
    out: str,
    overrides: Sequence[str] = (),
    retry_failed: bool = False,
    progress: Optional[ProgressCallback] = None,
    config_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Render a manifest as a Prefect flow run (what ``facepose render-batch`` calls).

    progress: ``progress(done, total, result_row)``, called from worker threads as each job finishes
    (rows done by earlier runs count at the start). Returns the summary dict: ``jobs``, ``ok``,
    ``error``, ``skipped``, ``video_s``, ``wall_s``, ``out``, ``results`` (the results Parquet URI),
    ``outputs`` (URIs rendered in this run) and ``errors`` (``job_id``, ``error``, ``error_kind``)."""
    token = _progress.set(progress)
    try:
        return render_flow(manifest, out, overrides=list(overrides), retry_failed=retry_failed, config_files=[str(f) for f in config_files])
    finally:
        _progress.reset(token)


# -- scheduled bulk rendering ------------------------------------------------------------------------
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")


def _parent(prefix: str) -> str:
    """The folder holding ``prefix`` (``s3://b/manifests`` -> ``s3://b``)."""
    p = prefix.rstrip("/")
    head = "s3://" if p.startswith("s3://") else ""
    rest = p[len(head):]
    return head + rest.rsplit("/", 1)[0] if "/" in rest else p


def _manifest_marker(out: str, stem: str) -> str:
    return storage.join(out, "_manifests", f"{stem}.json")


@flow(name="render-new-manifests", log_prints=False)
def render_new_manifests(
    prefix: Optional[str] = None, out: Optional[str] = None, overrides: Optional[list[str]] = None, config_files: Optional[list[str]] = None
) -> list[dict[str, Any]]:
    """Render each manifest under ``prefix`` that has not been rendered yet, once (the scheduled
    deployment in prefect.yaml). Manifest ``<name>.csv`` renders into ``<out>/<name>/``; when its run
    ends, ``<out>/_manifests/<name>.json`` (the summary) marks it done. A run that dies before that is
    resumed by the next schedule. ``prefix``/``out`` default to ``render.manifests_prefix`` and
    ``render.manifests_out`` (default ``<prefix>/../renders``)."""
    logger = get_run_logger()
    cfg = load_config(overrides or [], config_files or [])
    storage.configure(cfg.storage)
    prefix = prefix or cfg.render.manifests_prefix
    if not prefix:
        raise mf.InputError("no manifests prefix: pass prefix= or set render.manifests_prefix")
    out = out or cfg.render.manifests_out or storage.join(_parent(prefix), "renders")
    new = []
    for uri in storage.listdir(prefix, recursive=False):
        name = uri.rsplit("/", 1)[-1]
        stem = name.rsplit(".", 1)[0]
        if name.lower().endswith(MANIFEST_SUFFIXES) and not name.startswith(("_", ".")) and not storage.exists(_manifest_marker(out, stem)):
            new.append((uri, stem))
    summaries = []
    with ray_session(cfg.batch):  # one Ray for all the manifests of this run
        for uri, stem in new:
            logger.info("new manifest %s -> %s", uri, storage.join(out, stem))
            summary = render_flow(uri, storage.join(out, stem), overrides=overrides, config_files=config_files)
            storage.write_text(_manifest_marker(out, stem), json.dumps(dict(summary, manifest=uri, finished_at=mf.utc_now()), default=str))
            summaries.append(summary)
    logger.info("%d new manifest(s) rendered under %s", len(summaries), out)
    return summaries
