"""Audio2Pose: speech audio to a 24 fps pose sequence exactly as long as the audio.

Two models share the audio front end (:func:`facepose.pose.audio_features.audio_features`, also what
curation stores and training reads): frame ``k`` of the output is the analysis window centred on
``(k + 0.5) / fps`` seconds, and there are exactly ``round(fps * duration)`` frames.

- The **signal model** (default, no weights): the loudness envelope (dB, gated against a noise floor)
  opens the jaw; the balance of the second-formant band against the first (spectral shape) sets lip
  stretch vs pucker; pitch (librosa's YIN) and loudness accents drive small nods, turns and brow raises;
  blinks come at natural intervals. A speech-likeness measure (spectral flatness and loudness modulation
  at syllable rate) damps everything for music and noise, and every amplitude is clipped.
- The **learned model** (``audio2pose_train.Audio2PoseNet``): a small temporal network (1D convolutions and a
  bidirectional GRU) on log-mel frames predicting the 68 points' offsets (model units, relative to a rest
  frame, as :mod:`facepose.pose.retarget` decomposes motion) and the head pose. Trained by
  ``facepose train audio2pose data.dataset=...`` on a curated dataset; used when
  ``Audio2PoseConfig.checkpoint`` names its ``audio2pose`` folder.

Both are applied to the reference's own landmarks, so its face shape is kept.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from facepose.config import Audio2PoseConfig
from facepose.errors import ConfigError, InputError, MediaError
from facepose.pose import face_model as fm
from facepose.pose.audio_features import FPS, N_MELS, SAMPLE_RATE, AudioFeatures, audio_features, n_frames
from facepose.pose.sequence import PoseSequence

__all__ = ["AudioFeatures", "audio_features", "audio_to_pose", "n_frames", "read_audio", "signal_track", "FPS", "SAMPLE_RATE"]

log = logging.getLogger(__name__)

HEAD_LIMITS = np.array([8.0, 6.0, 4.0])  # the signal model never turns the head further (yaw, pitch, roll degrees)


# -- signal model ----------------------------------------------------------------------------------
def _smooth(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Gaussian smoothing along time (edges held)."""
    if sigma_frames <= 0 or len(x) < 2:
        return x
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(x, np.float64), sigma_frames, axis=0, mode="nearest")


def _moving(x: np.ndarray, frames: int, fn) -> np.ndarray:
    """Centred sliding-window statistic ``fn`` (e.g. np.nanmedian) over ``frames`` frames."""
    h = frames // 2
    out = np.empty(len(x))
    for i in range(len(x)):
        w = x[max(0, i - h): i + h + 1]
        out[i] = fn(w) if np.isfinite(w).any() else np.nan
    return out


@dataclass
class SignalTrack:
    """What the signal model derives (all (T,)): activity (0 silent .. 1 loud speech), speech likeness in
    [0, 1], and the face-model parameters it produced (head_pose (T, 3), expr (T, N_EXPR))."""

    activity: np.ndarray
    likeness: np.ndarray
    head_pose: np.ndarray
    expr: np.ndarray


def speech_likeness(feat: AudioFeatures, activity: np.ndarray) -> np.ndarray:
    """(T,) in [0, 1]: high for speech, low for steady tones, music pads and noise.

    Speech alternates vowels (tonal, low flatness) at 3-8 syllables a second, so its loudness swings by
    many dB within a fraction of a second; noise is flat-spectrum and steady, a held chord steady.
    """
    fps = feat.fps
    T = feat.frames
    if T == 0:
        return np.zeros(0)
    act = activity > 0.05
    # Loudness modulation at syllable rate: the envelope minus its 0.5 s average, RMS over 1.5 s.
    db = np.maximum(feat.rms_db.astype(np.float64), np.max(feat.rms_db) - 50)
    hp = db - _smooth(db, 0.25 * fps)
    win = max(3, int(1.5 * fps))
    mod = np.sqrt(_smooth(hp**2, win / 3))
    like_mod = np.clip((mod - 1.5) / 3.0, 0, 1)
    # Tonality of the active frames: median flatness over 1.5 s.
    flat = np.where(act, feat.flatness, np.nan)
    med_flat = _moving(flat, win, np.nanmedian)
    med_flat = np.where(np.isfinite(med_flat), med_flat, 1.0)
    like_flat = np.clip((0.30 - med_flat) / 0.20, 0, 1)
    return np.clip(_smooth(like_mod * like_flat, 0.2 * fps), 0, 1)


def blink_times(seconds: float, mean_interval: float, rng: np.random.Generator) -> list[float]:
    """Blink onsets: gamma-distributed intervals (mean ``mean_interval``, at least 1.2 s apart)."""
    times, t = [], rng.uniform(0.6, mean_interval)
    while t < seconds - 0.3:
        times.append(t)
        t += max(1.2, rng.gamma(4.0, mean_interval / 4.0))
    return times


