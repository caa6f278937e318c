"""The web app's handlers without a browser: what each step of the page does with real inputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from facepose.app import handlers as h
from facepose.config import AppConfig, load_config
from facepose.errors import InputError, ModelNotFoundError, NoFaceError


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture
def ws(tmp_path) -> h.Workspace:
    return h.Workspace(tmp_path / "ws")


@pytest.fixture(scope="module")
def coffee_png(tmp_path_factory) -> Path:
    """A real photo with no face in it (skimage's cup of coffee)."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("noface") / "coffee.png"
    Image.fromarray(data.coffee()).save(path)
    return path


# -- step 1 ---------------------------------------------------------------------------------------
def test_reference_preview_is_the_face_crop_with_its_landmarks_drawn(astronaut_png, cfg):
    from facepose.face.crop import crop_face
    from facepose.media.image import read_image

    view = h.inspect_reference(str(astronaut_png), cfg)
    crop = crop_face(read_image(str(astronaut_png)), cfg.face)
    assert view.preview.shape == crop.image.shape == (cfg.face.crop_size, cfg.face.crop_size, 3)
    assert (view.width, view.height) == (512, 512)
    assert "astronaut.png" in view.message
    # every landmark has a green dot on it, and little else of the crop changed
    for x, y in crop.landmarks.round().astype(int):
        r, g, b = view.preview[y, x].astype(int)
        assert g > 200 and g > r + 80 and g > b + 60, (x, y, (r, g, b))
    changed = np.any(view.preview != crop.image, axis=2).mean()
    assert 0.001 < changed < 0.1


def test_reference_of_any_aspect_is_cropped_square(astronaut, tmp_path, cfg):
    from PIL import Image

    wide = np.full((400, 1100, 3), 90, np.uint8)
    wide[:, 300:812] = astronaut[56:456]  # the face, off centre in a wide frame
    path = tmp_path / "wide.jpg"
    Image.fromarray(wide).save(path)
    view = h.inspect_reference(str(path), cfg)
    assert view.preview.shape[:2] == (cfg.face.crop_size, cfg.face.crop_size)
    assert (view.width, view.height) == (1100, 400)


def test_reference_without_a_face_names_the_photo(coffee_png, cfg):
    with pytest.raises(NoFaceError, match="no face found in coffee.png"):
        h.inspect_reference(str(coffee_png), cfg)


def test_reference_that_is_not_an_image_says_so(tmp_path, cfg):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(InputError, match="notes.png is not an image this app can read; upload a JPEG, PNG or WebP photo"):
        h.inspect_reference(str(bad), cfg)


# -- step 2 ---------------------------------------------------------------------------------------
def test_driver_for_each_source_and_what_is_missing():
    assert h.driver_for("preset", preset="nod") == "preset:nod"
    assert h.driver_for("video", video="/x/clip.mp4") == "/x/clip.mp4"
    assert h.driver_for("audio", audio="/x/talk.wav") == "/x/talk.wav"
    with pytest.raises(InputError, match="no preset chosen"):
        h.driver_for("preset")
    with pytest.raises(InputError, match="no driving video uploaded"):
        h.driver_for("video")
    with pytest.raises(InputError, match="no speech audio given"):
        h.driver_for("audio")


def test_every_preset_has_a_cached_playable_preview(ws):
    from facepose.media.video import probe_video
    from facepose.pose.presets import load_preset

    names = [p.name for p in h.presets()]
    assert len(names) >= 3
    path = h.preset_preview(names[0], ws, size=128)
    info = probe_video(str(path))
    assert (info.width, info.height) == (128, 128)
    assert info.frames == len(load_preset(names[0]))
    mtime = path.stat().st_mtime_ns
    assert h.preset_preview(names[0], ws, size=128) == path
    assert path.stat().st_mtime_ns == mtime  # made once


def test_source_length_is_the_driver_s_own(speech_wav):
    import soundfile

    p = h.presets()[0]
    assert h.source_seconds(f"preset:{p.name}", "preset") == pytest.approx(p.seconds)
    assert h.source_seconds(str(speech_wav), "audio") == pytest.approx(soundfile.info(str(speech_wav)).duration, abs=0.01)
    assert "speech.wav" in h.describe_source(str(speech_wav), "audio")
    with pytest.raises(InputError, match="unknown preset 'nope'"):
        h.source_seconds("preset:nope", "preset")


def test_duration_limit_applies_to_the_request_and_to_the_source(speech_wav):
    app = AppConfig(max_seconds=2.0)
    preset = f"preset:{h.presets()[0].name}"
    assert h.check_seconds(1.5, preset, "preset", app) == 1.5
    assert h.check_seconds(0, preset, "preset", AppConfig()) is None  # 0: the source's own length
    with pytest.raises(InputError, match="over this app's limit of 2 s"):
        h.check_seconds(3.0, preset, "preset", app)
    with pytest.raises(InputError, match=r"speech.wav is .* s long, over this app's limit of 2 s"):
        h.check_seconds(None, str(speech_wav), "audio", app)
    with pytest.raises(InputError, match="duration must be a positive number of seconds, got -1"):
        h.check_seconds(-1, preset, "preset", app)


def test_pose_preview_needs_a_reference_first(ws, cfg):
    with pytest.raises(InputError, match="upload one in step 1"):
        h.make_pose_preview(None, f"preset:{h.presets()[0].name}", "preset", 1.0, cfg, ws)


def test_pose_preview_from_speech_is_as_long_as_the_speech_and_carries_it(astronaut_png, speech_wav, ws, cfg):
    import soundfile

    from facepose.media.video import probe_video

    pv = h.make_pose_preview(str(astronaut_png), str(speech_wav), "audio", None, cfg, ws)
    seconds = soundfile.info(str(speech_wav)).duration
    info = probe_video(str(pv.video))
    assert info.has_audio
    assert abs(info.duration - seconds) < 0.1
    assert abs(pv.seconds - seconds) < 0.1
    assert pv.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pose_preview_from_a_driving_video_follows_its_length(astronaut_png, tmp_path, ws, cfg):
    from facepose.media.video import probe_video
    from tests.support.synth import driving_video, write_driving_video

    clip = write_driving_video(str(tmp_path / "drive.mp4"), driving_video(n_frames=36))
    assert h.source_seconds(clip, "video") == pytest.approx(1.5, abs=0.05)
    assert "drive.mp4" in h.describe_source(clip, "video")
    pv = h.make_pose_preview(str(astronaut_png), clip, "video", None, cfg, ws)
    assert pv.frames == 36
    info = probe_video(str(pv.video))
    assert info.frames == 36 and not info.has_audio


# -- step 3 ---------------------------------------------------------------------------------------
def test_missing_diffusion_checkpoint_is_reported_not_raised(cfg):
    pool = h.RendererPool(cfg)
    status = pool.status("diffusion")
    assert not status.available
    assert "checkpoint" in status.reason
    with pytest.raises(ModelNotFoundError):
        pool.get("diffusion")
    assert pool.status("warp").available
    assert pool.get("warp") is pool.get("warp")  # built once, reused


def test_steps_reach_the_diffusion_renderer_without_reloading_it():
    from facepose.config import ModelConfig
    from facepose.render.diffusion.renderer import DiffusionRenderer

    pipeline = object()  # the loaded models, shared by the copy
    renderer = DiffusionRenderer(pipeline, ModelConfig(steps=20))
    fast = h.with_steps(renderer, 4)
    assert fast.model.steps == 4 and renderer.model.steps == 20
    assert fast.pipeline is pipeline
    with pytest.raises(InputError, match="at least 1"):
        h.with_steps(renderer, 0)


def test_generate_a_two_second_preset_video(astronaut_png, ws, cfg):
    from facepose.media.video import probe_video, read_frames

    pool = h.RendererPool(cfg)
    seen: list[tuple[int, int]] = []
    preset = f"preset:{h.presets()[0].name}"
    out = h.generate_video(str(astronaut_png), preset, "preset", 2.0, "warp", 0, cfg, ws, pool,
                           progress=lambda i, n: seen.append((i, n)))
    info = probe_video(str(out.video))
    assert (info.width, info.height, round(info.fps)) == (512, 512, 24)
    assert out.frames == 48 and info.frames == 48 and not info.has_audio
    assert seen[-1] == (48, 48)
    assert out.video.parent == ws.root / "renders"
    frames = read_frames(str(out.video))
    assert frames.std(axis=0).mean() > 0.5  # the face moves


def test_generate_from_speech_is_as_long_as_the_audio_and_has_it(astronaut_png, speech_wav, ws, cfg):
    import soundfile

    from facepose.media.video import probe_video

    out = h.generate_video(str(astronaut_png), str(speech_wav), "audio", None, "warp", 0, cfg, ws, h.RendererPool(cfg))
    info = probe_video(str(out.video))
    assert info.has_audio and out.audio
    assert abs(info.duration - soundfile.info(str(speech_wav)).duration) < 0.1


def test_generate_refuses_what_is_over_the_limit_before_rendering(astronaut_png, speech_wav, ws, cfg):
    from dataclasses import replace

    small = replace(cfg, app=AppConfig(max_seconds=1.0))
    with pytest.raises(InputError, match="over this app's limit of 1 s"):
        h.generate_video(str(astronaut_png), str(speech_wav), "audio", None, "warp", 0, small, ws, h.RendererPool(cfg))
    assert not list(ws.root.rglob("*.mp4"))


def test_unexpected_errors_show_one_line_without_a_traceback():
    msg = h.friendly_error(RuntimeError("boom\n  at line 3"))
    assert msg == ("something went wrong on the server (RuntimeError); the details are in its log. "
                   "Try again, or with another file")
    assert "boom" not in msg
    assert h.friendly_error(NoFaceError("no face found in a.png; use a photo")) == "no face found in a.png; use a photo"


# -- batch ----------------------------------------------------------------------------------------
def test_staged_manifest_points_its_relative_paths_at_the_uploads(tmp_path, astronaut_png):
    from facepose.manifest import read_rows

    manifest = tmp_path / "jobs.csv"
    manifest.write_text("job_id,reference,driver,seconds\n"
                        "a,refs/astronaut.png,preset:nod,1\n"
                        f"b,{astronaut_png},preset:nod,1\n")
    staged = h.stage_batch(str(manifest), [str(astronaut_png)], tmp_path / "stage")
    rows = read_rows(str(staged))
    assert rows[0]["reference"] == "astronaut.png" and (staged.parent / "astronaut.png").is_file()
    assert rows[1]["reference"] == str(astronaut_png)  # absolute paths stay
    with pytest.raises(InputError, match=r"names refs/astronaut.png \(row 1, reference\).*not among the uploaded"):
        h.stage_batch(str(manifest), [], tmp_path / "stage2")


def test_batch_needs_a_manifest(ws, cfg):
    with pytest.raises(InputError, match="no manifest"):
        h.start_batch(None, [], "", "", cfg, ws)


def test_workspace_prune_removes_only_old_files(ws):
    old = ws.new("renders", ".mp4", "old")
    new = ws.new("renders", ".mp4", "new")
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    past = time.time() - 3 * 24 * 3600
    os.utime(old, (past, past))
    assert ws.prune(older_than_s=24 * 3600) == 1
    assert not old.exists() and new.exists()


def test_stop_interrupts_the_batch_process(tmp_path):
    import sys

    run = h.BatchRun("jobs.csv", str(tmp_path / "out"), tmp_path / "run",
                     planned=[{"job_id": "a", "status": "waiting", "output": str(tmp_path / "out" / "a.mp4")}])
    # a stand-in child that waits like a long render (extra arguments are ignored by python -c)
    run.PROGRAM = (sys.executable, "-c", "import time; print('rendering', flush=True); time.sleep(120)")
    run.start()
    deadline = time.time() + 20
    while "rendering" not in run.log_tail() and time.time() < deadline:
        time.sleep(0.05)
    assert run.running and run.poll().message.startswith("Batch running for")
    assert "rendering" in run.poll().message  # the latest output line is shown while it runs
    run.stop(grace_s=5)
    assert run.wait(timeout=20) != 0
    st = run.poll()
    assert st.finished and st.message.startswith("Batch stopped after")
    assert st.rows == [{"job_id": "a", "status": "not run", "output": str(tmp_path / "out" / "a.mp4")}]
    assert "rendering" in st.log_tail
    assert st.table(str(tmp_path / "out"))[0][:3] == ["a", "not run", "a.mp4"]


def test_launch_serves_the_app_with_its_limits_and_one_render_at_a_time(tmp_path, cfg):
    import json
    import urllib.request
    from dataclasses import replace

    from facepose.app import launch
    from tests.support.net import free_port

    small = replace(cfg, app=AppConfig(max_upload_mb=5, work_dir=str(tmp_path / "ws")))
    demo = launch("127.0.0.1", free_port(), small, block=False, quiet=True)
    try:
        page = json.load(urllib.request.urlopen(demo.local_url + "config", timeout=10))
        assert page["title"] == "facepose"
        assert page["max_file_size"] == 4 * 5 * 1024 * 1024  # a hard cap; the app checks its own limit
        fns = {fn.name: fn for fn in demo.fns.values()}
        assert fns["on_generate"].concurrency_id == "render" and fns["on_generate"].concurrency_limit == 1
        assert fns["on_batch_run"].concurrency_limit == 1
        assert (tmp_path / "ws").is_dir()
    finally:
        demo.close()


# -- messages a person sees -----------------------------------------------------------------------
def test_messages_show_file_names_not_server_paths():
    text = "no face found in /tmp/gradio/3f2a9c/gray.png; use a photo (s3://refs/anna.png is fine)"
    assert h.scrub(text) == "no face found in gray.png; use a photo (s3://refs/anna.png is fine)"
    assert h.friendly_error(NoFaceError("no face found in /tmp/x/y/z/photo.jpg")) == "no face found in photo.jpg"


def test_uploads_are_checked_for_size_and_kind(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (3 * 2**20))
    with pytest.raises(InputError, match=r"big.png is 3 MB, over this app's limit of 2 MB for a photo; use a smaller file"):
        h.check_upload(big, "photo", h.IMAGE_EXTS, AppConfig(max_upload_mb=2))
    doc = tmp_path / "cv.pdf"
    doc.write_bytes(b"%PDF-1.4")
    with pytest.raises(InputError, match=r"cv.pdf is not a photo file this app takes; use jpg, jpeg, png"):
        h.check_upload(doc, "photo", h.IMAGE_EXTS, AppConfig())


def test_a_damaged_video_is_named_with_the_fix(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as e:
        h.check_driver(str(bad), "video", AppConfig())
    assert str(e.value) == ("clip.mp4 cannot be read as a video (it may be damaged, or another kind of file); "
                            "use an mp4, mov or webm video")


def test_an_abandoned_render_is_cancelled_and_frees_its_renderer(astronaut_png, ws, cfg):
    pool = h.RendererPool(cfg)
    work = lambda **kw: h.generate_video(str(astronaut_png), "preset:lively_talk", "preset", 8.0, "warp", 0, cfg, ws,  # noqa: E731
                                         pool, **kw)
    task = h.RenderTask(work, abandon_s=0.5).start()
    while task.frames[0] < 3 and not task.done.is_set():  # the page watches for a while ...
        task.touch()
        time.sleep(0.05)
    t0 = time.monotonic()
    assert task.done.wait(30)  # ... then goes away
    assert isinstance(task.error, h.RenderCancelled)
    assert task.frames[0] < task.frames[1] == 192
    assert time.monotonic() - t0 < 5
    with pool.lock("warp"):  # released
        pass
    assert not list(ws.root.rglob("*.mp4"))  # nothing half-written is left


def test_sessions_keep_the_latest_values_per_browser():
    s = h.Sessions(max_sessions=2)
    s.update("a", reference="/x.png")
    s.update("a", seconds=2)
    s.update("b", seconds=3)
    s.update("c", seconds=4)
    assert s.get("a") == {}  # the oldest session went
    assert s.get("b") == {"seconds": 3} and s.get(None) == {}
    assert h.existing("/no/such/file.mp4") is None


# -- the Text source ------------------------------------------------------------------------------
def test_text_source_offers_the_main_languages_and_their_voices(cfg):
    langs = h.languages(cfg)
    assert {"English": "en", "Spanish": "es", "Chinese (Mandarin)": "zh", "Arabic": "ar"}.items() <= langs.items()
    spanish = [name for _, name in h.voices(cfg, "es")]
    assert spanish[0] == "" and "es" in spanish  # the language's default voice first
    assert "en-gb" not in spanish
    assert h.text_cfg(cfg, "Chinese (Mandarin)", "").tts.language == "zh"
    assert h.text_cfg(cfg, "Spanish", "es", burn=True).tts.captions == "burn"
    assert cfg.tts.captions == "files"  # the app's own config is not changed


def test_text_source_explains_an_empty_or_long_script_and_an_unknown_language(cfg, ws):
    app = AppConfig(max_script_chars=40)
    for empty in ("", "   \n  "):
        with pytest.raises(InputError, match="the script is empty; type what the face should say in step 2"):
            h.driver_for("text", text=empty)
    with pytest.raises(InputError, match="the script has 41 characters, over this app's limit of 40; shorten it"):
        h.check_driver(h.driver_for("text", text="x" * 41), "text", app)
    h.check_driver(h.driver_for("text", text="x" * 40), "text", app)
    with pytest.raises(InputError, match="unknown language 'Klingon' for the Text source; choose from English, Spanish"):
        h.text_cfg(cfg, "Klingon", "")
    with pytest.raises(InputError, match="unknown voice 'robot' for English; pick one from the voice list"):
        h.text_cfg(cfg, "English", "robot")
    with pytest.raises(InputError, match="the script is empty"):
        h.speak("", "English", "", cfg, ws)
    with pytest.raises(InputError, match="unknown language"):
        h.speak("Hello.", "xx", "", cfg, ws)


def test_listen_speaks_the_script_as_the_render_will(cfg, ws):
    import soundfile

    spoken = h.speak("Good morning, class. Today we count to ten.", "English", "", cfg, ws)
    info = soundfile.info(str(spoken.audio))
    assert spoken.sentences == 2 and info.subtype == "PCM_16"
    assert info.duration == pytest.approx(spoken.seconds, abs=0.01)
    driver = h.driver_for("text", text="Good morning, class. Today we count to ten.")
    assert h.source_seconds(driver, "text", h.text_cfg(cfg, "English", "")) == pytest.approx(spoken.seconds, abs=0.01)
    arabic = h.speak("مرحبا بكم.", "Arabic", "", cfg, ws)
    assert arabic.voice == "ar" and arabic.seconds > 0.3
    chinese = h.speak("你好。今天我们学习数字。", "Chinese (Mandarin)", "", cfg, ws)
    assert chinese.voice == "cmn" and chinese.sentences == 2
    spanish = h.speak("Hola. ¿Cómo estás?", "Spanish", "es-419", cfg, ws)
    assert spanish.voice == "es-419" and spanish.sentences == 2


def test_generate_from_text_is_as_long_as_the_speech_with_its_subtitles(astronaut_png, ws, cfg):
    import webvtt

    from facepose.media.audio import load_audio
    from facepose.media.video import probe_video

    tcfg = h.text_cfg(cfg, "English", "")
    script = "One two three. Four five six."
    spoken = h.speak(script, "English", "", cfg, ws)
    out = h.generate_video(str(astronaut_png), h.driver_for("text", text=script), "text", None, "warp", 0, tcfg, ws,
                           h.RendererPool(tcfg))
    info = probe_video(str(out.video))
    assert info.has_audio and abs(info.duration - spoken.seconds) < 0.1
    assert sorted(p.suffix for p in out.captions) == [".srt", ".vtt"]
    assert [c.text for c in webvtt.read(str(next(p for p in out.captions if p.suffix == ".vtt")))] == \
        ["One two three.", "Four five six."]
    assert "with its speech and subtitles" in out.message
    sound = load_audio(str(out.video), sr=16000)
    assert abs(len(sound) / 16000 - out.seconds) < 0.05


# -- sound of the pose preview --------------------------------------------------------------------
def _pose(frames: int, **meta):
    from facepose.pose.sequence import PoseSequence

    return PoseSequence(landmarks=np.zeros((frames, 68, 2), np.float32), meta=dict(meta))


def test_preview_sound_is_fitted_as_the_render_fits_it():
    sr = 16000
    tone = np.linspace(0.1, 1.0, sr, dtype=np.float32)  # 1 s, every sample different
    # a text lesson (cues): padded with silence to the pose's 2 s, never looped
    text = h.fit_audio(tone, _pose(48, cues=[(0.0, 1.0, "Hi.")]), sr)
    assert len(text) == 2 * sr and np.array_equal(text[:sr], tone) and not text[sr:].any()
    # a looped driving video of 12 frames (0.5 s) with 1 s of sound: its first 0.5 s loops with its frames
    looped = h.fit_audio(tone, _pose(48, loop_frames=12), sr)
    assert len(looped) == 2 * sr and np.array_equal(looped[sr // 2:sr], tone[:sr // 2])
    # speech drove the pose: the speech itself repeats
    speech = h.fit_audio(tone, _pose(36), sr)
    assert len(speech) == int(1.5 * sr) and np.array_equal(speech[sr:], tone[:sr // 2])


# -- batch results ----------------------------------------------------------------------------------
def test_batch_progress_and_downloads_read_every_run_s_result_parts(tmp_path, cfg):
    import zipfile

    from facepose.batch import get_kind
    from facepose.batch.results import write_part
    from facepose.manifest import utc_now

    out = str(tmp_path / "out")
    os.makedirs(out)
    run = h.BatchRun("jobs.csv", out, tmp_path / "run", cfg=cfg,
                     planned=[{"job_id": j, "status": "waiting", "output": f"{out}/{j}.mp4"} for j in ("a", "b")])
    run.started, run.started_iso = time.time(), "2000-01-01T00:00:00Z"
    kind = get_kind("render", cfg)
    now = utc_now()
    write_part(kind, out, "20261130T070000-aaaaaaaa", "0", [{"job_id": "a", "status": "ok", "output": f"{out}/a.mp4",
                                                            "seconds": 2.0, "finished_at": now}])
    write_part(kind, out, "20261130T070000-aaaaaaaa", "1", [{"job_id": "b", "status": "error", "error": "no face in b.png",
                                                            "finished_at": now}])
    (tmp_path / "out" / "a.mp4").write_bytes(b"not decoded here")  # a text job's video and its subtitles
    (tmp_path / "out" / "a.vtt").write_text("WEBVTT\n\n00:00:00.300 --> 00:00:01.000\nHi.\n")
    (tmp_path / "out" / "a.srt").write_text("1\n00:00:00,300 --> 00:00:01,000\nHi.\n")
    st = run.poll()
    assert {r["job_id"]: r["status"] for r in st.rows} == {"a": "ok", "b": "error"}
    bundle = run._downloads()[0]
    with zipfile.ZipFile(bundle) as z:
        assert sorted(z.namelist()) == ["results.csv", "results.parquet", "videos/a.mp4", "videos/a.srt", "videos/a.vtt"]
        assert z.read("videos/a.vtt").decode().startswith("WEBVTT")
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(tmp_path / "run" / "results.parquet").column("job_id").to_pylist()) == ["a", "b"]


def test_a_broken_batch_run_names_the_exception_that_ended_it(tmp_path):
    import sys

    run = h.BatchRun("jobs.csv", str(tmp_path / "out"), tmp_path / "run", planned=[{"job_id": "a", "status": "waiting"}])
    # a stand-in child that fails as render-batch does when the engine cannot start (seen on a loaded machine)
    run.PROGRAM = (sys.executable, "-c", "import sys; print('Traceback (most recent call last):'); "
                   "print('RuntimeError: Timed out while attempting to connect to ephemeral Prefect API server.'); "
                   "print('INFO prefect: Stopping temporary server'); sys.exit(1)")
    run.start()
    assert run.wait(timeout=20) == 1
    st = run.poll()
    assert "render-batch failed (exit 1)" in st.message
    assert "RuntimeError: Timed out while attempting to connect to ephemeral Prefect API server." in st.message
    assert st.rows[0]["status"] == "not run"
