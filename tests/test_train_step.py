"""The training step and loop without Ray (tiny seeded models, CPU): which weights each stage trains,
the objective, reference dropout, the speed flags, EMA, and resuming from a checkpoint."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from facepose.errors import ConfigError, InputError
from facepose.render.diffusion.build import build_pipeline
from facepose.train.config import TrainConfig, load_train_config
from facepose.train.dataset import CuratedClips, collate
from facepose.train.step import (
    STATE_FILE,
    DiffusionStep,
    LocalSession,
    fetch_checkpoint,
    fit,
    is_motion_parameter,
    motion_modules_bypassed,
    noise_target,
    read_state,
    zero_motion_modules,
)
from tests.support.datasets import curate_dataset

COMPONENTS = ("vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider", "face_locator")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, astronaut, speech_16k) -> str:
    work = tmp_path_factory.mktemp("train-step-ds")
    return curate_dataset(work / "ds", work, astronaut, speech_16k)


def tiny(prefix: str, *overrides: str, stage: str = "stage1") -> TrainConfig:
    return load_train_config([stage, "tiny"], [f"data.dataset={prefix}", *overrides])


def batch_of(cfg: TrainConfig, n: int = 2) -> dict:
    ds = CuratedClips(cfg.data, clip_size=32, seed=cfg.seed)
    return collate([ds[i % len(ds)] for i in range(n)])


def snapshot(pipe) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of every component, copied."""
    out = {}
    for c in COMPONENTS:
        module = getattr(pipe, c)
        for n, t in list(module.named_parameters()) + list(module.named_buffers()):
            out[f"{c}.{n}"] = t.detach().clone()
    return out


