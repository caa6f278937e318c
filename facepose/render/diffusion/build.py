"""Build a pipeline from an architecture config with fresh (seeded, random) weights: for tests, the
benchmark, training from scratch, and, on the meta device, for checking checkpoint layouts."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from facepose.render.diffusion.config import ArchConfig, check_arch, load_arch
from facepose.render.diffusion.models import FaceLocator, PoseGuider
from facepose.render.diffusion.motion import _plain, denoising_unet_config, reference_unet_config


def build_components(arch: ArchConfig, device: Union[str, torch.device] = "cpu", unet: Optional[dict] = None) -> dict[str, Any]:
    """Every component of :class:`FaceAnimationPipeline` with default initialisation on ``device``
    (``"meta"`` builds shapes only). ``unet`` overrides ``arch.unet`` (e.g. an SD 1.5 folder's config)."""
    check_arch(arch, f"model architecture {arch.name!r}")
    with torch.device(device):
        components: dict[str, Any] = {
            "vae": AutoencoderKL(**_plain(arch.vae)),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**arch.image_encoder)),
            "reference_unet": UNet2DConditionModel(**reference_unet_config(arch, unet)),
            "denoising_unet": UNetMotionModel(**denoising_unet_config(arch, unet)),
            "pose_guider": PoseGuider(**_plain(arch.pose_guider)),
            "face_locator": FaceLocator(**_plain(arch.face_locator)),
        }
    for module in components.values():
        module.eval()  # inference mode, as from_pretrained leaves models
    components["scheduler"] = DDIMScheduler(**arch.scheduler)
    return components


def build_pipeline(arch: Union[ArchConfig, str] = "tiny", seed: int = 0, device: Union[str, torch.device] = "cpu"):
    """A :class:`FaceAnimationPipeline` with seeded random weights (``torch.manual_seed(seed)`` first)."""
    from facepose.render.diffusion.pipeline import FaceAnimationPipeline

    arch = load_arch(arch) if isinstance(arch, str) else arch
    torch.manual_seed(seed)
    components = build_components(arch, device)
    pipe = FaceAnimationPipeline(**components, clip_length=arch.clip_length, motion_frames=arch.motion_frames,
                                 temporal_norm=arch.temporal_norm)
    pipe.set_progress_bar_config(disable=True)
    return pipe
