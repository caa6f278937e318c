"""Shot-cut detection for curation: our HSV-histogram distance against PySceneDetect, on one core.

The clip (tests.support.synth.shot_clip) is six real photographs (skimage.data), each panning and zooming
slowly with sensor noise, joined by three hard cuts, a 12-frame fade to black and back and a 12-frame
cross-dissolve. Every detector is fed the decoded RGB frames one at a time, as curation's one PyAV
decode feeds facepose.curate.Scanner (PySceneDetect never opens the video). PySceneDetect's frames are
downscaled as its SceneManager does by default (to a width of 256 .. 384 px) and turned to BGR.

  (a) precision / recall of the detected cut frames at 320x180 and 1280x720 (a detection counts
      within 2 frames of a hard cut or anywhere in a fade/dissolve; tests.support.synth.ShotClip.score);
  (b) CPU time per frame at 1280x720 over ``--frames`` frames (the clip, repeated), the downscale and
      colour conversion included.

    .venv/bin/python bench/bench_shots.py [--frames 512] [--repeats 3]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for tests.support.synth

from facepose.config import CurateConfig  # noqa: E402
from facepose.curate import ShotDetector  # noqa: E402
from tests.support.synth import shot_clip  # noqa: E402

cv2.setNumThreads(1)
FPS = 24.0


def colour_hist(frame: np.ndarray) -> np.ndarray:
    """frame: (H, W, 3) uint8 RGB -> normalised 8x8x8 HSV histogram of the frame at 64x64 (512,)."""
    small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1, 2], None, [8, 8, 8], [0, 180, 0, 256, 0, 256]).reshape(-1)
    return (h / max(float(h.sum()), 1.0)).astype(np.float32)


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


class Ours:
    """The detector curation used before PySceneDetect (kept here to compare): a cut where the
    Bhattacharyya distance of consecutive frames' HSV histograms exceeds 0.35."""

    def __init__(self, threshold: float = 0.35):
        self.threshold, self.prev, self.i = threshold, None, 0

    def step(self, frame: np.ndarray) -> list[int]:
        hist = colour_hist(frame)
        cut = self.prev is not None and hist_distance(self.prev, hist) > self.threshold
        self.prev, self.i = hist, self.i + 1
        return [self.i - 1] if cut else []

    def finish(self) -> list[int]:
        return []


class OursMin(Ours):
    """The same with PySceneDetect's minimum of 15 frames between cuts."""

    def __init__(self, threshold: float = 0.35, min_len: int = 15):
        super().__init__(threshold)
        self.min_len, self.last = min_len, 0

    def step(self, frame):
        cut = super().step(frame)
        if cut and cut[0] - self.last >= self.min_len:
            self.last = cut[0]
            return cut
        return []


class Chosen:
    """What curation runs now: facepose.curate.ShotDetector with the default CurateConfig."""

    def __init__(self):
        c = CurateConfig()
        self.detect, self.i = ShotDetector(c.shot_threshold, c.shot_min_frames, FPS), 0

    def step(self, frame: np.ndarray) -> list[int]:
        self.i += 1
        return [self.i - 1] if self.detect(frame) else []

    def finish(self) -> list[int]:
        return []


class SceneDetect:
    """PySceneDetect detectors fed one frame at a time (process_frame / post_process)."""

    def __init__(self, *detectors):
        from scenedetect import FrameTimecode

        self.detectors, self.tc, self.i, self.size = detectors, FrameTimecode, 0, None

    def step(self, frame: np.ndarray) -> list[int]:
        if self.size is None:
            h, w = frame.shape[:2]
            f = max(1.0, w / 256)  # scenedetect.scene_manager.compute_downscale_factor
            self.size = (max(1, round(w / f)), max(1, round(h / f)))
        small = cv2.resize(frame, self.size, interpolation=cv2.INTER_LINEAR) if self.size != frame.shape[1::-1] else frame
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        t = self.tc(self.i, FPS)
        self.i += 1
        return [c.frame_num for d in self.detectors for c in d.process_frame(t, bgr)]

    def finish(self) -> list[int]:
        t = self.tc(max(self.i - 1, 0), FPS)
        return [c.frame_num for d in self.detectors for c in d.post_process(t)]


def detectors() -> dict[str, Callable[[], object]]:
    from scenedetect import AdaptiveDetector, ContentDetector, HistogramDetector, ThresholdDetector

    return {
        "curate.ShotDetector": lambda: Chosen(),
        "ours (HSV hist, 0.35)": Ours,
        "ContentDetector": lambda: SceneDetect(ContentDetector()),
        "AdaptiveDetector": lambda: SceneDetect(AdaptiveDetector()),
        "HistogramDetector": lambda: SceneDetect(HistogramDetector()),
        "HistogramDetector(min 0)": lambda: SceneDetect(HistogramDetector(min_scene_len=0)),
        "ours + min 15": lambda: OursMin(),
        "Content+Threshold": lambda: SceneDetect(ContentDetector(), ThresholdDetector()),
        "Adaptive+Threshold": lambda: SceneDetect(AdaptiveDetector(), ThresholdDetector()),
    }


def run(make: Callable[[], object], frames) -> list[int]:
    det = make()
    cuts = [c for f in frames for c in det.step(f)]
    return sorted(set(cuts + det.finish()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    clips = {"320x180": shot_clip((320, 180)), "1280x720": shot_clip((1280, 720))}
    big = clips["1280x720"]
    print(f"clip: {len(big.frames)} frames, hard cuts at {big.cuts}, fade/dissolve {big.gradual}")
    print(f"{'detector':24s} {'320x180 P/R':>12s} {'720p P/R':>10s} {'720p ms/frame':>14s} {'frames/s':>9s}  cuts at 720p")
    for name, make in detectors().items():
        scores = {}
        for res, clip in clips.items():
            cuts = run(make, clip.frames)
            scores[res] = clip.score(cuts)
        best = float("inf")
        for _ in range(args.repeats):
            det = make()
            t0 = time.process_time()
            for i in range(args.frames):
                det.step(big.frames[i % len(big.frames)])
            best = min(best, (time.process_time() - t0) / args.frames)
        p1, r1 = scores["320x180"]
        p2, r2 = scores["1280x720"]
        print(f"{name:24s} {p1:5.2f}/{r1:4.2f}   {p2:5.2f}/{r2:4.2f} {best * 1e3:14.2f} {1 / best:9.0f}  {cuts}")


if __name__ == "__main__":
    main()
