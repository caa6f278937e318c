"""Pose controls: scale head motion and expression, set the blink rate, smooth, and offset the head
orientation of any :class:`~facepose.pose.sequence.PoseSequence` before it is rendered.

The sequence is split against a rest face (the reference's own landmarks when the pose was retargeted
onto it) with the 3D face model of :mod:`facepose.pose.face_model`:

1. ``hp``: (T, 3) head rotation (yaw, pitch, roll degrees) relative to the rest face, estimated from
   the skull-rigid points;
2. a per-frame similarity (scale, in-plane angle, translation, model units) taking the rest face, so
   rotated, onto the frame: the head's movement in the image;
3. ``expr``: (T, 68, 2) what is left, in model units: jaw, lips, brows, lids.

Each part is edited (rotation and movement times ``head_amplitude``, plus the yaw/pitch/roll offset;
mouth and brows times ``expression``; eyelids replaced by synthetic blinks at ``blink_rate``; a
zero-phase Gaussian over time for ``smoothing``) and the frame is put back together. With the default
:class:`~facepose.config.PoseAdjustConfig` the sequence comes back unchanged (the same object).
Numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Optional

import numpy as np

from facepose.config import PoseAdjustConfig
from facepose.errors import InputError
from facepose.face_layout import LEFT_EYE, RIGHT_EYE
from facepose.pose import face_model as fm
from facepose.pose.sequence import PoseSequence

EYE_POINTS = np.concatenate([RIGHT_EYE, LEFT_EYE])  # lids and eye corners: driven by blinks, not by ``expression``
BLINK_S = 0.22  # length of one synthetic blink (close and open), seconds
MAX_SMOOTH_S = 0.25  # Gaussian sigma at smoothing = 1, seconds
LIMITS = {"head_amplitude": (0.0, 3.0), "expression": (0.0, 3.0), "blink_rate": (0.0, 120.0),
          "smoothing": (0.0, 1.0), "yaw": (-45.0, 45.0), "pitch": (-45.0, 45.0), "roll": (-45.0, 45.0)}


def is_identity(cfg: Optional[PoseAdjustConfig]) -> bool:
    """True when ``cfg`` (None counts as the defaults) changes nothing."""
    return cfg is None or cfg == PoseAdjustConfig()


def check(cfg: PoseAdjustConfig) -> None:
    """InputError naming the setting when a value is outside :data:`LIMITS` (or not finite)."""
    values = asdict(cfg)
    for name, (lo, hi) in LIMITS.items():
        v = values[name]
        if v is None and name == "blink_rate":
            continue
        if v is None or not np.isfinite(float(v)) or not lo <= float(v) <= hi:
            raise InputError(f"pose.adjust.{name} must be between {lo:g} and {hi:g}, got {v}")


def blink_curve(frames: int, fps: float, rate: float, seed: int = 0) -> np.ndarray:
    """(frames,) eyelid closure in [0, 1]: ``rate`` blinks a minute, spaced 60/rate s apart with +-30 %
    seeded jitter, each a raised-cosine close-and-open of BLINK_S seconds. ``rate`` 0 gives zeros."""
    c = np.zeros(frames, np.float64)
    if rate <= 0 or frames == 0:
        return c
    rng = np.random.default_rng(seed)
    gap = 60.0 / rate
    t_end = frames / fps
    t = np.arange(frames) / fps
    start = 0.5 * gap * rng.uniform(0.7, 1.3)
    while start < t_end:
        u = (t - start) / BLINK_S
        inside = (u >= 0) & (u <= 1)
        c[inside] = np.maximum(c[inside], 0.5 - 0.5 * np.cos(2 * np.pi * u[inside]))
        start += max(gap * rng.uniform(0.7, 1.3), BLINK_S * 1.5)
    return c


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """x: (T, ...) -> smoothed along T with a Gaussian of ``sigma`` frames, edges reflected."""
    if sigma < 0.3 or len(x) < 2:
        return x
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    flat = x.reshape(len(x), -1)
    padded = np.pad(flat, ((r, r), (0, 0)), mode="reflect" if len(x) > r else "edge")
    out = np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(flat.shape[1])], axis=1)
    return out.reshape(x.shape)


def _angle(R: np.ndarray) -> np.ndarray:
    return np.arctan2(R[..., 1, 0], R[..., 0, 0])


def _rot(theta: np.ndarray) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def adjust_pose(pose: PoseSequence, cfg: Optional[PoseAdjustConfig], rest: Optional[np.ndarray] = None,
                seed: int = 0) -> PoseSequence:
    """Apply the pose controls of ``cfg`` to ``pose`` -> a new PoseSequence (``pose`` itself when ``cfg``
    changes nothing).

    rest: (68, 2) the rest face in the pose's canvas pixels (the reference's landmarks); default the
    per-point median of the seen frames. seed: the blink schedule's jitter. ``head_pose``, when present,
    moves by the same rotation change; ``meta["adjust"]`` records the settings.
    """
    if is_identity(cfg) or len(pose) == 0:
        return pose
    assert cfg is not None
    check(cfg)
    seen = pose.visible
    if not seen.any():
        return pose
    lm = pose.landmarks[seen].astype(np.float64)  # (S, 68, 2)
    rest = np.median(lm, axis=0) if rest is None else np.asarray(rest, np.float64)
    if rest.shape != (68, 2) or not np.isfinite(rest).all():
        raise InputError(f"rest landmarks must be a finite (68, 2) array, got shape {rest.shape}")
    ref = fm.ReferenceFace.fit(rest)
    si, Ri, ti = fm.invert_similarity(np.asarray(ref.scale), ref.R, ref.t)

    # 1-3. split each frame: head rotation, head movement (similarity), expression residual
    xy = fm.apply_similarity(lm, si, Ri, ti)  # (S, 68, 2) model units
    hp = (fm.estimate_head_pose(lm) - fm.estimate_head_pose(rest)[None]).astype(np.float64)  # (S, 3)
    posed = fm.pose_3d(ref.points, hp)[..., :2]  # (S, 68, 2)
    rig = fm.RIGID_POINTS
    s, R, t = fm.similarity(posed[:, rig], xy[:, rig])
    expr = xy - fm.apply_similarity(posed, s, R, t)  # (S, 68, 2)
    theta = _angle(R)
    log_s = np.log(np.maximum(s, 1e-9))

    # edit
    a = float(cfg.head_amplitude)
    sigma = float(cfg.smoothing) * MAX_SMOOTH_S * float(pose.fps)
    hp2 = _gaussian(hp * a, sigma) + np.array([cfg.yaw, cfg.pitch, cfg.roll], np.float64)
    theta2, log_s2, t2 = (_gaussian(v * a, sigma) for v in (theta, log_s, t))
    k = float(cfg.expression)
    expr2 = expr * k
    expr2[:, EYE_POINTS] = expr[:, EYE_POINTS]
    expr2 = _gaussian(expr2, sigma) if sigma else expr2
    expr2[:, EYE_POINTS] = expr[:, EYE_POINTS]  # blinks are too quick to smooth
    if cfg.blink_rate is not None:
        closure = blink_curve(len(pose), pose.fps, float(cfg.blink_rate), seed)[seen]
        lids = fm.BASES[fm.EXPRESSIONS.index("blink_left")] + fm.BASES[fm.EXPRESSIONS.index("blink_right")]
        expr2[:, EYE_POINTS] = closure[:, None, None] * lids[EYE_POINTS, :2]

    # put back together, in model units, then canvas pixels
    posed2 = fm.pose_3d(ref.points, hp2)[..., :2]
    xy2 = fm.apply_similarity(posed2, np.exp(log_s2), _rot(theta2), t2) + expr2
    out = pose.landmarks.copy()
    out[seen] = fm.apply_similarity(xy2, np.asarray(ref.scale), ref.R, ref.t).astype(np.float32)
    head = pose.head_pose
    if head is not None:
        head = head.copy()
        head[seen] = head[seen] + (hp2 - hp).astype(np.float32)
    meta = dict(pose.meta)
    values, defaults = asdict(cfg), asdict(PoseAdjustConfig())
    meta["adjust"] = ", ".join(f"{n}={values[n]}" for n in LIMITS if values[n] != defaults[n])
    return replace(pose, landmarks=out, head_pose=head, meta=meta)
