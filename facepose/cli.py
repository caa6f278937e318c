"""The ``facepose`` command: ``facepose <noun> <verb>``.

Every path argument also takes an ``s3://`` URI. Errors print one line ``error: ...`` and exit non-zero;
long work shows a progress bar. Global options set config: ``--config FILE`` merges a YAML file and
``-s key=value`` overrides one field (``facepose -s face.detector=cnn face crop photo.jpg -o crop.png``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional

# Quiet, offline runs: nothing facepose starts phones home on its own (Prefect's server and client
# telemetry, Ray's usage stats, Gradio's analytics, the Hugging Face hub). Set before any of them is
# imported; setdefault, so a user's own setting wins.
OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",  # Prefect's client analytics and huggingface_hub honour it
    "RAY_USAGE_STATS_ENABLED": "0",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
for _key, _value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from facepose.errors import FaceposeError, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="facepose: one-shot, pose-driven talking-head videos and the batch pipelines around them.")
pose_app = typer.Typer(no_args_is_help=True, help="Pose sequences: extract, make, draw, show, plot, presets.")
face_app = typer.Typer(no_args_is_help=True, help="Face detection and cropping.")
app.add_typer(pose_app, name="pose")
app.add_typer(face_app, name="face")

console = Console(stderr=True)


class State:
    overrides: list[str] = []
    files: list[str] = []
    _cfg = None

    @property
    def cfg(self):
        if self._cfg is None:
            from facepose import storage
            from facepose.config import load_config

            self._cfg = load_config(self.overrides, self.files)
            storage.configure(self._cfg.storage)
        return self._cfg


state = State()


@app.callback()
def _root(
    config: List[Path] = typer.Option([], "--config", "-c", help="Extra YAML config merged on configs/*.yaml."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Config override key=value (repeatable)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    """facepose: one-shot, pose-driven talking-head videos and the batch pipelines around them."""
    setup_logging(verbose)
    state.overrides, state.files, state._cfg = list(set_), [str(c) for c in config], None


def setup_logging(verbose: bool = False) -> None:
    """rich's handler on a terminal; otherwise (CI logs, pipes) plain records, one line each: rich
    wraps at 80 columns when its output is not a terminal."""
    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)


def print_json(value: Any) -> None:
    """One JSON document on stdout (``--json``)."""
    print(json.dumps(value, indent=2, default=str))


def plain_output(as_json: bool) -> bool:
    """Plain lines instead of a rich table: stdout is not a terminal (a pipe, a file)."""
    return not as_json and not sys.stdout.isatty()


@contextlib.contextmanager
def progress_bar(label: str, total: Optional[int] = None) -> Iterator:
    """A rich progress bar; yields ``update(done, total)``."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal and os.environ.get("FACEPOSE_PROGRESS") != "1") as bar:
        task = bar.add_task(label, total=total)

        def update(done: int, total_: Optional[int] = None) -> None:
            bar.update(task, completed=done, total=total_ if total_ is not None else bar.tasks[0].total)

        yield update


def done(message: str) -> None:
    console.print(f"[green]✓[/green] {message}")


# -- pose ----------------------------------------------------------------------------------------
@pose_app.command("extract")
def pose_extract(
    video: str = typer.Argument(..., help="Driving video (path or s3:// URI)."),
    output: str = typer.Option(..., "-o", "--output", help="Pose Parquet to write."),
    fps: float = typer.Option(24.0, help="Frame rate of the pose sequence."),
) -> None:
    """Track the face in VIDEO and write its 68 landmarks per frame to a pose Parquet."""
    from facepose.face.track import track_video
    from facepose.media.video import probe_video
    from facepose.timeline import frames_for_seconds

    cfg = state.cfg
    info = probe_video(video)
    with progress_bar("tracking", total=max(1, frames_for_seconds(info.duration, fps))) as update:
        pose = track_video(video, cfg.face, fps=fps, progress=update)
    pose.save(output)
    lost = int((~pose.visible).sum())
    done(f"{output}: {len(pose)} frames at {pose.fps:g} fps, face lost in {lost}")


