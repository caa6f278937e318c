"""The geometry of the warp renderer: a triangle mesh over the 68 face points and a fast backward map.

The mesh is the 68 iBUG points, a few virtual forehead points that move with the brows, and fixed anchors
on the border of the region of interest (ROI). Its topology comes once, from a Delaunay triangulation of
the reference's points with the mouth and eyes forced open, so the inner-mouth and inner-eye polygons are
triangulated on their own and stretch (mouth opening) or collapse (blinks) without dragging the lips or
lids along. Per frame, :meth:`MeshWarp.displacement` rasterises the target triangles into a triangle-index
image (``cv2.fillConvexPoly``), looks up one affine map per pixel and evaluates it in numpy, on a grid
``grid_step`` times coarser than the output, then upsamples it (the map is continuous, so bilinear
upsampling is nearly exact). ``cv2.remap`` then samples the reference at the returned coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from facepose.face_layout import (
    BROWS,
    CHIN,
    EYE_LOWER,
    EYE_UPPER,
    INNER_LIP,
    LEFT_EYE,
    LOWER_INNER,
    LOWER_OUTER,
    OUTER_LIP,
    RIGHT_EYE,
    UPPER_INNER,
    UPPER_OUTER,
)

_FOREHEAD_FROM = np.array([17, 19, 21, 22, 24, 26])
_FOREHEAD_LIFT = 0.3  # share of the chin-to-brow vector the virtual forehead points sit above the brows
_SHIFT = 4  # fillConvexPoly sub-pixel bits


def forehead_points(landmarks: np.ndarray) -> np.ndarray:
    """landmarks: (..., 68, 2) -> (..., 6, 2) virtual points above the brows that follow the head."""
    brows = landmarks[..., _FOREHEAD_FROM, :]
    up = landmarks[..., BROWS, :].mean(axis=-2) - landmarks[..., CHIN, :]  # chin -> brow centre
    return brows + _FOREHEAD_LIFT * up[..., None, :]


def face_points(landmarks: np.ndarray) -> np.ndarray:
    """landmarks: (..., 68, 2) -> (..., 74, 2): the 68 points then the virtual forehead points."""
    return np.concatenate([landmarks, forehead_points(landmarks)], axis=-2).astype(np.float32)


def border_anchors(roi: tuple[int, int, int, int], per_side: int = 4) -> np.ndarray:
    """roi: (x0, y0, x1, y1) -> (4 * per_side, 2) fixed points spaced along the ROI's border."""
    x0, y0, x1, y1 = roi
    t = np.arange(per_side, dtype=np.float32) / per_side
    xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    top = np.stack([xs, np.full_like(xs, y0)], 1)
    right = np.stack([np.full_like(ys, x1), ys], 1)
    bottom = np.stack([x1 - t * (x1 - x0), np.full_like(xs, y1)], 1)
    left = np.stack([np.full_like(ys, x0), y1 - t * (y1 - y0)], 1)
    return np.concatenate([top, right, bottom, left]).astype(np.float32)


def opened(landmarks: np.ndarray) -> np.ndarray:
    """landmarks: (68, 2) -> (68, 2) with the inner lips moved halfway to the outer lips and the lids
    apart, so a Delaunay triangulation keeps the mouth and eye openings as their own triangles."""
    lm = landmarks.astype(np.float64).copy()
    lm[UPPER_INNER] = 0.5 * (lm[UPPER_INNER] + lm[UPPER_OUTER])
    lm[LOWER_INNER] = 0.5 * (lm[LOWER_INNER] + lm[LOWER_OUTER])
    for upper, lower, eye in ((EYE_UPPER[0], EYE_LOWER[0], RIGHT_EYE), (EYE_UPPER[1], EYE_LOWER[1], LEFT_EYE)):
        width = np.linalg.norm(lm[eye[3]] - lm[eye[0]])
        centre = 0.5 * (lm[upper] + lm[lower])
        lm[upper] = centre - [0.0, 0.2 * width]
        lm[lower] = centre + [0.0, 0.2 * width]
    return lm


