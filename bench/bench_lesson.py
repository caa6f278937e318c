"""Lessons from text on one core: lessons per minute (synthesis + pose + render + encode) and the peak
memory of a long lesson against a short one.

    .venv/bin/python bench/bench_lesson.py [--lessons 10] [--short 30] [--long 600] [--core 0]

Every measurement runs in a fresh child process pinned to one core (``os.sched_setaffinity``; OpenCV,
BLAS and x264 one thread each), with its own empty speech cache, so synthesis is always counted. The
reference is the astronaut photo (``skimage.data.astronaut()``); the renderer is ``warp`` at 512x512 with
burnt-in captions off (files only). A lesson is an English script of sentences and paragraphs; the long
and short lessons are trimmed to exactly ``--short`` / ``--long`` seconds. Peak RSS is the child's
``ru_maxrss`` (its own, reported at its end). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "A fraction has two parts.", "The top number is the numerator.", "The bottom number is the denominator.",
    "It tells how many equal parts make a whole.", "Half of a pizza is one of two equal slices.",
    "Three quarters means three of four equal parts.", "Fractions with the same denominator are easy to add.",
    "We simply add the numerators and keep the denominator.", "Let us try a few examples together.",
    "Take your time and check each answer.",
]


def script(seconds: float, seed: int = 0) -> str:
    """English script of about ``seconds`` of speech (about 2.6 words a second), a paragraph each 5 sentences."""
    words, out, i = 0, [], seed
    while words < seconds * 2.8:
        para = [SENTENCES[(i + k) % len(SENTENCES)] for k in range(5)]
        out.append(" ".join(para))
        words += sum(len(s.split()) for s in para)
        i += 5
    return "\n\n".join(out)


def pin(core: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.sched_setaffinity(0, {core})
    import cv2

    cv2.setNumThreads(1)


def child(args) -> None:
    """Render ``args.lessons`` lessons of ``args.seconds`` each; print one JSON line of figures."""
    pin(args.core)
    import numpy as np
    from skimage import data

    from facepose.config import Config, TTSConfig
    from facepose.render.base import get_renderer
    from facepose.render.job import render_video

    tmp = Path(tempfile.mkdtemp(prefix="bench-lesson-"))
    cfg = Config(tts=TTSConfig(cache_dir=str(tmp / "tts")))
    photo = np.ascontiguousarray(data.astronaut())
    renderer = get_renderer("warp", cfg)
    frames, video_s, t0 = 0, 0.0, time.perf_counter()
    for n in range(args.lessons):
        path = tmp / f"lesson{n}.md"
        path.write_text(script(args.seconds, seed=n), encoding="utf-8")  # distinct scripts: every one synthesised
        res = render_video(photo, str(path), str(tmp / f"lesson{n}.mp4"), cfg=cfg, renderer=renderer,
                           seconds=args.seconds if args.trim else None)
        frames += res.frames
        video_s += res.seconds
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(json.dumps({"lessons": args.lessons, "frames": frames, "video_s": video_s, "wall_s": wall, "peak_mb": peak_mb}))


def run_child(**kw) -> tuple[dict, float]:
    """(the child's figures, its peak RSS in MB)."""
    cmd = [sys.executable, __file__, "--child"] + [x for k, v in kw.items() for x in (f"--{k}", str(v))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if proc.returncode:
        raise SystemExit(f"child failed: {cmd}")
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    return fig, fig["peak_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lessons", type=int, default=10, help="lessons in the speed row")
    ap.add_argument("--lesson-seconds", type=float, default=20.0, help="length of each lesson in the speed row")
    ap.add_argument("--short", type=float, default=30.0)
    ap.add_argument("--long", type=float, default=600.0)
    ap.add_argument("--core", type=int, default=0)
    ap.add_argument("--no-speed", action="store_true", help="only the memory rows")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    ap.add_argument("--trim", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; one core used\n")
    print("| run | lessons | video s | wall s | lessons/min | x real time | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = [("speed", dict(lessons=args.lessons, seconds=args.lesson_seconds, trim=0)),
            (f"{args.short:g} s lesson", dict(lessons=1, seconds=args.short, trim=1)),
            (f"{args.long:g} s lesson", dict(lessons=1, seconds=args.long, trim=1))]
    rss = {}
    for name, kw in rows[1:] if args.no_speed else rows:
        fig, peak = run_child(core=args.core, **kw)
        rss[name] = peak
        print(f"| {name} | {fig['lessons']} | {fig['video_s']:.1f} | {fig['wall_s']:.1f} | "
              f"{60 * fig['lessons'] / fig['wall_s']:.1f} | {fig['video_s'] / fig['wall_s']:.2f} | {peak:.0f} |", flush=True)
    ratio = rss[rows[2][0]] / rss[rows[1][0]]  # the memory rows always run
    print(f"\nPeak RSS, {args.long:g} s lesson / {args.short:g} s lesson: {ratio:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
