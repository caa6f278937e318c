"""Square face crops and the Face Locator mask.

The crop box is a square around the landmarks: side = the landmark box's longer side times
``1 + 2 * margin``, never larger than the image's shorter side, and moved (not shrunk) to lie inside
the image where it sticks out, so real pixels fill the crop. The image is never squashed: one scale for
x and y. Over a clip the box is one box for all frames (a robust union of the per-frame boxes), so the
crop does not jitter. A box that still extends past the image (one given by a caller) is padded with
black.

The Face Locator mask (EMO, Tian et al. 2024) is the landmark bounding box scaled by
``expand`` (1.2) about its centre, filled with 255; over a clip, the union of the frames' boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from facepose.config import FaceConfig
from facepose.errors import NoFaceError
from facepose.face_layout import is_seen, locator_box

CropBox = tuple[float, float, float]  # (cx, cy, side) in source pixels; cx - side/2 and side are whole numbers

# Over a clip, the box covers the landmark boxes between these percentiles of their edges: a few
# frames with a bad fit do not widen the crop for the whole clip.
UNION_PERCENTILES = (5.0, 95.0)


def crop_box(
    landmarks: np.ndarray,
    image_wh: tuple[int, int],
    margin: float = 0.6,
    visible: Optional[np.ndarray] = None,
) -> CropBox:
    """landmarks: (68, 2) or (T, 68, 2) in pixels of a ``image_wh`` = (W, H) image -> (cx, cy, side).

    One frame: side = landmark box's longer side * (1 + 2 * margin). A clip: the square around the
    robust union of the frames' landmark boxes (edge percentiles, see UNION_PERCENTILES), grown by
    2 * margin * the median face size; frames that are not ``visible`` (default: lost frames, all
    zero or NaN) are left out. Then clipped to the image's shorter side and moved inside the image.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim == 2:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"landmarks must be (68, 2) or (T, 68, 2), got {lm.shape}")
    keep = is_seen(lm) if visible is None else np.asarray(visible, bool) & is_seen(lm)
    if not keep.any():
        raise NoFaceError("no frame with a face to place the crop on; check the pose's scores")
    lm = lm[keep]
    lo, hi = lm.min(axis=1), lm.max(axis=1)  # (T, 2) per-frame landmark boxes
    face = np.median((hi - lo).max(axis=1))
    if len(lm) > 1:
        lo = np.percentile(lo, UNION_PERCENTILES[0], axis=0)
        hi = np.percentile(hi, UNION_PERCENTILES[1], axis=0)
    else:
        lo, hi = lo[0], hi[0]
    side = float((hi - lo).max() + 2 * margin * face)
    w, h = int(image_wh[0]), int(image_wh[1])
    side_i = int(round(min(side, w, h)))
    cx, cy = (lo + hi) / 2
    x0 = int(round(min(max(cx - side_i / 2, 0), w - side_i)))
    y0 = int(round(min(max(cy - side_i / 2, 0), h - side_i)))
    return (x0 + side_i / 2, y0 + side_i / 2, float(side_i))


def box_xyxy(box: CropBox) -> tuple[int, int, int, int]:
    """(cx, cy, side) -> whole-pixel (x0, y0, x1, y1)."""
    cx, cy, side = box
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    return x0, y0, x0 + s, y0 + s


def crop_image(image: np.ndarray, box: CropBox, size: int = 512) -> np.ndarray:
    """image: (H, W, C) uint8, box: (cx, cy, side) -> (size, size, C); outside the image is black."""
    x0, y0, x1, y1 = box_xyxy(box)
    h, w = image.shape[:2]
    patch = image[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    pads = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pads):
        patch = cv2.copyMakeBorder(patch, *pads, cv2.BORDER_CONSTANT, value=0)
    return resize_square(patch, size)


