"""Follow one face through a video: landmarks every frame, detection only now and then.

Detection is what costs (tens of milliseconds a frame for HOG, seconds for the CNN); the 68-point
predictor costs about a millisecond. So the tracker detects once, and then feeds the predictor the box
that the previous frame's landmarks give (in the detector's terms, measured on the first detection).
When the face moved, the predictor runs a second time from where it went. It detects again:

- every ``cfg.detect_every`` frames, first in a small region around the face (a few milliseconds),
  then in the whole frame if that fails, to confirm the face is still there;
- when the landmarks drift: the box they give is more than ``cfg.drift_ratio`` of its size away from
  (or bigger or smaller than) the box the predictor was given, or keeps sliding on a second pass;
- when the face stops looking like itself in the last frame (a tiny grey patch of the box, compared
  by correlation): the landmarks alone cannot tell that a face left or the shot changed;
- on every frame after the face was lost, until it is found again.

A frame where no face is found yields ``None`` (score 0 in the :class:`PoseSequence`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np

from facepose.config import FaceConfig
from facepose.errors import MediaError, NoFaceError
from facepose.face.detect import Box, FaceDetector
from facepose.face.landmarks import N_POINTS, LandmarkModel, get_landmark_model
from facepose.pose.sequence import PoseSequence
from facepose.pose.smooth import smooth_landmarks
from facepose.timeline import FPS, frames_for_seconds

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (frames done, frames total)
Rect = tuple[float, float, float]  # (cx, cy, side): a square box

# A box that moved more than this share of its side between frames is refined by a second predictor pass.
REFINE_TOL = 0.03
# The face's box is compared frame to frame as a THUMB x THUMB grey patch; a correlation below
# MIN_SIMILARITY means the face is gone (or the shot changed), which the landmarks alone cannot tell.
THUMB = 16
MIN_SIMILARITY = 0.5


@dataclass
class TrackStats:
    """Counts of what the tracker did, for logs and benchmarks."""

    frames: int = 0
    detections: int = 0  # full-frame detector passes
    near_detections: int = 0  # detector passes in a small region around the face
    drifts: int = 0  # frames where the landmarks drifted from the box they were given
    lost: int = 0  # frames with no face


def _square(box: Sequence[float]) -> Rect:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, float(np.sqrt(max(1.0, (box[2] - box[0]) * (box[3] - box[1])))))


def _xyxy(r: Rect) -> Box:
    h = r[2] / 2
    return (r[0] - h, r[1] - h, r[0] + h, r[1] + h)


def _thumb(frame: np.ndarray, r: Rect, n: int = THUMB) -> np.ndarray:
    """The face's box as a tiny zero-mean, unit-norm grey patch, (n*n,) float32."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in _xyxy(r))
    step = max(1, int(r[2]) // (4 * n))  # subsample big faces before averaging: 10x faster, same patch
    patch = frame[max(0, y0):min(h, y1):step, max(0, x0):min(w, x1):step]
    if patch.shape[0] < 2 or patch.shape[1] < 2:
        return np.zeros(n * n, np.float32)
    small = cv2.resize(np.ascontiguousarray(patch), (n, n), interpolation=cv2.INTER_AREA).astype(np.float32)
    grey = small.mean(axis=2).ravel() if small.ndim == 3 else small.ravel()
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    return grey / norm if norm > 1e-3 else grey * 0


def _distance(a: Rect, b: Rect) -> float:
    """How far ``a`` is from ``b``, as a share of ``b``'s side (centre shift or size change)."""
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]), abs(a[2] - b[2])) / max(b[2], 1.0)


