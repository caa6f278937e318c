"""What the web app does, as plain functions: the Gradio callbacks in :mod:`facepose.app.ui` only unpack
widgets, call these, and show the result or the error. Everything here takes paths and config, returns
paths, arrays and text, and raises :class:`~facepose.errors.FaceposeError` with a one-line message for
anything a person can get wrong, so it can be tested without a browser.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from facepose.config import AppConfig, Config, PoseAdjustConfig, TTSConfig
from facepose.errors import FaceposeError, InputError, MediaError, ModelNotFoundError
from facepose.render.base import ProgressFn
from facepose.timeline import SAMPLE_RATE

log = logging.getLogger(__name__)

#: the pose sources of step 2: label shown in the app -> ``kind`` of :func:`facepose.pose.source.from_source`.
#: A new source kind adds a label here, a branch in :func:`driver_for` and a box in step 2 of the page.
SOURCES: dict[str, str] = {"Preset": "preset", "Driving video": "video", "Speech audio": "audio", "Text": "text"}
#: the Text source's language picker: label -> language code (:mod:`facepose.tts`); languages the speech
#: backend cannot speak are left out of the picker (:func:`languages`)
LANGUAGES: dict[str, str] = {
    "English": "en", "Spanish": "es", "French": "fr", "German": "de", "Portuguese": "pt", "Italian": "it",
    "Chinese (Mandarin)": "zh", "Arabic": "ar", "Hindi": "hi", "Russian": "ru", "Japanese": "ja",
}
#: renderers whose output depends on the seed (the page offers a seed only for these)
STOCHASTIC = ("diffusion",)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: renderers the app offers, in order, with a short description
BACKENDS: dict[str, str] = {
    "warp": "fast, CPU, no weights: warps the photo along the landmarks",
    "diffusion": "the paper's model: needs a checkpoint and, in practice, a GPU",
}


# -- workspace ------------------------------------------------------------------------------------
class Workspace:
    """The folder the app writes into: ``renders/``, ``poses/``, ``presets/``, ``batch/``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_config(cls, app: AppConfig) -> "Workspace":
        import tempfile

        return cls(app.work_dir or Path(tempfile.gettempdir()) / "facepose-app")

    def new(self, kind: str, suffix: str, stem: str = "") -> Path:
        """A fresh path ``<root>/<kind>/<stem>-<random><suffix>`` (the folder exists)."""
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{_safe_stem(stem)}-{uuid.uuid4().hex[:10]}" if stem else uuid.uuid4().hex[:16]
        return folder / f"{name}{suffix}"

    def dir(self, kind: str) -> Path:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def prune(self, older_than_s: float = 24 * 3600, kinds: tuple[str, ...] = ("renders", "poses", "batch", "speech")) -> int:
        """Delete what earlier sessions left in ``kinds`` more than ``older_than_s`` ago -> entries removed."""
        cutoff = time.time() - older_than_s
        removed = 0
        for kind in kinds:
            folder = self.root / kind
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                try:
                    if entry.stat().st_mtime < cutoff:
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                        removed += 1
                except OSError:  # another app process may be cleaning the same folder
                    pass
        return removed


def _safe_stem(text: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(text).stem)[:40].strip("-")
    return stem or "file"


# -- step 1: reference ----------------------------------------------------------------------------
@dataclass
class ReferenceView:
    """The face found in a reference photo.

    preview: (S, S, 3) uint8 crop with its 68 landmarks and Face Locator region drawn; message: markdown."""

    preview: np.ndarray
    message: str
    width: int
    height: int


def inspect_reference(path: str | os.PathLike, cfg: Config) -> ReferenceView:
    """Detect the face of the photo at ``path`` and crop it as the renderers will.

    Raises NoFaceError (no face), MediaError (not an image)."""
    from facepose.face.crop import crop_face
    from facepose.media.image import read_image

    name = Path(path).name
    check_upload(path, "photo", IMAGE_EXTS, cfg.app)
    try:
        image = read_image(path)
    except MediaError:
        raise MediaError(f"{name} is not an image this app can read; upload a JPEG, PNG or WebP photo") from None
    crop = crop_face(image, cfg.face, name=name)
    h, w = image.shape[:2]
    preview = draw_face(crop.image, crop.landmarks, crop.mask)
    size = crop.image.shape[0]
    message = f"Face found in **{name}** ({w}×{h}): cropped to {size}×{size} with its 68 landmarks."
    return ReferenceView(preview=preview, message=message, width=w, height=h)


