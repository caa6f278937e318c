"""facepose.storage against local files and a real S3 server (moto on 127.0.0.1, real minio client)."""

from __future__ import annotations

import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from facepose import storage
from facepose.config import StorageConfig
from facepose.errors import FaceposeError, StorageError


def test_local_write_is_atomic_and_round_trips(tmp_path):
    target = tmp_path / "a" / "b.bin"
    storage.write_bytes(str(target), b"hello")
    assert storage.read_bytes(str(target)) == b"hello"
    assert storage.read_bytes(f"file://{target}") == b"hello"
    # A failing writer leaves neither a partial file nor a temporary one behind.
    with pytest.raises(RuntimeError), storage.atomic_local_write(tmp_path / "a" / "c.bin") as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin"]


def test_local_writer_publishes_only_on_success(tmp_path):
    dst = tmp_path / "v.mp4"
    with pytest.raises(ValueError), storage.writer(str(dst)) as p:
        p.write_bytes(b"half")
        raise ValueError("encoder died")
    assert not dst.exists() and list(tmp_path.iterdir()) == []
    with storage.writer(str(dst)) as p:
        p.write_bytes(b"whole")
    assert dst.read_bytes() == b"whole"


def test_local_missing_file_is_storage_error_naming_it(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(StorageError, match="nope.png"):
        storage.read_bytes(str(missing))
    assert not storage.exists(str(missing))
    storage.delete(str(missing))  # deleting what is not there is fine


def test_local_listing_is_sorted_and_recursive(tmp_path):
    for name in ["b/2.txt", "a.txt", "b/1.txt", ".hidden"]:
        storage.write_text(str(tmp_path / name), name)
    listed = list(storage.listdir(str(tmp_path)))
    assert listed == [str(tmp_path / "a.txt"), str(tmp_path / "b/1.txt"), str(tmp_path / "b/2.txt")]
    assert list(storage.listdir(str(tmp_path / "missing"))) == []


def test_uri_parsing_and_prefix_checks():
    loc = storage.parse("s3://bucket/some/key.mp4")
    assert (loc.scheme, loc.bucket, loc.path) == ("s3", "bucket", "some/key.mp4")
    assert storage.join("s3://b/out/", "/x/", "y.mp4") == "s3://b/out/x/y.mp4"
    assert storage.is_under("s3://b/out/x.mp4", "s3://b/out")
    assert not storage.is_under("s3://b/out/../secret.mp4", "s3://b/out")
    assert not storage.is_under("s3://b/outside.mp4", "s3://b/out")
    assert not storage.is_under("s3://other/out/x.mp4", "s3://b/out")
    assert storage.is_under("/tmp/out/a/b.mp4", "/tmp/out")
    assert not storage.is_under("/tmp/out/../etc/passwd", "/tmp/out")
    with pytest.raises(StorageError, match="gs://x"):
        storage.parse("gs://x/y")
    with pytest.raises(StorageError, match="bucket"):
        storage.parse("s3:///key")


def test_s3_round_trip_exists_delete(s3):
    uri = f"{s3}/dir/obj.bin"
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01payload")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    assert storage.size(uri) == 9
    with storage.open_read(uri) as f:
        assert f.read(2) == b"\x00\x01"
    with storage.local_path(uri) as p:
        assert p.read_bytes() == b"\x00\x01payload" and p.suffix == ".bin"
    storage.delete(uri)
    assert not storage.exists(uri)


def test_s3_missing_object_names_uri_and_endpoint(s3, s3_server):
    uri = f"{s3}/missing.png"
    with pytest.raises(StorageError) as err:
        storage.read_bytes(uri)
    assert uri in str(err.value) and s3_server.endpoint in str(err.value)
    assert not err.value.transient
    with pytest.raises(StorageError, match="does not exist"):
        storage.read_bytes("s3://no-such-bucket-here/x")


def test_s3_multipart_upload_of_a_large_stream(s3, s3_server):
    storage.configure(StorageConfig(part_size_mb=5))
    try:
        data = os.urandom(12 * 1024 * 1024 + 123)  # three parts of 5 MiB
        uri = f"{s3}/big/blob.bin"
        storage.write_stream(uri, io.BytesIO(data), length=None)  # unknown length: streamed in parts
        assert storage.read_bytes(uri) == data
        head = s3_server.boto3().head_object(Bucket=uri.split("/")[2], Key="big/blob.bin")
        assert head["ETag"].strip('"').endswith("-3")  # S3 marks multipart objects with -<parts>
        # Another client sees the same bytes.
        body = s3_server.boto3().get_object(Bucket=uri.split("/")[2], Key="big/blob.bin")["Body"].read()
        assert body == data
    finally:
        storage.configure(StorageConfig())


def test_s3_listing_of_thousands_of_keys(s3, s3_server):
    bucket = s3.split("/")[2]
    client = s3_server.boto3()
    keys = [f"many/{i // 100:02d}/{i:05d}.txt" for i in range(2500)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
    client.put_object(Bucket=bucket, Key="manyother/x.txt", Body=b"x")  # a sibling prefix is not listed
    listed = list(storage.listdir(f"{s3}/many"))
    assert listed == sorted(f"s3://{bucket}/{k}" for k in keys)
    assert len(list(storage.listdir(f"{s3}/many/03", recursive=False))) == 100


def test_s3_writer_publishes_only_on_success(s3):
    uri = f"{s3}/videos/out.mp4"
    with pytest.raises(RuntimeError), storage.writer(uri) as p:
        p.write_bytes(b"half a video")
        raise RuntimeError("encoder died")
    assert not storage.exists(uri)
    with storage.writer(uri) as p:
        p.write_bytes(b"a whole video")
    assert storage.read_bytes(uri) == b"a whole video"


def test_unreachable_endpoint_is_a_clear_storage_error(monkeypatch):
    from tests.support.net import free_port

    port = free_port()  # nothing listens here
    monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("MINIO_ACCESS_KEY", "k")
    monkeypatch.setenv("MINIO_SECRET_KEY", "s")
    storage.configure(StorageConfig(retries=2, backoff_s=0.01, connect_timeout_s=1))
    try:
        with pytest.raises(StorageError) as err:
            storage.read_bytes("s3://bucket/ref.png")
        msg = str(err.value)
        assert "s3://bucket/ref.png" in msg and f"127.0.0.1:{port}" in msg and "cannot reach" in msg
        assert err.value.transient and isinstance(err.value, FaceposeError)
    finally:
        storage.configure(StorageConfig())


def test_transient_failures_are_retried_until_the_endpoint_comes_back(s3, s3_server, monkeypatch):
    """A proxy that drops the first connections: the read succeeds after retries."""
    import socket

    uri = f"{s3}/retry.txt"
    storage.write_bytes(uri, b"survived")
    host, port = s3_server.endpoint.split(":")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    drops = {"left": 2}

    def proxy() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if drops["left"] > 0:
                drops["left"] -= 1
                conn.close()
                continue
            upstream = socket.create_connection((host, int(port)))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=proxy, daemon=True).start()
    monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{listener.getsockname()[1]}")
    storage.configure(StorageConfig(retries=4, backoff_s=0.01))
    try:
        assert storage.read_bytes(uri) == b"survived"
        assert drops["left"] == 0
    finally:
        listener.close()
        storage.configure(StorageConfig())


def _pipe(src, dst) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass
