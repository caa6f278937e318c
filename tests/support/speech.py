"""Real speech for tests: espeak-ng (installed by the README's test command)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional


def espeak(text: str, path: Path, sample_rate: Optional[int] = None) -> Path:
    """Speak ``text`` into the WAV ``path``: espeak-ng's own 22.05 kHz mono, or resampled to ``sample_rate``
    (16-bit PCM) when given. ``[[_::_::]]`` in the text is a pause."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; the README's test command installs it (apt-get install espeak-ng)")
    if sample_rate is None:
        subprocess.run([exe, "-w", str(path), text], check=True, capture_output=True)
        return path
    import soundfile as sf

    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "raw.wav"
        subprocess.run([exe, "-w", str(raw), text], check=True, capture_output=True)
        y, sr = sf.read(raw, dtype="float32")
    if y.ndim > 1:
        y = y.mean(axis=1)
    if sr != sample_rate:
        import librosa

        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate)
    sf.write(path, y, sample_rate, subtype="PCM_16")
    return path