def draw_face(image: np.ndarray, landmarks: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """image: (H, W, 3) uint8, landmarks: (68, 2) pixels, mask: (H, W) uint8 -> (H, W, 3) uint8 with the
    points as green dots and the mask's outline in amber."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    side = max(out.shape[:2])
    if mask is not None and mask.any():
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 191, 0), max(1, side // 256), cv2.LINE_AA)
    radius = max(2, side // 200)
    for x, y in np.asarray(landmarks, np.float32):
        centre = (int(round(float(x))), int(round(float(y))))
        cv2.circle(out, centre, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(out, centre, radius, (60, 255, 120), -1, cv2.LINE_AA)
    return out


# -- step 2: pose ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.name} ({self.seconds:g} s)"


def presets() -> list[Preset]:
    """The bundled pose presets, as :func:`facepose.pose.presets.list_presets` gives them."""
    from facepose.pose.presets import list_presets

    return [Preset(str(n), str(d), float(s)) for n, d, s in list_presets()]


_preview_locks: dict[str, threading.Lock] = {}
_preview_guard = threading.Lock()


def preset_preview(name: str, ws: Workspace, size: int = 256) -> Path:
    """A looping preview of preset ``name`` (its pose drawn with contour lines, ``size`` square, H.264),
    made on first use and cached in the workspace."""
    from facepose.pose.draw import write_pose_video
    from facepose.pose.presets import load_preset

    path = ws.dir("presets") / f"{_safe_stem(name)}-{int(size)}.mp4"
    with _preview_guard:
        lock = _preview_locks.setdefault(str(path), threading.Lock())
    with lock:
        if not path.is_file():
            write_pose_video(load_preset(name), str(path), size=int(size) // 2 * 2, lines=True)
    return path


def check_upload(path: str | os.PathLike, what: str, exts: tuple[str, ...], app: AppConfig) -> None:
    """InputError naming the file when ``path`` is missing, over ``app.max_upload_mb``, or not one of ``exts``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"the {what} {p.name} is gone from the server (uploads are kept for a day); upload it again")
    size_mb = p.stat().st_size / 2**20
    if size_mb > app.max_upload_mb:
        raise InputError(f"{p.name} is {size_mb:.0f} MB, over this app's limit of {app.max_upload_mb} MB for a {what}; "
                         "use a smaller file")
    if p.suffix.lower() not in exts:
        kinds = ", ".join(e.lstrip(".") for e in exts[:6])
        raise InputError(f"{p.name} is not a {what} file this app takes; use {kinds}, ...")


def check_driver(driver: str, kind: str, app: AppConfig) -> None:
    """For an uploaded video or audio driver: InputError naming the file when it is too big, of the
    wrong kind, or cannot be read (a damaged file, or another kind of file with a video's name)."""
    from facepose.pose.source import AUDIO_EXTS, VIDEO_EXTS

    if kind == "text":
        check_script(driver.removeprefix("text:"), app)
        return
    if kind not in ("video", "audio"):
        return
    what = "driving video" if kind == "video" else "speech recording"
    check_upload(driver, what, VIDEO_EXTS if kind == "video" else AUDIO_EXTS, app)
    try:
        own = source_seconds(driver, kind)
    except MediaError as e:
        log.info("unreadable %s %s: %s", what, driver, e)
        use = "an mp4, mov or webm video" if kind == "video" else "a wav, mp3, m4a or ogg recording"
        raise MediaError(f"{Path(driver).name} cannot be read as a {'video' if kind == 'video' else 'sound file'} "
                         f"(it may be damaged, or another kind of file); use {use}") from None
    if kind == "video" and not own > 0:
        raise MediaError(f"{Path(driver).name} has no frames; use a video with one face visible")


def source_hint(kind: str) -> str:
    """What step 2 says before a file of ``kind`` is given (a hint, not an error)."""
    return {"video": "Upload a driving video (mp4, mov, webm, ...): the pose follows the face in it.",
            "audio": "Upload or record speech (wav, mp3, m4a, ...): the mouth and head move with it.",
            "text": "Type a script: it is spoken in the chosen language and voice, the face says it, "
                    "and the video comes with subtitles."}.get(kind, "")


def driver_for(kind: str, preset: Optional[str] = None, video: Optional[str] = None, audio: Optional[str] = None,
               text: Optional[str] = None) -> str:
    """The ``driver`` string of :func:`facepose.render.job.render_video` for the chosen source (a script
    becomes a ``text:`` driver, :mod:`facepose.lesson`), or an InputError saying what is missing."""
    if kind == "preset":
        if not preset:
            raise InputError("no preset chosen; pick one in step 2")
        return preset if preset.startswith("preset:") else f"preset:{preset}"
    if kind == "video":
        if not video:
            raise InputError("no driving video uploaded; upload one in step 2 (mp4, mov, webm, ...)")
        return str(video)
    if kind == "audio":
        if not audio:
            raise InputError("no speech audio given; upload or record it in step 2 (wav, mp3, m4a, ...)")
        return str(audio)
    if kind == "text":
        if not text or not text.strip():
            raise InputError("the script is empty; type what the face should say in step 2 (one or more sentences)")
        return "text:" + text.strip()
    raise InputError(f"unknown pose source {kind!r}; choose from {sorted(SOURCES.values())}")


# -- step 2: the Text source ------------------------------------------------------------------------
def languages(cfg: Config) -> dict[str, str]:
    """The entries of :data:`LANGUAGES` the configured speech backend (``tts``) has a voice for."""
    from facepose.tts import get_backend

    backend = get_backend(_tts(cfg))
    out = {}
    for label, code in LANGUAGES.items():
        try:
            backend.resolve(None, code)
        except FaceposeError:
            continue
        out[label] = code
    return out


def voices(cfg: Config, language: Optional[str]) -> list[tuple[str, str]]:
    """(label, voice name) of the voices speaking ``language`` (``facepose.tts.list_voices``); first
    ("Default", "") for the language's own default voice."""
    from facepose.tts import list_voices

    code = (language or "").lower()
    out = [("Default voice", "")]
    for v in list_voices(_tts(cfg)):
        if any(lang.lower() == code or lang.lower().startswith(code + "-") or lang.lower().startswith(code + "_")
               for lang in v.languages):
            out.append((f"{v.name} ({v.description})" if v.description and v.description != v.name else v.name, v.name))
    return out


def _tts(cfg: Optional[Config]) -> TTSConfig:
    return (cfg if cfg is not None else Config()).tts


def check_script(text: Optional[str], app: AppConfig) -> str:
    """The script of the Text source, stripped; InputError when it is empty or over ``app.max_script_chars``."""
    script = (text or "").strip()
    if not script:
        raise InputError("the script is empty; type what the face should say in step 2 (one or more sentences)")
    if len(script) > app.max_script_chars:
        raise InputError(f"the script has {len(script)} characters, over this app's limit of {app.max_script_chars}; "
                         "shorten it (render longer lessons with `facepose render` or `facepose lesson-batch`)")
    return script


