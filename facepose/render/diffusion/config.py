"""Typed configs of the diffusion backend.

:class:`ModelConfig` is the run-time section (where the weights are, dtype, steps, guidance, speed
switches) is defined in facepose.config with the other sections and re-exported here.
:class:`ArchConfig` holds the architecture of every component (``configs/model/<name>.yaml``:
``sd15`` for the real sizes, ``tiny`` for CPU tests); its component sections are passed straight to the
diffusers / transformers constructors, so their keys are those libraries' config keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facepose.config import ModelConfig
from facepose.errors import ConfigError

DTYPES = ("auto", "fp32", "fp16", "bf16")
ATTENTION_BACKENDS = ("sdpa", "math")
TEMPORAL_NORMS = ("frame", "clip")
MOTION_NORM_GROUPS = 32  # AnimateDiff / Moore-AnimateAnyone motion modules: GroupNorm(32, C) (motion.py)
LONG_VIDEO_MODES = ("auto", "context", "motion_frames")


@dataclass
class ArchConfig:
    """Sizes of every component (``configs/model/<name>.yaml``)."""

    name: str = "sd15"
    height: int = 512
    width: int = 512
    clip_length: int = 24  # frames denoised together (<= motion_max_seq_length)
    motion_frames: int = 2  # EMO: last frames of the previous clip given to the ReferenceNet
    temporal_norm: str = "frame"  # frame (AnimateDiff/Moore: GroupNorm per frame) | clip (diffusers: across frames)
    unet: Dict[str, Any] = field(default_factory=dict)  # UNet2DConditionModel config (both UNets)
    motion: Dict[str, Any] = field(default_factory=dict)  # motion-module settings (MotionAdapter names)
    vae: Dict[str, Any] = field(default_factory=dict)  # AutoencoderKL config
    image_encoder: Dict[str, Any] = field(default_factory=dict)  # transformers CLIPVisionConfig
    pose_guider: Dict[str, Any] = field(default_factory=dict)  # PoseGuider config
    face_locator: Dict[str, Any] = field(default_factory=dict)  # FaceLocator config
    scheduler: Dict[str, Any] = field(default_factory=dict)  # DDIMScheduler config


def arch_path(name: str, directory: str | Path | None = None) -> Path:
    """``<directory or config dir/model>/<name>.yaml``, or ``name`` itself when it is a YAML path."""
    if name.endswith((".yaml", ".yml")):
        return Path(name)
    if directory is None:
        from facepose.config import config_dir

        directory = config_dir() / "model"
    return Path(directory) / f"{name}.yaml"


def load_arch(name: str = "sd15", directory: str | Path | None = None) -> ArchConfig:
    """Read ``configs/model/<name>.yaml`` onto :class:`ArchConfig` (a typo fails here)."""
    path = arch_path(name, directory)
    if not path.is_file():
        raise ConfigError(f"model architecture {name!r} not found at {path}; choose a file in configs/model/ (sd15, tiny)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ArchConfig), OmegaConf.load(path))
        arch = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad model architecture {path}: {str(e).splitlines()[0]}") from None
    assert isinstance(arch, ArchConfig)
    check_arch(arch, str(path))
    return arch


def check_arch(arch: ArchConfig, where: str = "model architecture") -> None:
    if arch.temporal_norm not in TEMPORAL_NORMS:
        raise ConfigError(f"{where}: temporal_norm {arch.temporal_norm!r} is not one of {TEMPORAL_NORMS}")
    max_len = int(arch.motion.get("motion_max_seq_length", 32))
    if not 1 <= arch.clip_length <= max_len:
        raise ConfigError(f"{where}: clip_length {arch.clip_length} must be in 1..{max_len} (motion_max_seq_length)")
    if not 0 <= arch.motion_frames <= arch.clip_length:
        raise ConfigError(f"{where}: motion_frames {arch.motion_frames} must be in 0..clip_length")
    widths = [int(c) for c in arch.unet.get("block_out_channels", [])]
    if any(c % MOTION_NORM_GROUPS for c in widths):
        raise ConfigError(f"{where}: unet.block_out_channels {widths} must be multiples of {MOTION_NORM_GROUPS} "
                          f"(the motion modules' GroupNorm groups, as in AnimateDiff and Moore-AnimateAnyone)")


def check_model_config(cfg: ModelConfig) -> None:
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype {cfg.dtype!r} is not one of {DTYPES}")
    if cfg.attention not in ATTENTION_BACKENDS:
        raise ConfigError(f"model.attention {cfg.attention!r} is not one of {ATTENTION_BACKENDS}")
    if cfg.steps < 1:
        raise ConfigError(f"model.steps must be at least 1, got {cfg.steps}")
    if cfg.long_video not in LONG_VIDEO_MODES:
        raise ConfigError(f"model.long_video {cfg.long_video!r} is not one of {LONG_VIDEO_MODES}")
    if cfg.context_frames < 1 or not 0 <= cfg.context_overlap < cfg.context_frames:
        raise ConfigError(f"model.context_frames ({cfg.context_frames}) must be >= 1 and model.context_overlap "
                          f"({cfg.context_overlap}) in 0..context_frames-1")
