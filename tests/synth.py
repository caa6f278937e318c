"""Driving videos with known answers: a real face photo moved, rotated and scaled along a known path.

``skimage.data.astronaut()`` (a real public-domain portrait) is warped frame by frame with affine maps
``A_t`` (2x3, photo pixels -> frame pixels). The true landmarks of frame t are ``A_t`` applied to the
landmarks found on the still photo, so a tracker can be scored in pixels. A noisy variant adds a small
random jitter to each frame's map (the jittered maps are what the frames show; the smooth path is what a
smoother should recover).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

# Centre of the astronaut's face in the 512x512 photo (the middle of its HOG box); the path turns
# and scales the photo about this point so the face stays in the frame.
FACE_CENTRE = (221.0, 122.0)


@dataclass
class DrivingVideo:
    """frames: (T, H, W, 3) uint8 RGB; affines: (T, 2, 3) photo -> frame, what the frames show;
    path: (T, 2, 3) the smooth path without jitter (equal to ``affines`` when there is no noise)."""

    frames: np.ndarray
    affines: np.ndarray
    path: np.ndarray
    fps: float

    def truth(self, photo_landmarks: np.ndarray, smooth: bool = False) -> np.ndarray:
        """photo_landmarks: (68, 2) on the still photo -> (T, 68, 2) in frame pixels (along the
        jittered maps, or the smooth path with ``smooth=True``)."""
        return apply_affine(self.path if smooth else self.affines, photo_landmarks)


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def apply_affine(affines: np.ndarray, points: np.ndarray) -> np.ndarray:
    """affines: (T, 2, 3) or (2, 3), points: (N, 2) -> (T, N, 2) or (N, 2)."""
    a = np.asarray(affines, np.float64)
    p = np.asarray(points, np.float64)
    out = p @ a[..., :, :2].swapaxes(-1, -2) + a[..., None, :, 2]
    return out.astype(np.float32)


def smooth_path(
    n_frames: int,
    fps: float = 24.0,
    shift: tuple[float, float] = (40.0, 25.0),
    angle: float = 10.0,
    scale: tuple[float, float] = (0.9, 1.1),
    centre: tuple[float, float] = FACE_CENTRE,
    base_scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """(n_frames, 2, 3) affine maps along slow sinusoids: a shift of up to ``shift`` px, a turn of up to
    ``angle`` degrees and a zoom between ``scale``, about the face ``centre``; then ``base_scale`` and
    ``offset`` place the photo on the canvas."""
    t = np.arange(n_frames) / fps
    dx = shift[0] * np.sin(2 * np.pi * 0.35 * t)
    dy = shift[1] * np.sin(2 * np.pi * 0.23 * t + 0.7)
    ang = angle * np.sin(2 * np.pi * 0.19 * t + 0.3)
    lo, hi = scale
    sc = (lo + hi) / 2 + (hi - lo) / 2 * np.sin(2 * np.pi * 0.27 * t + 1.1)
    return np.stack([
        _place(cv2.getRotationMatrix2D(centre, float(a), float(s)), base_scale, (offset[0] + x, offset[1] + y))
        for x, y, a, s in zip(dx, dy, ang, sc)
    ])


def _place(m: np.ndarray, base_scale: float, offset: tuple[float, float]) -> np.ndarray:
    out = m * base_scale
    out[:, 2] += offset
    return out


def jitter(affines: np.ndarray, rng: np.random.Generator, shift_px: float = 1.5, angle_deg: float = 0.4, scale: float = 0.004) -> np.ndarray:
    """Each map composed with a small random shift, turn and zoom about the face centre."""
    out = affines.copy()
    for i, a in enumerate(affines):
        c = a[:, :2] @ np.array(FACE_CENTRE) + a[:, 2]  # where the face centre lands
        j = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), float(rng.normal(0, angle_deg)), float(1 + rng.normal(0, scale)))
        j[:, 2] += rng.normal(0, shift_px, 2)
        out[i] = j[:, :2] @ a  # j after a: linear parts multiply, a's shift turns with j
        out[i, :, 2] += j[:, 2]
    return out


def render(photo: np.ndarray, affines: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """photo: (h, w, 3), affines: (T, 2, 3), size: (W, H) -> (T, H, W, 3) uint8 frames."""
    return np.stack([
        cv2.warpAffine(photo, a, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101) for a in affines
    ])


def driving_video(
    n_frames: int = 72,
    fps: float = 24.0,
    size: tuple[int, int] = (512, 512),
    noise: float = 0.0,
    seed: int = 0,
    base_scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    photo: Optional[np.ndarray] = None,
) -> DrivingVideo:
    """The astronaut moving along :func:`smooth_path` on a ``size`` canvas; ``noise`` scales a per-frame
    random jitter of the maps (0: none; 1: about 1.5 px, 0.4 degrees, 0.4 % zoom)."""
    photo = astronaut() if photo is None else photo
    path = smooth_path(n_frames, fps, base_scale=base_scale, offset=offset)
    affines = path
    if noise > 0:
        rng = np.random.default_rng(seed)
        affines = jitter(path, rng, 1.5 * noise, 0.4 * noise, 0.004 * noise)
    return DrivingVideo(frames=render(photo, affines, size), affines=affines, path=path, fps=fps)


def write_driving_video(uri: str, video: DrivingVideo) -> str:
    """Encode the frames to an H.264 mp4 at ``uri`` (path or s3://) with facepose.media; returns ``uri``."""
    from facepose.media.video import write_video

    write_video(uri, video.frames, fps=video.fps)
    return uri


# -- phone photos ---------------------------------------------------------------------------------
def phone_photo(astronaut: np.ndarray, face_px: int = 180, size=(4032, 3024), at=(2600, 900)) -> tuple[np.ndarray, tuple]:
    """A 12 MP landscape photo (H, W, 3) on sensor-like noise with the astronaut's head scaled so her
    face (114 px wide in her photo) is ``face_px`` wide, the head's top-left at ``at``. -> (photo, face box)."""
    face = (168, 68, 282, 188)  # the astronaut's face box in her 512 px photo (tests/test_face.py)
    k = face_px / (face[2] - face[0])
    head = astronaut[20:260, 110:340]  # hair to collar
    head = cv2.resize(head, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    w, h = size
    photo = np.clip(rng.normal(120, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    photo = cv2.GaussianBlur(photo, (0, 0), 3)  # a soft, textured background
    y0, x0 = at[1], at[0]
    photo[y0:y0 + head.shape[0], x0:x0 + head.shape[1]] = head
    fx0, fy0 = x0 + (face[0] - 110) * k, y0 + (face[1] - 20) * k
    return photo, (fx0, fy0, fx0 + face_px, fy0 + (face[3] - face[1]) * k)
