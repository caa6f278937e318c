"""Manifests and results of the batch jobs (DESIGN.md, "Data contracts").

A **render manifest** has one job a row: ``job_id``, ``reference``, ``driver`` (``preset:<name>``,
``text:<script>`` or a URI of a video, an audio file, a pose Parquet or a .txt/.md script), optional
``driver_type``, ``seconds``, ``backend``, ``seed``, ``voice``, ``language``, ``rate`` and ``output`` (default ``<output_prefix>/<job_id>.mp4``). A **curation manifest** has one video a row:
``video_id``, ``video``, optional ``audio``, ``start`` and ``end`` (seconds). Both are read from CSV,
JSONL or Parquet at any storage URI; relative paths in a row are relative to the manifest's folder.

Rows are validated one by one: a bad row becomes an ``error`` result naming the row and the fix, and
the rest of the manifest goes on. Each valid job carries an ``input_digest`` (a hash of what it reads:
the reference's and driver's size and mtime or S3 ETag, the driver, seconds, backend, seed, output), so
a rerun can skip a job that finished with the same inputs and render again one whose inputs changed.

Finished jobs leave a done marker (``<output_prefix>/_done/<job_id>.json``, the result row) written
after the video, and a results Parquet (one row a job) that each run merges into.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from facepose import storage
from facepose.errors import FaceposeError, InputError, NoFaceError

log = logging.getLogger(__name__)

RENDER_COLUMNS = ("job_id", "reference", "driver", "driver_type", "seconds", "backend", "seed", "output",
                  "voice", "language", "rate")  # the last three: text drivers (facepose.lesson)
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

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# -- tables: CSV, JSONL, Parquet -----------------------------------------------------------------
def _format(uri: str) -> str:
    name = storage.parse(uri).path.lower()
    for suffix, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise InputError(f"{uri}: unknown manifest format; use a .csv, .jsonl or .parquet file")


def read_rows(uri: str) -> list[dict[str, Any]]:
    """The rows of a CSV, JSONL or Parquet table at ``uri`` as dicts (empty CSV cells become None).

    Raises InputError for a file that is not such a table, StorageError when it cannot be read."""
    fmt = _format(uri)
    data = storage.read_bytes(uri)
    try:
        if fmt == "csv":
            text = data.decode("utf-8-sig")
            return [{k.strip(): (v.strip() if isinstance(v, str) and v.strip() != "" else None) for k, v in row.items() if k} for row in csv.DictReader(io.StringIO(text))]
        if fmt == "jsonl":
            rows = []
            for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise InputError(f"{uri}: line {n} is not a JSON object")
                    rows.append(row)
            return rows
        return pq.read_table(io.BytesIO(data)).to_pylist()
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error, pa.ArrowInvalid) as e:
        raise InputError(f"{uri}: not a readable {fmt} table ({str(e).splitlines()[0][:160]})") from None


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
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


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
    elif isinstance(exc, ValueError):  # e.g. an unknown backend name from a registry
        message, kind = str(exc), "input"
    else:
        message, kind = f"{type(exc).__name__}: {exc}", "internal"
    return result_row(job_id, "error", error=message, error_kind=kind, transient=bool(getattr(exc, "transient", False)), **kw)


def _field_error(n: int, job_id: Optional[str], message: str) -> InputError:
    where = f"job {job_id!r} (manifest row {n})" if job_id else f"manifest row {n}"
    return InputError(f"{where}: {message}")


def parse_render_rows(
    rows: Iterable[dict[str, Any]], output_prefix: str, *, base: str = "", backend: str = "warp", seed: int = 0
) -> tuple[list[RenderJob], list[dict[str, Any]]]:
    """Validate manifest rows -> (jobs, error results). ``base`` is the folder relative paths start from;
    ``backend``/``seed`` are the defaults for rows that name none. Input digests are filled in later by
    :func:`attach_digests` (they need storage)."""
    jobs: list[RenderJob] = []
    errors: list[dict[str, Any]] = []
    seen_ids: dict[str, int] = {}
    seen_outputs: dict[str, str] = {}
    prefix = output_prefix.rstrip("/")
    for n, raw in enumerate(rows, 1):
        job_id = _text(raw.get("job_id"))
        try:
            if job_id is None:
                raise _field_error(n, None, "job_id is empty; give every row a unique job_id")
            if not _ID.match(job_id):
                raise _field_error(n, job_id, "job_id may only hold letters, digits, '.', '_' and '-' (at most 128), starting with a letter or digit")
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
            seconds = None
            if not _blank(raw.get("seconds")):
                try:
                    seconds = float(raw["seconds"])
                except (TypeError, ValueError):
                    raise _field_error(n, job_id, f"seconds {raw['seconds']!r} is not a number") from None
                if not (seconds > 0 and math.isfinite(seconds)):
                    raise _field_error(n, job_id, f"seconds must be positive, got {raw['seconds']!r}")
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
            if output is None:
                output = f"{prefix}/{job_id}.mp4"
            elif not ("://" in output or os.path.isabs(output)):
                output = storage.join(prefix, output)
            if not storage.is_under(output, prefix) or storage.is_under(output, storage.join(prefix, DONE_DIR)):
                raise _field_error(n, job_id, f"output {output} is outside the output prefix {prefix}; leave output empty or put it under the prefix")
            if not output.lower().endswith(".mp4"):
                raise _field_error(n, job_id, f"output {output} must end in .mp4")
            key = os.path.normpath(storage.parse(output).path)
            if key in seen_outputs:
                raise _field_error(n, job_id, f"output {output} is also the output of job {seen_outputs[key]!r}; outputs must differ")
            seen_outputs[key] = job_id
            jobs.append(
                RenderJob(
                    job_id=job_id, reference=resolve(reference, base), driver=resolve(driver, base), output=output,
                    marker=storage.join(prefix, DONE_DIR, f"{job_id}.json"), driver_type=_text(raw.get("driver_type")),
                    seconds=seconds, backend=row_backend, seed=row_seed,
                    voice=_text(raw.get("voice")), language=_text(raw.get("language")), rate=rate,
                )
            )
        except InputError as e:
            rid = job_id if job_id and _ID.match(job_id) and seen_ids.get(job_id) == n else f"#{n}"
            errors.append(error_result(rid, e))
    return jobs, errors


def attach_digests(jobs: list[RenderJob]) -> tuple[list[RenderJob], list[dict[str, Any]]]:
    """Fill each job's ``input_digest`` from its inputs' fingerprints -> (jobs, error results for jobs
    whose reference or driver file does not exist). Transient storage errors raise (the caller retries)."""
    ok: list[RenderJob] = []
    errors: list[dict[str, Any]] = []
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
             **{k: v for k in ("voice", "language", "rate") if (v := getattr(job, k)) is not None}}
        )
        ok.append(job)
    return ok, errors


# -- planning a run -------------------------------------------------------------------------------
@dataclass
class RenderPlan:
    """What a run does: ``todo`` jobs to render, ``done`` results kept from earlier runs (ok with the
    same inputs), ``failed`` results of rows that cannot run (bad rows, missing inputs)."""

    todo: list[RenderJob]
    done: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    previous: Optional[dict[str, dict[str, Any]]] = None  # the results file as it was

    @property
    def total(self) -> int:
        return len(self.todo) + len(self.done) + len(self.failed)


def needs_run(job: RenderJob, previous: Optional[dict[str, Any]], retry_failed: bool) -> bool:
    """Whether ``job`` renders in this run, given its earlier result: never run, inputs changed, or an
    earlier error that is transient (or any error with ``retry_failed``)."""
    if previous is None or previous.get("input_digest") != job.input_digest:
        return True
    if previous.get("status") == "ok":
        return False
    return bool(retry_failed or previous.get("transient"))


def plan_render(
    jobs: list[RenderJob], invalid: list[dict[str, Any]], previous: dict[str, dict[str, Any]], markers: dict[str, dict[str, Any]], retry_failed: bool = False
) -> RenderPlan:
    """Split validated ``jobs`` into work and kept results. ``previous``: earlier results by job_id;
    ``markers``: done markers by job_id (ok results a killed run wrote before it could merge them)."""
    todo, done = [], []
    for job in jobs:
        prev = previous.get(job.job_id)
        marker = markers.get(job.job_id)
        if marker is not None and marker.get("input_digest") == job.input_digest and (prev is None or prev.get("input_digest") != job.input_digest or prev.get("status") != "ok"):
            prev = marker  # the marker is newer than the results file
        if needs_run(job, prev, retry_failed):
            todo.append(job)
        else:
            done.append(prev)
    failed = []
    for row in invalid:
        prev = previous.get(row["job_id"])
        # a row that failed validation the same way before keeps its old timestamp; otherwise record it
        failed.append(prev if prev is not None and prev.get("status") == "error" and prev.get("error") == row["error"] else row)
    return RenderPlan(todo=todo, done=done, failed=failed, previous=previous)


def results_uri(out: str, cfg: Any = None) -> str:
    """Where a run's results Parquet goes: ``<out>/<render.results>``."""
    name = getattr(getattr(cfg, "render", None), "results", None) or "results.parquet"
    return storage.join(out, name)


