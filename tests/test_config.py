"""Typed config: YAML sections merge onto dataclasses; overrides apply; typos fail at load."""

from __future__ import annotations

import pytest

from facepose.config import Config, load_config
from facepose.errors import ConfigError


def test_defaults_then_section_files_then_overrides(tmp_path):
    (tmp_path / "face.yaml").write_text("detector: cnn\ndetect_every: 5\nsmoothing:\n  beta: 0.5\n")
    cfg = load_config(["face.detect_every=7", "pose.draw_lines=true"], directory=tmp_path)
    assert isinstance(cfg, Config)
    assert cfg.face.detector == "cnn"  # from face.yaml
    assert cfg.face.detect_every == 7  # override beats file
    assert cfg.face.smoothing.beta == 0.5 and cfg.face.smoothing.min_cutoff == 1.0  # nested merge keeps defaults
    assert cfg.pose.draw_lines is True and cfg.pose.fps == 24


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
