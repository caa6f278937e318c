"""Training: the diffusion step (stages 1 and 2), the Audio2Pose step, and the loop around them.

Pure torch: Ray Train (``tasks/train.py``) hands :func:`fit` a :class:`Session` (rank, device, model
wrapping, checkpoint I/O, metric reports); :class:`LocalSession` runs the same loop in one process.

Diffusion (AnimateAnyone Sec. 3.3 with EMO's Face Locator and Motion Frames, Moore-AnimateAnyone's
recipe): the targets are VAE-encoded and noised at a uniform random timestep (plus a small per-channel
``noise_offset``); the ReferenceNet writes the reference + motion-frame latents into the bank at timestep
0; the denoising UNet, with the Pose Guider and Face Locator features added after ``conv_in`` and the
CLIP image embedding as context, predicts the noise (``epsilon``) or the velocity (``v_prediction``);
the loss is the MSE to that target.

- Stage 1: ReferenceNet, denoising UNet (spatial layers), Pose Guider and Face Locator train; the motion
  modules are frozen and bypassed (each is the identity), as in an image model.
- Stage 2: only the motion modules train. Every other weight has ``requires_grad=False`` and is left out
  of the optimizer, so it stays bit-identical.
- Classifier-free guidance: a ``uncond_ratio`` share of samples get no reference (a zero CLIP context and
  no bank), as the unconditional half at inference; ``motion_dropout`` samples get the reference as their
  motion frames, as a video's first clip does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepose import storage
from facepose.errors import ConfigError, FaceposeError, InputError
from facepose.timeline import FPS
from facepose.train.config import TrainConfig

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
PIPELINE_DIR = "pipeline"
AUDIO2POSE_DIR = "audio2pose"  # the Audio2PoseNet save_pretrained folder of a checkpoint
STATE_FORMAT = "facepose.train/1"
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


# -- which weights train ----------------------------------------------------------------------------
def is_motion_parameter(name: str) -> bool:
    """Parameters of the denoising UNet's temporal motion modules (AnimateDiff), mid block included."""
    return ".motion_modules." in f".{name}"


def motion_modules(unet: nn.Module) -> list[nn.Module]:
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return [m for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]


def zero_motion_modules(unet: nn.Module) -> int:
    """Zero every motion module's output projection, so each starts as the identity (AnimateDiff's
    ``zero_initialize``): a stage-1 model renders the same with its motion modules run or bypassed."""
    modules = motion_modules(unet)
    with torch.no_grad():
        for m in modules:
            m.proj_out.weight.zero_()
            m.proj_out.bias.zero_()
    return len(modules)


