"""Long videos in the diffusion backend at tiny size on CPU: context-window sampling (Moore-AnimateAnyone's
long pipeline) against Motion Frames chaining, the windows and their averaging, the automatic choice,
and the fidelity details matched to Moore (fp16 reference bank, PIL resizing, 32-group motion norm)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from facepose.config import ModelConfig
from facepose.errors import ConfigError, InputError
from facepose.render.diffusion.build import build_pipeline
from facepose.render.diffusion.checkpoint import load_moore_animateanyone
from facepose.render.diffusion.config import check_model_config, load_arch
from facepose.render.diffusion.pipeline import average_windows, context_windows
from tests.support.diffusion import SIZE, face_masks, face_points, pose_images, reference_image, render, write_moore_layout

LOGGER = "facepose.render.diffusion.pipeline"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_diffusion.py
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref(astronaut) -> np.ndarray:
    return reference_image(astronaut)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny model written in Moore-AnimateAnyone's released layout (no Motion Frames channels) and
    loaded back: the ReferenceNet's motion-frame inputs are zero-padded, as for the real release."""
    arch = load_arch("tiny")
    source = build_pipeline(arch, seed=3)
    torch.nn.init.normal_(source.pose_guider.conv_out.weight, std=0.3)  # a trained Pose Guider: the pose matters
    root = tmp_path_factory.mktemp("moore") / "pretrained_weights"
    write_moore_layout(source, root, arch.unet)
    pipe = load_moore_animateanyone(root, arch)
    assert torch.count_nonzero(pipe.reference_unet.conv_in.weight[:, 4:]) == 0
    return pipe


# -- continuity and frame counts -----------------------------------------------------------------------
def decoded(pipe, ref, pose, **kw) -> tuple[np.ndarray, torch.Tensor]:
    """Frames, and the latents the VAE decoded for them (T, 4, h, w), from a hook on its decoder."""
    latents: list[torch.Tensor] = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda m, args: latents.append(args[0].clone()))
    try:
        frames = pipe(ref, pose, num_inference_steps=3, generator=torch.Generator().manual_seed(0), **kw)
    finally:
        hook.remove()
    return frames, torch.cat(latents)


def test_released_weights_carry_the_first_frames_into_the_last_window(released, ref, caplog):
    pose_a = pose_images(61)
    pose_b = pose_a.copy()
    pose_b[:4] = pose_images(4, phase=2.0)  # only the first 4 frames differ
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out_a, lat_a = decoded(released, ref, pose_a)
    out_b, lat_b = decoded(released, ref, pose_b)
    assert out_a.long_video == "context" and out_a.windows[-1] == list(range(37, 61))
    assert "long video: context windows (24 frames, overlap 4; 3 window(s) for 61 frames)" in caplog.text
    assert lat_a.shape == (61, 4, 8, 8)
    # the last window shares no frame with the first, yet every one of its frames changed: the first
    # frames reach it through two overlaps (one window further per denoising step)
    change = (lat_a - lat_b).abs().amax(dim=(1, 2, 3))  # (T,)
    assert bool((change[37:] > 1e-6).all()), change[37:]
    assert not np.array_equal(out_a.frames[37:], out_b.frames[37:])  # and it shows in the frames
    # the same weights chained through their (zero) Motion Frames channels: nothing crosses a clip
    chained_a, chain_lat_a = decoded(released, ref, pose_a[:48], long_video="motion_frames")
    chained_b, chain_lat_b = decoded(released, ref, pose_b[:48], long_video="motion_frames")
    assert bool(((chain_lat_a - chain_lat_b).abs().amax(dim=(1, 2, 3))[:4] > 1e-6).all())
    torch.testing.assert_close(chain_lat_a[24:], chain_lat_b[24:], rtol=0, atol=0)
    np.testing.assert_array_equal(chained_a.frames[24:], chained_b.frames[24:])


@pytest.mark.parametrize("frames", [1, 23, 25, 61])
@pytest.mark.parametrize("mode", ["context", "motion_frames"])
def test_every_length_renders_exactly_its_frames(released, ref, frames, mode):
    out = released(ref, pose_images(frames), face_masks(frames), num_inference_steps=1,
                   generator=torch.Generator().manual_seed(0), long_video=mode, stream=True)
    got = list(out.frames)
    assert len(got) == frames and all(f.shape == (SIZE, SIZE, 3) and f.dtype == np.uint8 for f in got)
    if mode == "context":
        assert sorted({i for w in out.windows for i in w}) == list(range(frames))
        assert out.clip_lengths == [frames]
    else:
        assert sum(out.clip_lengths) == frames and out.windows == []


