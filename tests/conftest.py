"""Shared fixtures: a real face photo, real speech, and a real S3 server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

# Ray must stay on loopback, and no telemetry anywhere (docs/environment.md, "Ray" and "Prefect").
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """skimage's astronaut photo: a real public-domain face, (512, 512, 3) uint8 RGB."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def astronaut_png(astronaut, tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("ref") / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


def espeak(text: str, path: Path) -> Path:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; the README's test command installs it (apt-get install espeak-ng)")
    subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """Real speech with pauses (espeak-ng), 22.05 kHz mono WAV."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    return espeak("Hello there. [[_::_::_::]] This is a test of the face pose system. [[_::_::_::]] Goodbye now.", path)


class S3Server:
    def __init__(self, endpoint: str, access_key: str, secret_key: str):
        self.endpoint, self.access_key, self.secret_key = endpoint, access_key, secret_key

    def bucket(self, name: str) -> str:
        from facepose import storage

        storage.ensure_bucket(f"s3://{name}/x")
        return f"s3://{name}"

    def boto3(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=f"http://{self.endpoint}", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1, reached through the real `minio` client (MINIO_* env)."""
    from moto.server import ThreadedMotoServer

    from facepose import storage

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "MINIO_ENDPOINT": f"127.0.0.1:{port}",
        "MINIO_ACCESS_KEY": "testing-key",
        "MINIO_SECRET_KEY": "testing-secret",
        "MINIO_SECURE": "false",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._clients.clear()
    try:
        yield S3Server(env["MINIO_ENDPOINT"], env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"])
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage._clients.clear()


@pytest.fixture
def s3(s3_server, request):
    """A fresh bucket on the session's S3 server; yields its ``s3://`` prefix."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    return s3_server.bucket(name)
