"""Diffusion backend speed (seconds per frame) with random weights.

    # CPU, tiny test sizes (64x64):
    .venv/bin/python bench/bench_diffusion.py
    # GPU, real sizes (512x512, SD 1.5 UNets + motion modules, CLIP ViT-L/14, sd-vae-ft-mse), fp16, 20 DDIM steps,
    # both long-video modes (context: what released weights get; motion_frames: a stage-2 checkpoint):
    .venv/bin/python bench/bench_diffusion.py --config sd15 --dtype fp16 --steps 20 --device cuda --long-video context
    .venv/bin/python bench/bench_diffusion.py --config sd15 --dtype fp16 --steps 20 --device cuda --long-video motion_frames

Random weights do the same arithmetic as trained ones, so the timing stands for a real checkpoint.
A warm-up clip runs first (it also pays torch.compile's compile time); the timed run renders
``--frames`` frames with classifier-free guidance, as chained 24-frame clips (``--long-video
motion_frames``: the ReferenceNet once per clip) or as one sequence denoised on overlapping 24-frame
windows (``context``, overlap 4: the ReferenceNet once), with VAE decoding; the best of ``--repeats``
runs is reported. Prints a markdown table;
``denoise`` is the share of time in the denoising loop.
"""

from __future__ import annotations

import argparse
import platform
import time


def face_points(t: float, size: int):
    import numpy as np

    a = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    cx, cy = size * (0.5 + 0.05 * np.sin(t)), size * 0.55
    rx, ry = size * 0.22, size * (0.28 + 0.03 * np.sin(2 * t))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1).astype(np.float32)


def inputs(frames: int, size: int):
    """The astronaut's face (a real photo) and drawn pose frames of a moving face, at ``size``."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from facepose.pose.draw import draw_pose

    photo = data.astronaut()[20:260, 100:340]
    ref = np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC)).copy()
    pose = np.stack([draw_pose(face_points(i * 0.2, size), (size, size)) for i in range(frames)])
    mask = np.zeros((size, size), np.uint8)
    mask[size // 8: -size // 8, size // 6: -size // 6] = 255
    return ref, pose, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", help="configs/model/<name>.yaml (tiny | sd15)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--steps", type=int, default=2, help="DDIM steps")
    ap.add_argument("--frames", type=int, default=48, help="frames in the timed run (24-frame clips)")
    ap.add_argument("--guidance", type=float, default=3.5, help="<= 1 turns classifier-free guidance off")
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "math"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoising UNet")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    ap.add_argument("--size", type=int, default=0, help="frame side (default: the config's)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    ap.add_argument("--long-video", default="context", choices=["context", "motion_frames"],
                    help="context windows (released weights) or Motion Frames chaining (model.long_video)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from facepose.render.diffusion.build import build_pipeline
    from facepose.render.diffusion.config import load_arch

    arch = load_arch(args.config)
    size = args.size or arch.height
    t0 = time.perf_counter()
    pipe = build_pipeline(arch, seed=0, device=args.device)  # built on the device: random init there is fast
    pipe.configure_runtime(args.device, dtype=args.dtype, attention=args.attention, compile=args.compile)
    build_s = time.perf_counter() - t0
    ref, pose, mask = inputs(args.frames, size)
    cuda = torch.device(args.device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    denoise_s = [0.0]
    def timed(fn):
        def wrapper(*a, **kw):
            sync()
            t = time.perf_counter()
            out = fn(*a, **kw)
            sync()
            denoise_s[0] += time.perf_counter() - t
            return out
        return wrapper

    pipe.denoise = timed(pipe.denoise)
    pipe.denoise_windows = timed(pipe.denoise_windows)

    def run(frames: int) -> float:
        sync()
        t = time.perf_counter()
        out = pipe(ref, pose[:frames], mask, height=size, width=size, num_inference_steps=args.steps,
                   guidance_scale=args.guidance, generator=torch.Generator().manual_seed(0), long_video=args.long_video)
        sync()
        assert len(out.frames) == frames
        return time.perf_counter() - t

    warm_s = run(min(args.frames, pipe.config.clip_length))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    best = (float("inf"), 0.0)
    for _ in range(max(1, args.repeats)):
        denoise_s[0] = 0.0
        best = min(best, (run(args.frames), denoise_s[0]))
    total, denoise_total = best
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name() if cuda else cpu
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if cuda else "-"
    params = sum(p.numel() for m in (pipe.reference_unet, pipe.denoising_unet) for p in m.parameters()) / 1e6

    print(f"\ntorch {torch.__version__}; build {build_s:.1f} s; warm-up clip {warm_s:.1f} s; UNets {params:.1f} M parameters\n")
    print("| config | device | dtype | attention | compile | size | long video | frames (clips or windows) | DDIM steps "
          "| CFG | s/frame | total s | denoise | peak GPU GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if args.long_video == "context":
        from facepose.render.diffusion.pipeline import context_windows

        parts = len(context_windows(args.frames, pipe.config.clip_length, 4))
    else:
        parts = len(pipe.clip_lengths(args.frames))
    print(f"| {args.config} | {device} | {args.dtype} | {args.attention} | {'yes' if args.compile else 'no'} | {size}x{size} | "
          f"{args.long_video} | {args.frames} ({parts}) | {args.steps} | {args.guidance if args.guidance > 1 else 'off'} | "
          f"{total / args.frames:.3f} | {total:.1f} | {denoise_total / total:.0%} | {peak} |")


if __name__ == "__main__":
    main()
