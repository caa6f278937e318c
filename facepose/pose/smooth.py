"""Temporal smoothing of landmark tracks: the One Euro filter (Casiez, Roussel and Vogel, CHI 2012).

A first-order low-pass whose cutoff rises with speed: ``fc = min_cutoff + beta * |dx/dt|`` (their eq. 4),
so a still face loses its jitter while a moving one is followed with little lag. Every coordinate is
filtered on its own, and the smoothing factor is recomputed from each step's ``dt`` (their eq. 3), so
uneven timestamps are handled.

For whole sequences (offline), :func:`smooth_landmarks` by default runs the filter forwards and then
backwards over the result, as ``scipy.signal.filtfilt`` does for linear filters: the backward pass's
lead cancels the forward pass's lag, so the smoothed track does not trail the face.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from facepose.config import SmoothingConfig
from facepose.face_layout import is_seen
from facepose.timeline import FPS


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass at ``cutoff`` Hz for a step of ``dt`` s (eq. 3)."""
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Streaming One Euro filter over arrays of any fixed shape (each element filtered on its own).

    min_cutoff: Hz, the cutoff at rest (lower removes more jitter); beta: how fast the cutoff rises with
    speed (in units of the signal per second; higher lags less); d_cutoff: Hz, the cutoff of the speed.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("OneEuroFilter needs min_cutoff > 0, d_cutoff > 0 and beta >= 0")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next sample passes through unchanged."""
        self._x: Optional[np.ndarray] = None
        self._dx: Optional[np.ndarray] = None
        self._t: Optional[float] = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """x: one sample (any shape), t: its time in seconds (increasing) -> the filtered sample."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        dt = float(t) - self._t
        if dt <= 0:
            raise ValueError(f"OneEuroFilter timestamps must increase (got {t} after {self._t})")
        dx = (x - self._x) / dt
        edx = self._dx + _alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(edx)
        out = self._x + _alpha(cutoff, dt) * (x - self._x)
        self._x, self._dx, self._t = out, edx, float(t)
        return out.copy()


def _filter_run(x: np.ndarray, times: np.ndarray, cfg: SmoothingConfig) -> np.ndarray:
    f = OneEuroFilter(cfg.min_cutoff, cfg.beta, cfg.d_cutoff)
    return np.stack([f(x[i], times[i]) for i in range(len(x))])


def smooth_track(x: np.ndarray, times: np.ndarray, cfg: SmoothingConfig, zero_phase: bool = True) -> np.ndarray:
    """x: (T, ...) one unbroken track, times: (T,) seconds -> (T, ...) smoothed (float64)."""
    y = _filter_run(np.asarray(x, np.float64), times, cfg)
    if zero_phase and len(x) > 1:
        # backwards over the forward output, on mirrored (still increasing) timestamps
        y = _filter_run(y[::-1], (times[-1] - times)[::-1], cfg)[::-1]
    return y


def smooth_landmarks(
    landmarks: np.ndarray,
    fps: float = FPS,
    cfg: Optional[SmoothingConfig] = None,
    visible: Optional[np.ndarray] = None,
    times: Optional[np.ndarray] = None,
    zero_phase: Optional[bool] = None,
) -> np.ndarray:
    """landmarks: (T, 68, 2) pixels -> (T, 68, 2) float32 smoothed.

    visible: (T,) bool, frames where the face was seen (default: frames that are finite and not all
    zero); the filter skips the others (returned unchanged) and starts afresh after each gap.
    times: (T,) seconds (default ``arange(T) / fps``). zero_phase: forwards-backwards (default
    ``cfg.zero_phase``); False gives the causal, streaming filter.
    """
    cfg = cfg or SmoothingConfig()
    lm = np.asarray(landmarks, dtype=np.float32)
    out = lm.copy()
    if not cfg.enabled or len(lm) == 0:
        return out
    if zero_phase is None:
        zero_phase = cfg.zero_phase
    if visible is None:
        visible = is_seen(lm)
    visible = np.asarray(visible, dtype=bool)
    t = np.arange(len(lm), dtype=np.float64) / float(fps) if times is None else np.asarray(times, np.float64)
    # runs of consecutive visible frames
    edges = np.flatnonzero(np.diff(np.concatenate([[0], visible.astype(np.int8), [0]])))
    for start, stop in zip(edges[::2], edges[1::2]):
        out[start:stop] = smooth_track(lm[start:stop], t[start:stop], cfg, zero_phase).astype(np.float32)
    return out