def test_one_context_window_is_plain_sampling_exactly(ref):
    pipe = build_pipeline("tiny", seed=0)
    torch.nn.init.normal_(pipe.pose_guider.conv_out.weight, std=0.3)
    torch.nn.init.normal_(pipe.face_locator.conv_out.weight, std=0.3)
    for frames in (23, 24):
        pose, masks = pose_images(frames), face_masks(frames)
        context = pipe(ref, pose, masks, num_inference_steps=3, guidance_scale=3.5,
                       generator=torch.Generator().manual_seed(5), long_video="context")
        plain = pipe(ref, pose, masks, num_inference_steps=3, guidance_scale=3.5,
                     generator=torch.Generator().manual_seed(5), long_video="motion_frames")
        assert context.windows == [list(range(frames))] and plain.clip_lengths == [frames]
        np.testing.assert_array_equal(context.frames, plain.frames)


def test_context_frames_are_decoded_a_chunk_at_a_time_and_streamed(released, ref):
    sizes: list[int] = []
    hook = released.vae.decoder.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        out = released(ref, pose_images(61), num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                       decode_chunk_size=8, stream=True)
        assert out.long_video == "context" and sizes == []  # nothing runs before the first frame is asked for
        first = next(out.frames)
        assert first.shape == (SIZE, SIZE, 3) and sizes == [8]  # the first chunk only, not the whole video
        rest = list(out.frames)
    finally:
        hook.remove()
    assert len(rest) == 60 and sizes == [8] * 7 + [5]


# -- Moore's windows and averaging ---------------------------------------------------------------------
def test_closed_loop_windows_are_moores_uniform_scheduler():
    # Moore-AnimateAnyone's uniform scheduler as its long pipeline calls it (step 0, stride 1, closed loop):
    # starts every size - overlap frames up to the last frame, indices modulo the length
    assert context_windows(61, 24, 4, closed_loop=True) == [
        list(range(0, 24)), list(range(20, 44)), list(range(40, 61)) + [0, 1, 2], [60] + list(range(0, 23))]
    assert context_windows(44, 24, 4, closed_loop=True) == [
        list(range(0, 24)), list(range(20, 44)), list(range(40, 44)) + list(range(0, 20))]
    assert context_windows(16, 8, 0, closed_loop=True) == [list(range(0, 8)), list(range(8, 16))]
    for n in (1, 23, 24):
        assert context_windows(n, 24, 4, closed_loop=True) == [list(range(n))]


def test_open_windows_never_wrap_and_the_last_ends_on_the_last_frame():
    assert context_windows(61, 24, 4) == [list(range(0, 24)), list(range(20, 44)), list(range(37, 61))]
    assert context_windows(25, 24, 4) == [list(range(0, 24)), list(range(1, 25))]
    assert context_windows(44, 24, 4) == [list(range(0, 24)), list(range(20, 44))]
    for n in (25, 47, 48, 61, 240, 1000):
        windows = context_windows(n, 24, 4)
        assert all(w == list(range(w[0], w[0] + 24)) for w in windows)
        assert windows[0][0] == 0 and windows[-1][-1] == n - 1
        assert all(b[0] <= a[-1] - 3 for a, b in zip(windows, windows[1:]))  # neighbours share >= 4 frames
    with pytest.raises(ValueError, match="overlap < size"):
        context_windows(61, 24, 24)


def test_overlaps_are_averaged_with_weight_one_over_the_windows_holding_a_frame():
    windows = context_windows(61, 24, 4)  # [0..23], [20..43], [37..60]

    def predict(window):  # window k predicts k + 1 everywhere, and its frame index on channel 1
        k = windows.index(window)
        out = torch.full((1, 2, len(window), 2, 2), float(k + 1))
        out[:, 1] = torch.tensor(window, dtype=torch.float32).view(-1, 1, 1)
        return out

    mean = average_windows(61, windows, predict)
    assert mean.shape == (1, 2, 61, 2, 2)
    expected = np.array([1.0] * 20 + [1.5] * 4 + [2.0] * 13 + [2.5] * 7 + [3.0] * 17)
    np.testing.assert_array_equal(mean[0, 0, :, 0, 0].numpy(), expected)
    np.testing.assert_array_equal(mean[0, 1, :, 0, 0].numpy(), np.arange(61))  # frames land where they belong
    # closed loop: frames 0..2 are in three windows, 3..19 in two, 20..22 in two, ...
    loop = context_windows(61, 24, 4, closed_loop=True)
    ones = average_windows(61, loop, lambda w: torch.ones(1, 1, len(w), 1, 1) * (loop.index(w) + 1))
    assert ones[0, 0, 0, 0, 0].item() == pytest.approx((1 + 3 + 4) / 3)
    assert ones[0, 0, 10, 0, 0].item() == pytest.approx((1 + 4) / 2)
    assert ones[0, 0, 30, 0, 0].item() == 2.0
    with pytest.raises(ValueError, match="uncovered"):
        average_windows(5, [[0, 1, 2]], lambda w: torch.zeros(1, 1, len(w), 1, 1))


