"""Named pose presets: parameter tracks of the face model (``face_model.py``), bundled as Parquet.

Each preset is a :class:`FaceTrack` (head pose, expression amplitudes and a small translation per frame)
that loops seamlessly: every head and sway component is a sum of ``a * (1 - cos(2 pi k t / L))`` with
integer ``k`` cycles per loop, so it is zero with zero velocity at the seam, and blinks, syllables and
expression events sit at least half a second away from it. Frame 0 is the neutral face (all parameters
zero), which relative retargeting takes as the driver's rest pose.

The bundled files (``presets/<name>.parquet``, 512 x 512 canvas, 24 fps, ``head_pose`` filled) are made by
``scripts/make_presets.py`` from :func:`preset_track`; the tests check that they match it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from facepose.errors import InputError
from facepose.pose import face_model as fm
from facepose.pose.sequence import PoseSequence
from facepose.timeline import FPS, frames_for_seconds

CANVAS = 512
# Model placement on the 512 canvas: about where crop_face puts a face.
MODEL_SCALE = fm.CROP_SCALE  # pixels per model unit (half the face width)
MODEL_CENTER = fm.CROP_CENTER  # canvas pixel of the model origin (between the eyes)


@dataclass
class FaceTrack:
    """Face-model parameters per frame.

    head_pose: (T, 3) yaw, pitch, roll degrees; expr: (T, N_EXPR) amplitudes in ``fm.EXPRESSIONS``
    order; offset: (T, 2) head translation in model units (half face widths).
    """

    head_pose: np.ndarray
    expr: np.ndarray
    offset: np.ndarray
    fps: float = FPS

    def __len__(self) -> int:
        return int(self.head_pose.shape[0])

    def to_pose(self, source: str = "") -> PoseSequence:
        """Project onto the 512 canvas: -> PoseSequence (T, 68, 2) with head_pose filled."""
        lm = fm.project(self.head_pose, self.expr, scale=MODEL_SCALE, center=MODEL_CENTER,
                        offset=self.offset * MODEL_SCALE)
        lm = np.round(lm * 32.0) / 32.0  # 1/32 px is plenty and compresses to half the size
        return PoseSequence(landmarks=lm, fps=float(self.fps), width=CANVAS, height=CANVAS,
                            head_pose=self.head_pose.astype(np.float32), source=source)


# -- building blocks ------------------------------------------------------------------------------
def _loop(t: np.ndarray, L: float, terms: dict[int, float]) -> np.ndarray:
    """sum over k of a_k * (1 - cos(2 pi k t / L)) / 2: zero value and zero velocity at t = 0 and t = L."""
    out = np.zeros_like(t)
    for k, a in terms.items():
        out += a * (1.0 - np.cos(2 * np.pi * k * t / L)) / 2.0
    return out


def _plateau(t: np.ndarray, start: float, rise: float, hold: float, fall: float) -> np.ndarray:
    """Raised-cosine ramp up from ``start`` over ``rise`` s, 1 for ``hold`` s, ramp down over ``fall`` s."""
    out = np.zeros_like(t)
    up = (t >= start) & (t < start + rise)
    out[up] = 0.5 - 0.5 * np.cos(np.pi * (t[up] - start) / rise)
    top = (t >= start + rise) & (t < start + rise + hold)
    out[top] = 1.0
    t1 = start + rise + hold
    down = (t >= t1) & (t < t1 + fall)
    out[down] = 0.5 + 0.5 * np.cos(np.pi * (t[down] - t1) / fall)
    return out


def _bump(t: np.ndarray, center: float, width: float) -> np.ndarray:
    """Raised-cosine bump of total ``width`` s, 1 at ``center``."""
    x = (t - center) / width
    return np.where(np.abs(x) < 0.5, 0.5 + 0.5 * np.cos(2 * np.pi * x), 0.0)


def blinks(t: np.ndarray, times: list[float]) -> np.ndarray:
    """Blink profile in [0, 1]: lids close in about 80 ms, stay 30 ms, reopen in about 170 ms."""
    out = np.zeros_like(t)
    for c in times:
        out = np.maximum(out, _plateau(t, c - 0.08, 0.08, 0.03, 0.17))
    return out


def syllables(t: np.ndarray, phrases: list[tuple[float, float]], rate: float, amp: tuple[float, float],
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Speech-like mouth motion inside ``phrases`` ((start, end) seconds).

    -> jaw (T,), lip shape (T,) in [-1, 1] (+ stretch, - pucker), stress (T,) in [0, 1] (emphasised
    syllables, for nods and brows), voiced (T,) phrase envelope.
    """
    jaw = np.zeros_like(t)
    shape = np.zeros_like(t)
    stress = np.zeros_like(t)
    voiced = np.zeros_like(t)
    for start, end in phrases:
        voiced = np.maximum(voiced, _plateau(t, start, 0.15, max(end - start - 0.3, 0.0), 0.15))
        c = start + 0.5 / rate
        while c < end - 0.35 / rate:
            a = rng.uniform(*amp)
            b = _bump(t, c, 1.15 / rate)
            jaw = np.maximum(jaw, a * b)
            shape += rng.uniform(-1, 1) * b
            if a > amp[0] + 0.8 * (amp[1] - amp[0]):
                stress = np.maximum(stress, _bump(t, c, 0.6))
            c += rng.uniform(0.75, 1.25) / rate
    # Lips rest slightly apart inside a phrase, closed between phrases.
    jaw = np.maximum(jaw, 0.06 * voiced)
    return jaw, np.clip(shape, -1, 1), stress, voiced


