"""The parametric face model and the bundled pose presets made with it."""

from __future__ import annotations

import numpy as np
import pytest

from facepose.errors import InputError
from facepose import face_layout as layout
from facepose.pose import face_model as fm
from facepose.pose import presets

REQUIRED = ("idle", "nod", "head_shake", "look_around", "smile", "surprise", "calm_talk", "lively_talk", "lecture", "listen")


def _expr(**amps) -> np.ndarray:
    e = np.zeros((1, fm.N_EXPR))
    for k, v in amps.items():
        e[0, fm.EXPRESSIONS.index(k)] = v
    return e


def eye_openness(lm: np.ndarray) -> np.ndarray:
    """(..., 68, 2) -> (...,) mean lid gap over both eyes / inter-ocular distance."""
    gaps = [lm[..., lo, 1] - lm[..., up, 1] for up, lo in ((37, 41), (38, 40), (43, 47), (44, 46))]
    return np.mean(gaps, axis=0) / layout.inter_ocular(lm)


# -- face model ----------------------------------------------------------------------------------
def test_face_model_is_symmetric_with_closed_mouth_and_nose_forward():
    m = fm.MEAN_3D
    np.testing.assert_allclose(m[fm.MIRROR, 0], -m[:, 0], atol=1e-9)
    np.testing.assert_allclose(m[fm.MIRROR, 1:], m[:, 1:], atol=1e-9)
    assert layout.mouth_opening(m[:, :2]) < 0.01
    assert m[30, 2] == m[:, 2].max()  # the nose tip is nearest the camera
    assert m[0, 2] < m[36, 2] < m[39, 2]  # jaw angle behind the outer eye corner, behind the inner one


def test_expression_bases_do_what_their_names_say():
    base = fm.project(None, _expr(), scale=100)[0]
    jaw = fm.project(None, _expr(jaw_open=1.0), scale=100)[0]
    assert layout.mouth_opening(jaw) > 0.25 and jaw[8, 1] > base[8, 1] + 20  # mouth open, chin down
    width = lambda lm: lm[54, 0] - lm[48, 0]  # noqa: E731
    assert width(fm.project(None, _expr(lip_stretch=1.0), scale=100)[0]) > width(base) + 15
    assert width(fm.project(None, _expr(lip_pucker=1.0), scale=100)[0]) < width(base) - 15
    smile = fm.project(None, _expr(smile=1.0), scale=100)[0]
    assert smile[48, 1] < base[48, 1] - 5 and smile[54, 1] < base[54, 1] - 5  # corners up
    brow = fm.project(None, _expr(brow_raise=1.0), scale=100)[0]
    assert (brow[layout.BROWS, 1] < base[layout.BROWS, 1] - 8).all()
    left = fm.project(None, _expr(blink_left=1.0), scale=100)[0]
    lid = lambda lm, up, lo: lm[lo, 1] - lm[up, 1]  # noqa: E731
    assert lid(left, 43, 47) < 0.05 * lid(base, 43, 47)  # subject's left eye (image right) closed
    assert lid(left, 37, 41) == pytest.approx(lid(base, 37, 41))  # the other one open


def test_head_pose_fit_recovers_rotation_under_expressions():
    rng = np.random.default_rng(0)
    hp = rng.uniform(-25, 25, (50, 3))
    lm = fm.project(hp, rng.uniform(0, 1, (50, fm.N_EXPR)), scale=90, center=(300, 200))
    np.testing.assert_allclose(fm.estimate_head_pose(lm), hp, atol=0.05)
    yawed = fm.project(np.array([[20.0, 0, 0]]), None, scale=100, center=(0, 0))[0]
    assert yawed[30, 0] > yawed[27, 0] + 10  # yaw > 0 turns the nose toward image right