def test_each_step_averages_the_guided_window_predictions_then_steps_the_whole_sequence(released, ref):
    pipe = released
    frames, guidance = 30, 3.0
    windows = context_windows(frames, 24, 4)  # [0..23], [6..29]
    assert windows == [list(range(0, 24)), list(range(6, 30))]
    latent, embeds = pipe.encode_reference_image(ref, SIZE, SIZE)
    pipe.encode_reference(latent, pipe.prepare_motion_frames(latent, None), embeds)
    pose = pose_images(frames)
    noise = pipe.prepare_latents(frames, SIZE, SIZE, torch.Generator().manual_seed(0))
    outputs: list[torch.Tensor] = []
    hook = pipe.denoising_unet.register_forward_hook(lambda m, args, out: outputs.append(out[0].clone()))
    try:
        with torch.no_grad():
            got = pipe.denoise_windows(noise, windows, lambda w: pipe.encode_conditions(pose[w], None, SIZE, SIZE),
                                       embeds, 1, guidance)
    finally:
        hook.remove()
        pipe.bank.clear()
    assert len(outputs) == 2 and all(o.shape == (2, 4, 24, 8, 8) for o in outputs)  # [uncond, cond] per window
    guided = [o[:1] + guidance * (o[1:] - o[:1]) for o in outputs]
    mean = torch.zeros(1, 4, frames, 8, 8)
    mean[:, :, :6] = guided[0][:, :, :6]
    mean[:, :, 6:24] = (guided[0][:, :, 6:] + guided[1][:, :, :18]) / 2
    mean[:, :, 24:] = guided[1][:, :, 18:]
    pipe.scheduler.set_timesteps(1)
    expected = pipe.scheduler.step(mean, pipe.scheduler.timesteps[0], noise, return_dict=False)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# -- the automatic choice ------------------------------------------------------------------------------
def test_auto_uses_context_windows_for_zero_motion_frames_and_chaining_when_trained(ref, caplog):
    pipe = build_pipeline("tiny", seed=0)
    assert pipe.motion_frames_trained()  # random init: the channels are read
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = render_out(pipe, ref, 30)
    assert out.long_video == "motion_frames" and out.clip_lengths == [24, 6]
    assert "long video: Motion Frames chaining (2 clip(s) of up to 24 frames, 2 motion frames): auto: the " \
           "ReferenceNet's Motion Frames channels are trained" in caplog.text
    caplog.clear()
    with torch.no_grad():
        pipe.reference_unet.conv_in.weight[:, 4:] = 0
    assert not pipe.motion_frames_trained()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = render_out(pipe, ref, 30)
    assert out.long_video == "context" and out.windows == [list(range(24)), list(range(6, 30))]
    assert "long video: context windows (24 frames, overlap 4; 2 window(s) for 30 frames): auto: the ReferenceNet's " \
           "Motion Frames channels are zero (untrained, as in every released Moore-AnimateAnyone checkpoint)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = render_out(pipe, ref, 30, long_video="motion_frames")  # an explicit choice is kept, and said
    assert out.long_video == "motion_frames" and "set by model.long_video" in caplog.text


def render_out(pipe, ref, frames, **kw):
    return pipe(ref, pose_images(frames), num_inference_steps=1, generator=torch.Generator().manual_seed(0), **kw)


def test_bad_long_video_settings_are_named(ref):
    pipe = build_pipeline("tiny", seed=0)
    with pytest.raises(InputError, match="long_video 'chained' is not one of"):
        render_out(pipe, ref, 3, long_video="chained")
    with pytest.raises(InputError, match=r"1 <= model.context_frames <= 32"):
        render_out(pipe, ref, 3, long_video="context", context_frames=40)
    with pytest.raises(ConfigError, match="model.long_video 'x'"):
        check_model_config(ModelConfig(long_video="x"))
    with pytest.raises(ConfigError, match="model.context_overlap"):
        check_model_config(ModelConfig(context_frames=8, context_overlap=8))
    with pytest.raises(InputError, match="ended after 3 frames; 30 were asked for"):
        render(pipe, ref, iter(pose_images(3)), num_frames=30, long_video="context")


