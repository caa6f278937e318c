"""Warp renderer speed at 512x512 on one core, with and without H.264 encoding.

    .venv/bin/python bench/bench_warp.py [--frames 240] [--preset lively_talk] [--core 0]

The process is pinned to one core (``os.sched_setaffinity``) and OpenCV to one thread before anything
heavy is imported; the encoder runs x264 with one thread. The reference is the astronaut photo
(``skimage.data.astronaut()``), the pose a bundled preset retargeted onto it. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def pin(core: int) -> None:
    """Pin this process, OpenCV and the BLAS/OpenMP pools to one core."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.sched_setaffinity(0, {core})
    import cv2

    cv2.setNumThreads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--preset", default="lively_talk")
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="best of this many runs per row")
    args = ap.parse_args()
    pin(args.core)

    import numpy as np
    from skimage import data

    from facepose.media.video import VideoWriter
    from facepose.pose.presets import load_preset
    from facepose.pose.retarget import retarget
    from facepose.render import get_renderer
    from facepose.timeline import FPS

    renderer = get_renderer("warp", None)
    size = renderer.cfg.size
    photo = np.ascontiguousarray(data.astronaut())
    t0 = time.perf_counter()
    crop = renderer.crop(photo, name="astronaut")
    crop_s = time.perf_counter() - t0
    pose = retarget(load_preset(args.preset), crop[1], (size, size)).with_length(args.frames)

    class Cropped:  # hand the crop over so the rows time the per-frame work
        image, landmarks = crop

    def warp_only() -> float:
        t = time.perf_counter()
        for _ in renderer.render(Cropped, pose):
            pass
        return time.perf_counter() - t

    def warp_and_encode(tmp: Path) -> float:
        t = time.perf_counter()
        with VideoWriter(tmp / "warp.mp4", fps=FPS, threads=1) as w:
            for frame in renderer.render(Cropped, pose):
                w.write(frame)
        return time.perf_counter() - t

    frames = np.stack(list(renderer.render(Cropped, pose)))

    def encode_only(tmp: Path) -> float:
        t = time.perf_counter()
        with VideoWriter(tmp / "enc.mp4", fps=FPS, threads=1) as w:
            for frame in frames:
                w.write(frame)
        return time.perf_counter() - t

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        stages = {
            "warp only": warp_only,
            "encode only (H.264, x264 veryfast crf 18, 1 thread)": lambda: encode_only(tmp),
            "warp + encode": lambda: warp_and_encode(tmp),
        }
        best = {label: float("inf") for label in stages}
        for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits every row alike
            for label, fn in stages.items():
                best[label] = min(best[label], fn())
    rows = list(best.items())

    n = len(pose)
    print(f"warp renderer, {size}x{size}, {n} frames of preset:{args.preset} on the astronaut photo, "
          f"one core ({platform.processor() or platform.machine()}, core {args.core}), best of {args.repeats}")
    print(f"reference crop, once per job (detect, landmarks, crop; the first call loads dlib's models): "
          f"{crop_s * 1e3:.0f} ms\n")
    print("| stage | seconds | frames/s | ms/frame |")
    print("|---|---:|---:|---:|")
    for label, s in rows:
        print(f"| {label} | {s:.2f} | {n / s:.0f} | {s / n * 1e3:.2f} |")


if __name__ == "__main__":
    main()
