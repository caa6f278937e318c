"""The video and audio timeline every module shares: 24 fps frames, 16 kHz mono audio.

Frame ``i`` covers ``[i / FPS, (i + 1) / FPS)`` seconds; its sound is samples
``[samples_for_frames(i), samples_for_frames(i + 1))``. Every count rounds one way, halves up (``round(24 N)``
frames for ``--seconds N``, README), with a 1e-6 guard against float noise (47.9999997 -> 48). Numpy only; callers at the edges validate their inputs.
"""

from __future__ import annotations

import math

FPS = 24  # frames per second of every pose sequence and rendered video
SAMPLE_RATE = 16000  # Hz: audio is resampled to this for features, speech and muxing


def frames_for_seconds(seconds: float, fps: float = FPS) -> int:
    """Frames for ``seconds`` at ``fps``: round(fps * seconds), halves up (3.0 s -> 72, 1/48 s -> 1)."""
    return int(math.floor(seconds * fps + 0.5 + 1e-6))


def frames_for_samples(samples: int, sr: int = SAMPLE_RATE, fps: float = FPS) -> int:
    """Frames for ``samples`` of audio at ``sr``: round(fps * duration), halves up."""
    return int(math.floor(samples * fps / sr + 0.5 + 1e-6))


def samples_for_frames(frames: int, fps: float = FPS, sr: int = SAMPLE_RATE) -> int:
    """Audio samples at ``sr`` that ``frames`` frames at ``fps`` last: round(sr * frames / fps), halves up."""
    return int(math.floor(frames * sr / fps + 0.5 + 1e-6))


__all__ = ["FPS", "SAMPLE_RATE", "frames_for_samples", "frames_for_seconds", "samples_for_frames"]
