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


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from facepose.app import ui
    from facepose.app.handlers import Workspace
    from facepose.config import load_config

    demo = ui.queue(ui.build_app(load_config(), ws=Workspace(tmp_path_factory.mktemp("app-ws"))))
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                **ui.launch_options(demo))
    try:
        yield demo.local_url
    finally:
        demo.close()


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
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def wait_text(page, elem_id: str, text: str, timeout: float = 30_000) -> str:
    """Wait until #elem_id shows ``text`` (case-insensitive) -> its text."""
    page.wait_for_function(
        "([id, text]) => (document.getElementById(id)?.innerText || '').toLowerCase().includes(text.toLowerCase())",
        arg=[elem_id, text], timeout=timeout,
    )
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
    # diffusion has no checkpoint here: its choice is disabled and the reason shown
    assert page.locator("#backend input[value=diffusion]").is_disabled()
    assert "diffusion is off" in page.locator("#backend-info").inner_text()

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
    wait_text(page, "result-status", "done", timeout=RENDER_TIMEOUT_MS)
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


def test_batch_tab_runs_a_manifest_in_its_own_process(app_page, astronaut_png, coffee_jpg, tmp_path):
    import csv

    page = app_page
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("job_id,reference,driver,seconds\n"
                        "smile,photos/astronaut.png,preset:smile,1\n"
                        "cup,coffee.jpg,preset:nod,1\n")
    page.get_by_role("tab", name="Batch").click()
    upload(page, "batch-manifest", manifest)
    page.locator("#batch-inputs input[type=file]").set_input_files([str(astronaut_png), str(coffee_jpg)])
    page.wait_for_selector('#batch-inputs td[aria-label="coffee.jpg"]')
    page.wait_for_selector('#batch-manifest td[aria-label="jobs.csv"]')
    page.locator("#batch-run").click()
    wait_text(page, "batch-status", "batch running for")
    shot(page, "07-batch-running")
    status = wait_text(page, "batch-status", "batch finished in", timeout=180_000)
    assert "1 error, 1 ok" in status, status
    jobs = page.locator("#batch-jobs").inner_text()
    assert "smile" in jobs and "no face found" in jobs
    with page.expect_download() as dl:
        page.locator('#batch-results a[download="results.csv"]').click()
    dl.value.save_as(tmp_path / "results.csv")
    rows = {r["job_id"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert rows["smile"]["status"] == "ok" and rows["smile"]["output"].endswith("smile.mp4")
    assert rows["cup"]["status"] == "error" and rows["cup"]["error_kind"] == "no_face"
    shot(page, "08-batch-done")
