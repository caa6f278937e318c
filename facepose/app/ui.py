"""The Gradio page: three steps (reference, pose, video) and a Batch tab.

Callbacks here only unpack widgets, call :mod:`facepose.app.handlers`, and turn a FaceposeError into a
message on the page (a status line and a toast), never a traceback. Every component a test touches has
an ``elem_id``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

import gradio as gr

from facepose.app import handlers as h
from facepose.app.config import AppConfig, app_config

log = logging.getLogger(__name__)

CSS = """
.gradio-container { max-width: 1180px !important; margin: 0 auto !important; }
#fp-header h1 { margin-bottom: 0.1em; }
#fp-header p { margin-top: 0; opacity: 0.8; }
.fp-step { padding: 14px !important; }
.fp-step-title h3 { margin: 0 0 4px 0; }
.fp-step-title p { margin: 0; opacity: 0.75; font-size: 0.92em; }
.fp-status { min-height: 1.6em; }
.fp-status p { margin: 4px 0; }
.fp-warn { color: var(--error-text-color, #b91c1c); }
.fp-off { opacity: 0.45; cursor: not-allowed !important; }
#generate, #make-pose, #batch-run { min-height: 46px; }
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


def theme() -> gr.themes.Base:
    """Soft theme on system fonts (no font downloads: the app works offline)."""
    sans = [gr.themes.Font("ui-sans-serif"), gr.themes.Font("system-ui"), gr.themes.Font("Segoe UI"), gr.themes.Font("Helvetica"), gr.themes.Font("sans-serif")]
    mono = [gr.themes.Font("ui-monospace"), gr.themes.Font("SFMono-Regular"), gr.themes.Font("monospace")]
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber", neutral_hue="slate", font=sans, font_mono=mono)


def _fail(exc: BaseException) -> str:
    """Show ``exc`` as a toast and return the status line for it."""
    message = h.friendly_error(exc)
    gr.Warning(message)
    return f"<span class='fp-warn'>⚠ {message}</span>"


def _seconds(value: Optional[float]) -> Optional[float]:
    return None if value in (None, "") or float(value) == 0 else float(value)


class AppUI:
    """Holds what the callbacks share: config, workspace, the renderer pool and running batch jobs."""

    def __init__(self, cfg: Any, ws: Optional[h.Workspace] = None, pool: Optional[h.RendererPool] = None):
        self.cfg = cfg
        self.app: AppConfig = app_config(cfg)
        self.ws = ws or h.Workspace.from_config(self.app)
        self.pool = pool or h.RendererPool(cfg)
        self.batches: dict[str, h.BatchRun] = {}
        self.backends = {name: self.pool.status(name) for name in h.BACKENDS}
        try:
            self.presets = h.presets()
        except Exception as e:  # no preset module: the app still renders from video and audio
            log.warning("no pose presets: %s", h.friendly_error(e))
            self.presets = []

    # -- step 1 -----------------------------------------------------------------------------------
    def on_reference(self, path: Optional[str]):
        if not path:
            return None, "Upload a photo with one clearly visible face: any size or aspect."
        try:
            view = h.inspect_reference(path, self.cfg)
        except Exception as e:
            return None, _fail(e)
        return view.preview, view.message

    # -- step 2 -----------------------------------------------------------------------------------
    def on_source_kind(self, label: str):
        kind = h.SOURCES.get(label, "preset")
        return gr.update(visible=kind == "preset"), gr.update(visible=kind == "video"), gr.update(visible=kind == "audio")

    def on_source(self, label: str, preset: Optional[str], video: Optional[str], audio: Optional[str]):
        kind = h.SOURCES.get(label, "preset")
        preview = None
        try:
            driver = h.driver_for(kind, preset, video, audio)
            info = h.describe_source(driver, kind)
            if kind == "preset":
                preview = str(h.preset_preview(preset, self.ws, self.app.preview_size))
        except Exception as e:
            missing = kind != "preset" and not (video if kind == "video" else audio)
            info = h.friendly_error(e) if missing else _fail(e)
        return info, preview

    def on_make_pose(self, reference, label, preset, video, audio, seconds, progress=gr.Progress()):
        kind = h.SOURCES.get(label, "preset")
        try:
            driver = h.driver_for(kind, preset, video, audio)
            progress(0, desc="making the pose sequence")
            pv = h.make_pose_preview(reference, driver, kind, _seconds(seconds), self.cfg, self.ws,
                                     progress=lambda i, n: progress((i, n), desc="drawing the pose", unit="frames"))
        except Exception as e:
            return None, None, _fail(e)
        return str(pv.video), str(pv.plot), pv.message

    # -- step 3 -----------------------------------------------------------------------------------
    def on_backend(self, backend: str):
        return gr.update(visible=backend == "diffusion")

    def on_generate(self, reference, label, preset, video, audio, seconds, backend, seed, steps, progress=gr.Progress()):
        kind = h.SOURCES.get(label, "preset")
        try:
            status = self.backends.get(backend)
            if status is not None and not status.available:
                raise h.ModelNotFoundError(status.reason)
            driver = h.driver_for(kind, preset, video, audio)
            progress(0, desc="starting")
            out = h.generate_video(
                reference, driver, kind, _seconds(seconds), backend, int(seed or 0), self.cfg, self.ws, self.pool,
                steps=int(steps) if backend == "diffusion" and steps else None,
                progress=lambda i, n: progress((i, n), desc=f"rendering ({backend})", unit="frames"),
                on_stage=lambda s: progress(0, desc=s),
            )
        except Exception as e:
            return None, gr.update(value=None, visible=False), _fail(e)
        return str(out.video), gr.update(value=str(out.video), visible=True), out.message

    # -- batch ------------------------------------------------------------------------------------
    def on_batch_run(self, manifest_file, input_files, manifest_uri, out_prefix, request: gr.Request):
        key = request.session_hash if request is not None else "default"
        try:
            run = h.start_batch(manifest_file, list(input_files or []), manifest_uri, out_prefix, self.cfg, self.ws)
        except Exception as e:
            yield _fail(e), None, "", None
            return
        self.batches[key] = run
        while True:
            st = run.poll()
            files = [str(p) for p in st.downloads] or None
            yield st.message, st.table(run.out), st.log_tail, files
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
    def build(self) -> gr.Blocks:
        app = self.app
        diffusion = self.backends.get("diffusion")
        with gr.Blocks(title="facepose", analytics_enabled=False) as demo:
            gr.Markdown(
                "# facepose\nOne photo and a pose source in, a 512×512, 24 fps talking-head video out.",
                elem_id="fp-header",
            )
            with gr.Tabs(elem_id="tabs"):
                with gr.Tab("Create", id="create", elem_id="tab-create"):
                    # 1. Reference
                    with gr.Group(elem_id="step-reference", elem_classes="fp-step"):
                        gr.Markdown("### 1 · Reference\nA photo with one clearly visible face, any size or aspect.",
                                    elem_classes="fp-step-title")
                        with gr.Row(equal_height=True):
                            reference = gr.Image(label="Photo", type="filepath", image_mode=None,
                                                 sources=["upload", "webcam", "clipboard"], height=320, elem_id="reference")
                            crop = gr.Image(label="Face crop and landmarks", interactive=False, height=320,
                                            buttons=["download", "fullscreen"], elem_id="reference-crop")
                        ref_status = gr.Markdown("Upload a photo with one clearly visible face: any size or aspect.",
                                                 elem_id="reference-status", elem_classes="fp-status")
                    # 2. Pose
                    with gr.Group(elem_id="step-pose", elem_classes="fp-step"):
                        gr.Markdown("### 2 · Pose\nA preset, a driving video (retargeted to your face) or speech.",
                                    elem_classes="fp-step-title")
                        with gr.Row():
                            with gr.Column(scale=5):
                                source = gr.Radio(list(h.SOURCES), value="Preset", label="Pose source", elem_id="pose-source")
                                with gr.Column(visible=True) as preset_box:
                                    first = self.presets[0].name if self.presets else None
                                    preset = gr.Dropdown([(p.label, p.name) for p in self.presets], value=first,
                                                         label="Preset", elem_id="preset")
                                    preset_preview = gr.Video(label="Preset preview", interactive=False, autoplay=True,
                                                              loop=True, height=200, elem_id="preset-preview")
                                with gr.Column(visible=False) as video_box:
                                    video = gr.Video(label="Driving video", sources=["upload"], height=240,
                                                     elem_id="driving-video")
                                with gr.Column(visible=False) as audio_box:
                                    audio = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                                     elem_id="speech-audio")
                                seconds = gr.Number(value=None, label="Duration (seconds)", minimum=0,
                                                    maximum=app.max_seconds, step=0.5, elem_id="seconds",
                                                    info=f"0: the source's own length (presets loop). At most {app.max_seconds:g} s.")
                                source_info = gr.Markdown("", elem_id="source-info", elem_classes="fp-status")
                                make_pose = gr.Button("Preview pose", elem_id="make-pose")
                            with gr.Column(scale=6):
                                pose_video = gr.Video(label="Pose (retargeted to your face)", interactive=False,
                                                      height=300, elem_id="pose-video")
                                pose_plot = gr.Image(label="Mouth opening and head pose over time", show_label=False,
                                                     interactive=False, height=280, elem_id="pose-plot")
                                pose_status = gr.Markdown("", elem_id="pose-status", elem_classes="fp-status")
                    # 3. Video
                    with gr.Group(elem_id="step-video", elem_classes="fp-step"):
                        gr.Markdown("### 3 · Video\nRender 512×512 at 24 fps; audio comes along when speech drove the pose.",
                                    elem_classes="fp-step-title")
                        with gr.Row():
                            with gr.Column(scale=5):
                                backend = gr.Radio([(f"{n}: {d}", n) for n, d in h.BACKENDS.items()], value="warp",
                                                   label="Renderer", elem_id="backend")
                                off = "" if diffusion is None or diffusion.available else (
                                    f"**diffusion is off:** {diffusion.reason.split(';')[0]}.\n\n"
                                    f"<details><summary>How to turn it on</summary>{diffusion.reason}</details>")
                                gr.Markdown(off, elem_id="backend-info", elem_classes="fp-status")
                                with gr.Row():
                                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                                    default_steps = int(getattr(getattr(self.cfg, "model", None), "steps", 20))
                                    steps = gr.Slider(1, 100, value=default_steps, step=1, label="Diffusion steps",
                                                      visible=False, elem_id="steps")
                                generate = gr.Button("Generate video", variant="primary", elem_id="generate")
                                result_status = gr.Markdown("", elem_id="result-status", elem_classes="fp-status")
                            with gr.Column(scale=6):
                                result = gr.Video(label="Result", interactive=False, height=420,
                                                  buttons=["download"], elem_id="result-video")
                                download = gr.DownloadButton("Download mp4", visible=False, elem_id="result-download")
                with gr.Tab("Batch", id="batch", elem_id="tab-batch"):
                    self._batch_tab()

            # events
            reference.change(self.on_reference, [reference], [crop, ref_status], concurrency_limit=app.preview_concurrency)
            source.change(self.on_source_kind, [source], [preset_box, video_box, audio_box], queue=False)
            src_inputs = [source, preset, video, audio]
            for trigger in (source.change, preset.change, video.change, audio.change):
                trigger(self.on_source, src_inputs, [source_info, preset_preview], concurrency_limit=app.preview_concurrency)
                # a pose preview of another source would mislead: clear it
                trigger(lambda: (None, None, ""), None, [pose_video, pose_plot, pose_status], queue=False)
            demo.load(self.on_source, src_inputs, [source_info, preset_preview])
            make_pose.click(self.on_make_pose, [reference, *src_inputs, seconds], [pose_video, pose_plot, pose_status],
                            concurrency_limit=app.preview_concurrency, concurrency_id="pose")
            backend.change(self.on_backend, [backend], [steps], queue=False)
            generate.click(self.on_generate, [reference, *src_inputs, seconds, backend, seed, steps],
                           [result, download, result_status], concurrency_limit=app.render_concurrency,
                           concurrency_id="render")
        return demo

    def _batch_tab(self) -> None:
        app = self.app
        default_out = app.batch_output_prefix or str(self.ws.dir("batch"))
        gr.Markdown(
            "### Batch render\nA render manifest (CSV, JSONL or Parquet: `job_id`, `reference`, `driver`, optional "
            "`seconds`, `backend`, `seed`, `output`) with the files it names, or the URI of a manifest already in "
            "storage (`s3://bucket/jobs/manifest.csv`). It runs as its own process, the same as "
            "`facepose render-batch`; a rerun skips finished jobs.",
            elem_classes="fp-step-title",
        )
        with gr.Row():
            with gr.Column(scale=4):
                manifest = gr.File(label="Manifest", file_types=[".csv", ".jsonl", ".parquet"], elem_id="batch-manifest")
                inputs = gr.File(label="Its input files (photos, videos, audio)", file_count="multiple",
                                 elem_id="batch-inputs")
                manifest_uri = gr.Textbox(label="… or a manifest URI", placeholder="s3://bucket/jobs/manifest.csv",
                                          elem_id="batch-manifest-uri")
                out = gr.Textbox(label="Output prefix", value="", placeholder=f"default: a new folder under {default_out}",
                                 elem_id="batch-out")
                with gr.Row():
                    run = gr.Button("Run batch", variant="primary", elem_id="batch-run")
                    stop = gr.Button("Stop", variant="stop", elem_id="batch-stop")
            with gr.Column(scale=7):
                status = gr.Markdown("", elem_id="batch-status", elem_classes="fp-status")
                jobs = gr.Dataframe(headers=list(h.BATCH_COLUMNS), label="Jobs (outputs under the output prefix)",
                                    interactive=False, wrap=True, max_height=420,
                                    column_widths=["12%", "11%", "15%", "11%", "12%", "39%"], elem_id="batch-jobs")
                results = gr.File(label="Results table", file_count="multiple", interactive=False, elem_id="batch-results")
                with gr.Accordion("Process output", open=False):
                    log_box = gr.Code(label="render-batch output", lines=12, interactive=False, elem_id="batch-log")
        run.click(self.on_batch_run, [manifest, inputs, manifest_uri, out], [status, jobs, log_box, results],
                  concurrency_limit=1, concurrency_id="batch")
        stop.click(self.on_batch_stop, None, [status], queue=False)


def build_app(cfg: Any = None, ws: Optional[h.Workspace] = None, pool: Optional[h.RendererPool] = None) -> gr.Blocks:
    """The Gradio app for ``cfg`` (a whole :class:`~facepose.config.Config`; loaded from configs/ when None).
    Launch it with :func:`facepose.app.launch`, which adds the theme, limits and queue."""
    if cfg is None:
        from facepose.config import load_config

        cfg = load_config()
    ui = AppUI(cfg, ws=ws, pool=pool)
    demo = ui.build()
    demo.facepose_ui = ui  # type: ignore[attr-defined]  # launch() reads the limits and backend state
    return demo


def launch_options(demo: gr.Blocks) -> dict[str, Any]:
    """The ``demo.launch`` keywords the app needs: theme, CSS, the JS that greys out missing backends,
    the upload limit and the workspace as an allowed path."""
    ui: AppUI = demo.facepose_ui  # type: ignore[attr-defined]
    off = {n: s.reason for n, s in ui.backends.items() if not s.available}
    return {
        "theme": theme(),
        "css": CSS,
        "js": JS_TEMPLATE % json.dumps(off),
        "max_file_size": f"{int(ui.app.max_upload_mb)}mb",
        "allowed_paths": [str(ui.ws.root)],
        "ssr_mode": False,
        "footer_links": [],
    }


def queue(demo: gr.Blocks) -> gr.Blocks:
    ui: AppUI = demo.facepose_ui  # type: ignore[attr-defined]
    return demo.queue(max_size=ui.app.queue_size, default_concurrency_limit=ui.app.preview_concurrency)
