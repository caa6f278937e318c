"""Planning a batch run of any kind: what to run, what is done, what cannot run (see :mod:`facepose.batch`).

One rerun rule for every kind (:func:`needs_run`). Planning reads the results (merged with every
run's parts) and, for jobs the results do not show finished, the done markers (one LIST of ``_done/``,
then a GET for each job the listing has): a run killed after a job's marker but before its results
were written loses nothing.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterable, Iterator, Optional

from facepose import storage
from facepose.batch.kind import JobKind
from facepose.batch.results import new_run_id, read_states
from facepose.errors import InputError
from facepose.manifest import DONE_DIR, iter_row_batches, manifest_dir

BATCH_ROWS = 2000  # manifest rows parsed and planned at a time

log = logging.getLogger(__name__)


class Spool:
    """Rows kept on local disk (one JSON line each in an unnamed temporary file), not in memory: a plan
    of 100,000 jobs costs the driver a file, not 100,000 dicts. Iterable (again and again), ``len``,
    ``spool[i]`` (reads up to row ``i``) and ``== list`` (for tests); :meth:`append` adds a row."""

    _encode = json.JSONEncoder(separators=(",", ":")).encode

    def __init__(self, rows: Iterable[dict[str, Any]] = ()):
        self._file = tempfile.TemporaryFile(buffering=1 << 16)  # noqa: SIM115 - lives as long as the plan; appends only, reads go through os.pread
        self._n = 0
        for row in rows:
            self.append(row)

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(self._encode(row).encode() + b"\n")
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._file.flush()
        fd, n, pos, rest = self._file.fileno(), self._n, 0, b""
        while n:  # rows appended while iterating are not seen
            chunk = os.pread(fd, 1 << 20, pos)
            if not chunk:
                break
            pos += len(chunk)
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines[:n]:
                yield json.loads(line)
            n -= min(n, len(lines))

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self._n:
            raise IndexError(i)
        return next(itertools.islice(iter(self), i, None))

    def head(self, n: int) -> list[dict[str, Any]]:
        return list(itertools.islice(iter(self), n))

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, (list, Spool)) else NotImplemented

    def __repr__(self) -> str:
        return f"Spool({self._n} rows)"


@dataclass(eq=False)
class Plan:
    """A run's plan. ``todo``: job rows to run; ``kept``: ok results of earlier runs with the same
    inputs (counted as ``skipped``; reduced to the id, ``status`` and ``input_digest``); ``failed``:
    error rows of rows that cannot run (bad rows, missing inputs) and of rows that failed before with
    the same inputs and are not retried (counted as errors), ``record`` the new ones among them and
    the results recovered from done markers. ``todo``, ``kept`` and ``failed``
    are :class:`Spool` s on local disk, so the plan's memory does not grow with the manifest."""

    kind: str
    manifest: str
    out: str
    run_id: str
    todo: Spool = field(default_factory=Spool)
    kept: Spool = field(default_factory=Spool)
    failed: Spool = field(default_factory=Spool)
    record: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.kept) + len(self.failed)

    def describe(self) -> str:
        return f"{self.manifest}: {self.total} rows: {len(self.todo)} to run, {len(self.kept)} done before, {len(self.failed)} failed (bad rows, or failed before: --retry-failed reruns those)"


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


def plan_run(kind: JobKind, manifest: str, out: str, *, retry_failed: bool = False, run_id: Optional[str] = None,
             batch_rows: int = BATCH_ROWS) -> Plan:
    """Read and validate ``manifest``, digest each job's inputs and plan it against earlier results
    and done markers under ``out``. Raises InputError for a manifest that cannot be read at all (one
    line naming it and the fix), StorageError (maybe transient) when storage fails.

    Streams: the manifest is parsed ``batch_rows`` rows at a time and the planned rows go to
    :class:`Spool` s; what stays in memory across the manifest is one :data:`State` per earlier result
    and the ids (and, for render, outputs) the uniqueness checks need."""
    plan = Plan(kind.name, manifest, out, run_id or new_run_id())
    batches = iter_row_batches(manifest, kind.required, batch_rows)
    first = next(batches, [])  # the manifest's own errors come first
    previous = read_states(kind, out)
    markers: Optional[set[str]] = None
    key, base, seen, n = kind.id_column, manifest_dir(manifest), {}, 0
    for rows in itertools.chain([first] if first else [], batches):
        jobs, invalid = kind.parse(rows, out, base, start=n + 1, seen=seen)
        n += len(rows)
        del rows
        for job in jobs:
            job_id = job[key]
            job["input_digest"] = kind.digest(job)
            if not job["input_digest"]:
                invalid.append(kind.error_row(job_id, kind.missing(job), kind="input"))
                continue
            state = previous.get(job_id)
            if state and state[0] == "ok" and state[1] == job["input_digest"]:
                plan.kept.append({key: job_id, "status": "ok", "input_digest": state[1]})
                continue
            if markers is None:
                markers = _marker_ids(kind, out)
            if job_id in markers:
                done = _read_marker(kind, out, job_id)
                if done and done.get("status") == "ok" and done.get("input_digest") == job["input_digest"]:
                    plan.record.append(done)  # finished by a run that was killed before its results were written
                    plan.kept.append(done)
                    continue
            prev = None if state is None else {"status": state[0], "input_digest": state[1], "transient": state[2]}
            if needs_run(prev, job["input_digest"], retry_failed):
                plan.todo.append(job)
            else:  # failed before with the same inputs: still failed (counted as an error; --retry-failed reruns it)
                plan.failed.append(kind.error_row(job_id, state[3] or "failed", kind=state[4] or "internal", input_digest=state[1]))
        for row in invalid:
            state = previous.get(row[key])
            same = state is not None and state[0] == "error" and state[3] == row["error"]
            plan.failed.append(row)
            if not same:
                plan.record.append(row)
    if n == 0:
        raise InputError(f"{manifest}: the manifest has no rows; add one {kind.noun} per row (columns {', '.join(kind.required)})")
    log.info("%s", plan.describe())
    return plan
