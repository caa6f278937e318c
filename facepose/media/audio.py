"""Audio in: any sound file or the audio track of a video, as float32 mono at a chosen sample rate.

WAV, FLAC, OGG, AIFF go through soundfile and ``librosa.resample`` (soxr). Everything else (mp4, m4a, mov,
mkv, webm, mp3, and any file libsndfile rejects) is decoded with PyAV: ``librosa.load`` cannot read those
here, since its fallback needs an ffmpeg binary that is not installed.
Multichannel audio is averaged to mono, as ``librosa.to_mono`` does.

When the first decoder gives nothing (it raised, or it returned no samples, as libsndfile does for a
WAV whose RIFF/data sizes are 0, written by streaming recorders and TTS services), PyAV decodes the
file; it ignores those size fields and reads to the end.

The audio track of a video is read on the video's own timeline (``timeline="video"``, the default): sample
0 is the sound that plays with video frame 0, i.e. at frame 0's presentation time. Tracks that start at
different times (stream start times, edit lists) are shifted by the difference (silence where the audio
starts late, cut where it starts early), and the result is padded with silence or trimmed to the video's
duration. ``timeline="audio"`` returns the track as stored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from facepose import storage
from facepose.errors import InputError, MediaError
from facepose.media.video import _check_mp4_boxes, _short
from facepose.timeline import SAMPLE_RATE, samples_for_frames

log = logging.getLogger(__name__)

__all__ = ["load_audio", "audio_duration", "fit_track", "to_video_timeline"]

# Extensions libsndfile reads; anything else goes straight to PyAV.
_SOUNDFILE_EXTS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64"}


def load_audio(
    uri: str | os.PathLike,
    sr: int = SAMPLE_RATE,
    start_s: float = 0.0,
    end_s: Optional[float] = None,
    *,
    timeline: str = "video",
) -> np.ndarray:
    """Samples of ``uri`` as (N,) float32 mono at ``sr`` Hz, optionally only ``[start_s, end_s)`` seconds.

    For a video, seconds and samples are on the video's timeline (see the module docstring) unless
    ``timeline="audio"``. Raises MediaError naming the file when it has no audio track, no samples, or
    cannot be decoded; StorageError when it is missing."""
    if sr <= 0:
        raise InputError(f"{os.fspath(uri)}: sample rate must be positive, got {sr}")
    if timeline not in ("video", "audio"):
        raise InputError(f"{os.fspath(uri)}: timeline must be 'video' or 'audio', got {timeline!r}")
    name = os.fspath(uri)
    with storage.local_path(uri) as path:
        if path.stat().st_size == 0:
            raise MediaError(f"{name}: empty file (0 bytes); expected audio or a video with an audio track")
        y = None
        if path.suffix.lower() in _SOUNDFILE_EXTS:
            y = _read_soundfile(path, name, sr)
        if y is None or len(y) == 0:  # libsndfile refused it, or read nothing (e.g. size fields of 0)
            y = _read_pyav(path, name, sr, on_video_timeline=timeline == "video")
    if len(y) == 0:
        raise MediaError(f"{name}: the audio track has no samples")
    lo = max(0, int(round(start_s * sr)))
    hi = None if end_s is None else max(lo, int(round(end_s * sr)))
    return np.ascontiguousarray(y[lo:hi], dtype=np.float32)


def audio_duration(uri: str | os.PathLike) -> float:
    """Length of the audio (the audio track of a video) in seconds, from the file's header where it
    says so, otherwise by decoding."""
    import soundfile as sf

    name = os.fspath(uri)
    with storage.local_path(uri) as path:
        if path.suffix.lower() in _SOUNDFILE_EXTS:
            try:
                seconds = float(sf.info(str(path)).duration)
                if seconds > 0:  # 0: a header without sizes; PyAV reads to the end
                    return seconds
            except Exception:  # noqa: BLE001 - not something libsndfile reads: try PyAV
                pass
        import av

        try:
            with av.open(str(path), metadata_errors="ignore") as container:
                if not container.streams.audio:
                    raise MediaError(f"{name}: no audio track; pass a separate audio file")
                stream = container.streams.audio[0]
                if stream.duration is not None and stream.time_base is not None:
                    return float(stream.duration * stream.time_base)
        except MediaError:
            raise
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"{name}: cannot read audio ({_short(exc)}); the file may be corrupt or not a media file") from None
        return len(_read_pyav(path, name, SAMPLE_RATE)) / float(SAMPLE_RATE)  # no duration in the header: decode and count


def _read_soundfile(path: Path, name: str, sr: int) -> Optional[np.ndarray]:
    """(N,) float32 mono at ``sr`` via libsndfile, or None when libsndfile cannot read the file."""
    import soundfile as sf

    try:
        data, native = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile's errors vary; PyAV gets a try next
        log.debug("%s: soundfile cannot read it (%s); trying PyAV", name, exc)
        return None
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (N, C) -> (N,)
    return _resample(y, native, sr)


def _resample(y: np.ndarray, native: int, sr: int) -> np.ndarray:
    if native == sr or len(y) == 0:
        return y.astype(np.float32, copy=False)
    import librosa

    return librosa.resample(y, orig_sr=native, target_sr=sr).astype(np.float32, copy=False)


def _read_pyav(path: Path, name: str, sr: int, on_video_timeline: bool = False) -> np.ndarray:
    """(N,) float32 mono at ``sr``: PyAV decodes the first audio stream, swresample converts the rate
    (channels kept, then averaged here: swresample's own downmix scales stereo by 1/sqrt(2)).
    ``on_video_timeline``: for a file with a video stream, shift and pad/trim the samples onto the
    video's timeline (module docstring)."""
    import av

    from facepose.media.video import video_timeline

    _check_mp4_boxes(path, name)
    audio_start = None
    timeline = None
    try:
        if on_video_timeline:
            timeline = video_timeline(path)
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                kinds = ", ".join(s.type for s in container.streams) or "no streams"
                raise MediaError(f"{name}: no audio track (found {kinds}); pass a separate audio file")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=sr)
            parts: list[np.ndarray] = []
            for frame in container.decode(stream):
                if audio_start is None:
                    audio_start = frame.time
                    if audio_start is None and stream.start_time is not None and stream.time_base is not None:
                        audio_start = float(stream.start_time * stream.time_base)
                frame.pts = None  # let the resampler count samples; some containers' pts jump
                parts.extend(f.to_ndarray() for f in resampler.resample(frame))
            parts.extend(f.to_ndarray() for f in resampler.resample(None))
            expected = _expected_samples(stream, sr)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{name}: cannot decode audio ({_short(exc)}); the file may be corrupt or not a media file") from None
    if not parts:
        return np.zeros(0, np.float32)
    y = np.concatenate(parts, axis=1).mean(axis=0)  # (C, N) -> (N,)
    if expected is not None and len(y) > expected:
        y = y[:expected]  # the last AAC frame is padded to 1024 samples; the stream's duration says where it ends
    y = y.astype(np.float32, copy=False)
    if timeline is not None:
        y = to_video_timeline(y, sr, float(audio_start or 0.0), timeline[0], timeline[1])
    return y