def triangulate(landmarks: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """landmarks: (68, 2) reference points, anchors: (K, 2) -> triangles (M, 3) int32 indexing
    ``[face_points(landmarks), anchors]``; inner-mouth and inner-eye triangles come first so that, where
    target triangles overlap, the skin drawn later wins."""
    pts = np.concatenate([face_points(opened(landmarks)), anchors]).astype(np.float64)
    tri = Delaunay(pts).simplices.astype(np.int32)
    for group in (INNER_LIP, OUTER_LIP, RIGHT_EYE, LEFT_EYE):
        for a, b in zip(group, np.roll(group, -1)):
            tri = _force_edge(tri, pts, int(a), int(b))
    inside = np.zeros(len(tri), bool)
    for group in (INNER_LIP, RIGHT_EYE, LEFT_EYE):
        inside |= np.isin(tri, group).all(axis=1)
    return np.concatenate([tri[inside], tri[~inside]])


def _crosses(p: np.ndarray, a: int, b: int, c: int, d: int) -> bool:
    """Whether segments ab and cd cross at a point inside both."""

    def side(o: int, u: int, v: int) -> float:
        return float((p[u, 0] - p[o, 0]) * (p[v, 1] - p[o, 1]) - (p[u, 1] - p[o, 1]) * (p[v, 0] - p[o, 0]))

    return side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0


def _force_edge(tri: np.ndarray, pts: np.ndarray, a: int, b: int, max_flips: int = 16) -> np.ndarray:
    """Flip edges of a triangulation until it contains edge ab (a small constrained Delaunay step:
    the lip and eye contours must be mesh edges, or opening the mouth drags skin into it)."""
    tri = tri.copy()
    for _ in range(max_flips):
        has_a, has_b = (tri == a).any(axis=1), (tri == b).any(axis=1)
        if (has_a & has_b).any():
            return tri
        for i in np.flatnonzero(has_a):
            c, d = (int(v) for v in tri[i] if v != a)
            if not _crosses(pts, a, b, c, d):
                continue
            shares = (tri == c).any(axis=1) & (tri == d).any(axis=1)
            shares[i] = False
            j = int(np.flatnonzero(shares)[0])
            e = int(next(v for v in tri[j] if v not in (c, d)))
            if not (_crosses(pts, a, e, c, d)):  # quad a-c-e-d not convex: flipping would fold it
                return tri
            tri[i], tri[j] = (a, c, e), (a, e, d)
            break
        else:
            return tri
    return tri


def _affines(src: np.ndarray, dst: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """src, dst: (N, 2) points, tri: (M, 3) -> (M, 6) float32 rows (a, b, c, d, e, f) with
    src = (a x + b y + c, d x + e y + f) for (x, y) in the dst triangle."""
    d = dst[tri].astype(np.float64)  # (M, 3, 2)
    s = src[tri].astype(np.float64)
    e1, e2 = d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]  # (M, 2)
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    ok = np.abs(det) > 1e-6
    inv_det = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    # inverse of [e1 e2] (columns): maps a dst offset to barycentric (u, v)
    inv = np.stack([np.stack([e2[:, 1], -e2[:, 0]], 1), np.stack([-e1[:, 1], e1[:, 0]], 1)], 1) * inv_det[:, None, None]
    f1, f2 = s[:, 1] - s[:, 0], s[:, 2] - s[:, 0]
    lin = np.stack([f1, f2], 2) @ inv  # (M, 2, 2): src offset = lin @ dst offset
    off = s[:, 0] - np.einsum("mij,mj->mi", lin, d[:, 0])
    # a degenerate dst triangle covers (almost) no pixels: send its few to the src centroid
    off = np.where(ok[:, None], off, s.mean(axis=1))
    out = np.concatenate([lin[:, 0], off[:, :1], lin[:, 1], off[:, 1:]], axis=1)  # a b c d e f
    return out.astype(np.float32)


@dataclass
class MeshWarp:
    """A backward-map builder for one reference over one ROI.

    src: (N, 2) reference mesh points (face points then anchors) in crop pixels;
    triangles: (M, 3) from :func:`triangulate`; roi: (x0, y0, x1, y1) crop pixels, x1/y1 exclusive;
    grid_step: the map is computed every ``grid_step`` pixels and upsampled.
    """

    src: np.ndarray
    triangles: np.ndarray
    roi: tuple[int, int, int, int]
    grid_step: int = 2

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.roi
        g = self.grid_step
        self.size = (x1 - x0, y1 - y0)
        self.coarse = (-(-(x1 - x0) // g), -(-(y1 - y0) // g))  # ceil: (w, h) of the coarse grid
        cw, ch = self.coarse
        # coarse cell centres in crop pixels: cell i covers output pixels [x0 + i g, x0 + (i + 1) g), as
        # cv2.resize by a whole factor g aligns them; with x0, y0 multiples of g the lattice is global
        self._gx, self._gy = np.meshgrid(
            x0 + (np.arange(cw, dtype=np.float32) + 0.5) * g - 0.5,
            y0 + (np.arange(ch, dtype=np.float32) + 0.5) * g - 0.5,
        )
        self._origin = np.array([x0, y0], np.float32)
        self._ids = np.empty((ch, cw), np.int32)
        self.src = np.ascontiguousarray(self.src, np.float32)

    def displacement(self, dst: np.ndarray) -> np.ndarray:
        """dst: (N, 2) target mesh points -> (ch, cw, 2) float32 coarse backward displacement
        (source position minus output position) at the coarse grid cells."""
        aff = _affines(self.src, dst, self.triangles)
        # dst triangles in coarse-grid pixels, fixed point
        poly = (dst[self.triangles] - self._origin + 0.5) / self.grid_step - 0.5  # (M, 3, 2)
        poly = np.round(poly * (1 << _SHIFT)).astype(np.int32)
        ids = self._ids
        ids.fill(len(self.triangles) - 1)
        for i in range(len(poly)):
            cv2.fillConvexPoly(ids, poly[i], i, lineType=cv2.LINE_8, shift=_SHIFT)
        a = aff[ids]  # (ch, cw, 6)
        gx, gy = self._gx, self._gy
        d = np.empty(ids.shape + (2,), np.float32)
        d[..., 0] = a[..., 0] * gx + a[..., 1] * gy + a[..., 2] - gx
        d[..., 1] = a[..., 3] * gx + a[..., 4] * gy + a[..., 5] - gy
        return d

    def upsample(self, coarse: np.ndarray) -> np.ndarray:
        """(ch, cw, C) on the coarse grid -> (h, w, C) on the ROI's pixels (bilinear)."""
        g = self.grid_step
        if g == 1:
            return coarse
        cw, ch = self.coarse
        w, h = self.size
        return cv2.resize(coarse, (cw * g, ch * g), interpolation=cv2.INTER_LINEAR)[:h, :w]