class FaceTracker:
    """Tracks the largest face of a frame stream.

    cfg: ``detect_every``, ``drift_ratio``, and the detector/landmark settings; ``detector`` and
    ``landmarks`` share already-loaded models (built from ``cfg`` when not given).
    """

    def __init__(
        self,
        cfg: Optional[FaceConfig] = None,
        fps: float = FPS,
        *,
        detector: Optional[FaceDetector] = None,
        landmarks: Optional[LandmarkModel] = None,
    ):
        self.cfg = cfg or FaceConfig()
        self.fps = float(fps)
        self.detector = detector or FaceDetector(self.cfg)
        self.model = landmarks or get_landmark_model(self.cfg)
        self.detect_every = max(1, int(self.cfg.detect_every))
        self.drift_ratio = float(self.cfg.drift_ratio)
        self.refine_tol = REFINE_TOL
        self.stats = TrackStats()
        self.reset()

    def reset(self) -> None:
        """Forget the face: the next frame is searched from scratch."""
        self._rect: Optional[Rect] = None  # the box for the next frame, from the last landmarks
        self._thumb: Optional[np.ndarray] = None  # how the face looked in it
        self._since = 0  # frames since the last detection
        self._calib: Optional[tuple[float, float, float]] = None  # detector box vs landmark centre/size

    # -- boxes from landmarks ------------------------------------------------------------------------
    def _calibrate(self, box: Box, lm: np.ndarray) -> None:
        # The predictor was trained on detector boxes, whose place and size relative to the landmarks
        # differ from the landmarks' own box. Measure the relation on the first detection of a face and
        # keep it: HOG boxes come in coarse steps of size (~15 %), and re-measuring would make the box
        # the predictor sees jump.
        c = lm.mean(axis=0)
        r = float(np.sqrt(((lm - c) ** 2).sum(axis=1).mean()))
        cx, cy, side = _square(box)
        self._calib = ((cx - c[0]) / r, (cy - c[1]) / r, side / r)

    def _rect_from(self, lm: np.ndarray) -> Rect:
        """The box a detector would give for these landmarks (from their centroid and RMS radius,
        which do not change as the head rolls, unlike the landmarks' bounding box)."""
        assert self._calib is not None
        c = lm.mean(axis=0)
        r = float(np.sqrt(((lm - c) ** 2).sum(axis=1).mean()))
        ox, oy, k = self._calib
        return (float(c[0] + ox * r), float(c[1] + oy * r), k * r)

    # -- per frame -----------------------------------------------------------------------------------
    def update(self, frame: np.ndarray) -> Optional[np.ndarray]:
        """frame: (H, W, 3) uint8 RGB -> (68, 2) float32 landmarks in its pixels, or None (no face)."""
        self.stats.frames += 1
        if self._rect is None:
            return self._start(frame)
        self._since += 1
        if self._since >= self.detect_every:
            return self._redetect(frame, periodic=True)
        # The last frame's box as it is: extrapolating its velocity amplified the predictor's jitter
        # (on the jittered synthetic video: larger errors and more re-detections).
        fit = self._fit(frame, self._rect)
        if fit is None:
            self.stats.drifts += 1
            return self._redetect(frame, periodic=False)
        return self._accept(*fit)

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[Optional[np.ndarray]]:
        """frames: an iterable of (H, W, 3) frames or of (n, H, W, 3) chunks (as ``iter_frames`` yields)
        -> yields (68, 2) float32 landmarks or None, one per frame."""
        for item in frames:
            if item.ndim == 4:
                for frame in item:
                    yield self.update(frame)
            else:
                yield self.update(item)

    def _fit(self, frame: np.ndarray, rect: Rect) -> Optional[tuple[np.ndarray, Rect, np.ndarray]]:
        """Landmarks from the tracked box, or None when they drift or the face no longer looks the same."""
        lm = self.model.predict(frame, _xyxy(rect))
        new = self._rect_from(lm)
        moved = _distance(new, rect)
        if self.refine_tol < moved <= self.drift_ratio:
            # The face moved: predict again from where it went. The fit should settle (the second step
            # much shorter than the first); a fit that keeps sliding has latched onto the wrong place.
            lm2 = self.model.predict(frame, _xyxy(new))
            new2 = self._rect_from(lm2)
            if _distance(new2, new) > 0.5 * moved:
                return None
            lm, new = lm2, new2
        h, w = frame.shape[:2]
        if moved > self.drift_ratio or not (0 <= new[0] < w and 0 <= new[1] < h):
            return None
        thumb = _thumb(frame, new)
        if self._thumb is not None and float(thumb @ self._thumb) < MIN_SIMILARITY:
            return None  # the landmarks sit where the face was, but the face is gone (or the shot cut)
        return lm, new, thumb

    def _start(self, frame: np.ndarray) -> Optional[np.ndarray]:
        self.stats.detections += 1
        boxes = self.detector.detect(frame, first_found=True)
        if not boxes:
            self.stats.lost += 1
            return None
        return self._from_detection(frame, boxes[0])

    def _redetect(self, frame: np.ndarray, periodic: bool) -> Optional[np.ndarray]:
        assert self._rect is not None
        rect = self._rect
        self.stats.near_detections += 1
        boxes = self.detector.detect_near(frame, _xyxy(rect))
        if not boxes:
            self.stats.detections += 1
            boxes = self.detector.detect(frame, first_found=True)
        if not boxes:
            log.debug("face lost at frame %d", self.stats.frames - 1)
            self.reset()
            self.stats.lost += 1
            return None
        self._since = 0
        if periodic and _agrees(_square(boxes[0]), rect):
            # the face is where the tracked box says: keep fitting from that box, so the landmarks do
            # not jump to the detector's coarser box
            fit = self._fit(frame, rect)
            if fit is not None:
                return self._accept(*fit)
        return self._from_detection(frame, boxes[0])

    def _from_detection(self, frame: np.ndarray, box: Box) -> np.ndarray:
        lm = self.model.predict(frame, box)
        if self._calib is None:
            self._calibrate(box, lm)
        self._since = 0
        rect = self._rect_from(lm)
        return self._accept(lm, rect, _thumb(frame, rect))

    def _accept(self, lm: np.ndarray, rect: Rect, thumb: np.ndarray) -> np.ndarray:
        self._rect, self._thumb = rect, thumb
        return lm