def to_video_timeline(y: np.ndarray, sr: int, audio_start: float, video_start: float, video_duration: Optional[float]) -> np.ndarray:
    """Audio samples (N,) whose first sample plays at ``audio_start`` seconds -> samples whose first plays
    with the first video frame (at ``video_start``): cut where the audio starts earlier, silence where it
    starts later; then padded with silence or trimmed to ``video_duration`` seconds (when given)."""
    shift = int(round((video_start - audio_start) * sr))
    if shift > 0:
        y = y[shift:]
    elif shift < 0:
        y = np.concatenate([np.zeros(-shift, np.float32), y])
    if video_duration is not None:
        n = int(round(video_duration * sr))
        y = y[:n] if len(y) >= n else np.concatenate([y, np.zeros(n - len(y), np.float32)])
    return np.ascontiguousarray(y, dtype=np.float32)


def fit_track(audio: np.ndarray, frames: int, fps: float, sr: int, period_frames: Optional[int] = None) -> np.ndarray:
    """The sound for a ``frames``-long pose at ``fps``: (round(frames / fps * sr),) float32.

    ``period_frames``: the length of the driver the pose loops (``PoseSequence.meta["loop_frames"]``):
    the audio is first padded with silence or trimmed to exactly that many frames, then repeated, so a
    looped driver's sound loops with its frames. Without it the audio itself repeats (a speech driver
    whose pose was made from the looped audio, ``np.resize``) or is trimmed."""
    n = samples_for_frames(frames, fps, sr)
    audio = np.asarray(audio, np.float32)
    if period_frames is not None and period_frames > 0:
        p = samples_for_frames(period_frames, fps, sr)
        audio = audio[:p] if len(audio) >= p else np.concatenate([audio, np.zeros(p - len(audio), np.float32)])
    if len(audio) == 0:
        return np.zeros(n, np.float32)
    return np.resize(audio, n).astype(np.float32, copy=False)


def _expected_samples(stream, sr: int) -> Optional[int]:
    if stream.duration is None or stream.time_base is None:
        return None
    return int(round(float(stream.duration * stream.time_base) * sr))