def text_cfg(cfg: Config, language: Optional[str], voice: Optional[str] = None, burn: bool = False) -> Config:
    """``cfg`` (a whole Config) speaking ``language`` (a code or a :data:`LANGUAGES` label) with ``voice``
    ("" / None: the language's default voice), captions burnt into the frames when ``burn``; InputError
    naming the choices for a language or voice the speech backend does not have."""
    import dataclasses

    from facepose.lesson import with_voice
    from facepose.tts import get_backend

    langs = languages(cfg)
    lang = (language or "").strip()
    code = langs.get(lang) or (lang if lang in langs.values() else None)
    if code is None:
        raise InputError(f"unknown language {lang or '(none)'!r} for the Text source; choose from {', '.join(langs)}")
    out = with_voice(cfg, voice=voice or None, language=code)
    try:
        get_backend(out.tts).resolve(out.tts.voice, out.tts.language)
    except FaceposeError:
        raise InputError(f"unknown voice {voice!r} for {lang}; pick one from the voice list "
                         f"(or the default voice)") from None
    if burn:
        out = dataclasses.replace(out, tts=dataclasses.replace(out.tts, captions="burn"))
    return out


@dataclass
class SpokenScript:
    """The Text source spoken: ``audio`` (16-bit WAV in the workspace), its length, cues and voice."""

    audio: Path
    seconds: float
    sentences: int
    voice: str
    message: str


def speak(script: Optional[str], language: Optional[str], voice: Optional[str], cfg: Config, ws: Workspace) -> SpokenScript:
    """Synthesise the Text source's script as the render will (``facepose.lesson.speech_for``, the same
    cache) -> a WAV copy the browser can play, and a line for step 2."""
    import soundfile as sf

    from facepose.lesson import speech_for

    app = cfg.app
    driver = driver_for("text", text=check_script(script, app))
    tcfg = text_cfg(cfg, language, voice)
    speech, wav, _ = speech_for(driver, tcfg.tts, with_audio=True)
    out = ws.new("speech", ".wav", "speech")
    sf.write(str(out), speech.audio, speech.sample_rate, subtype="PCM_16")
    n = len(speech.cues)
    message = (f"Speech: **{speech.seconds:.2f} s**, {n} sentence{'s' if n != 1 else ''}, voice **{speech.voice}**. "
               "The pose and the video follow it; a duration of 0 uses all of it.")
    if speech.seconds > app.max_seconds:
        raise InputError(f"the script's speech is {speech.seconds:.1f} s long, over this app's limit of "
                         f"{app.max_seconds:g} s; shorten the script")
    return SpokenScript(audio=out, seconds=float(speech.seconds), sentences=n, voice=speech.voice, message=message)


def source_seconds(driver: str, kind: str, cfg: Optional[Config] = None) -> float:
    """The driver's own length in seconds (a preset's length, a video's or an audio file's duration, a
    script's speech with ``cfg.tts``'s voice: synthesised once, then cached)."""
    if kind == "preset":
        name = driver.split(":", 1)[1] if driver.startswith("preset:") else driver
        for p in presets():
            if p.name == name:
                return p.seconds
        raise InputError(f"unknown preset {name!r}; choose from {[p.name for p in presets()]}")
    if kind == "video":
        from facepose.media.video import probe_video

        return float(probe_video(driver).duration)
    if kind == "audio":
        from facepose.media.audio import audio_duration

        return float(audio_duration(driver))
    if kind == "text":
        from facepose.lesson import speech_for

        return float(speech_for(driver, _tts(cfg))[0].seconds)
    raise InputError(f"unknown pose source {kind!r}; choose from {sorted(SOURCES.values())}")


def describe_source(driver: str, kind: str, cfg: Optional[Config] = None) -> str:
    """One markdown line about the chosen source: its name and own length."""
    if kind == "text":  # no synthesis here (this runs as a person types): Listen tells the length
        script = driver.removeprefix("text:")
        return (f"Script: {len(script)} characters. Press **Listen** to hear it; the pose and the video follow "
                "its speech, with subtitles.")
    own = source_seconds(driver, kind)
    if kind == "preset":
        name = driver.split(":", 1)[-1]
        desc = next((p.description for p in presets() if p.name == name), "")
        return f"Preset **{name}**: {own:.1f} s, loops to fill a longer duration. {desc}".strip()
    what = "Driving video" if kind == "video" else "Speech"
    return f"{what} **{Path(driver).name}**: {own:.2f} s. The pose follows it; a duration of 0 uses all of it."


def check_seconds(seconds: Optional[float], driver: str, kind: str, app: AppConfig, cfg: Optional[Config] = None) -> Optional[float]:
    """Validate the requested duration against the app's limit -> ``seconds`` (None: the source's own).

    The source's own length is checked too, so a long upload fails here and not after minutes of work."""
    if seconds is not None and seconds != 0:
        seconds = float(seconds)
        if not np.isfinite(seconds) or not seconds > 0:
            raise InputError(f"duration must be a positive number of seconds, got {seconds:g}; "
                             f"use 0 for the source's own length")
        if seconds > app.max_seconds:
            raise InputError(f"duration {seconds:g} s is over this app's limit of {app.max_seconds:g} s; choose a shorter one")
        return seconds
    own = source_seconds(driver, kind, cfg)
    if own > app.max_seconds:
        name = driver if kind == "preset" else "the script's speech" if kind == "text" else Path(driver).name
        raise InputError(f"{name} is {own:.1f} s long, over this app's limit of {app.max_seconds:g} s; set a shorter duration")
    if own <= 0:
        raise InputError(f"{Path(driver).name} has no length (0 s); use a longer file")
    return None


