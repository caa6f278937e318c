"""One storage API over local paths, ``file://`` URIs and ``s3://bucket/key`` (the ``minio`` client).

S3 settings come from the environment (``MINIO_ENDPOINT``, ``MINIO_ACCESS_KEY``, ``MINIO_SECRET_KEY``,
``MINIO_SECURE``) or from :func:`configure` with a :class:`~facepose.config.StorageConfig`; the
environment wins, and keys never come from YAML. Local writes go to a temporary file that is renamed
into place, so a reader never sees half a file; S3 objects only appear once their upload completes.
Transient S3 errors (connection failures, throttling, 5xx) are retried with exponential backoff; what
is left is raised as a :class:`~facepose.errors.StorageError` naming the URI and the endpoint.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, TypeVar
from urllib.parse import urlparse

from facepose.config import StorageConfig
from facepose.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

_config = StorageConfig()
_umask = os.umask(0)
os.umask(_umask)
_FILE_MODE = 0o666 & ~_umask
_clients: dict[tuple, object] = {}
_lock = threading.Lock()

# S3 error codes worth another try; anything else (NoSuchKey, AccessDenied, ...) is final.
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed", "XMinioServerNotInitialized"}


def configure(cfg: StorageConfig) -> None:
    """Use ``cfg`` for S3 access from now on (the environment still wins for endpoint and keys)."""
    global _config
    _config = cfg
    _clients.clear()


# -- URIs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A parsed URI: ``scheme`` is ``file`` or ``s3``; ``path`` is the local path or the object key."""

    scheme: str
    bucket: str
    path: str
    uri: str


def parse(uri: str | os.PathLike) -> Location:
    text = os.fspath(uri)
    if text.startswith("s3://"):
        p = urlparse(text)
        if not p.netloc:
            raise StorageError(f"{text}: an S3 URI needs a bucket (s3://bucket/key)")
        return Location("s3", p.netloc, p.path.lstrip("/"), text)
    if text.startswith("file://"):
        return Location("file", "", urlparse(text).path, text)
    if "://" in text:
        raise StorageError(f"{text}: unsupported URI scheme; use a local path, file:// or s3://")
    return Location("file", "", text, text)


def is_remote(uri: str | os.PathLike) -> bool:
    return parse(uri).scheme == "s3"


def join(prefix: str, *parts: str) -> str:
    """Join path parts onto a path or URI prefix with single slashes."""
    out = os.fspath(prefix).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def is_under(uri: str, prefix: str) -> bool:
    """Whether ``uri`` lies under ``prefix`` (after normalising ``..`` and slashes)."""
    a, b = parse(uri), parse(prefix)
    if a.scheme != b.scheme or a.bucket != b.bucket:
        return False
    if a.scheme == "file":
        pa_, pb = Path(os.path.abspath(a.path)), Path(os.path.abspath(b.path))
        return pa_ == pb or pb in pa_.parents
    ka, kb = os.path.normpath("/" + a.path), os.path.normpath("/" + b.path)
    return ka == kb or ka.startswith(kb.rstrip("/") + "/")


# -- S3 client -----------------------------------------------------------------------------------
def _settings() -> tuple[str, str, str, bool]:
    endpoint = os.environ.get("MINIO_ENDPOINT") or _config.endpoint or ""
    secure_env = os.environ.get("MINIO_SECURE")
    secure = _config.secure if secure_env is None else secure_env.strip().lower() in {"1", "true", "yes", "on"}
    if endpoint.startswith(("http://", "https://")):
        secure = endpoint.startswith("https://")
        endpoint = endpoint.split("://", 1)[1]
    endpoint = endpoint.rstrip("/")
    access = os.environ.get("MINIO_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID") or ""
    secret = os.environ.get("MINIO_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY") or ""
    return endpoint, access, secret, secure


def endpoint_name() -> str:
    endpoint, _, _, secure = _settings()
    return f"{'https' if secure else 'http'}://{endpoint}" if endpoint else "(no endpoint set)"