def signal_track(feat: AudioFeatures, cfg: Audio2PoseConfig) -> SignalTrack:
    """Audio features -> face-model parameters (see the module docstring)."""
    from facepose.pose.presets import blinks

    fps = feat.fps
    T = feat.frames
    rng = np.random.default_rng(cfg.seed)
    t = np.arange(T) / fps
    db = feat.rms_db.astype(np.float64)

    # 1. Loudness -> activity: 0 below the gate, 1 at the loud speech level (95th percentile).
    peak = float(np.percentile(db, 95)) if T else -120.0
    floor = max(cfg.silence_db, peak - cfg.gate_below_peak_db)
    if peak <= floor + 3.0:  # silence throughout (or nothing above the gate)
        activity = np.zeros(T)
    else:
        activity = np.clip((db - floor) / (peak - floor), 0, 1)
    activity = _smooth(activity, 0.6)
    like = speech_likeness(feat, activity)
    drive = 0.12 + 0.88 * like  # music and noise still breathe a little, never flap

    # 2. Jaw and lips.
    jaw = np.clip(cfg.max_jaw * activity * drive, 0, cfg.max_jaw)
    bal = np.asarray(feat.formant_balance, np.float64)
    voiced = activity > 0.15
    if voiced.sum() >= 3:
        med = np.median(bal[voiced])
        spread = max(np.percentile(bal[voiced], 75) - np.percentile(bal[voiced], 25), 3.0)
        z = np.clip((bal - med) / spread, -1.5, 1.5)
    else:
        z = np.zeros(T)
    z = _smooth(z * np.clip(activity * 2, 0, 1) * like, 1.0)
    stretch = cfg.lip_shape * np.clip(z, 0, 1)
    pucker = cfg.lip_shape * np.clip(-z, 0, 1)

    # 3. Head: pitch accents nod the head up a little, loudness onsets nod it down, a slow seeded wander
    # that grows while speaking turns it; everything damped for non-speech and clipped.
    speaking = _smooth(activity * like, 0.8 * fps)
    f0 = np.asarray(feat.f0, np.float64)
    ok = np.isfinite(f0)
    if ok.sum() >= 3:
        semis = 12 * np.log2(f0 / np.median(f0[ok]))
        semis = np.interp(t, t[ok], np.clip(semis[ok], -8, 8))
        semis = _smooth(semis, 0.2 * fps) * speaking
    else:
        semis = np.zeros(T)
    level = _smooth(np.maximum(db, floor), 1.0)
    onset = _smooth(np.clip(np.diff(level, prepend=level[:1]), 0, None), 0.1 * fps)  # rising loudness, dB/frame
    onset = onset / max(np.percentile(onset, 98) if T else 1.0, 1e-6)
    nod = _smooth(np.clip(onset, 0, 1) * speaking, 0.12 * fps)

    def wander(amp_idle: float, amp_talk: float) -> np.ndarray:
        freqs = rng.uniform(0.05, 0.35, 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        w = sum(np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phases)) / 3.0
        return w * (amp_idle + (amp_talk - amp_idle) * speaking)

    k = cfg.head_motion
    yaw = k * (wander(1.0, 5.0))
    pitch = k * (-0.5 * semis + 3.0 * nod + wander(0.6, 1.5))
    roll = k * (wander(0.5, 2.0) + 0.15 * semis)
    head = np.stack([_smooth(yaw, 2.0), _smooth(pitch, 1.5), _smooth(roll, 2.0)], 1)
    head = np.clip(head - head[:1], -HEAD_LIMITS, HEAD_LIMITS)  # start at the reference's own pose

    # 4. Brows on strong pitch accents; blinks at natural intervals.
    brow = np.clip(_smooth(np.clip(semis - 2.0, 0, 4) / 4.0, 0.1 * fps), 0, 0.5)
    blink = blinks(t, blink_times(T / fps, cfg.blink_interval_s, rng))

    expr = np.zeros((T, fm.N_EXPR))
    col = fm.EXPRESSIONS.index
    expr[:, col("jaw_open")] = jaw
    expr[:, col("lip_stretch")] = stretch
    expr[:, col("lip_pucker")] = pucker
    expr[:, col("brow_raise")] = brow
    expr[:, col("blink_left")] = blink
    expr[:, col("blink_right")] = blink
    return SignalTrack(activity=activity, likeness=like, head_pose=head, expr=expr)


# -- entry points ----------------------------------------------------------------------------------
AudioInput = Union[str, os.PathLike, np.ndarray]


