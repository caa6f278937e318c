"""Loading Moore-AnimateAnyone's released layout: tiny state dicts written under their key names load
strictly and reproduce the model; a wrong file, key or shape is a ModelNotFoundError naming both; and the
full released key lists (tests/data/moore-animateanyone/) match our sd15 models on the meta device."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facepose.config import ModelConfig
from facepose.errors import ModelNotFoundError
from facepose.render.diffusion.attention import ReferenceBank, install_reference_attention
from facepose.render.diffusion.build import build_components, build_pipeline
from facepose.render.diffusion.checkpoint import (
    MOORE_FILES,
    REFERENCE_OPTIONAL,
    convert_moore_state_dicts,
    diffusers_to_moore_keys,
    expected_moore_keys,
    load_moore_animateanyone,
    load_pipeline,
    moore_to_diffusers_key,
)
from facepose.render.diffusion.config import load_arch
from tests.support.diffusion import face_masks, pose_images, reference_image, render, write_moore_layout


def _reference_dir() -> Path:
    """The measured key lists: $FACEPOSE_MOORE_REFERENCE, tests/data/moore-animateanyone (a vendored copy),
    or the team's ../shared/reference/moore-animateanyone beside the checkout."""
    repo = Path(__file__).resolve().parents[1]
    for path in (os.environ.get("FACEPOSE_MOORE_REFERENCE"), repo / "tests" / "data" / "moore-animateanyone",
                 repo.parent / "shared" / "reference" / "moore-animateanyone"):
        if path and Path(path, "motion_module_to_diffusers.json").is_file():
            return Path(path)
    raise FileNotFoundError("Moore-AnimateAnyone key lists not found; copy ../shared/reference/moore-animateanyone to tests/data/")


REFERENCE = _reference_dir()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/test_diffusion.py
    yield
    torch.set_num_threads(before)


