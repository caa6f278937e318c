"""The 68-point face layout (iBUG order, which is DWPose's face order) and the measures taken on it.

Indices are the subject's own sides: ``RIGHT_EYE`` (36-41) is on the left of the image for a face looking
at the camera. Every function takes landmarks ``(..., 68, 2)`` in pixels (any leading shape: one frame,
a clip, a batch) and trusts its input: shapes are checked where landmarks enter (PoseSequence, the
trackers). Numpy only, so curation, rendering, training and tests share it without import cost.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

N_POINTS = 68

# -- index layout ----------------------------------------------------------------------------------
JAW = np.arange(0, 17)  # 8 is the chin
CHIN = 8
RIGHT_BROW = np.arange(17, 22)  # the subject's right: the left side of the image
LEFT_BROW = np.arange(22, 27)
BROWS = np.arange(17, 27)
NOSE = np.arange(27, 36)
NOSE_BRIDGE, NOSTRILS = np.arange(27, 31), np.arange(31, 36)
RIGHT_EYE = np.arange(36, 42)  # image left; 36 outer corner, 37, 38 upper lid, 39 inner corner, 40, 41 lower lid
LEFT_EYE = np.arange(42, 48)  # 42 inner corner, 43, 44 upper lid, 45 outer corner, 46, 47 lower lid
OUTER_LIP = np.arange(48, 60)  # 48 and 54 are the mouth corners
INNER_LIP = np.arange(60, 68)  # 60 corner, 61-63 upper, 64 corner, 65-67 lower (65 under 63)
MOUTH = np.arange(48, 68)
MOUTH_CORNERS = (48, 54)
UPPER_INNER, LOWER_INNER = np.array([61, 62, 63]), np.array([67, 66, 65])  # paired column by column
UPPER_OUTER, LOWER_OUTER = np.array([50, 51, 52]), np.array([58, 57, 56])
INNER_LIP_PAIRS = np.stack([UPPER_INNER, LOWER_INNER], axis=1)  # (3, 2) rows (upper, lower)
EYE_UPPER = (np.array([37, 38]), np.array([43, 44]))  # image-left eye, image-right eye
EYE_LOWER = (np.array([41, 40]), np.array([47, 46]))  # paired with EYE_UPPER point by point


# -- which frames hold a face ----------------------------------------------------------------------
def is_seen(landmarks: np.ndarray, scores: Optional[np.ndarray] = None) -> np.ndarray:
    """landmarks: (..., 68, 2), scores: (..., 68) or None -> (...) bool: a frame is seen when its
    landmarks are finite and not the all-zero filler of a lost frame and, given scores, some point
    scored above 0 (trackers and pose files give a lost frame score 0)."""
    lm = np.asarray(landmarks)
    seen = np.isfinite(lm).all(axis=(-2, -1)) & (lm != 0).any(axis=(-2, -1))
    if scores is not None:
        seen &= (np.asarray(scores) > 0).any(axis=-1)
    return seen


def fill_gaps(values: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """values: (T, ...) per-frame values (landmarks, head pose), seen: (T,) bool -> a float copy where
    unseen frames are linearly interpolated between the nearest seen frames (held at the ends). Unchanged
    when every frame, or none, is seen."""
    out = np.array(values, dtype=np.result_type(values, np.float32), copy=True)
    seen = np.asarray(seen, bool)
    if seen.all() or not seen.any():
        return out
    t = np.arange(len(seen))
    flat = out.reshape(len(seen), -1)
    for j in range(flat.shape[1]):
        flat[~seen, j] = np.interp(t[~seen], t[seen], flat[seen, j])
    return flat.reshape(out.shape)


# -- boxes ------------------------------------------------------------------------------------------
def face_box(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 4) float32 landmark bounding boxes (x0, y0, x1, y1)."""
    lm = np.asarray(landmarks, dtype=np.float32)
    return np.concatenate([lm.min(axis=-2), lm.max(axis=-2)], axis=-1)


