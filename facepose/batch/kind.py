"""The job-kind contract: what one kind of batch work declares (see :mod:`facepose.batch`)."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Iterable, Optional

import pyarrow as pa

from facepose import storage
from facepose.config import Config
from facepose.errors import FaceposeError
from facepose.manifest import DONE_DIR, utc_now


class JobKind:
    """One kind of batch work. Rows travel as plain dicts (JSON-able: they cross Prefect and Ray).

    Subclasses set the class attributes and implement :meth:`parse`, :meth:`digest`, :meth:`run`
    (and :meth:`load` / :meth:`summary` when they need them). ``cfg`` is the whole
    :class:`facepose.config.Config`: a kind is an edge that hands typed sections to the library."""

    name: ClassVar[str]  # "render": the flow, task and artifact names
    noun: ClassVar[str] = "job"  # "video": for messages
    id_column: ClassVar[str]  # the manifest column that names a row; becomes file names
    required: ClassVar[tuple[str, ...]]  # columns a manifest must have
    result_schema: ClassVar[pa.Schema]  # one result row per manifest row
    section: ClassVar[str]  # config section with shard_size, workers, num_cpus, num_gpus
    results_name: ClassVar[str] = "results.parquet"  # under the output prefix
    input_columns: ClassVar[tuple[str, ...]] = ()  # columns naming input files; :meth:`missing` checks them in order

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @property
    def settings(self) -> Any:
        """The config section named by :attr:`section`: ``shard_size``, ``workers``, ``num_cpus``, ``num_gpus``."""
        return getattr(self.cfg, self.section)

    # -- planning (in the driver) --------------------------------------------------------------------
    def parse(self, rows: list[dict[str, Any]], out: str, base: str, *, start: int = 1,
              seen: Optional[dict[str, Any]] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Validate manifest rows -> (job rows, error result rows). ``base``: the folder relative
        paths are resolved against. Ids must pass :func:`facepose.manifest.check_id` and be unique.
        Planning hands the manifest over in batches: ``start`` is the row number of ``rows[0]`` and
        ``seen`` one dict for the whole manifest (ids, outputs... of earlier batches: keep it compact)."""
        raise NotImplementedError

    def digest(self, job: dict[str, Any]) -> Optional[str]:
        """A hash of what the job reads and of the settings that shape its output; None when an input
        does not exist (:meth:`missing` says which). May raise a transient StorageError."""
        raise NotImplementedError

    def missing(self, job: dict[str, Any]) -> str:
        """The message for a job whose :meth:`digest` is None: the first of :attr:`input_columns` whose
        file does not exist (``preset:`` and ``text:`` values are not files)."""
        from facepose.manifest import fingerprint

        for column in self.input_columns:
            value = job.get(column)
            if value and not str(value).startswith(("preset:", "text:")) and fingerprint(value) is None:
                return f"{self.noun} {job[self.id_column]!r}: {column} {value} does not exist; check the manifest's {column} column"
        return f"{self.noun} {job[self.id_column]!r}: an input does not exist; check the manifest"

    def marker(self, out: str, job_id: str) -> str:
        """The done marker of a job: its ok result row as JSON, written after its outputs."""
        return storage.join(out, DONE_DIR, f"{job_id}.json")

    # -- running (in a Ray actor) -----------------------------------------------------------------------
    def load(self) -> Any:
        """Models the actor keeps for every job (called once per actor)."""
        return None

    def run(self, job: dict[str, Any], models: Any, out: str) -> dict[str, Any]:
        """Run one job -> its result row (``result_schema``); writes outputs and then the done marker.
        Never raises: a failure is an ``error`` row (:meth:`error_row`)."""
        raise NotImplementedError

    # -- results ------------------------------------------------------------------------------------------
    def result(self, job_id: str, status: str, **fields: Any) -> dict[str, Any]:
        """A result row with every schema column (missing ones None, ``finished_at`` now)."""
        row = {name: None for name in self.result_schema.names}
        row.update({self.id_column: job_id, "status": status, "transient": False, "finished_at": utc_now()}, **fields)
        return row

    def error_row(self, job_id: str, exc: BaseException | str, *, kind: str = "internal", transient: bool = False, **fields: Any) -> dict[str, Any]:
        """An ``error`` result: a FaceposeError's message, kind and transience, or ``exc`` as text."""
        if isinstance(exc, FaceposeError):
            message, kind, transient = str(exc), exc.kind, bool(exc.transient)
        elif isinstance(exc, BaseException):
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        else:
            message = exc
        return self.result(job_id, "error", error=message, error_kind=kind, transient=transient, **fields)

    def crashed(self, job: dict[str, Any], exc: BaseException) -> dict[str, Any]:
        """The result of a job whose worker process died (transient: a rerun retries it)."""
        job_id = job[self.id_column]
        return self.error_row(job_id, f"{self.noun} {job_id!r}: the worker failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); rerun to retry",
                              transient=True, input_digest=job.get("input_digest"))

    def done_result(self, out: str, job: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The job's ok result from its done marker, when the marker vouches for the same inputs."""
        uri = self.marker(out, job[self.id_column])
        if not storage.exists(uri):
            return None
        try:
            done = json.loads(storage.read_text(uri))
        except json.JSONDecodeError:
            return None
        return done if done.get("status") == "ok" and done.get("input_digest") == job.get("input_digest") else None

    def summary(self, rows: Iterable[dict[str, Any]], work_s: float) -> dict[str, Any]:
        """Figures of this kind over this run's result rows; ``work_s``: the run's transform stage (counts by
        status are added by the caller)."""
        return {}

    def describe(self, row: dict[str, Any]) -> str:
        """One log line for a finished row."""
        return f"{self.noun} {row[self.id_column]}: {row['status']}" + (f": {row['error']}" if row.get("error") else "")
