"""The ``warp`` renderer: the default CPU backend, no weights (docs/design.md, "Contracts between layers").

Per job the reference face is cropped once (:func:`facepose.face.crop.crop_face`); per frame the crop is
warped from its own 68 landmarks to the frame's target landmarks:

1. The pose canvas is letterboxed onto the ``size`` x ``size`` output, as :func:`~facepose.pose.draw.iter_pose_images` draws it.
2. A piecewise-affine warp over a fixed triangle mesh (the 68 points, virtual forehead points and fixed
   anchors on the frame border; :mod:`facepose.render.warp_mesh`) gives a backward map on a coarse grid,
   computed only over the region the clip's masks reach.
3. The map's displacement is faded to zero over a feathered band inside the Face Locator mask (the
   union of the reference's and the target's landmark boxes, each scaled by ``mask_expand``), so pixels
   outside the mask are the crop's own, exactly, and there is no seam at the mask's edge.
4. ``cv2.remap`` samples the crop (bilinear) inside the region; the rest of the frame is the crop.
5. A mouth interior is painted where the target opens the mouth wider than the reference, and a dark
   seam where it closes tighter (:mod:`facepose.render.warp_face`); blinks start in the mesh (the eye
   triangles collapse under the stretched lid), then closed lids and a lash line are painted over.

Everything static (mesh topology, region, grids, colours) is computed once per job; a frame costs a
few milliseconds on one core.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from os import PathLike
from typing import Any, Iterator, Optional

import cv2
import numpy as np

from facepose.config import Config, FaceConfig, WarpConfig
from facepose.errors import InputError
from facepose.face_layout import is_seen, locator_box
from facepose.pose.sequence import PoseSequence
from facepose.render.base import ProgressFn, register_renderer
from facepose.render.warp_face import EyelidPainter, MouthPainter
from facepose.render.warp_mesh import MeshWarp, border_anchors, face_points, triangulate

log = logging.getLogger(__name__)


@dataclass
class WarpPlan:
    """What a job computes once: the crop, its mesh over the region, and the mouth painter.

    image: (S, S, 3) uint8 crop; landmarks: (68, 2) in its pixels; roi: (x0, y0, x1, y1), the region
    warped; grid: (h, w, 2) float32 pixel coordinates of the region; anchors: (K, 2) fixed mesh points."""

    image: np.ndarray
    landmarks: np.ndarray
    roi: tuple[int, int, int, int]
    grid: np.ndarray
    mesh: MeshWarp
    anchors: np.ndarray
    mouth: Optional[MouthPainter]
    eyelids: Optional[EyelidPainter]


class WarpRenderer:
    """Dense landmark-driven warp of the reference face (see the module docstring).

    warp: the ``render.warp`` section (output size, mesh, painters); face: the ``face`` section
    (detection, cropping and the mask); None takes the defaults. detector/predictor: optional loaded
    face models. ``get_renderer("warp", cfg)`` passes ``cfg.render.warp`` and ``cfg.face``.
    """

    name = "warp"

    def __init__(self, warp: Optional[WarpConfig] = None, face: Optional[FaceConfig] = None, detector: Any = None, predictor: Any = None):
        warp = WarpConfig() if warp is None else warp
        face = FaceConfig() if face is None else face
        if not isinstance(warp, WarpConfig) or not isinstance(face, FaceConfig):
            raise TypeError(f"WarpRenderer takes (WarpConfig, FaceConfig) sections, got ({type(warp).__name__}, {type(face).__name__})")
        self.face_cfg = face
        self.cfg = warp
        if self.cfg.size <= 0 or self.cfg.size % 2:
            raise InputError(f"warp renderer size must be a positive even number (H.264), got {self.cfg.size}")
        self.detector, self.predictor = detector, predictor

    # -- per job -----------------------------------------------------------------------------------
    def crop(self, reference: Any, name: str = "reference") -> tuple[np.ndarray, np.ndarray]:
        """reference: (H, W, 3) uint8 RGB photo, or an already cropped FaceCrop -> (crop (S, S, 3) uint8,
        landmarks (68, 2) float32 in crop pixels). NoFaceError naming ``name`` when there is no face."""
        if hasattr(reference, "image") and hasattr(reference, "landmarks"):
            image, lm = np.asarray(reference.image), np.asarray(reference.landmarks, np.float32)
        else:
            from facepose.face.crop import crop_face

            ref = np.ascontiguousarray(reference)
            if ref.ndim != 3 or ref.shape[2] != 3 or ref.dtype != np.uint8:
                raise InputError(f"{name} must be an (H, W, 3) uint8 RGB image, got {ref.shape} {ref.dtype}")
            fc = crop_face(ref, self.face_cfg, detector=self.detector, predictor=self.predictor, name=name)
            image, lm = np.asarray(fc.image), np.asarray(fc.landmarks, np.float32)
        s = self.cfg.size
        if image.shape[:2] != (s, s):
            scale = np.float32(s / image.shape[1]), np.float32(s / image.shape[0])
            interp = cv2.INTER_AREA if image.shape[0] > s else cv2.INTER_LINEAR
            image = cv2.resize(image, (s, s), interpolation=interp)
            lm = lm * np.array(scale, np.float32)
        return np.ascontiguousarray(image), lm.astype(np.float32)

    def targets(self, pose: PoseSequence, reference_landmarks: np.ndarray) -> np.ndarray:
        """pose -> (T, 68, 2) float32 target landmarks in output pixels (letterboxed like
        :func:`facepose.pose.draw.iter_pose_images`); frames where the face was not seen hold the last
        seen frame (the reference's own landmarks before the first one)."""
        from facepose.pose.draw import letterbox

        scale, dx, dy = letterbox(pose.width, pose.height, self.cfg.size)
        lm = pose.landmarks * np.float32(scale) + np.array([dx, dy], np.float32)
        seen = is_seen(lm, pose.scores)
        if not seen.all():
            idx = np.where(seen, np.arange(len(lm)), -1)
            idx = np.maximum.accumulate(idx)
            filled = np.where((idx >= 0)[:, None, None], lm[np.maximum(idx, 0)], reference_landmarks[None])
            lm = filled
        return np.ascontiguousarray(lm, np.float32)

    def plan(self, image: np.ndarray, landmarks: np.ndarray, targets: np.ndarray) -> WarpPlan:
        """The static part of a job: the region every frame's mask fits in, the mesh, the colours."""
        s = self.cfg.size
        boxes = _mask_boxes(np.concatenate([landmarks[None], targets]), self.face_cfg.mask_expand)
        # Only the region the masks reach is warped (the map is zero elsewhere). Its corner sits on the
        # coarse grid's global lattice and the anchors are on the frame border, so a frame's pixels do
        # not depend on the rest of the clip: a clip rendered in pieces matches one rendered whole.
        g = self.cfg.grid_step
        lo = np.maximum(boxes[:, :2].min(axis=0) - 2 * g, 0)
        hi = np.minimum(boxes[:, 2:].max(axis=0) + 2 * g, s)
        lo = (np.floor(lo / g) * g).astype(int)
        hi = np.minimum(np.ceil(hi / g) * g, s).astype(int)
        roi = (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))
        anchors = border_anchors((0, 0, s, s), per_side=self.cfg.anchors_per_side)
        tri = triangulate(landmarks, anchors)
        src = np.concatenate([face_points(landmarks), anchors])
        mesh = MeshWarp(src, tri, roi, self.cfg.grid_step)
        mouth = None
        if self.cfg.mouth:
            mouth = MouthPainter.from_reference(image, landmarks, self.cfg.mouth_start, self.cfg.mouth_ramp)
        eyelids = EyelidPainter.from_reference(image, landmarks) if self.cfg.eyelids else None
        gx, gy = np.meshgrid(np.arange(roi[0], roi[2], dtype=np.float32), np.arange(roi[1], roi[3], dtype=np.float32))
        grid = np.stack([gx, gy], axis=-1)
        return WarpPlan(image, landmarks, roi, grid, mesh, anchors, mouth, eyelids)

    # -- per frame ---------------------------------------------------------------------------------
    def frame(self, plan: WarpPlan, target: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """target: (68, 2) landmarks in output pixels -> (S, S, 3) uint8 frame (written into ``out``
        when given)."""
        mesh = plan.mesh
        x0, y0, x1, y1 = plan.roi
        dst = np.concatenate([face_points(target), plan.anchors])
        d = mesh.displacement(dst)  # (ch, cw, 2) coarse backward displacement
        d *= self._fade(plan, target)[..., None]
        d = mesh.upsample(d)
        d += plan.grid  # displacement -> absolute source coordinates
        if out is None:
            out = plan.image.copy()
        else:
            out[...] = plan.image
        out[y0:y1, x0:x1] = cv2.remap(plan.image, d, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if plan.mouth is not None:
            plan.mouth.paint(out, target)
        if plan.eyelids is not None:
            plan.eyelids.paint(out, target)
        return out

    def _fade(self, plan: WarpPlan, target: np.ndarray) -> np.ndarray:
        """(ch, cw) float32 in [0, 1] on the mesh's coarse grid: 1 deep inside the Face Locator mask
        (the union of the reference's and the target's expanded boxes), 0 outside, smooth between."""
        mesh = plan.mesh
        feather = max(self.cfg.feather * self.cfg.size, 2.0 * mesh.grid_step)
        # the upsampled map must be exactly zero on pixels outside the mask: stop one coarse cell inside
        inset = float(mesh.grid_step)
        gx, gy = mesh._gx[0], mesh._gy[:, 0]
        fade = None
        for box in _mask_boxes(np.stack([plan.landmarks, target]), self.face_cfg.mask_expand):
            fx = _ramp(gx, box[0] + inset, box[2] - inset, feather)
            fy = _ramp(gy, box[1] + inset, box[3] - inset, feather)
            m = fy[:, None] * fx[None, :]
            fade = m if fade is None else np.maximum(fade, m)
        return fade

    # -- the Renderer protocol ---------------------------------------------------------------------
    def render(
        self,
        reference: Any,
        pose: PoseSequence,
        *,
        seed: int = 0,
        progress: Optional[ProgressFn] = None,
        name: Optional[str] = None,
    ) -> Iterator[np.ndarray]:
        """reference: (H, W, 3) uint8 RGB photo, its path or URI, or a FaceCrop; pose: target landmarks on
        any canvas -> an iterator over len(pose) frames (S, S, 3) uint8.

        Bad input fails here, before the first frame: InputError for an empty pose, NoFaceError naming
        ``name`` (default: the URI, else "reference image") when the reference holds no face. The output
        is deterministic; ``seed`` is accepted for the protocol and unused. ``progress(done, total)`` is
        called after each frame."""
        if len(pose) == 0:
            where = f" {pose.source}" if pose.source else ""
            raise InputError(f"pose sequence{where} has 0 frames; give a pose source with at least one frame")
        if isinstance(reference, (str, PathLike)):
            from facepose.media.image import read_image

            name = name or str(reference)
            reference = read_image(str(reference))
        image, landmarks = self.crop(reference, name=name or "reference image")
        targets = self.targets(pose, landmarks)
        plan = self.plan(image, landmarks, targets)
        log.debug("warp: %d frames, region %s, %d triangles", len(targets), plan.roi, len(plan.mesh.triangles))
        return self._frames(plan, targets, progress)

    def _frames(self, plan: WarpPlan, targets: np.ndarray, progress: Optional[ProgressFn]) -> Iterator[np.ndarray]:
        total = len(targets)
        for t in range(total):
            yield self.frame(plan, targets[t])
            if progress is not None:
                progress(t + 1, total)


def _mask_boxes(landmarks: np.ndarray, expand: float) -> np.ndarray:
    """landmarks: (N, 68, 2) -> (N, 4) boxes (x0, y0, x1, y1): each landmark box scaled by ``expand``
    about its centre, the Face Locator's region (EMO)."""
    return locator_box(landmarks, expand).astype(np.float32)


def _ramp(x: np.ndarray, lo: float, hi: float, width: float) -> np.ndarray:
    """(n,) -> (n,) float32: 0 outside [lo, hi], rising smoothly to 1 over ``width`` inside each end."""
    t = np.clip(np.minimum(x - lo, hi - x) / width, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


@register_renderer("warp")
def build_warp_renderer(cfg: Config, **kwargs: Any) -> WarpRenderer:
    """Registry factory: ``get_renderer("warp", cfg)`` -> a renderer of ``cfg.render.warp`` and ``cfg.face``;
    ``kwargs`` (detector, predictor) go to :class:`WarpRenderer`."""
    return WarpRenderer(cfg.render.warp, cfg.face, **kwargs)


__all__ = ["WarpPlan", "WarpRenderer", "build_warp_renderer"]
