"""The audio front end: speech -> per-frame features on the 24 fps video timeline.

One function, :func:`audio_features`, serves every reader of speech: the signal model and the learned
Audio2Pose model at inference (:mod:`facepose.pose.audio2pose`), curation (``audio/<video_id>.parquet``
stores its ``log_mel`` and loudness per frame) and training (which reads those curated rows), so a model
sees at inference exactly the features it was trained on.

Frame ``k`` is the analysis window of ``N_FFT`` samples centred on ``(k + 0.5) / fps`` seconds: the hop is
exactly ``sr / fps`` samples (666.67 at 16 kHz; window starts are rounded per frame, never accumulated)
and there are exactly ``round(fps * duration)`` frames, the count :mod:`facepose.media.video` gives a
video of that length.

Memory is flat in the input's length: the features are computed in blocks of ``BLOCK_FRAMES`` frames
(20 s), each from its own stretch of samples plus a margin, and every feature of a frame depends only on
samples near it, so blocks give the same values as one pass (pitch included: YIN runs on each block with
a margin wider than its window, on the same 10 ms grid).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from facepose.timeline import FPS, SAMPLE_RATE, frames_for_samples
N_FFT = 1024  # 64 ms analysis window at 16 kHz
N_MELS = 80  # log-mel bands (curation's curate.n_mels; a learned model records its own)
BLOCK_FRAMES = 480  # frames per block: 20 s at 24 fps
YIN_FRAME = 2048  # samples of a YIN window
YIN_HOP = 160  # 10 ms at 16 kHz: YIN's grid, interpolated onto the frames
# What curation records in an ``audio/`` shard's ``facepose.features`` metadata; training refuses shards
# that say anything else (features of another front end would silently mismatch inference).
FEATURES = (f"facepose.pose.audio_features/1: log10 mel power of a Hann-windowed {N_FFT}-sample window centred on "
            "(frame + 0.5) / fps; rms over one frame period")


@dataclass
class AudioFeatures:
    """Per-frame features at ``fps``; every array has ``frames`` rows.

    rms_db: loudness over one frame period (dB re. full scale RMS: a full-scale square wave is 0 dB,
    a full-scale sine -3 dB); flatness: spectral flatness in [0, 1]; centroid: spectral centroid in Hz;
    formant_balance: dB of the 1.2-3 kHz band minus the 250-900 Hz band; f0: pitch in Hz (nan unvoiced);
    voicing: normalised autocorrelation peak in [0, 1]; log_mel: (frames, n_mels) log10 mel power.
    """

    rms_db: np.ndarray
    flatness: np.ndarray
    centroid: np.ndarray
    formant_balance: np.ndarray
    f0: np.ndarray
    voicing: np.ndarray
    log_mel: np.ndarray
    fps: float = FPS

    @property
    def frames(self) -> int:
        return int(self.rms_db.shape[0])

    @property
    def rms(self) -> np.ndarray:
        """(frames,) linear RMS over one frame period."""
        return np.maximum(10.0 ** (self.rms_db.astype(np.float64) / 20.0) - 1e-9, 0.0).astype(np.float32)


n_frames = frames_for_samples  # frames for a count of samples (facepose.timeline)


def frame_centres(k0: int, k1: int, sr: int = SAMPLE_RATE, fps: float = FPS) -> np.ndarray:
    """Sample index of the centre of frames ``k0 .. k1 - 1``: round((k + 0.5) * sr / fps)."""
    return np.round((np.arange(k0, k1) + 0.5) * sr / fps).astype(np.int64)


def _windows(y: np.ndarray, centres: np.ndarray, n_fft: int = N_FFT) -> np.ndarray:
    """y: (N,) -> (len(centres), n_fft) windows centred on ``centres``, zeros outside the signal."""
    lo = int(centres[0]) - n_fft // 2
    hi = int(centres[-1]) - n_fft // 2 + n_fft
    seg = np.zeros(hi - lo, np.float32)
    a, b = max(lo, 0), min(hi, len(y))
    if b > a:
        seg[a - lo: b - lo] = y[a:b]
    idx = (centres - n_fft // 2 - lo)[:, None] + np.arange(n_fft)[None, :]
    return seg[idx]


def _pitch(y: np.ndarray, sr: int, t_out: np.ndarray) -> np.ndarray:
    """YIN pitch (60-400 Hz) of ``y`` on its 10 ms grid, interpolated at ``t_out`` seconds. Runs on the
    stretch of samples around ``t_out`` only, with a margin wider than a YIN window: the values are those
    of one pass over the whole signal."""
    import librosa

    margin = 2 * YIN_FRAME
    j0 = max(0, int(np.floor(t_out[0] * sr / YIN_HOP)) - 1)
    j1 = int(np.ceil(t_out[-1] * sr / YIN_HOP)) + 1
    a = max(0, j0 * YIN_HOP - margin) // YIN_HOP * YIN_HOP  # on the global 10 ms grid
    b = min(len(y), j1 * YIN_HOP + margin)
    seg = y[a:b]
    if len(seg) < YIN_FRAME:
        seg = np.pad(seg, (0, YIN_FRAME - len(seg)))
    f0 = librosa.yin(seg, fmin=60, fmax=400, sr=sr, frame_length=YIN_FRAME, hop_length=YIN_HOP, center=True)
    t_fine = (a + np.arange(len(f0)) * YIN_HOP) / sr
    return np.interp(t_out, t_fine, f0)


def _block(y: np.ndarray, k0: int, k1: int, sr: int, fps: float, n_mels: int, pitch: bool = True) -> dict[str, np.ndarray]:
    """The features of frames ``k0 .. k1 - 1`` (see :class:`AudioFeatures`; f0 all nan without ``pitch``)."""
    import librosa

    frames = _windows(y, frame_centres(k0, k1, sr, fps))  # (T, n_fft)
    # Loudness over one frame period (not the whole analysis window), so the envelope is sharp in time.
    half = int((sr / fps) // 2)
    core = frames[:, N_FFT // 2 - half: N_FFT // 2 + half]
    rms_db = 20 * np.log10(np.sqrt(np.mean(core.astype(np.float64) ** 2, axis=1)) + 1e-9)

    spec = np.abs(np.fft.rfft(frames * np.hanning(N_FFT).astype(np.float32), axis=1)).T  # (n_fft/2+1, T) magnitude
    power = spec.astype(np.float64) ** 2
    flatness = librosa.feature.spectral_flatness(S=spec + 1e-10, n_fft=N_FFT)[0]
    centroid = librosa.feature.spectral_centroid(S=spec, sr=sr, n_fft=N_FFT)[0]
    freqs = np.fft.rfftfreq(N_FFT, 1 / sr)
    f1 = power[(freqs >= 250) & (freqs < 900)].sum(0)
    f2 = power[(freqs >= 1200) & (freqs < 3000)].sum(0)
    balance = 10 * np.log10(f2 + 1e-10) - 10 * np.log10(f1 + 1e-10)
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_fft=N_FFT, n_mels=n_mels, fmax=sr / 2)
    log_mel = np.log10(mel + 1e-8).T

    # Voicing: the normalised autocorrelation peak in the speech pitch range (60-400 Hz lags).
    ac = np.fft.irfft(power, axis=0)  # (n_fft, T)
    lo, hi = int(sr / 400), int(sr / 60)
    voicing = np.clip(ac[lo:hi].max(0) / np.maximum(ac[0], 1e-12), 0, 1)
    f0 = _pitch(y, sr, (np.arange(k0, k1) + 0.5) / fps) if pitch else np.full(k1 - k0, np.nan)
    f0 = np.where((voicing > 0.45) & (rms_db > -50), f0, np.nan)
    return {"rms_db": rms_db, "flatness": flatness, "centroid": centroid, "formant_balance": balance, "f0": f0,
            "voicing": voicing, "log_mel": log_mel}


def audio_features(y: np.ndarray, sr: int = SAMPLE_RATE, fps: float = FPS, n_mels: int = N_MELS,
                   block_frames: int = BLOCK_FRAMES, pitch: bool = True) -> AudioFeatures:
    """y: (N,) float32 mono at ``sr`` -> :class:`AudioFeatures` with round(fps * N / sr) frames.

    Computed ``block_frames`` frames at a time (the result does not depend on it; memory does).
    ``pitch=False`` skips YIN (most of the time; f0 is then all nan): for readers of the log-mel and
    loudness only, such as curation."""
    y = np.asarray(y, np.float32)
    T = n_frames(len(y), sr, fps)
    names = [f.name for f in fields(AudioFeatures) if f.name != "fps"]
    if T == 0:
        z = np.zeros(0, np.float32)
        return AudioFeatures(z, z, z, z, z, z, np.zeros((0, n_mels), np.float32), fps)
    blocks = [_block(y, k0, min(T, k0 + block_frames), sr, fps, n_mels, pitch) for k0 in range(0, T, max(1, block_frames))]
    out = {name: np.concatenate([b[name] for b in blocks]).astype(np.float32) for name in names}
    return AudioFeatures(**out, fps=fps)
