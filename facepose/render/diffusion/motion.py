"""The denoising UNet with temporal motion modules: diffusers' ``UNetMotionModel`` (AnimateDiff), built
from the SD 1.5 UNet config plus motion-module settings, and the one behaviour fix it needs.

Temporal norm. The GroupNorm at the input of each motion module (``AnimateDiffTransformer3D.norm``) sees a
``(B, C, F, H, W)`` tensor in diffusers, so its statistics span all F frames of the clip. AnimateDiff's
and Moore-AnimateAnyone's ``TemporalTransformer3DModel`` normalise ``(B*F, C, H, W)``: each frame on its
own. The weights are the same (same keys and shapes), the outputs are not, so weights trained there run
here with :class:`FrameGroupNorm` swapped in (``temporal_norm="frame"``, the default). The swap replaces
only that norm module (a ``nn.GroupNorm`` subclass, same parameters), not the blocks; ``"clip"`` keeps
diffusers' behaviour. Per-frame statistics also make a frame's normalisation independent of the
clip's length and of the other frames in it.

Groups. That norm has 32 groups in AnimateDiff's and Moore's ``TemporalTransformer3DModel`` whatever the
UNet's ``norm_num_groups``; diffusers builds it with the UNet's. Both are 32 at SD 1.5 size, but a
smaller config (``configs/model/tiny.yaml``: 2) would otherwise be a different model from Moore's at that
size. The swap therefore always uses ``MOTION_NORM_GROUPS`` (32): group count is not a parameter, so keys
and shapes are unchanged, and the tiny model is architecturally Moore's motion module at toy width.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from facepose.errors import InputError
from facepose.render.diffusion.config import MOTION_NORM_GROUPS, TEMPORAL_NORMS, ArchConfig


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: x (B, C, F, H, W) -> (B, C, F, H, W); 4-D input as nn.GroupNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        y = x.transpose(1, 2).reshape(b * f, c, h, w)  # (B, C, F, H, W) -> (B*F, C, H, W)
        y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
        return y.reshape(b, f, c, h, w).transpose(1, 2)  # (B*F, C, H, W) -> (B, C, F, H, W)


def _swap_norm(old: nn.GroupNorm, cls: type[nn.GroupNorm], groups: int) -> nn.GroupNorm:
    if type(old) is cls and old.num_groups == groups:
        return old
    if old.num_channels % groups:
        raise ValueError(f"a motion module of {old.num_channels} channels cannot be normalised in {groups} groups "
                         f"(AnimateDiff/Moore-AnimateAnyone use {MOTION_NORM_GROUPS}); use block_out_channels divisible by it")
    new = cls(groups, old.num_channels, eps=old.eps, affine=old.affine, device="meta")
    new.weight, new.bias = old.weight, old.bias  # the same Parameters (device, dtype); only forward differs
    new.train(old.training)
    return new


def set_temporal_norm(unet: nn.Module, mode: str = "frame") -> int:
    """Make every motion module's input GroupNorm normalise per frame (``"frame"``, AnimateDiff/Moore) or
    across the clip (``"clip"``, diffusers), in ``MOTION_NORM_GROUPS`` groups. Returns how many norms were set."""
    if mode not in TEMPORAL_NORMS:
        raise InputError(f"unknown temporal_norm {mode!r}; choose from {sorted(TEMPORAL_NORMS)}")
    cls = FrameGroupNorm if mode == "frame" else nn.GroupNorm
    count = 0
    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            module.norm = _swap_norm(module.norm, cls, MOTION_NORM_GROUPS)
            count += 1
    return count


def reference_unet_config(arch: ArchConfig, unet: dict[str, Any] | None = None) -> dict[str, Any]:
    """UNet2DConditionModel kwargs of the ReferenceNet: the SD UNet whose input is the reference latent
    and ``motion_frames`` previous-clip latents, concatenated on channels."""
    config = dict(unet if unet is not None else arch.unet)
    config["in_channels"] = int(config.get("in_channels", 4)) * (1 + arch.motion_frames)
    return _plain(config)


def denoising_unet_config(arch: ArchConfig, unet: dict[str, Any] | None = None) -> dict[str, Any]:
    """UNetMotionModel kwargs from a UNet2DConditionModel config and the motion settings, as diffusers'
    ``UNetMotionModel.from_unet2d`` maps them (block types to their Motion versions)."""
    from diffusers import UNetMotionModel

    src = dict(unet if unet is not None else arch.unet)
    config: dict[str, Any] = dict(src)
    down, up = src["down_block_types"], src["up_block_types"]
    config["down_block_types"] = ["CrossAttnDownBlockMotion" if "CrossAttn" in t else "DownBlockMotion" for t in down]
    config["up_block_types"] = ["CrossAttnUpBlockMotion" if "CrossAttn" in t else "UpBlockMotion" for t in up]
    if not config.get("num_attention_heads"):
        config["num_attention_heads"] = config.get("attention_head_dim", 8)  # SD 1.5's legacy name
    config.update(arch.motion)
    accepted = set(inspect.signature(UNetMotionModel.__init__).parameters)
    return _plain({k: v for k, v in config.items() if k in accepted and not k.startswith("_")})


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
