"""The per-video curation unit on one core: decode -> track -> landmarks -> crop 512 -> encode.

Makes a 720p (1280x720) clip of a real face moving along a smooth path (skimage's astronaut, 2x, so
the face is about 200 px), 10 s at 24 fps, in a temporary folder, then times on CPU core 0 alone:

  (a) decode alone (PyAV, streamed, through facepose.media.video.iter_frames, resampled to 24 fps),
  (b) encode alone of the 512x512 face crops (facepose.media.video.VideoWriter, x264 with 1 thread),
  (c) tracking + landmarks on already-decoded frames (facepose.face.FaceTracker),
  (d) the whole unit: decode, track, smooth, one steady crop box for the clip, crop, encode.

Decoding and encoding are the floor: the whole unit cannot beat 1 / (1/decode + 1/encode) frames/s.
Targets: (c) >= 200 frames/s; (d) >= 80 % of that floor.

    .venv/bin/python bench/bench_curation.py [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import os

# One core, one thread everywhere; set before the libraries start their pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests.synth

from facepose.config import FaceConfig  # noqa: E402
from facepose.face import FaceTracker, crop_box, crop_image  # noqa: E402
from facepose.face.crop import face_mask, to_crop  # noqa: E402
from facepose.media.video import VideoWriter, iter_frames, write_video  # noqa: E402
from facepose.pose.smooth import smooth_landmarks  # noqa: E402
from facepose.timeline import FPS, frames_for_seconds  # noqa: E402
from tests.synth import driving_video  # noqa: E402

cv2.setNumThreads(1)
if "torch" in sys.modules:  # nothing here imports torch; keep it single-threaded if something did
    sys.modules["torch"].set_num_threads(1)

W, H, CROP = 1280, 720, 512


def make_clip(path: Path, seconds: float) -> int:
    """Write the 720p test clip; returns its frame count."""
    n = frames_for_seconds(seconds)
    # the 512 photo at 2x, its face (at ~(221, 122) in the photo) placed near the frame's centre
    video = driving_video(n, FPS, size=(W, H), base_scale=2.0, offset=(640 - 442.0, 330 - 244.0))
    write_video(str(path), video.frames, fps=FPS)
    return n


class Timer:
    """Fastest wall and CPU seconds over repeated runs of one stage. The CPU time is this process's
    (all threads); pinned to one core it is what the stage takes on an otherwise idle core, so the
    two columns differ when other work shares the core."""

    def __init__(self) -> None:
        self.wall, self.cpu = np.inf, np.inf

    def run(self, fn):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self.wall = min(self.wall, time.perf_counter() - w0)
        self.cpu = min(self.cpu, time.process_time() - c0)
        return out


def decode(path: Path) -> list[np.ndarray]:
    return list(iter_frames(str(path), fps=FPS, threads=1))


def encode(path: Path, crops: np.ndarray) -> int:
    with VideoWriter(str(path), fps=FPS, threads=1) as w:
        for frame in crops:
            w.write(frame)
    return w.frames


def track(chunks: list[np.ndarray], cfg: FaceConfig) -> tuple[list, FaceTracker]:
    tracker = FaceTracker(cfg, FPS)
    return list(tracker.track(chunks)), tracker


def curate(src: Path, dst: Path, cfg: FaceConfig) -> int:
    """The whole unit for one clip; returns frames written."""
    chunks = list(iter_frames(str(src), fps=FPS, threads=1))
    tracker = FaceTracker(cfg, FPS)
    found = list(tracker.track(chunks))
    seen = np.array([f is not None for f in found])
    lm = np.zeros((len(found), 68, 2), np.float32)
    lm[seen] = np.stack([f for f in found if f is not None])
    lm = smooth_landmarks(lm, FPS, cfg.smoothing, visible=seen)
    box = crop_box(lm, (W, H), cfg.crop_margin, visible=seen)
    crop_lm = to_crop(lm, box, CROP)
    face_mask(crop_lm, (CROP, CROP), cfg.mask_expand)  # the Face Locator mask of the clip
    with VideoWriter(str(dst), fps=FPS, threads=1) as w:
        for chunk in chunks:
            for frame in chunk:
                w.write(crop_image(frame, box, CROP))
    return w.frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = FaceConfig()

    with tempfile.TemporaryDirectory(prefix="bench-curation-") as tmp:
        tmp = Path(tmp)
        src = tmp / "clip720p.mp4"
        n = make_clip(src, args.seconds)

        # warm-up: load the dlib models and codecs once, outside the timings
        warm = next(iter_frames(str(src), fps=FPS, threads=1))[:4]
        list(FaceTracker(cfg, FPS).track(warm))

        # the stages take turns, round after round, so load from elsewhere falls on all of them alike
        t_dec, t_trk, t_enc, t_all = Timer(), Timer(), Timer(), Timer()
        for _ in range(args.repeats):
            chunks = t_dec.run(lambda: decode(src))
            frames = sum(len(c) for c in chunks)
            found, tracker = t_trk.run(lambda: track(chunks, cfg))
            lm = np.stack([f for f in found if f is not None])
            box = crop_box(lm, (W, H), cfg.crop_margin)
            crops = np.stack([crop_image(f, box, CROP) for c in chunks for f in c])
            t_enc.run(lambda: encode(tmp / "crops.mp4", crops))
            del chunks, crops
            written = t_all.run(lambda: curate(src, tmp / "curated.mp4", cfg))

    def rates(dec: float, enc: float, trk: float, whole: float) -> list[float]:
        floor = 1.0 / (1.0 / dec + 1.0 / enc)
        return [dec, enc, floor, trk, whole, whole / floor]

    wall = rates(frames / t_dec.wall, frames / t_enc.wall, frames / t_trk.wall, written / t_all.wall)
    cpu = rates(frames / t_dec.cpu, frames / t_enc.cpu, frames / t_trk.cpu, written / t_all.cpu)
    rows = [
        ("(a) decode 720p (PyAV, 1 thread)", ""),
        ("(b) encode 512x512 H.264 (PyAV x264, 1 thread)", ""),
        ("decode + encode floor, 1/(1/a + 1/b)", ""),
        ("(c) tracking + landmarks on decoded frames", ">= 200"),
        ("(d) whole unit: decode, track, landmarks, crop, encode", ""),
        ("(d) / floor", ">= 80%"),
    ]
    s = tracker.stats
    print(f"Curation unit on one core (CPU {sorted(os.sched_getaffinity(0))}), {W}x{H} clip, {frames} frames "
          f"at {FPS:g} fps, crops {CROP}x{CROP}; best of {args.repeats}; load average {os.getloadavg()[0]:.1f}.\n")
    print("| stage | frames/s (wall) | frames/s (CPU time) | target |")
    print("|---|---:|---:|---|")
    for (name, target), w, c in zip(rows, wall, cpu):
        fmt = (lambda v: f"{v:.0%}") if name.startswith("(d) /") else (lambda v: f"{v:.1f}")
        print(f"| {name} | {fmt(w)} | {fmt(c)} | {target} |")
    print(f"\ntracker: {s.frames} frames, {s.detections} full-frame and {s.near_detections} local detections, "
          f"{s.drifts} drift re-detections, {s.lost} lost; {len(lm)}/{len(found)} frames with a face")


if __name__ == "__main__":
    main()
