"""Results and claims of batch runs, safe when several runs share one output prefix.

**Results** are written as *parts*: each shard of each run writes its result rows once, to
``<out>/_results/<run_id>-<shard>.parquet`` (run ids start with their UTC start time, so names sort by
age). :func:`read_results` merges ``results.parquet`` and every part (per id, the newest row wins; a
``skipped`` row never replaces one). At the end of a run :func:`compact` rewrites ``results.parquet``
from that merge, once, and deletes the parts older than ``batch.compact_grace_s``. Writing is linear in
the rows (each row is written to one part, then once per compaction), and nothing is lost when two runs
compact at once: a compaction that read before a part existed only overwrites ``results.parquet``,
while the part itself stays until it is older than the grace period, far longer than one compaction
takes, so the next reader still merges it.

**Claims** make each job run once across concurrent runs: before running a job a run creates
``<out>/_claims/<id>.json`` only if it does not exist (S3 ``If-None-Match: *``; a hard link on a local
disk), renews it while the job runs and deletes it after the done marker is written. A claim not
renewed for ``batch.lease_s`` (its run was killed) may be taken over, by one run (:meth:`Claims.take`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facepose import storage
from facepose.batch.kind import JobKind
from facepose.errors import InputError, StorageError
from facepose.manifest import batches

log = logging.getLogger(__name__)

PARTS_DIR = "_results"
CLAIMS_DIR = "_claims"


def new_run_id() -> str:
    """``20261130T061500-1a2b3c4d``: sortable by start time, unique."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _run_time(name: str) -> Optional[float]:
    try:
        return time.mktime(time.strptime(name[:15], "%Y%m%dT%H%M%S")) - time.timezone
    except ValueError:
        return None


def results_uri(kind: JobKind, out: str) -> str:
    return storage.join(out, kind.results_name)


def part_uri(out: str, run_id: str, name: str) -> str:
    return storage.join(out, PARTS_DIR, f"{run_id}-{name}.parquet")


def _table(kind: JobKind, rows: Iterable[dict[str, Any]]) -> pa.Table:
    names = kind.result_schema.names
    return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema=kind.result_schema)