def fit_audio(audio: np.ndarray, pose: Any, sr: int = SAMPLE_RATE) -> np.ndarray:
    """audio: (N,) float32 at ``sr`` -> (round(len(pose) / pose.fps * sr),) float32, fitted to ``pose`` as
    :func:`facepose.render.job.render_video` fits it: a looped driver's sound loops with the driver's own
    frames (``meta["loop_frames"]``), speech repeats itself, a text lesson's speech (it has cues) is
    padded with silence, never looped (:func:`facepose.media.audio.fit_track`)."""
    from facepose.media.audio import fit_track

    period = len(pose) if pose.meta.get("cues") is not None else pose.meta.get("loop_frames")
    return fit_track(audio, len(pose), pose.fps, sr, period_frames=int(period) if period else None)


@dataclass
class PosePreview:
    """The pose sequence step 2 made: ``video`` (drawn pose, with the driving audio), ``plot`` (PNG)."""

    video: Path
    plot: Path
    frames: int
    seconds: float
    message: str


def with_adjust(cfg: Config, adjust: Optional[PoseAdjustConfig]) -> Config:
    """``cfg`` with ``pose.adjust`` replaced (a new object; the config itself is not changed)."""
    import dataclasses

    if adjust is None:
        return cfg
    return dataclasses.replace(cfg, pose=dataclasses.replace(cfg.pose, adjust=adjust))


_pose_cache: dict[tuple, Any] = {}
_pose_cache_guard = threading.Lock()


def base_pose(reference: str, driver: str, kind: str, seconds: Optional[float], cfg: Config,
              progress: Optional[ProgressFn] = None):
    """(crop, pose before the pose controls) for ``reference`` and ``driver``, cached by their files and
    settings, so moving a pose-control slider does not track a driving video again."""
    import dataclasses

    from facepose.face.crop import crop_face
    from facepose.media.image import read_image
    from facepose.pose.source import from_source

    plain = with_adjust(cfg, PoseAdjustConfig())
    stamp = tuple(Path(p).stat().st_mtime_ns if Path(p).is_file() else 0 for p in (reference, driver))
    key = (str(reference), driver, kind, seconds, stamp, repr(dataclasses.asdict(plain)) if dataclasses.is_dataclass(plain) else "")
    with _pose_cache_guard:
        hit = _pose_cache.get(key)
    if hit is not None:
        return hit
    crop = crop_face(read_image(reference), cfg.face, name=Path(reference).name)
    pose = from_source(driver, crop, seconds=seconds, cfg=plain, kind=kind, progress=progress)
    with _pose_cache_guard:
        if len(_pose_cache) > 16:
            _pose_cache.pop(next(iter(_pose_cache)))
        _pose_cache[key] = (crop, pose)
    return crop, pose


def make_pose_preview(
    reference: Optional[str],
    driver: str,
    kind: str,
    seconds: Optional[float],
    cfg: Config,
    ws: Workspace,
    progress: Optional[ProgressFn] = None,
    adjust: Optional[PoseAdjustConfig] = None,
) -> PosePreview:
    """Make the pose sequence for ``reference`` from ``driver`` (retargeted to the reference's face, then
    the pose controls ``adjust`` applied) and draw it: a 512 pose video (carrying the driving audio, if
    any) and a plot over time."""
    from facepose.media.audio import load_audio
    from facepose.media.video import VideoWriter
    from facepose.pose.adjust import adjust_pose
    from facepose.pose.draw import iter_pose_images
    from facepose.pose.plot import plot_pose

    if not reference:
        raise InputError("no reference photo yet; upload one in step 1 (the pose is fitted to its face)")
    seconds = check_seconds(seconds, driver, kind, cfg.app, cfg)
    crop, pose = base_pose(reference, driver, kind, seconds, cfg)
    pose = adjust_pose(pose, adjust if adjust is not None else cfg.pose.adjust, rest=crop.landmarks)
    if len(pose) == 0:
        raise InputError(f"the pose from {Path(driver).name} has 0 frames; use a longer source")
    audio_uri = pose.meta.get("audio")
    audio = fit_audio(load_audio(audio_uri, sr=SAMPLE_RATE), pose) if audio_uri else None
    stem = driver_stem(driver, kind)
    video = ws.new("poses", ".mp4", stem)
    size = cfg.pose.size
    with VideoWriter(str(video), fps=pose.fps, audio=audio, sample_rate=SAMPLE_RATE) as writer:
        for i, image in enumerate(iter_pose_images(pose, size=size, lines=True)):
            writer.write(image)
            if progress is not None:
                progress(i + 1, len(pose))
    plot = ws.new("poses", ".png", stem)
    pose.source = driver if kind == "preset" else "script" if kind == "text" else Path(driver).name  # no server path
    plot_pose(pose, str(plot))
    lost = int((~pose.visible).sum())
    extra = f", face lost in {lost}" if lost else ""
    sound = " with its audio" if audio is not None else ""
    adjusted = f"; pose controls: {pose.meta['adjust']}" if pose.meta.get("adjust") else ""
    message = f"Pose: {len(pose)} frames, {pose.duration:.2f} s at {pose.fps:g} fps{extra}{sound}{adjusted}."
    return PosePreview(video=video, plot=plot, frames=len(pose), seconds=pose.duration, message=message)


# -- step 3: video --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str = ""