# -- the presets -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    seconds: float
    build: Callable[[np.ndarray, float], FaceTrack]


def _track(t: np.ndarray, yaw=0.0, pitch=0.0, roll=0.0, dx=0.0, dy=0.0, **expr) -> FaceTrack:
    T = len(t)
    hp = np.stack([np.broadcast_to(np.asarray(v, np.float64), (T,)) for v in (yaw, pitch, roll)], 1)
    ex = np.zeros((T, fm.N_EXPR))
    for name, v in expr.items():
        ex[:, fm.EXPRESSIONS.index(name)] = v
    off = np.stack([np.broadcast_to(np.asarray(v, np.float64), (T,)) for v in (dx, dy)], 1)
    return FaceTrack(head_pose=hp, expr=ex, offset=off)


def _both_blinks(t: np.ndarray, times: list[float]) -> dict[str, np.ndarray]:
    b = blinks(t, times)
    return {"blink_left": b, "blink_right": b}


def _idle(t, L):
    return _track(
        t,
        yaw=_loop(t, L, {1: 2.5, 2: -1.5, 3: 0.6}),
        pitch=_loop(t, L, {1: -1.0, 2: 1.4, 5: 0.3}),  # five breaths a loop
        roll=_loop(t, L, {1: 1.0, 3: -0.8}),
        dy=_loop(t, L, {5: 0.008}),
        **_both_blinks(t, [1.7, 4.6, 6.9]),
    )


def _nod(t, L):
    nods = _loop(t, L, {4: 9.0})  # four nods a loop
    return _track(t, pitch=nods, yaw=_loop(t, L, {1: 1.5}), dy=_loop(t, L, {4: 0.02}),
                  smile=0.15 * _loop(t, L, {1: 1.0}), **_both_blinks(t, [2.05]))


def _shake(t, L):
    env = _loop(t, L, {1: 1.0})
    yaw = env * 16.0 * np.sin(2 * np.pi * 6 * t / L)
    return _track(t, yaw=yaw, roll=_loop(t, L, {2: 1.0}), **_both_blinks(t, [0.9, 3.3]))


def _look_around(t, L):
    return _track(
        t,
        yaw=_loop(t, L, {1: 22.0, 2: -22.0}),
        pitch=_loop(t, L, {2: 6.0, 3: -8.0}),
        roll=_loop(t, L, {1: 2.0, 2: -2.0}),
        brow_raise=0.25 * _plateau(t, 5.2, 0.4, 1.2, 0.5),
        **_both_blinks(t, [1.2, 3.4, 6.1, 8.4]),
    )