# -- the renderer --------------------------------------------------------------------------------------
def test_renderer_draws_poses_and_masks_on_demand_as_the_streamed_ones(astronaut, released):
    from facepose.face.crop import face_mask
    from facepose.pose.draw import iter_pose_images
    from facepose.pose.sequence import PoseSequence
    from facepose.render.diffusion.renderer import FaceMasks, PoseImages, build_diffusion_renderer

    landmarks = np.stack([face_points(i * 0.3, 512) for i in range(30)])
    landmarks[5, :, 0] += 40
    pose = PoseSequence(landmarks, width=512, height=640)
    drawn = PoseImages(pose, SIZE, point_radius=3.0)
    assert len(drawn) == 30
    for i, image in enumerate(iter_pose_images(pose, size=SIZE, point_radius=3.0)):
        np.testing.assert_array_equal(drawn[i], image)
    masks = FaceMasks(pose, SIZE, block=24)
    scale = SIZE / 640
    target = landmarks * scale + np.array([(SIZE - 512 * scale) / 2, 0], np.float32)
    np.testing.assert_array_equal(masks[3], face_mask(target[:24], (SIZE, SIZE)))
    np.testing.assert_array_equal(masks[29], face_mask(target[24:], (SIZE, SIZE)))
    renderer = build_diffusion_renderer(None, pipeline=released, model=ModelConfig(steps=1, long_video="context"))
    frames = list(renderer.render(astronaut, pose, seed=1))
    assert len(frames) == 30 and all(f.shape == (SIZE, SIZE, 3) for f in frames)


# -- fidelity to Moore-AnimateAnyone -------------------------------------------------------------------
def test_reference_bank_is_fp16_as_moores_and_read_in_the_unet_dtype(released, ref):
    latent, embeds = released.encode_reference_image(ref, SIZE, SIZE)
    with torch.no_grad():
        released.encode_reference(latent, released.prepare_motion_frames(latent, None), embeds)
    try:
        assert len(released.bank.features) == 6
        assert all(v.dtype == torch.float16 for v in released.bank.features.values())
    finally:
        released.bank.clear()


def test_reference_is_resized_with_pil_lanczos_for_the_vae_and_bicubic_for_clip(released, astronaut):
    photo = np.ascontiguousarray(astronaut[10:310, 120:360])  # 300x240, not the output size
    latent, embeds = released.encode_reference_image(photo, SIZE, SIZE)
    vae_in = np.asarray(Image.fromarray(photo).resize((SIZE, SIZE), Image.LANCZOS)).astype(np.float32) / 255
    pixels = torch.from_numpy(vae_in).permute(2, 0, 1)[None] * 2 - 1
    clip_in = np.asarray(Image.fromarray(photo).resize((32, 32), Image.BICUBIC)).astype(np.float32) / 255
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    clip = (torch.from_numpy(clip_in).permute(2, 0, 1)[None] - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        want_latent = released.vae.encode(pixels).latent_dist.mean * 0.18215
        want_embeds = released.image_encoder(pixel_values=clip).image_embeds[:, None]
    torch.testing.assert_close(latent, want_latent, rtol=0, atol=1e-6)
    torch.testing.assert_close(embeds, want_embeds, rtol=0, atol=1e-6)
    # resizing in float (torch's antialiased bilinear, as before) lands measurably elsewhere
    x = torch.nn.functional.interpolate(torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255, size=(SIZE, SIZE),
                                        mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        float_latent = released.vae.encode(x * 2 - 1).latent_dist.mean * 0.18215
    assert (float_latent - latent).abs().max() > 100 * (want_latent - latent).abs().max() + 1e-5


def test_motion_module_norms_have_moores_32_groups_at_every_size(released):
    from facepose.render.diffusion.build import build_components

    norms = [m.norm for m in released.denoising_unet.modules() if type(m).__name__ == "AnimateDiffTransformer3D"]
    assert len(norms) == 11 and all(n.num_groups == 32 for n in norms)
    assert released.denoising_unet.config.norm_num_groups == 2  # the spatial UNet keeps the config's groups
    arch = load_arch("tiny")
    arch.unet = {**arch.unet, "block_out_channels": [24, 48]}
    with pytest.raises(ConfigError, match=r"block_out_channels \[24, 48\] must be multiples of 32"):
        build_components(arch, "meta")
