"""Typed config: YAML sections merge onto dataclasses; overrides apply; typos fail at load."""

from __future__ import annotations

import pytest

from facepose.config import Config, load_config
from facepose.errors import ConfigError


def test_defaults_then_section_files_then_overrides(tmp_path):
    (tmp_path / "face.yaml").write_text("detector: cnn\ndetect_every: 5\nsmoothing:\n  beta: 0.5\n")
    cfg = load_config(["face.detect_every=7", "pose.point_radius=4"], directory=tmp_path)
    assert isinstance(cfg, Config)
    assert cfg.face.detector == "cnn"  # from face.yaml
    assert cfg.face.detect_every == 7  # override beats file
    assert cfg.face.smoothing.beta == 0.5 and cfg.face.smoothing.min_cutoff == 1.0  # nested merge keeps defaults
    assert cfg.pose.point_radius == 4 and cfg.pose.size == 512


def test_extra_files_merge_whole_configs(tmp_path):
    extra = tmp_path / "run.yaml"
    extra.write_text("storage:\n  retries: 9\n")
    assert load_config(files=[extra], directory=tmp_path / "none").storage.retries == 9


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["face.detectr=cnn"], "detectr"),  # typo in a key
        (["face.detect_every=often"], "detect_every"),  # wrong type
        (["face.detector"], "key=value"),  # not an override
    ],
)
def test_bad_overrides_fail_at_load_with_a_clear_message(overrides, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides, directory=tmp_path)


def test_typo_in_a_yaml_file_fails_at_load(tmp_path):
    (tmp_path / "pose.yaml").write_text("point_radus: 4\n")
    with pytest.raises(ConfigError, match="point_radus"):
        load_config(directory=tmp_path)


def test_repository_configs_load():
    cfg = load_config()
    assert cfg.face.mask_expand == pytest.approx(1.2) and cfg.pose.point_radius == 3


def test_sections_are_frozen_and_replace_makes_a_changed_copy(tmp_path):
    import dataclasses

    cfg = load_config(["face.detect_every=7"], directory=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.face.detect_every = 3  # type: ignore[misc]
    changed = dataclasses.replace(cfg, face=dataclasses.replace(cfg.face, detect_every=3))
    assert changed.face.detect_every == 3 and cfg.face.detect_every == 7


def test_training_overrides_are_routed_by_the_two_config_trees():
    from facepose.train.config import load_train_config, split_overrides

    train, run = split_overrides(["data.dataset=s3://ds", "steps=5", "train.batch_size=2", "audio2pose.hidden=8",
                                  "storage.endpoint=127.0.0.1:9000", "batch.num_cpus=2", "model.steps=3"])
    assert train == ["data.dataset=s3://ds", "steps=5", "train.batch_size=2", "audio2pose.hidden=8"]
    assert run == ["storage.endpoint=127.0.0.1:9000", "batch.num_cpus=2", "model.steps=3"]
    cfg = load_train_config(["stage1", "tiny"], train)
    assert (cfg.data.dataset, cfg.steps, cfg.batch_size, cfg.audio2pose.hidden) == ("s3://ds", 5, 2, 8)
    assert load_config(run).batch.num_cpus == 2
    with pytest.raises(ConfigError, match="dataset_typo"):  # a key in neither tree fails, naming it
        load_train_config(["stage1"], split_overrides(["data.dataset_typo=x"])[0])