def test_reference_fit_reproduces_reference_and_closes_its_mouth(astronaut):
    from facepose.face.crop import crop_face

    ref = crop_face(astronaut).landmarks
    assert layout.mouth_opening(ref) > 0.1  # the astronaut smiles with her teeth showing
    face = fm.ReferenceFace.fit(ref)
    np.testing.assert_allclose(face.landmarks(), ref, atol=1e-3)
    closed = fm.ReferenceFace.fit(ref, close_mouth=True).landmarks()
    assert layout.mouth_opening(closed) < 0.005
    np.testing.assert_allclose(closed[17:48], ref[17:48], atol=1.0)  # eyes, brows, nose stay hers (the jaw rises)


# -- presets -------------------------------------------------------------------------------------
def test_at_least_ten_presets_are_listed_and_load_as_24fps_512_sequences():
    listed = presets.list_presets()
    names = [n for n, _, _ in listed]
    assert len(listed) >= 10 and set(REQUIRED) <= set(names)
    for name, description, seconds in listed:
        assert description and seconds > 0
        pose = presets.load_preset(name)
        assert (pose.fps, pose.width, pose.height) == (24.0, 512, 512)
        assert len(pose) == round(24 * seconds)
        assert pose.head_pose is not None and pose.head_pose.shape == (len(pose), 3)
        assert pose.source == f"preset:{name}"
        assert (presets.presets_dir() / f"{name}.parquet").is_file()


def test_presets_loop_without_a_jump():
    for name, _, _ in presets.list_presets():
        lm = presets.load_preset(name).landmarks.astype(np.float64)
        steps = np.linalg.norm(np.diff(lm, axis=0), axis=2).mean(1)  # mean point motion per frame
        seam = np.linalg.norm(lm[0] - lm[-1], axis=1).mean()
        assert seam <= np.median(steps), f"{name}: seam step {seam:.3f} px > typical {np.median(steps):.3f} px"


def test_preset_frame_zero_is_the_neutral_face():
    neutral = fm.project(None, None, scale=presets.MODEL_SCALE, center=presets.MODEL_CENTER)
    for name, _, _ in presets.list_presets():
        pose = presets.load_preset(name)
        np.testing.assert_allclose(pose.landmarks[0], neutral, atol=0.05, err_msg=name)
        np.testing.assert_allclose(pose.head_pose[0], 0, atol=1e-6)


def test_presets_move_as_described():
    nod = presets.load_preset("nod").head_pose
    shake = presets.load_preset("head_shake").head_pose
    assert np.ptp(nod[:, 1]) > 6 and np.ptp(nod[:, 0]) < 3  # pitch, little yaw
    assert np.ptp(shake[:, 0]) > 15 and np.ptp(shake[:, 1]) < 3  # yaw, little pitch
    talk = layout.mouth_opening(presets.load_preset("lively_talk").landmarks)
    listen = layout.mouth_opening(presets.load_preset("listen").landmarks)
    assert talk.max() > 0.15 and listen.max() < 0.02
    idle = presets.load_preset("idle")
    eyes = eye_openness(idle.landmarks)
    closed = np.flatnonzero(eyes < 0.3 * eyes[0])
    assert len(closed) >= 3  # natural blinks ...
    assert closed.min() >= 12 and closed.max() <= len(idle) - 12  # ... away from the loop seam


def test_bundled_files_match_the_generator(tmp_path):
    """The committed Parquet files are what scripts/make_presets.py makes from the code."""
    presets.write_presets(tmp_path)
    for name, _, _ in presets.list_presets():
        fresh = presets.PoseSequence.load(str(tmp_path / f"{name}.parquet"))
        bundled = presets.load_preset(name)
        np.testing.assert_allclose(bundled.landmarks, fresh.landmarks, atol=0.05, err_msg=f"rerun scripts/make_presets.py ({name})")
        np.testing.assert_allclose(bundled.head_pose, fresh.head_pose, atol=1e-4)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(InputError) as e:
        presets.load_preset("moonwalk")
    msg = str(e.value)
    assert "moonwalk" in msg and all(n in msg for n in REQUIRED)
    with pytest.raises(InputError):
        presets.preset_track("moonwalk")


def test_loaded_preset_is_a_copy():
    a = presets.load_preset("nod")
    a.landmarks[:] = 0
    assert presets.load_preset("nod").landmarks.any()