def client():
    """The shared ``minio.Minio`` client for the current settings."""
    endpoint, access, secret, secure = _settings()
    if not endpoint:
        raise StorageError("no S3 endpoint configured: set MINIO_ENDPOINT (host:port) or storage.endpoint")
    key = (endpoint, access, secret, secure, _config.region)
    with _lock:
        if key not in _clients:
            import urllib3
            from minio import Minio

            # No urllib3-level retries: _retry below owns the policy, so an unreachable endpoint fails
            # after our few attempts instead of urllib3's long default loop.
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=_config.connect_timeout_s, read=300),
                retries=False,
                maxsize=16,
            )
            _clients[key] = Minio(endpoint, access_key=access or None, secret_key=secret or None, secure=secure, region=_config.region, http_client=http)
        return _clients[key]


def _is_transient(exc: BaseException) -> bool:
    import urllib3.exceptions as ue
    from minio.error import S3Error, ServerError

    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES
    if isinstance(exc, ServerError):
        return True
    return isinstance(exc, (ue.HTTPError, ConnectionError, TimeoutError))


def _describe(exc: BaseException, loc: Location) -> tuple[str, bool]:
    from minio.error import S3Error

    if isinstance(exc, S3Error):
        if exc.code in {"NoSuchKey", "NoSuchObject"}:
            return f"{loc.uri}: no such object at {endpoint_name()}", False
        if exc.code == "NoSuchBucket":
            return f"{loc.uri}: bucket {loc.bucket!r} does not exist at {endpoint_name()}", False
        if exc.code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return f"{loc.uri}: access denied by {endpoint_name()} ({exc.code}); check MINIO_ACCESS_KEY/MINIO_SECRET_KEY", False
        return f"{loc.uri}: S3 error {exc.code} from {endpoint_name()}: {exc.message}", exc.code in _TRANSIENT_CODES
    if _is_transient(exc):
        reason = str(exc).split("(Caused by")[-1].strip(" )") or type(exc).__name__
        # urllib3 nests the cause ("HTTPConnection(host=..., port=...): Failed to establish a new
        # connection: [Errno 111] Connection refused"): its last clause says it, on one short line.
        reason = " ".join(reason.split()).rsplit(": ", 1)[-1].strip(" '\"()")[:120] or type(exc).__name__
        return f"{loc.uri}: cannot reach S3 endpoint {endpoint_name()} ({reason})", True
    return f"{loc.uri}: {type(exc).__name__}: {exc}", False


def _retry(loc: Location, op: Callable[[], T]) -> T:
    attempts = 1 + max(0, _config.retries)
    delay = _config.backoff_s
    for attempt in range(attempts):
        try:
            return op()
        except StorageError:
            raise
        except Exception as exc:
            message, transient = _describe(exc, loc)
            if transient and attempt + 1 < attempts:
                log.warning("%s; retrying in %.1fs (%d/%d)", message, delay, attempt + 1, attempts - 1)
                time.sleep(delay)
                delay *= 2
                continue
            raise StorageError(message, transient=transient) from exc
    raise AssertionError("unreachable")


# -- read ----------------------------------------------------------------------------------------
def read_bytes(uri: str | os.PathLike) -> bytes:
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            return Path(loc.path).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{loc.uri}: no such file") from None
        except IsADirectoryError:
            raise StorageError(f"{loc.uri}: is a directory, expected a file") from None
        except OSError as e:
            raise StorageError(f"{loc.uri}: cannot read ({e.strerror})") from None

    def get() -> bytes:
        resp = client().get_object(loc.bucket, loc.path)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    return _retry(loc, get)


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


