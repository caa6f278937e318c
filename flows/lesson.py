"""Lessons from text in bulk: a manifest of scripts -> talking-head mp4s with speech and subtitles.

The ``lesson`` kind (:mod:`facepose.batch.lesson`) run by the flow body every kind shares
(:func:`tasks.shard.batch_flow_body`): speech is synthesised in the actors through a digest-keyed cache,
so identical scripts are synthesised once; reruns skip finished lessons.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from prefect import flow

from tasks.run import ProgressCallback, run_batch
from tasks.shard import batch_flow_body


@flow(name="lesson-batch", log_prints=False)
def lesson_flow(manifest: str, out: str, overrides: Optional[list[str]] = None, retry_failed: bool = False,
                config_files: Optional[list[str]] = None) -> dict[str, Any]:
    """Render every lesson of ``manifest`` (``job_id``, ``reference``, ``driver`` = ``text:...`` or a
    .txt/.md URI, optional ``voice``, ``language``, ``rate``, ``seconds``, ...) under ``out``."""
    return batch_flow_body("lesson", manifest, out, overrides, retry_failed, config_files)


def run_lesson_batch(manifest: str, out: str, overrides: Sequence[str] = (), retry_failed: bool = False,
                     progress: Optional[ProgressCallback] = None, config_files: Sequence[str] = (),
                     dry_run: bool = False) -> dict[str, Any]:
    """Render a lesson manifest (what ``facepose lesson-batch`` calls): see :func:`tasks.run.run_batch`.
    The summary adds ``synthesized`` (speech synthesised in this run; the rest came from the cache) and
    ``lessons_per_min``."""
    return run_batch("lesson", manifest, out, overrides=overrides, retry_failed=retry_failed, dry_run=dry_run,
                     progress=progress, config_files=config_files)
