"""DWPose face landmarks on ONNX Runtime: YOLOX-L person detector + DWPose-L whole-body model.

DWPose (Yang et al., ICCV 2023 workshops) is an RTMPose-L whole-body model distilled on COCO-WholeBody
and UBody. Its ONNX release is two files, which go in the folder named by the config key
``face.dwpose_dir`` (a local folder or an ``s3://`` prefix)::

    <face.dwpose_dir>/yolox_l.onnx            YOLOX-L, COCO classes, input (1, 3, 640, 640) BGR 0..255
    <face.dwpose_dir>/dw-ll_ucoco_384.onnx    DWPose-L 384x288, 133 keypoints, SimCC heads

The pipeline is DWPose's own (``annotator/dwpose`` in IDEA-Research/DWPose, the same as rtmlib's):

1. YOLOX: letterbox the image into 640x640 (top-left aligned, pad value 114, one ratio), run, decode the
   raw grid outputs (strides 8/16/32: ``xy = (out + grid) * stride``, ``wh = exp(out) * stride``),
   person score = objectness x class-0 score, keep > 0.3, NMS at IoU 0.45.
2. Top-down crop: the person box -> centre and scale (box size x 1.25, widened to the model's 288:384
   aspect), an affine warp (``cv2.getAffineTransform`` on three points) to 288x384, normalised with
   ImageNet mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375).
3. SimCC decoding: per keypoint, the argmax of the x logits (576 = 288 x 2 bins) and of the y logits
   (768 = 384 x 2), divided by the split ratio 2.0; the score is the smaller of the two maxima.
4. The keypoints go back through the inverse affine into image pixels.

Keypoint order is COCO-WholeBody: 17 body points (0-16), 6 feet points (17-22), 68 face points (23-90),
21 + 21 hand points (91-132), all 0-based. The 68 face points are the iBUG 68 layout, the order of
dlib's predictor and of our :class:`~facepose.pose.sequence.PoseSequence`. (DWPose's drawing code inserts
a neck point at index 17 before slicing, which is why it reads the face as ``candidate[:, 24:92]``: the
same points.)

Colour order: facepose images are RGB. YOLOX was trained by mmdet on BGR images without normalisation,
so the detector gets BGR. The pose model was trained with ``bgr_to_rgb=True`` (mmpose's
``PoseDataPreprocessor`` in ``dwpose-l_384x288.py``), so it gets RGB normalised with the RGB mean/std.
(DWPose's ControlNet annotator feeds BGR to both; ``pose_input="bgr"`` reproduces that.)

The ``dwpose`` package on PyPI (1.0.1) is not used: its entry point downloads the weights from the
Hugging Face hub (``from_pretrained_default``, ``huggingface_hub`` pinned to 0.20.1), it pins
onnxruntime 1.13.1 and opencv 4.7, and it returns drawn OpenPose images and JSON rather than keypoint
arrays. The few hundred lines below are the whole pipeline, with no hub access.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from facepose import storage
from facepose.config import FaceConfig
from facepose.errors import InputError, ModelNotFoundError

log = logging.getLogger(__name__)

DETECTOR_FILE = "yolox_l.onnx"
POSE_FILE = "dw-ll_ucoco_384.onnx"
MODEL_FILES = {
    DETECTOR_FILE: "YOLOX-L person detector",
    POSE_FILE: "DWPose-L whole-body model, 384x288",
}

N_WHOLEBODY = 133
FACE_START, FACE_STOP = 23, 91  # 0-based COCO-WholeBody indices of the 68 face points (after 17 body + 6 feet)
FACE_SLICE = slice(FACE_START, FACE_STOP)

YOLOX_INPUT = (640, 640)  # (h, w); square
YOLOX_STRIDES = (8, 16, 32)
YOLOX_PAD = 114
POSE_INPUT = (288, 384)  # (w, h) of dw-ll_ucoco_384
POSE_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # RGB
POSE_STD = np.array([58.395, 57.12, 57.375], np.float32)
BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0


@dataclass(frozen=True)
class DWPoseConfig:
    """Thresholds of the DWPose backend (DWPose's own values)."""

    det_score: float = 0.3  # person score (objectness x class) to keep a detection
    nms_iou: float = 0.45
    keypoint_score: float = 0.3  # face points below this get score 0 (DWPose hides them when drawing)
    pose_input: str = "rgb"  # rgb (as trained) | bgr (as DWPose's ControlNet annotator feeds it)
    providers: Optional[tuple[str, ...]] = None  # ONNX Runtime providers; None: CUDA if present, else CPU


# -- files --------------------------------------------------------------------------------------------
def model_files(model_dir: Optional[str]) -> tuple[str, str]:
    """The (detector, pose model) file URIs in ``model_dir``; ModelNotFoundError says what goes where."""
    wanted = ", ".join(f"{name} ({what})" for name, what in MODEL_FILES.items())
    if not model_dir:
        raise ModelNotFoundError(
            "the dwpose landmark model needs a weights folder: set face.dwpose_dir to a folder (or s3:// prefix) "
            f"holding {wanted}, from DWPose's ONNX release"
        )
    paths = [storage.join(str(model_dir), name) for name in MODEL_FILES]
    missing = [name for name, path in zip(MODEL_FILES, paths) if not storage.exists(path)]
    if missing:
        raise ModelNotFoundError(
            f"DWPose weights missing in {model_dir} (config key face.dwpose_dir): {', '.join(missing)} not found; "
            f"put {wanted} in that folder"
        )
    return paths[0], paths[1]


def load_session(uri: str, providers: Optional[Sequence[str]] = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for a local path or ``s3://`` URI."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    model: Any = str(storage.parse(uri).path) if not storage.is_remote(uri) else storage.read_bytes(uri)
    try:
        return ort.InferenceSession(model, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFoundError(
            f"{uri} is not a loadable ONNX model ({msg[:200]}); replace it with the file from DWPose's ONNX release"
        ) from None


# -- YOLOX ----------------------------------------------------------------------------------------------
def yolox_preprocess(image_bgr: np.ndarray, input_size: tuple[int, int] = YOLOX_INPUT) -> tuple[np.ndarray, float]:
    """image: (H, W, 3) uint8 BGR -> ((1, 3, h, w) float32 BGR 0..255 letterboxed at the top left, ratio).

    The image is resized by ``ratio = min(h / H, w / W)`` and the rest is filled with 114;
    a point in the input is ``image point * ratio``."""
    h, w = input_size
    ratio = min(h / image_bgr.shape[0], w / image_bgr.shape[1])
    nh, nw = int(image_bgr.shape[0] * ratio), int(image_bgr.shape[1] * ratio)
    padded = np.full((h, w, 3), YOLOX_PAD, np.uint8)
    padded[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    blob = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)  # (H, W, 3) -> (1, 3, H, W)
    return blob, ratio


def yolox_grids(input_size: tuple[int, int] = YOLOX_INPUT, strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """-> (grid (N, 2) cell x, y; stride (N, 1)) for every anchor point, in YOLOX's output order."""
    grids, expanded = [], []
    for stride in strides:
        hs, ws = input_size[0] // stride, input_size[1] // stride
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def yolox_decode(raw: np.ndarray, input_size: tuple[int, int] = YOLOX_INPUT, strides: Sequence[int] = YOLOX_STRIDES) -> np.ndarray:
    """raw: (1, N, 5 + C) or (N, 5 + C) YOLOX head outputs -> (N, 5 + C) with boxes as (cx, cy, w, h) in
    input pixels (objectness and class scores are already sigmoid-ed by the exported head)."""
    out = np.array(raw, dtype=np.float32).reshape(-1, raw.shape[-1])
    grid, stride = yolox_grids(input_size, strides)
    if len(out) != len(grid):
        raise InputError(f"YOLOX output has {len(out)} anchors, expected {len(grid)} for input {input_size}")
    out[:, :2] = (out[:, :2] + grid) * stride
    out[:, 2:4] = np.exp(out[:, 2:4]) * stride
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """boxes: (N, 4) x0, y0, x1, y1; scores: (N,) -> indices kept, best first (greedy NMS)."""
    x0, y0, x1, y1 = boxes.T
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = w * h
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def yolox_postprocess(
    raw: np.ndarray,
    ratio: float,
    input_size: tuple[int, int] = YOLOX_INPUT,
    score_thr: float = 0.3,
    nms_iou: float = 0.45,
) -> tuple[np.ndarray, np.ndarray]:
    """raw YOLOX outputs -> (person boxes (K, 4) x0, y0, x1, y1 in image pixels, scores (K,)), best first."""
    pred = yolox_decode(raw, input_size)
    scores = pred[:, 4] * pred[:, 5]  # objectness x P(person); COCO class 0 is person
    keep = scores > score_thr
    pred, scores = pred[keep], scores[keep]
    cxcy, wh = pred[:, :2], pred[:, 2:4]
    boxes = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1) / ratio
    idx = nms(boxes, scores, nms_iou)
    return boxes[idx].astype(np.float32), scores[idx].astype(np.float32)


# -- top-down crop --------------------------------------------------------------------------------------
def box_to_center_scale(box: Sequence[float], padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """(x0, y0, x1, y1) -> (centre (2,), scale (2,) = box (w, h) x padding)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    scale = np.array([(x1 - x0) * padding, (y1 - y0) * padding], np.float32)
    return center, scale


def fix_aspect_ratio(scale: np.ndarray, aspect: float) -> np.ndarray:
    """Widen (w, h) to the aspect ``w / h`` without shrinking either side."""
    w, h = float(scale[0]), float(scale[1])
    if w > h * aspect:
        return np.array([w, w / aspect], np.float32)
    return np.array([h * aspect, h], np.float32)


def warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int], inv: bool = False) -> np.ndarray:
    """The (2, 3) affine that maps the ``scale``-sized box at ``center`` onto ``output_size`` (w, h)
    (``inv``: the way back). The same similarity as mmpose's ``get_warp_matrix`` with no rotation, from
    three point pairs: the centre, a point half a box width above it, and one half a box width left of it."""
    dst_w, dst_h = output_size
    src_half = float(scale[0]) * 0.5
    c = np.asarray(center, np.float32)
    src = np.array([c, c + (0, -src_half), c + (-src_half, 0)], np.float32)
    d = np.array([dst_w * 0.5, dst_h * 0.5], np.float32)
    dst = np.array([d, d + (0, -dst_w * 0.5), d + (-dst_w * 0.5, 0)], np.float32)
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """points: (..., 2) -> (..., 2) through a (2, 3) affine."""
    pts = np.asarray(points, np.float64)
    return pts @ matrix[:, :2].T.astype(np.float64) + matrix[:, 2].astype(np.float64)


@dataclass
class TopDownCrop:
    """A model-input crop and how to map its pixels back: ``image = apply_affine(crop, inverse)``."""

    image: np.ndarray  # (h, w, 3) uint8, the warped crop
    center: np.ndarray  # (2,) box centre in image pixels
    scale: np.ndarray  # (2,) box size in image pixels after padding and the aspect fix
    matrix: np.ndarray  # (2, 3) image -> crop
    inverse: np.ndarray  # (2, 3) crop -> image


def top_down_crop(
    image: np.ndarray, box: Sequence[float], input_size: tuple[int, int] = POSE_INPUT, padding: float = BOX_PADDING
) -> TopDownCrop:
    """image: (H, W, 3) uint8; box: (x0, y0, x1, y1) -> the ``input_size`` (w, h) crop around the padded box."""
    w, h = input_size
    center, scale = box_to_center_scale(box, padding)
    scale = fix_aspect_ratio(scale, w / h)
    matrix = warp_matrix(center, scale, (w, h))
    crop = cv2.warpAffine(image, matrix, (int(w), int(h)), flags=cv2.INTER_LINEAR)
    return TopDownCrop(crop, center, scale, matrix, warp_matrix(center, scale, (w, h), inv=True))


def normalize(crop: np.ndarray, mean: np.ndarray = POSE_MEAN, std: np.ndarray = POSE_STD) -> np.ndarray:
    """crop: (h, w, 3) uint8 -> (1, 3, h, w) float32 ``(crop - mean) / std``."""
    x = (crop.astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # (h, w, 3) -> (1, 3, h, w)


# -- SimCC ----------------------------------------------------------------------------------------------
def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = SIMCC_SPLIT_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """simcc_x: (N, K, Wx), simcc_y: (N, K, Wy) logits -> (keypoints (N, K, 2) in model-input pixels,
    scores (N, K) = min(max_x, max_y)). Points whose score is <= 0 come back as (-1, -1), as in mmpose."""
    n, k, _ = simcc_x.shape
    sx = simcc_x.reshape(n * k, -1)
    sy = simcc_y.reshape(n * k, -1)
    locs = np.stack([np.argmax(sx, axis=1), np.argmax(sy, axis=1)], axis=-1).astype(np.float32)
    vals = np.minimum(sx.max(axis=1), sy.max(axis=1)).astype(np.float32)
    locs /= split_ratio
    locs[vals <= 0] = -1
    return locs.reshape(n, k, 2), vals.reshape(n, k)


# -- the model ------------------------------------------------------------------------------------------
def _rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"{name}: DWPose needs a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[..., :3])
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{name}: DWPose needs an (H, W, 3) RGB image, got shape {image.shape}")
    return image


def _input_size(session: Any, default: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of a (1, 3, h, w) model input; ``default`` where the model leaves them dynamic."""
    shape = session.get_inputs()[0].shape
    h, w = shape[2], shape[3]
    return (w if isinstance(w, int) else default[0], h if isinstance(h, int) else default[1])


class DWPoseLandmarks:
    """The 68 face points of DWPose's whole-body model (a :class:`~facepose.face.landmarks.LandmarkModel`).

    ``model_dir``: folder (or ``s3://`` prefix) with ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx``
    (config key ``face.dwpose_dir``). Both ONNX Runtime sessions are built once here.
    """

    name = "dwpose"

    def __init__(self, model_dir: Optional[str], cfg: Optional[DWPoseConfig] = None):
        self.cfg = cfg or DWPoseConfig()
        if self.cfg.pose_input not in ("rgb", "bgr"):
            raise InputError(f"DWPose pose_input must be 'rgb' or 'bgr', got {self.cfg.pose_input!r}")
        det_uri, pose_uri = model_files(model_dir)
        self.detector = load_session(det_uri, self.cfg.providers)
        self.pose = load_session(pose_uri, self.cfg.providers)
        det_w, det_h = _input_size(self.detector, (YOLOX_INPUT[1], YOLOX_INPUT[0]))
        self.det_input = (det_h, det_w)  # (h, w), as YOLOX's code keeps it
        self.pose_input = _input_size(self.pose, POSE_INPUT)  # (w, h), as RTMPose's code keeps it
        self._pose_outputs = self._simcc_output_order()
        log.info("DWPose loaded from %s (detector input %s, pose input %s)", model_dir, self.det_input, self.pose_input)

    def _simcc_output_order(self) -> list[str]:
        """Output names as [simcc_x, simcc_y]: told apart by their bin counts where the model states them."""
        outs = self.pose.get_outputs()
        if len(outs) != 2:
            raise ModelNotFoundError(f"{POSE_FILE} should have two outputs (simcc_x, simcc_y), has {len(outs)}; is it the DWPose model?")
        names = [o.name for o in outs]
        last = [o.shape[-1] for o in outs]
        if all(isinstance(v, int) for v in last) and last[0] == self.pose_input[1] * SIMCC_SPLIT_RATIO and last[1] != last[0]:
            names.reverse()
        return names

    # -- stages
    def detect_people(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """image: (H, W, 3) uint8 RGB -> (person boxes (K, 4) x0, y0, x1, y1, scores (K,)), best first."""
        bgr = np.ascontiguousarray(_rgb(image)[..., ::-1])
        blob, ratio = yolox_preprocess(bgr, self.det_input)
        raw = self.detector.run(None, {self.detector.get_inputs()[0].name: blob})[0]
        return yolox_postprocess(raw, ratio, self.det_input, self.cfg.det_score, self.cfg.nms_iou)

    def predict_wholebody(self, image: np.ndarray, person_box: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """image: (H, W, 3) uint8 RGB, person_box: (x0, y0, x1, y1) -> (keypoints (133, 2) float32 in image
        pixels, raw SimCC scores (133,) float32)."""
        rgb = _rgb(image)
        source = rgb if self.cfg.pose_input == "rgb" else np.ascontiguousarray(rgb[..., ::-1])
        crop = top_down_crop(source, person_box, self.pose_input)
        outputs = self.pose.run(self._pose_outputs, {self.pose.get_inputs()[0].name: normalize(crop.image)})
        locs, scores = simcc_decode(outputs[0], outputs[1], SIMCC_SPLIT_RATIO)
        points = apply_affine(locs[0], crop.inverse).astype(np.float32)
        return points, scores[0]

    def person_box(self, image: np.ndarray, face_box: Optional[Sequence[float]] = None) -> np.ndarray:
        """The person box to crop: the largest detected person holding the face box's centre (any person
        when no face box is given); without a detection, the face box widened 2x, else the whole image."""
        boxes, _ = self.detect_people(image)
        h, w = np.asarray(image).shape[:2]
        if face_box is not None:
            fx0, fy0, fx1, fy1 = (float(v) for v in face_box)
            cx, cy = (fx0 + fx1) / 2, (fy0 + fy1) / 2
            inside = (boxes[:, 0] <= cx) & (cx <= boxes[:, 2]) & (boxes[:, 1] <= cy) & (cy <= boxes[:, 3])
            boxes = boxes[inside]
            if len(boxes) == 0:
                side = max(fx1 - fx0, fy1 - fy0)
                return np.array([cx - side, cy - side, cx + side, cy + side], np.float32)
        if len(boxes) == 0:
            return np.array([0, 0, w, h], np.float32)  # as rtmlib: the whole image
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(areas))]

    # -- the LandmarkModel contract
    def predict_with_scores(self, image: np.ndarray, box: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray]:
        """image: (H, W, 3) uint8 RGB, box: optional (x0, y0, x1, y1) face box -> (face points (68, 2)
        float32 in image pixels, scores (68,) float32 in [0, 1], 0 below ``cfg.keypoint_score``)."""
        points, raw = self.predict_wholebody(image, self.person_box(image, box))
        scores = np.clip(raw[FACE_SLICE], 0.0, 1.0).astype(np.float32)
        scores[raw[FACE_SLICE] < self.cfg.keypoint_score] = 0.0
        return points[FACE_SLICE], scores

    def predict(self, image: np.ndarray, box: Optional[Sequence[float]] = None) -> np.ndarray:
        """image: (H, W, 3) uint8 RGB, box: optional (x0, y0, x1, y1) face box (picks the person around
        it) -> (68, 2) float32 face points in image pixels (iBUG order)."""
        return self.predict_with_scores(image, box)[0]


def _register() -> None:
    from facepose.face.landmarks import register_landmarks

    @register_landmarks("dwpose")
    def _dwpose(cfg: FaceConfig) -> DWPoseLandmarks:
        return DWPoseLandmarks(cfg.dwpose_dir)


_register()