def _agrees(det: Rect, tracked: Rect) -> bool:
    """Whether a detection is the tracked face: centres within a quarter of a side, sizes within 1.5x
    (HOG's boxes come in coarse steps, so this is looser than the drift test)."""
    ratio = det[2] / max(tracked[2], 1.0)
    near = max(abs(det[0] - tracked[0]), abs(det[1] - tracked[1])) <= 0.25 * tracked[2]
    return near and 2 / 3 <= ratio <= 1.5


# -- whole sequences ---------------------------------------------------------------------------------
def track_frames(
    frames: Iterable[np.ndarray],
    cfg: Optional[FaceConfig] = None,
    fps: float = FPS,
    progress: Optional[ProgressFn] = None,
    total: int = 0,
    source: str = "frames",
    tracker: Optional[FaceTracker] = None,
) -> PoseSequence:
    """frames: (H, W, 3) frames or (n, H, W, 3) chunks at ``fps`` -> PoseSequence in their pixels,
    smoothed when ``cfg.smoothing.enabled``. Frames without a face get zeros and score 0;
    NoFaceError naming ``source`` when no frame has one."""
    cfg = cfg or FaceConfig()
    tracker = tracker or FaceTracker(cfg, fps)
    found: list[Optional[np.ndarray]] = []
    size: Optional[tuple[int, int]] = None
    for item in frames:
        chunk = item if item.ndim == 4 else item[None]
        if size is None and len(chunk):
            size = (int(chunk.shape[2]), int(chunk.shape[1]))
        for frame in chunk:
            found.append(tracker.update(frame))
        if progress is not None:
            progress(len(found), max(total, len(found)))
    seen = np.array([f is not None for f in found], dtype=bool)
    if size is None or not seen.any():
        raise NoFaceError(f"no face found in any frame of {source}; use a video with one clearly visible face")
    landmarks = np.zeros((len(found), N_POINTS, 2), np.float32)
    landmarks[seen] = np.stack([f for f in found if f is not None])
    if cfg.smoothing.enabled:
        landmarks = smooth_landmarks(landmarks, fps, cfg.smoothing, visible=seen)
    scores = np.repeat(seen.astype(np.float32)[:, None], N_POINTS, axis=1)
    log.info(
        "tracked %s: %d frames, %d lost, %d full and %d local detections",
        source, tracker.stats.frames, tracker.stats.lost, tracker.stats.detections, tracker.stats.near_detections,
    )
    return PoseSequence(landmarks=landmarks, scores=scores, fps=float(fps), width=size[0], height=size[1], source=source)


def track_video(
    uri: str,
    cfg: Optional[FaceConfig] = None,
    fps: float = FPS,
    progress: Optional[ProgressFn] = None,
    start_s: Optional[float] = None,
    end_s: Optional[float] = None,
) -> PoseSequence:
    """Landmarks of the face in the video at ``uri`` (path or s3://, fetched once), decoded in chunks at
    ``fps`` (between ``start_s`` and ``end_s`` if given) -> PoseSequence on the video's canvas.
    MediaError for an unreadable video and NoFaceError for one without a face, both naming ``uri``."""
    from facepose import storage
    from facepose.media.video import iter_frames, probe_video

    name = str(uri)
    with storage.local_path(uri) as path:
        try:
            total = 0
            if progress is not None:
                info = probe_video(path)
                t0 = start_s or 0.0
                t1 = info.duration if end_s is None else min(end_s, info.duration)
                total = max(0, frames_for_seconds(t1 - t0, fps))
            frames = iter_frames(path, fps=fps, start_s=start_s, end_s=end_s)
            return track_frames(frames, cfg, fps, progress=progress, total=total, source=name)
        except MediaError as e:
            if str(path) == name:
                raise
            raise MediaError(str(e).replace(str(path), name)) from None
