"""Batch rendering: a render manifest -> mp4s at their output URIs and a results Parquet.

The ``render`` kind (:mod:`facepose.batch.render`) run by the flow body every kind shares
(:func:`tasks.shard.batch_flow_body`): plan against earlier results and done markers, shards of jobs on
a pool of Ray actors that keep the renderer loaded, result parts merged into ``<out>/results.parquet``.
Reruns skip ok jobs with unchanged inputs and rerun failed ones with ``retry_failed`` (transient
failures always). Locally ``run_render_batch`` starts Ray here and Prefect without a server, and
neither when nothing is left to do; on a cluster set ``RAY_ADDRESS`` and ``PREFECT_API_URL`` or deploy
with ``prefect.yaml``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional, Sequence

from prefect import flow, get_run_logger

from facepose import manifest as mf
from facepose import storage
from facepose.config import load_config
from tasks.pool import ray_session
from tasks.run import ProgressCallback, run_batch
from tasks.shard import batch_flow_body

log = logging.getLogger(__name__)


@flow(name="render-batch", log_prints=False)
def render_flow(manifest: str, out: str, overrides: Optional[list[str]] = None, retry_failed: bool = False,
                config_files: Optional[list[str]] = None) -> dict[str, Any]:
    """Render every job of ``manifest`` (CSV, JSONL or Parquet; a path or s3:// URI) under the output
    prefix ``out``. overrides: ``key=value`` config overrides (``render.workers=4``); retry_failed: rerun
    jobs that failed before with the same inputs; config_files: YAML files merged onto the config."""
    return batch_flow_body("render", manifest, out, overrides, retry_failed, config_files)


def run_render_batch(manifest: str, out: str, overrides: Sequence[str] = (), retry_failed: bool = False, progress: Optional[ProgressCallback] = None,
                     config_files: Sequence[str] = (), dry_run: bool = False) -> dict[str, Any]:
    """Render a manifest (what ``facepose render-batch`` calls): see :func:`tasks.run.run_batch`. The
    summary: ``jobs``, ``ok``, ``error``, ``skipped``, ``video_s``, ``render_s``, ``wall_s``, ``out``,
    ``results``, ``outputs`` (rendered in this run), ``errors`` (``job_id``, ``error``, ``error_kind``)."""
    return run_batch("render", manifest, out, overrides=overrides, retry_failed=retry_failed, dry_run=dry_run, progress=progress, config_files=config_files)


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