def face_size(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...) side of the landmark bounding box, the larger of width and height (pixels)."""
    lm = np.asarray(landmarks)
    return (lm.max(axis=-2) - lm.min(axis=-2)).max(axis=-1)


def locator_box(landmarks: np.ndarray, expand: float) -> np.ndarray:
    """(..., 68, 2) -> (..., 4) Face Locator boxes (x0, y0, x1, y1) in the landmarks' dtype: the landmark
    box scaled by ``expand`` about its centre (EMO, Tian et al. 2024, the Face Locator's region).
    Not clipped: callers clip to their canvas."""
    lm = np.asarray(landmarks)
    lo, hi = lm.min(axis=-2), lm.max(axis=-2)
    c, half = (lo + hi) / 2, (hi - lo) / 2 * expand
    return np.concatenate([c - half, c + half], axis=-1)


# -- measures ---------------------------------------------------------------------------------------
def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 68, 2) -> (image-left eye centre (points 36-41), image-right eye centre (42-47)), each (..., 2) float64."""
    lm = np.asarray(landmarks, np.float64)
    return lm[..., RIGHT_EYE, :].mean(-2), lm[..., LEFT_EYE, :].mean(-2)


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...) distance between the eye centres (pixels)."""
    a, b = eye_centres(landmarks)
    return np.linalg.norm(b - a, axis=-1)


def face_width(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...) distance between jaw points 0 and 16 (the face width at the temples)."""
    lm = np.asarray(landmarks, np.float64)
    return np.linalg.norm(lm[..., 16, :] - lm[..., 0, :], axis=-1)


def mouth_gap(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...) mean inner-lip gap in pixels (0 when the lips touch or overlap)."""
    lm = np.asarray(landmarks, np.float64)
    up = lm[..., UPPER_INNER, :]
    lo = lm[..., LOWER_INNER, :]
    # Signed along the face's vertical (eyes-to-mouth direction), so crossed lips read as closed.
    a, b = eye_centres(lm)
    down = lm[..., 57, :] - (a + b) / 2
    down = down / np.maximum(np.linalg.norm(down, axis=-1, keepdims=True), 1e-9)
    gap = np.einsum("...nd,...d->...n", lo - up, down)
    return np.clip(gap, 0, None).mean(-1)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...) the mouth opening: :func:`mouth_gap` over :func:`inter_ocular` (0 closed,
    about 0.5 wide open). Independent of the mouth's own width, so a smile does not read as closing."""
    return mouth_gap(landmarks) / np.maximum(inter_ocular(landmarks), 1e-9)


def mouth_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...) inner-lip gap (unsigned, mean of three columns) over the mouth width (corner
    to corner): 0 closed, about 0.3 wide open. The warp renderer's mouth painter is tuned on it."""
    gap = np.linalg.norm(landmarks[..., LOWER_INNER, :] - landmarks[..., UPPER_INNER, :], axis=-1).mean(axis=-1)
    width = np.linalg.norm(landmarks[..., MOUTH_CORNERS[1], :] - landmarks[..., MOUTH_CORNERS[0], :], axis=-1)
    return gap / np.maximum(width, 1e-6)


def eye_opening(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (..., 2) lid gap over eye width (the eye aspect ratio) for the image-left and
    image-right eye: about 0.3 open, 0 closed."""
    out = []
    for upper, lower, eye in ((EYE_UPPER[0], EYE_LOWER[0], RIGHT_EYE), (EYE_UPPER[1], EYE_LOWER[1], LEFT_EYE)):
        gap = np.linalg.norm(landmarks[..., lower, :] - landmarks[..., upper, :], axis=-1).mean(axis=-1)
        width = np.linalg.norm(landmarks[..., eye[3], :] - landmarks[..., eye[0], :], axis=-1)
        out.append(gap / np.maximum(width, 1e-6))
    return np.stack(out, axis=-1)
