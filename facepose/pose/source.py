"""One entry point from whatever drives the animation to a pose sequence for the reference face.

``from_source(source, reference, seconds)``: ``source`` is ``preset:<name>``, a driving video, a speech
recording or a pose Parquet (chosen by extension, or by ``kind`` as a manifest's ``driver_type`` says);
``reference`` is the reference photo (array, URI, or an already computed FaceCrop). The output lives on
the reference's face crop canvas (``cfg.face.crop_size`` square, 512 by default), at 24 fps:

- preset: the bundled preset, retargeted onto the reference (relative: its face shape is kept);
- video: tracked (facepose.face.track), briefly lost frames filled by interpolation, retargeted, then
  smoothed on the crop canvas (One Euro, ``cfg.face.smoothing``). Any aspect ratio: the face is found
  and its landmarks used as they are, never a squashed frame;
- audio: Audio2Pose (signal model, or the learned one when ``audio2pose.checkpoint`` is set);
- pose Parquet: resampled to 24 fps, lost frames filled, retargeted;
- text (``text:<script>``, ``.txt``, ``.md``): spoken (facepose.tts), then the audio path;
  ``meta["cues"]`` holds the sentence cues (facepose.lesson).

``seconds`` gives exactly ``round(24 * seconds)`` frames: trimmed, or looped. Audio is looped before
the pose is made from it, sample for sample as the renderer loops the muxed track, so lips and sound stay
in sync on every pass. Whenever sound drove the pose (audio, or a video with an audio track),
``meta["audio"]`` holds its URI for muxing. A video's sound is read on the video's timeline (frame 0
with the sound at frame 0's presentation time, ``facepose.media.audio``); when the video (or a pose file
with sound) is looped, ``meta["loop_frames"]`` is the driver's own length, so its sound, fitted to that
length, loops with its frames.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import PurePosixPath
from typing import Any, Callable, Optional, Union

import numpy as np

from facepose.config import Config, FaceConfig, RetargetConfig
from facepose.errors import InputError, NoFaceError
from facepose.face_layout import fill_gaps
from facepose.pose import face_model as fm
from facepose.pose.adjust import adjust_pose
from facepose.pose.audio2pose import audio_to_pose
from facepose.pose.presets import load_preset
from facepose.pose.retarget import retarget
from facepose.pose.sequence import PoseSequence
from facepose.timeline import FPS, frames_for_seconds

log = logging.getLogger(__name__)

KINDS = ("preset", "video", "audio", "pose", "text")
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".aif", ".aiff")
POSE_EXTS = (".parquet", ".pq")
TEXT_EXTS = (".txt", ".md", ".markdown")  # lesson scripts (facepose.lesson)

ProgressFn = Callable[[int, int], None]
Reference = Union[np.ndarray, str, os.PathLike, Any]  # image array, image URI, or facepose.face.crop.FaceCrop


def source_kind(source: str, kind: Optional[str] = None) -> str:
    """``preset``, ``video``, ``audio`` or ``pose`` for ``source``; ``kind`` (a manifest's driver_type) wins."""
    text = os.fspath(source)
    if kind:
        k = str(kind).strip().lower()
        if k not in KINDS:
            raise InputError(f"unknown driver type {kind!r} for {text}; choose from {list(KINDS)}")
        return k
    if text.startswith("preset:"):
        return "preset"
    if text.startswith("text:"):
        return "text"
    path = text.split("?", 1)[0]
    ext = PurePosixPath(path).suffix.lower()
    for k, exts in (("video", VIDEO_EXTS), ("audio", AUDIO_EXTS), ("pose", POSE_EXTS), ("text", TEXT_EXTS)):
        if ext in exts:
            return k
    raise InputError(
        f"cannot tell what drives the pose from {text!r} (extension {ext or 'none'}); use preset:<name>, "
        f"a video ({' '.join(VIDEO_EXTS)}), audio ({' '.join(AUDIO_EXTS)}) or a pose file (.parquet), "
        f"or give the driver type"
    )


def n_frames(seconds: float, fps: float = FPS) -> int:
    """Frames for ``seconds``: round(fps * seconds), at least 1."""
    if not seconds > 0:
        raise InputError(f"seconds must be positive, got {seconds}")
    return max(1, frames_for_seconds(seconds, fps))


def fill_lost(pose: PoseSequence, filled_score: float = 0.5) -> PoseSequence:
    """Frames where the face was lost (score 0) get landmarks interpolated linearly between the nearest
    seen frames (held at the ends) and score ``filled_score``. NoFaceError if no frame was seen."""
    seen = pose.visible
    if seen.all():
        return pose
    if not seen.any():
        raise NoFaceError(f"no face found in any frame of {pose.source or 'the driver'}; "
                          f"use a video with one clearly visible face")
    scores = pose.scores.copy()
    scores[~seen] = filled_score
    hp = None if pose.head_pose is None else fill_gaps(pose.head_pose.astype(np.float64), seen)
    return dataclasses.replace(pose, landmarks=fill_gaps(pose.landmarks, seen).astype(np.float32), scores=scores, head_pose=hp)


def reference_face(reference: Reference, face_cfg: Optional[FaceConfig] = None):
    """The reference's FaceCrop (landmarks in crop pixels): from an image array, an image URI, or as given."""
    from facepose.face.crop import FaceCrop, crop_face

    if isinstance(reference, FaceCrop):
        return reference
    face_cfg = face_cfg or FaceConfig()
    if isinstance(reference, np.ndarray):
        return crop_face(reference, face_cfg, name="reference image")
    if isinstance(reference, (str, os.PathLike)):
        from facepose.media.image import read_image

        name = os.fspath(reference)
        return crop_face(read_image(name), face_cfg, name=name)
    raise InputError(f"reference must be an image array, an image path/URI or a FaceCrop, got {type(reference).__name__}")


def _loop_to(pose: PoseSequence, frames: Optional[int]) -> PoseSequence:
    """Trim or loop ``pose`` to ``frames``. When sound comes with it (``meta["audio"]``, a driving
    video's track), ``meta["loop_frames"]`` records the driver's own length: the renderer fits the sound
    to that many frames (silence or trim) and repeats it with the frames (media.audio.fit_track)."""
    if pose.meta.get("audio"):
        pose.meta["loop_frames"] = len(pose)
    return pose if frames is None or frames == len(pose) else pose.with_length(frames)


def _neutral(ret: RetargetConfig) -> Union[int, str]:
    return "auto" if ret.neutral is None else int(ret.neutral)


def from_source(
    source: str,
    reference: Reference,
    seconds: Optional[float] = None,
    cfg: Optional[Config] = None,
    kind: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
) -> PoseSequence:
    """Pose sequence for ``reference`` driven by ``source`` (see the module docstring).

    cfg: the whole Config (None: the defaults); its ``face``, ``retarget``, ``audio2pose``, ``tts`` and
    ``pose.adjust`` sections are read;
    kind: driver type override (``preset``, ``video``, ``audio``, ``pose``); progress: (done, total)
    callback while tracking a video. -> PoseSequence at 24 fps on the crop canvas, ``meta["driver_type"]``
    set, ``meta["audio"]`` when sound drove it.
    """
    source = os.fspath(source)
    k = source_kind(source, kind)
    frames = None if seconds is None else n_frames(float(seconds))
    cfg = Config() if cfg is None else cfg
    face_cfg, ret_cfg, a2p_cfg = cfg.face, cfg.retarget, cfg.audio2pose
    crop = reference_face(reference, face_cfg)
    ref = np.asarray(crop.landmarks, np.float64)
    size = int(crop.image.shape[0])
    canvas = (int(crop.image.shape[1]), size)

    if k == "text":  # a lesson script: speech first, then the audio path below (facepose.lesson)
        from facepose.lesson import text_pose

        pose = text_pose(source, ref, canvas, cfg.tts, a2p_cfg, seconds=seconds)
    elif k == "audio":
        pose = audio_to_pose(source, ref, canvas, a2p_cfg, seconds=seconds, extend="loop")
    elif k == "preset":
        driver = load_preset(source.removeprefix("preset:"))
        pose = retarget(driver, ref, canvas, mode=ret_cfg.mode, neutral=0)  # a preset's frame 0 is neutral
        pose = _loop_to(pose, frames)
    elif k == "pose":
        driver = PoseSequence.load(source).resample(FPS)
        pose = retarget(fill_lost(driver), ref, canvas, mode=ret_cfg.mode, neutral=_neutral(ret_cfg))
        if pose.head_pose is None:
            pose.head_pose = _relative_head_pose(pose.landmarks, ref)
        pose = _loop_to(pose, frames)
    else:
        pose = _video_pose(source, ref, canvas, face_cfg, ret_cfg, frames, progress)
    pose.source = source
    pose.meta["driver_type"] = k
    if frames is not None and len(pose) != frames:  # guard the exact-length contract
        pose = pose.with_length(frames)
    pose = adjust_pose(pose, cfg.pose.adjust, rest=ref)  # pose controls (the defaults change nothing)
    return pose


def _relative_head_pose(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T, 3) head pose relative to the reference's own (its rest pose reads 0, 0, 0)."""
    return (fm.estimate_head_pose(landmarks) - fm.estimate_head_pose(reference)[None]).astype(np.float32)


def _video_pose(uri: str, ref: np.ndarray, canvas: tuple[int, int], face_cfg: FaceConfig, ret_cfg: RetargetConfig,
                frames: Optional[int], progress: Optional[ProgressFn]) -> PoseSequence:
    from facepose.face.track import track_video
    from facepose.media.video import probe_video
    from facepose.pose.smooth import smooth_landmarks

    info = probe_video(uri)
    # Smoothing runs once, after retargeting, in crop pixels (the same units whatever the video's size).
    raw_cfg = dataclasses.replace(face_cfg, smoothing=dataclasses.replace(face_cfg.smoothing, enabled=False))
    end_s = None
    if frames is not None and frames / FPS < info.duration:
        end_s = frames / FPS  # only what will be used
    driver = track_video(uri, raw_cfg, fps=FPS, progress=progress, end_s=end_s)
    seen = driver.visible
    if seen.mean() < ret_cfg.min_face_fraction:
        raise NoFaceError(
            f"a face was found in only {int(seen.sum())} of {len(driver)} frames of {uri}; "
            f"use a video where one face stays visible"
        )
    if not seen.all():
        log.info("%s: face lost in %d of %d frames; filled by interpolation", uri, int((~seen).sum()), len(driver))
    pose = retarget(fill_lost(driver), ref, canvas, mode=ret_cfg.mode, neutral=_neutral(ret_cfg))
    if face_cfg.smoothing.enabled:
        pose.landmarks = smooth_landmarks(pose.landmarks, FPS, face_cfg.smoothing, visible=np.ones(len(pose), bool))
    pose.head_pose = _relative_head_pose(pose.landmarks, ref)
    if info.has_audio:
        pose.meta["audio"] = uri
    return _loop_to(pose, frames)
