"""The web app in a real browser: Debian's headless Chromium driven by Playwright (sync API).

The app runs in this process on a free loopback port. Each step saves a screenshot to
tests/_artifacts/app/ so a person can look at the page.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).parent / "_artifacts" / "app"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
RENDER_TIMEOUT_MS = 90_000


LIMIT_MB = 2  # the app's upload limit in these tests, so an oversized photo is cheap to make


@pytest.fixture(scope="module")
def app_demo(tmp_path_factory):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from facepose.app import ui
    from facepose.app.handlers import Workspace
    from facepose.config import load_config

    cfg = load_config([f"app.max_upload_mb={LIMIT_MB}", "app.abandon_s=2"])
    demo = ui.queue(ui.build_app(cfg, ws=Workspace(tmp_path_factory.mktemp("app-ws"))))
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                **ui.launch_options(demo))
    try:
        yield demo
    finally:
        demo.close()


@pytest.fixture(scope="module")
def app_url(app_demo):
    return app_demo.local_url


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def app_page(chromium, app_url):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = chromium.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(app_url)
    page.wait_for_selector("#reference input[type=file]", state="attached")
    wait_text(page, "source-info", "preset")  # the page's load event (session restore) has run
    yield page
    context.close()


@pytest.fixture(scope="module")
def coffee_jpg(tmp_path_factory) -> Path:
    """A real photo without a face (skimage's cup of coffee)."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("noface") / "coffee.jpg"
    Image.fromarray(data.coffee()).save(path, quality=92)
    return path


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def upload(page, elem_id: str, path: Path) -> None:
    """Upload ``path`` into #elem_id, first clearing a file shown there (as a person clicks its ✕)."""
    field = page.locator(f"#{elem_id} input[type=file]")
    try:
        field.wait_for(state="attached", timeout=3_000)
    except Exception:  # a file is shown there
        page.locator(f"#{elem_id} button[aria-label='Clear']").first.click()
        field.wait_for(state="attached")
    field.set_input_files(str(path))


def wait_text(page, elem_id: str, text: str, timeout: float = 30_000) -> str:
    """Wait until #elem_id shows ``text`` (case-insensitive) -> its text."""
    try:
        page.wait_for_function(
            "([id, text]) => (document.getElementById(id)?.innerText || '').toLowerCase().includes(text.toLowerCase())",
            arg=[elem_id, text], timeout=timeout,
        )
    except Exception:
        shot(page, f"timeout-{elem_id}")
        raise AssertionError(f"#{elem_id} never showed {text!r}; it shows {page.locator('#' + elem_id).inner_text()!r}") from None
    return page.locator(f"#{elem_id}").inner_text()


def video_state(page, elem_id: str, not_src: str = "", timeout: float = RENDER_TIMEOUT_MS) -> dict:
    """Wait for a loaded <video> in #elem_id (metadata read, a new src) -> its src, duration and size."""
    page.wait_for_function(
        """([id, old]) => { const v = document.querySelector(`#${id} video`);
               return !!v && v.readyState >= 1 && !!v.currentSrc && v.currentSrc !== old; }""",
        arg=[elem_id, not_src], timeout=timeout,
    )
    return page.evaluate(
        """(id) => { const v = document.querySelector(`#${id} video`);
               return {src: v.currentSrc, duration: v.duration, width: v.videoWidth, height: v.videoHeight}; }""",
        elem_id,
    )


def plays(page, elem_id: str) -> float:
    """Start the <video> in #elem_id (muted, so autoplay rules allow it) -> seconds played after a while."""
    page.evaluate("(id) => { const v = document.querySelector(`#${id} video`); v.muted = true; return v.play(); }", elem_id)
    page.wait_for_function("(id) => document.querySelector(`#${id} video`).currentTime > 0.3", arg=elem_id, timeout=15_000)
    return page.evaluate("(id) => document.querySelector(`#${id} video`).currentTime", elem_id)


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_photo_to_video_with_a_preset_and_with_speech(app_page, astronaut_png, speech_wav, tmp_path):
    import soundfile

    from facepose.app.handlers import presets
    from facepose.media.video import probe_video

    page = app_page
    shot(page, "01-open")
    # diffusion has no checkpoint here: its choice is disabled, the reason shown, and how to set it for the app
    assert page.locator("#backend input[value=diffusion]").is_disabled()
    assert "diffusion is off" in page.locator("#backend-info").inner_text()
    page.locator("#backend-info summary").click()
    how = page.locator("#backend-info").inner_text()
    assert "model.checkpoint=<that folder>" in how and "facepose -s model.checkpoint=/path/to/that/folder app" in how
    assert not page.locator("#seed").is_visible()  # warp ignores the seed: not offered

    # 1. reference
    upload(page, "reference", astronaut_png)
    assert "face found in astronaut.png" in wait_text(page, "reference-status", "face found").lower()
    page.wait_for_function("() => { const i = document.querySelector('#reference-crop img'); return i && i.naturalWidth === 512; }")
    shot(page, "02-reference")

    # 2. pose: a preset, 2 seconds
    longer = [p for p in presets() if p.seconds > 2]  # so 2 s trims it
    preset = next((p for p in longer if "talk" in p.name), longer[0])
    choose(page, "preset", preset.label)
    wait_text(page, "source-info", f"preset {preset.name}")
    video_state(page, "preset-preview", timeout=30_000)
    page.locator("#seconds input").fill("2")
    page.locator("#seconds input").press("Tab")
    page.locator("#make-pose").click()
    wait_text(page, "pose-status", "48 frames", timeout=60_000)
    assert abs(video_state(page, "pose-video")["duration"] - 2.0) < 0.1
    page.wait_for_function("() => { const i = document.querySelector('#pose-plot img'); return i && i.naturalWidth > 0; }")
    shot(page, "03-pose-preset")

    # 3. video
    page.locator("#generate").click()
    wait_text(page, "result-status", "done:", timeout=RENDER_TIMEOUT_MS)
    first = video_state(page, "result-video")
    assert abs(first["duration"] - 2.0) < 0.1, first
    assert (first["width"], first["height"]) == (512, 512)
    assert plays(page, "result-video") > 0.3
    with page.expect_download() as dl:
        page.locator("#result-download").click()
    saved = tmp_path / "download.mp4"
    dl.value.save_as(saved)
    info = probe_video(str(saved))
    assert (info.width, info.height, round(info.fps), info.frames) == (512, 512, 24, 48)
    shot(page, "04-video-preset")

    # speech as the source: the video is as long as the speech and carries it
    page.locator("#pose-source label", has_text="Speech audio").click()
    wait_text(page, "source-info", "upload or record speech")  # a hint, not an error, before any upload
    assert page.locator("#source-info .fp-warn").count() == 0
    assert "earlier inputs" in page.locator("#result-status").inner_text()  # the old video is marked stale
    upload(page, "speech-audio", speech_wav)
    wait_text(page, "source-info", "speech.wav")
    page.locator("#seconds input").fill("0")
    page.locator("#seconds input").press("Tab")
    page.locator("#generate").click()
    wait_text(page, "result-status", "with the audio of speech.wav", timeout=RENDER_TIMEOUT_MS)
    second = video_state(page, "result-video", not_src=first["src"])
    speech_s = soundfile.info(str(speech_wav)).duration
    assert abs(second["duration"] - speech_s) < 0.1, (second, speech_s)
    assert plays(page, "result-video") > 0.3
    with page.expect_download() as dl:
        page.locator("#result-download").click()
    dl.value.save_as(tmp_path / "speech.mp4")
    assert probe_video(str(tmp_path / "speech.mp4")).has_audio
    shot(page, "05-video-speech")


def test_photo_without_a_face_shows_the_message(app_page, coffee_jpg):
    page = app_page
    upload(page, "reference", coffee_jpg)
    text = wait_text(page, "reference-status", "no face found")
    assert "no face found in coffee.jpg; use a photo with one clearly visible face" in text
    assert "Traceback" not in page.content()
    shot(page, "06-no-face")


def no_toasts_or_paths(page) -> None:
    """The page explains itself in its status lines: no toasts, no server paths, no tracebacks."""
    toasts = page.locator(".toast-body")
    if toasts.count():
        shot(page, "toast")
    assert toasts.count() == 0, toasts.all_inner_texts()
    text = page.locator("body").inner_text()
    assert "/tmp/" not in text and "Traceback" not in text and "gradio/" not in text


def set_seconds(page, value: str) -> None:
    page.locator("#seconds input").fill(value)
    page.locator("#seconds input").press("Tab")


def set_slider(page, elem_id: str, value: float, lo: float, hi: float) -> float:
    """Drag the slider #elem_id to about ``value`` with the mouse (so its release event fires, as for a
    person) -> the value it shows."""
    track = page.locator(f"#{elem_id} input[type=range]")
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    x = box["x"] + box["width"] * (value - lo) / (hi - lo)
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(x, y, steps=4)
    page.mouse.up()
    page.wait_for_timeout(200)
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def result_cleared(page) -> bool:
    return page.evaluate("""() => { const v = document.querySelector('#result-video video');
        return (!v || !v.currentSrc) && !document.querySelector('#result-download')?.offsetParent; }""")


def preset_label(name: str) -> str:
    from facepose.app.handlers import presets

    return next(p.label for p in presets() if p.name == name)


def render_preset(page, preset: str, seconds: str, done: str = "done:") -> dict:
    choose(page, "preset", preset_label(preset))
    wait_text(page, "source-info", f"preset {preset}")
    set_seconds(page, seconds)
    page.locator("#generate").click()
    wait_text(page, "result-status", done, timeout=RENDER_TIMEOUT_MS)
    return video_state(page, "result-video")


def test_ids_are_unique_and_the_page_fits_a_laptop_and_a_phone(chromium, app_url):
    for name, size in (("laptop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
        context = chromium.new_context(viewport=size, is_mobile=name == "phone")
        page = context.new_page()
        page.goto(app_url)
        wait_text(page, "source-info", "preset")
        dupes = page.evaluate("""() => { const n = {}; document.querySelectorAll('[id]').forEach(e => n[e.id] = (n[e.id] || 0) + 1);
            return Object.entries(n).filter(([k, v]) => k && v > 1).map(([k]) => k); }""")
        assert dupes == [], dupes
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, (name, overflow)
        for step in ("step-reference", "step-pose", "step-video"):
            box = page.locator(f"#{step}").bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"] + 1, (name, step, box)
        page.screenshot(path=str(ARTIFACTS / f"10-{name}.png"), full_page=True)
        page.get_by_role("tab", name="Batch").click()
        page.locator("#batch-run").wait_for()
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, (name, "batch", overflow)
        page.screenshot(path=str(ARTIFACTS / f"10-{name}-batch.png"), full_page=True)
        context.close()


def test_every_failure_is_explained_in_its_step_and_the_app_keeps_working(app_page, astronaut_png, coffee_jpg, tmp_path):
    page = app_page
    # a good run first, so there is a result to go stale
    upload(page, "reference", astronaut_png)
    wait_text(page, "reference-status", "face found in astronaut.png")
    render_preset(page, "nod", "1")

    # 1. a text file named .png as the photo: the app's own message, the crop and the old video gone
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not an image")
    upload(page, "reference", fake)
    text = wait_text(page, "reference-status", "holiday.png")
    assert "holiday.png is not an image this app can read; upload a JPEG, PNG or WebP photo" in text
    assert "face found" not in text.lower()
    assert page.locator("#reference-crop img").count() == 0
    assert "earlier inputs" in page.locator("#result-status").inner_text()
    shot(page, "11-fail-not-an-image")
    page.locator("#generate").click()
    wait_text(page, "result-status", "not rendered: step 1")
    assert result_cleared(page)
    no_toasts_or_paths(page)
    shot(page, "12-fail-generate-without-a-photo")

    # a photo over the upload limit, and one without a face
    big = tmp_path / "huge.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > LIMIT_MB * 2**20
    upload(page, "reference", big)
    wait_text(page, "reference-status", f"huge.png is 3 MB, over this app's limit of {LIMIT_MB} MB")
    shot(page, "13-fail-too-big")
    upload(page, "reference", coffee_jpg)
    wait_text(page, "reference-status", "no face found in coffee.jpg; use a photo with one clearly visible face")
    no_toasts_or_paths(page)
    shot(page, "14-fail-no-face")

    # 2. durations over the limit and negative: the app's message in step 2, before any render
    upload(page, "reference", astronaut_png)
    wait_text(page, "reference-status", "face found in astronaut.png")
    set_seconds(page, "61")
    wait_text(page, "source-info", "duration 61 s is over this app's limit of 60 s; choose a shorter one")
    page.locator("#generate").click()
    wait_text(page, "result-status", "not rendered: step 2")
    assert result_cleared(page)
    shot(page, "15-fail-duration-over-the-limit")
    set_seconds(page, "-3")
    wait_text(page, "source-info", "duration must be a positive number of seconds, got -3")
    no_toasts_or_paths(page)
    shot(page, "16-fail-negative-duration")

    # a damaged driving video
    clip = tmp_path / "interview.mp4"
    clip.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    page.locator("#pose-source label", has_text="Driving video").click()
    upload(page, "driving-video", clip)
    wait_text(page, "source-info", "interview.mp4 cannot be read as a video (it may be damaged, or another kind of file)")
    page.locator("#make-pose").click()
    wait_text(page, "pose-status", "no pose: the source above has a problem")
    assert page.locator("body").inner_text().count("interview.mp4 cannot be read") == 1  # said once, in its place
    no_toasts_or_paths(page)
    shot(page, "17-fail-damaged-video")

    # a damaged recording
    noise = tmp_path / "speech.wav"
    noise.write_bytes(np.random.default_rng(2).integers(0, 256, 30_000, dtype=np.uint8).tobytes())
    page.locator("#pose-source label", has_text="Speech audio").click()
    upload(page, "speech-audio", noise)
    wait_text(page, "source-info", "speech.wav cannot be read as a sound file")
    no_toasts_or_paths(page)
    shot(page, "17b-fail-damaged-audio")

    # and the app still works
    page.locator("#pose-source label", has_text="Preset").click()
    set_seconds(page, "1")
    wait_text(page, "source-info", "preset")
    state = render_preset(page, "smile", "1")
    assert abs(state["duration"] - 1.0) < 0.1
    assert page.locator("#result-download").is_visible()
    no_toasts_or_paths(page)
    shot(page, "18-working-again")


def _yaw_range(path: Path) -> float:
    import numpy as np

    from facepose.config import load_config
    from facepose.face.track import track_video
    from facepose.pose.face_model import estimate_head_pose

    pose = track_video(str(path), load_config().face)
    return float(np.ptp(estimate_head_pose(pose.landmarks[pose.visible])[:, 0]))


def test_pose_controls_change_the_rendered_head_motion(app_page, astronaut_png, tmp_path):
    page = app_page
    upload(page, "reference", astronaut_png)
    wait_text(page, "reference-status", "face found in astronaut.png")
    choose(page, "preset", preset_label("head_shake"))
    wait_text(page, "source-info", "preset head_shake")
    set_seconds(page, "2")
    page.locator("#make-pose").click()
    wait_text(page, "pose-status", "48 frames")
    set_seconds(page, "3")  # the preview no longer matches: said so, not left as "48 frames"
    wait_text(page, "pose-status", "the duration changed: press preview pose again")
    set_seconds(page, "2")
    page.locator("#pose-controls").get_by_text("Pose controls").click()
    ranges = {}
    for target in (0.5, 1.5):
        amplitude = set_slider(page, "adj-head", target, 0.0, 3.0)
        assert abs(amplitude - target) < 0.15
        wait_text(page, "pose-status", f"head_amplitude={amplitude}")  # the preview followed the slider
        page.locator("#generate").click()
        wait_text(page, "result-status", "done:", timeout=RENDER_TIMEOUT_MS)
        with page.expect_download() as dl:
            page.locator("#result-download").click()
        saved = tmp_path / f"amp-{target}.mp4"
        dl.value.save_as(saved)
        ranges[amplitude] = _yaw_range(saved)
        shot(page, f"19-pose-controls-{target}")
    print("rendered yaw range (degrees) by head amplitude:", ranges)
    (a, ya), (b, yb) = sorted(ranges.items())
    assert 0.7 * b / a < yb / ya < 1.3 * b / a, ranges  # the rendered yaw range follows the amplitude


def test_a_reload_brings_back_the_inputs_and_the_last_video(app_page, astronaut_png):
    page = app_page
    upload(page, "reference", astronaut_png)
    wait_text(page, "reference-status", "face found in astronaut.png")
    page.locator("#pose-controls").get_by_text("Pose controls").click()
    yaw = set_slider(page, "adj-yaw", 12, -30, 30)
    before = render_preset(page, "smile", "1.5")
    page.reload()
    wait_text(page, "reference-status", "face found in astronaut.png")
    wait_text(page, "result-status", "done:")
    after = video_state(page, "result-video")
    assert after["src"].split("/")[-1] == before["src"].split("/")[-1]
    assert abs(after["duration"] - 1.5) < 0.1
    assert page.locator("#seconds input").input_value() == "1.5"
    assert "smile" in page.locator("#preset input").input_value()
    page.locator("#pose-controls").get_by_text("Pose controls").click()
    assert float(page.locator("#adj-yaw input[type=number]").input_value()) == yaw != 0
    assert page.locator("#reference-crop img").count() == 1
    shot(page, "20-after-reload")


def test_an_abandoned_render_is_cancelled_and_does_not_hold_the_queue(chromium, app_demo, astronaut_png):
    import time

    from facepose.app.handlers import RenderCancelled

    ui = app_demo.facepose_ui
    gone = chromium.new_context(viewport={"width": 1280, "height": 1000})
    page = gone.new_page()
    page.goto(app_demo.local_url)
    wait_text(page, "source-info", "preset")
    upload(page, "reference", astronaut_png)
    wait_text(page, "reference-status", "face found in astronaut.png")
    choose(page, "preset", preset_label("lively_talk"))
    wait_text(page, "source-info", "preset lively_talk")
    set_seconds(page, "60")
    page.locator("#generate").click()
    wait_text(page, "result-status", "frame", timeout=60_000)
    shot(page, "21-long-render-running")
    long_render = ui.renders[-1]
    gone.close()  # the page goes away mid-render

    context = chromium.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(app_demo.local_url)
    wait_text(page, "source-info", "preset")
    upload(page, "reference", astronaut_png)
    wait_text(page, "reference-status", "face found in astronaut.png")
    t0 = time.monotonic()
    render_preset(page, "nod", "1")
    waited = time.monotonic() - t0
    assert long_render.done.is_set() and isinstance(long_render.error, RenderCancelled)
    assert long_render.frames[0] < long_render.frames[1] == 1440
    print(f"next render done {waited:.1f} s after its click; the abandoned one stopped at frame {long_render.frames[0]} of 1440")
    assert waited < 15, waited  # the 60 s render alone takes longer than this on this machine
    shot(page, "22-next-render-after-cancel")
    context.close()


def test_batch_tab_shows_each_job_and_gives_everything_as_one_zip(app_page, astronaut_png, coffee_jpg, tmp_path):
    import csv
    import io
    import zipfile

    from facepose.media.video import probe_video

    page = app_page
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("job_id,reference,driver,seconds\n"
                        "smile,photos/astronaut.png,preset:smile,1\n"
                        "nod,astronaut.png,preset:nod,1.5\n"
                        "cup,coffee.jpg,preset:nod,1\n")
    page.get_by_role("tab", name="Batch").click()
    upload(page, "batch-manifest", manifest)
    page.locator("#batch-inputs input[type=file]").set_input_files([str(astronaut_png), str(coffee_jpg)])
    page.wait_for_selector('#batch-inputs td[aria-label="coffee.jpg"]')
    page.wait_for_selector('#batch-manifest td[aria-label="jobs.csv"]')
    page.locator("#batch-run").click()
    wait_text(page, "batch-status", "batch running for")
    assert "takes about half a minute to start" in page.locator("#batch-status").inner_text()
    shot(page, "23-batch-starting")
    status = wait_text(page, "batch-status", "batch finished in", timeout=240_000)
    assert "1 error, 2 ok" in status, status
    jobs = page.locator("#batch-jobs").inner_text()
    assert "no face found in coffee.jpg" in jobs  # the failed job says why
    # each finished video is in the gallery and plays
    page.wait_for_function("() => document.querySelectorAll('#batch-gallery video').length === 2", timeout=30_000)
    page.locator("#batch-gallery button").first.click()
    shot(page, "24-batch-done")
    with page.expect_download() as dl:
        page.locator('#batch-results a[download$=".zip"]').click()
    bundle = tmp_path / "batch.zip"
    dl.value.save_as(bundle)
    with zipfile.ZipFile(bundle) as z:
        names = sorted(z.namelist())
        assert names == ["results.csv", "results.parquet", "videos/nod.mp4", "videos/smile.mp4"], names
        rows = {r["job_id"]: r for r in csv.DictReader(io.StringIO(z.read("results.csv").decode()))}
        z.extractall(tmp_path / "unzipped")
    assert rows["smile"]["status"] == "ok" and rows["cup"]["error_kind"] == "no_face"
    for job, seconds in (("smile", 1.0), ("nod", 1.5)):
        info = probe_video(str(tmp_path / "unzipped" / "videos" / f"{job}.mp4"))
        assert (info.width, info.height, round(info.fps), info.frames) == (512, 512, 24, round(24 * seconds))
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(tmp_path / "unzipped" / "results.parquet").column("job_id").to_pylist()) == ["cup", "nod", "smile"]


TWO_SENTENCES = "Hello, I am your teacher today. We will learn how rain is made."


def audio_duration_in_page(page, elem_id: str, timeout: float = 30_000) -> float:
    """The duration (s) of the sound Gradio's player in #elem_id has loaded, as the browser decodes it
    (its file loaded into an <audio> element of the page)."""
    page.wait_for_selector(f"#{elem_id} a[download]", timeout=timeout)
    return page.evaluate(
        """(id) => new Promise((ok, fail) => {
               const a = new Audio(document.querySelector(`#${id} a[download]`).href);
               a.onloadedmetadata = () => ok(a.duration); a.onerror = () => fail(new Error("not playable")); })""",
        elem_id,
    )


def type_into(page, selector: str, text: str) -> None:
    """Type ``text`` as a person does (key by key: Gradio's input event follows keystrokes)."""
    page.locator(selector).fill("")
    page.locator(selector).press_sequentially(text, delay=5)


def test_text_source_speaks_a_script_and_gives_a_video_with_subtitles(app_page, astronaut_png, tmp_path):
    import webvtt

    from facepose.media.video import probe_video

    page = app_page
    upload(page, "reference", astronaut_png)
    wait_text(page, "reference-status", "face found")
    page.locator("#pose-source label", has_text="Text").click()
    wait_text(page, "source-info", "type a script")  # a hint before anything is typed
    assert page.locator("#text-language input").first.input_value() == "English"
    page.locator("#text-listen").click()  # nothing to say yet: the reason, in step 2
    wait_text(page, "source-info", "the script is empty")

    type_into(page, "#text-script textarea", TWO_SENTENCES)
    wait_text(page, "source-info", f"{len(TWO_SENTENCES)} characters")
    page.locator("#text-listen").click()
    wait_text(page, "source-info", "2 sentences")
    speech_s = audio_duration_in_page(page, "text-speech")
    assert 2.0 < speech_s < 8.0, speech_s
    assert page.locator("#text-speech #time").inner_text() == "0:00"
    page.locator("#text-speech button[aria-label='Play']").click()  # the player plays it
    page.wait_for_function("() => document.querySelector('#text-speech #time').innerText !== '0:00'", timeout=10_000)
    shot(page, "30-text-listen")
    page.locator("#step-pose").screenshot(path=str(ARTIFACTS / "31-text-step.png"))

    page.locator("#make-pose").click()
    wait_text(page, "pose-status", "with its audio", timeout=60_000)
    assert abs(video_state(page, "pose-video")["duration"] - speech_s) < 0.1

    page.locator("#generate").click()
    wait_text(page, "result-status", "with its speech and subtitles", timeout=RENDER_TIMEOUT_MS)
    video = video_state(page, "result-video")
    assert abs(video["duration"] - speech_s) < 0.1, (video, speech_s)
    assert plays(page, "result-video") > 0.3
    with page.expect_download() as dl:
        page.locator("#result-download").click()
    dl.value.save_as(tmp_path / "lesson.mp4")
    assert probe_video(str(tmp_path / "lesson.mp4")).has_audio
    page.wait_for_selector('#result-captions a[download$=".srt"]')
    with page.expect_download() as dl:
        page.locator('#result-captions a[download$=".vtt"]').click()
    dl.value.save_as(tmp_path / "lesson.vtt")
    cues = webvtt.read(str(tmp_path / "lesson.vtt"))
    assert [c.text for c in cues] == ["Hello, I am your teacher today.", "We will learn how rain is made."]
    assert cues[0].start_in_seconds < cues[1].start_in_seconds < speech_s
    shot(page, "32-text-video")

    # a reload brings back the script, its language and voice, the speech and the subtitles
    page.reload()
    page.wait_for_function("(t) => document.querySelector('#text-script textarea')?.value === t", arg=TWO_SENTENCES)
    assert page.locator("#text-box").is_visible()
    assert page.locator("#text-language input").first.input_value() == "English"
    assert abs(audio_duration_in_page(page, "text-speech") - speech_s) < 0.01
    page.wait_for_selector('#result-captions a[download$=".vtt"]')