@contextlib.contextmanager
def open_read(uri: str | os.PathLike) -> Iterator[BinaryIO]:
    """A readable binary stream; for S3 the body streams from the server without buffering it all."""
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            f = open(loc.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except FileNotFoundError:
            raise StorageError(f"{loc.uri}: no such file") from None
        except OSError as e:
            raise StorageError(f"{loc.uri}: cannot read ({e.strerror})") from None
        with f:
            yield f
        return
    resp = _retry(loc, lambda: client().get_object(loc.bucket, loc.path))
    try:
        yield resp  # urllib3 response: .read(n), .stream(n)
    finally:
        resp.close()
        resp.release_conn()


@contextlib.contextmanager
def local_path(uri: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """A local file path for ``uri`` (decoders need one): the file itself, or a temporary download."""
    loc = parse(uri)
    if loc.scheme == "file":
        path = Path(loc.path)
        if not path.exists():
            raise StorageError(f"{loc.uri}: no such file")
        yield path
        return
    suffix = suffix if suffix is not None else Path(loc.path).suffix
    with tempfile.TemporaryDirectory(prefix="facepose-") as tmp:
        dst = Path(tmp) / f"object{suffix}"
        download(uri, dst)
        yield dst


def download(uri: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``uri`` to the local file ``dst`` (atomically)."""
    dst = Path(dst)
    with open_read(uri) as src, atomic_local_write(dst) as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return dst


# -- write ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_local_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``, then rename it into place (never half a file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; published files get the usual umask-derived mode
    except OSError as e:
        raise StorageError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(uri: str | os.PathLike, data: bytes, content_type: str | None = None) -> None:
    loc = parse(uri)
    if loc.scheme == "file":
        with atomic_local_write(loc.path) as f:
            f.write(data)
        return
    write_stream(uri, io.BytesIO(data), length=len(data), content_type=content_type)


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"), content_type="text/plain; charset=utf-8")


def write_stream(uri: str | os.PathLike, stream: BinaryIO, length: int | None = None, content_type: str | None = None) -> None:
    """Write a binary stream. To S3, objects larger than ``storage.part_size_mb`` go up in parts;
    ``length=None`` streams an unknown length in parts. A retry restarts from the stream's start, so
    the stream must be seekable for retries to happen."""
    loc = parse(uri)
    if loc.scheme == "file":
        with atomic_local_write(loc.path) as f:
            shutil.copyfileobj(stream, f, 1 << 20)
        return
    part = max(5, _config.part_size_mb) * 1024 * 1024
    start = stream.tell() if stream.seekable() else None

    def put() -> None:
        if start is not None:
            stream.seek(start)
        client().put_object(
            loc.bucket, loc.path, stream, length=-1 if length is None else length, part_size=part,
            content_type=content_type or _guess_type(loc.path),
        )

    if start is None:
        # A non-seekable stream cannot be replayed: one attempt.
        try:
            put()
        except Exception as exc:
            message, transient = _describe(exc, loc)
            raise StorageError(message, transient=transient) from exc
        return
    _retry(loc, put)


def upload(src: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy the local file ``src`` to ``uri``."""
    with open(src, "rb") as f:
        write_stream(uri, f, length=os.path.getsize(src))


def remove_stale_parts(uri: str | os.PathLike) -> int:
    """Delete the temporary files that :func:`writer` and :func:`atomic_local_write` left beside the local
    file ``uri`` when their process was killed (``.<name>.<random>.part<suffix>``): call it only while
    nothing else writes ``uri`` (a batch job under its claim). Returns how many were deleted; S3 keeps
    nothing half-written, so there it does nothing."""
    loc = parse(uri)
    if loc.scheme != "file":
        return 0
    path = Path(loc.path)
    n = 0
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.part*"):
        with contextlib.suppress(OSError):
            stale.unlink()
            n += 1
    return n


@contextlib.contextmanager
def writer(uri: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """A local path to write a file at, published to ``uri`` only when the block ends without error.

    Encoders (PyAV, Parquet writers) want a path; this gives one and makes the result appear at
    ``uri`` whole or not at all."""
    loc = parse(uri)
    suffix = suffix if suffix is not None else Path(loc.path).suffix
    if loc.scheme == "file":
        dst = Path(loc.path)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=f".part{suffix}", dir=dst.parent)
        os.close(fd)
        os.chmod(tmp, _FILE_MODE)
        try:
            yield Path(tmp)
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return
    with tempfile.TemporaryDirectory(prefix="facepose-") as d:
        tmp = Path(d) / f"out{suffix}"
        yield tmp
        upload(tmp, uri)


def _guess_type(key: str) -> str:
    import mimetypes

    return mimetypes.guess_type(key)[0] or "application/octet-stream"


# -- listing and metadata ------------------------------------------------------------------------
def exists(uri: str | os.PathLike) -> bool:
    loc = parse(uri)
    if loc.scheme == "file":
        return Path(loc.path).exists()
    return fingerprint(uri) is not None


def fingerprint(uri: str | os.PathLike) -> Optional[str]:
    """What identifies the bytes at ``uri`` without reading them: size and mtime locally, size and ETag
    on S3; None when nothing is there. Transient S3 trouble raises StorageError(transient=True)."""
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            st = os.stat(loc.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"{loc.uri}: cannot stat ({e.strerror})") from None
        return None if os.path.isdir(loc.path) else f"{st.st_size}:{st.st_mtime_ns}"
    from minio.error import S3Error

    def stat() -> Optional[str]:
        try:
            obj = client().stat_object(loc.bucket, loc.path)
        except S3Error as e:
            if e.code in {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound", "NoSuchBucket"}:
                return None
            raise
        return f"{obj.size}:{(obj.etag or '').strip(chr(34))}"

    return _retry(loc, stat)


def arrow_filesystem(uri: str | os.PathLike) -> tuple[str, Optional[object]]:
    """``uri`` for pyarrow users (Ray Train's ``storage_path`` / ``storage_filesystem``): a local path and
    None, or ``bucket/key`` (no ``s3://``) and a ``pyarrow.fs.S3FileSystem`` on the configured endpoint."""
    loc = parse(uri)
    if loc.scheme == "file":
        return loc.path, None
    import pyarrow.fs

    endpoint, access, secret, secure = _settings()
    if not endpoint:
        raise StorageError(f"{loc.uri}: no S3 endpoint configured; set MINIO_ENDPOINT (host:port) or storage.endpoint")
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint, scheme="https" if secure else "http",
        region=os.environ.get("AWS_DEFAULT_REGION") or _config.region or "us-east-1",
        access_key=access or None, secret_key=secret or None,
    )
    return f"{loc.bucket}/{loc.path}".rstrip("/"), fs


def size(uri: str | os.PathLike) -> int:
    loc = parse(uri)
    if loc.scheme == "file":
        try:
            return Path(loc.path).stat().st_size
        except FileNotFoundError:
            raise StorageError(f"{loc.uri}: no such file") from None
    return int(_retry(loc, lambda: client().stat_object(loc.bucket, loc.path)).size)


def listdir(prefix: str | os.PathLike, recursive: bool = True) -> Iterator[str]:
    """URIs of the files (objects) under ``prefix``, in sorted order. A missing prefix lists nothing."""
    loc = parse(prefix)
    if loc.scheme == "file":
        root = Path(loc.path)
        if root.is_file():
            yield loc.uri
            return
        if not root.is_dir():
            return
        pattern = "**/*" if recursive else "*"
        for p in sorted(root.glob(pattern)):
            if p.is_file() and not p.name.startswith("."):
                yield _rebuild(loc, str(p))
        return
    key = loc.path
    if key and not key.endswith("/"):
        key += "/"

    def page() -> list[str]:
        return [o.object_name for o in client().list_objects(loc.bucket, prefix=key, recursive=recursive) if not o.is_dir]

    for name in sorted(_retry(loc, page)):
        yield f"s3://{loc.bucket}/{name}"


def _rebuild(loc: Location, path: str) -> str:
    return f"file://{path}" if loc.uri.startswith("file://") else path


def delete(uri: str | os.PathLike) -> None:
    """Remove a file or object; a missing one is not an error."""
    loc = parse(uri)
    if loc.scheme == "file":
        with contextlib.suppress(FileNotFoundError):
            Path(loc.path).unlink()
        return
    _retry(loc, lambda: client().remove_object(loc.bucket, loc.path))


def ensure_bucket(uri: str | os.PathLike) -> None:
    """Create the bucket of an S3 URI if it does not exist (local paths: nothing to do)."""
    loc = parse(uri)
    if loc.scheme != "s3":
        return

    def make() -> None:
        if not client().bucket_exists(loc.bucket):
            client().make_bucket(loc.bucket)

    _retry(loc, make)
