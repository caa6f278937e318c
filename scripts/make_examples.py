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
import sys
from pathlib import Path

import numpy as np

SPEECH = "Hello there. [[_::_::]] This is the face pose system, [[_::]] speaking a short sentence."


# The driving video and the speech come from the test support code: one moving-face generator (with the
# astronaut's measured face centre) for the examples, the tests and the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.speech import espeak  # noqa: E402
from tests.support.synth import moving_face_frames  # noqa: E402

__all__ = ["espeak", "moving_face_frames"]


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
    espeak(SPEECH, out / "speech.wav", sample_rate=16000)
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
