"""Dataset curation: a manifest of videos -> face clips, poses, audio features and an index in the
curated-dataset layout (docs/contracts.md, "Curated dataset") under an output prefix.

The ``curate`` kind (:mod:`facepose.batch.curate`; the per-video unit is :mod:`facepose.curate`) run
by the flow body every kind shares (:func:`tasks.shard.batch_flow_body`), with the same rerun rule as
rendering: ok videos with unchanged inputs are skipped, failed ones rerun with ``retry_failed``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from prefect import flow

from tasks.run import ProgressCallback, run_batch
from tasks.shard import batch_flow_body


@flow(name="curate", log_prints=False)
def curate_flow(manifest: str, out: str, overrides: Optional[list[str]] = None, retry_failed: bool = False,
                config_files: Optional[list[str]] = None) -> dict[str, Any]:
    """Curate every video of ``manifest`` (``video_id``, ``video``, optional ``audio``, ``start``,
    ``end``) into the dataset prefix ``out``. overrides: ``key=value`` (``curate.min_face_px=96``)."""
    return batch_flow_body("curate", manifest, out, overrides, retry_failed, config_files)


def run_curate(manifest: str, out: str, overrides: Sequence[str] = (), progress: Optional[ProgressCallback] = None,
               config_files: Sequence[str] = (), retry_failed: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Curate a manifest (what ``facepose curate`` calls): see :func:`tasks.run.run_batch`. The summary:
    ``videos``, ``ok``, ``error``, ``skipped``, ``clips``, ``kept``, ``dropped`` ({reason: count}),
    ``frames``, ``frames_per_s`` (over ``work_s``), ``frames_per_worker_s``, ``wall_s``, ``out``,
    ``results``, ``errors``."""
    return run_batch("curate", manifest, out, overrides=overrides, retry_failed=retry_failed, dry_run=dry_run, progress=progress, config_files=config_files)