class RendererPool:
    """Renderers built once and reused (models stay loaded), each behind its own lock so one renderer
    renders one video at a time. A backend whose weights are missing is remembered as unavailable."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._renderers: dict[str, Any] = {}
        self._missing: dict[str, str] = {}
        self._guard = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in BACKENDS}

    def get(self, name: str) -> Any:
        """The renderer called ``name``, built on first use; ModelNotFoundError when its weights are missing."""
        from facepose.render.base import get_renderer

        with self._guard:  # one build lock per backend: loading diffusion weights does not hold up warp
            build = self._building.setdefault(name, threading.Lock())
        with build:
            if name in self._missing:
                raise ModelNotFoundError(self._missing[name])
            if name not in self._renderers:
                try:
                    self._renderers[name] = get_renderer(name, self.cfg)
                except ModelNotFoundError as e:
                    self._missing[name] = str(e)
                    raise
            return self._renderers[name]

    def status(self, name: str) -> BackendStatus:
        """Whether ``name`` can render here, and if not, why (the ModelNotFoundError's message)."""
        try:
            self.get(name)
        except FaceposeError as e:  # ModelNotFoundError, a bad model config, unreachable weights
            return BackendStatus(name, False, str(e))
        except ImportError as e:  # an optional backend whose code or packages are absent
            return BackendStatus(name, False, f"{type(e).__name__}: {e}")
        return BackendStatus(name, True)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            yield


@dataclass
class Generated:
    """A rendered video: ``video`` (512x512, 24 fps H.264 mp4, with audio when audio drove it) and, for a
    text source, its subtitle files."""

    video: Path
    frames: int
    seconds: float
    render_s: float
    audio: Optional[str]
    message: str
    captions: tuple[Path, ...] = ()  # .vtt and .srt beside the video (text sources)


def generate_video(
    reference: Optional[str],
    driver: str,
    kind: str,
    seconds: Optional[float],
    backend: str,
    seed: int,
    cfg: Config,
    ws: Workspace,
    pool: RendererPool,
    steps: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    on_stage: Optional[Callable[[str], None]] = None,
    adjust: Optional[PoseAdjustConfig] = None,
) -> Generated:
    """Render the video of step 3 through :func:`facepose.render.job.render_video` (the one job path
    shared with the CLI and batch). ``steps`` is the diffusion sampler's step count; ``adjust`` the pose
    controls (``pose.adjust``)."""
    from facepose.render.job import render_video

    if not reference:
        raise InputError("no reference photo yet; upload one in step 1")
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
    seconds = check_seconds(seconds, driver, kind, cfg.app, cfg)
    cfg = with_adjust(cfg, adjust)
    renderer = pool.get(backend)
    if steps is not None:
        renderer = with_steps(renderer, int(steps))
    stem = driver_stem(driver, kind)
    output = ws.new("renders", ".mp4", f"{Path(reference).stem}-{stem}")
    if on_stage is not None:
        on_stage(f"waiting for the {backend} renderer")
    with pool.lock(backend):
        result = render_video(
            str(reference), driver, str(output), seconds=seconds, backend=backend, seed=int(seed), cfg=cfg,
            renderer=renderer, driver_type=kind, progress=progress, on_stage=on_stage,
        )
    sound = (", with its speech and subtitles" if kind == "text" else
             f", with the audio of {Path(result.audio).name}" if result.audio else "")
    seeded = f" (seed {int(seed)})" if backend in STOCHASTIC else ""
    message = (f"Done: {result.frames} frames, {result.seconds:.2f} s at 24 fps{sound}; "
               f"rendered by **{backend}**{seeded} in {result.render_s:.1f} s.")
    return Generated(video=output, frames=result.frames, seconds=result.seconds, render_s=result.render_s,
                     audio=result.audio, message=message, captions=tuple(Path(c) for c in result.captions))


def driver_stem(driver: str, kind: str) -> str:
    """A short name for files made from ``driver`` (the script's first words for a text driver)."""
    if kind == "preset":
        return driver.split(":", 1)[-1]
    if kind == "text":
        words = ["".join(c for c in w if c.isalnum()) for w in driver.removeprefix("text:").split()[:4]]
        return "-".join(w for w in words if w)[:40] or "script"
    return Path(driver).stem


class RenderCancelled(FaceposeError):
    """A render stopped because its page went away (or was told to stop)."""

    kind = "cancelled"


class RenderTask:
    """One render running in a thread, watched by the page's generator callback.

    The page's callback resumes every ``tick_s`` and calls :meth:`touch`; when it stops (the page was
    closed or reloaded, and Gradio stops iterating its generator) for ``abandon_s``, or :meth:`cancel` is
    called, the next progress report inside the render raises :class:`RenderCancelled`, the renderer's
    lock is released and the queue moves on."""

    def __init__(self, work: Callable[..., Any], abandon_s: float = 5.0):
        self.work, self.abandon_s = work, float(abandon_s)
        self.done = threading.Event()
        self._cancel = threading.Event()
        self.last_seen = time.monotonic()
        self.frames: tuple[int, int] = (0, 0)
        self.stage = "starting"
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="render", daemon=True)

    def start(self) -> "RenderTask":
        self.thread.start()
        return self

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def abandoned(self) -> bool:
        return self._cancel.is_set() or time.monotonic() - self.last_seen > self.abandon_s

    def check(self) -> None:
        if self.abandoned:
            raise RenderCancelled("the render was cancelled: its page was closed or reloaded")

    def _progress(self, done: int, total: int) -> None:
        self.frames = (int(done), int(total))
        self.check()

    def _on_stage(self, stage: str) -> None:
        self.stage = stage
        self.check()

    def _run(self) -> None:
        try:
            self.result = self.work(progress=self._progress, on_stage=self._on_stage)
        except BaseException as e:  # noqa: BLE001 - handed to the page's callback
            self.error = e
            if isinstance(e, RenderCancelled):
                log.info("render cancelled: its page is gone")
        finally:
            self.done.set()


