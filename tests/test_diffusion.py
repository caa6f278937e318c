"""The diffusion backend at tiny size on CPU: clip chaining, determinism, save/load, Pose Guider / Face
Locator zero-init, reference attention, temporal norm, bad input. Tiny seeded models built here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facepose.errors import InputError, ModelNotFoundError
from facepose.render.diffusion.attention import (
    ReferenceReader,
    ReferenceWriter,
    install_reference_attention,
    is_spatial_self_attention,
    remove_reference_attention,
)
from facepose.render.diffusion.build import build_pipeline
from facepose.render.diffusion.checkpoint import load_pipeline, save_pipeline
from facepose.render.diffusion.motion import FrameGroupNorm, set_temporal_norm
from tests.support.diffusion import SIZE, face_masks, face_points, pose_images, reference_image, render


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine every op of a
    2-thread pool waits for a scheduler slice (measured: 1.2 s vs 13 s for 60 frames)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe(one_thread):
    """The tiny pipeline, seeded; tests that change weights build their own."""
    return build_pipeline("tiny", seed=0)


@pytest.fixture(scope="module")
def ref(astronaut) -> np.ndarray:
    return reference_image(astronaut)


# -- clips and Motion Frames ---------------------------------------------------------------------------
def test_sixty_frames_render_as_three_chained_clips(pipe, ref):
    clip_frames: list[int] = []
    reference_calls: list[int] = []
    h1 = pipe.denoising_unet.register_forward_pre_hook(lambda m, args: clip_frames.append(args[0].shape[2]))
    h2 = pipe.reference_unet.register_forward_pre_hook(lambda m, args: reference_calls.append(args[0].shape[1]))
    try:
        out = pipe(ref, pose_images(60), face_masks(60), num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    finally:
        h1.remove()
        h2.remove()
    assert out.frames.shape == (60, SIZE, SIZE, 3) and out.frames.dtype == np.uint8
    assert out.clip_lengths == [24, 24, 12]
    assert clip_frames == [24, 24, 24, 24, 12, 12]  # two DDIM steps per clip, CFG inside the batch
    assert reference_calls == [12, 12, 12]  # the ReferenceNet runs once per clip on 4 * (1 + 2) channels
    assert out.frames.std() > 1.0  # not a blank video


def test_stream_yields_the_same_frames_one_by_one(pipe, ref):
    whole = render(pipe, ref, pose_images(30))
    it = pipe(ref, iter(pose_images(30)), num_frames=30, num_inference_steps=2,
              generator=torch.Generator().manual_seed(0), stream=True).frames
    first = next(it)
    assert first.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(np.stack([first, *it]), whole)


def test_motion_frames_are_the_reference_then_the_last_two_generated_frames(pipe):
    ref_latent = torch.randn(1, 4, 8, 8)
    first = pipe.prepare_motion_frames(ref_latent, None)
    assert first.shape == (1, 8, 8, 8)
    torch.testing.assert_close(first, torch.cat([ref_latent, ref_latent], dim=1))
    previous = torch.randn(1, 4, 24, 8, 8)
    later = pipe.prepare_motion_frames(ref_latent, previous)
    torch.testing.assert_close(later, torch.cat([previous[:, :, 22], previous[:, :, 23]], dim=1))


def test_second_clip_depends_on_the_first_through_motion_frames(ref):
    pipe = build_pipeline("tiny", seed=0)
    torch.nn.init.normal_(pipe.pose_guider.conv_out.weight, std=0.3)  # make the pose matter
    pose_a = pose_images(48)
    pose_b = pose_a.copy()
    pose_b[:24] = pose_images(24, phase=2.0)  # same second clip, different first clip
    a, b = render(pipe, ref, pose_a), render(pipe, ref, pose_b)
    assert not np.array_equal(a[:24], b[:24])
    assert not np.array_equal(a[24:], b[24:])  # only the motion frames carry clip 1 into clip 2
    with torch.no_grad():
        pipe.reference_unet.conv_in.weight[:, 4:] = 0  # cut the motion-frame channels (as released)
    a, b = render(pipe, ref, pose_a, long_video="motion_frames"), render(pipe, ref, pose_b, long_video="motion_frames")
    assert not np.array_equal(a[:24], b[:24])
    np.testing.assert_array_equal(a[24:], b[24:])  # chained clips no longer see each other


# -- determinism and checkpoints -----------------------------------------------------------------------
def test_same_seed_gives_identical_frames(pipe, ref):
    pose, masks = pose_images(26), face_masks(26)
    a, b = render(pipe, ref, pose, masks, seed=7), render(pipe, ref, pose, masks, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render(pipe, ref, pose, masks, seed=8))


def test_save_and_load_round_trip_gives_identical_output(pipe, ref, tmp_path):
    save_pipeline(pipe, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model_index.json").is_file()
    loaded = load_pipeline(tmp_path / "ckpt")
    assert type(loaded.pose_guider).__name__ == "PoseGuider" and loaded.config.motion_frames == 2
    pose, masks = pose_images(26), face_masks(26)
    np.testing.assert_array_equal(render(loaded, ref, pose, masks), render(pipe, ref, pose, masks))


def test_save_and_load_through_s3(pipe, ref, s3, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPOSE_CACHE", str(tmp_path / "cache"))
    save_pipeline(pipe, f"{s3}/models/tiny")
    loaded = load_pipeline(f"{s3}/models/tiny")
    pose = pose_images(5)
    np.testing.assert_array_equal(render(loaded, ref, pose), render(pipe, ref, pose))


def test_missing_checkpoint_folder_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a saved pipeline"):
        load_pipeline(tmp_path / "empty")


# -- Pose Guider and Face Locator ----------------------------------------------------------------------
def test_zero_initialised_pose_guider_and_face_locator_leave_the_unet_output_unchanged():
    pipe = build_pipeline("tiny", seed=0)
    unet = pipe.denoising_unet
    features = pipe.encode_conditions(pose_images(6), face_masks(6), SIZE, SIZE)
    assert features.shape == (6, 32, 8, 8) and torch.count_nonzero(features) == 0
    sample, context = torch.randn(1, 4, 6, 8, 8), torch.randn(6, 1, 32)
    with torch.no_grad():
        plain = unet(sample, 10, encoder_hidden_states=context).sample
        with pipe.conv_in_addition.adding(features):
            conditioned = unet(sample, 10, encoder_hidden_states=context).sample
        torch.testing.assert_close(conditioned, plain, rtol=0, atol=0)
        # trained (non-zero) outputs do reach the UNet, through the hook after conv_in
        torch.nn.init.normal_(pipe.face_locator.conv_out.weight)
        features = pipe.encode_conditions(pose_images(6), face_masks(6), SIZE, SIZE)
        with pipe.conv_in_addition.adding(features):
            conditioned = unet(sample, 10, encoder_hidden_states=context).sample
    assert not torch.allclose(conditioned, plain)


def test_pose_guider_has_the_released_layout():
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    from facepose.render.diffusion.models import PoseGuider

    ours = {k: tuple(v.shape) for k, v in PoseGuider().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ControlNetConditioningEmbedding(320, 3, (16, 32, 96, 256)).state_dict().items()}
    assert list(ours.items()) == list(theirs.items())
    assert ours["conv_out.weight"] == (320, 256, 3, 3) and ours["conv_in.weight"] == (16, 3, 3, 3)


# -- reference attention -------------------------------------------------------------------------------
def _attention_paths(unet) -> list[str]:
    from diffusers.models.attention_processor import Attention

    return [name for name, m in unet.named_modules() if isinstance(m, Attention)]


def test_reference_processors_sit_on_every_spatial_self_attention(pipe):
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    for unet, cls in ((pipe.denoising_unet, ReferenceReader), (pipe.reference_unet, ReferenceWriter)):
        procs = unet.attn_processors
        spatial = [p for p in _attention_paths(unet) if ".attentions." in p and p.endswith(".attn1")]
        blocks = sum(len(m.transformer_blocks) for m in unet.modules() if isinstance(m, Transformer2DModel))
        assert len(spatial) == blocks == 6  # down 2, mid 1, up 3
        for path in spatial:
            proc = procs[f"{path}.processor"]
            assert isinstance(proc, cls) and proc.name == path and proc.bank is pipe.bank
        others = [p for n, p in procs.items() if not is_spatial_self_attention(n)]
        assert others and not any(isinstance(p, (ReferenceReader, ReferenceWriter)) for p in others)
    # motion modules and cross-attention are left alone
    assert any(".motion_modules." in p for p in _attention_paths(pipe.denoising_unet))


def test_removing_reference_processors_changes_the_output(ref):
    pipe = build_pipeline("tiny", seed=0)
    pose = pose_images(6)
    with_reference = render(pipe, ref, pose)
    remove_reference_attention(pipe.reference_unet, pipe.denoising_unet)
    without = render(pipe, ref, pose)
    assert np.abs(with_reference.astype(int) - without).mean() > 0.5
    install_reference_attention(pipe.reference_unet, pipe.denoising_unet, pipe.bank)
    np.testing.assert_array_equal(render(pipe, ref, pose), with_reference)


def test_unconditional_half_gets_no_reference(pipe):
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    attn = pipe.denoising_unet.get_submodule(name)
    reader = pipe.denoising_unet.attn_processors[f"{name}.processor"]
    frames, tokens = 3, 64
    hidden = torch.randn(2 * frames, tokens, 32)  # [uncond frames, cond frames]
    reference = torch.randn(1, tokens, 32)
    pipe.bank.features[name] = reference
    try:
        with torch.no_grad(), pipe.bank.reading(frames, uncond=1):
            out = reader(attn, hidden)
        with torch.no_grad():
            plain = reader.inner(attn, hidden)
            cond = reader.inner(attn, hidden[frames:], torch.cat([hidden[frames:], reference.expand(frames, -1, -1)], dim=1))
    finally:
        pipe.bank.clear()
    torch.testing.assert_close(out[:frames], plain[:frames])
    torch.testing.assert_close(out[frames:], cond)
    assert not torch.allclose(out[frames:], plain[frames:])


# -- temporal norm -------------------------------------------------------------------------------------
def test_frame_temporal_norm_normalises_each_frame_on_its_own():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 4, 4)  # (B, C, F, H, W)
    norm = torch.nn.GroupNorm(2, 8, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    frame_norm = FrameGroupNorm(2, 8, eps=1e-6)
    frame_norm.load_state_dict(norm.state_dict())
    per_frame = torch.stack([norm(x[:, :, f]) for f in range(5)], dim=2)
    torch.testing.assert_close(frame_norm(x), per_frame)
    y = x.clone()
    y[:, :, 1:] *= 5  # change the other frames
    torch.testing.assert_close(frame_norm(y)[:, :, 0], frame_norm(x)[:, :, 0])
    assert not torch.allclose(norm(y)[:, :, 0], norm(x)[:, :, 0])  # diffusers' clip-wide statistics


def test_temporal_norm_switch_keeps_the_weights(pipe):
    unet = build_pipeline("tiny", seed=0).denoising_unet
    keys = {k: v.clone() for k, v in unet.state_dict().items()}
    sample, context = torch.randn(1, 4, 5, 8, 8), torch.randn(5, 1, 32)
    with torch.no_grad():
        frame = unet(sample, 10, encoder_hidden_states=context).sample
        assert set_temporal_norm(unet, "clip") == 11  # 2 down blocks x 2, mid 1, 2 up blocks x 3
        clip = unet(sample, 10, encoder_hidden_states=context).sample
    assert all(torch.equal(keys[k], v) for k, v in unet.state_dict().items()) and len(keys) == len(unet.state_dict())
    assert not torch.allclose(frame, clip)
    norms = [m.norm for m in unet.modules() if type(m).__name__ == "AnimateDiffTransformer3D"]
    assert norms and all(type(n) is torch.nn.GroupNorm for n in norms)
    assert all(type(n) is FrameGroupNorm for n in (m.norm for m in pipe.denoising_unet.modules() if type(m).__name__ == "AnimateDiffTransformer3D"))


# -- run-time switches ---------------------------------------------------------------------------------
def test_math_attention_and_bf16_give_close_frames(ref):
    pipe = build_pipeline("tiny", seed=0)
    pose = pose_images(4)
    sdpa = render(pipe, ref, pose)
    pipe.configure_runtime("cpu", dtype="fp32", attention="math")
    assert type(pipe.denoising_unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn1.processor"].inner).__name__ == "AttnProcessor"
    assert np.abs(render(pipe, ref, pose).astype(int) - sdpa).max() <= 2
    pipe.configure_runtime("cpu", dtype="bf16", attention="sdpa")
    assert pipe.denoising_unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    frames = render(pipe, ref, pose)
    assert frames.shape == sdpa.shape and np.abs(frames.astype(int) - sdpa).mean() < 12


# -- bad input -----------------------------------------------------------------------------------------
def test_zero_frame_pose_is_an_input_error(pipe, ref):
    with pytest.raises(InputError, match="0 frames"):
        pipe(ref, np.zeros((0, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(InputError, match="num_frames"):
        pipe(ref, iter(pose_images(3)))
    with pytest.raises(InputError, match="ended after 3 frames"):
        render(pipe, ref, iter(pose_images(3)), num_frames=5)
    with pytest.raises(InputError, match="reference image"):
        pipe(np.zeros((SIZE, SIZE), np.uint8), pose_images(2))
    with pytest.raises(InputError, match=r"pose images must be \(T, H, W, 3\)"):
        pipe(ref, pose_images(1)[0])


def test_renderer_rejects_a_zero_frame_pose_before_rendering(pipe, astronaut):
    from facepose.pose.sequence import PoseSequence
    from facepose.render.diffusion.renderer import build_diffusion_renderer

    renderer = build_diffusion_renderer(None, pipeline=pipe)
    empty = PoseSequence(np.zeros((0, 68, 2), np.float32), source="empty.parquet")
    with pytest.raises(InputError, match="empty.parquet has 0 frames"):
        renderer.render(astronaut, empty, seed=0)


def test_no_checkpoint_configured_says_what_to_download_and_where():
    from facepose.config import Config
    from facepose.render import get_renderer

    with pytest.raises(ModelNotFoundError) as err:
        get_renderer("diffusion", Config())
    msg = str(err.value)
    for needed in ("model.checkpoint", "huggingface.co/patrolli/AnimateAnyone", "denoising_unet.pth", "motion_module.pth",
                   "sd-vae-ft-mse", "image_encoder", "stable-diffusion-v1-5/unet/config.json", "--backend warp"):
        assert needed in msg
    assert "\n" not in msg


# -- the renderer end to end (face crop and pose drawing from facepose.face / facepose.pose) -------------
def test_renderer_streams_one_frame_per_pose_frame(pipe, astronaut):
    from facepose.config import ModelConfig
    from facepose.pose.sequence import PoseSequence
    from facepose.render.diffusion.renderer import build_diffusion_renderer

    renderer = build_diffusion_renderer(None, pipeline=pipe, model=ModelConfig(steps=2))
    landmarks = np.stack([face_points(i * 0.3, 512) for i in range(30)])  # a 512x512 canvas
    seen: list[tuple[int, int]] = []
    frames = list(renderer.render(astronaut, PoseSequence(landmarks, width=512, height=512), seed=3,
                                  progress=lambda done, total: seen.append((done, total))))
    assert len(frames) == 30 and all(f.shape == (SIZE, SIZE, 3) and f.dtype == np.uint8 for f in frames)
    assert seen[0] == (1, 30) and seen[-1] == (30, 30)
