"""What a mesh warp cannot do by itself: a mouth interior where the reference shows none, and lids.

When the target opens the mouth wider than the reference, the warp stretches the reference's lip line (or
its few visible teeth) over the opening. :class:`MouthPainter` paints a synthesized interior over the
target's inner-lip polygon instead: a dark cavity, an upper and a lower teeth band that follow the lips,
shaded darker towards the corners, with feathered edges, blended in as the opening grows past the
reference's. Colours come from the reference (its lips, and its teeth when they show), so the interior
matches the photo's light.

Blinks start in the mesh, which keeps each eye opening as its own triangles: when a target closes the
lids those triangles collapse and the lid skin above is stretched down over the eye. :class:`EyelidPainter`
then evens out the crushed eye line that leaves with the lid's colour and draws a lash line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from facepose.face_layout import (
    EYE_LOWER,
    EYE_UPPER,
    INNER_LIP,
    LEFT_EYE,
    LOWER_INNER,
    OUTER_LIP,
    RIGHT_EYE,
    UPPER_INNER,
    eye_opening,
    mouth_aspect_ratio,
)

_SHIFT = 4  # sub-pixel bits for cv2 polygon drawing
# (upper lid points, the lower lid points under them, the eye's six points) for the image-left, -right eye
_EYES = ((EYE_UPPER[0], EYE_LOWER[0], RIGHT_EYE), (EYE_UPPER[1], EYE_LOWER[1], LEFT_EYE))
_DEFAULT_TEETH = np.array([228.0, 222.0, 208.0], np.float32)


def _poly_mask(shape: tuple[int, int], polys: list[np.ndarray]) -> np.ndarray:
    """(h, w), polygons in pixel coordinates -> (h, w) float32 coverage in [0, 1] (anti-aliased edges)."""
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(p * (1 << _SHIFT)).astype(np.int32) for p in polys], 255, cv2.LINE_AA, _SHIFT)
    return m.astype(np.float32) * (1.0 / 255.0)


def _region(frame_shape: tuple[int, ...], pts: np.ndarray, pad: float) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Integer bounds (lo, hi) of ``pts`` grown by ``pad`` and clipped to the frame, or None if empty."""
    lo = np.maximum(np.floor(pts.min(axis=0) - pad).astype(int), 0)
    hi = np.minimum(np.ceil(pts.max(axis=0) + pad).astype(int) + 1, [frame_shape[1], frame_shape[0]])
    return None if (hi <= lo).any() else (lo, hi)