class Sessions:
    """What each browser last did (inputs, previews, result), keyed by a random id the browser keeps in
    its local storage (``gr.BrowserState``), so a reload brings the page back. Only paths the server
    wrote or received are kept: the browser sends the id, never a path. In memory, for ``max_sessions``."""

    def __init__(self, max_sessions: int = 500):
        self.max_sessions = max_sessions
        self._data: dict[str, dict[str, Any]] = {}
        self._guard = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def get(self, sid: Optional[str]) -> dict[str, Any]:
        with self._guard:
            return dict(self._data.get(sid or "", {}))

    def update(self, sid: Optional[str], **values: Any) -> None:
        if not sid:
            return
        with self._guard:
            entry = self._data.pop(sid, {})
            entry.update(values)
            self._data[sid] = entry  # most recent last
            while len(self._data) > self.max_sessions:
                self._data.pop(next(iter(self._data)))


def existing(path: Any) -> Optional[str]:
    """``path`` when it is a file that still exists, else None (restored sessions skip what was pruned)."""
    return str(path) if isinstance(path, str) and path and Path(path).is_file() else None


def with_steps(renderer: Any, steps: int) -> Any:
    """``renderer`` sampling with ``steps`` denoising steps: a shallow copy whose ``model`` config
    (:class:`~facepose.render.diffusion.config.ModelConfig`) says so; the loaded models are shared.
    A renderer without steps (warp) comes back as it is."""
    import copy
    import dataclasses

    model = getattr(renderer, "model", None)
    if model is None or not hasattr(model, "steps"):
        return renderer
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    clone = copy.copy(renderer)
    clone.model = dataclasses.replace(model, steps=int(steps))
    return clone


_PATH = re.compile(r"(?<![\w:/.])(?:/[^\s/'\"`;,()]+)+/([^\s/'\"`;,()]+)")


def scrub(text: str) -> str:
    """``text`` with every absolute server path shown as its file name only (uploads keep their own
    name as the last part of the path); URIs such as ``s3://b/k.png`` are left alone."""
    return _PATH.sub(lambda m: m.group(1), text)


def friendly_error(exc: BaseException) -> str:
    """The one line a person sees for ``exc``: a FaceposeError's own message with server paths shown as
    file names; anything else is a bug, logged with its traceback and shown as one line without its text."""
    if isinstance(exc, FaceposeError):
        return scrub(" ".join(str(exc).split()))
    log.error("unexpected error in the web app", exc_info=exc)
    return (f"something went wrong on the server ({type(exc).__name__}); the details are in its log. "
            "Try again, or with another file")


# -- batch ----------------------------------------------------------------------------------------
#: columns of the Batch tab's job table
BATCH_COLUMNS = ("job_id", "status", "output", "seconds", "render_s", "error")
_PATH_COLUMNS = ("reference", "driver")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def stage_batch(manifest: str, inputs: list[str], folder: Path) -> Path:
    """Copy an uploaded manifest and its input files into ``folder`` -> the staged manifest's path.

    Relative paths in the manifest resolve against its folder, so uploaded files are found by name; a
    path like ``refs/anna.png`` is pointed at the uploaded ``anna.png``. Raises InputError naming a
    relative path that no uploaded file matches."""
    from facepose.manifest import read_rows, write_rows

    folder.mkdir(parents=True, exist_ok=True)
    uploaded: dict[str, Path] = {}
    for src in inputs:
        name = Path(src).name
        if name in uploaded:
            raise InputError(f"two input files are called {name}; give them different names")
        uploaded[name] = folder / name
        shutil.copyfile(src, uploaded[name])
    rows = read_rows(str(manifest))
    if not rows:
        raise InputError(f"{Path(manifest).name} has no rows; add one job a row (job_id, reference, driver)")
    missing: list[str] = []
    for n, row in enumerate(rows, 1):
        for col in _PATH_COLUMNS:
            value = row.get(col)
            if not isinstance(value, str) or not value.strip():
                continue
            value = value.strip()
            if value.startswith("preset:") or "://" in value or os.path.isabs(value):
                continue
            if (folder / value).is_file():
                continue
            if Path(value).name in uploaded:
                row[col] = Path(value).name
            else:
                missing.append(f"{value} (row {n}, {col})")
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"{Path(manifest).name} names {', '.join(missing[:3])}{more}, not among the uploaded "
                         "input files; upload them too or use absolute paths or s3:// URIs")
    staged = folder / Path(manifest).name
    write_rows(str(staged), rows)
    return staged


@dataclass
class BatchStatus:
    """One look at a running batch: ``rows`` (one dict a job, BATCH_COLUMNS), ``message`` (markdown),
    ``log_tail`` (the last lines of the process output), ``downloads`` (local results files, at the end)."""

    finished: bool
    returncode: Optional[int]
    rows: list[dict[str, Any]]
    message: str
    log_tail: str
    downloads: list[Path]

    def table(self, out: str = "") -> list[list[Any]]:
        """Rows for display; outputs under ``out`` are shown relative to it."""
        prefix = out.rstrip("/") + "/" if out else ""

        def cell(r: dict[str, Any], c: str) -> Any:
            v = r.get(c)
            if c == "output" and isinstance(v, str) and prefix and v.startswith(prefix):
                return v[len(prefix):]
            return "" if v is None else v

        return [[cell(r, c) for c in BATCH_COLUMNS] for r in self.rows]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out


