"""Peak memory and speed of long-video rendering: one context window against ten (random weights).

    # CPU, tiny test sizes (64x64), a model with zero Motion Frames channels as released:
    .venv/bin/python bench/bench_long_video.py --threads 1
    # GPU, real sizes:
    .venv/bin/python bench/bench_long_video.py --config sd15 --dtype fp16 --steps 20 --device cuda

Each render runs in a fresh process (so one run's allocator state cannot hide another's): the pipeline is
built with the ReferenceNet's Motion Frames channels zeroed (Moore-AnimateAnyone's release), a short
warm-up render runs, then the timed render of ``--window`` frames or ``--multiple`` x ``--window`` frames
through the renderer's inputs (pose images drawn on demand, EMO face masks) with ``stream=True``, every
frame consumed and dropped as the video encoder does. Peak memory is the render's own: on CPU the
resident set sampled every 2 ms minus the resident set just before the render; on CUDA
``max_memory_allocated`` minus the allocation before it. Prints a markdown table and the ratio
``peak(multiple x window) / peak(window)`` per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set every ``interval`` seconds in a thread; ``peak`` is the highest seen."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, HERE)
    from bench_diffusion import face_points, inputs  # the same reference photo and moving face

    from facepose.pose.sequence import PoseSequence
    from facepose.render.diffusion.build import build_pipeline
    from facepose.render.diffusion.config import load_arch
    from facepose.render.diffusion.renderer import FaceMasks, PoseImages

    arch = load_arch(args.config)
    size = args.size or arch.height
    pipe = build_pipeline(arch, seed=0, device=args.device)
    with torch.no_grad():
        pipe.reference_unet.conv_in.weight[:, pipe.vae.config.latent_channels:] = 0  # as released
    pipe.configure_runtime(args.device, dtype=args.dtype, attention="sdpa")
    ref, _, _ = inputs(1, size)
    landmarks = np.stack([face_points(i * 0.2, size) for i in range(args.frames)])
    pose = PoseSequence(landmarks, width=size, height=size)
    cuda = torch.device(args.device).type == "cuda"

    def render(frames: int) -> int:
        sub = pose if frames == len(pose) else PoseSequence(landmarks[:frames], width=size, height=size)
        out = pipe(ref, PoseImages(sub, size), FaceMasks(sub, size, pipe.config.clip_length), num_frames=frames,
                   height=size, width=size, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   generator=torch.Generator().manual_seed(0), decode_chunk_size=args.decode_chunk, stream=True,
                   long_video=args.mode, context_frames=args.window, context_overlap=args.overlap)
        n = 0
        for _ in out.frames:  # consumed and dropped, as the encoder does
            n += 1
        return n

    render(min(4, args.frames))  # warm-up: lazy imports, kernels, allocator pools
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    before_rss = rss_bytes()
    t = time.perf_counter()
    with PeakRSS() as peak:
        n = render(args.frames)
        if cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    assert n == args.frames, (n, args.frames)
    result = {"frames": n, "mode": args.mode, "seconds": seconds, "rss_peak_mib": (peak.peak - before_rss) / 2**20,
              "rss_before_mib": before_rss / 2**20}
    if cuda:
        result["gpu_peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        result["device"] = torch.cuda.get_device_name()
    else:
        result["device"] = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", help="configs/model/<name>.yaml (tiny | sd15)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--steps", type=int, default=4, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=3.5)
    ap.add_argument("--window", type=int, default=24, help="context frames (model.context_frames)")
    ap.add_argument("--overlap", type=int, default=4, help="model.context_overlap")
    ap.add_argument("--multiple", type=int, default=10, help="the long render is this many windows long")
    ap.add_argument("--modes", default="context,motion_frames", help="comma-separated long_video modes")
    ap.add_argument("--decode-chunk", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    ap.add_argument("--size", type=int, default=0, help="frame side (default: the config's)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="context", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    rows = []
    passthrough = [a for a in sys.argv[1:] if a != "--child"]
    for mode in args.modes.split(","):
        for frames in (args.window, args.multiple * args.window):
            cmd = [sys.executable, __file__, *passthrough, "--child", "--frames", str(frames), "--mode", mode]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gpu = "gpu_peak_mib" in rows[0]
    print(f"\n{rows[0]['device']}; {args.config} at {args.size or 'native size'}, {args.dtype}, {args.steps} DDIM steps, "
          f"CFG {args.guidance}, windows of {args.window} overlapping {args.overlap}\n")
    print("| mode | frames | s/frame | peak RSS MiB (render) | " + ("peak GPU MiB (render) | " if gpu else "") + "ratio to one window |")
    print("|---|---|---|---|" + ("---|" if gpu else "") + "---|")
    key = "gpu_peak_mib" if gpu else "rss_peak_mib"
    for r in rows:
        base = next(b for b in rows if b["mode"] == r["mode"] and b["frames"] == args.window)
        ratio = r[key] / base[key] if base[key] > 0 else float("nan")
        print(f"| {r['mode']} | {r['frames']} | {r['seconds'] / r['frames']:.3f} | {r['rss_peak_mib']:.1f} | "
              + (f"{r['gpu_peak_mib']:.0f} | " if gpu else "") + f"{ratio:.2f} |")


if __name__ == "__main__":
    main()
