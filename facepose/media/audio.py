"""Audio in: any sound file or the audio track of a video, as float32 mono at a chosen sample rate.

WAV, FLAC, OGG, AIFF go through soundfile and ``librosa.resample`` (soxr). Everything else (mp4, m4a, mov,
mkv, webm, mp3, and any file libsndfile rejects) is decoded with PyAV: ``librosa.load`` cannot read those
here, since its fallback needs an ffmpeg binary that is not installed.
Multichannel audio is averaged to mono, as ``librosa.to_mono`` does.
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

log = logging.getLogger(__name__)

__all__ = ["load_audio", "audio_duration"]

# Extensions libsndfile reads; anything else goes straight to PyAV.
_SOUNDFILE_EXTS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64"}


def load_audio(
    uri: str | os.PathLike,
    sr: int = 16000,
    start_s: float = 0.0,
    end_s: Optional[float] = None,
) -> np.ndarray:
    """Samples of ``uri`` as (N,) float32 mono at ``sr`` Hz, optionally only ``[start_s, end_s)`` seconds.

    Raises MediaError naming the file when it has no audio track, no samples, or cannot be decoded;
    StorageError when it is missing."""
    if sr <= 0:
        raise InputError(f"{os.fspath(uri)}: sample rate must be positive, got {sr}")
    name = os.fspath(uri)
    with storage.local_path(uri) as path:
        if path.stat().st_size == 0:
            raise MediaError(f"{name}: empty file (0 bytes); expected audio or a video with an audio track")
        y = None
        if path.suffix.lower() in _SOUNDFILE_EXTS:
            y = _read_soundfile(path, name, sr)
        if y is None:
            y = _read_pyav(path, name, sr)
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
                return float(sf.info(str(path)).duration)
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
        return len(_read_pyav(path, name, 16000)) / 16000.0  # no duration in the header: decode and count


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


def _read_pyav(path: Path, name: str, sr: int) -> np.ndarray:
    """(N,) float32 mono at ``sr``: PyAV decodes the first audio stream, swresample converts the rate
    (channels kept, then averaged here: swresample's own downmix scales stereo by 1/sqrt(2))."""
    import av

    _check_mp4_boxes(path, name)
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                kinds = ", ".join(s.type for s in container.streams) or "no streams"
                raise MediaError(f"{name}: no audio track (found {kinds}); pass a separate audio file")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=sr)
            parts: list[np.ndarray] = []
            for frame in container.decode(stream):
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
    return y.astype(np.float32, copy=False)


def _expected_samples(stream, sr: int) -> Optional[int]:
    if stream.duration is None or stream.time_base is None:
        return None
    return int(round(float(stream.duration * stream.time_base) * sr))