def _smile(t, L):
    s = _loop(t, L, {1: 1.0})
    s = s * s * (3 - 2 * s)  # smoothstep: holds the smile longer
    return _track(t, pitch=-2.5 * s, roll=3.0 * s, yaw=_loop(t, L, {1: 2.0, 2: -1.0}),
                  smile=0.95 * s, lip_stretch=0.2 * s, jaw_open=0.08 * s, **_both_blinks(t, [1.1, 4.7]))


def _surprise(t, L):
    s = _plateau(t, 0.9, 0.25, 1.6, 0.9)
    b = blinks(t, [4.2]) - 0.45 * s  # eyes widen while surprised
    return _track(t, pitch=-5.0 * s, yaw=_loop(t, L, {1: 1.5}), dy=-0.03 * s,
                  brow_raise=1.0 * s, jaw_open=0.65 * s, lip_pucker=0.25 * s, blink_left=b, blink_right=b)


def _speech(t, L, *, seed, phrases, rate, amp, head, brows, blink_at, extra_yaw=None):
    """Talking: syllables in ``phrases``, nods and brow raises on stressed syllables, a slow head sway."""
    jaw, shape, stress, voiced = syllables(t, phrases, rate, amp, np.random.default_rng(seed))
    nod = np.convolve(stress, np.hanning(9) / np.hanning(9).sum(), mode="same")
    yaw = _loop(t, L, {1: 3.0 * head, 2: -2.0 * head, 3: 1.0 * head})
    if extra_yaw is not None:
        yaw = yaw + extra_yaw
    return _track(
        t,
        yaw=yaw,
        pitch=_loop(t, L, {2: -1.5 * head, 3: 1.0 * head}) + 3.0 * head * nod,
        roll=_loop(t, L, {1: 1.5 * head, 2: -1.0 * head}),
        jaw_open=jaw,
        lip_stretch=0.45 * np.clip(shape, 0, None) * voiced,
        lip_pucker=0.45 * np.clip(-shape, 0, None) * voiced,
        brow_raise=brows * nod,
        smile=0.1 * _loop(t, L, {1: 1.0}),
        **_both_blinks(t, blink_at),
    )


def _calm_talk(t, L):
    return _speech(t, L, seed=11, phrases=[(0.5, 3.6), (4.2, 6.4), (7.0, 9.4)], rate=4.0, amp=(0.2, 0.55),
                   head=1.0, brows=0.2, blink_at=[3.9, 6.7, 9.6])


def _lively_talk(t, L):
    return _speech(t, L, seed=12, phrases=[(0.5, 2.9), (3.3, 6.6), (7.0, 9.4)], rate=4.8, amp=(0.3, 0.85),
                   head=2.2, brows=0.6, blink_at=[3.1, 6.85, 9.6])


def _lecture(t, L):
    # Slow turns to either side of a room, between phrases.
    turns = _loop(t, L, {1: 12.0, 2: -12.0})
    return _speech(t, L, seed=13, phrases=[(0.6, 2.8), (3.3, 5.9), (6.6, 8.2), (8.8, 11.3)], rate=3.8,
                   amp=(0.2, 0.65), head=1.3, brows=0.35, blink_at=[3.05, 6.3, 8.5, 11.6], extra_yaw=turns)


def _listen(t, L):
    nods = sum(_bump(t, c, 0.7) for c in (2.0, 2.6, 5.9)) * 4.0
    return _track(t, yaw=_loop(t, L, {1: -3.0, 2: 1.0}), pitch=_loop(t, L, {1: 1.0, 2: -1.0}) + nods,
                  roll=_loop(t, L, {1: -4.0}), smile=0.25 * _loop(t, L, {1: 1.0}),
                  brow_raise=0.15 * _bump(t, 4.3, 1.2), **_both_blinks(t, [1.3, 3.6, 7.1]))


