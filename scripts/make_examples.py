"""Regenerate the bundled examples (examples/): small real assets and manifests to run the batch jobs on.

    python scripts/make_examples.py            # writes into examples/
    python scripts/make_examples.py OUT_DIR    # writes elsewhere

- ``astronaut.png``: skimage's astronaut photo (a real, public-domain face), 512x512.
- ``speech.wav``: real speech from espeak-ng (16 kHz mono).
- ``driving.mp4``: the astronaut moved along a known smooth path, with the speech muxed in.
- ``pose.parquet``: a pose sequence (the ``nod`` preset, 2 s).
- ``manifest.csv``: a render manifest with one job per kind of pose source (presets, the driving video,
  the speech, the pose Parquet, a lesson script ``lesson.md``); paths are relative to the manifest.
- ``curate.csv``: a curation manifest over the driving video.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

SPEECH = "Hello there. [[_::_::]] This is the face pose system, [[_::]] speaking a short sentence."


ASTRONAUT_FACE = (225.0, 135.0)  # centre of the astronaut's face in the 512x512 photo


def moving_face_frames(
    image: np.ndarray, seconds: float, fps: float = 24.0, size: int = 256, zoom: float = 1.0, center: tuple[float, float] = ASTRONAUT_FACE,
    amplitude: float = 0.06, blur: float = 0.0,
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


def espeak(text: str, path: Path, sample_rate: int = 16000) -> Path:
    """Real speech: espeak-ng's WAV, resampled to ``sample_rate`` mono."""
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
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


def main(argv: list[str]) -> int:
    from PIL import Image
    from skimage import data

    from facepose.media.audio import load_audio
    from facepose.media.video import write_video
    from facepose.pose.presets import load_preset

    out = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "examples"
    out.mkdir(parents=True, exist_ok=True)
    face = np.ascontiguousarray(data.astronaut())
    Image.fromarray(face).save(out / "astronaut.png", optimize=True)
    espeak(SPEECH, out / "speech.wav")
    speech = load_audio(out / "speech.wav", sr=16000)
    write_video(out / "driving.mp4", moving_face_frames(face, 2.0), fps=24, audio=speech, sample_rate=16000, crf=28)
    pose = load_preset("nod")
    pose.slice(0, min(len(pose), 48)).save(str(out / "pose.parquet"))
    jobs = [
        {"job_id": "nod", "reference": "astronaut.png", "driver": "preset:nod", "seconds": 2},
        {"job_id": "calm-talk", "reference": "astronaut.png", "driver": "preset:calm_talk", "seconds": 3, "seed": 1},
        {"job_id": "driven-by-video", "reference": "astronaut.png", "driver": "driving.mp4"},
        {"job_id": "driven-by-speech", "reference": "astronaut.png", "driver": "speech.wav"},
        {"job_id": "from-pose-file", "reference": "astronaut.png", "driver": "pose.parquet"},
        {"job_id": "look-around", "reference": "astronaut.png", "driver": "preset:look_around", "seconds": 2},
        {"job_id": "lesson-from-text", "reference": "astronaut.png", "driver": "lesson.md"},
    ]
    (out / "lesson.md").write_text(LESSON, encoding="utf-8")
    _write_csv(out / "manifest.csv", jobs, ["job_id", "reference", "driver", "driver_type", "seconds", "backend", "seed", "output"])
    _write_csv(out / "curate.csv", [{"video_id": "astronaut-moving", "video": "driving.mp4"}], ["video_id", "video", "audio", "start", "end"])
    for p in sorted(out.iterdir()):
        print(f"{p}  {p.stat().st_size / 1024:.0f} KiB")
    return 0


LESSON = """# A lesson from text

Hello! This video was written as text. The words were spoken by a speech synthesiser, and the face moves with that speech.

Each sentence also becomes a subtitle, in a WebVTT and an SRT file beside the video.
"""


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in columns})


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
