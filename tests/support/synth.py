"""Driving videos with known answers: a real face photo moved, rotated and scaled along a known path.

Two paths share one face centre (:data:`FACE_CENTRE`, measured): :func:`driving_video` (a slow sway,
turn and zoom about the face, with the true landmarks of every frame) and :func:`moving_face_frames` (the
face carried around the frame centre on a figure of eight, as the batch tests and the bundled example's
driving video use it).

``skimage.data.astronaut()`` (a real public-domain portrait) is warped frame by frame with affine maps
``A_t`` (2x3, photo pixels -> frame pixels). The true landmarks of frame t are ``A_t`` applied to the
landmarks found on the still photo, so a tracker can be scored in pixels. A noisy variant adds a small
random jitter to each frame's map (the jittered maps are what the frames show; the smooth path is what a
smoother should recover).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

# Centre of the astronaut's face in the 512x512 photo: the middle of dlib's HOG box (175, 76, 266, 167),
# checked by tests/test_support.py. The paths turn, scale and carry the photo about this point.
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


# -- the face on a figure of eight ------------------------------------------------------------------
def moving_face_frames(
    image: np.ndarray, seconds: float, fps: float = 24.0, size: int = 256, zoom: float = 1.0,
    center: tuple[float, float] = FACE_CENTRE, amplitude: float = 0.06, blur: float = 0.0,
) -> Iterator[np.ndarray]:
    """image: (H, W, 3) uint8 RGB -> ``round(seconds * fps)`` frames (size, size, 3): the image scaled by
    ``zoom`` with its point ``center`` (the face) moved along a smooth loop around the frame centre (a
    figure of eight of ``amplitude`` times the frame side, with a slight breathing zoom), so the face's
    path is known: see :func:`path_at`. ``blur`` > 0: a Gaussian blur of that sigma (output pixels)."""
    n = int(round(seconds * fps))
    for i in range(n):
        dx, dy, s = path_at(i / fps, seconds, amplitude)
        k = zoom * s
        m = np.array([[k, 0, size / 2 + dx * size - k * center[0]], [0, k, size / 2 + dy * size - k * center[1]]], np.float32)
        frame = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if blur > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), blur)
        yield frame


def path_at(t: float, period: float, amplitude: float) -> tuple[float, float, float]:
    """The known path at time ``t``: (dx, dy) as shares of the frame side, and a zoom factor."""
    a = 2 * np.pi * t / period
    return amplitude * np.sin(a), 0.5 * amplitude * np.sin(2 * a), 1.0 + 0.03 * np.sin(a)


def write_face_video(path: str | Path, image: np.ndarray, seconds: float = 1.5, audio: Optional[np.ndarray] = None, **kwargs) -> str:
    """The photo moved along :func:`path_at` for ``seconds`` at 24 fps, as an H.264 mp4 (with ``audio``,
    16 kHz mono, muxed when given). ``kwargs`` go to :func:`moving_face_frames` (size, zoom, blur, amplitude)."""
    from facepose.media.video import write_video

    write_video(str(path), moving_face_frames(image, seconds, **kwargs), fps=24, audio=audio, sample_rate=16000, crf=23)
    return str(path)


def scenery_frames(seconds: float, size: int = 256) -> list[np.ndarray]:
    """A shot without a face: skimage's coffee photo, panning slowly, at 24 fps."""
    from skimage import data

    img = np.ascontiguousarray(data.coffee())
    n = int(round(seconds * 24))
    return [cv2.resize(img[40:340, 20 + i:320 + i], (size, size), interpolation=cv2.INTER_AREA) for i in range(n)]


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


