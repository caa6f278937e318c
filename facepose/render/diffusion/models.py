"""Pose Guider and Face Locator (AnimateAnyone Sec. 3.2; EMO Sec. 3.2), and the hook that adds their
features to the denoising UNet's ``conv_in`` output.

Both encoders are diffusers' ``ControlNetConditioningEmbedding`` (3x3 conv in, then per width a 3x3 conv
and a stride-2 3x3 conv, SiLU after each, a zero-initialised 3x3 conv out): with widths
(16, 32, 96, 256) it is key for key the ``pose_guider.pth`` Moore-AnimateAnyone released.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class _ConditioningEncoder(ModelMixin, ConfigMixin):
    """A ControlNet conditioning embedding as a saveable diffusers model; keys ``conv_in``, ``blocks.N``,
    ``conv_out`` exactly as ``ControlNetConditioningEmbedding`` (no prefix)."""

    def _build(self, conditioning_embedding_channels: int, conditioning_channels: int, block_out_channels: Sequence[int]) -> None:
        net = ControlNetConditioningEmbedding(conditioning_embedding_channels, conditioning_channels, tuple(block_out_channels))
        self.conv_in, self.blocks, self.conv_out = net.conv_in, net.blocks, net.conv_out  # conv_out is zero-initialised

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """condition: (N, C_in, H, W) in [0, 1] -> (N, C_out, H/8, W/8)"""
        return ControlNetConditioningEmbedding.forward(self, condition)  # type: ignore[arg-type]


class PoseGuider(_ConditioningEncoder):
    """Encodes the drawn pose image (RGB in [0, 1], DWPose-style dots on black) to the UNet's width."""

    @register_to_config
    def __init__(
        self,
        conditioning_embedding_channels: int = 320,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
    ):
        super().__init__()
        self._build(conditioning_embedding_channels, conditioning_channels, block_out_channels)


class FaceLocator(_ConditioningEncoder):
    """EMO's Face Locator: encodes the face-region mask (1 channel in [0, 1]; the landmark box expanded 1.2x,
    the union over the clip) so the face is drawn there and the rest of the frame stays still."""

    @register_to_config
    def __init__(
        self,
        conditioning_embedding_channels: int = 320,
        conditioning_channels: int = 1,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
    ):
        super().__init__()
        self._build(conditioning_embedding_channels, conditioning_channels, block_out_channels)


class ConvInAddition:
    """A forward hook on a UNet's ``conv_in``: ``sample = conv_in(x) + feature`` while a feature is set
    (AnimateAnyone adds the Pose Guider output there; diffusers' UNets have no such input, and a hook
    keeps their state-dict keys and blocks untouched).

    feature: (B*F, C, h, w), the UNet's batch-major frame order; None adds nothing.
    """

    def __init__(self, conv_in: nn.Module):
        self.feature: Optional[torch.Tensor] = None
        self.handle = conv_in.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.feature is None:
            return output
        return output + self.feature.to(output.dtype)

    @contextlib.contextmanager
    def adding(self, feature: Optional[torch.Tensor]) -> Iterator[None]:
        self.feature = feature
        try:
            yield
        finally:
            self.feature = None

    def remove(self) -> None:
        self.handle.remove()
