"""Retargeting a driver onto the reference: identity stays the reference's, motion follows the driver."""

from __future__ import annotations

import numpy as np
import pytest

from facepose.errors import InputError
from facepose import face_layout as layout
from facepose.pose import face_model as fm
from facepose.pose.retarget import decompose, retarget
from facepose.pose.sequence import PoseSequence

T = 96
t = np.arange(T) / 24.0
YAW = 20.0 * np.sin(2 * np.pi * t / 4.0)  # a known head turn ...
JAW = 0.8 * np.clip(np.sin(2 * np.pi * t / 2.0), 0, None)  # ... and mouth path


@pytest.fixture(scope="module")
def reference(astronaut) -> np.ndarray:
    from facepose.face.crop import crop_face

    return crop_face(astronaut).landmarks.astype(np.float64)


def other_face() -> np.ndarray:
    """A face of another shape than the model's (and the astronaut's): wider jaw, closer eyes, longer."""
    base = fm.MEAN_3D.copy()
    base[:17, 0] *= 1.25
    base[36:48, 0] *= 0.88
    base[:, 1] *= 1.12
    return base


def driver_along_path(scale: float = 40.0, center=(110.0, 70.0), roll=None, shift=None) -> PoseSequence:
    """The other face moving along YAW and JAW, small (``scale`` px per half face width) in a 320x240 canvas."""
    hp = np.stack([YAW, np.zeros(T), np.zeros(T) if roll is None else roll], 1)
    expr = np.zeros((T, fm.N_EXPR))
    expr[:, fm.EXPRESSIONS.index("jaw_open")] = JAW
    pts = fm.pose_3d(fm.shape_3d(expr, base=other_face()), hp)
    lm = pts[..., :2] * scale + np.asarray(center)
    if shift is not None:
        lm = lm + shift[:, None, :]
    return PoseSequence(lm.astype(np.float32), width=320, height=240, head_pose=hp.astype(np.float32), source="driver")


def rigid_scale(lm: np.ndarray) -> np.ndarray:
    """(T, 68, 2) -> (T,) pixels per model unit of the rigid-point fit (a face size that ignores the jaw)."""
    s, _, _ = fm.similarity(np.broadcast_to(fm.MEAN_3D[fm.RIGID_POINTS, :2], lm[:, fm.RIGID_POINTS].shape), lm[:, fm.RIGID_POINTS])
    return s


def test_relative_retarget_keeps_identity_while_head_and_mouth_follow_the_driver(reference):
    driver = driver_along_path()
    out = retarget(driver, reference, (512, 512))
    L, D = out.landmarks.astype(np.float64), driver.landmarks.astype(np.float64)
    assert (out.width, out.height, len(out)) == (512, 512, T)
    np.testing.assert_allclose(L[0], reference, atol=0.05)  # the rest pose is the reference itself

    # Identity: the reference's inter-ocular distance and face width, changed only as the driver's change
    # with its head turn (foreshortening), never towards the driver's proportions.
    for measure in (layout.inter_ocular, layout.face_width):
        ours = measure(L) / measure(reference)
        theirs = measure(D) / measure(D[0])
        np.testing.assert_allclose(ours, theirs, rtol=0.03)
    shape = lambda lm: layout.inter_ocular(lm) / layout.face_width(lm)  # noqa: E731
    assert abs(shape(reference) - shape(D[0])) > 0.08  # the two faces really differ ...
    np.testing.assert_allclose(shape(L[t < 0.1]), shape(reference), rtol=0.03)  # ... and the output is hers

    # Head turn: the fitted yaw of the output follows the driver's known path.
    yaw = fm.estimate_head_pose(L)[:, 0]
    yaw = yaw - yaw[0]
    assert np.corrcoef(yaw, YAW)[0, 1] > 0.99
    assert 0.75 < np.ptp(yaw) / np.ptp(YAW) < 1.25
    # Mouth: the inner-lip gap in face units opens as the driver's does (on top of her own smile).
    ours = layout.mouth_gap(L) / rigid_scale(L)
    ours = ours - ours[0]
    theirs = layout.mouth_gap(D) / rigid_scale(D)
    assert np.corrcoef(ours, theirs)[0, 1] > 0.99
    assert ours.max() == pytest.approx(theirs.max(), rel=0.2)
    np.testing.assert_allclose(out.head_pose[:, 0], YAW, atol=1e-4)  # relative to the driver's rest frame