def _write(uri: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def write_part(kind: JobKind, out: str, run_id: str, name: str, rows: list[dict[str, Any]]) -> Optional[str]:
    """Write one shard's result rows as a part (nothing when ``rows`` is empty)."""
    if not rows:
        return None
    uri = part_uri(out, run_id, name)
    _write(uri, _table(kind, rows))
    return uri


def _read_arrow(uri: str, schema: pa.Schema) -> pa.Table:
    """One results file or part as an Arrow table in ``schema`` (missing columns null: older files)."""
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{uri}: results file is not readable Parquet ({e}); move it away to start afresh") from None
    cols = [table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def latest(table: pa.Table, id_column: str) -> pa.Table:
    """One row per id, sorted by id: the newest (``finished_at``; on a tie the later row), where a
    ``skipped`` row never wins over another. Columnar (Arrow): no Python object per row but the ids."""
    if table.num_rows == 0:
        return table
    keys = pa.table({
        "id": table[id_column], "skip": pc.fill_null(pc.equal(table["status"], "skipped"), False),
        "fin": pc.fill_null(table["finished_at"], ""), "order": pa.array(np.arange(table.num_rows)),
    })
    order = pc.sort_indices(keys, sort_keys=[("id", "ascending"), ("skip", "ascending"), ("fin", "descending"), ("order", "descending")])
    ids = keys["id"].take(order).to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return table.take(order.filter(pa.array(first)))


def merge_into(merged: dict[str, dict[str, Any]], rows: Iterable[dict[str, Any]], id_column: str) -> None:
    """Fold ``rows`` into ``merged`` (by id): the newer row wins; ``skipped`` never replaces a row."""
    for row in rows:
        key = row[id_column]
        old = merged.get(key)
        if old is not None and (row.get("status") == "skipped" or (row.get("finished_at") or "") < (old.get("finished_at") or "")):
            continue
        merged[key] = row


def part_uris(out: str, run_id: Optional[str] = None) -> list[str]:
    """Result parts under ``out`` (of one run when ``run_id`` is given), oldest first."""
    uris = [u for u in storage.listdir(storage.join(out, PARTS_DIR), recursive=False) if u.endswith(".parquet")]
    if run_id is not None:
        uris = [u for u in uris if u.rsplit("/", 1)[-1].startswith(run_id + "-")]
    return sorted(uris, key=lambda u: u.rsplit("/", 1)[-1])


def results_table(kind: JobKind, out: str, run_id: Optional[str] = None, parts: Optional[list[str]] = None) -> pa.Table:
    """The merged results as one Arrow table, one row per id (:func:`latest`): ``results.parquet`` and
    every part (or only run ``run_id``'s parts), read one file at a time."""
    schema = kind.result_schema
    tables = []
    uri = results_uri(kind, out)
    if run_id is None and storage.exists(uri):
        tables.append(_read_arrow(uri, schema))
    for part in part_uris(out, run_id) if parts is None else parts:
        try:
            tables.append(_read_arrow(part, schema))
        except InputError:
            if storage.exists(part):
                raise
            continue  # compacted and deleted by another run between the listing and the read
        if len(tables) > 512:  # fold long histories now and then: memory holds one row an id plus the unfolded parts
            tables = [latest(pa.concat_tables(tables), kind.id_column)]
    if not tables:
        return schema.empty_table()
    return latest(pa.concat_tables(tables), kind.id_column)


def read_results(kind: JobKind, out: str, run_id: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """Result rows by id: ``results.parquet`` merged with every part (or only run ``run_id``'s parts)."""
    return {row[kind.id_column]: row for row in results_table(kind, out, run_id).to_pylist()}


#: What planning needs of an earlier result: (status, input_digest, transient, error, error_kind)
State = tuple[Optional[str], Optional[str], bool, Optional[str], Optional[str]]


def read_states(kind: JobKind, out: str) -> dict[str, State]:
    """The latest result of each id, reduced to what planning decides on (:data:`State`): a few
    strings a row rather than a dict of every column."""
    t = results_table(kind, out)
    cols = [t[c].to_pylist() for c in (kind.id_column, "status", "input_digest", "transient", "error", "error_kind")]
    return {i: (s, d, bool(tr), e, k) for i, s, d, tr, e, k in zip(*cols)}


def compact(kind: JobKind, out: str, grace_s: float) -> int:
    """Rewrite ``results.parquet`` from the results file and every part (merged in Arrow, one file at a
    time); delete parts older than ``grace_s``. Returns the number of result rows."""
    parts = part_uris(out)
    table = results_table(kind, out, parts=parts)
    _write(results_uri(kind, out), table)
    now = time.time()
    for part in parts:
        started = _run_time(part.rsplit("/", 1)[-1])
        if started is not None and now - started > grace_s:
            storage.delete(part)
    return table.num_rows


# -- claims ------------------------------------------------------------------------------------------------
def create_exclusive(uri: str, text: str) -> bool:
    """Create the object at ``uri`` holding ``text`` only if nothing is there; False when something is."""
    loc = storage.parse(uri)
    data = text.encode()
    if loc.scheme != "s3":
        # Written whole to a temporary file, then hard-linked into place: link() fails when the name
        # exists, and no reader ever sees the file empty (as it would between O_EXCL's create and write).
        folder = os.path.dirname(loc.path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".excl-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.link(tmp, loc.path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: O_EXCL, with its short empty-file window
            try:
                fd = os.open(loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        finally:
            os.unlink(tmp)
        return True
    from minio.error import S3Error

    def put() -> bool:
        try:
            # minio's put_object would turn If-None-Match into user metadata; send the header as is
            storage.client()._execute("PUT", loc.bucket, loc.path, body=data,
                                      headers={"If-None-Match": "*", "Content-Type": "application/json", "Content-Length": str(len(data))})
            return True
        except S3Error as e:
            if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    return storage._retry(loc, put)


class Claims:
    """This run's claims on jobs under ``out``, renewed by a background thread every ``lease_s / 3``."""

    def __init__(self, out: str, run_id: str, lease_s: float):
        self.out, self.run_id, self.lease_s = out, run_id, float(lease_s)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="claims", daemon=True)
        self._thread.start()

    def uri(self, job_id: str) -> str:
        return storage.join(self.out, CLAIMS_DIR, f"{job_id}.json")

    def _body(self) -> str:
        return json.dumps({"run_id": self.run_id, "expires": time.time() + self.lease_s})

    def take(self, job_id: str) -> bool:
        """Claim ``job_id``; True when this run now holds it.

        A lapsed claim (its run stopped renewing it) is taken over by the one run that creates the
        takeover marker of that very claim (``<claim>.<sha1 of its text>.takeover``, created only if
        absent) and then still finds the claim unchanged; the others see it held. Deleting the lapsed
        claim and creating a new one instead would let two runs that read it at once both win."""
        uri = self.uri(job_id)
        for _ in range(3):  # a claim released between our create and our read: create again
            if create_exclusive(uri, self._body()):
                break
            try:
                text = storage.read_text(uri)
            except StorageError:
                continue
            try:
                held = json.loads(text)
            except json.JSONDecodeError:
                held = {}  # cut short by a crash: lapsed
            if held.get("run_id") == self.run_id:
                break
            if float(held.get("expires") or 0) > time.time():
                return False
            marker = f"{uri}.{hashlib.sha1(text.encode()).hexdigest()[:16]}.takeover"
            if not create_exclusive(marker, self._body()):
                self._clear_stale(marker)
                return False  # another run is taking it over
            try:
                if storage.read_text(uri) != text:
                    return False  # taken over (and the marker deleted) before we created ours
                log.info("taking over the lapsed claim of run %s on %s", held.get("run_id"), job_id)
                storage.write_text(uri, self._body())
            except StorageError:
                return False
            finally:
                storage.delete(marker)
            break
        else:
            return False
        with self._lock:
            self._held.add(job_id)
        return True

    def _clear_stale(self, marker: str) -> None:
        """Delete a takeover marker left by a run that died between creating it and deleting it (it
        would block that claim for good); the next :meth:`take` can then take the claim over."""
        try:
            try:
                expires = float(json.loads(storage.read_text(marker)).get("expires") or 0)
            except (json.JSONDecodeError, AttributeError):
                expires = 0.0  # cut short by a crash
            if expires < time.time():
                storage.delete(marker)
        except StorageError:
            pass  # gone already, or storage is down: the next take tries again

    def release(self, job_id: str) -> None:
        with self._lock:  # not while a renewal rewrites it: that would leave a stale claim behind
            self._held.discard(job_id)
            storage.delete(self.uri(job_id))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                held = list(self._held)
            for job_id in held:
                with self._lock:
                    if job_id not in self._held:
                        continue
                    try:
                        storage.write_text(self.uri(job_id), self._body())
                    except StorageError as e:  # the next renewal tries again; the lease outlives a short outage
                        log.warning("could not renew the claim on %s: %s", job_id, e)

    def close(self) -> None:
        """Stop renewing and give back what is still held."""
        self._stop.set()
        with self._lock:
            held, self._held = list(self._held), set()
        for job_id in held:
            try:
                storage.delete(self.uri(job_id))
            except StorageError:
                pass  # it lapses on its own


def iter_shards(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Shards of ``size`` rows (the last one shorter) from any iterable (a :class:`~facepose.batch.plan.Spool`)."""
    return batches(rows, size)
