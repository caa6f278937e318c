"""The face-68 layout and its measures (facepose.face_layout), and the shared timeline (facepose.timeline)."""

from __future__ import annotations

import numpy as np
import pytest

from facepose import face_layout as layout
from facepose.face.crop import face_mask
from facepose.pose.presets import load_preset
from facepose.pose.sequence import PoseSequence
from facepose.timeline import FPS, SAMPLE_RATE, frames_for_samples, frames_for_seconds, samples_for_frames


@pytest.fixture(scope="module")
def talk() -> np.ndarray:
    """(T, 68, 2) a real face shape (the astronaut's, bundled preset) talking: closed and open mouths."""
    return load_preset("lively_talk").landmarks


# -- layout ------------------------------------------------------------------------------------------
def test_index_ranges_cover_the_68_points_once():
    parts = [layout.JAW, layout.BROWS, layout.NOSE, layout.RIGHT_EYE, layout.LEFT_EYE, layout.MOUTH]
    assert np.array_equal(np.concatenate(parts), np.arange(layout.N_POINTS))
    assert np.array_equal(np.concatenate([layout.RIGHT_BROW, layout.LEFT_BROW]), layout.BROWS)
    assert np.array_equal(np.concatenate([layout.OUTER_LIP, layout.INNER_LIP]), layout.MOUTH)
    assert set(layout.INNER_LIP_PAIRS.ravel()) <= set(layout.INNER_LIP)
    for upper, lower, eye in zip(layout.EYE_UPPER, layout.EYE_LOWER, (layout.RIGHT_EYE, layout.LEFT_EYE)):
        assert set(upper) | set(lower) <= set(eye)


def test_right_eye_is_on_the_image_left_of_a_frontal_face(talk):
    left, right = layout.eye_centres(talk[0])
    assert left[0] < right[0]
    assert layout.inter_ocular(talk[0]) == pytest.approx(float(np.linalg.norm(right - left)))


# -- mouth: one name, one measure --------------------------------------------------------------------
def test_mouth_opening_ignores_mouth_width_while_the_aspect_ratio_does_not(talk):
    """The two measures that were both called ``mouth_opening``: the opening is the lip gap over the
    eye distance; the aspect ratio (the warp painter's) divides by the mouth's own width."""
    opening = layout.mouth_opening(talk)
    frame = talk[int(np.argmax(opening))].astype(np.float64)
    assert layout.mouth_opening(frame) > 0.1 and layout.mouth_aspect_ratio(frame) > 0.1
    wide = frame.copy()  # a smile: the mouth corners pulled out 20%, the lip gap unchanged
    centre = wide[layout.MOUTH].mean(axis=0)
    wide[layout.MOUTH, 0] = centre[0] + 1.2 * (wide[layout.MOUTH, 0] - centre[0])
    assert layout.mouth_opening(wide) == pytest.approx(layout.mouth_opening(frame), rel=1e-3)  # 0.260 both
    assert layout.mouth_aspect_ratio(wide) == pytest.approx(layout.mouth_aspect_ratio(frame) / 1.2, rel=2e-3)


def test_crossed_lips_read_as_closed(talk):
    lm = talk[0].astype(np.float64).copy()
    lm[layout.LOWER_INNER, 1] = lm[layout.UPPER_INNER, 1] - 3  # lower lip drawn above the upper one
    assert layout.mouth_gap(lm) == 0 and layout.mouth_opening(lm) == 0


def test_eye_opening_closes_with_the_lids(talk):
    lm = talk[0].copy()
    shut = lm.copy()
    for upper, lower in zip(layout.EYE_UPPER, layout.EYE_LOWER):
        shut[upper] = shut[lower] = 0.5 * (lm[upper] + lm[lower])
    assert (layout.eye_opening(lm) > 0.15).all() and np.allclose(layout.eye_opening(shut), 0)


# -- seen frames, gaps, boxes ------------------------------------------------------------------------
def test_a_frame_is_seen_when_finite_not_all_zero_and_scored(talk):
    lm = talk[:5].copy()
    lm[1] = 0  # a tracker's filler for a lost frame
    lm[2, 7] = np.nan
    scores = np.ones((5, 68), np.float32)
    scores[3] = 0  # a pose file's lost frame
    assert layout.is_seen(lm).tolist() == [True, False, False, True, True]
    assert layout.is_seen(lm, scores).tolist() == [True, False, False, False, True]
    pose = PoseSequence(np.nan_to_num(lm), scores=scores)
    assert pose.visible.tolist() == [True, False, True, False, True]  # frame 2 was zero-filled at 7 only


def test_lost_frames_are_interpolated_between_their_neighbours_and_held_at_the_ends():
    lm = np.zeros((6, 68, 2), np.float32)
    lm[1], lm[5] = 10, 30
    seen = np.array([False, True, False, False, False, True])
    out = layout.fill_gaps(lm, seen)
    assert out.dtype == np.float32 and np.allclose(out[:, 0, 0], [10, 10, 15, 20, 25, 30])
    hp = np.array([[1.0, 2, 3], [0, 0, 0], [3, 4, 5]])
    assert np.allclose(layout.fill_gaps(hp, np.array([True, False, True]))[1], [2, 3, 4])
    assert np.array_equal(layout.fill_gaps(lm, np.zeros(6, bool)), lm)  # nothing to interpolate from


def test_face_box_size_and_locator_box(talk):
    lm = talk[0]
    x0, y0, x1, y1 = layout.face_box(lm)
    assert layout.face_size(lm) == pytest.approx(max(x1 - x0, y1 - y0))
    assert np.allclose(layout.face_size(talk[:3]), [layout.face_size(f) for f in talk[:3]])
    lx0, ly0, lx1, ly1 = layout.locator_box(lm, 1.2)
    assert (lx1 - lx0) == pytest.approx(1.2 * (x1 - x0), rel=1e-5) and (lx0 + lx1) / 2 == pytest.approx((x0 + x1) / 2)
    mask = face_mask(lm, (512, 512), expand=1.2)  # the Face Locator mask is that box, in whole pixels
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (
        int(np.floor(lx0)), int(np.floor(ly0)), int(np.ceil(lx1)), int(np.ceil(ly1)))


# -- timeline ----------------------------------------------------------------------------------------
def test_seconds_to_frames_rounds_halves_up_and_ignores_float_noise():
    assert (FPS, SAMPLE_RATE) == (24, 16000)
    assert frames_for_seconds(10) == 240 and frames_for_seconds(0.3) == 7  # 7.2
    assert frames_for_seconds(2.5 / 24) == 3 and frames_for_seconds(0.5 / 24) == 1  # halves up, never to even
    assert frames_for_samples(16000) == 24 and frames_for_samples(334) == 1 and frames_for_samples(333) == 0  # 333.3 = half


def test_samples_and_frames_round_trip():
    assert samples_for_frames(24) == 16000 and samples_for_frames(1) == 667  # 666.67
    for n in range(2000):
        assert frames_for_samples(samples_for_frames(n)) == n


def test_resampling_counts_frames_by_the_same_rule():
    pose = PoseSequence(np.ones((5, 68, 2), np.float32), fps=48.0)
    assert len(pose.resample(24)) == frames_for_seconds(5 / 48) == 3  # 2.5 frames: halves up
