"""A parametric 68-point 3D face: rigid head rotation, expression bases, weak-perspective projection.

Model space: x right, y down, z toward the camera; the origin is the midpoint between the eye centres
and one unit is half the face width (jaw point 0 to jaw point 16 spans 2 units). The frontal layout is
the 68-point iBUG mean shape derived from a real face (skimage's astronaut, symmetrised, the mouth
re-authored closed) with a hand-authored depth profile. Angles are degrees:

- yaw > 0 turns the nose toward image right (+x),
- pitch > 0 tilts the nose down (+y, looking down),
- roll > 0 rotates the face clockwise in the image.

Expressions (``EXPRESSIONS``) are linear offsets in model units, so they scale with whatever face size
the model is projected at. ``blink_left`` closes the subject's left eye (points 42-47, image right for a
face looking at the camera); a negative blink widens the eye.

:class:`ReferenceFace` fits a similarity from the model onto a reference's own 2D landmarks, so the same
rotations and expressions can be played on any reference while its face shape (identity) stays its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from facepose.face_layout import INNER_LIP_PAIRS, MOUTH

EXPRESSIONS = ("jaw_open", "lip_stretch", "lip_pucker", "smile", "brow_raise", "blink_left", "blink_right")
N_EXPR = len(EXPRESSIONS)

# Points that move with the skull only (no jaw, brows, lids or lips): for similarity and pose fits.
RIGID_POINTS = np.array([0, 1, 2, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45])
# Mirror permutation of the iBUG layout (point i of a face is point MIRROR[i] of its mirror image).
MIRROR = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)

# Frontal x, y of the right half (and midline) of the face; the left half mirrors it. Eyes, brows, nose
# and jaw: skimage's astronaut, symmetrised and normalised; the mouth: authored neutral and closed.
_XY = {
    0: (-1.000, 0.067), 1: (-0.968, 0.325), 2: (-0.936, 0.562), 3: (-0.893, 0.820), 4: (-0.807, 1.058),
    5: (-0.667, 1.262), 6: (-0.463, 1.434), 7: (-0.247, 1.586), 8: (0.0, 1.618),
    17: (-0.850, -0.137), 18: (-0.732, -0.277), 19: (-0.560, -0.298), 20: (-0.387, -0.277), 21: (-0.215, -0.223),
    27: (0.0, -0.019), 28: (0.0, 0.175), 29: (0.0, 0.347), 30: (0.0, 0.518),
    31: (-0.215, 0.616), 32: (-0.107, 0.648), 33: (0.0, 0.670),
    36: (-0.646, 0.003), 37: (-0.538, -0.082), 38: (-0.387, -0.082), 39: (-0.269, 0.047), 40: (-0.409, 0.057),
    41: (-0.549, 0.058),
    48: (-0.420, 0.950), 49: (-0.260, 0.875), 50: (-0.105, 0.840), 51: (0.0, 0.855),
    59: (-0.275, 1.045), 58: (-0.125, 1.100), 57: (0.0, 1.110),
    60: (-0.370, 0.950), 61: (-0.120, 0.945), 62: (0.0, 0.950), 67: (-0.120, 0.950), 66: (0.0, 0.955),
}
# Depth (z toward the camera) of the same points: eye corners near 0, nose tip forward, jaw angle back.
_Z = {
    0: -0.70, 1: -0.66, 2: -0.58, 3: -0.47, 4: -0.33, 5: -0.18, 6: -0.05, 7: 0.06, 8: 0.10,
    17: -0.16, 18: -0.04, 19: 0.03, 20: 0.07, 21: 0.08,
    27: 0.04, 28: 0.13, 29: 0.25, 30: 0.40, 31: 0.10, 32: 0.19, 33: 0.25,
    36: -0.13, 37: -0.04, 38: -0.02, 39: 0.00, 40: -0.03, 41: -0.06,
    48: 0.00, 49: 0.11, 50: 0.17, 51: 0.19, 59: 0.08, 58: 0.13, 57: 0.15,
    60: 0.02, 61: 0.12, 62: 0.14, 67: 0.11, 66: 0.13,
}
# Head rotation pivot (behind the face, near the top of the neck), model units.
PIVOT = np.array([0.0, 0.4, -1.0])
# Where facepose.face.crop puts a face in a 512 crop (crop side = 2.2 x the landmark box): pixels per
# model unit and the canvas pixel of the model origin.
CROP_SCALE = 116.0
CROP_CENTER = (256.0, 180.0)


def _mirror_fill(values: dict[int, tuple]) -> np.ndarray:
    """Complete a half-face table to all 68 points by mirroring x."""
    dim = len(next(iter(values.values())))
    out = np.full((68, dim), np.nan)
    for i, v in values.items():
        out[i] = v
        j = MIRROR[i]
        if j != i:
            out[j] = v
            out[j, 0] = -v[0] if dim > 1 else v[0]
    assert not np.isnan(out).any(), "face model table misses points"
    return out


def _build_mean() -> np.ndarray:
    xy = _mirror_fill(_XY)
    z = _mirror_fill({k: (v,) for k, v in _Z.items()})[:, 0]
    return np.concatenate([xy, z[:, None]], axis=1)


MEAN_3D: np.ndarray = _build_mean()  # (68, 3) model units


def _build_bases(mean: np.ndarray) -> np.ndarray:
    """(N_EXPR, 68, 3) expression offsets at amplitude 1."""
    B = np.zeros((N_EXPR, 68, 3))
    side = np.sign(mean[:, 0])  # -1 on the image-left half, +1 on the image-right half

    # jaw_open: the jaw rotates about the ears, so the chin and lower lip drop, the jaw line follows
    # with a weight growing toward the chin, and the lower lip moves slightly back.
    jaw = B[0]
    for i, w in {3: 0.08, 4: 0.30, 5: 0.55, 6: 0.78, 7: 0.93, 8: 1.0}.items():
        jaw[i, 1] = jaw[MIRROR[i], 1] = 0.34 * w
        jaw[i, 2] = jaw[MIRROR[i], 2] = -0.10 * w
    for i in (57, 58, 59, 66, 67):
        w = 0.88 if i in (57, 66) else 0.80
        jaw[i, 1] = jaw[MIRROR[i], 1] = 0.34 * w
        jaw[i, 2] = jaw[MIRROR[i], 2] = -0.06
    for i in (48, 60):  # corners drop about half as much and pull in a little
        jaw[i] = jaw[MIRROR[i]] = (0.0, 0.13, -0.02)
        jaw[i, 0], jaw[MIRROR[i], 0] = 0.03, -0.03
    for i in (61, 62, 63):  # the upper lip lifts a little off the teeth
        jaw[i, 1] = -0.025

    # lip_stretch: corners pull sideways, both lips thin and flatten against the teeth.
    st = B[1]
    for i, dx in {48: 0.13, 60: 0.12, 49: 0.06, 59: 0.06, 61: 0.04, 67: 0.04}.items():
        st[i, 0], st[MIRROR[i], 0] = -dx, dx
    for i in (49, 50, 51):
        st[i, 1] = st[MIRROR[i], 1] = 0.025
    for i in (59, 58, 57):
        st[i, 1] = st[MIRROR[i], 1] = -0.03
    st[[48, 54, 60, 64], 2] = -0.04

    # lip_pucker: corners draw in, lips round and push forward.
    pk = B[2]
    for i, dx in {48: 0.14, 60: 0.12, 49: 0.07, 59: 0.07, 61: 0.05, 67: 0.05}.items():
        pk[i, 0], pk[MIRROR[i], 0] = dx, -dx
    for i in (49, 50, 51):
        pk[i, 1] = pk[MIRROR[i], 1] = -0.02
    for i in (59, 58, 57):
        pk[i, 1] = pk[MIRROR[i], 1] = 0.025
    pk[MOUTH, 2] = 0.09

    # smile: corners out and up, upper lip raised at the sides, cheeks push the lower lids up.
    sm = B[3]
    for i, (dx, dy) in {48: (0.09, -0.09), 60: (0.08, -0.08), 49: (0.03, -0.035), 59: (0.05, -0.06),
                        61: (0.02, -0.03), 67: (0.03, -0.03)}.items():
        sm[i] = (-dx, dy, 0.0)
        sm[MIRROR[i]] = (dx, dy, 0.0)
    sm[[57, 58, 56], 1] = -0.03
    for i in (40, 41):
        sm[i, 1] = sm[MIRROR[i], 1] = -0.02
    for i in (4, 5):
        sm[i, 0], sm[MIRROR[i], 0] = -0.02, 0.02

    # brow_raise: brows lift (inner ends a bit less), upper lids open slightly.
    br = B[4]
    for i, dy in {17: 0.11, 18: 0.14, 19: 0.15, 20: 0.14, 21: 0.12}.items():
        br[i, 1] = br[MIRROR[i], 1] = -dy
    for i in (37, 38):
        br[i, 1] = br[MIRROR[i], 1] = -0.012

    # blinks: the upper lid meets the (slightly raised) lower lid; subject's left eye = points 42..47.
    lids = {5: ((43, 47), (44, 46)), 6: ((37, 41), (38, 40))}  # (upper lid point, lower lid point)
    for k, pairs in lids.items():
        for u, lo in pairs:
            gap = mean[lo, 1] - mean[u, 1]
            B[k, u, 1] = 0.85 * gap
            B[k, lo, 1] = -0.15 * gap
    return B


BASES: np.ndarray = _build_bases(MEAN_3D)  # (N_EXPR, 68, 3)


# -- rotations -----------------------------------------------------------------------------------
def rotation_matrix(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Angles in degrees, any broadcastable shape S -> (*S, 3, 3) = Rz(roll) @ Ry(yaw) @ Rx(pitch)."""
    y, p, r = (np.deg2rad(np.asarray(a, np.float64)) for a in (yaw, pitch, roll))
    y, p, r = np.broadcast_arrays(y, p, r)
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    R = np.empty(y.shape + (3, 3))
    # Ry @ Rx = [[cy, -sy sp, sy cp], [0, cp, sp], [-sy, -cy sp, cy cp]]; then Rz on the left.
    a = np.stack([cy, -sy * sp, sy * cp], -1)
    b = np.stack([np.zeros_like(cy), cp, sp], -1)
    R[..., 0, :] = cr[..., None] * a - sr[..., None] * b
    R[..., 1, :] = sr[..., None] * a + cr[..., None] * b
    R[..., 2, :] = np.stack([-sy, -cy * sp, cy * cp], -1)
    return R


