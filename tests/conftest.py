"""Shared fixtures: a real face photo, real speech, a real S3 server on 127.0.0.1, and, for tests marked
``ray`` / ``prefect`` only, a local Ray and Prefect's test harness (helpers live in tests/support/)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.net import free_port
from tests.support.speech import espeak

# Ray must stay on loopback, and no telemetry anywhere (docs/environment.md, "Ray" and "Prefect").
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """Real speech with pauses (espeak-ng), 22.05 kHz mono WAV."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    return espeak("Hello there. [[_::_::_::]] This is a test of the face pose system. [[_::_::_::]] Goodbye now.", path)


@pytest.fixture(scope="session")
def speech_16k(tmp_path_factory) -> np.ndarray:
    """Real speech (espeak-ng), (N,) float32 at 16 kHz, a few seconds."""
    from facepose.media.audio import load_audio

    path = tmp_path_factory.mktemp("speech16k") / "s.wav"
    return load_audio(espeak("Hello there. This is a short test of the face system.", path, sample_rate=16000), sr=16000)


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


# -- Ray and Prefect, for marked tests only -------------------------------------------------------------
# `@pytest.mark.ray` / `@pytest.mark.prefect` (on a test or as a module's pytestmark) start a local Ray /
# Prefect's test harness once for the session, before the first marked test; both marks imply `slow`, so
# `-m "not slow"` starts neither (pytest_sessionfinish checks it).
STARTED: dict[str, bool] = {"ray": False, "prefect": False}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.get_closest_marker("ray") or item.get_closest_marker("prefect")) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, started in the main thread, for the whole session (tests marked ``ray``)."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_worker_niceness", "0")  # as tasks.pool starts a local Ray
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        STARTED["ray"] = True
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness (a temporary API server and database) for the whole session (tests marked
    ``prefect``)."""
    from prefect.testing.utilities import prefect_test_harness

    STARTED["prefect"] = True
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(autouse=True)
def _marked_services(request):
    """Start the session's Prefect harness and local Ray for tests marked ``prefect`` / ``ray``."""
    if request.node.get_closest_marker("prefect"):
        request.getfixturevalue("prefect_harness")
    if request.node.get_closest_marker("ray"):
        request.getfixturevalue("ray_local")


def pytest_sessionfinish(session, exitstatus):
    """Say which services this session started; with ``-m "not slow"``, fail the run if Ray was imported at
    all or a Prefect server (the harness or Prefect's ephemeral one) started."""
    ray_imported = "ray" in sys.modules
    prefect_server = STARTED["prefect"] or "prefect.server.api.server" in sys.modules  # imported only to serve
    line = (f"Ray: {'started' if STARTED['ray'] else 'imported, not started by a fixture' if ray_imported else 'not imported'}; "
            f"Prefect server: {'started' if prefect_server else 'not started'}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    markexpr = session.config.getoption("markexpr", "") or ""
    if "not slow" in markexpr and (ray_imported or prefect_server) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"error: -m {markexpr!r} must start neither Ray nor Prefect; mark such tests ray / prefect")
