"""Prefect tasks of the render flow: thin adapters over :mod:`facepose.manifest`; rendering itself runs
in :class:`tasks.actors.RenderActor` through the flow's actor pool."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from facepose import manifest as mf
from tasks.common import RETRIES, TransientRowsError, held, retry_if_transient


@task(name="plan-render", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_if_transient, cache_policy=NONE)
def plan_render(manifest: str, out: str, cfg: Any, retry_failed: bool) -> mf.RenderPlan:
    """Read the manifest, validate rows, fingerprint inputs, and skip what earlier runs finished."""
    return mf.prepare_render(manifest, out, cfg, retry_failed)


@task(name="render-shard", task_run_name="render-shard-{index}", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_if_transient, cache_policy=NONE)
def render_shard(index: int, jobs: list[dict], pool_key: str, progress_key: str) -> list[dict]:
    """Render a shard's jobs on the actor pool -> one result row per job, in order.

    A job with a transient storage error makes the task fail so Prefect retries it; the retry skips
    jobs an earlier attempt finished (their done markers). The last attempt returns the errors."""
    logger = get_run_logger()
    pool, progress = held(pool_key), held(progress_key)
    results: dict[str, dict] = {}
    if task_run.run_count > 1:
        for job in jobs:
            done = mf.finished_result(job)
            if done is not None:
                results[job["job_id"]] = done

    def report(row: dict) -> None:
        if row["status"] == "ok":
            logger.info("job %s: ok, %d frames in %.1fs -> %s", row["job_id"], row["frames"], row["render_s"], row["output"])
        else:
            logger.warning("job %s: %s", row["job_id"], row["error"])
        if not (row["status"] == "error" and row["transient"] and task_run.run_count <= RETRIES):
            progress.add(row)

    todo = [job for job in jobs if job["job_id"] not in results]
    for row in pool.map(todo, priority=index, on_result=report):
        results[row["job_id"]] = row
    rows = [results[job["job_id"]] for job in jobs]
    transient = [r for r in rows if r["status"] == "error" and r["transient"]]
    if transient and task_run.run_count <= RETRIES:
        names = ", ".join(r["job_id"] for r in transient[:5]) + (" ..." if len(transient) > 5 else "")
        raise TransientRowsError(f"{len(transient)} job(s) of shard {index} hit a transient storage error ({names}): {transient[0]['error']}")
    for r in rows:
        progress.add(r)
    return rows


@task(name="write-results", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_if_transient, cache_policy=NONE)
def write_results(uri: str, previous: dict[str, dict], new: list[dict]) -> list[dict]:
    """Merge ``new`` rows into the earlier results (one row a job) and replace the file atomically."""
    rows = mf.merge_results(previous, new)
    mf.write_results(uri, rows)
    return rows