def read_audio(audio: AudioInput, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, Optional[str]]:
    """A URI (any format facepose.media.audio reads) or samples already at ``sr`` -> (samples, uri or None)."""
    if isinstance(audio, np.ndarray):
        y = np.asarray(audio, np.float32)
        if y.ndim != 1:
            raise InputError(f"audio samples must be a 1-D mono array, got shape {y.shape}")
        if len(y) == 0:
            raise MediaError("audio has no samples; pass a recording at least one frame (1/24 s) long")
        return y, None
    from facepose.media.audio import load_audio

    uri = os.fspath(audio)
    return load_audio(uri, sr=sr), uri


def audio_to_pose(
    audio: AudioInput,
    reference_landmarks: np.ndarray,
    canvas: tuple[int, int] = (512, 512),
    cfg: Optional[Audio2PoseConfig] = None,
    seconds: Optional[float] = None,
    extend: str = "loop",
) -> PoseSequence:
    """Speech -> PoseSequence on the reference's own landmarks ((68, 2) pixels of ``canvas`` (W, H)).

    ``seconds`` trims the audio, or extends it: ``extend="loop"`` repeats it (as the renderer loops the
    muxed track, ``np.resize``), ``"silence"`` pads silence (the face rests after the audio ends).
    Output: round(24 * duration) frames at 24 fps, head_pose filled, ``meta["audio"]`` = the URI (if any).
    Uses the learned model when ``cfg.checkpoint`` is set, the signal model otherwise.
    """
    cfg = cfg or Audio2PoseConfig()
    if extend not in ("loop", "silence"):
        raise InputError(f"extend must be 'loop' or 'silence', got {extend!r}")
    y, uri = read_audio(audio, cfg.sample_rate)
    name = uri or "audio"
    if seconds is not None:
        if not seconds > 0:
            raise InputError(f"seconds must be positive, got {seconds}")
        n = int(round(seconds * cfg.sample_rate))
        if len(y) >= n:
            y = y[:n]
        elif extend == "loop":
            y = np.resize(y, n)
        else:
            y = np.concatenate([y, np.zeros(n - len(y), np.float32)])
    if n_frames(len(y), cfg.sample_rate) == 0:
        raise MediaError(f"{name}: audio is shorter than one frame (1/24 s)")
    if not np.isfinite(y).all():
        raise MediaError(f"{name}: audio contains NaN or inf samples")
    net = None
    if cfg.checkpoint:
        from facepose.pose.audio2pose_train import load_audio2pose

        net = load_audio2pose(cfg.checkpoint, cfg.device)
        if int(net.config.sample_rate) != cfg.sample_rate:
            raise ConfigError(f"checkpoint {cfg.checkpoint} was trained on {net.config.sample_rate} Hz features; "
                              f"set audio2pose.sample_rate={net.config.sample_rate}")
    # The learned model reads the log-mel it was trained on (its own band count); the signal model the rest.
    feat = audio_features(y, cfg.sample_rate, n_mels=int(net.config.n_mels) if net is not None else N_MELS)
    ref = fm.ReferenceFace.fit(np.asarray(reference_landmarks, np.float64), close_mouth=cfg.close_mouth)
    if cfg.checkpoint:
        landmarks, head_pose = _learned_landmarks(feat, ref, net)
        model = "learned"
    else:
        track = signal_track(feat, cfg)
        landmarks = ref.landmarks(head_pose=track.head_pose, expr=track.expr)
        head_pose = track.head_pose
        model = "signal"
    meta = {"audio2pose": model}
    if uri is not None:
        meta["audio"] = uri
        meta["audio_seconds"] = len(y) / cfg.sample_rate
    return PoseSequence(landmarks=landmarks, fps=FPS, width=int(canvas[0]), height=int(canvas[1]),
                        head_pose=np.asarray(head_pose, np.float32), source=uri or "audio", meta=meta)


def _learned_landmarks(feat: AudioFeatures, ref: fm.ReferenceFace, net) -> tuple[np.ndarray, np.ndarray]:
    """An :class:`~facepose.pose.audio2pose_train.Audio2PoseNet` on the features -> landmarks (T, 68, 2), head pose (T, 3)."""
    from facepose.pose.retarget import Motion, apply_motion

    off, hp = net.predict(feat.log_mel)
    T = len(off)
    roll = np.deg2rad(hp[:, 2])
    R = np.stack([np.stack([np.cos(roll), -np.sin(roll)], -1), np.stack([np.sin(roll), np.cos(roll)], -1)], -2)
    rest = ref.landmarks()  # the (closed-mouth) rest pose the offsets apply to
    motion = Motion(expr=off.astype(np.float64), scale=np.ones(T), R=R, t=np.zeros((T, 2)))
    return apply_motion(motion, rest), hp