@contextlib.contextmanager
def motion_modules_bypassed(unet: nn.Module) -> Iterator[None]:
    """Run the denoising UNet without its motion modules (each returns its input) inside the block."""
    modules = motion_modules(unet)
    for m in modules:
        m.forward = _identity  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def _identity(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


def trainable_parameters(pipe: Any, stage: int) -> list[tuple[str, nn.Parameter]]:
    """Set ``requires_grad`` for ``stage`` on every component and return the trained (name, parameter)
    pairs in a fixed order. VAE and image encoder never train."""
    if stage not in (1, 2):
        raise ConfigError(f"training config: stage must be 1 or 2, got {stage}")
    named: list[tuple[str, nn.Parameter]] = []
    for component in ("vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider", "face_locator"):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for name, p in module.named_parameters():
            if component in ("vae", "image_encoder"):
                train = False
            elif stage == 1:
                train = not is_motion_parameter(name)
            else:
                train = component == "denoising_unet" and is_motion_parameter(name)
            p.requires_grad_(train)
            if train:
                named.append((f"{component}.{name}", p))
    return named


# -- the diffusion model as one trainable module ------------------------------------------------------
class FaceAnimationNet(nn.Module):
    """ReferenceNet + denoising UNet + Pose Guider + Face Locator of a pipeline, as one module for
    data-parallel wrapping. Shares the pipeline's modules, reference bank and conv_in hook."""

    def __init__(self, pipe: Any):
        super().__init__()
        self.reference_unet = pipe.reference_unet
        self.denoising_unet = pipe.denoising_unet
        self.pose_guider = pipe.pose_guider
        self.face_locator = pipe.face_locator
        self.bank = pipe.bank
        self.conv_in_addition = pipe.conv_in_addition

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, reference_input: torch.Tensor, context: torch.Tensor,
                pose: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """noisy: (B, 4, F, h, w); timesteps: (B,); reference_input: (B_c, 4*(1+m), h, w) reference and
        motion latents of the last B_c samples (the first B - B_c get no reference); context: (B, 1, D);
        pose: (B*F, 3, H, W) and mask: (B*F, 1, H, W) in [0, 1] -> prediction (B, 4, F, h, w).
        Call inside ``bank.reading(F, uncond=B - B_c)``, and keep it open through backward (gradient
        checkpointing re-runs the readers)."""
        frames = noisy.shape[2]
        self.bank.clear()
        n_cond = reference_input.shape[0]
        if n_cond:
            train_ref = any(p.requires_grad for p in self.reference_unet.parameters())
            with torch.set_grad_enabled(train_ref and torch.is_grad_enabled()), self.bank.writing():
                t0 = torch.zeros(n_cond, dtype=torch.long, device=noisy.device)
                self.reference_unet(reference_input, t0, encoder_hidden_states=context[-n_cond:], return_dict=False)
        train_cond = any(p.requires_grad for p in self.pose_guider.parameters())
        with torch.set_grad_enabled(train_cond and torch.is_grad_enabled()):
            features = self.pose_guider(pose)
            if mask is not None and self.face_locator is not None:
                features = features + self.face_locator(mask)
        ctx = context.repeat_interleave(frames, dim=0)  # (B, 1, D) -> (B*F, 1, D)
        with self.conv_in_addition.adding(features):
            return self.denoising_unet(noisy, timesteps, encoder_hidden_states=ctx, return_dict=False)[0]


def noise_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the UNet learns to predict: the noise (epsilon) or the velocity sqrt(a) * noise - sqrt(1 - a) * x0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ConfigError(f"training config: unknown prediction_type {prediction_type!r}")


class DiffusionStep:
    """One training step of :class:`FaceAnimationPipeline` for ``cfg.stage`` (see the module docstring).

    pipe: the pipeline, on ``device``; its scheduler is set to ``cfg.diffusion.prediction_type`` so a
    saved checkpoint samples with what it learned."""

    def __init__(self, pipe: Any, cfg: TrainConfig, device: torch.device | str = "cpu"):
        from diffusers import DDIMScheduler

        self.cfg = cfg
        self.device = torch.device(device)
        d = cfg.diffusion
        scheduler = DDIMScheduler.from_config({**pipe.scheduler.config, **dict(d.scheduler), "prediction_type": d.prediction_type})
        if d.prediction_type == "epsilon" and scheduler.config.rescale_betas_zero_snr:
            raise ConfigError("training config: epsilon prediction cannot sample with zero-terminal-SNR betas "
                              "(rescale_betas_zero_snr); use diffusion.prediction_type=v_prediction, or set "
                              "diffusion.scheduler.rescale_betas_zero_snr=false")
        pipe.scheduler = scheduler
        self.pipe = pipe
        self.scheduler = scheduler
        self.named_parameters = trainable_parameters(pipe, cfg.stage)
        self.parameters = [p for _, p in self.named_parameters]
        self.net = FaceAnimationNet(pipe)
        if cfg.gradient_checkpointing:
            pipe.reference_unet.enable_gradient_checkpointing()
            pipe.denoising_unet.enable_gradient_checkpointing()
        self.motion_frames = int(pipe.config.motion_frames)

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.mixed_precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST[self.cfg.mixed_precision])

    @torch.no_grad()
    def encode(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Frozen encoders and the random draws of a step -> noisy latents, targets and conditions,
        batch-ordered with the samples that get no reference first."""
        pipe, d = self.pipe, self.cfg.diffusion
        dev, vae = self.device, self.pipe.vae
        pixels = batch["pixel_values"].to(dev)  # (B, F, 3, H, W)
        B, Fr = pixels.shape[:2]
        m = self.motion_frames
        scale = vae.config.scaling_factor

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator).to(dev)

        # 1. Latents: targets sampled from the VAE posterior, reference and motion frames at its mean (as at inference)
        with self.autocast:
            flat = pixels.flatten(0, 1).to(vae.dtype)  # (B, F, 3, H, W) -> (B*F, 3, H, W)
            posterior = vae.encode(flat).latent_dist
            eps = torch.randn(posterior.mean.shape, generator=generator).to(dev, posterior.mean.dtype)
            latents = (posterior.mean + posterior.std * eps) * scale
            latents = latents.unflatten(0, (B, Fr)).transpose(1, 2).float()  # (B*F, 4, h, w) -> (B, 4, F, h, w)
            reference = vae.encode(batch["reference_values"].to(dev, vae.dtype)).latent_dist.mean.float() * scale  # (B, 4, h, w)
            if m:
                motion = vae.encode(batch["motion_values"].to(dev, vae.dtype).flatten(0, 1)).latent_dist.mean.float() * scale
                motion = motion.unflatten(0, (B, m))  # (B*m, 4, h, w) -> (B, m, 4, h, w)
            else:
                motion = reference[:, None, :, :, :][:, :0]
            # 2. CLIP image embedding: the cross-attention context
            context = pipe.image_encoder(pixel_values=batch["clip_reference"].to(dev, pipe.image_encoder.dtype)).image_embeds
        context = context.float().unsqueeze(1)  # (B, D) -> (B, 1, D)

        # 3. Motion-frame dropout (first clip: the reference repeated) and reference dropout (CFG)
        first_clip = rand(B) < d.motion_dropout
        motion = torch.where(first_clip[:, None, None, None, None], reference[:, None].expand_as(motion), motion)
        reference_input = torch.cat([reference, motion.flatten(1, 2)], dim=1)  # (B, 4*(1+m), h, w), frame after frame
        uncond = rand(B) < d.uncond_ratio
        order = torch.cat([torch.nonzero(uncond).flatten(), torch.nonzero(~uncond).flatten()])
        n_uncond = int(uncond.sum())
        context = torch.where(uncond[:, None, None], torch.zeros_like(context), context)

        # 4. Noise (with offset), timesteps, the noisy latents and the target
        noise = torch.randn(latents.shape, generator=generator).to(dev)
        if d.noise_offset:
            noise = noise + d.noise_offset * torch.randn((B, latents.shape[1], 1, 1, 1), generator=generator).to(dev)
        steps = int(self.scheduler.config.num_train_timesteps)
        timesteps = torch.randint(0, steps, (B,), generator=generator).to(dev)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = noise_target(self.scheduler, latents, noise, timesteps, d.prediction_type)

        pose = batch["pose"].to(dev)  # (B, F, 3, H, W)
        mask = batch["mask"].to(dev)[:, None].expand(-1, Fr, -1, -1, -1)  # the clip's mask for each frame
        o = order
        return {
            "noisy": noisy[o], "timesteps": timesteps[o], "target": target[o], "context": context[o],
            "reference_input": reference_input[o][n_uncond:], "n_uncond": torch.tensor(n_uncond),
            "pose": pose[o].flatten(0, 1), "mask": mask[o].flatten(0, 1),  # (B, F, C, H, W) -> (B*F, C, H, W)
        }

    def forward_backward(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator,
                         scaler: Optional[Any] = None) -> float:
        """Loss of one batch, backpropagated into the trained weights -> the loss value.
        ``model`` is :attr:`net`, or its data-parallel wrapper."""
        x = self.encode(batch, generator)
        frames = x["noisy"].shape[2]
        stage1 = self.cfg.stage == 1
        with contextlib.ExitStack() as stack:
            if stage1:
                stack.enter_context(motion_modules_bypassed(self.pipe.denoising_unet))
            stack.enter_context(self.pipe.bank.reading(frames, uncond=int(x["n_uncond"])))
            with self.autocast:
                pred = model(x["noisy"], x["timesteps"], x["reference_input"], x["context"], x["pose"], x["mask"])
            loss = F.mse_loss(pred.float(), x["target"].float())
            (scaler.scale(loss) if scaler is not None else loss).backward()
        self.pipe.bank.clear()
        return float(loss.detach())


# -- sessions: where the loop runs --------------------------------------------------------------------
class Session(Protocol):
    """What the loop needs from its runner (Ray Train in tasks/train.py, or :class:`LocalSession`)."""

    rank: int
    world_size: int
    device: torch.device

    def wrap(self, module: nn.Module) -> nn.Module:
        """Move to the device and wrap for data parallelism."""

    def latest_checkpoint(self) -> Optional[Path]:
        """A local folder holding the checkpoint to resume from, or None."""

    def report(self, metrics: dict[str, float], checkpoint: Optional[Path], name: Optional[str] = None) -> None:
        """Every rank calls this at the same steps; rank 0 passes its checkpoint folder, every rank
        the checkpoint's ``name`` (``checkpoint_<step>``) when one is made."""


@dataclass
class LocalSession:
    """One process, no data parallelism; checkpoints are kept as folders under ``directory``."""

    directory: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    reports: list[dict[str, float]] = field(default_factory=list)
    resume: Optional[Path] = None

    def wrap(self, module: nn.Module) -> nn.Module:
        return module.to(self.device)

    def latest_checkpoint(self) -> Optional[Path]:
        found = sorted(p for p in Path(self.directory).glob("checkpoint_*") if (p / STATE_FILE).is_file())
        return found[-1] if found else self.resume

    def report(self, metrics: dict[str, float], checkpoint: Optional[Path], name: Optional[str] = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            import shutil

            dst = Path(self.directory) / (name or f"checkpoint_{int(metrics['step']):08d}")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(checkpoint, dst)


# -- tasks: what trains ---------------------------------------------------------------------------------
def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class DiffusionTask:
    """The face-animation model on a curated dataset."""

    kind = "diffusion"

    def __init__(self, cfg: TrainConfig, session: Session, checkpoint: Optional[Path], clips: Optional[list] = None):
        from facepose.train.dataset import CuratedClips

        self.cfg, self.session = cfg, session
        self.pipe = self._build(checkpoint)
        self.pipe.to(session.device)
        self.step = DiffusionStep(self.pipe, cfg, session.device)
        self.net = self.step.net
        self.parameters = self.step.parameters
        clip_size = int(self.pipe.image_encoder.config.image_size)
        self.dataset = CuratedClips(cfg.data, clip_size=clip_size, seed=cfg.seed, clips=clips)
        self.skipped: set[str] = set()
        self._validation: Optional[dict] = None

    def _build(self, checkpoint: Optional[Path]) -> Any:
        from facepose.config import ModelConfig
        from facepose.render.diffusion.build import build_pipeline
        from facepose.render.diffusion.checkpoint import load_pipeline
        from facepose.render.diffusion.config import load_arch

        d = self.cfg.diffusion
        if checkpoint is not None:
            pipe = load_pipeline(checkpoint / PIPELINE_DIR)
        elif d.init_from:
            pipe = load_pipeline(d.init_from, model=ModelConfig(checkpoint=d.init_from, arch=d.arch), arch=load_arch(d.arch))
        else:
            pipe = build_pipeline(d.arch, seed=self.cfg.seed)
            if d.zero_init_motion:
                zero_motion_modules(pipe.denoising_unet)
        if int(pipe.config.motion_frames) != self.cfg.data.motion_frames:
            raise ConfigError(f"training config: data.motion_frames={self.cfg.data.motion_frames} but the model takes "
                              f"{pipe.config.motion_frames} motion frames; set data.motion_frames={pipe.config.motion_frames}")
        for module in (pipe.reference_unet, pipe.denoising_unet, pipe.pose_guider, pipe.face_locator):
            if module is not None:
                module.train()
        return pipe

    def batches(self, epoch: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Full batches of this worker's share of the dataset, epoch after epoch from ``epoch``."""
        from torch.utils.data import DataLoader

        from facepose.train.dataset import EpochBatches, collate

        s, w = self.session, self.cfg.data.loader_workers
        sampler = EpochBatches(len(self.dataset), self.cfg.batch_size, s.rank, s.world_size, self.cfg.seed, epoch)
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=w, persistent_workers=w > 0)
        for batch in loader:
            yield min(batch["epoch"]), batch

    def forward_backward(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator, scaler: Any) -> tuple[float, int]:
        self.skipped.update(batch["skipped"])
        clips = len(self.dataset.clips)
        if len(self.skipped) > self.cfg.data.max_bad_clips * clips:
            raise InputError(f"{len(self.skipped)} of {clips} clips of curated dataset {self.cfg.data.dataset} are unreadable "
                             f"(more than data.max_bad_clips={self.cfg.data.max_bad_clips}; first: {sorted(self.skipped)[0]}); "
                             "recurate them or raise data.max_bad_clips")
        return self.step.forward_backward(model, batch, generator, scaler), int(batch["pixel_values"].shape[0])

    def save(self, directory: Path) -> None:
        from facepose.render.diffusion.checkpoint import save_pipeline

        save_pipeline(self.pipe, directory / PIPELINE_DIR)

    def validate(self, step: int, run_uri: Optional[str]) -> Optional[str]:
        """Render the fixed reference and pose with the current weights -> the mp4's URI."""
        if run_uri is None:
            return None
        from facepose.media.video import write_video

        d = self.cfg.diffusion
        if self._validation is None:
            self._validation = self.dataset.validation_inputs(d.validation_frames or self.cfg.data.num_frames)
        v = self._validation
        modules = [self.pipe.reference_unet, self.pipe.denoising_unet, self.pipe.pose_guider, self.pipe.face_locator]
        for module in modules:
            module.eval()
        try:
            out = self.pipe(v["reference"], v["pose_images"], v["mask"], num_inference_steps=d.validation_steps,
                            guidance_scale=d.validation_guidance, generator=torch.Generator("cpu").manual_seed(self.cfg.seed))
        finally:
            for module in modules:
                module.train()
        uri = storage.join(run_uri, "validation", f"step_{step:08d}.mp4")
        write_video(uri, out.frames, fps=FPS)
        return uri


class Audio2PoseTask:
    """The learned Audio2Pose network on the curated dataset's clips with audio: their curated log-mel
    rows (``audio/``) and landmarks (``poses/``); each worker loads its share of the clips, the
    normalisation is computed over all of them (:mod:`facepose.pose.audio2pose_train` holds the model,
    the loss and the normalisation)."""

    kind = "audio2pose"

    def __init__(self, cfg: TrainConfig, session: Session, checkpoint: Optional[Path], clips: Optional[list] = None):
        from facepose.pose import audio2pose_train as a2p
        from facepose.train.dataset import audio_pairs, read_clips

        self.cfg, self.session = cfg, session
        a = cfg.audio2pose
        clips = [c for c in (clips if clips is not None else read_clips(cfg.data.dataset, min_frames=8)) if c.has_audio and c.frames >= 8]
        mine = clips[session.rank::session.world_size] if len(clips) >= session.world_size else clips
        pairs, skipped = audio_pairs(cfg.data.dataset, mine)  # no clip with audio: InputError
        self.skipped = set(skipped)
        self.features = a2p.AudioShards(cfg.data.dataset)
        n_mels = self.features.n_mels(clips[0].video_id)  # the same on every worker: the dataset's front end
        self.data = self._prepare(pairs, n_mels)
        if checkpoint is not None:
            self.net = a2p.read_audio2pose(str(checkpoint / AUDIO2POSE_DIR))
            if self.net.config.n_mels != n_mels:
                raise ConfigError(f"checkpoint {checkpoint} was trained on {self.net.config.n_mels} mel bands, "
                                  f"curated dataset {cfg.data.dataset} has {n_mels}")
        else:
            self.net = a2p.Audio2PoseNet(n_mels=n_mels, hidden=a.hidden)
            sums = a2p.normalisation_sums(self.data, n_mels)
            if _dist():
                torch.distributed.all_reduce(sums)
            self.net.set_normalisation(*a2p.normalisation(sums, n_mels, cfg.data.dataset))
        self.net.to(session.device).train()
        self.parameters = list(self.net.parameters())
        self.window = max(8, min(a.window, min((len(m) for m, _, _ in self.data), default=a.window)))

    def _prepare(self, pairs: list, n_mels: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        from facepose.pose.audio2pose_train import example

        data = []
        for clip, pose in pairs:
            try:
                mel = self.features.get(clip.video_id, clip.clip_id)
                if mel.shape[1] != n_mels:
                    raise InputError(f"clip {clip.clip_id} has {mel.shape[1]} mel bands, the dataset's first {n_mels}; recurate {clip.video_id}")
                data.append(example(mel, pose, clip.clip_id))
            except FaceposeError as e:
                self.skipped.add(clip.clip_id)
                log.warning("skipping clip %s: %s", clip.clip_id, e)
        if not data and not _dist():
            raise InputError(f"no usable clip with audio in curated dataset {self.cfg.data.dataset}")
        return data

    def batches(self, epoch: int) -> Iterator[tuple[int, dict[str, Any]]]:
        if not self.data:
            raise InputError(f"worker {self.session.rank} has no usable clip with audio in {self.cfg.data.dataset}")
        rng = np.random.default_rng([self.cfg.seed, self.session.rank, epoch])
        while True:
            xs, ys, ms = [], [], []
            for _ in range(self.cfg.batch_size):
                mel, tgt, mask = self.data[int(rng.integers(len(self.data)))]
                w = min(self.window, len(mel))
                s = int(rng.integers(0, len(mel) - w + 1))
                xs.append(mel[s:s + w])
                ys.append(tgt[s:s + w])
                ms.append(mask[s:s + w])
            w = min(len(x) for x in xs)
            yield epoch, {"mel": torch.from_numpy(np.stack([x[:w] for x in xs]).astype(np.float32)),
                          "target": torch.from_numpy(np.stack([y[:w] for y in ys]).astype(np.float32)),
                          "mask": torch.from_numpy(np.stack([k[:w] for k in ms]).astype(np.float32))}

    def forward_backward(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator, scaler: Any) -> tuple[float, int]:
        from facepose.pose.audio2pose_train import masked_mse

        dev = self.session.device
        x, y, m = batch["mel"].to(dev), batch["target"].to(dev), batch["mask"].to(dev)
        loss = masked_mse(model(x), y / self.net.target_std, m)  # the model normalises its input itself
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return float(loss.detach()), int(x.shape[0])

    def save(self, directory: Path) -> None:
        from facepose.pose.audio2pose_train import save_audio2pose

        save_audio2pose(self.net, str(directory / AUDIO2POSE_DIR))

    def validate(self, step: int, run_uri: Optional[str]) -> Optional[str]:
        return None


TASKS = {"diffusion": DiffusionTask, "audio2pose": Audio2PoseTask}


def build_task(cfg: TrainConfig, session: Session, checkpoint: Optional[Path], clips: Optional[list] = None) -> Any:
    """The model, data and step of ``cfg.kind``; ``clips``: the dataset's clip list (default: read its index)."""
    if cfg.kind not in TASKS:
        raise InputError(f"unknown training kind {cfg.kind!r}; choose from {sorted(TASKS)}")
    return TASKS[cfg.kind](cfg, session, checkpoint, clips)


# -- the loop -----------------------------------------------------------------------------------------
@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.is_file():
        raise InputError(f"checkpoint {directory} has no {STATE_FILE}; pass a checkpoint folder written by facepose training")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only: no pickled code
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise InputError(f"{path} is not a facepose training checkpoint ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(f"{path} is not a facepose training checkpoint")
    return state


def fetch_checkpoint(uri: str, directory: Path) -> Path:
    """A local folder holding the checkpoint at ``uri``: the folder itself, or a copy of an ``s3://``
    prefix downloaded into ``directory``. Raises InputError when there is no checkpoint there."""
    if not storage.is_remote(uri):
        path = Path(storage.parse(uri).path)
        if not (path / STATE_FILE).is_file():
            raise InputError(f"no training checkpoint at {uri} (no {STATE_FILE}); pass a checkpoint_* folder of a run")
        return path
    prefix = uri.rstrip("/")
    objects = list(storage.listdir(prefix))
    if not any(o.endswith("/" + STATE_FILE) for o in objects):
        raise InputError(f"no training checkpoint at {uri} (no {STATE_FILE}); pass a checkpoint_* prefix of a run")
    for obj in objects:
        dst = directory / obj[len(prefix) + 1:]
        dst.parent.mkdir(parents=True, exist_ok=True)
        storage.download(obj, dst)
    return directory


def latest_checkpoint_uri(run_uri: str) -> Optional[str]:
    """The newest ``checkpoint_<step>`` folder of a run (by step), or None."""
    names = set()
    for uri in storage.listdir(run_uri):
        rest = uri[len(run_uri.rstrip("/")) + 1:]
        head, _, tail = rest.partition("/")
        if head.startswith("checkpoint_") and tail == STATE_FILE:
            names.add(head)
    return storage.join(run_uri, max(names)) if names else None


def _check_resume(cfg: TrainConfig, state: dict[str, Any], where: Path) -> None:
    if state["kind"] != cfg.kind or (cfg.kind == "diffusion" and state["stage"] != cfg.stage):
        hint = f"; to start stage {cfg.stage} from it set diffusion.init_from={where / PIPELINE_DIR}" if cfg.kind == "diffusion" else ""
        raise ConfigError(f"checkpoint {where} is a {state['kind']} stage-{state['stage']} checkpoint, this run trains "
                          f"{cfg.kind} stage {cfg.stage}{hint}")


def _optimizer_step(optimizer: torch.optim.Optimizer) -> int:
    """Adam's own step count (restored with the optimizer state; 0 before the first step): the largest
    over the parameters (one without a gradient in a step, e.g. the ReferenceNet when every sample
    dropped its reference, is not stepped)."""
    steps = [int(st["step"]) for st in optimizer.state.values() if "step" in st]
    return max(steps, default=0)


def fit(cfg: TrainConfig, session: Session, run_uri: Optional[str] = None, clips: Optional[list] = None) -> dict[str, Any]:
    """Train ``cfg`` to ``cfg.steps`` optimizer steps, resuming from ``session.latest_checkpoint()``.

    Reports metrics (loss, lr, samples/s, skipped clips, ...) every ``log_every`` steps, checkpoints
    every ``checkpoint_every`` steps and at the end, renders a validation video every
    ``validate_every`` steps into ``<run_uri>/validation/`` and appends the metric rows to
    ``<run_uri>/metrics.jsonl`` (rank 0). ``clips``: the dataset's :class:`ClipEntry` list (default:
    read from its index). Returns the last metrics."""
    checkpoint = session.latest_checkpoint()
    state = LoopState()
    saved = read_state(checkpoint) if checkpoint is not None else None
    if saved is not None:
        _check_resume(cfg, saved, checkpoint)
    torch.manual_seed(cfg.seed)
    task = build_task(cfg, session, checkpoint, clips)
    params = task.parameters
    if not params:
        raise ConfigError(f"training config: nothing to train for {cfg.kind} stage {cfg.stage}")
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
    warmup = max(0, o.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    fp16 = cfg.mixed_precision == "fp16"
    scaler = torch.amp.GradScaler(session.device.type) if fp16 else None
    ema = None
    if cfg.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.ema_decay)
    if saved is not None:
        if "trainable" in saved:  # an EMA run saved the EMA weights as its model; these are the raw ones
            with torch.no_grad():
                for p, v in zip(params, saved["trainable"]):
                    p.copy_(v)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["lr_scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        if ema is not None and saved.get("ema"):
            ema.load_state_dict(saved["ema"])
        state = LoopState(step=int(saved["step"]), epoch=int(saved["epoch"]), resumed_from=int(saved["step"]),
                          history=list(saved.get("history", [])), skipped=list(saved.get("skipped", [])))
        task.skipped.update(state.skipped)
        log.info("resumed from %s at step %d", checkpoint, state.step)
    model = session.wrap(task.net)
    generator = torch.Generator("cpu").manual_seed(int(cfg.seed) * 1000 + session.rank + 7919 * state.step)

    acc_loss, acc_steps, acc_samples, paused = 0.0, 0, 0, 0.0
    t_mark = time.perf_counter()
    last: dict[str, Any] = {}
    if state.step >= cfg.steps:
        log.info("already at step %d of %d; nothing to train", state.step, cfg.steps)
        return {**(state.history[-1] if state.history else {}), "step": state.step}
    for epoch, batch in task.batches(state.epoch):
        state.epoch = epoch
        loss, n = task.forward_backward(model, batch, generator, scaler)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at step {state.step + 1}; lower optim.lr or turn mixed_precision off")
        if scaler is not None:
            scaler.unscale_(optimizer)
        if o.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ema is not None:
            ema.step(params)
        state.step += 1
        acc_loss, acc_steps, acc_samples = acc_loss + loss, acc_steps + 1, acc_samples + n

        final = state.step >= cfg.steps
        do_ckpt = final or state.step % cfg.checkpoint_every == 0
        do_log = do_ckpt or state.step % cfg.log_every == 0
        if cfg.validate_every and state.step % cfg.validate_every == 0 and session.rank == 0:
            t_val = time.perf_counter()
            with _ema_weights(ema, params):
                uri = task.validate(state.step, run_uri)
            if uri:
                log.info("step %d: validation render %s", state.step, uri)
            paused += time.perf_counter() - t_val  # not training time: left out of samples/s
        if do_log:
            last = _metrics(cfg, session, state, task, optimizer, acc_loss, acc_steps, acc_samples, time.perf_counter() - t_mark - paused)
            state.history.append(last)
            if session.rank == 0:
                log.info("step %d/%d loss %.4f lr %.2e %.2f samples/s", state.step, cfg.steps, last["loss"], last["lr"], last["samples_per_s"])
                if run_uri is not None:
                    storage.write_text(storage.join(run_uri, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in state.history))
            acc_loss, acc_steps, acc_samples, paused = 0.0, 0, 0, 0.0
            if do_ckpt:
                with tempfile.TemporaryDirectory(prefix="facepose-ckpt-") as tmp:
                    folder = None
                    if session.rank == 0:
                        folder = Path(tmp)
                        _save(folder, cfg, task, state, optimizer, scheduler, scaler, ema, params)
                    session.report(last, folder, checkpoint_name(state.step))
            else:
                session.report(last, None)
            t_mark = time.perf_counter()
        if final:
            break
    return last


def checkpoint_name(step: int) -> str:
    """Checkpoint folders sort by step: ``checkpoint_00000120``."""
    return f"checkpoint_{step:08d}"


@contextlib.contextmanager
def _ema_weights(ema: Any, params: list[nn.Parameter]) -> Iterator[None]:
    """Inside the block the trained weights are the EMA's (when EMA is on)."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def _metrics(cfg: TrainConfig, session: Session, state: LoopState, task: Any, optimizer: torch.optim.Optimizer,
             loss: float, steps: int, samples: int, seconds: float) -> dict[str, Any]:
    """Metrics over the steps since the last report, averaged over workers (plain numbers)."""
    sums = torch.tensor([loss, steps, samples], dtype=torch.float64)
    skipped = set(task.skipped)
    if _dist():
        torch.distributed.all_reduce(sums)
        gathered: list[Any] = [None] * session.world_size
        torch.distributed.all_gather_object(gathered, sorted(skipped))
        skipped = {c for part in gathered for c in (part or [])}
    state.skipped = sorted(set(state.skipped) | skipped)
    total_loss, total_steps, total_samples = sums.tolist()
    seconds = max(seconds, 1e-9)
    return {
        "step": state.step,
        "epoch": state.epoch,
        "loss": total_loss / max(total_steps, 1),
        "lr": float(optimizer.param_groups[0]["lr"]),
        "samples_per_s": total_samples / seconds,
        "samples_per_s_per_worker": total_samples / seconds / session.world_size,
        "skipped_clips": len(state.skipped),
        "optimizer_step": _optimizer_step(optimizer),
        "resumed_from": state.resumed_from,
        "workers": session.world_size,
    }


def _save(folder: Path, cfg: TrainConfig, task: Any, state: LoopState, optimizer: torch.optim.Optimizer,
          scheduler: Any, scaler: Any, ema: Any, params: list[nn.Parameter]) -> None:
    """A checkpoint folder: the model (EMA weights when EMA is on) and ``state.pt`` (step, optimizer, ...)."""
    payload: dict[str, Any] = {
        "format": STATE_FORMAT, "kind": cfg.kind, "stage": cfg.stage if cfg.kind == "diffusion" else 0,
        "step": state.step, "epoch": state.epoch, "history": state.history, "skipped": state.skipped,
        "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None, "config": asdict(cfg),
    }
    if ema is not None:
        payload["trainable"] = [p.detach().cpu().clone() for p in params]
    with _ema_weights(ema, params):
        task.save(folder)
    torch.save(payload, folder / STATE_FILE)
    (folder / "metrics.json").write_text(json.dumps(state.history[-1] if state.history else {}))