# -- shot cuts --------------------------------------------------------------------------------------
@dataclass
class ShotClip:
    """A clip of several shots with known transitions. frames: (T, H, W, 3) uint8 RGB;
    ``cuts``: first frame of each new shot after a hard cut; ``gradual``: [a, b) frame ranges of the
    fades and dissolves (a detector may mark a cut anywhere in one)."""

    frames: np.ndarray
    cuts: list[int]
    gradual: list[tuple[int, int]]
    fps: float = 24.0

    def score(self, detected: list[int], tolerance: int = 2) -> tuple[float, float]:
        """detected: cut frames (first frame of the new shot) -> (precision, recall), one to one: a
        detection is right within ``tolerance`` frames of a hard cut or anywhere in a fade/dissolve
        (widened by ``tolerance``), and each transition is matched by at most one detection, so a second
        detection in the same fade is a false positive."""
        windows = [(c - tolerance, c + tolerance + 1) for c in self.cuts]
        windows += [(a - tolerance, b + tolerance) for a, b in self.gradual]
        matched = sum(any(a <= d < b for d in detected) for a, b in windows)
        precision = matched / len(detected) if detected else 1.0
        return precision, matched / len(windows)


def _shot_sources() -> list[np.ndarray]:
    """Six real photographs (skimage.data), RGB uint8."""
    from skimage import data

    camera = np.repeat(data.camera()[..., None], 3, axis=2)  # grey -> RGB
    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), camera, data.immunohistochemistry()]


def _shot(photo: np.ndarray, n: int, size: tuple[int, int], rng: np.random.Generator, noise: float) -> np.ndarray:
    """n frames of ``photo`` filling ``size`` (W, H) under a slow pan and zoom (about 1 %/s), with
    Gaussian sensor noise of ``noise`` grey levels."""
    w, h = size
    ph, pw = photo.shape[:2]
    base = max(w / pw, h / ph) * 1.15  # room to pan without showing the border
    zoom = rng.choice([-1.0, 1.0]) * 0.1 / n  # up to 10 % over the shot
    pan = rng.uniform(-0.05, 0.05, 2) * (w, h)  # up to 5 % of the frame over the shot
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        s = base * (1.0 + zoom * t + (0.1 if zoom < 0 else 0.0))
        shift = pan * t / n
        m = np.array([[s, 0, w / 2 - s * pw / 2 + shift[0]], [0, s, h / 2 - s * ph / 2 + shift[1]]], np.float32)
        frame = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if noise:
            frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
        out[t] = frame
    return out


def shot_clip(size: tuple[int, int] = (320, 180), shot_frames: int = 40, fade: int = 12, noise: float = 4.0, seed: int = 0) -> ShotClip:
    """Six shots of ``shot_frames`` each from six real photographs, each panning and zooming slowly with
    sensor noise, joined by: a hard cut, a hard cut, a ``fade``-frame fade to black and back (half out,
    half in), a hard cut, a ``fade``-frame cross-dissolve. size: (W, H)."""
    rng = np.random.default_rng(seed)
    shots = [_shot(p, shot_frames, size, rng, noise) for p in _shot_sources()]
    kinds = ["cut", "cut", "fade", "cut", "dissolve"]
    frames, cuts, gradual = [shots[0]], [], []
    n = shot_frames
    for kind, shot in zip(kinds, shots[1:]):
        if kind == "cut":
            cuts.append(n)
            frames.append(shot)
            n += len(shot)
            continue
        w = np.linspace(0.0, 1.0, fade + 2)[1:-1, None, None, None]  # (fade, 1, 1, 1), strictly between 0 and 1
        prev = frames[-1]
        if kind == "fade":  # last fade/2 frames of the previous shot go down to black, first fade/2 of this come up
            k = fade // 2
            out = (prev[-k:] * (1.0 - np.linspace(0, 1, k + 1)[1:, None, None, None])).astype(np.uint8)
            inn = (shot[:k] * np.linspace(0, 1, k + 1)[:-1, None, None, None]).astype(np.uint8)
            frames[-1] = np.concatenate([prev[:-k], out])
            frames.append(np.concatenate([inn, shot[k:]]))
            gradual.append((n - k, n + k))
        else:  # the last `fade` frames of the previous shot blend into the first `fade` of this one
            mix = (prev[-fade:] * (1.0 - w) + shot[:fade] * w).astype(np.uint8)
            frames[-1] = np.concatenate([prev[:-fade], mix])
            frames.append(shot[fade:])
            gradual.append((n - fade, n))
            n -= fade
        n += len(shot)
    return ShotClip(np.concatenate(frames), cuts, gradual)
