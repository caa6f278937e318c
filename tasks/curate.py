"""Prefect tasks of the curation flow: thin adapters over :mod:`facepose.curate`; the per-video work
runs in :class:`tasks.actors.CurateActor` through the flow's actor pool."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import task_run

from facepose import curate as cu
from facepose import manifest as mf
from tasks.common import RETRIES, TransientRowsError, held, retry_if_transient


@task(name="plan-curate", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_if_transient, cache_policy=NONE)
def plan_curate(manifest: str, out: str, cfg: Any) -> cu.CuratePlan:
    """Read the manifest, validate rows, and skip videos whose done marker matches their inputs."""
    return cu.prepare_curate(manifest, out, cfg)


@task(name="curate-shard", task_run_name="curate-shard-{index}", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_if_transient, cache_policy=NONE)
def curate_shard(index: int, videos: list[dict], out: str, pool_key: str, progress_key: str) -> list[dict]:
    """Curate a shard's videos on the actor pool -> one result row per video, in order. Transient
    storage errors fail the task so Prefect retries it (videos done by an earlier attempt are kept)."""
    logger = get_run_logger()
    pool, progress = held(pool_key), held(progress_key)
    results: dict[str, dict] = {}
    if task_run.run_count > 1:
        for v in videos:
            done = cu.read_marker(out, v["video_id"])
            if done is not None and done.get("input_digest") == v["input_digest"]:
                results[v["video_id"]] = done

    def report(row: dict) -> None:
        if row["status"] == "ok":
            logger.info("video %s: %d frames, kept %d of %d clips, dropped %s", row["video_id"], row["frames"], row["kept"], row["clips"], row["dropped"])
        else:
            logger.warning("video %s: %s", row["video_id"], row["error"])
        if not (row["status"] == "error" and row["transient"] and task_run.run_count <= RETRIES):
            progress.add(row)

    todo = [dict(v, out=out) for v in videos if v["video_id"] not in results]
    for row in pool.map(todo, priority=index, on_result=report):
        results[row["video_id"]] = row
    rows = [results[v["video_id"]] for v in videos]
    transient = [r for r in rows if r["status"] == "error" and r["transient"]]
    if transient and task_run.run_count <= RETRIES:
        names = ", ".join(r["video_id"] for r in transient[:5])
        raise TransientRowsError(f"{len(transient)} video(s) of shard {index} hit a transient storage error ({names}): {transient[0]['error']}")
    for r in rows:
        progress.add(r)
    return rows


@task(name="write-curate-results", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_if_transient, cache_policy=NONE)
def write_results(uri: str, new: list[dict]) -> list[dict]:
    """Merge ``new`` rows into ``<out>/results.parquet`` (one row a video), atomically."""
    previous = {}
    if cu.storage.exists(uri):
        previous = {r["video_id"]: r for r in mf.read_rows(uri)}
    merged = dict(previous)
    for r in new:
        if r["status"] != "skipped" or r["video_id"] not in merged:
            merged[r["video_id"]] = r
    rows = [{k: merged[v].get(k) for k in mf.CURATE_RESULT_SCHEMA.names} for v in sorted(merged)]
    mf.write_rows(uri, rows, schema=mf.CURATE_RESULT_SCHEMA)
    return rows
