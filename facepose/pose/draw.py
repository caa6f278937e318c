"""Pose images: the 68 face points drawn the way Moore-AnimateAnyone draws DWPose faces.

Moore-AnimateAnyone's ``draw_facepose`` (``src/dwpose/util.py``) starts from a black canvas and draws each
face point as ``cv2.circle(canvas, (int(x), int(y)), 3, (255, 255, 255), thickness=-1)``. The Pose Guider
was trained on exactly those images, so :func:`draw_pose` reproduces them pixel for pixel at 512 (points
truncated to integer pixels, 8-connected filled circles). Two deliberate differences: the radius scales
with the canvas (3 at 512 on the shorter side, never below 1), and points are skipped when their score is
<= 0 or when they fall outside the canvas, where DWPose marks lost points with -1 and skips anything
within one pixel of the top or left edge.

``lines=True`` first connects the points along the iBUG contours (jaw, brows, nose, eyes, lips) with thin
grey lines, then draws the white dots on top, so the dots stay exactly as without lines.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np

from facepose import face_layout as layout
from facepose.errors import InputError
from facepose.pose.sequence import N_POINTS, PoseSequence

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (frames done, frames total)

BASE_RADIUS = 3  # DWPose's face point radius ...
BASE_SIZE = 512  # ... on a canvas whose shorter side is this

# iBUG 68-point contours: (first, last, closed). Lines are grey-ish so the white dots stay visible.
CONTOURS: tuple[tuple[int, int, bool], ...] = tuple(
    (int(part[0]), int(part[-1]), closed)
    for part, closed in (
        (layout.JAW, False),
        (layout.RIGHT_BROW, False),  # image left
        (layout.LEFT_BROW, False),
        (layout.NOSE_BRIDGE, False),
        (layout.NOSTRILS, False),
        (layout.RIGHT_EYE, True),
        (layout.LEFT_EYE, True),
        (layout.OUTER_LIP, True),
        (layout.INNER_LIP, True),
    )
)
CONTOUR_COLOURS: tuple[tuple[int, int, int], ...] = (
    (120, 120, 120),  # jaw
    (140, 120, 100),  # brows
    (140, 120, 100),
    (100, 130, 140),  # nose
    (100, 130, 140),
    (100, 140, 100),  # eyes
    (100, 140, 100),
    (150, 100, 110),  # lips
    (150, 100, 110),
)


def scaled_radius(width: int, height: int, radius: Optional[int] = None, base: float = BASE_RADIUS) -> int:
    """The dot radius for a ``width`` x ``height`` canvas: ``radius`` if given, else ``base`` (3) at 512
    scaled with the shorter side, at least 1."""
    if radius is not None:
        return max(1, int(radius))
    return max(1, int(round(base * min(width, height) / BASE_SIZE)))


def contour_edges() -> list[tuple[int, int]]:
    """The (i, j) point pairs that ``lines=True`` connects."""
    edges = []
    for first, last, closed in CONTOURS:
        edges += [(i, i + 1) for i in range(first, last)]
        if closed:
            edges.append((last, first))
    return edges


def draw_pose(
    landmarks: np.ndarray,
    size: tuple[int, int] = (512, 512),
    radius: Optional[int] = None,
    lines: bool = False,
    scores: Optional[np.ndarray] = None,
) -> np.ndarray:
    """landmarks: (68, 2) float canvas pixels (x right, y down); size: (W, H) -> (H, W, 3) uint8 pose image.

    radius: dot radius in pixels (default 3 at 512, scaled with the shorter side, at least 1);
    lines: connect the points along the face contours in grey; scores: optional (68,), points <= 0 are
    skipped (as are non-finite points and points outside the canvas).
    """
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise InputError(f"pose image size must be positive (W, H), got {size}")
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (N_POINTS, 2):
        raise InputError(f"draw_pose needs landmarks of shape (68, 2), got {pts.shape}")
    canvas = np.zeros((height, width, 3), np.uint8)

    # Moore-AnimateAnyone truncates to integer pixels: int(x * W) on normalised coordinates.
    finite = np.isfinite(pts).all(axis=1)
    ipts = np.zeros((N_POINTS, 2), np.int64)
    ipts[finite] = np.floor(pts[finite]).astype(np.int64)
    keep = finite & (ipts[:, 0] >= 0) & (ipts[:, 0] < width) & (ipts[:, 1] >= 0) & (ipts[:, 1] < height)
    if scores is not None:
        sc = np.asarray(scores, dtype=np.float64).reshape(-1)
        if sc.shape != (N_POINTS,):
            raise InputError(f"draw_pose needs scores of shape (68,), got {np.shape(scores)}")
        keep &= sc > 0

    r = scaled_radius(width, height, radius)
    if lines:
        thickness = max(1, int(round(min(width, height) / BASE_SIZE)))
        colour_of = {}
        for (first, last, closed), colour in zip(CONTOURS, CONTOUR_COLOURS):
            for i in range(first, last + 1):
                colour_of[i] = colour
        for i, j in contour_edges():
            if keep[i] and keep[j]:
                cv2.line(canvas, tuple(map(int, ipts[i])), tuple(map(int, ipts[j])), colour_of[i], thickness, cv2.LINE_AA)
    for x, y in ipts[keep]:
        cv2.circle(canvas, (int(x), int(y)), r, (255, 255, 255), thickness=-1)
    return canvas


def letterbox(width: int, height: int, size: int) -> tuple[float, float, float]:
    """How a ``width`` x ``height`` canvas maps onto a ``size`` x ``size`` square -> (scale, dx, dy).

    The canvas is scaled by ``size / max(width, height)`` (aspect kept, nothing cropped) and centred;
    ``square = canvas * scale + (dx, dy)``.
    """
    scale = size / float(max(width, height))
    return scale, (size - width * scale) / 2.0, (size - height * scale) / 2.0


def iter_pose_images(pose: PoseSequence, size: int = 512, lines: bool = False, point_radius: float = BASE_RADIUS) -> Iterator[np.ndarray]:
    """pose -> yields len(pose) pose images (size, size, 3) uint8.

    point_radius: the dot radius at 512 (config ``pose.point_radius``), scaled to ``size``.

    The pose canvas (``pose.width`` x ``pose.height``) is letterboxed onto the square: scaled by
    ``size / max(width, height)`` and centred, so faces keep their proportions and no point is cropped
    (a portrait 512x768 canvas leaves black bars left and right). Points with score 0 are not drawn.
    """
    size = int(size)
    if size <= 0:
        raise InputError(f"pose image size must be positive, got {size}")
    scale, dx, dy = letterbox(pose.width, pose.height, size)
    offset = np.array([dx, dy], np.float32)
    radius = scaled_radius(size, size, base=point_radius)
    for t in range(len(pose)):
        pts = pose.landmarks[t] * np.float32(scale) + offset
        yield draw_pose(pts, (size, size), radius=radius, lines=lines, scores=pose.scores[t])


def write_pose_video(
    pose: PoseSequence,
    uri: str,
    size: int = 512,
    lines: bool = False,
    progress: Optional[ProgressFn] = None,
    point_radius: float = BASE_RADIUS,
) -> int:
    """Write the pose images of ``pose`` as an H.264 mp4 at ``pose.fps`` to a path or URI -> frames written.

    Frames are streamed into the encoder one at a time, so memory stays flat for any length;
    ``progress(done, total)`` is called after each frame; ``point_radius`` is the dot radius at 512.
    """
    from facepose.media.video import VideoWriter

    if int(size) % 2:
        raise InputError(f"{uri}: pose video size must be even for H.264 (yuv420p), got {size}")
    if len(pose) == 0:
        raise InputError(f"pose {pose.source or '(unnamed)'} has no frames; nothing to write to {uri}")
    total = len(pose)
    done = 0
    with VideoWriter(uri, fps=pose.fps) as writer:
        for image in iter_pose_images(pose, size=size, lines=lines, point_radius=point_radius):
            writer.write(image)
            done += 1
            if progress is not None:
                progress(done, total)
    log.info("wrote %d pose frames to %s", done, uri)
    return done


__all__: Sequence[str] = (
    "CONTOURS",
    "contour_edges",
    "draw_pose",
    "iter_pose_images",
    "letterbox",
    "scaled_radius",
    "write_pose_video",
)
