"""The Gradio page: three steps (reference, pose, video) and a Batch tab.

Callbacks here only unpack widgets, call :mod:`facepose.app.handlers`, and put a FaceposeError's message
in the status line of the step it belongs to (no toasts, no tracebacks, no server paths). Uploads arrive
as plain files (``gr.File`` / filepath), so the app's own checks run for every input, and each step's
earlier output is cleared or marked stale when what it was made from changes. A browser keeps a random
session id (``gr.BrowserState``); the server keeps that session's inputs and results, so a reload brings
the page back. A render runs in a thread watched by a generator callback: when the page goes away, Gradio
stops the generator and the render is cancelled within ``app.abandon_s``. Every component a test touches
has an ``elem_id``.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from facepose.app import handlers as h
from facepose.config import AppConfig, Config, PoseAdjustConfig, load_config

log = logging.getLogger(__name__)

CSS = """
.gradio-container { max-width: 1180px !important; margin: 0 auto !important; }
#fp-header h1 { margin-bottom: 0.1em; }
#fp-header p { margin-top: 0; opacity: 0.8; }
.fp-step { padding: 14px !important; border: 1px solid var(--border-color-primary); border-radius: 10px; }
.fp-step-title h3 { margin: 0 0 4px 0; }
.fp-step-title p { margin: 0; opacity: 0.75; font-size: 0.92em; }
.fp-status { min-height: 1.6em; }
.fp-status p { margin: 4px 0; }
.fp-warn { color: var(--error-text-color, #b91c1c); font-weight: 500; }
.fp-stale { color: #b45309; }
.fp-off { opacity: 0.45; cursor: not-allowed !important; }
#generate, #make-pose, #batch-run { min-height: 46px; }
#backend-info code { white-space: normal; word-break: break-all; }
@media (max-width: 640px) {
  .gradio-container { padding: 6px !important; }
  .fp-step { padding: 8px !important; }
}
"""

# Disables the radio buttons of backends that cannot run here (Gradio's Radio has no per-choice
# `disabled`), and keeps them disabled when Gradio re-renders the radio.
JS_TEMPLATE = """
() => {
  const off = %s;
  const apply = () => {
    for (const [name, reason] of Object.entries(off)) {
      document.querySelectorAll(`#backend input[type=radio][value="${name}"]`).forEach((input) => {
        input.disabled = true;
        const label = input.closest("label");
        if (label) { label.classList.add("fp-off"); label.title = reason; }
      });
    }
  };
  apply();
  new MutationObserver(apply).observe(document.body, { childList: true, subtree: true });
}
"""

#: pose controls: (elem_id, PoseAdjustConfig field, label, minimum, maximum, step)
ADJUST_SLIDERS = (
    ("adj-head", "head_amplitude", "Head motion (× the source's)", 0.0, 3.0, 0.05),
    ("adj-expression", "expression", "Mouth and expression (×)", 0.0, 3.0, 0.05),
    ("adj-smoothing", "smoothing", "Smoothing (0 none, 1 strong)", 0.0, 1.0, 0.05),
    ("adj-yaw", "yaw", "Turn (yaw, degrees; + to the right)", -30.0, 30.0, 1.0),
    ("adj-pitch", "pitch", "Tilt (pitch, degrees; + down)", -30.0, 30.0, 1.0),
    ("adj-roll", "roll", "Lean (roll, degrees; + clockwise)", -30.0, 30.0, 1.0),
)
DEFAULT_BLINKS = 15.0  # a minute: the slider's value when a person first turns the blink rate on
STALE_RESULT = ("<span class='fp-stale'>⚠ This video was made from earlier inputs; press "
                "<b>Generate video</b> to update it.</span>")


def theme() -> gr.themes.Base:
    """Soft theme on system fonts (no font downloads: the app works offline)."""
    sans = [gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), gr.themes.Font("Segoe UI"), gr.themes.Font("Helvetica"), gr.themes.Font("sans-serif")]
    mono = [gr.themes.Font("ui-monospace"), gr.themes.Font("SFMono-Regular"), gr.themes.Font("monospace")]
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", neutral_hue="slate", font=sans, font_mono=mono)


def warn(message: str) -> str:
    """A status line for a problem (markdown-safe: the message is escaped)."""
    return f"<span class='fp-warn'>⚠ {html.escape(message, quote=False)}</span>"


def _fail(exc: BaseException) -> str:
    return warn(h.friendly_error(exc))


def _seconds(value: Any) -> Optional[float]:
    """The duration box's value -> seconds (None: the source's own length). Raises InputError for text
    that is not a number."""
    if value in (None, ""):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise h.InputError(f"duration {value!r} is not a number of seconds; use e.g. 4 or 2.5 (0: the source's own length)") from None
    return None if v == 0 else v


def adjust_of(values: tuple) -> PoseAdjustConfig:
    """The pose-control widgets' values (ADJUST_SLIDERS order, then blink on/off and blink rate) -> config."""
    fields = {f: float(v) for (_, f, *_), v in zip(ADJUST_SLIDERS, values[:len(ADJUST_SLIDERS)], strict=True)}
    blink_on, rate = values[len(ADJUST_SLIDERS)], values[len(ADJUST_SLIDERS) + 1]
    return PoseAdjustConfig(blink_rate=float(rate) if blink_on else None, **fields)


class AppUI:
    """Holds what the callbacks share: config, workspace, the renderer pool, sessions, running batches."""

    def __init__(self, cfg: Config, ws: Optional[h.Workspace] = None, pool: Optional[h.RendererPool] = None):
        self.cfg = cfg
        self.app: AppConfig = cfg.app
        self.ws = ws or h.Workspace.from_config(self.app)
        self.pool = pool or h.RendererPool(cfg)
        self.sessions = h.Sessions()
        self.batches: dict[str, h.BatchRun] = {}
        self.renders: list[h.RenderTask] = []  # recent renders (tests read whether one was cancelled)
        self.backends = {name: self.pool.status(name) for name in h.BACKENDS}
        try:
            self.presets = h.presets()
        except Exception as e:  # no preset module: the app still renders from video and audio
            log.warning("no pose presets: %s", h.friendly_error(e))
            self.presets = []
        try:
            self.languages = h.languages(cfg)
        except Exception as e:  # no speech backend here: the Text source says so when used
            log.warning("no text-to-speech: %s", h.friendly_error(e))
            self.languages = {}

    def source_cfg(self, kind: str, language: Optional[str], voice: Optional[str], burn: bool = False) -> Any:
        """The config a source renders with: for Text, ``tts`` speaking the chosen language and voice."""
        return h.text_cfg(self.cfg, language, voice, burn) if kind == "text" else self.cfg

    def voice_choices(self, language: Optional[str]) -> list[tuple[str, str]]:
        try:
            return h.voices(self.cfg, self.languages.get(language or "", language))
        except Exception as e:
            log.warning("no voices: %s", h.friendly_error(e))
            return [("Default voice", "")]

    # -- step 1 -----------------------------------------------------------------------------------
    def on_reference(self, sid: Optional[str], path: Optional[str]):
        """-> crop, reference status, pose video, pose plot, pose status, result status."""
        session = self.sessions.get(sid)
        cleared_pose = (None, None, "The photo changed: press **Preview pose** to fit the pose to this face."
                        if path and session.get("pose_video") else "")
        stale = STALE_RESULT if session.get("result") else gr.update()
        if not path:
            self.sessions.update(sid, reference=None, crop=None, ref_status="", pose_video=None, pose_plot=None)
            return None, "Upload a photo with one clearly visible face: any size or aspect.", *cleared_pose, stale
        try:
            view = h.inspect_reference(path, self.cfg)
        except Exception as e:
            self.sessions.update(sid, reference=None, crop=None, pose_video=None, pose_plot=None)
            return None, _fail(e), None, None, "", stale
        crop = self.ws.new("poses", ".png", "crop")
        from PIL import Image

        Image.fromarray(view.preview).save(crop)
        self.sessions.update(sid, reference=path, crop=str(crop), ref_status=view.message, pose_video=None,
                             pose_plot=None, pose_status=cleared_pose[2])
        return str(crop), view.message, *cleared_pose, stale

    # -- step 2 -----------------------------------------------------------------------------------
    def on_source_kind(self, label: str):
        kind = h.SOURCES.get(label, "preset")
        return (gr.update(visible=kind == "preset"), gr.update(visible=kind == "video"), gr.update(visible=kind == "audio"),
                gr.update(visible=kind == "text"))

    def source_info(self, label: str, preset: Optional[str], video: Optional[str], audio: Optional[str],
                    script: Optional[str] = None, language: Optional[str] = None, voice: Optional[str] = None,
                    seconds: Any = None) -> tuple[str, Optional[str]]:
        """Step 2's line about the chosen source (its length, or what is wrong) and the preset preview."""
        kind = h.SOURCES.get(label, "preset")
        preview = None
        given = {"preset": preset, "video": video, "audio": audio, "text": (script or "").strip()}.get(kind)
        if not given:
            return (h.source_hint(kind) if kind != "preset" else "Pick a preset."), None
        try:
            driver = h.driver_for(kind, preset, video, audio, script)
            h.check_driver(driver, kind, self.app)
            cfg = self.source_cfg(kind, language, voice)
            info = h.describe_source(driver, kind, cfg)
            if kind == "preset":
                preview = str(h.preset_preview(preset, self.ws, self.app.preview_size))
            if kind != "text" or _seconds(seconds) is not None:  # a script's own length: Listen tells it
                h.check_seconds(_seconds(seconds), driver, kind, self.app, cfg)
        except Exception as e:
            return _fail(e), preview
        return info, preview

    def on_source(self, sid, label, preset, video, audio, script, language, voice, seconds):
        """A source input changed -> source info, preset preview, pose video, pose plot, pose status, result status."""
        info, preview = self.source_info(label, preset, video, audio, script, language, voice, seconds)
        session = self.sessions.get(sid)
        self.sessions.update(sid, source=label, preset=preset, video=video, audio=audio, script=script, language=language,
                             voice=voice, seconds=seconds, source_info=info, pose_video=None, pose_plot=None, pose_status="")
        stale = STALE_RESULT if session.get("result") else gr.update()
        return info, preview, None, None, "", stale

    def on_language(self, sid, language):
        """The language changed -> the voice picker, set to the language's default voice."""
        self.sessions.update(sid, language=language, voice="")
        return gr.update(choices=self.voice_choices(language), value="")

    def on_listen(self, sid, script, language, voice):
        """Listen: speak the script -> speech audio, source info."""
        try:
            spoken = h.speak(script, language, voice, self.cfg, self.ws)
        except Exception as e:
            return None, _fail(e)
        self.sessions.update(sid, speech=str(spoken.audio), source_info=spoken.message)
        return str(spoken.audio), spoken.message

    def on_seconds(self, sid, label, preset, video, audio, script, language, voice, seconds):
        """The duration changed -> source info (with the duration checked), pose status, result status."""
        info, _ = self.source_info(label, preset, video, audio, script, language, voice, seconds)
        session = self.sessions.get(sid)
        self.sessions.update(sid, seconds=seconds, source_info=info)
        pose = ("<span class='fp-stale'>⚠ The duration changed: press **Preview pose** again.</span>"
                if session.get("pose_video") else gr.update())
        return info, pose, STALE_RESULT if session.get("result") else gr.update()

    def on_make_pose(self, sid, reference, label, preset, video, audio, script, language, voice, seconds, *adjust,
                     progress=gr.Progress()):
        """-> pose video, pose plot, pose status, source info (a problem with the source is shown there, once)."""
        kind = h.SOURCES.get(label, "preset")
        self.sessions.update(sid, source=label, preset=preset, video=video, audio=audio, script=script, language=language,
                             voice=voice, seconds=seconds, adjust=list(adjust))
        try:
            driver = h.driver_for(kind, preset, video, audio, script)
            h.check_driver(driver, kind, self.app)
            cfg = self.source_cfg(kind, language, voice)
            h.check_seconds(_seconds(seconds), driver, kind, self.app, cfg)
        except Exception as e:
            self.sessions.update(sid, pose_video=None, pose_plot=None, pose_status="")
            return None, None, warn("No pose: the source above has a problem."), _fail(e)
        try:
            if not reference:
                raise h.InputError("no reference photo yet; upload one in step 1 (the pose is fitted to its face)")
            progress(0, desc="making the pose sequence")
            pv = h.make_pose_preview(reference, driver, kind, _seconds(seconds), cfg, self.ws,
                                     progress=lambda i, n: progress((i, n), desc="drawing the pose", unit="frames"),
                                     adjust=adjust_of(adjust))
        except Exception as e:
            self.sessions.update(sid, pose_video=None, pose_plot=None, pose_status="")
            return None, None, _fail(e), gr.update()
        self.sessions.update(sid, pose_video=str(pv.video), pose_plot=str(pv.plot), pose_status=pv.message)
        return str(pv.video), str(pv.plot), pv.message, gr.update()

    def on_adjust(self, sid, reference, label, preset, video, audio, script, language, voice, seconds, *adjust,
                  progress=gr.Progress()):
        """A pose control moved: redraw the pose preview when there is one to redraw -> pose video, plot,
        status, source info, result status."""
        session = self.sessions.get(sid)
        self.sessions.update(sid, adjust=list(adjust))
        stale = STALE_RESULT if session.get("result") else gr.update()
        if not reference or not session.get("pose_video"):
            return gr.update(), gr.update(), "Pose controls are applied to the pose preview and the video.", gr.update(), stale
        return *self.on_make_pose(sid, reference, label, preset, video, audio, script, language, voice, seconds, *adjust,
                                  progress=progress), stale

    def on_adjust_reset(self, sid):
        defaults = [1.0 if f in ("head_amplitude", "expression") else 0.0 for _, f, *_ in ADJUST_SLIDERS]
        self.sessions.update(sid, adjust=[*defaults, False, DEFAULT_BLINKS])
        return *defaults, False, gr.update(value=DEFAULT_BLINKS, interactive=False)

    # -- step 3 -----------------------------------------------------------------------------------
    def on_backend(self, sid, backend: str):
        self.sessions.update(sid, backend=backend)
        return gr.update(visible=backend == "diffusion"), gr.update(visible=backend in h.STOCHASTIC)

    def on_generate(self, sid, reference, label, preset, video, audio, script, language, voice, seconds, burn, backend,
                    seed, steps, *adjust, progress=gr.Progress()):
        """A generator: -> (result video, download button, subtitle files, result status, reference status,
        source info), first at once (the old result cleared), then every ``tick`` while the render runs."""
        keep = gr.update()
        nothing = (None, gr.update(value=None, visible=False), gr.update(value=None, visible=False))
        kind = h.SOURCES.get(label, "preset")
        self.sessions.update(sid, source=label, preset=preset, video=video, audio=audio, script=script, language=language,
                             voice=voice, seconds=seconds, burn=bool(burn), backend=backend, seed=seed, steps=steps,
                             adjust=list(adjust), result=None, result_status="", captions=[])
        # 1. the photo
        try:
            if not reference:
                raise h.InputError("no reference photo yet; upload a photo with one clearly visible face")
            if self.sessions.get(sid).get("reference") != reference:
                h.inspect_reference(reference, self.cfg)
        except Exception as e:
            yield *nothing, warn("Not rendered: step 1 needs a photo with a face (see above)."), _fail(e), keep
            return
        # 2. the pose source and duration
        try:
            driver = h.driver_for(kind, preset, video, audio, script)
            h.check_driver(driver, kind, self.app)
            cfg = self.source_cfg(kind, language, voice, bool(burn))
            secs = h.check_seconds(_seconds(seconds), driver, kind, self.app, cfg)
            adj = adjust_of(adjust)
        except Exception as e:
            yield *nothing, warn("Not rendered: step 2 has a problem (see above)."), keep, _fail(e)
            return
        # 3. render, in a thread this generator watches
        status = self.backends.get(backend)
        if status is not None and not status.available:
            yield *nothing, _fail(h.ModelNotFoundError(status.reason)), keep, keep
            return
        work = functools.partial(
            h.generate_video, reference, driver, kind, secs, backend, int(seed or 0), cfg, self.ws, self.pool,
            steps=int(steps) if backend == "diffusion" and steps else None, adjust=adj)
        task = h.RenderTask(work, abandon_s=self.app.abandon_s).start()
        self.renders = [*self.renders[-19:], task]
        yield *nothing, "Rendering: starting ...", keep, keep
        try:
            while not task.done.wait(0.25):
                task.touch()
                done, total = task.frames
                if total:
                    progress((done, total), desc=f"rendering ({backend})", unit="frames")
                    line = f"Rendering with **{backend}**: frame {done} of {total} ..."
                else:
                    progress(0, desc=task.stage)
                    line = f"Rendering: {task.stage} ..."
                yield keep, keep, keep, line, keep, keep
        finally:
            if not task.done.is_set():  # Gradio closed this generator: the page is gone
                task.cancel()
        if task.error is not None:
            yield *nothing, _fail(task.error), keep, keep
            return
        out = task.result
        captions = [str(c) for c in out.captions if Path(c).is_file()]
        self.sessions.update(sid, result=str(out.video), result_status=out.message, captions=captions)
        yield (str(out.video), gr.update(value=str(out.video), visible=True),
               gr.update(value=captions or None, visible=bool(captions)), out.message, keep, keep)

    # -- session ----------------------------------------------------------------------------------
    def on_load(self, sid: Optional[str]):
        """Bring back what this browser last had -> (session id, *LOAD_OUTPUTS values)."""
        s = self.sessions.get(sid)
        if not sid or not s:
            sid = sid or h.Sessions.new_id()
            first = self.presets[0].name if self.presets else None
            info, preview = self.source_info("Preset", first, None, None)
            return (sid, *[gr.update()] * 17, info, preview, *[gr.update()] * 11, *[gr.update()] * 7)
        label = s.get("source") or "Preset"
        kind = h.SOURCES.get(label, "preset")
        reference = h.existing(s.get("reference"))
        video, audio = h.existing(s.get("video")), h.existing(s.get("audio"))
        _, preview = self.source_info(label, s.get("preset"), video, audio) if kind == "preset" else (None, None)
        language = s.get("language") or next(iter(self.languages), None)
        captions = [c for c in (h.existing(c) for c in s.get("captions") or []) if c]
        adjust = s.get("adjust") or [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, False, DEFAULT_BLINKS]
        backend = s.get("backend") or "warp"
        result = h.existing(s.get("result"))
        pose_video, pose_plot = h.existing(s.get("pose_video")), h.existing(s.get("pose_plot"))
        return (
            sid,
            reference, h.existing(s.get("crop")) if reference else None,
            s.get("ref_status", "") if reference else "Upload a photo with one clearly visible face: any size or aspect.",
            label, gr.update(visible=kind == "preset"), gr.update(visible=kind == "video"),
            gr.update(visible=kind == "audio"), s.get("preset") or gr.update(), video, audio,
            s.get("seconds") if s.get("seconds") not in (None, "") else 0,
            *adjust[:len(ADJUST_SLIDERS)],
            s.get("source_info", ""), preview,
            adjust[len(ADJUST_SLIDERS)], gr.update(value=adjust[len(ADJUST_SLIDERS) + 1], interactive=bool(adjust[len(ADJUST_SLIDERS)])),
            pose_video, pose_plot, s.get("pose_status", "") if pose_video else "",
            backend, gr.update(value=s.get("seed", 0), visible=backend in h.STOCHASTIC),
            gr.update(value=s.get("steps") or gr.update(), visible=backend == "diffusion"),
            result, gr.update(value=result, visible=result is not None), s.get("result_status", "") if result else "",
            gr.update(visible=kind == "text"), s.get("script") or "", language,
            gr.update(choices=self.voice_choices(language), value=s.get("voice") or ""), h.existing(s.get("speech")),
            bool(s.get("burn")), gr.update(value=(captions or None) if result else None, visible=bool(captions and result)),
        )

    # -- batch ------------------------------------------------------------------------------------
    def on_batch_run(self, manifest_file, input_files, manifest_uri, out_prefix, request: gr.Request):
        """A generator: -> status, job table, process output, downloads, gallery of finished videos."""
        key = request.session_hash if request is not None else "default"
        keep = gr.update()
        try:
            run = h.start_batch(manifest_file, list(input_files or []), manifest_uri, out_prefix, self.cfg, self.ws)
        except Exception as e:
            yield _fail(e), None, "", None, None
            return
        self.batches[key] = run
        shown: list = []
        while True:
            st = run.poll()
            videos = run.videos(st.rows)
            gallery = videos if videos != shown else keep
            shown = videos
            files = [str(p) for p in st.downloads] or None
            yield st.message, st.table(run.out), st.log_tail, files, gallery
            if st.finished:
                return
            time.sleep(self.app.batch_poll_s)

    def on_batch_stop(self, request: gr.Request):
        run = self.batches.get(request.session_hash if request is not None else "default")
        if run is None or not run.running:
            return "Nothing is running."
        run.stop()
        return "Stopping the batch run ..."

    # -- page -------------------------------------------------------------------------------------
    def diffusion_info(self) -> str:
        """Why diffusion is off and how to turn it on, escaped (its reason names ``<that folder>``)."""
        diffusion = self.backends.get("diffusion")
        if diffusion is None or diffusion.available:
            return ""
        first = html.escape(diffusion.reason.split(";")[0], quote=False)
        return (f"**diffusion is off:** {first}.\n\n<details><summary>How to turn it on</summary>"
                f"<p>{html.escape(diffusion.reason, quote=False)}</p>"
                "<p>For this app, start it with the checkpoint folder set: "
                "<code>facepose -s model.checkpoint=/path/to/that/folder app</code> "
                "(or put <code>checkpoint:</code> in <code>configs/model.yaml</code>).</p></details>")

    def build(self) -> gr.Blocks:
        app = self.app
        with gr.Blocks(title="facepose", analytics_enabled=False) as demo:
            sid = gr.BrowserState(None, storage_key="facepose-session")
            gr.Markdown(
                "# facepose\nOne photo and a pose source in, a 512×512, 24 fps talking-head video out.",
                elem_id="fp-header",
            )
            with gr.Tabs(elem_id="tabs"):
                with gr.Tab("Create", id="create", elem_id="tab-create"):
                    # 1. Reference
                    with gr.Column(elem_id="step-reference", elem_classes="fp-step"):
                        gr.Markdown("### 1 · Reference\nA photo with one clearly visible face, any size or aspect "
                                    "(JPEG, PNG, WebP).", elem_classes="fp-step-title")
                        with gr.Row(equal_height=True):
                            reference = gr.File(label="Photo", file_count="single", type="filepath", height=140,
                                                elem_id="reference")
                            crop = gr.Image(label="Face crop and landmarks", interactive=False, height=320,
                                            buttons=["download", "fullscreen"], elem_id="reference-crop")
                        ref_status = gr.Markdown("Upload a photo with one clearly visible face: any size or aspect.",
                                                 elem_id="reference-status", elem_classes="fp-status")
                    # 2. Pose
                    with gr.Column(elem_id="step-pose", elem_classes="fp-step"):
                        gr.Markdown("### 2 · Pose\nA preset, a driving video (retargeted to your face), speech, or a "
                                    "script to speak.",
                                    elem_classes="fp-step-title")
                        with gr.Row():
                            with gr.Column(scale=5, min_width=300):
                                source = gr.Radio(list(h.SOURCES), value="Preset", label="Pose source", elem_id="pose-source")
                                # one box a source kind (h.SOURCES); a new kind adds its box here
                                with gr.Column(visible=True) as preset_box:
                                    first = self.presets[0].name if self.presets else None
                                    preset = gr.Dropdown([(p.label, p.name) for p in self.presets], value=first,
                                                         label="Preset", elem_id="preset")
                                    preset_preview = gr.Video(label="Preset preview", interactive=False, autoplay=True,
                                                              loop=True, height=200, elem_id="preset-preview")
                                with gr.Column(visible=False) as video_box:
                                    # a plain file, so the app (not the browser's player) judges what it is
                                    video = gr.File(label="Driving video (mp4, mov, webm, ...)", file_count="single",
                                                    type="filepath", height=120, elem_id="driving-video")
                                with gr.Column(visible=False) as audio_box:
                                    audio = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                                     elem_id="speech-audio")
                                with gr.Column(visible=False, elem_id="text-box") as text_box:
                                    script = gr.Textbox(label="Script", lines=5, max_lines=14, elem_id="text-script",
                                                        max_length=app.max_script_chars * 2,
                                                        placeholder="Hello! Today we learn about the water cycle.\n\n"
                                                                    "A blank line makes a longer pause.",
                                                        info=f"What the face says: sentences become subtitles; at most "
                                                             f"{app.max_script_chars} characters.")
                                    first_lang = next(iter(self.languages), None)
                                    with gr.Row():
                                        language = gr.Dropdown(list(self.languages), value=first_lang, label="Language",
                                                               elem_id="text-language", min_width=140)
                                        voice = gr.Dropdown(self.voice_choices(first_lang), value="", label="Voice",
                                                            elem_id="text-voice", min_width=140)
                                    with gr.Row():
                                        listen = gr.Button("▶ Listen", size="md", elem_id="text-listen", scale=1, min_width=110)
                                        burn = gr.Checkbox(False, label="Burn subtitles into the video", elem_id="text-burn",
                                                           scale=3, info="The .vtt and .srt files come with the video either way.")
                                    speech = gr.Audio(label="Speech of the script", type="filepath", interactive=False,
                                                      buttons=["download"], elem_id="text-speech")
                                seconds = gr.Number(value=0, label="Duration (seconds)", elem_id="seconds",
                                                    info=f"0: the source's own length (presets loop). At most {app.max_seconds:g} s.")
                                source_info = gr.Markdown("", elem_id="source-info", elem_classes="fp-status")
                                with gr.Accordion("Pose controls", open=False, elem_id="pose-controls"):
                                    sliders = [gr.Slider(lo, hi, value=getattr(PoseAdjustConfig(), f), step=st, label=label,
                                                         elem_id=eid) for eid, f, label, lo, hi, st in ADJUST_SLIDERS]
                                    with gr.Row():
                                        blink_on = gr.Checkbox(False, label="Set the blink rate", elem_id="adj-blink-on",
                                                               info="Off: the source's own blinks.")
                                        blinks = gr.Slider(0, 60, value=DEFAULT_BLINKS, step=1, label="Blinks a minute",
                                                           interactive=False, elem_id="adj-blink")
                                    reset = gr.Button("Reset pose controls", size="sm", elem_id="adj-reset")
                                make_pose = gr.Button("Preview pose", elem_id="make-pose")
                            with gr.Column(scale=6, min_width=300):
                                pose_video = gr.Video(label="Pose (retargeted to your face)", interactive=False,
                                                      height=300, elem_id="pose-video")
                                pose_plot = gr.Image(label="Mouth opening and head pose over time", show_label=False,
                                                     interactive=False, height=280, elem_id="pose-plot")
                                pose_status = gr.Markdown("", elem_id="pose-status", elem_classes="fp-status")
                    # 3. Video
                    with gr.Column(elem_id="step-video", elem_classes="fp-step"):
                        gr.Markdown("### 3 · Video\nRender 512×512 at 24 fps; audio comes along when speech drove the pose.",
                                    elem_classes="fp-step-title")
                        with gr.Row():
                            with gr.Column(scale=5, min_width=300):
                                backend = gr.Radio([(f"{n}: {d}", n) for n, d in h.BACKENDS.items()], value="warp",
                                                   label="Renderer", elem_id="backend")
                                gr.Markdown(self.diffusion_info(), elem_id="backend-info", elem_classes="fp-status")
                                with gr.Row():
                                    seed = gr.Number(value=0, precision=0, label="Seed", visible=False, elem_id="seed",
                                                     info="The same seed gives the same video.")
                                    default_steps = int(getattr(getattr(self.cfg, "model", None), "steps", 20))
                                    steps = gr.Slider(1, 100, value=default_steps, step=1, label="Diffusion steps",
                                                      visible=False, elem_id="steps")
                                generate = gr.Button("Generate video", variant="primary", elem_id="generate")
                                result_status = gr.Markdown("", elem_id="result-status", elem_classes="fp-status")
                            with gr.Column(scale=6, min_width=300):
                                result = gr.Video(label="Result", interactive=False, height=420,
                                                  buttons=["download"], elem_id="result-video")
                                download = gr.DownloadButton("Download mp4", visible=False, elem_id="result-download")
                                captions = gr.File(label="Subtitles (WebVTT, SRT)", file_count="multiple", interactive=False,
                                                   visible=False, elem_id="result-captions")
                with gr.Tab("Batch", id="batch", elem_id="tab-batch"):
                    self._batch_tab()

            # events: only what a person does (.upload, .input, .release, .click) marks results stale,
            # so restoring a session on load does not wipe what it restores
            src = [source, preset, video, audio, script, language, voice, seconds]
            to_source = [source_info, preset_preview, pose_video, pose_plot, pose_status, result_status]
            limit = app.preview_concurrency
            for trigger in (reference.upload, reference.clear):
                trigger(self.on_reference, [sid, reference], [crop, ref_status, pose_video, pose_plot, pose_status, result_status],
                        concurrency_limit=limit)
            source.input(self.on_source_kind, [source], [preset_box, video_box, audio_box, text_box], queue=False)
            for trigger in (source.input, preset.input, video.upload, video.clear, audio.upload, audio.clear,
                            audio.stop_recording, voice.input):
                trigger(self.on_source, [sid, *src], to_source, concurrency_limit=limit)
            # typing: cheap checks only (no synthesis), the latest keystroke wins
            script.input(self.on_source, [sid, *src], to_source, concurrency_limit=limit, trigger_mode="always_last",
                         show_progress="hidden")
            language.input(self.on_language, [sid, language], [voice], queue=False).then(
                self.on_source, [sid, *src], to_source, concurrency_limit=limit)
            listen.click(self.on_listen, [sid, script, language, voice], [speech, source_info], concurrency_limit=limit,
                         concurrency_id="pose")
            burn.input(lambda s, v: self.sessions.update(s, burn=bool(v)), [sid, burn], None, queue=False)
            seconds.input(self.on_seconds, [sid, *src], [source_info, pose_status, result_status], concurrency_limit=limit)
            controls = [*sliders, blink_on, blinks]
            blink_on.input(lambda on: gr.update(interactive=bool(on)), [blink_on], [blinks], queue=False)
            for trigger in [s.release for s in sliders] + [blink_on.input, blinks.release]:
                trigger(self.on_adjust, [sid, reference, *src, *controls], [pose_video, pose_plot, pose_status, source_info, result_status],
                        concurrency_limit=limit, concurrency_id="pose", show_progress_on=[pose_video])
            reset.click(self.on_adjust_reset, [sid], controls, queue=False).then(
                self.on_adjust, [sid, reference, *src, *controls], [pose_video, pose_plot, pose_status, source_info, result_status],
                concurrency_limit=limit, concurrency_id="pose", show_progress_on=[pose_video])
            make_pose.click(self.on_make_pose, [sid, reference, *src, *controls], [pose_video, pose_plot, pose_status, source_info],
                            concurrency_limit=limit, concurrency_id="pose", show_progress_on=[pose_video])
            backend.input(self.on_backend, [sid, backend], [steps, seed], queue=False)
            seed.input(lambda s, v: self.sessions.update(s, seed=v), [sid, seed], None, queue=False)
            steps.release(lambda s, v: self.sessions.update(s, steps=v), [sid, steps], None, queue=False)
            generate.click(self.on_generate, [sid, reference, *src, burn, backend, seed, steps, *controls],
                           [result, download, captions, result_status, ref_status, source_info],
                           concurrency_limit=app.render_concurrency, concurrency_id="render", show_progress_on=[result])
            demo.load(self.on_load, [sid],
                      [sid, reference, crop, ref_status, source, preset_box, video_box, audio_box, preset, video, audio,
                       seconds, *sliders, source_info, preset_preview, blink_on, blinks, pose_video, pose_plot, pose_status,
                       backend, seed, steps, result, download, result_status,
                       text_box, script, language, voice, speech, burn, captions])
        return demo

    def _batch_tab(self) -> None:
        gr.Markdown(
            "### Batch render\nA render manifest (CSV, JSONL or Parquet: `job_id`, `reference`, `driver`, optional "
            "`seconds`, `backend`, `seed`, `output`) with the files it names, or the URI of a manifest already in "
            "storage (`s3://bucket/jobs/manifest.csv`). It runs as its own process, the same as "
            "`facepose render-batch`; a rerun skips finished jobs. A `driver` of `text:Your script.` speaks it "
            "(its .vtt and .srt subtitles come in the zip). Pose controls for a whole batch: "
            "`facepose -s pose.adjust.head_amplitude=1.5 render-batch ...`.",
            elem_classes="fp-step-title",
        )
        with gr.Row():
            with gr.Column(scale=4, min_width=300):
                manifest = gr.File(label="Manifest", file_types=[".csv", ".jsonl", ".parquet"], elem_id="batch-manifest")
                inputs = gr.File(label="Its input files (photos, videos, audio)", file_count="multiple",
                                 elem_id="batch-inputs")
                manifest_uri = gr.Textbox(label="… or a manifest URI", placeholder="s3://bucket/jobs/manifest.csv",
                                          elem_id="batch-manifest-uri")
                out = gr.Textbox(label="Output prefix", value="", placeholder="default: a new folder on the server",
                                 elem_id="batch-out")
                with gr.Row():
                    run = gr.Button("Run batch", variant="primary", elem_id="batch-run")
                    stop = gr.Button("Stop", variant="stop", elem_id="batch-stop")
            with gr.Column(scale=7, min_width=300):
                status = gr.Markdown("", elem_id="batch-status", elem_classes="fp-status")
                jobs = gr.Dataframe(headers=list(h.BATCH_COLUMNS), label="Jobs (outputs under the output prefix)",
                                    interactive=False, wrap=True, max_height=420,
                                    column_widths=["12%", "11%", "15%", "11%", "12%", "39%"], elem_id="batch-jobs")
                gallery = gr.Gallery(label="Finished videos (click one to play it; download it from the viewer)",
                                     columns=3, height=300, object_fit="contain", buttons=["download"],
                                     elem_id="batch-gallery")
                results = gr.File(label="Everything as one zip (videos + results.csv + results.parquet), and the tables",
                                  file_count="multiple", interactive=False, elem_id="batch-results")
                with gr.Accordion("Process output", open=False):
                    log_box = gr.Code(label="render-batch output", lines=12, interactive=False, elem_id="batch-log")
        run.click(self.on_batch_run, [manifest, inputs, manifest_uri, out], [status, jobs, log_box, results, gallery],
                  concurrency_limit=1, concurrency_id="batch", show_progress="minimal")
        stop.click(self.on_batch_stop, None, [status], queue=False)


def build_app(cfg: Optional[Config] = None, ws: Optional[h.Workspace] = None, pool: Optional[h.RendererPool] = None) -> gr.Blocks:
    """The Gradio app for ``cfg`` (a whole :class:`~facepose.config.Config`; loaded from configs/ when None).
    Launch it with :func:`facepose.app.launch`, which adds the theme, limits and queue."""
    if cfg is None:
        cfg = load_config()
    ui = AppUI(cfg, ws=ws, pool=pool)
    demo = ui.build()
    demo.facepose_ui = ui  # type: ignore[attr-defined]  # launch() reads the limits and backend state
    return demo


def launch_options(demo: gr.Blocks) -> dict[str, Any]:
    """The ``demo.launch`` keywords the app needs: theme, CSS, the JS that greys out missing backends,
    a hard upload cap (4× the app's own limit, which the handlers check with a message of their own) and
    the workspace as an allowed path."""
    ui: AppUI = demo.facepose_ui  # type: ignore[attr-defined]
    off = {n: s.reason for n, s in ui.backends.items() if not s.available}
    return {
        "theme": theme(),
        "css": CSS,
        "js": JS_TEMPLATE % json.dumps(off),
        "max_file_size": f"{int(ui.app.max_upload_mb) * 4}mb",
        "allowed_paths": [str(ui.ws.root)],
        "ssr_mode": False,
        "footer_links": [],
    }


def queue(demo: gr.Blocks) -> gr.Blocks:
    ui: AppUI = demo.facepose_ui  # type: ignore[attr-defined]
    return demo.queue(max_size=ui.app.queue_size, default_concurrency_limit=ui.app.preview_concurrency)
