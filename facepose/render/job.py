"""Render one video: reference + pose source -> mp4. The single code path behind the CLI
(`facepose render`), the web app and the batch render actors."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from facepose.config import Config
from facepose.errors import InputError
from facepose.render.base import ProgressFn, Renderer, get_renderer
from facepose.timeline import SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass
class RenderResult:
    output: str
    frames: int
    seconds: float
    render_s: float
    audio: Optional[str] = None  # URI of the audio track muxed in, if any
    captions: tuple[str, ...] = ()  # subtitle files written beside the video (text drivers)


def render_video(
    reference: str | np.ndarray,
    driver: str,
    output: str,
    *,
    seconds: Optional[float] = None,
    backend: str = "warp",
    seed: int = 0,
    cfg: Optional[Config] = None,
    renderer: Optional[Renderer] = None,
    driver_type: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    on_stage: Optional[Callable[[str], None]] = None,
) -> RenderResult:
    """Render ``reference`` (image URI or RGB array) driven by ``driver`` (``preset:<name>``, a video,
    an audio file, a pose Parquet or a script: ``text:...``, .txt, .md) into an H.264 mp4 at ``output``
    (path or URI; written atomically).

    When audio drove the pose (an audio file, or a driving video with sound), the video carries that
    audio, trimmed or looped with the pose so it stays in sync; a driving video's sound is taken on its
    own timeline (the sound at its first frame's time plays with frame 0), padded with silence where
    its audio track is shorter than the video, and loops with the video's frames. A script's speech is
    padded with silence, never looped, and its subtitles are written beside ``output`` (``tts.captions``).
    ``renderer`` reuses a loaded backend. ``cfg``: the whole config (None: the defaults); its ``face``,
    ``pose``, ``retarget``, ``audio2pose`` and ``tts`` sections shape the job, the renderer reads its own."""
    from facepose.face.crop import crop_face
    from facepose.media.audio import fit_track, load_audio
    from facepose.media.image import read_image
    from facepose.media.video import VideoWriter
    from facepose.pose.source import from_source

    cfg = Config() if cfg is None else cfg
    t0 = time.perf_counter()
    stage = on_stage or (lambda s: None)
    if seconds is not None and not seconds > 0:
        raise InputError(f"seconds must be positive, got {seconds}")
    stage("reading reference")
    image = read_image(reference) if isinstance(reference, str) else reference
    ref_name = reference if isinstance(reference, str) else "reference image"
    stage("finding the face")
    # One detection per job: the crop serves both retargeting and the renderer.
    crop = crop_face(image, cfg.face, name=ref_name)
    stage("making the pose sequence")
    pose = from_source(driver, crop, seconds=seconds, cfg=cfg, kind=driver_type)
    if len(pose) == 0:
        raise InputError(f"pose from {driver} has 0 frames; nothing to render")
    audio = None
    audio_uri = pose.meta.get("audio")
    if audio_uri:
        # A video's track comes on the video's timeline (sample 0 plays with frame 0); a looped driver
        # loops its sound with its frames (fitted to the driver's length first), speech loops itself; a
        # lesson's speech (it has cues) is padded with silence to the pose's length, never looped.
        period = len(pose) if pose.meta.get("cues") is not None else pose.meta.get("loop_frames")
        audio = fit_track(load_audio(audio_uri, sr=SAMPLE_RATE), len(pose), pose.fps, SAMPLE_RATE,
                          period_frames=int(period) if period else None)
    if renderer is None:
        stage(f"loading the {backend} renderer")
        renderer = get_renderer(backend, cfg)
    stage("rendering")
    frames = 0
    from facepose.lesson import caption_frames, write_captions

    tts = cfg.tts
    stream = caption_frames(renderer.render(crop, pose, seed=seed, progress=progress, name=ref_name), pose, tts)
    with VideoWriter(output, fps=pose.fps, audio=audio, sample_rate=SAMPLE_RATE) as writer:
        for frame in stream:
            writer.write(frame)
            frames += 1
    if frames != len(pose):
        raise RuntimeError(f"renderer {backend} gave {frames} frames for a {len(pose)}-frame pose")
    captions = tuple(write_captions(output, pose, tts))
    elapsed = time.perf_counter() - t0
    log.info("rendered %s: %d frames in %.1fs", output, frames, elapsed)
    return RenderResult(output=str(output), frames=frames, seconds=frames / pose.fps, render_s=elapsed, audio=audio_uri,
                        captions=captions)