def rotation_to_angles(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation -> (..., 3) yaw, pitch, roll in degrees (inverse of :func:`rotation_matrix`)."""
    yaw = np.arcsin(np.clip(-R[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(-R[..., 2, 1], R[..., 2, 2])
    roll = np.arctan2(R[..., 1, 0], R[..., 0, 0])
    return np.rad2deg(np.stack([yaw, pitch, roll], -1))


def shape_3d(expr: Optional[np.ndarray] = None, base: Optional[np.ndarray] = None) -> np.ndarray:
    """expr: (..., N_EXPR) amplitudes -> (..., 68, 3) model-space points (``base`` defaults to MEAN_3D)."""
    base = MEAN_3D if base is None else base
    if expr is None:
        return base.copy()
    expr = np.asarray(expr, np.float64)
    return base + np.einsum("...k,knd->...nd", expr, BASES)


def pose_3d(points: np.ndarray, head_pose: Optional[np.ndarray]) -> np.ndarray:
    """points: (..., 68, 3), head_pose: (..., 3) yaw/pitch/roll degrees -> rotated about PIVOT."""
    if head_pose is None:
        return points
    hp = np.asarray(head_pose, np.float64)
    R = rotation_matrix(hp[..., 0], hp[..., 1], hp[..., 2])
    return np.einsum("...ij,...nj->...ni", R, points - PIVOT) + PIVOT


def project(
    head_pose: Optional[np.ndarray] = None,
    expr: Optional[np.ndarray] = None,
    scale: float | np.ndarray = CROP_SCALE,
    center: tuple[float, float] | np.ndarray = CROP_CENTER,
    offset: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Weak-perspective projection of the model into a canvas.

    head_pose: (T, 3) yaw/pitch/roll degrees; expr: (T, N_EXPR); scale: pixels per model unit (half the
    face width), scalar or (T,); center: canvas pixel of the model origin (between the eyes);
    offset: optional (T, 2) extra translation in pixels -> (T, 68, 2) float32 canvas pixels.
    """
    pts = pose_3d(shape_3d(expr), head_pose)
    scale = np.asarray(scale, np.float64)
    out = pts[..., :2] * (scale[..., None, None] if scale.ndim else scale) + np.asarray(center, np.float64)
    if offset is not None:
        out = out + np.asarray(offset, np.float64)[..., None, :]
    return out.astype(np.float32)


# -- similarity fits -----------------------------------------------------------------------------
def similarity(src: np.ndarray, dst: np.ndarray, weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama) from src to dst, batched.

    src, dst: (..., N, 2) -> scale (...,), rotation (..., 2, 2), translation (..., 2) with
    dst ~ scale * src @ R.T + t.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(src.shape[-2]) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    ms = np.einsum("n,...nd->...d", w, src)
    md = np.einsum("n,...nd->...d", w, dst)
    a = src - ms[..., None, :]
    b = dst - md[..., None, :]
    cov = np.einsum("n,...ni,...nj->...ij", w, b, a)
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.ones(S.shape)
    D[..., 1] = d
    R = U @ (D[..., :, None] * Vt)
    var = np.einsum("n,...nd->...", w, a**2)
    scale = (S * D).sum(-1) / np.maximum(var, 1e-12)
    t = md - scale[..., None] * np.einsum("...ij,...j->...i", R, ms)
    return scale, R, t


def apply_similarity(points: np.ndarray, scale: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """points (..., N, 2) -> scale * points @ R.T + t."""
    scale = np.asarray(scale, np.float64)
    return scale[..., None, None] * np.einsum("...ij,...nj->...ni", R, points) + np.asarray(t)[..., None, :]


def invert_similarity(scale: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    Rt = np.swapaxes(R, -1, -2)
    inv_s = 1.0 / np.asarray(scale, np.float64)
    return inv_s, Rt, -inv_s[..., None] * np.einsum("...ij,...j->...i", Rt, t)


# -- pose estimation -------------------------------------------------------------------------------
def estimate_head_pose(landmarks: np.ndarray) -> np.ndarray:
    """landmarks: (T, 68, 2) or (68, 2) -> (T, 3) or (3,) yaw, pitch, roll degrees.

    A weak-perspective (scaled orthographic) fit of the model's rigid points: the least-squares affine
    camera, then its nearest scaled rotation (the two rows made orthonormal), then the Euler angles.
    Absolute angles carry the bias of the reference's own face shape; differences over time are reliable.
    """
    lm = np.asarray(landmarks, np.float64)
    single = lm.ndim == 2
    lm = lm[None] if single else lm
    X = MEAN_3D[RIGID_POINTS]
    X = X - X.mean(0)
    p = lm[:, RIGID_POINTS]
    p = p - p.mean(1, keepdims=True)
    M = np.einsum("tnd,nk->tdk", p, np.linalg.pinv(X).T)  # (T, 2, 3): p ~ X @ M.T
    U, _, Vt = np.linalg.svd(M, full_matrices=False)
    rows = U @ Vt  # nearest matrix with orthonormal rows
    r3 = np.cross(rows[:, 0], rows[:, 1])
    R = np.concatenate([rows, r3[:, None]], axis=1)
    out = rotation_to_angles(R).astype(np.float32)
    return out[0] if single else out


# -- a reference's own face ----------------------------------------------------------------------
@dataclass
class ReferenceFace:
    """A reference's neutral 2D landmarks lifted into model space.

    points: (68, 3) the reference's landmarks in model units (x, y from its own 2D shape, z from the
    model's depth profile); scale, R, t: the similarity from model x, y to the reference's canvas pixels.
    """

    points: np.ndarray
    scale: float
    R: np.ndarray
    t: np.ndarray

    @classmethod
    def fit(cls, landmarks: np.ndarray, close_mouth: bool = False) -> "ReferenceFace":
        """landmarks: (68, 2) canvas pixels. ``close_mouth`` brings the inner lips together (by raising the
        jaw along the jaw_open basis), so an open-mouthed photo gets a closed rest pose."""
        lm = np.asarray(landmarks, np.float64)
        if lm.shape != (68, 2) or not np.isfinite(lm).all():
            raise ValueError(f"reference landmarks must be a finite (68, 2) array, got {lm.shape}")
        s, R, t = similarity(MEAN_3D[RIGID_POINTS, :2], lm[RIGID_POINTS])
        si, Ri, ti = invert_similarity(s, R, t)
        xy = apply_similarity(lm, si, Ri, ti)
        pts = np.concatenate([xy, MEAN_3D[:, 2:]], axis=1)
        if close_mouth:
            pts = close_inner_lips(pts)
        return cls(points=pts, scale=float(s), R=R, t=t)

    def landmarks(
        self,
        head_pose: Optional[np.ndarray] = None,
        expr: Optional[np.ndarray] = None,
        offset: Optional[np.ndarray] = None,
        zoom: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """head_pose: (T, 3) degrees relative to the reference's own pose; expr: (T, N_EXPR);
        offset: (T, 2) translation in model units (face frame); zoom: (T,) scale factor -> (T, 68, 2) float32."""
        pts = pose_3d(shape_3d(expr, base=self.points), head_pose)
        xy = pts[..., :2]
        if offset is not None:
            xy = xy + np.asarray(offset, np.float64)[..., None, :]
        if zoom is not None:
            z = np.asarray(zoom, np.float64)[..., None, None]
            xy = (xy - PIVOT[:2]) * z + PIVOT[:2]
        return apply_similarity(xy, np.asarray(self.scale), self.R, self.t).astype(np.float32)

    @property
    def pixels_per_unit(self) -> float:
        return self.scale


def close_inner_lips(points: np.ndarray) -> np.ndarray:
    """points: (68, 3) model space -> the same face with the jaw raised until the inner lips touch."""
    pts = np.asarray(points, np.float64).copy()
    gap = float(np.mean(pts[INNER_LIP_PAIRS[:, 1], 1] - pts[INNER_LIP_PAIRS[:, 0], 1]))
    jaw = BASES[EXPRESSIONS.index("jaw_open")]
    per_unit = float(np.mean(jaw[INNER_LIP_PAIRS[:, 1], 1] - jaw[INNER_LIP_PAIRS[:, 0], 1]))
    if gap > 0:
        pts = pts - (gap / per_unit) * jaw
    # Finish exactly: lower inner lip onto the upper one point by point.
    for u, lo in INNER_LIP_PAIRS:
        d = pts[lo, 1] - pts[u, 1]
        if d > 0:
            pts[lo, 1] -= d
    return pts
