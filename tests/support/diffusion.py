"""Tiny inputs for the diffusion backend (a reference face, drawn poses, face masks), one call of the
pipeline, and Moore-AnimateAnyone's released folder layout written from a tiny pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facepose.render.diffusion.checkpoint import REFERENCE_OPTIONAL, diffusers_to_moore_keys

SIZE = 64  # tiny.yaml


# -- inputs ------------------------------------------------------------------------------------------
def reference_image(photo: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The astronaut's face, cropped square and resized: (size, size, 3) uint8."""
    return np.asarray(Image.fromarray(photo[20:260, 100:340]).resize((size, size), Image.BICUBIC))


def face_points(t: float, size: int = SIZE) -> np.ndarray:
    """68 points on an oval face whose jaw opens and head turns with t: (68, 2) pixels."""
    a = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    cx, cy = size * (0.5 + 0.08 * np.sin(t)), size * 0.5
    rx, ry = size * 0.25, size * (0.3 + 0.04 * np.sin(2 * t))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1).astype(np.float32)


def pose_images(n: int, size: int = SIZE, phase: float = 0.0) -> np.ndarray:
    """(n, size, size, 3) uint8: white 3x3 dots at face_points on black, as a drawn pose."""
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        for x, y in face_points(phase + i * 0.3, size).astype(int):
            out[i, max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = 255
    return out


def face_masks(n: int, size: int = SIZE) -> np.ndarray:
    out = np.zeros((n, size, size), np.uint8)
    out[:, size // 8: -size // 8, size // 6: -size // 6] = 255
    return out


def render(pipe, ref, pose, masks=None, seed: int = 0, steps: int = 2, **kw) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return pipe(ref, pose, masks, num_inference_steps=steps, generator=gen, **kw).frames



def write_moore_layout(pipe, root: Path, unet_config: dict) -> None:
    """Write ``pipe`` as Moore-AnimateAnyone's pretrained_weights/ folder, under their key names."""
    root.mkdir(parents=True)
    ref = {k: v.clone() for k, v in pipe.reference_unet.state_dict().items() if k not in REFERENCE_OPTIONAL}
    ref["conv_in.weight"] = ref["conv_in.weight"][:, :4].clone()  # released: no motion-frame channels
    den = pipe.denoising_unet.state_dict()
    torch.save(ref, root / "reference_unet.pth")
    torch.save({k: v.clone() for k, v in den.items() if ".motion_modules." not in k}, root / "denoising_unet.pth")
    torch.save({mk: v.clone() for k, v in den.items() if ".motion_modules." in k for mk in diffusers_to_moore_keys(k)},
               root / "motion_module.pth")
    torch.save({k: v.clone() for k, v in pipe.pose_guider.state_dict().items()}, root / "pose_guider.pth")
    (root / "stable-diffusion-v1-5" / "unet").mkdir(parents=True)
    (root / "stable-diffusion-v1-5" / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **unet_config}))
    pipe.vae.save_pretrained(root / "sd-vae-ft-mse")
    pipe.image_encoder.save_pretrained(root / "image_encoder")
