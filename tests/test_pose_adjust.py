"""Pose controls (facepose.pose.adjust) on real poses: a preset retargeted onto a real face."""

from __future__ import annotations

import numpy as np
import pytest

from facepose.config import PoseAdjustConfig, load_config
from facepose.errors import InputError
from facepose import face_layout as layout
from facepose.pose import face_model as fm
from facepose.pose.adjust import adjust_pose, blink_curve
from facepose.pose.presets import load_preset
from facepose.pose.retarget import retarget


@pytest.fixture(scope="module")
def ref(astronaut) -> np.ndarray:
    from facepose.face.crop import crop_face

    return crop_face(astronaut, load_config().face).landmarks


def _pose(name: str, ref: np.ndarray):
    return retarget(load_preset(name), ref, (512, 512))


def _eye_gap(lm: np.ndarray) -> np.ndarray:
    return (np.linalg.norm(lm[:, 41] - lm[:, 37], axis=1) + np.linalg.norm(lm[:, 46] - lm[:, 44], axis=1)) / 2


def test_defaults_change_nothing(ref):
    pose = _pose("look_around", ref)
    assert adjust_pose(pose, PoseAdjustConfig(), rest=ref) is pose
    assert adjust_pose(pose, None) is pose
    # a no-op edit that still runs the split and the reassembly gives the same landmarks back
    same = adjust_pose(pose, PoseAdjustConfig(head_amplitude=1.0 + 1e-9), rest=ref)
    assert np.abs(same.landmarks - pose.landmarks).max() < 1e-3


@pytest.mark.parametrize("amplitude", [0.0, 0.5, 2.0])
def test_head_yaw_range_scales_with_the_amplitude(ref, amplitude):
    pose = _pose("head_shake", ref)
    yaw = fm.estimate_head_pose(pose.landmarks)[:, 0]
    assert np.ptp(yaw) > 20  # the preset shakes the head
    out = adjust_pose(pose, PoseAdjustConfig(head_amplitude=amplitude), rest=ref)
    ratio = np.ptp(fm.estimate_head_pose(out.landmarks)[:, 0]) / np.ptp(yaw)
    assert ratio == pytest.approx(amplitude, abs=0.05)
    assert np.ptp(out.head_pose[:, 0]) == pytest.approx(amplitude * np.ptp(pose.head_pose[:, 0]), abs=0.5)


def test_orientation_offset_turns_every_frame(ref):
    pose = _pose("idle", ref)
    out = adjust_pose(pose, PoseAdjustConfig(yaw=15, pitch=-5, roll=8), rest=ref)
    delta = (fm.estimate_head_pose(out.landmarks) - fm.estimate_head_pose(pose.landmarks)).mean(0)
    np.testing.assert_allclose(delta, [15, -5, 8], atol=0.6)


@pytest.mark.parametrize("intensity", [0.0, 0.5, 2.0])
def test_mouth_motion_scales_with_the_expression_intensity(ref, intensity):
    pose = _pose("lively_talk", ref)
    gap = layout.mouth_gap(pose.landmarks)
    assert np.ptp(gap) > 15  # the preset talks
    out = adjust_pose(pose, PoseAdjustConfig(expression=intensity), rest=ref)
    assert np.ptp(layout.mouth_gap(out.landmarks)) / np.ptp(gap) == pytest.approx(intensity, abs=0.05)


def test_blink_rate_replaces_the_sources_blinks(ref):
    pose = _pose("lively_talk", ref)  # 8 s
    open_gap = _eye_gap(ref[None])[0]
    assert (_eye_gap(pose.landmarks) < 0.3 * open_gap).any()  # the preset blinks
    never = adjust_pose(pose, PoseAdjustConfig(blink_rate=0), rest=ref)
    assert _eye_gap(never.landmarks).min() > 0.8 * open_gap
    often = adjust_pose(pose, PoseAdjustConfig(blink_rate=30), rest=ref)
    closed = _eye_gap(often.landmarks) < 0.3 * open_gap
    blinks = int(np.sum(np.diff(closed.astype(int)) == 1))
    assert abs(blinks - 30 * pose.duration / 60) <= 1.5, blinks
    curve = blink_curve(240, 24.0, 30)
    assert curve.max() == pytest.approx(1.0, abs=0.05) and curve.min() == 0.0


def test_smoothing_removes_frame_to_frame_motion(ref):
    pose = _pose("lively_talk", ref)
    speed = np.abs(np.diff(pose.landmarks, axis=0)).mean()
    half = np.abs(np.diff(adjust_pose(pose, PoseAdjustConfig(smoothing=0.5), rest=ref).landmarks, axis=0)).mean()
    full = np.abs(np.diff(adjust_pose(pose, PoseAdjustConfig(smoothing=1.0), rest=ref).landmarks, axis=0)).mean()
    assert full < half < 0.6 * speed


def test_out_of_range_setting_is_named():
    from facepose.pose.sequence import PoseSequence

    pose = PoseSequence(landmarks=np.tile(fm.project()[None], (4, 1, 1)).reshape(4, 68, 2))
    with pytest.raises(InputError, match=r"pose.adjust.head_amplitude must be between 0 and 3, got -1"):
        adjust_pose(pose, PoseAdjustConfig(head_amplitude=-1))


def test_cli_override_reaches_from_source(astronaut):
    from facepose.pose.source import from_source

    cfg = load_config(["pose.adjust.head_amplitude=0"])
    still = from_source("preset:head_shake", astronaut, cfg=cfg)
    moving = from_source("preset:head_shake", astronaut, cfg=load_config())
    assert np.ptp(fm.estimate_head_pose(moving.landmarks)[:, 0]) > 20
    assert np.ptp(fm.estimate_head_pose(still.landmarks)[:, 0]) < 1
    assert "head_amplitude=0.0" in still.meta["adjust"]
