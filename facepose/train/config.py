"""Typed config of training (the ``train:`` section), read from ``configs/train/<name>.yaml``.

One :class:`TrainConfig` describes a run of either kind:

- ``kind: diffusion``: the face-animation model (AnimateAnyone + EMO), ``stage: 1`` (ReferenceNet,
  denoising UNet, Pose Guider, Face Locator; motion modules off) or ``stage: 2`` (motion modules only);
- ``kind: audio2pose``: the learned Audio2Pose model (:mod:`facepose.pose.audio2pose_train`'s network).

Files in ``configs/train/`` hold the section's keys at top level (no ``train:`` wrapper) and merge in
order, so ``stage2.yaml tiny.yaml`` is stage 2 at toy size; ``key=value`` overrides come last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facepose.config import Config, config_dir, structured
from facepose.errors import ConfigError

KINDS = ("diffusion", "audio2pose")
PREDICTION_TYPES = ("epsilon", "v_prediction")
MIXED_PRECISION = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class DataConfig:
    """The curated dataset and what one sample holds (facepose.train.dataset)."""

    dataset: str = ""  # prefix of a curated dataset (docs/contracts.md), local or s3://
    size: int = 512  # frames, pose images and masks are resized to size x size
    num_frames: int = 1  # consecutive target frames per sample (1 in stage 1, 24 in stage 2)
    motion_frames: int = 2  # frames just before the targets, given to the ReferenceNet (EMO)
    reference_margin: int = 12  # the reference frame lies at least this many frames from the motion+target window
    point_radius: float = 3.0  # pose dot radius at 512, scaled to `size`
    mask_expand: float = 1.2  # Face Locator box: the landmark box scaled by this (EMO), union over the targets
    repeats: int = 1  # samples per clip per epoch (each a different window)
    loader_workers: int = 0  # DataLoader worker processes per training worker (0: decode in the training process)
    max_bad_clips: float = 0.5  # more than this share of clips unreadable: stop with an error


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up, then a constant rate."""

    lr: float = 1.0e-5
    weight_decay: float = 1.0e-2
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1.0e-8
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 turns clipping off


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion objective (Moore-AnimateAnyone's training recipe)."""

    prediction_type: str = "v_prediction"  # epsilon | v_prediction (the saved scheduler is set to match)
    scheduler: Dict[str, Any] = field(default_factory=dict)  # DDIMScheduler config keys over the model's (saved with it)
    noise_offset: float = 0.05  # per-sample, per-channel constant added to the noise (darker/brighter frames)
    uncond_ratio: float = 0.1  # share of samples trained without the reference (CLIP context and bank), for CFG
    motion_dropout: float = 0.1  # share of samples whose motion frames are the reference (as in a video's first clip)
    init_from: Optional[str] = None  # a pipeline to start from (save_pipeline folder or Moore layout); None: seeded random
    arch: str = "sd15"  # configs/model/<arch>.yaml: sizes when building from scratch or from the Moore layout
    zero_init_motion: bool = True  # from scratch: motion modules start as the identity (AnimateDiff's zero proj_out)
    validation_frames: int = 0  # frames of the validation render (0: data.num_frames)
    validation_steps: int = 10  # DDIM steps of the validation render
    validation_guidance: float = 3.5


@dataclass(frozen=True)
class Audio2PoseSection:
    """The learned Audio2Pose network (facepose.pose.audio2pose_train.Audio2PoseNet)."""

    hidden: int = 128  # (its mel bands are the curated dataset's: curate.n_mels)
    window: int = 96  # frames per training crop (4 s at 24 fps)


@dataclass(frozen=True)
class ScalingSection:
    """Ray Train workers (data parallel)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 0  # torch threads per worker; 0: cpus_per_worker


@dataclass(frozen=True)
class TrainConfig:
    """A training run (``train:`` section)."""

    kind: str = "diffusion"  # diffusion | audio2pose
    stage: int = 1  # diffusion only: 1 (image) or 2 (motion modules)
    name: Optional[str] = None  # run name; rerunning a name resumes it from its latest checkpoint. None: a new name
    output: str = "runs"  # storage prefix (local or s3://); a run lives in <output>/<name>/
    resume_from: Optional[str] = None  # start from this checkpoint (weights, optimizer, step); "latest": the run's own
    steps: int = 30000  # optimizer steps in total (a resumed run continues up to this)
    batch_size: int = 4  # samples per worker per step
    seed: int = 42
    log_every: int = 10  # steps between metric reports
    checkpoint_every: int = 1000  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 3
    validate_every: int = 1000  # steps between validation renders (0: never)
    mixed_precision: str = "fp32"  # fp32 (off) | fp16 | bf16: autocast (fp16 with a gradient scaler)
    gradient_checkpointing: bool = False
    ema: bool = False  # keep an exponential moving average of the trained weights (saved pipelines use it)
    ema_decay: float = 0.9999
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    audio2pose: Audio2PoseSection = field(default_factory=Audio2PoseSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    max_failures: int = 0  # Ray Train restarts a failed worker group from the latest checkpoint this many times


def train_config_dir() -> Path:
    return config_dir() / "train"


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Route the ``key=value`` overrides of a training run by their first key, read off the two config
    trees: ``train.<key>`` and the keys of :class:`TrainConfig` (``steps=100``, ``data.dataset=s3://ds``)
    go to the training config; the other sections of the main :class:`~facepose.config.Config`
    (``storage.endpoint=...``, ``batch.num_cpus=2``) to the run config. ``audio2pose.*`` is the training
    section (the main tree's ``audio2pose`` is inference only). -> (training overrides, run overrides)."""
    train, run = [], []
    for o in overrides:
        head = o.split("=", 1)[0].split(".", 1)[0]
        if head == "train" or head in TrainConfig.__dataclass_fields__ or head not in Config.__dataclass_fields__:
            train.append(o)  # unknown keys fail in the training config's structured merge, naming the key
        else:
            run.append(o)
    return train, run


def config_path(name: str | Path) -> Path:
    """``configs/train/<name>.yaml``, or ``name`` itself when it is a path to a YAML file."""
    text = str(name)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return Path(text)
    return train_config_dir() / f"{text}.yaml"


def load_train_config(files: Sequence[str | Path] = ("stage1",), overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then each file in order (a name in ``configs/train/`` or a path), then ``key=value``
    overrides (``steps=100``, ``data.dataset=s3://ds``; a leading ``train.`` is accepted).
    Raises ConfigError on a missing file, a typo or a value out of range."""
    layers: list[Any] = []
    try:
        for f in files:
            path = config_path(f)
            if not path.is_file():
                raise ConfigError(f"training config {f!r} not found at {path}; choose a file in configs/train/ (stage1, stage2, tiny, audio2pose)")
            layers.append(OmegaConf.load(path) or {})
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not key=value (e.g. steps=100)")
        layers.append(OmegaConf.from_dotlist([o[len("train."):] if o.startswith("train.") else o for o in overrides]))
        cfg = OmegaConf.to_object(OmegaConf.merge(structured(TrainConfig), *layers))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"bad training configuration{f' at {key}' if key else ''}: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, TrainConfig)
    check_train_config(cfg)
    return cfg


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the field for a value that cannot work."""
    def bad(msg: str) -> None:
        raise ConfigError(f"training config: {msg}")

    if cfg.kind not in KINDS:
        bad(f"kind {cfg.kind!r} is not one of {KINDS}")
    if cfg.kind == "diffusion" and cfg.stage not in (1, 2):
        bad(f"stage must be 1 (image) or 2 (motion modules), got {cfg.stage}")
    if cfg.diffusion.prediction_type not in PREDICTION_TYPES:
        bad(f"diffusion.prediction_type {cfg.diffusion.prediction_type!r} is not one of {PREDICTION_TYPES}")
    if cfg.mixed_precision not in MIXED_PRECISION:
        bad(f"mixed_precision {cfg.mixed_precision!r} is not one of {MIXED_PRECISION}")
    counts = {"steps": cfg.steps, "batch_size": cfg.batch_size, "log_every": cfg.log_every,
              "checkpoint_every": cfg.checkpoint_every, "keep_checkpoints": cfg.keep_checkpoints}
    for key, value in counts.items():
        if value < 1:
            bad(f"{key} must be at least 1, got {value}")
    if cfg.scaling.num_workers < 1:
        bad(f"scaling.num_workers must be at least 1, got {cfg.scaling.num_workers}")
    d = cfg.data
    if d.size < 8 or d.size % 8:
        bad(f"data.size must be a positive multiple of 8, got {d.size}")
    if d.num_frames < 1 or d.motion_frames < 0 or d.reference_margin < 0:
        bad("data.num_frames must be >= 1, data.motion_frames and data.reference_margin >= 0")
    if not 0 <= cfg.diffusion.uncond_ratio <= 1 or not 0 <= cfg.diffusion.motion_dropout <= 1:
        bad("diffusion.uncond_ratio and diffusion.motion_dropout are shares in [0, 1]")
    if not 0 < cfg.ema_decay < 1:
        bad(f"ema_decay must be in (0, 1), got {cfg.ema_decay}")
    if cfg.name is not None and (not cfg.name or "/" in cfg.name):
        bad(f"name {cfg.name!r} must be a non-empty name without '/'")


def train_config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """The inverse of ``dataclasses.asdict`` (configs travel to Ray workers as plain dicts)."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(structured(TrainConfig), OmegaConf.create(values)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad training configuration: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, TrainConfig)
    return cfg


def threads_per_worker(cfg: TrainConfig) -> int:
    return int(cfg.scaling.threads_per_worker) or max(1, int(round(cfg.scaling.cpus_per_worker)))
