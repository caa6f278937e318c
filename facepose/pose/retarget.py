"""Carry a driving landmark sequence onto a reference face.

Relative mode (the default) separates each driver frame's motion from the driver's face shape:

1. Normalise: a similarity fitted on the skull-rigid points maps the driver's neutral frame onto the
   face model's mean shape, so coordinates are in model units (half face widths), face-aligned.
2. Rigid motion: per frame, the similarity (scale, in-plane rotation, translation) from the neutral
   frame to that frame, again on the rigid points.
3. Expression: what is left after undoing that similarity, minus the neutral frame: non-rigid offsets
   (jaw, lips, lids, brows, and the foreshortening of out-of-plane head turns).
4. Apply: the reference's own landmarks, normalised the same way, plus the offsets, moved by the rigid
   similarity, mapped back into the reference's canvas.

So a small face drives a large one, and the reference keeps its face shape (inter-ocular distance,
face width): at the neutral frame the output is exactly the reference's landmarks.

Absolute mode maps every driver frame with one similarity (driver neutral frame onto the reference's
rigid points): the driver's face shape comes along, placed in the reference's box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

import numpy as np

from facepose.errors import InputError
from facepose import face_layout as layout
from facepose.pose import face_model as fm
from facepose.pose.sequence import PoseSequence

Mode = Literal["relative", "absolute"]
MODES = ("relative", "absolute")


@dataclass
class Motion:
    """Driver motion relative to its neutral frame, in model units (see the module docstring).

    expr: (T, 68, 2) non-rigid offsets; scale: (T,) relative scale; R: (T, 2, 2) in-plane rotation;
    t: (T, 2) translation (model units, applied after scale and rotation about the model origin).
    """

    expr: np.ndarray
    scale: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def __len__(self) -> int:
        return int(self.expr.shape[0])

    @property
    def roll(self) -> np.ndarray:
        """(T,) in-plane rotation in degrees (clockwise in the image is positive)."""
        return np.rad2deg(np.arctan2(self.R[:, 1, 0], self.R[:, 0, 0]))


def to_model_frame(landmarks: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """landmarks: (..., 68, 2) pixels -> model units, by the similarity taking ``neutral`` (68, 2) onto the model."""
    s, R, t = fm.similarity(np.asarray(neutral)[fm.RIGID_POINTS], fm.MEAN_3D[fm.RIGID_POINTS, :2])
    return fm.apply_similarity(np.asarray(landmarks, np.float64), s, R, t)


def from_model_frame(points: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_model_frame` for the same ``neutral``: (..., 68, 2) model units -> pixels."""
    s, R, t = fm.similarity(fm.MEAN_3D[fm.RIGID_POINTS, :2], np.asarray(neutral)[fm.RIGID_POINTS])
    return fm.apply_similarity(points, s, R, t)


def decompose(landmarks: np.ndarray, neutral: np.ndarray) -> Motion:
    """landmarks: (T, 68, 2) driver frames, neutral: (68, 2) driver rest frame -> :class:`Motion`."""
    u = to_model_frame(landmarks, neutral)  # (T, 68, 2)
    u0 = to_model_frame(neutral, neutral)  # (68, 2)
    s, R, t = fm.similarity(np.broadcast_to(u0[fm.RIGID_POINTS], u[:, fm.RIGID_POINTS].shape), u[:, fm.RIGID_POINTS])
    si, Ri, ti = fm.invert_similarity(s, R, t)
    expr = fm.apply_similarity(u, si, Ri, ti) - u0
    return Motion(expr=expr, scale=s, R=R, t=t)


def apply_motion(motion: Motion, reference: np.ndarray) -> np.ndarray:
    """motion on (T frames), reference: (68, 2) pixels -> (T, 68, 2) float32 pixels."""
    r0 = to_model_frame(reference, reference)
    pts = fm.apply_similarity(r0[None] + motion.expr, motion.scale, motion.R, motion.t)
    return from_model_frame(pts, reference).astype(np.float32)


def pick_neutral(pose: PoseSequence, neutral: Union[int, str] = 0) -> int:
    """Index of the driver frame to use as rest pose: ``neutral`` itself (the first seen frame at or after it
    when it was lost), or with ``"auto"`` the seen frame with the most closed mouth among the most frontal ones."""
    seen = np.flatnonzero(pose.visible)
    if len(seen) == 0:
        raise InputError(f"driver {pose.source or 'pose'} has no frame with a face to retarget from")
    if neutral == "auto":
        lm = pose.landmarks[seen]
        hp = fm.estimate_head_pose(lm)
        off = np.abs(hp - np.median(hp, axis=0)).sum(1)
        frontal = off <= np.percentile(off, 30)
        opening = np.where(frontal, layout.mouth_opening(lm), np.inf)
        return int(seen[int(np.argmin(opening))])
    if isinstance(neutral, str):
        raise InputError(f"retarget neutral must be a frame index or 'auto', got {neutral!r}")
    n = int(neutral)
    if n < 0:
        n += len(pose)
    if not 0 <= n < len(pose):
        raise InputError(f"retarget neutral frame {neutral} is outside the driver's {len(pose)} frames")
    later = seen[seen >= n]
    return int(later[0] if len(later) else seen[-1])


def retarget(
    driver: PoseSequence,
    reference_landmarks: np.ndarray,
    canvas: tuple[int, int],
    mode: str = "relative",
    neutral: Union[int, str] = 0,
) -> PoseSequence:
    """Carry ``driver``'s motion onto ``reference_landmarks`` ((68, 2) pixels of a ``canvas`` = (W, H)).

    Frames the driver lost (score 0) should be filled before (``source.fill_lost``); left unfilled, they
    get the rest pose and keep score 0. head_pose: relative mode gives the driver's head pose minus its neutral frame's (the
    reference's own pose is the rest); absolute mode passes it through.
    """
    if mode not in MODES:
        raise InputError(f"unknown retarget mode {mode!r}; choose from {list(MODES)}")
    ref = np.asarray(reference_landmarks, np.float64)
    if ref.shape != (68, 2) or not np.isfinite(ref).all():
        raise InputError(f"reference landmarks must be a finite (68, 2) array, got shape {ref.shape}")
    if len(driver) == 0:
        raise InputError(f"driver {driver.source or 'pose'} has no frames")
    n = pick_neutral(driver, neutral)
    d0 = driver.landmarks[n].astype(np.float64)
    lm = driver.landmarks.astype(np.float64)
    lm[~driver.visible] = d0  # unfilled lost frames rest (and keep score 0) instead of fitting zeros
    hp = driver.head_pose
    if mode == "relative":
        out = apply_motion(decompose(lm, d0), ref)
        if hp is not None:
            hp = hp - hp[n]
    else:
        s, R, t = fm.similarity(d0[fm.RIGID_POINTS], ref[fm.RIGID_POINTS])
        out = fm.apply_similarity(lm, s, R, t).astype(np.float32)
    W, H = int(canvas[0]), int(canvas[1])
    return PoseSequence(landmarks=out, scores=driver.scores.copy(), fps=driver.fps, width=W, height=H,
                        head_pose=hp, source=driver.source, meta=dict(driver.meta))