def prepare_render(manifest: str, out: str, cfg: Any = None, retry_failed: bool = False) -> RenderPlan:
    """Read and validate the manifest at ``manifest``, fingerprint the inputs, and plan the run against
    earlier results and done markers under ``out``. Raises InputError for a manifest that cannot be read
    at all (bad rows become ``failed`` results); StorageError (maybe transient) when storage fails."""
    render_cfg = getattr(cfg, "render", None)
    rows = read_rows(manifest)
    if not rows:
        raise InputError(f"{manifest}: the manifest has no rows; add one job per row ({', '.join(RENDER_COLUMNS)})")
    jobs, invalid = parse_render_rows(
        rows, out, base=manifest_dir(manifest), backend=getattr(render_cfg, "backend", "warp"), seed=getattr(render_cfg, "seed", 0)
    )
    jobs, missing = attach_digests(jobs)
    previous = read_results(results_uri(out, cfg))
    unsure = [j.job_id for j in jobs if not (previous.get(j.job_id, {}).get("status") == "ok" and previous[j.job_id].get("input_digest") == j.input_digest)]
    markers = read_markers(out, unsure) if unsure else {}
    plan = plan_render(jobs, invalid + missing, previous, markers, retry_failed)
    log.info("%s: %d jobs, %d to render, %d done before, %d bad rows", manifest, plan.total, len(plan.todo), len(plan.done), len(plan.failed))
    return plan


