"""FaceAnimationPipeline: AnimateAnyone (ReferenceNet, reference attention, Pose Guider, motion modules)
with EMO's Face Locator and Motion Frames, as a diffusers pipeline.

Two ways to render a video longer than one clip (``long_video``; ``auto`` picks one per checkpoint):

- ``motion_frames`` (EMO): chained clips of ``clip_length`` frames (24). Each clip is denoised with the
  reference attention bank computed once for that clip from the reference latent concatenated on channels
  with the latents of the previous clip's last ``motion_frames`` generated frames (the first clip repeats
  the reference). Clips see each other only through those channels: they must be trained (stage 2).
- ``context`` (Moore-AnimateAnyone's ``pipeline_pose2vid_long``, AnimateDiff's uniform context
  scheduler): one latent sequence for the whole video; at every denoising step the UNet runs on
  overlapping windows of ``context_frames`` (24) frames that overlap by ``context_overlap`` (4), and each
  frame's prediction is the mean of the predictions of the windows that hold it. Continuity crosses
  window boundaries with released weights whose Motion Frames channels are zero. The latents of the whole
  video are held (4 x h x w per frame: 64 KiB at 512 in fp32), never its decoded frames.

Either way frames are decoded ``decode_chunk_size`` at a time and yielded, so memory stays bounded.

The modes are not combined. Chaining conditions each clip on frames generated before it; under context
sampling every frame is denoised at once, so there are no finished earlier frames to give, and released
weights could not read them anyway. A checkpoint whose Motion Frames channels were trained (stage 1 on
video) learnt clip-after-clip generation from real preceding frames: chaining is what it was trained for.
Context windows inside one 24-frame clip would be a single window, i.e. plain sampling.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel, UNetMotionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPVisionModelWithProjection

from facepose.errors import InputError
from facepose.render.diffusion.config import LONG_VIDEO_MODES
from facepose.render.diffusion.attention import ReferenceBank, install_reference_attention, set_attention_backend
from facepose.render.diffusion.models import ConvInAddition, FaceLocator, PoseGuider
from facepose.render.diffusion.motion import set_temporal_norm

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Frames = Union[np.ndarray, Sequence[np.ndarray], Iterable[np.ndarray]]


@dataclass
class FaceAnimationOutput:
    """frames: (T, H, W, 3) uint8 RGB, or with ``stream=True`` an iterator of (H, W, 3) frames;
    clip_lengths: frames of each chained clip (60 frames -> [24, 24, 12]; one clip of T frames in
    context mode); long_video: the mode used (``context`` | ``motion_frames``); windows: the context
    windows, frame indices each (empty in motion_frames mode)."""

    frames: Union[np.ndarray, Iterator[np.ndarray]]
    clip_lengths: list[int] = field(default_factory=list)
    long_video: str = "motion_frames"
    windows: list[list[int]] = field(default_factory=list)


def context_windows(num_frames: int, size: int, overlap: int, closed_loop: bool = False) -> list[list[int]]:
    """Frame indices of the overlapping windows that cover ``num_frames`` frames.

    Windows of ``size`` frames start every ``size - overlap`` frames from 0 (Moore-AnimateAnyone's
    ``uniform`` context scheduler, as its long pipeline calls it: step 0, stride 1). With
    ``closed_loop`` the windows run past the end and wrap around to the first frames, exactly as
    Moore's (61 frames, 24/4 -> [0..23], [20..43], [40..60, 0, 1, 2], [60, 0..22]): the video is
    denoised as a loop. Without it no window wraps: windows start every ``size - overlap`` frames while
    they fit, and the last one ends at the last frame (61 -> [0..23], [20..43], [37..60]), so the end is
    never blended with the beginning. ``num_frames <= size``: one window of every frame.
    """
    if num_frames < 1 or size < 1 or not 0 <= overlap < size:
        raise ValueError(f"context windows need num_frames >= 1, size >= 1 and 0 <= overlap < size; "
                         f"got {num_frames}, {size}, {overlap}")
    if num_frames <= size:
        return [list(range(num_frames))]
    step = size - overlap
    if closed_loop:
        return [[(start + k) % num_frames for k in range(size)] for start in range(0, num_frames, step)]
    starts = list(range(0, num_frames - size, step)) + [num_frames - size]
    return [list(range(start, start + size)) for start in starts]


def average_windows(num_frames: int, windows: Sequence[Sequence[int]],
                    predict: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
    """Each frame's mean over the windows that hold it (Moore accumulates ``noise_pred`` per frame and
    divides by a per-frame ``counter``).

    predict(window) -> (B, C, len(window), h, w), the prediction for those frames; returns
    (B, C, num_frames, h, w) in predict's dtype (summed in fp32). A frame in k windows gets weight 1/k
    from each; a single window of every frame returns its prediction unchanged (x / 1).
    """
    total: Optional[torch.Tensor] = None
    counter = None
    for window in windows:
        pred = predict(list(window))
        if total is None:
            total = torch.zeros(pred.shape[:2] + (num_frames,) + pred.shape[3:], device=pred.device, dtype=torch.float32)
            counter = torch.zeros(num_frames, device=pred.device, dtype=torch.float32)
        index = torch.as_tensor(list(window), device=pred.device, dtype=torch.long)
        total.index_add_(2, index, pred.float())
        counter.index_add_(0, index, torch.ones(len(window), device=pred.device))
    if total is None or counter is None or bool((counter == 0).any()):
        missing = [] if counter is None else torch.nonzero(counter == 0).flatten().tolist()[:5]
        raise ValueError(f"context windows leave frames {missing or 'all'} of {num_frames} uncovered")
    return (total / counter.view(1, 1, -1, 1, 1)).to(pred.dtype)


class FaceAnimationPipeline(DiffusionPipeline):
    """Pose-driven face animation from one reference image.

    Components: ``vae`` (AutoencoderKL), ``image_encoder`` (CLIPVisionModelWithProjection; its image
    embedding is the cross-attention context), ``reference_unet`` (UNet2DConditionModel, the ReferenceNet,
    input channels ``4 * (1 + motion_frames)``), ``denoising_unet`` (UNetMotionModel), ``pose_guider``,
    ``face_locator`` (optional), ``scheduler`` (DDIM).
    """

    model_cpu_offload_seq = "image_encoder->reference_unet->denoising_unet->vae"
    _optional_components = ["face_locator"]

    def __init__(
        self,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModelWithProjection,
        reference_unet: UNet2DConditionModel,
        denoising_unet: UNetMotionModel,
        pose_guider: PoseGuider,
        face_locator: Optional[FaceLocator],
        scheduler: DDIMScheduler,
        clip_length: int = 24,
        motion_frames: int = 2,
        temporal_norm: str = "frame",
    ):
        super().__init__()
        self.register_modules(
            vae=vae, image_encoder=image_encoder, reference_unet=reference_unet, denoising_unet=denoising_unet,
            pose_guider=pose_guider, face_locator=face_locator, scheduler=scheduler,
        )
        self.register_to_config(clip_length=clip_length, motion_frames=motion_frames, temporal_norm=temporal_norm)
        latent_channels = vae.config.latent_channels
        if reference_unet.config.in_channels != latent_channels * (1 + motion_frames):
            raise ValueError(
                f"reference_unet takes {reference_unet.config.in_channels} channels; with {motion_frames} motion frames "
                f"it needs {latent_channels * (1 + motion_frames)} (reference latent + motion-frame latents)"
            )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.bank = ReferenceBank()
        install_reference_attention(reference_unet, denoising_unet, self.bank)
        set_temporal_norm(denoising_unet, temporal_norm)
        self.conv_in_addition = ConvInAddition(denoising_unet.conv_in)

    # -- run-time switches (each has this one call site) -------------------------------------------
    def configure_runtime(self, device: Union[str, torch.device, None] = None, dtype: str = "fp32",
                          attention: str = "sdpa", compile: bool = False) -> "FaceAnimationPipeline":
        """Move to ``device`` in ``dtype`` (fp32 | fp16 | bf16), pick the attention backend (sdpa | math),
        and optionally torch.compile the denoising UNet (the module is compiled in place)."""
        if dtype not in TORCH_DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; choose from {sorted(TORCH_DTYPES)}")
        # diffusers 0.42's ModelMixin.to warns on every dtype cast ("modules ... kept in float32: []")
        with _quiet("diffusers.models.modeling_utils"):
            self.to(device=device, dtype=TORCH_DTYPES[dtype])
        set_attention_backend(attention, self.reference_unet, self.denoising_unet, self.vae)
        if compile:
            self.denoising_unet.compile()
        return self

    @property
    def default_size(self) -> tuple[int, int]:
        side = int(self.denoising_unet.config.sample_size) * self.vae_scale_factor
        return side, side

    def clip_lengths(self, num_frames: int) -> list[int]:
        """Split ``num_frames`` into chained clips: 60 -> [24, 24, 12]."""
        length = int(self.config.clip_length)
        full, rest = divmod(int(num_frames), length)
        return [length] * full + ([rest] if rest else [])

    # -- the long-video mode ---------------------------------------------------------------------------
    def motion_frames_trained(self) -> bool:
        """Whether the ReferenceNet reads its Motion Frames channels: any non-zero ``conv_in`` weight on the
        inputs after the reference latent's (released Moore weights are zero-padded there: False)."""
        if int(self.config.motion_frames) == 0:
            return False
        weight = self.reference_unet.conv_in.weight[:, self.vae.config.latent_channels:]
        return bool(torch.count_nonzero(weight.detach()))

    def resolve_long_video(self, mode: str = "auto") -> tuple[str, str]:
        """``mode`` (auto | context | motion_frames) -> (the mode to use, why)."""
        if mode not in LONG_VIDEO_MODES:
            raise InputError(f"long_video {mode!r} is not one of {LONG_VIDEO_MODES} (model.long_video)")
        if mode != "auto":
            return mode, "set by model.long_video"
        if self.motion_frames_trained():
            return "motion_frames", ("auto: the ReferenceNet's Motion Frames channels are trained (non-zero conv_in "
                                     "weights), so clips chain through the last generated frames")
        return "context", ("auto: the ReferenceNet's Motion Frames channels are zero (untrained, as in every released "
                           "Moore-AnimateAnyone checkpoint), so chained clips could not see each other; "
                           "overlapping context windows keep the video continuous")

    # -- 1. check inputs -----------------------------------------------------------------------------
    def check_inputs(self, reference: Any, pose_images: Any, face_masks: Any, num_frames: Optional[int], height: int,
                     width: int, num_inference_steps: int, guidance_scale: float) -> int:
        """Validate the call; returns the number of frames to render."""
        if not _is_image(reference, 3, 3) or reference.dtype != np.uint8:
            shape = getattr(reference, "shape", type(reference).__name__)
            raise InputError(f"reference image must be an (H, W, 3) uint8 RGB array, got {shape}")
        if isinstance(pose_images, np.ndarray) and not _is_image(pose_images, 4, 3):
            raise InputError(f"pose images must be (T, H, W, 3) uint8, got {pose_images.shape}")
        if isinstance(face_masks, np.ndarray) and face_masks.ndim not in (2, 3):
            raise InputError(f"face masks must be one (H, W) mask or (T, H, W), got {face_masks.shape}")
        if num_frames is None:
            if not hasattr(pose_images, "__len__"):
                raise InputError("pose images given as an iterator need num_frames (how many frames to render)")
            num_frames = len(pose_images)
        if num_frames < 1:
            raise InputError("pose sequence has 0 frames; nothing to render (give a pose with at least one frame)")
        if height % self.vae_scale_factor or width % self.vae_scale_factor or height <= 0 or width <= 0:
            raise InputError(f"output size {width}x{height} must be positive multiples of {self.vae_scale_factor}")
        if num_inference_steps < 1:
            raise InputError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise InputError(f"guidance_scale must be >= 0, got {guidance_scale}")
        return int(num_frames)

    # -- 2. encode the reference ---------------------------------------------------------------------
    def encode_reference_image(self, reference: np.ndarray, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """reference: (H, W, 3) uint8 -> latent (1, 4, h, w) (VAE mean x scaling factor), image_embeds (1, 1, D)."""
        device = self._execution_device
        # resized with PIL on uint8, as Moore-AnimateAnyone does: Lanczos for the VAE (diffusers'
        # VaeImageProcessor), bicubic to the CLIP size (PIL's Image.resize default before CLIPImageProcessor)
        vae_in = _pil_resize(reference, (width, height), Image.LANCZOS)
        pixels = _images_to_tensor(vae_in[None], (height, width), device, self.vae.dtype) * 2 - 1
        latent = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        size = int(self.image_encoder.config.image_size)
        clip_in = _images_to_tensor(_pil_resize(reference, (size, size), Image.BICUBIC)[None], (size, size), device, torch.float32)
        mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        clip_in = ((clip_in - mean) / std).to(self.image_encoder.dtype)
        image_embeds = self.image_encoder(pixel_values=clip_in).image_embeds.unsqueeze(1)  # (1, D) -> (1, 1, D)
        return latent, image_embeds

    def encode_reference(self, reference_latent: torch.Tensor, motion_latents: torch.Tensor, image_embeds: torch.Tensor) -> None:
        """reference_latent: (1, 4, h, w); motion_latents: (1, 4*m, h, w); image_embeds: (1, 1, D) -> fills
        ``self.bank`` from one ReferenceNet forward at timestep 0 (its output is not used)."""
        unet = self.reference_unet
        sample = torch.cat([reference_latent, motion_latents], dim=1).to(unet.dtype)  # (1, 4*(1+m), h, w)
        timestep = torch.zeros((), dtype=torch.long, device=sample.device)
        with self.bank.writing():
            unet(sample, timestep, encoder_hidden_states=image_embeds.to(unet.dtype), return_dict=False)

    # -- 3. latents, motion frames, conditions -------------------------------------------------------
    def prepare_latents(self, num_frames: int, height: int, width: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """-> noise (1, 4, F, h, w) in the denoising UNet's dtype."""
        shape = (1, self.vae.config.latent_channels, num_frames, height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.denoising_unet.dtype)
        return noise * self.scheduler.init_noise_sigma

    def prepare_motion_frames(self, reference_latent: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
        """reference_latent: (1, 4, h, w); previous: the last clip's latents (1, 4, F, h, w) or None ->
        (1, 4*m, h, w): its last m frames, frame after frame on channels (the first clip repeats the reference)."""
        m = int(self.config.motion_frames)
        if previous is None:
            frames = reference_latent.unsqueeze(2).expand(-1, -1, m, -1, -1)  # (1, 4, h, w) -> (1, 4, m, h, w)
        else:
            frames = previous[:, :, -m:] if m else previous[:, :, :0]
            if frames.shape[2] < m:  # a previous clip shorter than m frames: pad with its first frame
                pad = frames[:, :, :1].expand(-1, -1, m - frames.shape[2], -1, -1)
                frames = torch.cat([pad, frames], dim=2)
        b, c, _, h, w = frames.shape
        return frames.transpose(1, 2).reshape(b, m * c, h, w).to(reference_latent.dtype)  # (1, 4, m, h, w) -> (1, m*4, h, w)

    def encode_conditions(self, pose: np.ndarray, masks: Optional[np.ndarray], height: int, width: int) -> torch.Tensor:
        """pose: (F, H, W, 3) uint8 pose images; masks: (F, H, W) uint8 face masks or None ->
        (F, C, h, w) Pose Guider + Face Locator features, added after the denoising UNet's conv_in."""
        device = self._execution_device
        features = self.pose_guider(_images_to_tensor(pose, (height, width), device, self.pose_guider.dtype))
        if masks is not None and self.face_locator is not None:
            m = _images_to_tensor(masks[..., None], (height, width), device, self.face_locator.dtype, mode="nearest")
            features = features + self.face_locator(m)
        return features

    # -- 4. denoise ---------------------------------------------------------------------------------
    def predict(self, latents: torch.Tensor, t: torch.Tensor, features: torch.Tensor, image_embeds: torch.Tensor,
                guidance_scale: float) -> torch.Tensor:
        """One guided UNet prediction. latents: (1, 4, F, h, w); features: (F, C, h, w); image_embeds:
        (1, 1, D) -> (1, 4, F, h, w). Classifier-free guidance batches [uncond, cond]: uncond has a zero
        context and no reference bank (Moore-AnimateAnyone); both halves get the pose and face features."""
        frames = latents.shape[2]
        do_cfg = guidance_scale > 1.0
        dtype = self.denoising_unet.dtype
        context = image_embeds.to(dtype).repeat_interleave(frames, dim=0)  # (1, 1, D) -> (F, 1, D)
        features = features.to(dtype)
        model_input = latents
        if do_cfg:
            context = torch.cat([torch.zeros_like(context), context])  # (2F, 1, D)
            features = torch.cat([features, features])
            model_input = torch.cat([latents] * 2)
        model_input = self.scheduler.scale_model_input(model_input, t)
        with self.bank.reading(frames, uncond=int(do_cfg)), self.conv_in_addition.adding(features):
            pred = self.denoising_unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0]
        if do_cfg:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        return pred

    def denoise(self, latents: torch.Tensor, features: torch.Tensor, image_embeds: torch.Tensor,
                num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
        """One clip. latents: (1, 4, F, h, w) noise; features: (F, C, h, w); image_embeds: (1, 1, D) -> (1, 4, F, h, w)."""
        self.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        for t in self.scheduler.timesteps:
            pred = self.predict(latents, t, features, image_embeds, guidance_scale)
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
        return latents

    def denoise_windows(self, latents: torch.Tensor, windows: Sequence[Sequence[int]],
                        conditions: Callable[[list[int]], torch.Tensor], image_embeds: torch.Tensor,
                        num_inference_steps: int, guidance_scale: float) -> torch.Tensor:
        """The whole video at once. latents: (1, 4, T, h, w) noise; windows: from :func:`context_windows`;
        conditions(window) -> (len(window), C, h, w) features of those frames (computed per window and step,
        so the features of a long video are never all held). At each step every window is predicted on its
        own (guidance applied per window, which is linear, so it equals Moore's averaging of the uncond and
        cond halves before guidance) and the predictions are averaged per frame (:func:`average_windows`)
        before one scheduler step on the whole sequence -> (1, 4, T, h, w)."""
        frames = latents.shape[2]
        self.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        for t in self.scheduler.timesteps:
            def window_prediction(window: list[int], t: torch.Tensor = t, current: torch.Tensor = latents) -> torch.Tensor:
                index = torch.as_tensor(window, device=current.device, dtype=torch.long)
                return self.predict(current.index_select(2, index), t, conditions(window), image_embeds, guidance_scale)

            pred = average_windows(frames, windows, window_prediction)
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
        return latents

    # -- 5. decode ----------------------------------------------------------------------------------
    def decode_latents(self, latents: torch.Tensor, chunk: int = 8) -> Iterator[np.ndarray]:
        """latents: (1, 4, F, h, w) -> yields F frames (H, W, 3) uint8."""
        flat = latents[0].transpose(0, 1) / self.vae.config.scaling_factor  # (4, F, h, w) -> (F, 4, h, w)
        for start in range(0, flat.shape[0], max(1, chunk)):
            images = self.vae.decode(flat[start:start + chunk].to(self.vae.dtype), return_dict=False)[0]
            images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            yield from images.permute(0, 2, 3, 1).cpu().numpy()  # (n, 3, H, W) -> (n, H, W, 3)

    # -- the call -----------------------------------------------------------------------------------
    def __call__(
        self,
        reference: np.ndarray,
        pose_images: Frames,
        face_masks: Optional[Frames] = None,
        *,
        num_frames: Optional[int] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.5,
        generator: Optional[torch.Generator] = None,
        decode_chunk_size: int = 8,
        stream: bool = False,
        long_video: str = "auto",
        context_frames: Optional[int] = None,
        context_overlap: int = 4,
        context_loop: bool = False,
    ) -> FaceAnimationOutput:
        """Render ``num_frames`` frames (default ``len(pose_images)``).

        reference: (H, W, 3) uint8 RGB face crop; pose_images: (T, H, W, 3) uint8, a sequence of (H, W, 3)
        drawn pose frames (indexed, e.g. drawn on demand), or an iterable of them; face_masks: None, one
        (H, W) uint8 mask for every frame, (T, H, W), or a sequence / iterable of (H, W) masks. Inputs are
        resized to the output size (default the model's). With ``stream=True`` the frames come lazily,
        ``decode_chunk_size`` at a time. long_video: ``auto`` | ``context`` | ``motion_frames`` (module
        docstring; the choice and its reason are logged). context_frames (default ``clip_length``),
        context_overlap, context_loop: the context windows (:func:`context_windows`). In context mode
        the poses are read by index at every step: an iterable (not a sequence) is held in memory.
        """
        height, width = (height or self.default_size[0]), (width or self.default_size[1])
        # 1. Check inputs
        num_frames = self.check_inputs(reference, pose_images, face_masks, num_frames, height, width,
                                       num_inference_steps, guidance_scale)
        mode, why = self.resolve_long_video(long_video)
        size = int(context_frames or self.config.clip_length)
        max_len = int(getattr(self.denoising_unet.config, "motion_max_seq_length", 32))
        if not 1 <= size <= max_len or not 0 <= int(context_overlap) < size:
            raise InputError(f"context windows of {size} frames overlapping by {context_overlap} are not possible: need "
                             f"1 <= model.context_frames <= {max_len} (the motion modules' length) and "
                             f"0 <= model.context_overlap < model.context_frames")
        if mode == "context":
            windows = context_windows(num_frames, size, int(context_overlap), bool(context_loop))
            clips = [num_frames]
            log.info("long video: context windows (%d frames, overlap %d%s; %d window(s) for %d frames): %s",
                     size, context_overlap, ", closed loop" if context_loop else "", len(windows), num_frames, why)
            frames = self._generate_context(reference, pose_images, face_masks, num_frames, windows, height, width,
                                            num_inference_steps, guidance_scale, generator, decode_chunk_size)
        else:
            windows = []
            clips = self.clip_lengths(num_frames)
            log.info("long video: Motion Frames chaining (%d clip(s) of up to %d frames, %d motion frames): %s",
                     len(clips), self.config.clip_length, self.config.motion_frames, why)
            frames = self._generate(reference, pose_images, face_masks, clips, height, width,
                                    num_inference_steps, guidance_scale, generator, decode_chunk_size)
        out = FaceAnimationOutput(frames=frames, clip_lengths=clips, long_video=mode, windows=windows)
        if not stream:
            out.frames = np.stack(list(frames))
        return out

    @torch.no_grad()
    def _generate(self, reference: np.ndarray, pose_images: Frames, face_masks: Optional[Frames], clips: Sequence[int],
                  height: int, width: int, steps: int, guidance: float, generator: Optional[torch.Generator],
                  decode_chunk: int) -> Iterator[np.ndarray]:
        pose_reader = _FrameReader(pose_images, "pose images", sum(clips))
        mask_reader = None if face_masks is None else _FrameReader(face_masks, "face masks", sum(clips), constant_ndim=2)
        # 2. Encode reference: VAE latent and CLIP image embedding (once per video)
        reference_latent, image_embeds = self.encode_reference_image(reference, height, width)
        previous = None
        try:
            for length in clips:
                # 3. Prepare latents and motion frames; the ReferenceNet bank (once per clip)
                latents = self.prepare_latents(length, height, width, generator)
                motion = self.prepare_motion_frames(reference_latent, previous)
                self.encode_reference(reference_latent, motion, image_embeds)
                masks = None if mask_reader is None else mask_reader.take(length)
                features = self.encode_conditions(pose_reader.take(length), masks, height, width)
                # 4. Denoise with classifier-free guidance
                latents = self.denoise(latents, features, image_embeds, steps, guidance)
                previous = latents
                # 5. Decode
                yield from self.decode_latents(latents, decode_chunk)
        finally:
            self.bank.clear()

    @torch.no_grad()
    def _generate_context(self, reference: np.ndarray, pose_images: Frames, face_masks: Optional[Frames], num_frames: int,
                          windows: Sequence[Sequence[int]], height: int, width: int, steps: int, guidance: float,
                          generator: Optional[torch.Generator], decode_chunk: int) -> Iterator[np.ndarray]:
        poses = _FrameReader(pose_images, "pose images", num_frames)
        masks = None if face_masks is None else _FrameReader(face_masks, "face masks", num_frames, constant_ndim=2)
        # 2. Encode reference; the ReferenceNet bank once for the video (Motion Frames: the reference repeated,
        #    as for a first clip; with released weights those channels read nothing)
        reference_latent, image_embeds = self.encode_reference_image(reference, height, width)
        try:
            self.encode_reference(reference_latent, self.prepare_motion_frames(reference_latent, None), image_embeds)
            # 3. One latent sequence for the whole video
            latents = self.prepare_latents(num_frames, height, width, generator)

            def conditions(window: list[int]) -> torch.Tensor:
                return self.encode_conditions(poses.at(window), None if masks is None else masks.at(window), height, width)

            # 4. Denoise on overlapping windows, averaging the overlaps at every step
            latents = self.denoise_windows(latents, windows, conditions, image_embeds, steps, guidance)
        finally:
            self.bank.clear()
        # 5. Decode, a chunk at a time
        yield from self.decode_latents(latents, decode_chunk)


def _is_image(a: Any, ndim: int, channels: int) -> bool:
    return isinstance(a, np.ndarray) and a.ndim == ndim and a.shape[-1] == channels


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _FrameReader:
    """Frames ``n`` at a time (:meth:`take`) or by index (:meth:`at`) from an array, a sequence or an
    iterable; a single (H, W) mask repeats for every frame. An iterable read by index is kept as read."""

    def __init__(self, frames: Frames, what: str, total: int, constant_ndim: Optional[int] = None):
        self.what, self.total, self.read = what, total, 0
        self.constant: Optional[np.ndarray] = None
        self.indexed: Optional[Any] = None  # an array or a sequence: read in place
        self.kept: list[np.ndarray] = []  # an iterable read by index
        if isinstance(frames, np.ndarray) and frames.ndim == constant_ndim:
            self.constant = frames
        elif hasattr(frames, "__getitem__") and hasattr(frames, "__len__"):
            self.indexed = frames
        self.it: Iterator[np.ndarray] = iter(()) if self.constant is not None or self.indexed is not None else iter(frames)

    def _ended(self, n: int) -> InputError:
        return InputError(f"{self.what} ended after {n} frames; {self.total} were asked for")

    def take(self, n: int) -> np.ndarray:
        if self.constant is not None:
            return np.broadcast_to(self.constant, (n,) + self.constant.shape)
        if self.indexed is not None:
            out = self.at(list(range(self.read, self.read + n)))
            self.read += n
            return out
        out = []
        for _ in range(n):
            try:
                out.append(np.asarray(next(self.it)))
            except StopIteration:
                raise self._ended(self.read) from None
            self.read += 1
        return np.stack(out)

    def at(self, index: Sequence[int]) -> np.ndarray:
        """Frames at ``index`` (any order, repeats allowed) -> (len(index), ...)."""
        if self.constant is not None:
            return np.broadcast_to(self.constant, (len(index),) + self.constant.shape)
        if self.indexed is not None:
            if max(index) >= len(self.indexed):
                raise self._ended(len(self.indexed))
            if isinstance(self.indexed, np.ndarray):
                return self.indexed[np.asarray(index)]
            return np.stack([np.asarray(self.indexed[i]) for i in index])
        while len(self.kept) <= max(index):
            try:
                self.kept.append(np.asarray(next(self.it)))
            except StopIteration:
                raise self._ended(len(self.kept)) from None
        return np.stack([self.kept[i] for i in index])


def _pil_resize(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """image: (H, W, 3) uint8 -> (size[1], size[0], 3) uint8 resized by PIL (unchanged when already that size)."""
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(size, resample))


def _images_to_tensor(images: np.ndarray, size: tuple[int, int], device: Any, dtype: torch.dtype,
                      mode: str = "bilinear") -> torch.Tensor:
    """images: (N, H, W, C) uint8 -> (N, C, *size) float in [0, 1] on ``device``."""
    images = np.ascontiguousarray(images) if images.flags.writeable else np.array(images)  # torch wants writable memory
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255.0  # (N, H, W, C) -> (N, C, H, W)
    if tuple(x.shape[-2:]) != tuple(size):
        kw = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        x = F.interpolate(x, size=size, mode=mode, **kw)
    return x.to(dtype)
