"""The Renderer protocol and the registry of backends (docs/design.md, "Contracts between layers").

A renderer is built once from config (it may load weights) and then renders many jobs:
``render(reference, pose, *, seed, progress) -> Iterator[frame]`` yields HxWx3 uint8 RGB frames one by
one, so the caller can stream them into the encoder and memory stays flat for any length.
Backends are found by name; heavy ones are imported inside their factory so the rest works without them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Protocol, runtime_checkable

import numpy as np

from facepose.config import Config
from facepose.errors import InputError
from facepose.pose.sequence import PoseSequence

ProgressFn = Callable[[int, int], None]  # (frames done, frames total)


@runtime_checkable
class Renderer(Protocol):
    name: str

    def render(
        self,
        reference: Any,
        pose: PoseSequence,
        *,
        seed: int = 0,
        progress: Optional[ProgressFn] = None,
        name: Optional[str] = None,
    ) -> Iterator[np.ndarray]:
        """reference: (H, W, 3) uint8 RGB photo, or a facepose.face.crop.FaceCrop already made from one; pose: the target sequence (any canvas; the renderer
        maps it onto its output size) -> yields len(pose) frames (S, S, 3) uint8. ``name`` (the
        reference's URI) is what error messages call the reference."""
        ...


RENDERERS: dict[str, Callable[..., Renderer]] = {}


def register_renderer(name: str) -> Callable[[Callable[..., Renderer]], Callable[..., Renderer]]:
    def deco(factory: Callable[..., Renderer]) -> Callable[..., Renderer]:
        RENDERERS[name] = factory
        return factory

    return deco


def get_renderer(name: str, cfg: Optional[Config] = None, **kwargs: Any) -> Renderer:
    """Build the renderer called ``name`` from the whole :class:`~facepose.config.Config` (None: the
    defaults); each factory passes on the sections it reads (warp: ``render.warp`` and ``face``)."""
    cfg = Config() if cfg is None else cfg
    if not isinstance(cfg, Config):
        raise TypeError(f"get_renderer takes the whole Config (its factories read several sections), got {type(cfg).__name__}")
    _load_builtin()
    if name not in RENDERERS:
        raise InputError(f"unknown renderer {name!r}; choose from {sorted(RENDERERS)}")
    return RENDERERS[name](cfg, **kwargs)


def _load_builtin() -> None:
    # Import for registration side effects; each backend module registers itself.
    import importlib

    for mod in ("facepose.render.warp", "facepose.render.diffusion"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