def _tilt(t, L):
    s = _plateau(t, 0.6, 0.6, 1.2, 0.7)
    return _track(t, roll=-9.0 * s, yaw=_loop(t, L, {1: 4.0}), pitch=-2.0 * s, brow_raise=0.35 * s,
                  lip_pucker=0.15 * s, **_both_blinks(t, [3.6]))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("idle", "calm still face: slow breathing sway and natural blinks", 8.0, _idle),
        Preset("nod", "nods yes, four times a loop, with a faint smile", 4.0, _nod),
        Preset("head_shake", "shakes the head no, easing in and out", 4.0, _shake),
        Preset("look_around", "looks slowly left, right, up and down", 10.0, _look_around),
        Preset("smile", "breaks into a smile with a slight head tilt, then relaxes", 6.0, _smile),
        Preset("surprise", "raises the brows, widens the eyes and drops the jaw", 5.0, _surprise),
        Preset("calm_talk", "relaxed speech: moderate mouth motion, small nods", 10.0, _calm_talk),
        Preset("lively_talk", "animated speech: wide mouth, bigger head motion, brow raises", 10.0, _lively_talk),
        Preset("lecture", "explaining to a room: phrases with pauses and slow turns to each side", 12.0, _lecture),
        Preset("listen", "attentive listening: closed mouth, small nods, a slight smile", 8.0, _listen),
        Preset("tilt", "curious head tilt with raised brows", 4.0, _tilt),
    )
}


def preset_names() -> list[str]:
    return list(PRESETS)


def _unknown(name: str) -> InputError:
    return InputError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)} (see `facepose pose presets`)")


def check_preset(name: str) -> str:
    """``name`` (``preset:`` prefix allowed, spaces around it ignored) as a bundled preset's name.
    Raises InputError listing the choices when there is no such preset."""
    name = name.removeprefix("preset:").strip()
    if name not in PRESETS:
        raise _unknown(name)
    return name


def preset_track(name: str) -> FaceTrack:
    """The parameter track of preset ``name`` (what the bundled Parquet file was projected from)."""
    p = PRESETS[check_preset(name)]
    n = frames_for_seconds(p.seconds)
    t = np.arange(n) / FPS
    return p.build(t, n / FPS)


def presets_dir() -> Path:
    return Path(str(resources.files("facepose.pose") / "presets"))


def list_presets() -> list[tuple[str, str, float]]:
    """-> [(name, description, seconds)] of the bundled presets."""
    return [(p.name, p.description, frames_for_seconds(p.seconds) / FPS) for p in PRESETS.values()]


@functools.lru_cache(maxsize=32)
def _load(name: str) -> PoseSequence:
    path = presets_dir() / f"{name}.parquet"
    if not path.is_file():
        raise InputError(f"preset {name!r} has no bundled file {path}; reinstall facepose or run scripts/make_presets.py")
    return PoseSequence.from_parquet_bytes(path.read_bytes(), source=f"preset:{name}")


def load_preset(name: str) -> PoseSequence:
    """The bundled preset ``name`` (``preset:`` prefix allowed): a PoseSequence on a 512 x 512 canvas at
    24 fps with head_pose; frame 0 is the neutral face. Unknown names raise InputError listing the choices."""
    name = check_preset(name)
    pose = _load(name)
    # A copy, so callers can edit arrays without touching the cache.
    return PoseSequence(landmarks=pose.landmarks.copy(), scores=pose.scores.copy(), fps=pose.fps,
                        width=pose.width, height=pose.height, head_pose=pose.head_pose.copy(), source=pose.source)


def write_presets(directory: str | Path) -> list[Path]:
    """Generate every preset into ``directory`` as ``<name>.parquet``; -> the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PRESETS:
        path = directory / f"{name}.parquet"
        path.write_bytes(preset_track(name).to_pose(source=f"preset:{name}").to_parquet_bytes())
        out.append(path)
    return out