def _blend(frame: np.ndarray, lo: np.ndarray, hi: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """frame[region] += alpha (h, w) * (colour (h, w, 3) or (3,) - frame[region]), in place."""
    region = frame[lo[1] : hi[1], lo[0] : hi[0]]
    region[...] = np.clip(region + alpha[..., None] * (colour - region) + 0.5, 0, 255).astype(np.uint8)


def _median_colour(image: np.ndarray, poly: np.ndarray, default: np.ndarray) -> np.ndarray:
    """The median RGB of ``image`` inside polygon ``poly`` (N, 2), or ``default`` when it covers nothing."""
    bounds = _region(image.shape, poly, 1)
    if bounds is None:
        return default
    lo, hi = bounds
    inside = _poly_mask((int(hi[1] - lo[1]), int(hi[0] - lo[0])), [poly - lo]) > 0.5
    px = image[lo[1] : hi[1], lo[0] : hi[0]][inside]
    return np.median(px, axis=0).astype(np.float32) if len(px) >= 4 else default


@dataclass
class MouthPainter:
    """Paints a mouth interior into frames. Build it once per reference with :meth:`from_reference`.

    ref_opening: the reference's :func:`~facepose.face_layout.mouth_aspect_ratio`; start, ramp: the
    interior begins to show when the target's exceeds ``ref_opening + start`` and is fully painted
    ``ramp`` later;
    cavity, teeth: RGB colours (float32 (3,)); the cavity is darkest at the top, redder at the bottom.
    Teeth bands have fixed heights (shares of the mouth width, at most a share of the gap), so a mouth
    that just parts shows mostly teeth and the dark cavity grows between them as it opens.
    """

    ref_opening: float
    cavity: np.ndarray
    tongue: np.ndarray
    teeth: np.ndarray
    start: float = 0.02
    ramp: float = 0.05
    upper_teeth: tuple[float, float] = (0.11, 0.4)  # band height: share of mouth width, max share of gap
    lower_teeth: tuple[float, float] = (0.05, 0.25)

    @classmethod
    def from_reference(
        cls, image: np.ndarray, landmarks: np.ndarray, start: float = 0.02, ramp: float = 0.05
    ) -> "MouthPainter":
        """image: (S, S, 3) uint8 reference crop, landmarks: (68, 2) in its pixels."""
        bounds = _region(image.shape, landmarks[OUTER_LIP], 2)
        lip = np.array([170.0, 95.0, 95.0], np.float32)
        teeth = None
        if bounds is not None:
            lo, hi = bounds
            patch = image[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float32).reshape(-1, 3)
            shape = (int(hi[1] - lo[1]), int(hi[0] - lo[0]))
            outer = _poly_mask(shape, [landmarks[OUTER_LIP] - lo]).reshape(-1)
            inner = _poly_mask(shape, [landmarks[INNER_LIP] - lo]).reshape(-1)
            lips = patch[(outer > 0.5) & (inner < 0.5)]
            if len(lips) >= 4:
                lip = np.median(lips, axis=0)
            inside = patch[inner > 0.5]
            if len(inside) >= 20:  # the reference shows its mouth: take the teeth colour from its bright part
                luma = inside @ np.array([0.299, 0.587, 0.114], np.float32)
                bright = inside[luma >= np.percentile(luma, 75)]
                if bright.mean() > lip.mean() + 20:
                    teeth = np.median(bright, axis=0)
        if teeth is None:
            teeth = _DEFAULT_TEETH * float(np.clip(lip.max() / 190.0, 0.6, 1.0))
        return cls(
            ref_opening=float(mouth_aspect_ratio(landmarks)),
            cavity=(lip * np.array([0.22, 0.11, 0.11], np.float32)).astype(np.float32),
            tongue=(lip * np.array([0.55, 0.28, 0.28], np.float32)).astype(np.float32),
            teeth=np.asarray(teeth, np.float32),
            start=start,
            ramp=ramp,
        )

    def strength(self, landmarks: np.ndarray) -> float:
        """landmarks: (68, 2) target -> how much interior to paint, in [0, 1]."""
        extra = float(mouth_aspect_ratio(landmarks)) - self.ref_opening - self.start
        return float(np.clip(extra / self.ramp, 0.0, 1.0))

    def paint(self, frame: np.ndarray, landmarks: np.ndarray) -> None:
        """frame: (S, S, 3) uint8, painted in place; landmarks: (68, 2) target in its pixels."""
        alpha = self.strength(landmarks)
        if alpha <= 0.0:
            self._paint_seam(frame, landmarks)
            return
        lips = landmarks[INNER_LIP].astype(np.float32)
        width = float(np.linalg.norm(landmarks[54] - landmarks[48]))
        gap = float(np.linalg.norm(landmarks[LOWER_INNER] - landmarks[UPPER_INNER], axis=-1).mean())
        sigma = max(0.7, 0.015 * width)
        bounds = _region(frame.shape, lips, 3 * sigma + 1)
        if bounds is None:
            return
        lo, hi = bounds
        shape = (int(hi[1] - lo[1]), int(hi[0] - lo[0]))
        pts = lips - lo
        # inner-lip contour halves: upper 60..64 left to right, lower 64, 65, 66, 67, 60
        upper, lower = pts[0:5], pts[[4, 5, 6, 7, 0]]
        up_h = min(self.upper_teeth[0] * width, self.upper_teeth[1] * gap)
        low_h = min(self.lower_teeth[0] * width, self.lower_teeth[1] * gap)
        teeth_polys = [
            np.concatenate([upper, upper[::-1] + [0.0, up_h]]),
            np.concatenate([lower, lower[::-1] - [0.0, low_h]]),
        ]
        mouth = cv2.GaussianBlur(_poly_mask(shape, [pts]), (0, 0), sigma)
        teeth = cv2.GaussianBlur(_poly_mask(shape, teeth_polys), (0, 0), 0.6 * sigma)[..., None]
        # the cavity lightens towards the tongue at the bottom; teeth sit in the lips' shadow at their
        # roots and recede into shadow towards the corners
        x = np.arange(shape[1], dtype=np.float32)
        y = np.arange(shape[0], dtype=np.float32)[:, None]
        ys = np.clip((y - pts[:, 1].min()) / max(gap, 1.0), 0, 1)
        cavity = self.cavity + (ys**2)[..., None] * (self.tongue - self.cavity)
        v_up = (y - np.interp(x, upper[:, 0], upper[:, 1])[None]) / max(up_h, 1.0)
        v_low = (np.interp(x, lower[::-1, 0], lower[::-1, 1])[None] - y) / max(low_h, 1.0)
        root = 0.78 + 0.22 * np.sin(np.pi * np.clip(np.minimum(np.abs(v_up), np.abs(v_low)), 0, 1))
        xs = (x + lo[0] - 0.5 * (landmarks[48, 0] + landmarks[54, 0])) / (0.5 * width)
        shade = (np.clip(1.0 - 0.6 * xs**2, 0.35, 1.0)[None] * root)[..., None]
        interior = cavity + teeth * (self.teeth * shade - cavity)  # (h, w, 3)
        _blend(frame, lo, hi, alpha * mouth, interior)

    def _paint_seam(self, frame: np.ndarray, landmarks: np.ndarray) -> None:
        """Where the target closes the lips tighter than the reference, the collapsed opening leaves a
        bright sliver of the reference's teeth: draw the dark line where closed lips meet over it."""
        opening = float(mouth_aspect_ratio(landmarks))
        if self.ref_opening < 0.02 or opening >= self.ref_opening:
            return
        alpha = float(np.clip(1.0 - opening / self.ref_opening, 0.0, 1.0))
        width = float(np.linalg.norm(landmarks[54] - landmarks[48]))
        upper = landmarks[[60, 61, 62, 63, 64]].astype(np.float32)
        lower = landmarks[[60, 67, 66, 65, 64]].astype(np.float32)
        line = 0.5 * (upper + lower)
        bounds = _region(frame.shape, line, 3 + 0.03 * width)
        if bounds is None:
            return
        lo, hi = bounds
        seam = np.zeros((int(hi[1] - lo[1]), int(hi[0] - lo[0])), np.uint8)
        fixed = np.round((line - lo) * (1 << _SHIFT)).astype(np.int32)
        cv2.polylines(seam, [fixed], False, 255, max(1, int(round(0.012 * width))), cv2.LINE_AA, _SHIFT)
        seam_a = cv2.GaussianBlur(seam.astype(np.float32) * (1.0 / 255.0), (0, 0), 0.7)
        _blend(frame, lo, hi, 0.75 * alpha * seam_a, self.cavity * 2.2)


@dataclass
class EyelidPainter:
    """Paints closed lids over eyes the target closes further than the reference has them.

    The mesh already stretches the upper lid down; this covers the crushed eye line it leaves with the
    lid colour (sampled just above each eye in the reference) and draws a lash line where the lids meet.
    ref_opening: (2,) the reference's :func:`eye_opening`; ref_gap: (2,) its lid gaps in pixels.
    """

    ref_opening: np.ndarray
    ref_gap: np.ndarray
    lid: np.ndarray  # (2, 3) RGB per eye
    lash: np.ndarray  # (2, 3)
    start: float = 0.35  # closure (1 - target opening / reference opening) where the paint begins ...
    full: float = 0.9  # ... and where it is complete

    @classmethod
    def from_reference(cls, image: np.ndarray, landmarks: np.ndarray) -> "EyelidPainter":
        """image: (S, S, 3) uint8 reference crop, landmarks: (68, 2) in its pixels."""
        lids, lashes, gaps = [], [], []
        skin = _median_colour(image, landmarks[[1, 2, 3, 31, 28]], np.array([200.0, 160.0, 140.0], np.float32))
        for upper, lower, eye in _EYES:
            width = float(np.linalg.norm(landmarks[eye[3]] - landmarks[eye[0]]))
            lid_line = landmarks[eye[[0, 1, 2, 3]]]
            band = np.concatenate([lid_line, lid_line[::-1] - [0.0, 0.3 * width]])  # the lid fold above the eye
            lid = _median_colour(image, band, skin)
            lids.append(lid)
            lashes.append(lid * 0.45)
            gaps.append(float(np.linalg.norm(landmarks[lower] - landmarks[upper], axis=-1).mean()))
        return cls(
            ref_opening=eye_opening(landmarks).astype(np.float32),
            ref_gap=np.array(gaps, np.float32),
            lid=np.array(lids, np.float32),
            lash=np.array(lashes, np.float32),
        )

    def paint(self, frame: np.ndarray, landmarks: np.ndarray) -> None:
        """frame: (S, S, 3) uint8, painted in place; landmarks: (68, 2) target in its pixels."""
        opening = eye_opening(landmarks)
        for k, (_, _, eye) in enumerate(_EYES):
            closure = 1.0 - float(opening[k]) / max(float(self.ref_opening[k]), 1e-6)
            t = float(np.clip((closure - self.start) / (self.full - self.start), 0.0, 1.0))
            if t <= 0.0:
                continue
            alpha = t * t * (3.0 - 2.0 * t)
            pts = landmarks[eye].astype(np.float32)
            width = float(np.linalg.norm(pts[3] - pts[0]))
            sigma = max(0.8, 0.08 * width)
            reach = 0.5 * float(self.ref_gap[k]) + 0.04 * width  # cover where the open eye was
            bounds = _region(frame.shape, pts, reach + 3 * sigma + 2)
            if bounds is None:
                continue
            lo, hi = bounds
            shape = (int(hi[1] - lo[1]), int(hi[0] - lo[0]))
            p = pts - lo
            up, down = np.array([0.0, reach]), np.array([0.0, 0.5 * reach])
            cover = np.array([p[0], p[1] - up, p[2] - up, p[3], p[4] + down, p[5] + down])
            mask = cv2.GaussianBlur(_poly_mask(shape, [cover]), (0, 0), sigma)
            _blend(frame, lo, hi, 0.9 * alpha * mask, self.lid[k])
            # the lash line where the lids meet: corner, the lid midpoints, corner
            line = _chaikin(np.array([p[0], 0.5 * (p[1] + p[5]), 0.5 * (p[2] + p[4]), p[3]]), 2)
            lash = np.zeros(shape, np.uint8)
            thick = max(1, int(round(0.035 * width)))
            fixed = np.round(line * (1 << _SHIFT)).astype(np.int32)
            cv2.polylines(lash, [fixed], False, 255, thick, cv2.LINE_AA, _SHIFT)
            lash_a = cv2.GaussianBlur(lash.astype(np.float32) * (1.0 / 255.0), (0, 0), 0.6)
            _blend(frame, lo, hi, 0.7 * alpha * lash_a, self.lash[k])


def _chaikin(points: np.ndarray, rounds: int) -> np.ndarray:
    """(N, 2) open polyline -> a smoother one (Chaikin corner cutting), ends kept."""
    for _ in range(rounds):
        a, b = points[:-1], points[1:]
        mid = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 2)
        points = np.concatenate([points[:1], mid, points[-1:]])
    return points


__all__ = ["EyelidPainter", "MouthPainter"]