class BatchRun:
    """``facepose render-batch MANIFEST --out PREFIX`` as a child process (Ray must start in a main
    thread, and Gradio callbacks run in worker threads), watched through its done markers, its results
    Parquet and its output."""

    #: how the ``facepose`` command is started (the CLI of this interpreter)
    PROGRAM: tuple[str, ...] = (sys.executable, "-m", "facepose.cli")

    def __init__(self, manifest: str, out: str, folder: Path, config_file: Optional[Path] = None,
                 cfg: Optional[Config] = None, planned: Optional[list[dict[str, Any]]] = None):
        from facepose.batch import get_kind
        from facepose.batch.results import results_uri
        from facepose.config import Config

        self.manifest, self.out, self.folder = str(manifest), str(out).rstrip("/"), Path(folder)
        self.config_file = config_file
        self.kind = get_kind("render", cfg if cfg is not None else Config())
        self.results_uri = results_uri(self.kind, self.out)
        self.planned = planned or []  # rows of the table before anything ran
        self.log_path = self.folder / "render-batch.log"
        self.proc: Optional[subprocess.Popen] = None
        self.started = 0.0
        self.started_iso = ""
        self.ended: Optional[float] = None
        self.stopped = False

    def command(self) -> list[str]:
        cmd = list(self.PROGRAM)
        if self.config_file is not None:
            cmd += ["--config", str(self.config_file)]
        return cmd + ["render-batch", self.manifest, "--out", self.out]

    def start(self) -> "BatchRun":
        from facepose.manifest import utc_now

        env = dict(os.environ)
        env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback (docs/environment.md, "Ray")
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env["PYTHONUNBUFFERED"] = "1"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.started, self.started_iso = time.time(), utc_now()
        with open(self.log_path, "wb") as logf:
            # its own session, so Stop can signal the whole process group (Ray's workers included)
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        log.info("batch: started pid %d: %s", self.proc.pid, " ".join(self.command()))
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 15.0) -> None:
        """Interrupt the run (SIGINT, as Ctrl-C), then SIGTERM and SIGKILL if it does not end in time."""
        if not self.running:
            return
        self.stopped = True
        proc = self.proc

        def escalate() -> None:
            for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    return
                try:
                    proc.wait(wait)
                    return
                except subprocess.TimeoutExpired:
                    continue

        threading.Thread(target=escalate, name="batch-stop", daemon=True).start()

    def wait(self, timeout: Optional[float] = None) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:])

    def poll(self) -> BatchStatus:
        """Every job's state now, from what the run leaves in storage: done markers (written as each job
        finishes) and the results Parquet (merged after each shard). Rows stamped before this run started
        are earlier runs' work, which this run skips."""
        from facepose.batch.results import read_results
        from facepose.manifest import read_markers

        code = self.proc.poll() if self.proc is not None else None
        finished = self.proc is not None and code is not None
        if finished and self.ended is None:
            self.ended = time.time()
        rows = {r["job_id"]: dict(r) for r in self.planned}
        try:
            results = read_results(self.kind, self.out)  # results.parquet merged with every run's parts
            markers = read_markers(self.out, list(rows))
        except FaceposeError as e:  # a results file being replaced, an S3 blip: look again next time
            log.warning("batch: cannot read progress yet: %s", e)
            results, markers = {}, {}
        for job_id in sorted(set(rows) | set(results)):
            row = rows.setdefault(job_id, {"job_id": job_id, "status": "waiting"})
            fresh = [r for r in (results.get(job_id), markers.get(job_id)) if r and str(r.get("finished_at") or "") >= self.started_iso]
            if fresh:
                row.update({c: fresh[0].get(c) for c in BATCH_COLUMNS})
            elif results.get(job_id) or markers.get(job_id):
                old = results.get(job_id) or markers.get(job_id)
                if old.get("status") == "ok":
                    row.update({c: old.get(c) for c in BATCH_COLUMNS}, status="skipped" if finished else "done before")
            elif finished and row.get("status") == "waiting":
                row["status"] = "not run"
            if isinstance(row.get("error"), str):
                row["error"] = scrub(" ".join(row["error"].split()))
            for c in ("seconds", "render_s"):
                if isinstance(row.get(c), float):
                    row[c] = round(row[c], 2)
        table = sorted(rows.values(), key=lambda r: str(r["job_id"]))
        downloads = self._downloads() if finished and results else []
        return BatchStatus(finished, code, table, self._message(finished, code, table), self.log_tail(), downloads)

    def _message(self, finished: bool, code: Optional[int], rows: list[dict[str, Any]]) -> str:
        elapsed = (self.ended or time.time()) - self.started
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.get("status") or "?"] = counts.get(r.get("status") or "?", 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if not finished:
            done = sum(1 for r in rows if r.get("status") in ("ok", "done before", "error", "skipped"))
            last = next((ln for ln in reversed(self.log_tail(20).splitlines()) if ln.strip()), "starting")
            last = scrub(re.sub(r"^\d\d:\d\d:\d\d\.\d+ \| \w+ +\| ", "", last.strip()))[:160]
            head = f"Batch running for {elapsed:.0f} s: {done} of {len(rows)} jobs finished."
            if done == 0:
                head += " The engine (Prefect and Ray) takes about half a minute to start; each job's row changes as it finishes."
            return f"{head} {self._where()}  \n<small>{_html_escape(last)}</small>"
        if self.stopped:
            return f"Batch stopped after {elapsed:.0f} s ({summary}). Run it again to pick up where it stopped."
        # render-batch exits 1 when some jobs failed, a finished run; it broke when jobs were left unrun
        if code != 0 and (not rows or any(r.get("status") == "not run" for r in rows)):
            lines = [ln.strip() for ln in self.log_tail(200).splitlines() if ln.strip()]
            # the exception that ended it (e.g. the engine's API server not starting), else the last line
            last = next((ln for ln in reversed(lines) if re.match(r"^[\w.]*(Error|Exception)\b.*:", ln)),
                        lines[-1] if lines else "no output")
            return (f"<span class='fp-warn'>⚠ render-batch failed (exit {code}) after {elapsed:.0f} s: "
                    f"{_html_escape(scrub(last))}</span>")
        return f"Batch finished in {elapsed:.0f} s: {summary}. {self._where(done=True)}"

    def _where(self, done: bool = False) -> str:
        """Where the outputs go: a storage URI as it is; a folder on the server is not the reader's business."""
        if "://" in self.out:
            return f"Results: `{self.results_uri}`" if done else f"Output: `{self.out}`"
        return "Every video and the results tables are in the zip below." if done else \
            "Videos appear below as their jobs finish."

    def local_video(self, row: dict[str, Any]) -> Optional[Path]:
        """A finished job's video as a local file the page can show: the output itself when it is on
        this machine, else a copy fetched once into the run's folder."""
        from facepose import storage

        out = row.get("output")
        if row.get("status") not in ("ok", "skipped", "done before") or not isinstance(out, str) or not out:
            return None
        if "://" not in out:
            return Path(out) if Path(out).is_file() else None
        local = self.folder / "outputs" / f"{_safe_stem(str(row['job_id']))}.mp4"
        if not local.is_file():
            try:
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_suffix(".part")
                tmp.write_bytes(storage.read_bytes(out))
                tmp.replace(local)
            except FaceposeError as e:
                log.warning("batch: cannot fetch %s: %s", out, e)
                return None
        return local

    def _downloads(self) -> list[Path]:
        """The run's results as CSV and Parquet (read through :func:`facepose.batch.results.read_results`:
        the results file merged with the per-run parts, from any storage) and one zip with them and every
        finished video (with its subtitles, for text drivers), in the run's folder."""
        import zipfile

        from facepose.batch.results import read_results
        from facepose.manifest import RESULT_SCHEMA, write_rows

        parquet = self.folder / "results.parquet"
        csv_path = self.folder / "results.csv"
        bundle = self.folder / f"facepose-batch-{self.folder.name}.zip"
        if not bundle.is_file():
            rows = sorted(read_results(self.kind, self.out).values(), key=lambda r: str(r["job_id"]))
            write_rows(str(csv_path), rows, schema=RESULT_SCHEMA)
            write_rows(str(parquet), [{n: r.get(n) for n in RESULT_SCHEMA.names} for r in rows], schema=RESULT_SCHEMA)
            tmp = bundle.with_suffix(".part")
            with zipfile.ZipFile(tmp, "w") as z:
                z.write(csv_path, "results.csv")
                z.write(parquet, "results.parquet")
                for r in rows:
                    video = self.local_video(r)
                    if video is not None:  # mp4 is compressed already: stored as it is
                        z.write(video, f"videos/{_safe_stem(str(r['job_id']))}.mp4", compress_type=zipfile.ZIP_STORED)
                        for ext, text in self.subtitles(r).items():  # a lesson's .vtt and .srt
                            z.writestr(f"videos/{_safe_stem(str(r['job_id']))}{ext}", text)
            tmp.replace(bundle)
        return [bundle, csv_path, parquet]

    def subtitles(self, row: dict[str, Any]) -> dict[str, str]:
        """The subtitle files render-batch wrote beside a finished text job's video: {".vtt": text, ".srt": text}."""
        from facepose import storage
        from facepose.lesson import caption_paths

        out = row.get("output")
        if not isinstance(out, str) or not out:
            return {}
        found = {}
        for uri in caption_paths(out):
            try:
                if storage.exists(uri):
                    found[uri[uri.rfind("."):]] = storage.read_text(uri)
            except FaceposeError as e:
                log.warning("batch: cannot fetch %s: %s", uri, e)
        return found

    def videos(self, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(local video path, caption) of every finished job so far, for the page's gallery."""
        out = []
        for r in rows:
            video = self.local_video(r)
            if video is not None:
                out.append((str(video), f"{r['job_id']} ({r.get('status')})"))
        return out


def _html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=False)


def start_batch(
    manifest_file: Optional[str],
    input_files: list[str],
    manifest_uri: Optional[str],
    out_prefix: Optional[str],
    cfg: Config,
    ws: Workspace,
) -> BatchRun:
    """Stage an uploaded manifest (or take ``manifest_uri``), check its rows, and start ``render-batch``
    on it in its own process -> the running :class:`BatchRun`."""
    from facepose.config import to_yaml
    from facepose.manifest import manifest_dir, parse_render_rows, read_rows

    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    folder = ws.dir("batch") / run_id
    uri = (manifest_uri or "").strip()
    if manifest_file and uri:
        raise InputError("give either an uploaded manifest or a manifest URI, not both")
    if manifest_file:
        manifest = str(stage_batch(manifest_file, input_files, folder / "inputs"))
    elif uri:
        if input_files:
            raise InputError("input files go with an uploaded manifest; a manifest URI must name files already in storage")
        manifest = uri
    else:
        raise InputError("no manifest; upload one (CSV, JSONL or Parquet) or give its URI")
    app = cfg.app
    out = (out_prefix or "").strip() or (f"{app.batch_output_prefix.rstrip('/')}/{run_id}" if app.batch_output_prefix
                                         else str(folder / "out"))
    jobs, invalid = parse_render_rows(read_rows(manifest), out, base=manifest_dir(manifest),
                                      backend=cfg.render.backend, seed=cfg.render.seed)
    planned = [{"job_id": j.job_id, "status": "waiting", "output": j.output} for j in jobs]
    planned += [{"job_id": r["job_id"], "status": "error", "error": r["error"]} for r in invalid]
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.yaml"
    config_file.write_text(to_yaml(cfg))
    run = BatchRun(manifest, out, folder, config_file, cfg, planned)
    return run.start()
