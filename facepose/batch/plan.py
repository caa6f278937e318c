"""Planning a batch run of any kind: what to run, what is done, what cannot run (see :mod:`facepose.batch`).

One rerun rule for every kind (:func:`needs_run`). Planning reads the results (merged with every
run's parts) and, for jobs the results do not show finished, the done markers (one LIST of ``_done/``,
then a GET for each job the listing has): a run killed after a job's marker but before its results
were written loses nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Optional

from facepose import storage
from facepose.batch.kind import JobKind
from facepose.batch.results import new_run_id, read_results
from facepose.errors import InputError
from facepose.manifest import DONE_DIR, manifest_dir, read_rows

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A run's plan. ``todo``: job rows to run; ``kept``: ok results of earlier runs with the same
    inputs (counted as ``skipped``); ``failed``: error rows of rows that cannot run (bad rows, missing
    inputs), ``record`` the ones not already recorded that way."""

    kind: str
    manifest: str
    out: str
    run_id: str
    todo: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    record: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.kept) + len(self.failed)

    def describe(self) -> str:
        return f"{self.manifest}: {self.total} rows: {len(self.todo)} to run, {len(self.kept)} done before, {len(self.failed)} cannot run"


def needs_run(previous: Optional[dict[str, Any]], input_digest: str, retry_failed: bool) -> bool:
    """Whether a job runs, given its latest result: never ran, inputs changed, or it failed with a
    transient error (or any error, with ``retry_failed``). The rule of every kind."""
    if previous is None or previous.get("input_digest") != input_digest:
        return True
    if previous.get("status") == "ok":
        return False
    return bool(retry_failed or previous.get("transient"))


def _marker_ids(kind: JobKind, out: str) -> set[str]:
    names = (PurePosixPath(storage.parse(u).path).name for u in storage.listdir(storage.join(out, DONE_DIR), recursive=False))
    return {n[: -len(".json")] for n in names if n.endswith(".json")}


def _read_marker(kind: JobKind, out: str, job_id: str) -> Optional[dict[str, Any]]:
    try:
        return json.loads(storage.read_text(kind.marker(out, job_id)))
    except json.JSONDecodeError:
        log.warning("ignoring the unreadable done marker of %s", job_id)
        return None


def plan_run(kind: JobKind, manifest: str, out: str, *, retry_failed: bool = False, run_id: Optional[str] = None) -> Plan:
    """Read and validate ``manifest``, digest each job's inputs and plan it against earlier results
    and done markers under ``out``. Raises InputError for a manifest that cannot be read at all (one
    line naming it and the fix), StorageError (maybe transient) when storage fails."""
    rows = read_rows(manifest, kind.required)
    if not rows:
        raise InputError(f"{manifest}: the manifest has no rows; add one {kind.noun} per row (columns {', '.join(kind.required)})")
    jobs, invalid = kind.parse(rows, out, manifest_dir(manifest))
    del rows
    plan = Plan(kind.name, manifest, out, run_id or new_run_id())
    previous = read_results(kind, out)
    markers: Optional[set[str]] = None
    key = kind.id_column
    for job in jobs:
        job_id = job[key]
        job["input_digest"] = kind.digest(job)
        if not job["input_digest"]:
            invalid.append(kind.error_row(job_id, kind.missing(job), kind="input"))
            continue
        prev = previous.get(job_id)
        if not (prev and prev.get("status") == "ok" and prev.get("input_digest") == job["input_digest"]):
            if markers is None:
                markers = _marker_ids(kind, out)
            if job_id in markers:
                done = _read_marker(kind, out, job_id)
                if done and done.get("status") == "ok" and done.get("input_digest") == job["input_digest"]:
                    prev = done  # finished by a run that was killed before its results were written
                    plan.record.append(done)  # recorded with this run's results (not a failure)
        if needs_run(prev, job["input_digest"], retry_failed):
            plan.todo.append(job)
        else:
            plan.kept.append(prev)
    for row in invalid:
        prev = previous.get(row[key])
        same = prev is not None and prev.get("status") == "error" and prev.get("error") == row["error"]
        plan.failed.append(prev if same else row)
        if not same:
            plan.record.append(row)
    log.info("%s", plan.describe())
    return plan
