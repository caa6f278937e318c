"""Batch work of any kind: a manifest of rows -> one result row per row, outputs, done markers, reruns.

The shape is video2dataset's: a **kind** (:class:`JobKind`, one file in this package) says what a row
is and how one row runs; everything else is written once, here and in ``tasks/``:

- :mod:`facepose.batch.plan`: read and validate a manifest, digest each job's inputs, and plan the run
  against earlier results and done markers with ONE rerun rule for every kind (an ``ok`` job with the
  same input digest is skipped; a failed one reruns when its error was transient or with
  ``retry_failed``; changed inputs always rerun).
- :mod:`facepose.batch.results`: result *parts* (one Parquet per shard per run, under ``_results/``)
  merged on read and compacted into ``results.parquet`` once at the end of a run, and per-job *claims*
  (``_claims/<id>.json``, created only if absent: S3 ``If-None-Match: *`` or a hard link locally) so two
  runs on one prefix never run one job twice.
- ``tasks/shard.py`` (one Prefect shard task, the flow body) and ``tasks/actor.py`` (one Ray actor
  class) drive any kind.

Adding a kind (e.g. ``lesson``: text -> video):

1. ``facepose/batch/lesson.py``: ``class LessonKind(JobKind)`` with ``name``, ``noun``, ``id_column``,
   ``required`` columns, ``result_schema`` (the id column, ``status``, ``error``, ``error_kind``,
   ``transient``, ``input_digest``, ``finished_at`` plus its own figures), ``section`` (the config section
   with ``shard_size``, ``workers``, ``num_cpus``, ``num_gpus``), and the methods ``parse``, ``digest``,
   ``load``, ``run`` and ``summary`` (see :class:`JobKind`).
2. One line in :data:`KINDS` below.
3. The adapters, a few lines each: ``flows/lesson.py`` with ``lesson_flow`` (a ``@flow`` whose body is
   ``tasks.shard.batch_flow_body("lesson", ...)``), a deployment in ``prefect.yaml`` if it should be
   deployed, and a CLI command calling ``facepose.cli._run_batch("lesson", ...)`` (plan first, exit codes).
4. Tests: its ``parse``/``run`` on inputs the test makes.
"""

from __future__ import annotations

import importlib

from facepose.batch.kind import JobKind
from facepose.config import Config
from facepose.errors import InputError

#: kind name -> "module:class" (imported on first use, so a kind's heavy imports stay out of the others)
KINDS = {
    "render": "facepose.batch.render:RenderKind",
    "curate": "facepose.batch.curate:CurateKind",
    "lesson": "facepose.batch.lesson:LessonKind",
}


def get_kind(name: str, cfg: Config) -> JobKind:
    """The kind called ``name``, bound to the config ``cfg``."""
    if name not in KINDS:
        raise InputError(f"unknown job kind {name!r}; choose from {sorted(KINDS)}")
    module, cls = KINDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)


__all__ = ["JobKind", "KINDS", "get_kind"]