def resize_square(patch: np.ndarray, size: int) -> np.ndarray:
    """(s, s, C) -> (size, size, C). Shrinks by exact halvings (area averaging) while the ratio is 2 or
    more, then bilinear for the rest: OpenCV's INTER_AREA at a fractional ratio costs about 2 ms a
    frame at 720p (5x bilinear), and bilinear below 2x hardly aliases."""
    while patch.shape[0] >= 2 * size:
        half = (patch.shape[1] // 2, patch.shape[0] // 2)
        patch = cv2.resize(patch, half, interpolation=cv2.INTER_AREA)
    if patch.shape[0] == size and patch.shape[1] == size:
        return np.ascontiguousarray(patch)
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)


def to_crop(landmarks: np.ndarray, box: CropBox, size: int = 512) -> np.ndarray:
    """landmarks (..., 68, 2) in source pixels -> the same points in the pixels of the ``size`` crop."""
    x0, y0, x1, _ = box_xyxy(box)
    scale = size / float(x1 - x0)
    # pixel centres: source pixel i covers [i, i+1), so a point maps by its offset from the box edge
    return ((np.asarray(landmarks, np.float32) - np.array([x0, y0], np.float32) + 0.5) * scale - 0.5).astype(np.float32)


def face_mask(landmarks: np.ndarray, size: tuple[int, int], expand: float = 1.2) -> np.ndarray:
    """landmarks: (68, 2) or (T, 68, 2), size: (W, H) -> (H, W) uint8 mask, 255 inside the landmark box
    scaled by ``expand`` about its centre (the union over frames; lost frames are left out)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim == 2:
        lm = lm[None]
    lm = lm[is_seen(lm)]
    w, h = int(size[0]), int(size[1])
    mask = np.zeros((h, w), np.uint8)
    if len(lm) == 0:
        return mask
    box = locator_box(lm, expand)  # (T, 4)
    x0 = np.clip(np.floor(box[:, 0]), 0, w).astype(int)
    x1 = np.clip(np.ceil(box[:, 2]), 0, w).astype(int)
    y0 = np.clip(np.floor(box[:, 1]), 0, h).astype(int)
    y1 = np.clip(np.ceil(box[:, 3]), 0, h).astype(int)
    for a, b, cc, d in set(zip(x0, y0, x1, y1)):
        mask[b:d, a:cc] = 255
    return mask


@dataclass
class FaceCrop:
    """image: (S, S, 3) uint8 RGB; landmarks: (68, 2) float32 in crop pixels; box: (cx, cy, side) in
    the source image's pixels; mask: (S, S) uint8 Face Locator mask (0 or 255)."""

    image: np.ndarray
    landmarks: np.ndarray
    box: CropBox
    mask: np.ndarray

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return box_xyxy(self.box)


def crop_face(
    image: np.ndarray,
    cfg: Optional[FaceConfig] = None,
    detector=None,
    predictor=None,
    name: str = "reference",
) -> FaceCrop:
    """Detect the largest face in ``image`` ((H, W, 3) uint8 RGB, any size or aspect), find its 68
    landmarks and crop a ``cfg.crop_size`` square with ``cfg.crop_margin`` around them.
    NoFaceError naming ``name`` when there is no face."""
    from facepose.face.detect import FaceDetector
    from facepose.face.landmarks import get_landmark_model

    cfg = cfg or FaceConfig()
    detector = detector or FaceDetector(cfg)
    predictor = predictor or get_landmark_model(cfg)
    box = detector.detect_one(image, name=name)
    lm = predictor.predict(image, box)
    cbox = crop_box(lm, (image.shape[1], image.shape[0]), cfg.crop_margin)
    size = int(cfg.crop_size)
    crop_lm = to_crop(lm, cbox, size)
    return FaceCrop(
        image=crop_image(image, cbox, size),
        landmarks=crop_lm,
        box=cbox,
        mask=face_mask(crop_lm, (size, size), cfg.mask_expand),
    )


def crop_frames(frames: np.ndarray, box: CropBox, size: int = 512) -> np.ndarray:
    """frames: (T, H, W, 3) -> (T, size, size, 3), all with the same box."""
    return np.stack([crop_image(f, box, size) for f in frames])