def test_a_small_face_drives_a_large_one_the_same_as_a_large_face(reference):
    small = retarget(driver_along_path(scale=15.0, center=(50, 40)), reference, (512, 512))
    large = retarget(driver_along_path(scale=150.0, center=(160, 120)), reference, (512, 512))
    np.testing.assert_allclose(small.landmarks, large.landmarks, atol=0.05)


def test_in_plane_rotation_and_shift_transfer_in_face_units(reference):
    roll = 10.0 * np.sin(2 * np.pi * t / 2.0)
    shift = np.stack([8.0 * np.sin(2 * np.pi * t / 4.0), np.zeros(T)], 1)  # 8 px, about 0.2 face units
    driver = driver_along_path(roll=roll, shift=shift)
    out = retarget(driver, reference, (512, 512))
    motion = decompose(out.landmarks, reference)
    # The output's in-plane rotation follows the driver's roll (yaw foreshortening tilts it slightly).
    assert np.corrcoef(motion.roll, roll)[0, 1] > 0.98
    assert np.abs(motion.roll - roll).max() < 2.0
    # A driver shift of x of its face units moves the reference by x of its own face units.
    ref_unit = rigid_scale(reference[None])[0]
    drv_unit = rigid_scale(driver.landmarks[:1].astype(np.float64))[0]
    c = out.landmarks[:, fm.RIGID_POINTS].mean(1)
    base = retarget(driver_along_path(roll=roll), reference, (512, 512)).landmarks[:, fm.RIGID_POINTS].mean(1)
    np.testing.assert_allclose((c - base)[:, 0] / ref_unit, shift[:, 0] / drv_unit, atol=0.01)


def test_chosen_neutral_frame_maps_onto_the_reference(reference):
    out = retarget(driver_along_path(), reference, (512, 512), neutral=30)
    np.testing.assert_allclose(out.landmarks[30], reference, atol=0.05)
    auto = retarget(driver_along_path(), reference, (512, 512), neutral="auto")
    frame = int(np.argmin(np.abs(auto.landmarks - reference).sum((1, 2))))
    assert JAW[frame] < 0.05  # a closed-mouth frame was chosen as the rest pose


def test_absolute_mode_places_the_driver_shape_in_the_reference_box(reference):
    driver = driver_along_path()
    out = retarget(driver, reference, (512, 512), mode="absolute")
    L, D = out.landmarks.astype(np.float64), driver.landmarks.astype(np.float64)
    shape = lambda lm: layout.inter_ocular(lm) / layout.face_width(lm)  # noqa: E731
    np.testing.assert_allclose(shape(L), shape(D), rtol=1e-4)  # the driver's face shape ...
    c_ref = reference[fm.RIGID_POINTS].mean(0)
    assert np.linalg.norm(L[0, fm.RIGID_POINTS].mean(0) - c_ref) < 10  # ... where the reference's face is
    assert rigid_scale(L[:1])[0] == pytest.approx(rigid_scale(reference[None])[0], rel=0.02)


def test_bad_arguments_raise_input_errors(reference):
    driver = driver_along_path()
    with pytest.raises(InputError, match="mode"):
        retarget(driver, reference, (512, 512), mode="sideways")
    with pytest.raises(InputError, match="68, 2"):
        retarget(driver, reference[:10], (512, 512))
    with pytest.raises(InputError, match="outside"):
        retarget(driver, reference, (512, 512), neutral=500)
    lost = PoseSequence(driver.landmarks, scores=np.zeros((T, 68)), source="lost.parquet")
    with pytest.raises(InputError, match="lost.parquet"):
        retarget(lost, reference, (512, 512))


def test_unfilled_lost_frames_rest_on_the_reference(reference):
    driver = driver_along_path()
    lm, scores = driver.landmarks.copy(), driver.scores.copy()
    lm[10:13], scores[10:13] = 0, 0
    out = retarget(PoseSequence(lm, scores=scores), reference, (512, 512))
    assert np.isfinite(out.landmarks).all() and (out.scores[10:13] == 0).all()
    np.testing.assert_allclose(out.landmarks[10:13], np.broadcast_to(reference, (3, 68, 2)), atol=0.05)
