"""The `facepose` command as a user runs it: real files and a real S3 server, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import free_port


def facepose(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "facepose.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parents[1],
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *names: str) -> None:
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    # One error line, last (retry warnings may come before it), and never a traceback.
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for name in names:
        assert name in errors[0], (name, errors[0])


@pytest.fixture(scope="module")
def driving_mp4(tmp_path_factory) -> Path:
    from tests.synth import driving_video, write_driving_video

    path = tmp_path_factory.mktemp("cli") / "driver.mp4"
    write_driving_video(str(path), driving_video(n_frames=36))
    return path


def test_extract_show_draw_a_driving_video(driving_mp4, tmp_path):
    pose = tmp_path / "driver.parquet"
    r = facepose("pose", "extract", str(driving_mp4), "-o", str(pose))
    assert r.returncode == 0, r.stderr
    shown = facepose("pose", "show", str(pose))
    assert shown.returncode == 0 and "36" in shown.stdout and "missing frames" in shown.stdout
    r = facepose("pose", "draw", str(pose), "-o", str(tmp_path / "pose.mp4"))
    assert r.returncode == 0, r.stderr
    from facepose.media.video import probe_video

    info = probe_video(str(tmp_path / "pose.mp4"))
    assert (info.frames, info.width, info.fps) == (36, 512, 24)


def test_crop_and_render_through_s3(astronaut_png, s3, tmp_path):
    from facepose import storage
    from facepose.media.image import read_image
    from facepose.media.video import probe_video

    storage.upload(astronaut_png, f"{s3}/in/astronaut.png")
    r = facepose("face", "crop", f"{s3}/in/astronaut.png", "-o", f"{s3}/out/crop.png", "--mask", f"{s3}/out/mask.png")
    assert r.returncode == 0, r.stderr
    assert read_image(f"{s3}/out/crop.png").shape == (512, 512, 3)
    mask = read_image(f"{s3}/out/mask.png")[..., 0]
    assert 0 < (mask > 0).mean() < 0.9
    r = facepose("render", "-r", f"{s3}/in/astronaut.png", "-p", "preset:nod", "--seconds", "1.5", "-o", f"{s3}/out/nod.mp4")
    assert r.returncode == 0, r.stderr
    info = probe_video(f"{s3}/out/nod.mp4")
    assert (info.frames, info.width, info.height) == (36, 512, 512)


def test_bad_inputs_print_one_error_line_naming_the_input(astronaut_png, tmp_path, s3):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    good = tmp_path / "good.mp4"
    from facepose.media.video import write_video

    write_video(str(good), (np.full((64, 64, 3), i * 5, np.uint8) for i in range(24)))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    from PIL import Image

    flat = tmp_path / "wall.png"
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(flat)
    out = str(tmp_path / "x.parquet")

    for video in (not_video, empty, truncated):
        assert_one_line_error(facepose("pose", "extract", str(video), "-o", out), video.name)
    assert_one_line_error(facepose("face", "crop", str(flat), "-o", str(tmp_path / "c.png")), "wall.png", "no face")
    assert_one_line_error(facepose("face", "crop", f"{s3}/missing.png", "-o", str(tmp_path / "c.png")), f"{s3}/missing.png")
    dead = f"127.0.0.1:{free_port()}"
    assert_one_line_error(
        facepose("-s", "storage.retries=1", "-s", "storage.backoff_s=0.01", "face", "crop", "s3://bucket/ref.png", "-o", str(tmp_path / "c.png"),
                 env={"MINIO_ENDPOINT": dead}),
        "s3://bucket/ref.png", dead,
    )
    assert_one_line_error(facepose("render", "-r", str(astronaut_png), "-p", "preset:nope", "-o", str(tmp_path / "v.mp4")), "nope")
    assert_one_line_error(facepose("render", "-r", str(astronaut_png), "-p", "preset:nod", "--backend", "teleport", "-o", str(tmp_path / "v.mp4")), "teleport")
    assert_one_line_error(facepose("-s", "face.detectr=cnn", "config"), "detectr")
    assert not (tmp_path / "v.mp4").exists() and not Path(out).exists()
