"""The ``diffusion`` backend: AnimateAnyone + EMO's Face Locator and Motion Frames (docs/model.md).

Importing this package registers the renderer only; torch, diffusers and transformers are imported when
a name below is first used, so the ``warp`` backend and the CLI start fast without them.
"""

from __future__ import annotations

import importlib
from typing import Any

from facepose.render.diffusion import renderer as _renderer  # noqa: F401  (registers "diffusion")
from facepose.render.diffusion.config import ArchConfig, load_arch

_LAZY = {
    "FaceAnimationPipeline": "pipeline",
    "FaceAnimationOutput": "pipeline",
    "PoseGuider": "models",
    "FaceLocator": "models",
    "ConvInAddition": "models",
    "FrameGroupNorm": "motion",
    "set_temporal_norm": "motion",
    "ReferenceBank": "attention",
    "ReferenceReader": "attention",
    "ReferenceWriter": "attention",
    "install_reference_attention": "attention",
    "remove_reference_attention": "attention",
    "set_attention_backend": "attention",
    "build_pipeline": "build",
    "build_components": "build",
    "load_pipeline": "checkpoint",
    "save_pipeline": "checkpoint",
    "load_moore_animateanyone": "checkpoint",
    "DiffusionRenderer": "renderer",
}

__all__ = ["ArchConfig", "load_arch", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"facepose.render.diffusion.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'facepose.render.diffusion' has no attribute {name!r}")
