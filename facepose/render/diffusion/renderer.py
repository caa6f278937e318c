"""The ``diffusion`` renderer: crop the reference face, draw the pose, run :class:`FaceAnimationPipeline`
(context windows or Motion Frames chaining: ``model.long_video``) and yield frames one by one.

Registered as ``diffusion`` in :mod:`facepose.render.base`; torch / diffusers are imported only when a
renderer is built.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from facepose.config import Config, FaceConfig, ModelConfig
from facepose.errors import InputError, ModelNotFoundError
from facepose.pose.sequence import PoseSequence
from facepose.render.base import ProgressFn, register_renderer
from facepose.render.diffusion.config import check_model_config

if TYPE_CHECKING:
    from facepose.render.diffusion.pipeline import FaceAnimationPipeline

log = logging.getLogger(__name__)

DOWNLOAD_HINT = (
    "download Moore-AnimateAnyone's denoising_unet.pth, reference_unet.pth, pose_guider.pth and motion_module.pth "
    "(huggingface.co/patrolli/AnimateAnyone) into one folder, and beside them stable-diffusion-v1-5/unet/config.json "
    "(huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5), sd-vae-ft-mse/ (huggingface.co/stabilityai/sd-vae-ft-mse) "
    "and image_encoder/ (the image_encoder folder of huggingface.co/lambdalabs/sd-image-variations-diffusers); "
    "then set model.checkpoint=<that folder> (or a folder written by save_pipeline), or render with --backend warp"
)


class DiffusionRenderer:
    """Renders with a loaded :class:`FaceAnimationPipeline` (built once, reused for many jobs)."""

    name = "diffusion"

    def __init__(self, pipeline: "FaceAnimationPipeline", model: Optional[ModelConfig] = None, face: Optional[FaceConfig] = None,
                 point_radius: float = 3.0):
        self.pipeline = pipeline
        self.model = model or ModelConfig()
        self.face_cfg = face or FaceConfig()
        self.point_radius = point_radius  # pose dot radius at 512 (config pose.point_radius), scaled to the output
        self._face_detector: Any = None
        self._predictor: Any = None

    @property
    def size(self) -> int:
        """Side of the square rendered frames (the model's native size: 512 for sd15)."""
        return self.pipeline.default_size[0]

    def render(self, reference: np.ndarray, pose: PoseSequence, *, seed: int = 0,
               progress: Optional[ProgressFn] = None, name: Optional[str] = None) -> Iterator[np.ndarray]:
        """reference: (H, W, 3) uint8 RGB photo; pose: target landmarks on any canvas (letterboxed onto
        the square output, as iter_pose_images draws it) -> yields len(pose) frames (S, S, 3) uint8,
        a decode chunk at a time (in context mode after the whole video is denoised). Bad input raises
        here, before the first frame."""
        if len(pose) == 0:
            raise InputError(f"pose sequence{(' ' + pose.source) if pose.source else ''} has 0 frames; nothing to render")
        from facepose.face.crop import FaceCrop, crop_face

        if isinstance(reference, FaceCrop):  # already cropped by the caller
            return self._frames(reference.image, pose, seed, progress)
        if not isinstance(reference, np.ndarray) or reference.ndim != 3 or reference.shape[2] != 3:
            got = getattr(reference, "shape", type(reference).__name__)
            raise InputError(f"reference must be an (H, W, 3) RGB image or a FaceCrop, got {got}")
        crop = crop_face(reference, self.face_cfg, detector=self._detector(), predictor=self._predictor, name=name or "reference")
        return self._frames(crop.image, pose, seed, progress)

    def _frames(self, reference: np.ndarray, pose: PoseSequence, seed: int,
                progress: Optional[ProgressFn]) -> Iterator[np.ndarray]:
        import torch

        size = self.size
        total = len(pose)
        out = self.pipeline(
            reference, PoseImages(pose, size, self.point_radius), FaceMasks(pose, size, self.pipeline.config.clip_length,
                                                                           self.face_cfg.mask_expand),
            num_frames=total, height=size, width=size, num_inference_steps=self.model.steps,
            guidance_scale=self.model.guidance, generator=torch.Generator("cpu").manual_seed(int(seed)),
            decode_chunk_size=self.model.decode_chunk, stream=True, long_video=self.model.long_video,
            context_frames=self.model.context_frames, context_overlap=self.model.context_overlap,
            context_loop=self.model.context_loop,
        )
        for i, frame in enumerate(out.frames, 1):
            if progress is not None:
                progress(i, total)
            yield frame

    def _detector(self) -> Any:
        if self._face_detector is None:
            from facepose.face.detect import FaceDetector
            from facepose.face.landmarks import get_landmark_model

            self._face_detector = FaceDetector(self.face_cfg)
            self._predictor = get_landmark_model(self.face_cfg)
        return self._face_detector


class PoseImages:
    """The drawn pose frames of ``pose`` on the square output, drawn on demand: ``images[i]`` is frame i as
    ``iter_pose_images`` draws it, (size, size, 3) uint8. Context-window rendering reads every window at
    every step; drawing 68 dots again costs far less than holding a long video's pose images."""

    def __init__(self, pose: PoseSequence, size: int, point_radius: float = 3.0):
        from facepose.pose.draw import letterbox, scaled_radius

        self.pose, self.size = pose, int(size)
        scale, dx, dy = letterbox(pose.width, pose.height, self.size)
        self.scale, self.offset = np.float32(scale), np.array([dx, dy], np.float32)
        self.radius = scaled_radius(self.size, self.size, base=point_radius)

    def __len__(self) -> int:
        return len(self.pose)

    def __getitem__(self, i: int) -> np.ndarray:
        from facepose.pose.draw import draw_pose

        if not -len(self) <= i < len(self):
            raise IndexError(i)
        pts = self.pose.landmarks[i] * self.scale + self.offset
        return draw_pose(pts, (self.size, self.size), radius=self.radius, scores=self.pose.scores[i])


class FaceMasks:
    """EMO's face-region masks of ``pose`` on the square output, by index: frame i gets the union of the
    face boxes (expanded by ``expand``) over its block of ``block`` frames (a clip in motion_frames mode);
    frames where the face was lost stay out. One block is kept at a time."""

    def __init__(self, pose: PoseSequence, size: int, block: int, expand: float = 1.2):
        from facepose.pose.draw import letterbox

        self.size, self.block, self.expand = int(size), max(1, int(block)), expand
        scale, dx, dy = letterbox(pose.width, pose.height, self.size)
        self.target = pose.landmarks * np.float32(scale) + np.array([dx, dy], np.float32)  # (T, 68, 2) output pixels
        self.target[~pose.visible] = np.nan
        self._cached: tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> np.ndarray:
        from facepose.face.crop import face_mask

        if not -len(self) <= i < len(self):
            raise IndexError(i)
        b = (i % len(self)) // self.block
        if self._cached[0] != b:
            start = b * self.block
            mask = face_mask(self.target[start:start + self.block], size=(self.size, self.size), expand=self.expand)
            self._cached = (b, mask)
        assert self._cached[1] is not None
        return self._cached[1]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "fp32" if device == "cpu" else "fp16"
    return dtype


@register_renderer("diffusion")
def build_diffusion_renderer(cfg: Optional[Config] = None, *, model: Optional[ModelConfig] = None,
                             pipeline: Optional["FaceAnimationPipeline"] = None, **_: Any) -> DiffusionRenderer:
    """Load the checkpoint named by ``cfg.model`` (or ``model``) once; ``pipeline`` uses a built one as is.
    Reads ``cfg.model``, ``cfg.face`` and ``cfg.pose.point_radius`` (None: the defaults).
    No checkpoint configured -> :class:`ModelNotFoundError` saying what to download and where."""
    cfg = Config() if cfg is None else cfg
    model = model or cfg.model
    check_model_config(model)
    if pipeline is None:
        if not model.checkpoint:
            raise ModelNotFoundError(f"no diffusion checkpoint configured (model.checkpoint is empty); {DOWNLOAD_HINT}")
        from facepose.render.diffusion.checkpoint import load_pipeline

        device = resolve_device(model.device)
        pipeline = load_pipeline(model.checkpoint, model=model)
        pipeline.configure_runtime(device=device, dtype=resolve_dtype(model.dtype, device),
                                   attention=model.attention, compile=model.compile)
    return DiffusionRenderer(pipeline, model, cfg.face, point_radius=float(cfg.pose.point_radius))
