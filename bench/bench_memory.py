"""Peak memory against input length: `facepose pose extract` on 720p driving videos and `facepose pose
make` on speech, each run as its own process; its peak RSS is read from ``os.wait4``'s rusage
(``ru_maxrss``, the child's high-water mark, KiB on Linux).

Inputs are made here: a 1280x720 24 fps H.264 video of a real face (skimage's astronaut at 2x, face
about 200 px) moving along a smooth path, written frame by frame (nothing held in memory), and real
speech (espeak-ng, one paragraph) repeated to the length asked, 16 kHz mono WAV.

Targets (issue 10): peak RSS under 1.2 GB at the longest input and within 1.3x of the 5 s input.

    .venv/bin/python bench/bench_memory.py [--video 5,30,90] [--speech 5,60,600] [--curate 5,90] [--json out.json]

``--curate`` also measures the per-video curation unit (facepose.curate.Curator, one process per video,
default settings): one decode, the shot's frames buffered up to ``curate.buffer_mb`` (768 MB), a longer
shot re-read; the synthetic video is one long shot, the buffer's worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from facepose.timeline import FPS, SAMPLE_RATE, frames_for_seconds  # noqa: E402

W, H = 1280, 720
FACE = (221.0, 122.0)  # the astronaut's face centre in the 512 px photo
TEXT = ("Good morning everyone. Today we look at how a single photograph can be animated by a pose sequence, "
        "and why the timing of sound and motion matters so much for a believable result.")


def make_video(path: Path, seconds: float) -> Path:
    """The 720p face video, streamed into the encoder one frame at a time."""
    import cv2
    from skimage import data

    from facepose.media.video import VideoWriter

    photo = np.ascontiguousarray(data.astronaut())
    n = frames_for_seconds(seconds)
    with VideoWriter(str(path), fps=FPS, crf=23, preset="veryfast", threads=0) as w:
        for i in range(n):
            t = i / FPS
            k = 2.0 * (1.0 + 0.05 * np.sin(2 * np.pi * t / 7.0))
            dx, dy = 120 * np.sin(2 * np.pi * t / 5.0), 50 * np.sin(4 * np.pi * t / 5.0)
            m = np.array([[k, 0, W / 2 + dx - k * FACE[0]], [0, k, H / 2 + dy - k * FACE[1]]], np.float32)
            w.write(cv2.warpAffine(photo, m, (W, H), borderMode=cv2.BORDER_REFLECT))
    return path


def make_speech(path: Path, seconds: float) -> Path:
    """espeak-ng speech repeated to ``seconds``, 16 kHz mono 16-bit WAV."""
    import soundfile as sf

    from scripts.make_examples import espeak

    one = Path(str(path) + ".one.wav")
    espeak(TEXT, one, sample_rate=SAMPLE_RATE)
    y, sr = sf.read(str(one), dtype="float32")
    one.unlink()
    sf.write(str(path), np.resize(y, int(round(seconds * sr))), sr, subtype="PCM_16")
    return path


def peak_rss(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; -> (peak RSS in MB, wall seconds). Raises when it fails."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return usage.ru_maxrss / 1024.0, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default="5,30,90", help="driving video lengths, seconds")
    ap.add_argument("--speech", default="5,60,600", help="speech lengths, seconds")
    ap.add_argument("--curate", default="", help="curation video lengths, seconds (none by default)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    facepose = str(ROOT / ".venv" / "bin" / "facepose")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        from PIL import Image
        from skimage import data

        photo = tmp / "photo.png"
        Image.fromarray(data.astronaut()).save(photo)
        for kind, lengths in (("video", args.video), ("speech", args.speech), ("curate", args.curate)):
            for s in [float(x) for x in lengths.split(",") if x]:
                if kind == "curate":
                    src = make_video(tmp / f"c{s:g}.mp4", s)
                    code = ("import sys; from facepose.curate import Curator; from facepose.manifest import CurateJob; "
                            "r = Curator()(CurateJob('v', sys.argv[1]), sys.argv[2]).result; "
                            "sys.exit(0 if r['status'] == 'ok' else r['error'])")
                    cmd = [sys.executable, "-c", code, str(src), str(tmp / f"ds{s:g}")]
                elif kind == "video":
                    src = make_video(tmp / f"v{s:g}.mp4", s)
                    cmd = [facepose, "pose", "extract", str(src), "-o", str(tmp / "out.parquet")]
                else:
                    src = make_speech(tmp / f"s{s:g}.wav", s)
                    cmd = [facepose, "pose", "make", str(src), "-r", str(photo), "-o", str(tmp / "out.parquet")]
                mb, wall = peak_rss(cmd)
                command = {"video": "pose extract", "speech": "pose make", "curate": "Curator"}[kind]
                rows.append({"command": command, "input": kind, "seconds": s,
                             "input_mb": src.stat().st_size / 2**20, "peak_rss_mb": mb, "wall_s": wall})
                print(f"{rows[-1]['command']:13s} {kind:6s} {s:6g} s  input {rows[-1]['input_mb']:7.1f} MB  peak RSS {mb:7.0f} MB  ({wall:.1f} s)", flush=True)
                src.unlink()
    for kind in ("video", "speech", "curate"):
        group = [r for r in rows if r["input"] == kind]
        if len(group) > 1:
            base, top = group[0], group[-1]
            ratio = top["peak_rss_mb"] / base["peak_rss_mb"]
            ok = top["peak_rss_mb"] < 1200 and ratio <= 1.3
            print(f"{kind}: {top['seconds']:g} s / {base['seconds']:g} s peak = {ratio:.2f}x; {'meets' if ok else 'MISSES'} <1.2 GB and <=1.3x")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
