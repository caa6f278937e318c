"""Manifests and results of the batch jobs (docs/contracts.md; the job contract: docs/batch.md).

A **render manifest** has one job a row: ``job_id``, ``reference``, ``driver`` (``preset:<name>``,
``text:<script>`` or a URI of a video, an audio file, a pose Parquet or a .txt/.md script), optional
``driver_type``, ``seconds``, ``backend``, ``seed``, ``voice``, ``language``, ``rate`` and ``output``
(default ``<output_prefix>/<job_id>.mp4``). A **curation manifest** has one video a row: ``video_id``,
``video``, optional ``audio``, ``start`` and ``end`` (seconds). Both are read from CSV,
JSONL or Parquet at any storage URI; relative paths in a row are relative to the manifest's folder.

Rows are validated one by one: a bad row becomes an ``error`` result naming the row and the fix, and
the rest of the manifest goes on. Each valid job carries an ``input_digest`` (a hash of what it reads:
the reference's and driver's size and mtime or S3 ETag, the driver, seconds, backend, seed, output), so
a rerun can skip a job that finished with the same inputs and render again one whose inputs changed.

Finished jobs leave a done marker (``<output_prefix>/_done/<job_id>.json``, the result row) written
after the video. Planning, results and reruns are the same for every kind of job: :mod:`facepose.batch`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from facepose import storage
from facepose.config import Config, RenderConfig
from facepose.errors import FaceposeError, InputError, NoFaceError

log = logging.getLogger(__name__)

#: Per-row pose controls: a value overrides ``pose.adjust.<name>`` for the row (an empty cell keeps the run's).
ADJUST_COLUMNS = ("head_amplitude", "expression", "blink_rate", "smoothing", "yaw", "pitch", "roll")
RENDER_COLUMNS = ("job_id", "reference", "driver", "driver_type", "seconds", "backend", "seed", "output",
                  "voice", "language", "rate") + ADJUST_COLUMNS  # voice, language, rate: text drivers (facepose.lesson)
CURATE_COLUMNS = ("video_id", "video", "audio", "start", "end")
STATUSES = ("ok", "error", "skipped")
DONE_DIR = "_done"

#: The results Parquet: one row a job.
RESULT_SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("status", pa.string()),  # ok | error | skipped
        ("output", pa.string()),
        ("frames", pa.int64()),
        ("seconds", pa.float64()),  # length of the video
        ("render_s", pa.float64()),  # wall time of the job
        ("error", pa.string()),
        ("error_kind", pa.string()),  # FaceposeError.kind, or "internal"
        ("transient", pa.bool_()),  # the error may pass on its own (storage blips): reruns retry it
        ("input_digest", pa.string()),
        ("finished_at", pa.string()),  # ISO 8601, UTC
    ]
)

_UNSAFE = set('/\\:*?"<>|')  # path separators and what Windows refuses in names


# -- tables: CSV, JSONL, Parquet -----------------------------------------------------------------
def _format(uri: str) -> str:
    name = storage.parse(uri).path.lower()
    for suffix, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise InputError(f"{uri}: unknown manifest format; use a .csv, .jsonl or .parquet file")


def _decode(uri: str, data: bytes) -> str:
    """Text of a CSV: UTF-8 (with or without BOM), UTF-16 with a BOM, or Windows-1252 (what Excel's
    plain "CSV" saves) when the bytes are not UTF-8 but read as clean Windows-1252 text."""
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = f"byte 0x{data[e.start]:02x} at offset {e.start}"
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise InputError(f"{uri}: not UTF-8 text ({bad}) nor Windows-1252; save the manifest as 'CSV UTF-8'") from None
    if "\x00" in text or any(unicodedata.category(c) == "Cc" and c not in "\r\n\t" for c in text):
        raise InputError(f"{uri}: not a text file ({bad} and control characters); save the manifest as 'CSV UTF-8'")
    log.warning("%s: not UTF-8 (%s); read it as Windows-1252, Excel's default. Save it as 'CSV UTF-8' to be sure", uri, bad)
    return text


def _delimiter(uri: str, header: str, required: tuple[str, ...]) -> str:
    """The CSV separator: ``,`` unless the header only makes sense split on ``;`` or a tab."""
    found = {}
    for sep in (",", ";", "\t"):
        names = [n.strip() for n in next(csv.reader([header], delimiter=sep), [])]
        found[sep] = names
        if required and all(r in names for r in required):
            return sep
        if not required and len(names) > 1:
            return sep
    names = found[","]
    need = ", ".join(required)
    raise InputError(f"{uri}: missing the column(s) {', '.join(r for r in required if r not in names)}: the header reads "
                     f"{header.strip()[:120]!r}; a manifest needs {need} in its first line, separated by ',' (or ';')")


def read_rows(uri: str, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a CSV, JSONL or Parquet table at ``uri`` as dicts (empty CSV cells become None).

    ``required``: columns the table must have (checked on the CSV header or the Parquet schema). A CSV
    may be UTF-8, UTF-16 with a BOM or Windows-1252, separated by ``,``, ``;`` or tabs (chosen by which
    one yields the required columns). Raises InputError, naming the file and the fix, for a file that is
    not such a table; StorageError when it cannot be read."""
    return [row for batch in iter_row_batches(uri, required) for row in batch]


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their ends, one at a time (``io.StringIO`` would copy the text, at up
    to 4 bytes a character)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` items (the last one shorter) from any iterable, read lazily."""
    size, batch = max(1, int(size)), []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def iter_row_batches(uri: str, required: tuple[str, ...] = (), size: int = 2000) -> Iterator[list[dict[str, Any]]]:
    """:func:`read_rows` in batches of ``size`` rows, decoded as they are read: memory holds the file's
    bytes and one batch of row dicts, not every row (Parquet: one record batch at a time)."""
    fmt = _format(uri)
    data = storage.read_bytes(uri)
    try:
        if fmt == "csv":
            text = _decode(uri, data)
            del data
            header = next((line for line in text.splitlines() if line.strip()), "")
            if not header:
                return
            sep = _delimiter(uri, header, required)
            rows = ({k.strip(): (v.strip() if isinstance(v, str) and v.strip() != "" else None) for k, v in row.items() if k}
                    for row in csv.DictReader(_lines(text), delimiter=sep))
        elif fmt == "jsonl":
            def jsonl() -> Iterator[dict[str, Any]]:
                for n, line in enumerate(io.StringIO(data.decode("utf-8-sig")), 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise InputError(f"{uri}: line {n} is not a JSON object")
                        yield row
            rows = jsonl()
        else:
            pf = pq.ParquetFile(io.BytesIO(data))
            missing = [r for r in required if r not in pf.schema_arrow.names]
            if missing:
                raise InputError(f"{uri}: missing the column(s) {', '.join(missing)} (found {', '.join(pf.schema_arrow.names)}); add them")
            rows = (row for b in pf.iter_batches(batch_size=size) for row in b.to_pylist())
        yield from batches(rows, size)
    except UnicodeDecodeError as e:
        raise InputError(f"{uri}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8") from None
    except (json.JSONDecodeError, csv.Error, pa.ArrowInvalid) as e:
        raise InputError(f"{uri}: not a readable {fmt} table ({str(e).splitlines()[0][:160]})") from None


MAX_ID_CHARS = 128
MAX_ID_BYTES = 200  # file systems allow 255 bytes a name; leave room for suffixes


def check_id(value: str) -> Optional[str]:
    """Why ``value`` cannot be a job id (None when it can): ids become file names (``<id>.mp4``,
    ``_done/<id>.json``), so letters of any script, digits, spaces and punctuation are fine, but not
    path separators, a leading dot, control characters or more than 128 characters (200 UTF-8 bytes)."""
    if len(value) > MAX_ID_CHARS:
        return f"is {len(value)} characters long; at most {MAX_ID_CHARS}"
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        return f"is {len(value.encode('utf-8'))} bytes long in UTF-8; at most {MAX_ID_BYTES} (a file name's limit)"
    if value.startswith("."):
        return "starts with '.' (a hidden file name)"
    bad = sorted({c for c in value if c in _UNSAFE or (unicodedata.category(c)[0] in "CZ" and c != " ")})
    if bad:
        return f"holds {', '.join(repr(c) for c in bad)}; use letters, digits, spaces, '.', '_' or '-'"
    return None


def write_rows(uri: str, rows: list[dict[str, Any]], schema: Optional[pa.Schema] = None) -> None:
    """Write ``rows`` as CSV, JSONL or Parquet (by the extension of ``uri``), atomically."""
    fmt = _format(uri)
    if fmt == "parquet":
        buf = io.BytesIO()
        table = pa.Table.from_pylist(rows, schema=schema) if schema is not None else pa.Table.from_pylist(rows)
        pq.write_table(table, buf, compression="zstd")
        storage.write_bytes(uri, buf.getvalue())
    elif fmt == "jsonl":
        storage.write_text(uri, "".join(json.dumps(r, default=str) + "\n" for r in rows))
    else:
        out = io.StringIO()
        names = list(schema.names) if schema is not None else list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(out, fieldnames=names, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in names})
        storage.write_text(uri, out.getvalue())


# -- values ---------------------------------------------------------------------------------------
def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _text(v: Any) -> Optional[str]:
    return None if _blank(v) else str(v).strip()


def resolve(value: str, base: str) -> str:
    """A row's path: URIs, absolute paths and ``preset:`` names stay; a relative path is taken relative
    to ``base`` (the manifest's folder)."""
    if value.startswith(("preset:", "text:")) or "://" in value or os.path.isabs(value) or not base:
        return value
    if storage.is_remote(base):
        loc = storage.parse(base)
        key = os.path.normpath(str(PurePosixPath(loc.path) / value)).lstrip("/")
        return f"s3://{loc.bucket}/{key}"
    return os.path.normpath(os.path.join(storage.parse(base).path, value))


def manifest_dir(uri: str) -> str:
    """The folder relative paths in the manifest at ``uri`` are resolved against."""
    loc = storage.parse(uri)
    if loc.scheme == "s3":
        parent = str(PurePosixPath(loc.path).parent)
        return f"s3://{loc.bucket}" + ("" if parent in (".", "") else f"/{parent}")
    return os.path.dirname(os.path.abspath(loc.path))


def fingerprint(uri: str) -> Optional[str]:
    """What identifies the bytes at ``uri`` without reading them (see :func:`facepose.storage.fingerprint`)."""
    return storage.fingerprint(uri)


def digest(parts: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able dict."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# -- render jobs ------------------------------------------------------------------------------------
@dataclass
class RenderJob:
    """A validated manifest row; ``marker`` is where its done marker goes."""

    job_id: str
    reference: str
    driver: str
    output: str
    marker: str
    driver_type: Optional[str] = None
    seconds: Optional[float] = None
    backend: str = "warp"
    seed: int = 0
    input_digest: str = ""
    voice: Optional[str] = None  # text drivers: tts.voice / tts.language / tts.rate for this row
    language: Optional[str] = None
    rate: Optional[float] = None
    adjust: Optional[dict[str, float]] = None  # ADJUST_COLUMNS set on this row -> their values (pose.adjust overrides)

    def to_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}  # flat fields: no deep copy (asdict is slow)


def _adjust(raw: dict[str, Any], n: int, job_id: str) -> Optional[dict[str, float]]:
    """The row's pose controls (ADJUST_COLUMNS that are not empty), each within ``pose.adjust``'s limits."""
    from facepose.pose.adjust import LIMITS

    values = {}
    for name in ADJUST_COLUMNS:
        if _blank(raw.get(name)):
            continue
        lo, hi = LIMITS[name]
        try:
            v = float(raw[name])
        except (TypeError, ValueError):
            raise _field_error(n, job_id, f"{name} {raw[name]!r} is not a number") from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise _field_error(n, job_id, f"{name} must be between {lo:g} and {hi:g} (pose.adjust.{name}), got {raw[name]!r}")
        values[name] = v
    return values or None


def result_row(job_id: str, status: str, *, output: Optional[str] = None, frames: int = 0, seconds: float = 0.0, render_s: float = 0.0,
               error: Optional[str] = None, error_kind: Optional[str] = None, transient: bool = False, input_digest: Optional[str] = None) -> dict[str, Any]:
    """One row of the results Parquet (RESULT_SCHEMA)."""
    return {
        "job_id": job_id, "status": status, "output": output, "frames": int(frames), "seconds": float(seconds),
        "render_s": float(render_s), "error": error, "error_kind": error_kind, "transient": bool(transient),
        "input_digest": input_digest, "finished_at": utc_now(),
    }


def error_result(job_id: str, exc: BaseException, **kw: Any) -> dict[str, Any]:
    """An ``error`` result for ``exc``: its one-line message, kind and transience."""
    if isinstance(exc, FaceposeError):
        message, kind = str(exc), exc.kind
    else:
        message, kind = f"{type(exc).__name__}: {exc}", "internal"
    return result_row(job_id, "error", error=message, error_kind=kind, transient=bool(getattr(exc, "transient", False)), **kw)


def _field_error(n: int, job_id: Optional[str], message: str) -> InputError:
    where = f"job {job_id!r} (manifest row {n})" if job_id else f"manifest row {n}"
    return InputError(f"{where}: {message}")


def parse_render_rows(
    rows: Iterable[dict[str, Any]], output_prefix: str, *, base: str = "", backend: str = "warp", seed: int = 0, max_seconds: float = math.inf,
    start: int = 1, seen: Optional[dict[str, dict[str, Any]]] = None,
) -> tuple[list[RenderJob], list[dict[str, Any]]]:
    """Validate manifest rows -> (jobs, error results). ``base`` is the folder relative paths start from;
    ``backend``/``seed`` are the defaults for rows that name none; a row asking for more than
    ``max_seconds`` fails. Input digests are filled in later by :func:`attach_digests` (they need storage).
    A manifest read in batches: ``start`` is the row number of the batch's first row, and ``seen`` (one
    dict for all batches) carries the ids and outputs of earlier batches for the uniqueness checks."""
    jobs: list[RenderJob] = []
    errors: list[dict[str, Any]] = []
    seen = {} if seen is None else seen
    seen_ids: dict[str, int] = seen.setdefault("ids", {})
    seen_outputs: dict[str, str] = seen.setdefault("outputs", {})
    not_default: set[str] = seen.setdefault("not_default", set())  # ids whose output is not <prefix>/<id>.mp4 (or that failed)
    prefix = output_prefix.rstrip("/")
    prefix_path = os.path.normpath(storage.parse(prefix).path)
    for n, raw in enumerate(rows, start):
        job_id = _text(raw.get("job_id"))
        job_id = unicodedata.normalize("NFC", job_id) if job_id else None
        try:
            if job_id is None:
                raise _field_error(n, None, "job_id is empty; give every row a unique job_id")
            problem = check_id(job_id)
            if problem:
                raise _field_error(n, job_id, f"job_id {problem}")
            if job_id in seen_ids:
                raise _field_error(n, job_id, f"duplicate job_id (first on row {seen_ids[job_id]}); job ids must be unique")
            seen_ids[job_id] = n
            unknown = sorted(set(raw) - set(RENDER_COLUMNS))
            if unknown:
                log.debug("manifest row %d: ignoring columns %s", n, unknown)
            reference = _text(raw.get("reference"))
            driver = _text(raw.get("driver"))
            if reference is None:
                raise _field_error(n, job_id, "reference is empty; give the URI of a photo with one face")
            if driver is None:
                raise _field_error(n, job_id, "driver is empty; give preset:<name> or the URI of a video, audio file or pose Parquet")
            if driver.startswith("preset:"):  # a misspelt preset fails at planning (and in --dry-run), not in an actor
                from facepose.pose.presets import check_preset

                try:
                    check_preset(driver)
                except InputError as e:
                    raise _field_error(n, job_id, str(e)) from None
            seconds = None
            if not _blank(raw.get("seconds")):
                try:
                    seconds = float(raw["seconds"])
                except (TypeError, ValueError):
                    raise _field_error(n, job_id, f"seconds {raw['seconds']!r} is not a number") from None
                if not (seconds > 0 and math.isfinite(seconds)):
                    raise _field_error(n, job_id, f"seconds must be positive, got {raw['seconds']!r}")
                if seconds > max_seconds:
                    raise _field_error(n, job_id, f"asks for {seconds:g} s, more than batch.max_seconds={max_seconds:g}; "
                                                  "split the job or raise the limit (-s batch.max_seconds=...)")
            row_seed = seed
            if not _blank(raw.get("seed")):
                try:
                    row_seed = int(float(raw["seed"]))
                except (TypeError, ValueError):
                    raise _field_error(n, job_id, f"seed {raw['seed']!r} is not an integer") from None
            row_backend = _text(raw.get("backend")) or backend
            rate = None
            if not _blank(raw.get("rate")):
                try:
                    rate = float(raw["rate"])
                except (TypeError, ValueError):
                    raise _field_error(n, job_id, f"rate {raw['rate']!r} is not a number (1 is the voice's own speed)") from None
            output = _text(raw.get("output"))
            default_output = output is None  # <prefix>/<job_id>.mp4 is under the prefix by construction (ids hold no '/')
            if output is None:
                output = f"{prefix}/{job_id}.mp4"
            elif not ("://" in output or os.path.isabs(output)):
                output = storage.join(prefix, output)
            if not default_output and (not storage.is_under(output, prefix) or storage.is_under(output, storage.join(prefix, DONE_DIR))):
                raise _field_error(n, job_id, f"output {output} is outside the output prefix {prefix}; leave output empty or put it under the prefix")
            if not output.lower().endswith(".mp4"):
                raise _field_error(n, job_id, f"output {output} must end in .mp4")
            # seen_outputs holds the outputs that rows named (few); a default output <prefix>/<id>.mp4 is
            # known from its id, so 100,000 default rows cost no path each
            key = f"{prefix_path}/{job_id}.mp4" if default_output else os.path.normpath(storage.parse(output).path)
            other = seen_outputs.get(key)
            if other is None and not default_output and os.path.dirname(key) == prefix_path and key.endswith(".mp4"):
                owner = unicodedata.normalize("NFC", os.path.basename(key)[: -len(".mp4")])
                other = owner if owner in seen_ids and owner != job_id and owner not in not_default else None
            if other is not None:
                raise _field_error(n, job_id, f"output {output} is also the output of job {other!r}; outputs must differ")
            if not default_output:
                seen_outputs[key] = job_id
                not_default.add(job_id)  # its default path stays free
            jobs.append(
                RenderJob(
                    job_id=job_id, reference=resolve(reference, base), driver=resolve(driver, base), output=output,
                    marker=storage.join(prefix, DONE_DIR, f"{job_id}.json"), driver_type=_text(raw.get("driver_type")),
                    seconds=seconds, backend=row_backend, seed=row_seed,
                    voice=_text(raw.get("voice")), language=_text(raw.get("language")), rate=rate, adjust=_adjust(raw, n, job_id),
                )
            )
        except InputError as e:
            rid = job_id if job_id and seen_ids.get(job_id) == n else f"#{n}"
            if rid == job_id:
                not_default.add(job_id)
            errors.append(error_result(rid, e))
    return jobs, errors


def attach_digests(jobs: list[RenderJob], fingerprints: Optional[dict[str, Optional[str]]] = None) -> tuple[list[RenderJob], list[dict[str, Any]]]:
    """Fill each job's ``input_digest`` from its inputs' fingerprints -> (jobs, error results for jobs
    whose reference or driver file does not exist). Transient storage errors raise (the caller retries).
    ``fingerprints``: a cache by URI for one planning pass (many jobs share a reference)."""
    ok: list[RenderJob] = []
    errors: list[dict[str, Any]] = []
    cache = {} if fingerprints is None else fingerprints

    def fingerprint(uri: str) -> Optional[str]:
        if uri not in cache:
            cache[uri] = storage.fingerprint(uri)
        return cache[uri]

    for job in jobs:
        ref_fp = fingerprint(job.reference)
        if ref_fp is None:
            errors.append(error_result(job.job_id, InputError(f"job {job.job_id!r}: reference {job.reference} does not exist; check the manifest's reference column"), output=job.output))
            continue
        drv_fp = job.driver if job.driver.startswith(("preset:", "text:")) else fingerprint(job.driver)
        if drv_fp is None:
            errors.append(error_result(job.job_id, InputError(f"job {job.job_id!r}: driver {job.driver} does not exist; check the manifest's driver column"), output=job.output))
            continue
        job.input_digest = digest(
            {"reference": job.reference, "reference_fp": ref_fp, "driver": job.driver, "driver_fp": drv_fp, "driver_type": job.driver_type,
             "seconds": job.seconds, "backend": job.backend, "seed": job.seed, "output": job.output,
             **{k: v for k in ("voice", "language", "rate", "adjust") if (v := getattr(job, k)) is not None}}
        )
        ok.append(job)
    return ok, errors


# -- results (the app reads them; runs write them through facepose.batch) ----------------------------
def results_uri(out: str, render: Optional[RenderConfig] = None) -> str:
    """Where a run's results Parquet goes: ``<out>/<render.results>`` (None: the default section)."""
    return storage.join(out, (render if render is not None else RenderConfig()).results)


def read_markers(output_prefix: str, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Done markers under ``<output_prefix>/_done/`` for the given job ids (one LIST, then a GET each)."""
    wanted = set(job_ids)
    found: dict[str, dict[str, Any]] = {}
    for uri in storage.listdir(storage.join(output_prefix, DONE_DIR)):
        name = PurePosixPath(storage.parse(uri).path).name
        job_id = name[: -len(".json")] if name.endswith(".json") else None
        if job_id in wanted:
            try:
                found[job_id] = json.loads(storage.read_text(uri))
            except json.JSONDecodeError:
                log.warning("ignoring unreadable done marker %s", uri)
    return found


def read_results(uri: str) -> dict[str, dict[str, Any]]:
    """Render results by job_id: the results Parquet at ``uri`` merged with the result parts beside it
    (``_results/``, see :mod:`facepose.batch.results`); empty when there are none yet."""
    from facepose.batch.results import merge_into, part_uris

    merged: dict[str, dict[str, Any]] = {}
    if storage.exists(uri):
        try:
            merge_into(merged, pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist(), "job_id")
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{uri}: results file is not readable Parquet ({e}); move it away to start afresh") from None
    out = uri.rsplit("/", 1)[0] if "/" in uri else "."
    for part in part_uris(out):
        with contextlib.suppress(FaceposeError):  # compacted away between the listing and the read
            merge_into(merged, pq.read_table(io.BytesIO(storage.read_bytes(part))).to_pylist(), "job_id")
    return merged


# -- running one job (the body of a render actor's call) -------------------------------------------
def with_adjust(cfg: Optional[Config], adjust: dict[str, float]) -> Config:
    """A copy of ``cfg`` (None: the defaults) whose ``pose.adjust`` takes the row's values ``adjust``."""
    from dataclasses import replace

    cfg = cfg if cfg is not None else Config()
    return replace(cfg, pose=replace(cfg.pose, adjust=replace(cfg.pose.adjust, **adjust)))


def run_render_job(row: dict[str, Any], cfg: Optional[Config] = None, renderers: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Render one job (a :meth:`RenderJob.to_row` dict) with :func:`facepose.render.job.render_video`,
    then write its done marker. Never raises: a failure is an ``error`` result row.

    ``renderers`` caches loaded backends by name across calls (an actor keeps it)."""
    from facepose.render.base import get_renderer
    from facepose.render.job import render_video

    job = RenderJob(**{k: row.get(k) for k in RenderJob.__dataclass_fields__})
    t0 = time.perf_counter()
    renderers = {} if renderers is None else renderers
    try:
        renderer = renderers.get(job.backend)
        if renderer is None:
            renderer = renderers[job.backend] = get_renderer(job.backend, cfg)
        if any(v is not None for v in (job.voice, job.language, job.rate)):
            from facepose.lesson import with_voice

            cfg = with_voice(cfg, job.voice, job.language, job.rate)
        if job.adjust:
            cfg = with_adjust(cfg, job.adjust)
        if storage.remove_stale_parts(job.output):  # an earlier attempt at this job was killed mid-write
            log.info("job %s: removed the temporary files of an interrupted earlier attempt", job.job_id)
        res = render_video(
            job.reference, job.driver, job.output, seconds=job.seconds, backend=job.backend, seed=job.seed, cfg=cfg,
            renderer=renderer, driver_type=job.driver_type,
        )
        result = result_row(job.job_id, "ok", output=job.output, frames=res.frames, seconds=res.seconds,
                            render_s=time.perf_counter() - t0, input_digest=job.input_digest)
        storage.write_text(job.marker, json.dumps(result))  # written last: it vouches for the video
        log.info("job %s: ok, %d frames -> %s (%.1fs)", job.job_id, res.frames, job.output, result["render_s"])
        return result
    except Exception as exc:
        if not isinstance(exc, FaceposeError):
            log.exception("job %s: unexpected error", job.job_id)
        result = error_result(job.job_id, exc, output=job.output, render_s=time.perf_counter() - t0, input_digest=job.input_digest)
        if isinstance(exc, NoFaceError) and job.reference not in result["error"]:
            result["error"] = f"{result['error']} (reference: {job.reference})"  # the renderer only saw pixels
        log.warning("job %s: %s", job.job_id, result["error"])
        return result


# -- curation manifests ----------------------------------------------------------------------------
@dataclass
class CurateJob:
    """A validated curation row: a video (or a time range of one) and where its outputs go."""

    video_id: str
    video: str
    audio: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    input_digest: str = ""

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


#: One row a video in a curation run's summary (the per-clip rows go to index/).
CURATE_RESULT_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("status", pa.string()),  # ok | error | skipped
        ("clips", pa.int64()),  # clips found (kept + dropped)
        ("kept", pa.int64()),
        ("dropped", pa.string()),  # JSON {reason: count}
        ("frames", pa.int64()),  # frames decoded at 24 fps
        ("elapsed_s", pa.float64()),
        ("error", pa.string()),
        ("error_kind", pa.string()),
        ("transient", pa.bool_()),
        ("input_digest", pa.string()),
        ("finished_at", pa.string()),
    ]
)


def parse_curate_rows(rows: Iterable[dict[str, Any]], *, base: str = "", start: int = 1,
                      seen_state: Optional[dict[str, dict[str, Any]]] = None) -> tuple[list[CurateJob], list[dict[str, Any]]]:
    """Validate curation rows -> (jobs, error rows in CURATE_RESULT_SCHEMA form). ``start``/``seen_state``:
    as :func:`parse_render_rows`'s ``start``/``seen`` for a manifest read in batches."""
    jobs: list[CurateJob] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = ({} if seen_state is None else seen_state).setdefault("ids", {})
    for n, raw in enumerate(rows, start):
        video_id = _text(raw.get("video_id"))
        video_id = unicodedata.normalize("NFC", video_id) if video_id else None
        try:
            where = f"video {video_id!r} (manifest row {n})" if video_id else f"manifest row {n}"
            if video_id is None:
                raise InputError(f"{where}: video_id is empty; give every row a unique video_id")
            problem = check_id(video_id)
            if problem:
                raise InputError(f"{where}: video_id {problem}")
            if video_id in seen:
                raise InputError(f"{where}: duplicate video_id (first on row {seen[video_id]}); ids must be unique")
            seen[video_id] = n
            video = _text(raw.get("video"))
            if video is None:
                raise InputError(f"{where}: video is empty; give the URI of a video")
            times = {}
            for key in ("start", "end"):
                if not _blank(raw.get(key)):
                    try:
                        times[key] = float(raw[key])
                    except (TypeError, ValueError):
                        raise InputError(f"{where}: {key} {raw[key]!r} is not a number of seconds") from None
                    if not (times[key] >= 0 and math.isfinite(times[key])):
                        raise InputError(f"{where}: {key} must be a non-negative number of seconds, got {raw[key]!r}")
            if "start" in times and "end" in times and times["end"] <= times["start"]:
                raise InputError(f"{where}: end ({times['end']}) must be after start ({times['start']})")
            audio = _text(raw.get("audio"))
            jobs.append(CurateJob(video_id=video_id, video=resolve(video, base), audio=resolve(audio, base) if audio else None, start=times.get("start"), end=times.get("end")))
        except InputError as e:
            rid = video_id if video_id and seen.get(video_id) == n else f"#{n}"
            errors.append(curate_result(rid, "error", error=str(e), error_kind=e.kind))
    return jobs, errors


def curate_result(video_id: str, status: str, *, clips: int = 0, kept: int = 0, dropped: Optional[dict[str, int]] = None, frames: int = 0,
                  elapsed_s: float = 0.0, error: Optional[str] = None, error_kind: Optional[str] = None, transient: bool = False,
                  input_digest: Optional[str] = None) -> dict[str, Any]:
    """One row a video (CURATE_RESULT_SCHEMA)."""
    return {
        "video_id": video_id, "status": status, "clips": int(clips), "kept": int(kept), "dropped": json.dumps(dropped or {}, sort_keys=True),
        "frames": int(frames), "elapsed_s": float(elapsed_s), "error": error, "error_kind": error_kind, "transient": bool(transient),
        "input_digest": input_digest, "finished_at": utc_now(),
    }
