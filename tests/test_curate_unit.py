"""The per-video curation unit (facepose.curate) on real face videos: the astronaut photo moved along a
known path, with real speech muxed in, cut against a shot without a face, shrunk, or blurred."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from facepose import curate as cu
from facepose import storage
from facepose.config import Config
from facepose.errors import InputError
from facepose.manifest import CurateJob
from facepose.media.video import probe_video, write_video
from facepose.pose.sequence import PoseSequence
from facepose.timeline import FPS
from tests.fixtures_batch import moving_face_frames, path_at, scenery_frames, speech_16k, write_face_video  # noqa: F401
from tests.synth import shot_clip



@pytest.fixture(scope="module")
def curator():
    return cu.Curator(Config())


# -- pieces ---------------------------------------------------------------------------------------
def test_shot_detector_separates_a_cut_from_motion(astronaut):
    c = Config().curate
    detect = cu.ShotDetector(c.shot_threshold, c.shot_min_frames, FPS)
    frames = list(moving_face_frames(astronaut, 1.0)) + scenery_frames(0.5)
    cuts = [i for i, f in enumerate(frames) if detect(f)]
    assert cuts == [FPS]
    with pytest.raises(InputError, match="shot_threshold"):
        cu.ShotDetector(0.0, c.shot_min_frames, FPS)


def test_shot_detector_finds_hard_cuts_fades_and_dissolves():
    """Six real photos, slowly panning with noise; three hard cuts, a 12-frame fade to black and back,
    a 12-frame cross-dissolve. One cut per transition, none inside a shot (bench/bench_shots.py)."""
    clip = shot_clip((320, 180))
    c = Config().curate
    detect = cu.ShotDetector(c.shot_threshold, c.shot_min_frames, clip.fps)
    cuts = [i for i, f in enumerate(clip.frames) if detect(f)]
    precision, recall = clip.score(cuts)
    assert precision >= 0.9 and recall >= 0.9, (cuts, clip.cuts, clip.gradual)
    # the score can fail: a cut on every frame, or none
    assert clip.score(list(range(len(clip.frames))))[0] < 0.1
    assert clip.score([]) == (1.0, 0.0)


def test_shots_split_into_nearly_equal_clips_of_bounded_length():
    scan = cu.Scan(np.zeros((250, 68, 2), np.float32), np.ones(250, bool), np.ones(250), np.ones(250), [0, 10, 100], 64, 64)
    clips = cu.split_clips(scan, "v", FPS, max_clip_s=2.0)
    spans = [(c.start, c.end) for c in clips]
    assert spans[0] == (0, 10) and spans[1] == (10, 55) and spans[2] == (55, 100)
    assert spans[-1][1] == 250 and all(e - s <= 48 for s, e in spans)
    assert [c.clip_id for c in clips[:2]] == ["v_0000", "v_0001"]


@pytest.mark.parametrize(
    "seen,size,sharp,frames,reason",
    [
        (1.0, 100, 200, 12, "too_short"),
        (0.5, 100, 200, 48, "face_missing"),
        (1.0, 30, 200, 48, "face_too_small"),
        (1.0, 100, 5, 48, "too_blurry"),
        (1.0, 100, 200, 48, None),
    ],
)
def test_quality_filters_record_the_reason(seen, size, sharp, frames, reason):
    n = frames
    mask = np.arange(n) < round(seen * n)
    scan = cu.Scan(np.zeros((n, 68, 2), np.float32), mask, np.where(mask, size, np.nan), np.where(mask, sharp, np.nan), [0], 256, 256)
    clip = cu.judge(cu.Clip("c", 0, n), scan, Config().curate, FPS)
    assert clip.reason == reason
    assert math.isclose(clip.missing, 1 - mask.mean())


def test_blur_lowers_face_sharpness(astronaut):
    import cv2

    lm_box = np.array([[175, 80], [270, 175]], np.float32)
    sharp = cu.face_sharpness(astronaut, lm_box)
    blurred = cu.face_sharpness(cv2.GaussianBlur(astronaut, (0, 0), 3), lm_box)
    assert blurred < Config().curate.min_sharpness < sharp


def test_audio_features_line_up_with_the_frames():
    sr = 16000
    y = np.zeros(sr * 2, np.float32)
    t = np.arange(sr // 4) / sr
    y[sr // 2 : sr // 2 + sr // 4] = 0.5 * np.sin(2 * np.pi * 440 * t)  # a tone from 0.5 s to 0.75 s
    mel, rms = cu.audio_features(y, 48, FPS, sr, 80)
    assert mel.shape == (48, 80) and rms.shape == (48,)
    loud = np.flatnonzero(rms > 0.1)
    assert loud.min() == 12 and loud.max() == 17  # frames 12..17 cover [0.5, 0.75) s at 24 fps
    assert mel[14].max() > mel[5].max() + 5  # log-mel rises with the tone
    none_mel, none_rms = cu.audio_features(None, 48, FPS, sr, 80)
    assert not none_mel.any() and not none_rms.any()


# -- whole videos ---------------------------------------------------------------------------------
def test_curates_a_talking_face_video_into_the_dataset_layout(tmp_path, astronaut, speech_16k, curator):
    video = write_face_video(tmp_path / "talk.mp4", astronaut, seconds=2.0, audio=speech_16k)
    out = str(tmp_path / "ds")
    outcome = curator(CurateJob("talk", video), out)
    r = outcome.result
    assert r["status"] == "ok", r["error"]
    assert (r["clips"], r["kept"], r["frames"]) == (1, 1, 48)
    clip = outcome.clips[0]
    assert clip["status"] == "ok" and clip["has_audio"] and clip["face_px"] > 64
    # the clip: 512x512, 24 fps, the whole 2 s, with its audio
    info = probe_video(clip["clip"])
    assert (info.width, info.height, info.frames, info.has_audio) == (512, 512, 48, True)
    assert clip["clip"] == f"{out}/clips/talk/talk_0000.mp4"
    # poses: crop-pixel landmarks that follow the known path (the crop box is held steady)
    table = pq.read_table(f"{out}/poses/talk.parquet")
    assert set(table.column("clip_id").to_pylist()) == {"talk_0000"}
    pose = PoseSequence.from_table(table)
    assert len(pose) == 48 and (pose.width, pose.height) == (512, 512) and pose.visible.all()
    centre = pose.landmarks.mean(axis=1)  # (T, 2)
    side = clip["crop_box"][2]
    expected = np.array([path_at(i / FPS, 2.0, 0.06)[:2] for i in range(48)]) * 256 * 512 / side
    moved, want = centre - centre.mean(axis=0), expected - expected.mean(axis=0)
    assert np.abs(moved - want).max() < 12  # pixels of the 512 crop
    # Face Locator boxes hold the landmarks
    bbox = np.array(table.column("bbox").to_pylist())
    lm = pose.landmarks
    assert (bbox[:, 0] <= lm[:, :, 0].min(axis=1)).all() and (bbox[:, 2] >= lm[:, :, 0].max(axis=1)).all()
    # audio features: one row per frame, louder where the speech is
    audio = pq.read_table(f"{out}/audio/talk.parquet")
    assert audio.num_rows == 48 and all(audio.column("has_audio").to_pylist())
    rms = np.array(audio.column("rms").to_pylist())
    assert rms.max() > 0.02 and rms.min() < rms.max() / 5
    # the done marker vouches for the rest
    marker = json.loads(storage.read_text(f"{out}/_done/talk.json"))
    assert marker["status"] == "ok" and marker["input_digest"] == r["input_digest"]
    assert pq.read_table(f"{out}/index/talk.parquet").num_rows == 1


def test_a_shot_cut_splits_clips_and_the_faceless_shot_is_dropped(tmp_path, astronaut, curator):
    frames = list(moving_face_frames(astronaut, 1.5)) + scenery_frames(1.25)
    video = str(tmp_path / "cut.mp4")
    write_video(video, frames, fps=FPS)
    outcome = curator(CurateJob("cut", video), str(tmp_path / "ds"))
    assert outcome.result["status"] == "ok", outcome.result["error"]
    by_status = [(c["start_frame"], c["end_frame"], c["status"], c["reason"]) for c in outcome.clips]
    assert by_status == [(0, 36, "ok", None), (36, 66, "dropped", "face_missing")]
    assert json.loads(outcome.result["dropped"]) == {"face_missing": 1}
    assert not storage.exists(str(tmp_path / "ds/clips/cut/cut_0001.mp4"))


@pytest.mark.parametrize("kwargs,reason", [({"zoom": 0.4}, "face_too_small"), ({"blur": 3.0}, "too_blurry")])
def test_poor_faces_are_dropped_with_the_reason(tmp_path, astronaut, curator, kwargs, reason):
    video = write_face_video(tmp_path / "poor.mp4", astronaut, seconds=1.25, **kwargs)
    outcome = curator(CurateJob("poor", video), str(tmp_path / "ds"))
    assert outcome.result["status"] == "ok" and outcome.result["kept"] == 0
    assert [c["reason"] for c in outcome.clips] == [reason]
    assert not storage.exists(str(tmp_path / "ds/poses/poor.parquet"))
    assert storage.exists(str(tmp_path / "ds/_done/poor.json"))


def test_a_time_range_curates_only_that_part(tmp_path, astronaut, curator):
    video = write_face_video(tmp_path / "long.mp4", astronaut, seconds=3.0)
    outcome = curator(CurateJob("part", video, start=0.5, end=2.0), str(tmp_path / "ds"))
    assert outcome.result["frames"] == 36
    clip = outcome.clips[0]
    assert clip["start_s"] == 0.5 and clip["end_s"] == 2.0 and not clip["has_audio"]
    audio = pq.read_table(str(tmp_path / "ds/audio/part.parquet"))
    assert not any(audio.column("has_audio").to_pylist()) and not any(audio.column("rms").to_pylist())


def test_a_corrupt_video_is_an_error_row_and_leaves_no_marker(tmp_path, curator):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    outcome = curator(CurateJob("bad", str(bad)), str(tmp_path / "ds"))
    r = outcome.result
    assert r["status"] == "error" and r["error_kind"] == "media" and "bad.mp4" in r["error"]
    assert not storage.exists(str(tmp_path / "ds/_done/bad.json"))


def test_curates_from_s3_and_writes_back_to_s3(s3, tmp_path, astronaut, speech_16k, curator):
    local = write_face_video(tmp_path / "v.mp4", astronaut, seconds=1.25, audio=speech_16k)
    storage.upload(local, f"{s3}/videos/v.mp4")
    outcome = curator(CurateJob("v", f"{s3}/videos/v.mp4"), f"{s3}/ds")
    assert outcome.result["status"] == "ok" and outcome.result["kept"] == 1
    listed = list(storage.listdir(f"{s3}/ds"))
    assert listed == sorted([f"{s3}/ds/_done/v.json", f"{s3}/ds/audio/v.parquet", f"{s3}/ds/clips/v/v_0000.mp4",
                             f"{s3}/ds/index/v.parquet", f"{s3}/ds/poses/v.parquet"])


def test_recurating_a_video_replaces_its_earlier_outputs(tmp_path, astronaut, curator):
    out = str(tmp_path / "ds")
    sharp = write_face_video(tmp_path / "a.mp4", astronaut, seconds=1.25)
    first = curator(CurateJob("same", sharp), out)
    assert first.result["kept"] == 1 and storage.exists(f"{out}/poses/same.parquet")
    blurred = write_face_video(tmp_path / "b.mp4", astronaut, seconds=1.25, blur=3.0)
    second = curator(CurateJob("same", blurred), out)
    assert second.result["kept"] == 0 and second.result["input_digest"] != first.result["input_digest"]
    assert not storage.exists(f"{out}/poses/same.parquet") and not storage.exists(f"{out}/clips/same/same_0000.mp4")
    assert json.loads(storage.read_text(f"{out}/_done/same.json"))["input_digest"] == second.result["input_digest"]