def finished_result(row: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The ok result of a job (a RenderJob row) recorded by its done marker with the same inputs, if any."""
    uri = row["marker"]
    if not storage.exists(uri):
        return None
    try:
        done = json.loads(storage.read_text(uri))
    except json.JSONDecodeError:
        return None
    return done if done.get("status") == "ok" and done.get("input_digest") == row.get("input_digest") else None


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


# -- results --------------------------------------------------------------------------------------
def read_results(uri: str) -> dict[str, dict[str, Any]]:
    """Earlier results by job_id; empty when there are none yet."""
    if not storage.exists(uri):
        return {}
    try:
        rows = pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{uri}: results file is not readable Parquet ({e}); move it away to start afresh") from None
    return {r["job_id"]: r for r in rows}


def merge_results(previous: dict[str, dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row a job: ``new`` rows replace earlier ones with the same job_id; ``skipped`` rows never
    replace an earlier result. Sorted by job_id."""
    merged = dict(previous)
    for row in new:
        if row.get("status") == "skipped" and row["job_id"] in merged:
            continue
        merged[row["job_id"]] = row
    return [merged[k] for k in sorted(merged)]


def write_results(uri: str, rows: list[dict[str, Any]]) -> None:
    """The results Parquet, replaced atomically (RESULT_SCHEMA)."""
    clean = [{name: r.get(name) for name in RESULT_SCHEMA.names} for r in rows]
    write_rows(uri, clean, schema=RESULT_SCHEMA)


# -- running one job (the body of a render actor's call) -------------------------------------------
def run_render_job(row: dict[str, Any], cfg: Any = None, renderers: Optional[dict[str, Any]] = None) -> dict[str, Any]:
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
        res = render_video(
            job.reference, job.driver, job.output, seconds=job.seconds, backend=job.backend, seed=job.seed, cfg=cfg,
            renderer=renderer, driver_type=job.driver_type,
        )
        result = result_row(job.job_id, "ok", output=job.output, frames=res.frames, seconds=res.seconds,
                            render_s=time.perf_counter() - t0, input_digest=job.input_digest)
        storage.write_text(job.marker, json.dumps(result))  # written last: it vouches for the video
        log.info("job %s: ok, %d frames -> %s (%.1fs)", job.job_id, res.frames, job.output, result["render_s"])
        return result
    except Exception as exc:  # noqa: BLE001 - one bad row must not take the shard down
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


def parse_curate_rows(rows: Iterable[dict[str, Any]], *, base: str = "") -> tuple[list[CurateJob], list[dict[str, Any]]]:
    """Validate curation rows -> (jobs, error rows in CURATE_RESULT_SCHEMA form)."""
    jobs: list[CurateJob] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, raw in enumerate(rows, 1):
        video_id = _text(raw.get("video_id"))
        try:
            where = f"video {video_id!r} (manifest row {n})" if video_id else f"manifest row {n}"
            if video_id is None or not _ID.match(video_id):
                raise InputError(f"{where}: video_id must be non-empty letters, digits, '.', '_' or '-' (at most 128)")
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
            rid = video_id if video_id and _ID.match(video_id) and seen.get(video_id) == n else f"#{n}"
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