def train_steps(pipe, cfg: TrainConfig, batch: dict, steps: int = 3, lr: float = 1e-2) -> DiffusionStep:
    step = DiffusionStep(pipe, cfg)
    opt = torch.optim.AdamW(step.parameters, lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = step.forward_backward(step.net, batch, gen)
        assert math.isfinite(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


# -- which weights train ------------------------------------------------------------------------------
def test_stage2_changes_only_the_motion_modules(dataset):
    cfg = tiny(dataset, "data.num_frames=4", "diffusion.uncond_ratio=0.5", stage="stage2")
    pipe = build_pipeline("tiny", seed=0)  # motion modules random (not the identity): every one of them learns
    before = snapshot(pipe)
    step = train_steps(pipe, cfg, batch_of(cfg))
    motion = {n for n in before if n.startswith("denoising_unet.") and is_motion_parameter(n[len("denoising_unet."):])}
    motion_weights = {f"denoising_unet.{n}" for n, _ in pipe.denoising_unet.named_parameters() if is_motion_parameter(n)}
    assert {n for n, _ in step.named_parameters} == motion_weights and len(motion_weights) > 200  # the optimizer's only weights
    for c in COMPONENTS:
        for n, p in getattr(pipe, c).named_parameters():
            assert p.requires_grad == (f"{c}.{n}" in motion), f"{c}.{n}"
    after = snapshot(pipe)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= motion
    assert len(changed) > 0.8 * len(motion_weights)
    untouched = [n for n in before if n not in motion]
    assert len(untouched) > 500 and all(torch.equal(before[n], after[n]) for n in untouched)  # bit-identical


def test_stage1_trains_the_image_model_and_leaves_motion_modules_and_encoders_alone(dataset):
    cfg = tiny(dataset)
    pipe = build_pipeline("tiny", seed=0)
    before = snapshot(pipe)
    train_steps(pipe, cfg, batch_of(cfg))
    after = snapshot(pipe)
    same = {n for n in before if torch.equal(before[n], after[n])}
    for n in before:
        if n.startswith(("vae.", "image_encoder.")) or ".motion_modules." in n:
            assert n in same, n
    for n in ("denoising_unet.conv_in.weight", "denoising_unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
              "reference_unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight",
              "pose_guider.conv_out.weight", "face_locator.conv_out.weight"):
        assert n not in same, n


def test_motion_modules_are_bypassed_in_stage_1():
    pipe = build_pipeline("tiny", seed=0)
    unet = pipe.denoising_unet
    x = torch.randn(1, 4, 3, 8, 8)
    ctx = torch.randn(3, 1, 32)
    with torch.no_grad():
        full = unet(x, 10, encoder_hidden_states=ctx).sample
        with motion_modules_bypassed(unet):
            bypassed = unet(x, 10, encoder_hidden_states=ctx).sample
        assert not torch.allclose(full, bypassed)
        assert torch.allclose(unet(x, 10, encoder_hidden_states=ctx).sample, full)  # back on after the block
        zero_motion_modules(unet)  # identity motion modules: the same as bypassing them
        assert torch.allclose(unet(x, 10, encoder_hidden_states=ctx).sample, bypassed, atol=1e-6)


# -- the objective --------------------------------------------------------------------------------------
def test_targets_are_the_noise_or_the_velocity():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012)
    x0, noise = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    t = torch.tensor([10, 900])
    assert torch.equal(noise_target(sched, x0, noise, t, "epsilon"), noise)
    a = sched.alphas_cumprod[t].view(2, 1, 1, 1, 1)
    assert torch.allclose(noise_target(sched, x0, noise, t, "v_prediction"), a.sqrt() * noise - (1 - a).sqrt() * x0, atol=1e-6)


def test_epsilon_with_zero_terminal_snr_is_refused(dataset):
    cfg = tiny(dataset, "diffusion.scheduler.rescale_betas_zero_snr=true")
    with pytest.raises(ConfigError, match="epsilon prediction cannot sample with zero-terminal-SNR"):
        DiffusionStep(build_pipeline("tiny", seed=0), cfg)
    step = DiffusionStep(build_pipeline("tiny", seed=0), tiny(dataset, "diffusion.prediction_type=v_prediction", "diffusion.scheduler.rescale_betas_zero_snr=true"))
    assert step.pipe.scheduler.config.prediction_type == "v_prediction"  # what a saved checkpoint samples with


def test_noise_offset_shifts_each_sample_and_channel(dataset):
    batch = batch_of(tiny(dataset), 4)
    means = []
    for offset in (0.0, 5.0):
        step = DiffusionStep(build_pipeline("tiny", seed=0), tiny(dataset, f"diffusion.noise_offset={offset}"))
        x = step.encode(batch, torch.Generator().manual_seed(0))
        means.append(x["target"].mean(dim=(2, 3, 4)).abs().mean())  # epsilon target: the noise itself
    assert means[0] < 0.2 and means[1] > 1.0


def test_reference_dropout_removes_the_reference_and_its_embedding(dataset):
    batch = batch_of(tiny(dataset), 2)
    other = dict(batch, reference_values=-batch["reference_values"], clip_reference=batch["clip_reference"].flip(-1))

    def predict(uncond: float, b: dict) -> torch.Tensor:
        step = DiffusionStep(build_pipeline("tiny", seed=0), tiny(dataset, f"diffusion.uncond_ratio={uncond}", "diffusion.motion_dropout=0"))
        x = step.encode(b, torch.Generator().manual_seed(0))
        if uncond == 1:
            assert x["reference_input"].shape[0] == 0 and int(x["n_uncond"]) == 2 and not x["context"].any()
        with torch.no_grad(), step.pipe.bank.reading(x["noisy"].shape[2], uncond=int(x["n_uncond"])):
            return step.net(x["noisy"], x["timesteps"], x["reference_input"], x["context"], x["pose"], x["mask"])

    assert torch.equal(predict(1.0, batch), predict(1.0, other))  # no reference reaches the UNet
    assert not torch.allclose(predict(0.0, batch), predict(0.0, other))


# -- speed flags ----------------------------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_gradients(dataset):
    batch = batch_of(tiny(dataset), 2)
    grads = []
    for flag in ("false", "true"):
        cfg = tiny(dataset, f"gradient_checkpointing={flag}", "diffusion.uncond_ratio=0.5", "diffusion.motion_dropout=0.5")
        step = DiffusionStep(build_pipeline("tiny", seed=0), cfg)
        step.net.train()
        loss = step.forward_backward(step.net, batch, torch.Generator().manual_seed(1))
        grads.append((loss, {n: p.grad.clone() for n, p in step.named_parameters if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    assert l0 == pytest.approx(l1, rel=1e-5) and g0.keys() == g1.keys() and len(g0) > 100
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-6, rtol=1e-4), n


def test_bf16_mixed_precision_trains_close_to_fp32(dataset):
    batch = batch_of(tiny(dataset), 2)
    losses = []
    for mp in ("fp32", "bf16"):
        step = DiffusionStep(build_pipeline("tiny", seed=0), tiny(dataset, f"mixed_precision={mp}"))
        losses.append(step.forward_backward(step.net, batch, torch.Generator().manual_seed(2)))
    assert all(math.isfinite(v) for v in losses)
    assert losses[1] == pytest.approx(losses[0], rel=0.05)


# -- the loop: checkpoints, resume, EMA ---------------------------------------------------------------
def test_a_run_resumes_from_its_checkpoint_with_step_and_optimizer_state(dataset, tmp_path):
    cfg = tiny(dataset, "steps=2", "checkpoint_every=2", "validate_every=0", "batch_size=1")
    first = LocalSession(tmp_path / "run")
    fit(cfg, first)
    assert (tmp_path / "run" / "checkpoint_00000002" / STATE_FILE).is_file()
    assert [r["step"] for r in first.reports] == [1, 2] and first.reports[-1]["optimizer_step"] == 2

    cfg = replace(cfg, steps=4)
    again = LocalSession(tmp_path / "run")
    fit(cfg, again)
    assert [r["step"] for r in again.reports] == [3, 4]
    assert [r["resumed_from"] for r in again.reports] == [2, 2]
    assert again.reports[-1]["optimizer_step"] == 4  # Adam's own count: its state came back
    state = read_state(tmp_path / "run" / "checkpoint_00000004")
    assert state["step"] == 4 and [h["step"] for h in state["history"]] == [1, 2, 3, 4]
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} <= {3, 4}

    # another run can start from that checkpoint (weights, optimizer, step)
    other = LocalSession(tmp_path / "other", resume=fetch_checkpoint(str(tmp_path / "run" / "checkpoint_00000002"), tmp_path / "x"))
    cfg = replace(cfg, steps=3)
    fit(cfg, other)
    assert [r["step"] for r in other.reports] == [3] and other.reports[0]["optimizer_step"] == 3


def test_a_checkpoint_of_another_stage_is_refused_with_the_way_forward(dataset, tmp_path):
    cfg = tiny(dataset, "steps=1", "validate_every=0", "batch_size=1")
    fit(cfg, LocalSession(tmp_path / "s1"))
    stage2 = tiny(dataset, "steps=2", "data.num_frames=2", stage="stage2")
    with pytest.raises(ConfigError, match="stage-1 checkpoint.*diffusion.init_from="):
        fit(stage2, LocalSession(tmp_path / "s2", resume=tmp_path / "s1" / "checkpoint_00000001"))
    with pytest.raises(InputError, match="no training checkpoint at"):
        fetch_checkpoint(str(tmp_path / "nowhere"), tmp_path / "y")


def test_ema_weights_are_what_the_checkpoint_renders(dataset, tmp_path):
    from facepose.render.diffusion.checkpoint import load_pipeline

    cfg = tiny(dataset, "steps=3", "checkpoint_every=3", "validate_every=0", "batch_size=1", "ema=true", "ema_decay=0.5")
    fit(cfg, LocalSession(tmp_path / "ema"))
    folder = Path(tmp_path / "ema" / "checkpoint_00000003")
    state = read_state(folder)
    saved = load_pipeline(folder / "pipeline")
    names = [n for n, p in saved.pose_guider.named_parameters()]
    assert names  # the pose guider trains in stage 1
    shadow = state["ema"]["shadow_params"]
    raw = state["trainable"]
    step = DiffusionStep(saved, cfg)  # the same parameter order as training
    index = {id(p): i for i, p in enumerate(step.parameters)}
    i = index[id(saved.pose_guider.conv_out.weight)]
    assert torch.equal(saved.pose_guider.conv_out.weight.detach(), shadow[i])
    assert not torch.equal(shadow[i], raw[i])