def released(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


@pytest.fixture(scope="module")
def tiny_arch():
    return load_arch("tiny")


@pytest.fixture(scope="module")
def source(tiny_arch):
    """A tiny pipeline whose ReferenceNet ignores motion frames, as the released one does."""
    pipe = build_pipeline(tiny_arch, seed=1)
    with torch.no_grad():
        pipe.reference_unet.conv_in.weight[:, 4:] = 0
    torch.nn.init.normal_(pipe.pose_guider.conv_out.weight, std=0.2)  # a trained pose guider
    return pipe


@pytest.fixture(scope="module")
def moore_dir(source, tiny_arch, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("moore") / "pretrained_weights"
    write_moore_layout(source, root, tiny_arch.unet)
    return root


def test_released_layout_loads_strictly_and_reproduces_the_model(source, moore_dir, tiny_arch, astronaut):
    loaded = load_moore_animateanyone(moore_dir, tiny_arch)
    for name in ("reference_unet", "denoising_unet", "pose_guider", "vae", "image_encoder"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(source, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours if not (name == "reference_unet" and k in REFERENCE_OPTIONAL)), name
    # the ReferenceNet's output layers are unused (its output is discarded) and not released: zero-filled
    assert all(torch.count_nonzero(loaded.reference_unet.state_dict()[k]) == 0 for k in REFERENCE_OPTIONAL)
    assert torch.count_nonzero(loaded.face_locator.conv_out.weight) == 0  # none released: adds nothing
    ref, pose, masks = reference_image(astronaut), pose_images(26), face_masks(26)
    np.testing.assert_array_equal(render(loaded, ref, pose, masks), render(source, ref, pose, masks))


def test_load_pipeline_finds_the_released_layout(moore_dir):
    pipe = load_pipeline(moore_dir, ModelConfig(arch="tiny"))
    assert list(pipe.denoising_unet.config.block_out_channels) == [32, 64]  # sizes from the SD folder's config
    assert pipe.reference_unet.config.in_channels == 12


def _edit(moore_dir: Path, tmp_path: Path, file: str, change) -> Path:
    root = tmp_path / "pretrained_weights"
    shutil.copytree(moore_dir, root)
    sd = torch.load(root / file, weights_only=True)
    sd = change(sd)
    torch.save(sd, root / file)
    return root


MM_KEY = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight"


def _drop(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


def _add(key):
    return lambda sd: {**sd, key: torch.zeros(3)}


def _reshape(key):
    return lambda sd: {**sd, key: torch.zeros(sd[key].shape[0], 1)}


def _diffusers_names(sd):
    return {moore_to_diffusers_key(k): v for k, v in sd.items()}


@pytest.mark.parametrize(
    "file, change, message",
    [
        ("pose_guider.pth", _drop("blocks.2.bias"), r"pose_guider\.pth does not match the model: missing key 'blocks\.2\.bias'"),
        ("denoising_unet.pth", _add("extra.weight"), r"denoising_unet\.pth does not match the model: unexpected key 'extra\.weight'"),
        ("motion_module.pth", _reshape(MM_KEY), rf"motion_module\.pth does not match the model: key '{MM_KEY}' has shape \[32, 1\]"),
        ("reference_unet.pth", _drop("mid_block.attentions.0.proj_in.weight"), r"reference_unet\.pth does not match.*missing key 'mid_block"),
        ("motion_module.pth", _diffusers_names, r"motion_module\.pth does not match.*missing key '.*temporal_transformer"),
        ("pose_guider.pth", lambda sd: {"state_dict": sd}, r"pose_guider\.pth is not a plain state dict"),
    ],
    ids=["missing-key", "extra-key", "misshaped", "reference-missing", "not-renamed", "wrapped"],
)
def test_a_wrong_key_or_shape_names_the_file_and_the_key(moore_dir, tmp_path, tiny_arch, file, change, message):
    root = _edit(moore_dir, tmp_path, file, change)
    with pytest.raises(ModelNotFoundError, match=message) as err:
        load_moore_animateanyone(root, tiny_arch)
    assert "patrolli/AnimateAnyone" in str(err.value)  # and what the layout should be


def test_a_missing_file_names_it_and_the_layout(moore_dir, tmp_path, tiny_arch):
    root = tmp_path / "pretrained_weights"
    shutil.copytree(moore_dir, root)
    (root / "motion_module.pth").unlink()
    shutil.rmtree(root / "image_encoder")
    with pytest.raises(ModelNotFoundError) as err:
        load_moore_animateanyone(root, tiny_arch)
    msg = str(err.value)
    assert "lacks motion_module.pth, image_encoder/" in msg
    for where in ("huggingface.co/patrolli/AnimateAnyone", "stabilityai/sd-vae-ft-mse", "sd-image-variations-diffusers",
                  "stable-diffusion-v1-5/unet/config.json"):
        assert where in msg


def test_a_corrupt_file_is_model_not_found(moore_dir, tmp_path, tiny_arch):
    root = tmp_path / "pretrained_weights"
    shutil.copytree(moore_dir, root)
    (root / "pose_guider.pth").write_bytes(b"<html>404</html>")
    with pytest.raises(ModelNotFoundError, match=r"cannot read .*pose_guider\.pth"):
        load_moore_animateanyone(root, tiny_arch)


# -- the released key lists, at full size, on the meta device ---------------------------------------
@pytest.fixture(scope="module")
def sd15_meta():
    return build_components(load_arch("sd15"), "meta")


def test_sd15_yaml_is_the_released_unet_config():
    config = {k: v for k, v in released("sd15_unet_config.json").items() if not k.startswith("_")}
    assert load_arch("sd15").unet == config


def test_released_key_lists_match_our_sd15_models_key_for_key(sd15_meta):
    expected = expected_moore_keys(sd15_meta["reference_unet"], sd15_meta["denoising_unet"], sd15_meta["pose_guider"])
    for file in MOORE_FILES:
        listed = {k: tuple(v) for k, v in released(file.replace(".pth", ".json")).items()}
        assert expected[file] == listed, file  # every key and every shape
    assert len(expected["denoising_unet.pth"]) == 686 and len(expected["reference_unet.pth"]) == 682
    assert len(expected["motion_module.pth"]) == 588 and len(expected["pose_guider.pth"]) == 16
    # the four diffusers-only ReferenceNet keys are exactly the ones the release leaves out
    ours = set(sd15_meta["reference_unet"].state_dict())
    assert ours - set(released("reference_unet.json")) == set(REFERENCE_OPTIONAL)


def test_released_tensors_convert_and_load_strictly_into_sd15_models(sd15_meta):
    files = {f: {k: torch.empty(v, device="meta") for k, v in released(f.replace(".pth", ".json")).items()} for f in MOORE_FILES}
    converted = convert_moore_state_dicts(files, sd15_meta["reference_unet"], sd15_meta["denoising_unet"], sd15_meta["pose_guider"])
    for name in ("reference_unet", "denoising_unet", "pose_guider"):
        model = sd15_meta[name]
        result = model.load_state_dict(converted[name], strict=True, assign=True)
        assert not result.missing_keys and not result.unexpected_keys
    assert converted["reference_unet"]["conv_in.weight"].shape == (320, 12, 3, 3)  # 4 + 2 motion frames x 4
    assert len(converted["denoising_unet"]) == 1253  # 686 spatial + 567 motion (588 less 21 shared pe)


def test_motion_module_renames_are_the_reference_table():
    table = released("motion_module_to_diffusers.json")
    assert {k: moore_to_diffusers_key(k) for k in table} == table
    inverse: dict[str, list[str]] = {}
    for moore, ours in table.items():
        inverse.setdefault(ours, []).append(moore)
    assert all(sorted(diffusers_to_moore_keys(ours)) == sorted(moore) for ours, moore in inverse.items())
    assert moore_to_diffusers_key("conv_in.weight") == "conv_in.weight"


def test_reference_attention_pairs_all_16_released_blocks(sd15_meta):
    bank = ReferenceBank()
    assert install_reference_attention(sd15_meta["reference_unet"], sd15_meta["denoising_unet"], bank) == 16
    readers = sorted(p.name for p in sd15_meta["denoising_unet"].attn_processors.values() if hasattr(p, "bank"))
    blocks = [f"down_blocks.{b}.attentions.{a}" for b in range(3) for a in range(2)] + ["mid_block.attentions.0"] + [
        f"up_blocks.{b}.attentions.{a}" for b in (1, 2, 3) for a in range(3)]
    assert readers == sorted(f"{b}.transformer_blocks.0.attn1" for b in blocks)
