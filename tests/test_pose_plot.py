"""plot_pose: a PNG of mouth opening and head yaw/pitch/roll over time."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from facepose import storage
from facepose import face_layout as layout
from facepose.pose.plot import plot_pose, pose_curves
from facepose.pose.presets import load_preset
from facepose.pose.sequence import PoseSequence


def test_plot_is_a_png_of_the_sequence(tmp_path):
    pose = load_preset("lively_talk")
    out = tmp_path / "plot.png"
    plot_pose(pose, str(out))
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (1000, 550)
    pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    red = ((pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)).mean()
    assert red > 0.002  # the mouth curve is drawn


def test_curves_follow_the_head_pose_and_mouth():
    pose = load_preset("look_around")
    given = pose_curves(pose)
    assert not given.estimated
    np.testing.assert_allclose(given.head_pose, pose.head_pose, atol=1e-5)
    np.testing.assert_allclose(given.t[-1], (len(pose) - 1) / 24)
    # Without a head_pose column the pose is fitted from the landmarks (relative to frame 0).
    fitted = pose_curves(PoseSequence(pose.landmarks, source="look_around"))
    assert fitted.estimated
    for i in range(3):
        assert np.corrcoef(fitted.head_pose[:, i], pose.head_pose[:, i])[0, 1] > 0.95
    np.testing.assert_allclose(fitted.head_pose[:, 0], pose.head_pose[:, 0], atol=2.0)
    talk = load_preset("calm_talk")
    np.testing.assert_allclose(pose_curves(talk).mouth, layout.mouth_opening(talk.landmarks))


def test_plot_from_a_pose_file_to_s3(s3, tmp_path):
    path = tmp_path / "nod.parquet"
    nod = load_preset("nod")
    PoseSequence(nod.landmarks, scores=np.where(np.arange(len(nod))[:, None] < 10, 0.0, 1.0) * np.ones((1, 68)),
                 source="nod").save(str(path))  # no head_pose, 10 lost frames
    uri = f"{s3}/plots/nod.png"
    plot_pose(str(path), uri)
    assert Image.open(io.BytesIO(storage.read_bytes(uri))).format == "PNG"
