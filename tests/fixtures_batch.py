"""Fixtures and helpers of the batch tests (manifests, curation, flows): real face videos with real
speech, a local Ray with 2 CPUs, and Prefect's test harness.

Import the fixtures into a test module by name: ``from tests.fixtures_batch import ray_local, prefect_harness``
(they then work as if defined there).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback (docs/environment.md, "Ray")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

ROOT = Path(__file__).resolve().parents[1]


def _load_make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "scripts" / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_examples = _load_make_examples()
moving_face_frames = make_examples.moving_face_frames
path_at = make_examples.path_at


def write_face_video(path: str | Path, image: np.ndarray, seconds: float = 1.5, audio: Optional[np.ndarray] = None, **kwargs) -> str:
    """The photo moved along :func:`path_at` for ``seconds`` at 24 fps, as an H.264 mp4 (with ``audio``,
    16 kHz mono, muxed when given). ``kwargs`` go to :func:`moving_face_frames` (size, zoom, blur)."""
    from facepose.media.video import write_video

    write_video(str(path), moving_face_frames(image, seconds, **kwargs), fps=24, audio=audio, sample_rate=16000, crf=23)
    return str(path)


def scenery_frames(seconds: float, size: int = 256) -> list[np.ndarray]:
    """A shot without a face: skimage's coffee photo, panning slowly."""
    import cv2
    from skimage import data

    img = np.ascontiguousarray(data.coffee())
    n = int(round(seconds * 24))
    out = []
    for i in range(n):
        x = 20 + i
        out.append(cv2.resize(img[40 : 40 + 300, x : x + 300], (size, size), interpolation=cv2.INTER_AREA))
    return out


@pytest.fixture(scope="session")
def speech_16k(tmp_path_factory) -> np.ndarray:
    """Real speech (espeak-ng), (N,) float32 at 16 kHz, a few seconds."""
    from facepose.media.audio import load_audio

    path = make_examples.espeak("Hello there. This is a short test of the face system.", tmp_path_factory.mktemp("speech16k") / "s.wav")
    return load_audio(path, sr=16000)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 2 CPUs, started in the main thread, for the whole session."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_worker_niceness", "0")  # as tasks.pool starts a local Ray
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness (a temporary API server and database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