@pose_app.command("draw")
def pose_draw(
    pose_uri: str = typer.Argument(..., metavar="POSE", help="Pose Parquet."),
    output: str = typer.Option(..., "-o", "--output", help="mp4 preview to write."),
    size: int = typer.Option(512, help="Output side in pixels."),
    lines: bool = typer.Option(False, help="Connect the points along the face contours."),
) -> None:
    """Draw a pose sequence as DWPose-style face images into an mp4."""
    from facepose.pose.draw import write_pose_video
    from facepose.pose.sequence import PoseSequence

    pose = PoseSequence.load(pose_uri)
    with progress_bar("drawing", total=len(pose)) as update:
        write_pose_video(pose, output, size=size, lines=lines, progress=update)
    done(f"{output}: {len(pose)} frames")


@pose_app.command("show")
def pose_show(
    pose_uri: str = typer.Argument(..., metavar="POSE", help="Pose Parquet."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (numbers, not text)."),
) -> None:
    """Print what a pose file holds: frames, fps, canvas, face size, missing frames."""
    import numpy as np
    from rich.table import Table

    from facepose.pose.sequence import PoseSequence

    pose = PoseSequence.load(pose_uri)
    vis = pose.visible
    sizes = pose.face_size()[vis] if vis.any() else np.zeros(1)
    if as_json:
        print_json({
            "pose": pose_uri, "frames": len(pose), "fps": float(pose.fps), "duration_s": float(pose.duration),
            "width": int(pose.width), "height": int(pose.height),
            "face_size_px": {"median": float(np.median(sizes)), "min": float(sizes.min()), "max": float(sizes.max())},
            "missing_frames": int((~vis).sum()), "head_pose": pose.head_pose is not None, "source": pose.source or None,
        })
        return
    table = Table(show_header=False, title=pose_uri)
    rows = [
        ("frames", str(len(pose))),
        ("fps", f"{pose.fps:g}"),
        ("duration", f"{pose.duration:.2f} s"),
        ("canvas", f"{pose.width}x{pose.height}"),
        ("face size", f"{np.median(sizes):.0f} px (min {sizes.min():.0f}, max {sizes.max():.0f})"),
        ("missing frames", f"{int((~vis).sum())}"),
        ("head pose", "yes" if pose.head_pose is not None else "no"),
        ("source", pose.source or "-"),
    ]
    if plain_output(False):
        for k, v in rows:
            print(f"{k}\t{v}")
        return
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


@pose_app.command("presets")
def pose_presets(as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {name, seconds, description}.")) -> None:
    """List the bundled pose presets (use them as `preset:<name>`). Not on a terminal: one line per
    preset, `name<TAB>seconds<TAB>description`."""
    from rich.table import Table

    from facepose.pose.presets import list_presets

    presets = [(name, float(seconds), description) for name, description, seconds in list_presets()]
    if as_json:
        print_json([{"name": n, "driver": f"preset:{n}", "seconds": s, "description": d} for n, s, d in presets])
    elif plain_output(as_json):
        for n, s, d in presets:
            print(f"{n}\t{s:g}\t{d}")
    else:
        table = Table("preset", "seconds", "description")
        for n, s, d in presets:
            table.add_row(f"preset:{n}", f"{s:g}", d)
        Console().print(table)


@pose_app.command("make")
def pose_make(
    source: str = typer.Argument(..., help="preset:<name>, a driving video, a speech audio file or a pose Parquet."),
    reference: str = typer.Option(..., "--reference", "-r", help="Reference face photo."),
    output: str = typer.Option(..., "-o", "--output", help="Pose Parquet to write."),
    seconds: Optional[float] = typer.Option(None, help="Trim or loop to exactly this long."),
    kind: Optional[str] = typer.Option(None, help="Override the source kind guessed from the extension (preset, video, audio, pose)."),
) -> None:
    """Make a pose sequence for REFERENCE from SOURCE (retargeted onto the reference's own face)."""
    from facepose.media.image import read_image
    from facepose.pose.source import from_source

    with console.status(f"making pose from {source}"):
        pose = from_source(source, read_image(reference), seconds=seconds, cfg=state.cfg, kind=kind)
    pose.save(output)
    done(f"{output}: {len(pose)} frames ({pose.duration:.2f} s at {pose.fps:g} fps)")


@pose_app.command("plot")
def pose_plot(
    pose_uri: str = typer.Argument(..., metavar="POSE", help="Pose Parquet."),
    output: str = typer.Option(..., "-o", "--output", help="PNG to write."),
) -> None:
    """Plot mouth opening and head yaw, pitch and roll over time."""
    from facepose.pose.plot import plot_pose
    from facepose.pose.sequence import PoseSequence

    plot_pose(PoseSequence.load(pose_uri), output)
    done(output)


# -- face ----------------------------------------------------------------------------------------
@face_app.command("crop")
def face_crop(
    image: str = typer.Argument(..., help="Photo with a face."),
    output: str = typer.Option(..., "-o", "--output", help="Square face crop to write (png/jpg)."),
    mask: Optional[str] = typer.Option(None, help="Also write the Face Locator mask here."),
    landmarks: bool = typer.Option(False, help="Draw the 68 landmarks on the crop."),
) -> None:
    """Detect the face in IMAGE and write a square crop (crop_size from config) and its mask."""
    import cv2

    from facepose.face.crop import crop_face
    from facepose.media.image import read_image, write_image

    cfg = state.cfg
    crop = crop_face(read_image(image), cfg.face, name=image)
    out = crop.image.copy()
    if landmarks:
        for x, y in crop.landmarks:
            cv2.circle(out, (int(round(x)), int(round(y))), 2, (0, 255, 0), -1)
    write_image(output, out)
    if mask:
        write_image(mask, crop.mask)
    done(f"{output}: {out.shape[1]}x{out.shape[0]}")


# -- render --------------------------------------------------------------------------------------
@app.command("render")
def render(
    reference: str = typer.Option(..., "--reference", "-r", help="Reference face photo."),
    pose: str = typer.Option(..., "--pose", "-p", help="preset:<name>, a driving video, a speech audio file, a pose Parquet, text:\"...\" or a .txt/.md script."),
    output: str = typer.Option(..., "-o", "--output", help="mp4 to write."),
    seconds: Optional[float] = typer.Option(None, help="Length in seconds (default: the source's own; presets loop)."),
    backend: Optional[str] = typer.Option(None, help="Renderer: warp (CPU, default) or diffusion (needs a checkpoint)."),
    seed: int = typer.Option(0, help="Random seed (diffusion)."),
    kind: Optional[str] = typer.Option(None, help="Override the pose source kind (preset, video, audio, pose, text)."),
    captions: Optional[str] = typer.Option(None, help="Text drivers: files (.vtt + .srt beside the video), burn (also in the frames) or none."),
    voice: Optional[str] = typer.Option(None, help="Text drivers: voice name (tts.voice)."),
    language: Optional[str] = typer.Option(None, help="Text drivers: language code, e.g. en, es, zh, ar (tts.language)."),
) -> None:
    """Render a 512x512, 24 fps talking-head video of REFERENCE driven by POSE (text:"..." or a .txt/.md script speaks it)."""
    from facepose.render.job import render_video

    tts = {"captions": captions, "voice": voice, "language": language}
    if any(tts.values()):  # config overrides (tts.*), validated with the rest
        state.overrides = [*state.overrides, *(f"tts.{k}={v}" for k, v in tts.items() if v)]
        state._cfg = None
    cfg = state.cfg
    backend = backend or cfg.render.backend
    if seconds is not None and seconds > cfg.batch.max_seconds:  # the same guard as a batch row's
        raise InputError(f"--seconds {seconds:g} is more than batch.max_seconds={cfg.batch.max_seconds:g}; "
                         "render it in parts or raise the limit (-s batch.max_seconds=...)")
    with progress_bar(f"rendering ({backend})") as update:
        result = render_video(reference, pose, output, seconds=seconds, backend=backend, seed=seed, cfg=cfg,
                              driver_type=kind, progress=update)
    audio = f", audio from {result.audio}" if result.audio else ""
    audio += f", captions {' '.join(result.captions)}" if result.captions else ""
    done(f"{result.output}: {result.frames} frames, {result.seconds:.2f} s{audio} ({result.render_s:.1f} s to render)")


# -- batch ---------------------------------------------------------------------------------------
def _batch_summary(summary: dict, noun: str) -> None:
    from rich.table import Table

    table = Table(show_header=False, title=f"{noun} summary")
    for key, value in summary.items():
        if key in {"errors", "results_rows", "outputs", "flow_run_id", "run_id"}:
            continue
        if isinstance(value, dict):  # counts by reason (curate's "dropped"): "too_small 3, blurry 1", or "none"
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        table.add_row(str(key), f"{value:.2f}" if isinstance(value, float) else str(value))
    Console().print(table)
    for err in summary.get("errors", [])[:20]:  # {<id column>: ..., "error": ..., "error_kind": ...}
        job = next((str(v) for k, v in err.items() if k not in ("error", "error_kind", "transient")), "?")
        console.print(f"[red]failed[/red] {job}: {err.get('error')}", highlight=False, soft_wrap=True)


#: Exit codes of the batch commands (render-batch, lesson-batch, curate).
EXIT_OK, EXIT_JOBS_FAILED, EXIT_NOT_STARTED = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it; SIGTERM ends the same way (see _terminate)
BATCH_EXIT_HELP = ("Exit status: 0 every row ok or skipped (done before); 1 some rows failed (see results.parquet); "
                   "2 the run could not start (unreadable manifest, unreachable storage or Prefect API); 130 interrupted.")


def _run_batch(kind: str, manifest: str, out: str, retry_failed: bool, dry_run: bool, label: str, as_json: bool = False) -> None:
    """Plan (errors: one line on stderr, exit 2), then run; exit 1 when any row failed. ``as_json``: the
    summary as one JSON document on stdout (and the error as ``{"error", "error_kind"}`` when it cannot start)."""
    from tasks.run import run_batch

    try:
        _ = state.cfg  # validate config before anything starts
        with progress_bar(label) as update:
            summary = run_batch(kind, manifest, out, overrides=state.overrides, config_files=state.files, retry_failed=retry_failed,
                                dry_run=dry_run, progress=lambda d, t, row=None: update(d, t))
    except FaceposeError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        if as_json:
            print_json({"error": str(e), "error_kind": e.kind, "transient": bool(e.transient)})
        raise typer.Exit(EXIT_NOT_STARTED) from None
    if as_json:
        print_json(summary)
    else:
        _batch_summary(summary, "plan" if dry_run else kind)
    if not dry_run and not as_json:
        where = f"outputs under {summary.get('out', out)}; results in {summary.get('results')}"
        if summary.get("error"):
            console.print(f"[red]✗[/red] {summary['error']} failed; {where}", highlight=False)
        else:
            done(where)
    raise typer.Exit(EXIT_JOBS_FAILED if summary.get("error") else EXIT_OK)


@app.command("render-batch", epilog=BATCH_EXIT_HELP)
def render_batch(
    manifest: str = typer.Argument(..., help="Render manifest (CSV, JSONL or Parquet; path or s3:// URI): job_id, reference, driver, [seconds, ...]."),
    out: str = typer.Option(..., "--out", "-o", help="Output prefix for the videos and results.parquet."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also rerun the jobs that failed before."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and plan the manifest; render nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (counts, errors, outputs, timings) as JSON on stdout."),
) -> None:
    """Render every job of MANIFEST on Ray actors through the Prefect render flow (reruns resume)."""
    _run_batch("render", manifest, out, retry_failed, dry_run, "rendering jobs", as_json)


@app.command("lesson-batch", epilog=BATCH_EXIT_HELP)
def lesson_batch(
    manifest: str = typer.Argument(..., help="Lesson manifest: job_id, reference, driver (text:... or a .txt/.md script), [voice, language, rate, ...]."),
    out: str = typer.Option(..., "--out", "-o", help="Output prefix for the videos, their .vtt/.srt and results.parquet."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also rerun the lessons that failed before."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and plan the manifest; render nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (counts, errors, outputs, timings) as JSON on stdout."),
) -> None:
    """Speak and render every lesson of MANIFEST with subtitles (identical scripts synthesised once; reruns resume)."""
    _run_batch("lesson", manifest, out, retry_failed, dry_run, "rendering lessons", as_json)


@app.command("curate", epilog=BATCH_EXIT_HELP)
def curate(
    manifest: str = typer.Argument(..., help="Curation manifest (video_id, video, [audio, start, end])."),
    out: str = typer.Option(..., "--out", "-o", help="Output prefix of the curated dataset."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also rerun the videos that failed before."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and plan the manifest; curate nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (counts, errors, outputs, timings) as JSON on stdout."),
) -> None:
    """Curate videos into 512x512 face clips, pose rows, audio features and Face Locator boxes (reruns resume)."""
    _run_batch("curate", manifest, out, retry_failed, dry_run, "curating videos", as_json)


# -- training ------------------------------------------------------------------------------------
@app.command("train", context_settings={"allow_extra_args": False})
def train(
    args: List[str] = typer.Argument(None, metavar="[CONFIG ...] [KEY=VALUE ...]",
                                     help="configs/train/ names or YAML paths merged in order (default stage1), then key=value overrides."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary (with its metric history) as JSON."),
) -> None:
    """Train with Ray Train on a curated dataset: `facepose train stage1 data.dataset=s3://b/ds output=s3://b/runs`."""
    from flows.train import run_train

    args = list(args or [])
    configs = [a for a in args if "=" not in a] or ["stage1"]
    overrides = [a for a in args if "=" in a]
    with progress_bar("training") as update:
        summary = run_train(configs, overrides, progress=lambda step, steps, row=None: update(step, steps))
    if as_json:
        print_json(summary)
        return
    summary = {k: v for k, v in summary.items() if k != "history"}
    _batch_summary(summary, "training")
    model = str(summary.get("model"))
    key = "audio2pose.checkpoint" if summary.get("kind") == "audio2pose" else "model.checkpoint"
    done(f"checkpoint {summary.get('checkpoint')}; use it with -s {key}={model}")


# -- web app -------------------------------------------------------------------------------------
@app.command("app")
def serve_app(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 to expose it)."),
    port: int = typer.Option(7860, help="Port."),
) -> None:
    """Start the web app: photo -> pose -> video, and batch renders."""
    from facepose.app import launch

    console.print(f"facepose app on http://{host}:{port} (Ctrl+C to stop)")
    launch(host, port, state.cfg)


# -- config --------------------------------------------------------------------------------------
@app.command("config")
def show_config(as_json: bool = typer.Option(False, "--json", help="Print it as JSON instead of YAML.")) -> None:
    """Print the merged configuration (configs/*.yaml, --config files and -s overrides)."""
    if as_json:
        from dataclasses import asdict

        print_json(asdict(state.cfg))
        return
    from facepose.config import to_yaml

    print(to_yaml(state.cfg), end="")


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: runs the CLI, turning FaceposeErrors into one ``error:`` line and exit code 1."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="facepose", standalone_mode=False)
        if isinstance(code, int):  # typer.Exit(n) comes back as the return value when standalone_mode is off
            return _interrupted() if code == EXIT_INTERRUPTED else code
    except FaceposeError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 1
    except (click.exceptions.Exit, typer.Exit) as e:  # typer >= 0.29 turns Ctrl+C into Exit(130), silently
        return _interrupted() if e.exit_code == EXIT_INTERRUPTED else e.exit_code
    except _USAGE_ERRORS as e:  # a mistyped command or option: click's usage message, exit 2
        e.show()
        return e.exit_code
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        return _interrupted()
    return 0


def _interrupted() -> int:
    console.print("interrupted; nothing half-written is left, and a batch run keeps the rows it finished: "
                      "run the same command again to finish")
    return EXIT_INTERRUPTED


# typer >= 0.29 raises the exceptions of its own vendored click (typer._click), older ones click's.
_USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException,)
try:
    from typer._click.exceptions import ClickException as _TyperClickException

    _USAGE_ERRORS += (_TyperClickException,)
except ImportError:  # an older typer on plain click
    pass


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (a scheduler's stop, `kill`) and SIGHUP: unwind like Ctrl+C, so open writers drop their temporary files."""
    raise KeyboardInterrupt


def _entry() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    if hasattr(signal, "SIGHUP"):  # the terminal closed: unwind, and stop the servers this run started
        signal.signal(signal.SIGHUP, _terminate)
    code = main()
    if code == EXIT_INTERRUPTED:
        # A run interrupted while its Ray actors were still starting could crash in the interpreter's
        # final teardown (exit 139, after every cleanup had run; Ray's native threads). Run the exit
        # handlers (Prefect's temporary server stops, Ray shuts down), flush, and leave without it.
        import atexit
        import os

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _entry()
