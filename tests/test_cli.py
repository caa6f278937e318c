"""The `facepose` command as a user runs it: real files and a real S3 server, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.cli import assert_one_line_error, facepose
from tests.support.net import free_port


@pytest.fixture(scope="module")
def driving_mp4(tmp_path_factory) -> Path:
    from tests.support.synth import driving_video, write_driving_video

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


BROKEN_RENDERER = """
import sys
import numpy as np
from facepose.render.base import register_renderer

class Broken:
    name = "broken"

    def render(self, reference, pose, **kw):
        yield np.zeros(3) + np.zeros(4)  # a bug: numpy's ValueError, not the user's mistake

register_renderer("broken")(lambda *a, **kw: Broken())
from facepose.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_value_error_inside_a_renderer_keeps_its_traceback(tmp_path, astronaut_png):
    """A numpy ValueError deep in a renderer is a bug: the CLI must not print it as a one-line user error."""
    r = subprocess.run([sys.executable, "-c", BROKEN_RENDERER, "render", "-r", str(astronaut_png), "-p", "preset:nod",
                        "--seconds", "0.5", "--backend", "broken", "-o", str(tmp_path / "v.mp4")],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "ValueError: operands could not be broadcast" in r.stderr, r.stderr
    assert not any(line.startswith("error: ") for line in r.stderr.splitlines()), r.stderr


# -- quiet, offline runs ---------------------------------------------------------------------------
def test_the_command_turns_off_telemetry_before_anything_imports_it_and_users_can_override():
    from facepose.cli import OFFLINE_DEFAULTS

    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS}
    env["GRADIO_ANALYTICS_ENABLED"] = "True"  # a user's own choice stays
    code = ("import json, os, sys; import facepose.cli; assert 'prefect' not in sys.modules and 'ray' not in sys.modules; "
            "print(json.dumps({k: os.environ.get(k) for k in facepose.cli.OFFLINE_DEFAULTS}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    import json

    seen = json.loads(r.stdout)
    assert seen["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and seen["RAY_USAGE_STATS_ENABLED"] == "0"
    assert seen["HF_HUB_OFFLINE"] == "1" and seen["DO_NOT_TRACK"] == "1"
    assert seen["GRADIO_ANALYTICS_ENABLED"] == "True"


def test_retries_of_an_unreachable_endpoint_log_one_short_line_each(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    r = facepose("-s", "storage.retries=3", "-s", "storage.backoff_s=0.01", "face", "crop", "s3://bucket/ref.png",
                 "-o", str(tmp_path / "c.png"), env={"MINIO_ENDPOINT": dead, "COLUMNS": "80"})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 4, r.stderr  # three retries and the error, nothing wrapped
    for k, line in enumerate(lines[:3], 1):
        assert line.startswith("WARNING facepose.storage: s3://bucket/ref.png: cannot reach S3 endpoint") and f"({k}/3)" in line
        assert len(line) < 200, line
    assert_one_line_error(r, "s3://bucket/ref.png", dead, "Connection refused")


# -- scriptable listings ----------------------------------------------------------------------------
def test_presets_are_plain_tab_separated_lines_in_a_pipe_and_json_on_request():
    from facepose.pose.presets import list_presets

    expected = {name: (seconds, description) for name, description, seconds in list_presets()}
    r = facepose("pose", "presets")
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == len(expected) and all(len(row) == 3 for row in rows), r.stdout
    for name, seconds, description in rows:
        assert float(seconds) == pytest.approx(expected[name][0]) and description == expected[name][1]
    import json

    listed = json.loads(facepose("pose", "presets", "--json").stdout)
    assert {p["name"]: (p["seconds"], p["description"]) for p in listed} == expected
    assert all(p["driver"] == f"preset:{p['name']}" for p in listed)


def test_pose_show_and_config_print_json(driving_mp4, tmp_path):
    import json

    pose = tmp_path / "driver.parquet"
    assert facepose("pose", "extract", str(driving_mp4), "-o", str(pose)).returncode == 0
    shown = json.loads(facepose("pose", "show", str(pose), "--json").stdout)
    assert shown["frames"] == 36 and shown["fps"] == 24.0 and shown["width"] > 0 and shown["missing_frames"] == 0
    assert shown["face_size_px"]["min"] <= shown["face_size_px"]["median"] <= shown["face_size_px"]["max"]
    cfg = json.loads(facepose("-s", "face.detector=cnn", "config", "--json").stdout)
    assert cfg["face"]["detector"] == "cnn" and cfg["storage"]["retries"] == 4


# -- phone photos ---------------------------------------------------------------------------------
def test_face_crop_finds_the_small_face_of_a_12mp_phone_photo(astronaut, tmp_path):
    from PIL import Image

    from tests.support.synth import phone_photo

    photo, _ = phone_photo(astronaut)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown upright
    path = tmp_path / "IMG_0002.jpg"
    Image.fromarray(np.ascontiguousarray(np.rot90(photo, 1))).save(path, quality=90, exif=exif)
    r = facepose("face", "crop", str(path), "-o", str(tmp_path / "crop.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "crop.png").size == (512, 512)


def test_usage_mistakes_print_clicks_usage_message_and_exit_2_without_a_traceback():
    for args in (["render", "--bogus"], ["nosuchcmd"], ["render"]):
        result = facepose(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout and "Usage:" in result.stderr, (args, result.stderr)


def test_render_refuses_more_than_max_seconds_in_one_line(astronaut_png, tmp_path):
    out = tmp_path / "huge.mp4"
    result = facepose("render", "-r", str(astronaut_png), "-p", "preset:nod", "--seconds", "100000", "-o", str(out))
    assert_one_line_error(result, "100000", "batch.max_seconds=600")
    assert not out.exists()


def test_a_terminated_render_leaves_no_temporary_file(astronaut_png, tmp_path):
    """SIGTERM (a scheduler's stop) unwinds like Ctrl+C: the writer removes its hidden .part file."""
    import signal
    import time

    out = tmp_path / "int.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "facepose.cli", "render", "-r", str(astronaut_png), "-p", "preset:nod",
                             "--seconds", "300", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".part.mp4") for p in tmp_path.iterdir()):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    assert any(p.name.endswith(".part.mp4") for p in tmp_path.iterdir()), "the render never started writing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []
