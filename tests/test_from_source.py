"""from_source: presets, driving videos, speech and pose files to a pose for the reference, exactly as long as asked."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import soundfile as sf

from facepose.errors import FaceposeError, InputError, NoFaceError
from facepose import face_layout as layout
from facepose.pose.presets import load_preset
from facepose.pose.retarget import decompose
from facepose.pose.source import fill_lost, from_source, source_kind
from facepose.pose.sequence import PoseSequence

FACE = (221.0, 122.0)  # the astronaut's face centre in the photo
W, H = 640, 360  # a landscape driving video
N = 48  # 2 s at 24 fps
ROLL = 8.0 * np.sin(2 * np.pi * np.arange(N) / 48.0)  # the known head roll path, degrees (clockwise +)
SHIFT = 30.0 * np.sin(2 * np.pi * np.arange(N) / 24.0)  # and sideways shift, pixels
LOST = (20, 21, 22)  # frames where the face is hidden


@pytest.fixture(scope="module")
def crop(astronaut):
    from facepose.face.crop import crop_face

    return crop_face(astronaut)


def drive_frames(photo: np.ndarray, n: int = N, hide=LOST) -> np.ndarray:
    """The photo rolled along ROLL and shifted along SHIFT about the face, placed in a W x H frame."""
    frames = []
    for i in range(n):
        m = cv2.getRotationMatrix2D(FACE, -float(ROLL[i % N]), 1.0)  # OpenCV angles are counter-clockwise
        m[:, 2] += (W / 2 - FACE[0] + SHIFT[i % N], H / 2 - FACE[1])
        f = cv2.warpAffine(photo, m, (W, H), borderMode=cv2.BORDER_REPLICATE)
        if i in hide:
            f[:] = 128  # the face is gone for a moment
        frames.append(f)
    return np.stack(frames)


@pytest.fixture(scope="module")
def driving_video(astronaut, speech_wav, tmp_path_factory) -> str:
    from facepose.media.audio import load_audio
    from facepose.media.video import write_video

    path = str(tmp_path_factory.mktemp("drive") / "drive.mp4")
    audio = load_audio(str(speech_wav))[: 2 * 16000]
    write_video(path, drive_frames(astronaut), fps=24, audio=audio)
    return path


# -- kinds and errors --------------------------------------------------------------------------------
def test_source_kind_by_extension_prefix_or_override():
    assert source_kind("preset:idle") == "preset"
    assert source_kind("s3://b/clips/a.MP4") == "video"
    assert source_kind("talk.wav") == "audio" and source_kind("talk.m4a") == "audio"
    assert source_kind("poses/x.parquet") == "pose"
    assert source_kind("blob.bin", kind="pose") == "pose"
    with pytest.raises(InputError, match="clip.xyz"):
        source_kind("clip.xyz")
    with pytest.raises(InputError, match="hologram"):
        source_kind("a.mp4", kind="hologram")


def test_bad_sources_are_clear_facepose_errors(crop, tmp_path):
    with pytest.raises(InputError) as e:
        from_source("preset:moonwalk", crop)
    assert "moonwalk" in str(e.value) and "lively_talk" in str(e.value)
    with pytest.raises(InputError, match=r"\.xyz"):
        from_source(str(tmp_path / "clip.xyz"), crop)
    with pytest.raises(FaceposeError, match="missing.mp4"):
        from_source(str(tmp_path / "missing.mp4"), crop)
    with pytest.raises(InputError, match="seconds"):
        from_source("preset:idle", crop, seconds=0)


# -- presets -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds", [None, 0.5, 2.51, 13.0])
def test_preset_gives_exactly_the_frames_asked_for(crop, seconds):
    pose = from_source("preset:calm_talk", crop, seconds=seconds)
    assert len(pose) == (240 if seconds is None else round(24 * seconds))
    assert (pose.width, pose.height, pose.fps) == (512, 512, 24.0)
    np.testing.assert_allclose(pose.landmarks[0], crop.landmarks, atol=0.05)  # rests on her own face
    assert pose.meta["driver_type"] == "preset" and "audio" not in pose.meta
    if seconds == 13.0:  # looped: the second pass repeats the first
        np.testing.assert_array_equal(pose.landmarks[240:], pose.landmarks[:72])


def test_non_square_reference_is_cropped_not_squashed(astronaut, tmp_path):
    from PIL import Image

    wide = np.full((512, 900, 3), 90, np.uint8)
    wide[:, 194:706] = astronaut
    tall = np.full((800, 512, 3), 90, np.uint8)
    tall[:512] = astronaut
    path = tmp_path / "wide.jpg"
    Image.fromarray(wide).save(path, quality=97)
    square = from_source("preset:nod", astronaut)
    shape = lambda lm: layout.inter_ocular(lm) / layout.face_width(lm)  # noqa: E731
    for ref in (str(path), tall):
        pose = from_source("preset:nod", ref)
        assert (pose.width, pose.height) == (512, 512)
        np.testing.assert_allclose(shape(pose.landmarks), shape(square.landmarks), rtol=0.03)
        aspect = lambda lm: np.ptp(lm[..., 1], -1) / np.ptp(lm[..., 0], -1)  # noqa: E731
        np.testing.assert_allclose(aspect(pose.landmarks), aspect(square.landmarks), rtol=0.03)
        # The same face at the same place (dlib's fit varies a few pixels with the detection box).
        np.testing.assert_allclose(pose.landmarks, square.landmarks, atol=8.0)


# -- audio -------------------------------------------------------------------------------------------
def test_audio_source_is_as_long_as_the_audio_and_carries_it(crop, speech_wav):
    duration = sf.info(str(speech_wav)).duration
    pose = from_source(str(speech_wav), crop)
    assert len(pose) == round(24 * duration)
    assert pose.meta["audio"] == str(speech_wav) and pose.meta["driver_type"] == "audio"
    assert len(from_source(str(speech_wav), crop, seconds=3)) == 72


# -- pose files --------------------------------------------------------------------------------------
def test_pose_file_is_resampled_filled_and_retargeted(crop, tmp_path):
    preset = load_preset("nod")
    lost = preset.scores.copy()
    lost[40:44] = 0
    at30 = PoseSequence(preset.landmarks, scores=lost, head_pose=None, source="nod").resample(30.0)
    path = tmp_path / "nod30.parquet"
    at30.save(str(path))
    pose = from_source(str(path), crop)
    assert len(pose) == len(preset) and pose.fps == 24.0
    assert pose.visible.all() and pose.head_pose is not None
    np.testing.assert_allclose(pose.landmarks[0], crop.landmarks, atol=0.05)
    shutil.copy(path, tmp_path / "nod.bin")
    again = from_source(str(tmp_path / "nod.bin"), crop, kind="pose", seconds=1)
    np.testing.assert_allclose(again.landmarks, pose.landmarks[:24], atol=1e-4)


def test_fill_lost_interpolates_between_seen_frames():
    lm = np.zeros((5, 68, 2), np.float32)
    lm[0], lm[4] = 10, 50
    scores = np.zeros((5, 68), np.float32)
    scores[[0, 4]] = 1
    out = fill_lost(PoseSequence(lm, scores=scores, source="x"))
    np.testing.assert_allclose(out.landmarks[:, 0, 0], [10, 20, 30, 40, 50])
    assert out.visible.all() and (out.scores[1:4] == 0.5).all()
    with pytest.raises(NoFaceError, match="gone.mp4"):
        fill_lost(PoseSequence(lm, scores=np.zeros((5, 68)), source="gone.mp4"))


# -- videos ------------------------------------------------------------------------------------------
def test_landscape_video_drives_the_reference_along_its_path(crop, driving_video):
    pose = from_source(driving_video, crop)
    assert len(pose) == N and (pose.width, pose.height, pose.fps) == (512, 512, 24.0)
    assert pose.meta["driver_type"] == "video" and pose.meta["audio"] == driving_video
    lost = np.array(LOST)
    assert (pose.scores[lost] == 0.5).all() and (np.delete(pose.scores, lost, axis=0) == 1).all()
    motion = decompose(pose.landmarks, crop.landmarks)
    seen = np.setdiff1d(np.arange(N), lost)
    # The head rolls as the driver's did (tracking noise and smoothing allow a degree or two).
    assert np.corrcoef(motion.roll[seen], ROLL[seen])[0, 1] > 0.97
    assert np.abs(motion.roll[seen] - ROLL[seen]).max() < 2.5
    # Identity stays hers; the hidden frames are bridged without a jump.
    np.testing.assert_allclose(layout.inter_ocular(pose.landmarks), layout.inter_ocular(crop.landmarks), rtol=0.04)
    steps = np.linalg.norm(np.diff(pose.landmarks, axis=0), axis=2).mean(1)
    assert steps[lost[0] - 1: lost[-1] + 1].max() < 3 * np.median(steps) + 1.0
    assert np.abs(pose.head_pose[:, 2] - (pose.head_pose[0, 2] + ROLL)).max() < 4.0


def test_video_seconds_trims_or_loops(crop, driving_video):
    assert len(from_source(driving_video, crop, seconds=1.0)) == 24
    looped = from_source(driving_video, crop, seconds=3.0)
    assert len(looped) == 72
    np.testing.assert_array_equal(looped.landmarks[N:], looped.landmarks[: 72 - N])


def test_video_without_a_face_names_the_video(crop, tmp_path, astronaut):
    from facepose.media.video import write_video

    blank = str(tmp_path / "blank.mp4")
    write_video(blank, np.full((6, 240, 320, 3), 100, np.uint8), fps=24)
    with pytest.raises(NoFaceError, match="blank.mp4"):
        from_source(blank, crop)
    mostly = str(tmp_path / "mostly_gone.mp4")
    write_video(mostly, drive_frames(astronaut, n=10, hide=range(2, 10)), fps=24)  # a face in 2 of 10
    with pytest.raises(NoFaceError, match="mostly_gone.mp4"):
        from_source(mostly, crop)
