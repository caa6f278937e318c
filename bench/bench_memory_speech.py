"""Peak memory of `facepose pose make` on speech of growing length (the speech-to-pose path).

    .venv/bin/python bench/bench_memory_speech.py [--seconds 5 60 600]

Each row runs the CLI as a fresh subprocess (``python -m facepose.cli pose make SPEECH -r REF -o OUT``)
and reads its peak resident set size from the kernel (``os.wait4``'s rusage: ``ru_maxrss``). The speech
is real: espeak-ng reading a paragraph (22.05 kHz WAV), repeated to the length. The reference is the
astronaut photo. Prints a markdown table; the target is a flat curve (600 s within 1.3x of 5 s, under
1.2 GB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("Good morning, and welcome back to the course. [[_::_::]] Today we look at how sound becomes motion: "
        "the jaw opens with loudness, the lips follow the vowels, [[_::_::]] and the head nods on stressed syllables. "
        "Take a moment to try it yourself. [[_::_::_::]] Then we will compare the results together.")


def speech(seconds: float, work: Path) -> Path:
    import numpy as np
    import soundfile as sf

    base = work / "paragraph.wav"
    if not base.exists():
        subprocess.run([shutil.which("espeak-ng") or "espeak-ng", "-w", str(base), TEXT], check=True, capture_output=True)
    y, sr = sf.read(str(base), dtype="float32")
    out = work / f"speech_{seconds:g}s.wav"
    sf.write(str(out), np.resize(y, int(round(seconds * sr))), sr)
    return out


def peak_rss_mb(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """-> (peak RSS MB, wall seconds, exit status) of ``cmd`` run as a child."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode())
    return usage.ru_maxrss / 1024, time.perf_counter() - t, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[5, 60, 600])
    args = ap.parse_args()

    from PIL import Image
    from skimage import data

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print("| speech (s) | peak RSS (MB) | vs 5 s | wall (s) |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-mem-speech-") as tmp:
        work = Path(tmp)
        ref = work / "astronaut.png"
        Image.fromarray(data.astronaut()).save(ref)
        first = None
        for seconds in args.seconds:
            wav = speech(seconds, work)
            cmd = [sys.executable, "-m", "facepose.cli", "pose", "make", str(wav), "-r", str(ref), "-o", str(work / "pose.parquet")]
            mb, wall, rc = peak_rss_mb(cmd, env)
            if rc:
                raise SystemExit(f"pose make failed on {seconds:g} s of speech (exit {rc})")
            first = first or mb
            print(f"| {seconds:g} | {mb:.0f} | {mb / first:.2f}x | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
