"""Video tracking and smoothing, on driving videos made by moving a real face along a known path
(tests/support/synth.py), encoded to H.264 and decoded again as a user's video would be."""

from __future__ import annotations

import numpy as np
import pytest

from facepose.config import FaceConfig, SmoothingConfig
from facepose.errors import NoFaceError
from facepose.face import FaceDetector, FaceTracker, LandmarkPredictor, track_video
from facepose.pose.smooth import OneEuroFilter, smooth_landmarks
from tests.support.synth import astronaut, driving_video, write_driving_video

N = 72  # 3 s at 24 fps


@pytest.fixture(scope="module")
def photo_landmarks() -> np.ndarray:
    photo = astronaut()
    return LandmarkPredictor().predict(photo, FaceDetector().detect_one(photo, "astronaut"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    video = driving_video(N)
    return video, write_driving_video(str(tmp_path_factory.mktemp("drive") / "clean.mp4"), video)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    video = driving_video(N, noise=1.0, seed=0)
    return video, write_driving_video(str(tmp_path_factory.mktemp("drive") / "noisy.mp4"), video)


def unsmoothed() -> FaceConfig:
    return FaceConfig(smoothing=SmoothingConfig(enabled=False))


def errors(landmarks: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(T, 68, 2) x2 -> (T, 68) distances in pixels."""
    return np.linalg.norm(landmarks - truth, axis=-1)


def jitter(landmarks: np.ndarray) -> float:
    """Mean size of the frame-to-frame second difference (acceleration), pixels."""
    return float(np.linalg.norm(np.diff(landmarks, 2, axis=0), axis=-1).mean())


def lag_frames(track: np.ndarray, truth: np.ndarray, max_lag: float = 4.0, edge: int = 6) -> float:
    """The shift (frames, positive = late) that best aligns ``track`` with ``truth``: the peak of their
    cross-correlation over all 136 coordinates, at 0.05-frame steps (``truth`` interpolated)."""
    t = np.arange(len(track))
    win = t[edge:-edge]
    x = track.reshape(len(t), -1)[win]
    x = x - x.mean(axis=0)
    g_all = truth.reshape(len(t), -1)
    best = (-np.inf, 0.0)
    for tau in np.arange(-max_lag, max_lag + 1e-9, 0.05):
        g = np.stack([np.interp(win - tau, t, g_all[:, k]) for k in range(g_all.shape[1])], axis=1)
        g = g - g.mean(axis=0)
        corr = float((x * g).sum() / np.sqrt((x * x).sum() * (g * g).sum()))
        best = max(best, (corr, float(tau)))
    return best[1]


# -- tracking --------------------------------------------------------------------------------------
def test_tracked_landmarks_follow_the_known_path_through_mp4(clean, photo_landmarks):
    video, uri = clean
    calls = []
    pose = track_video(uri, unsmoothed(), fps=24.0, progress=lambda done, total: calls.append((done, total)))
    assert len(pose) == N and (pose.width, pose.height) == (512, 512) and pose.fps == 24.0
    assert (pose.scores == 1).all()
    err = errors(pose.landmarks, video.truth(photo_landmarks))
    # measured: 0.7 px mean, 0.9 px in the worst frame (dlib gives whole pixels)
    assert err.mean() < 1.5
    assert err.mean(axis=1).max() < 3.0
    assert calls[-1] == (N, N)
    smoothed = track_video(uri, FaceConfig())
    assert errors(smoothed.landmarks, video.truth(photo_landmarks)).mean() < 1.5


def test_tracker_detects_rarely_and_fits_landmarks_every_frame(clean, photo_landmarks):
    video, _ = clean
    tracker = FaceTracker(FaceConfig(detect_every=12))
    out = list(tracker.track(video.frames[None]))  # one chunk of all frames, as iter_frames yields
    assert len(out) == N and all(lm is not None for lm in out)
    assert tracker.stats.detections == 1  # the first frame only
    assert 5 <= tracker.stats.near_detections <= N // 12 + 2
    assert errors(np.stack(out), video.truth(photo_landmarks)).mean() < 1.5


def test_tracker_holds_on_through_per_frame_jitter(photo_landmarks):
    # twice the jitter of the noisy video (3 px, 0.8 degrees a frame): the fit must not slide off the face
    video = driving_video(N, noise=2.0, seed=0)
    tracker = FaceTracker(FaceConfig())
    out = np.stack(list(tracker.track(video.frames)))
    err = errors(out, video.truth(photo_landmarks))
    assert err.mean() < 1.5 and err.mean(axis=1).max() < 3.0  # measured 0.7 and 0.9


def test_lost_face_gives_zero_scores_and_is_found_again_next_frame(tmp_path, photo_landmarks):
    from skimage import data

    video = driving_video(48)
    scene = np.ascontiguousarray(data.coffee()[:400, :512])
    scene = np.pad(scene, ((56, 56), (0, 0), (0, 0)), mode="edge")
    frames = video.frames.copy()
    frames[20:26] = scene  # a cut to a scene without a face, and back
    video.frames = frames
    uri = write_driving_video(str(tmp_path / "cut.mp4"), video)
    pose = track_video(uri, FaceConfig())
    seen = pose.visible
    assert not seen[20:26].any()
    assert seen[:20].all() and seen[26:].all()
    assert (pose.landmarks[20:26] == 0).all()
    err = errors(pose.landmarks, video.truth(photo_landmarks))
    assert err[seen].mean() < 1.5 and err[26].mean() < 3.0


def test_video_without_a_face_raises_no_face_error_naming_it(tmp_path):
    from facepose.media.video import write_video

    uri = str(tmp_path / "empty-room.mp4")
    write_video(uri, np.full((12, 128, 160, 3), 100, np.uint8))
    with pytest.raises(NoFaceError, match=r"empty-room\.mp4"):
        track_video(uri, FaceConfig())


# -- smoothing -------------------------------------------------------------------------------------
def test_smoothing_lowers_jitter_without_lagging_the_path(noisy, photo_landmarks):
    video, uri = noisy
    raw = track_video(uri, unsmoothed()).landmarks
    smooth = track_video(uri, FaceConfig()).landmarks
    path = video.truth(photo_landmarks, smooth=True)
    # measured: jitter 5.4 -> 1.0 px; lag -0.1 frames; error from the smooth path 2.3 -> 1.5 px
    assert jitter(raw) > 3 * jitter(smooth)
    assert abs(lag_frames(smooth, path)) <= 1.0
    assert errors(smooth, path).mean() < errors(raw, path).mean()


def test_lag_measure_sees_the_lag_of_a_heavy_causal_filter(noisy, photo_landmarks):
    # the lag assertion above can fail: a strong one-way filter lags the same video by frames
    video, uri = noisy
    raw = track_video(uri, unsmoothed()).landmarks
    heavy = smooth_landmarks(raw, 24.0, SmoothingConfig(min_cutoff=0.5, beta=0.0), zero_phase=False)
    assert lag_frames(heavy, video.truth(photo_landmarks, smooth=True)) > 2.0


def test_one_euro_filter_follows_time_not_sample_count():
    # a unit step through a filter at rest (beta=0): after 0.2 s, 1 - exp(-t / tau), whatever the spacing
    tau = 1 / (2 * np.pi * 1.0)
    rng = np.random.default_rng(0)
    for times in (np.arange(0, 0.2001, 1 / 25), np.arange(0, 0.2001, 1 / 200), np.cumsum(rng.uniform(0.004, 0.04, 12))):
        f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
        f(np.zeros(2), times[0] - 0.01)
        out = [f(np.ones(2), t) for t in times]
        elapsed = times[-1] - times[0] + 0.01
        assert out[-1][0] == pytest.approx(1 - np.exp(-elapsed / tau), abs=0.08)


def test_one_euro_filter_lags_less_on_fast_motion_with_beta():
    t = np.arange(48) / 24.0
    ramp = 200.0 * t  # 200 px/s
    lags = {}
    for beta in (0.0, 0.05):
        f = OneEuroFilter(min_cutoff=1.0, beta=beta)
        out = np.array([f(np.array([x]), s)[0] for x, s in zip(ramp, t)])
        lags[beta] = (ramp - out)[-1] / 200.0 * 24  # frames behind at the end
    assert lags[0.05] < 0.5 * lags[0.0]


def test_smooth_landmarks_skips_lost_frames_and_restarts_after_them():
    rng = np.random.default_rng(1)
    lm = np.full((30, 68, 2), 100.0, np.float32) + rng.normal(0, 1, (30, 68, 2)).astype(np.float32)
    lm[15:] += 200  # the face comes back elsewhere
    lm[10:15] = 0  # lost
    out = smooth_landmarks(lm, 24.0, SmoothingConfig())
    assert (out[10:15] == 0).all()
    # no pull towards the old place across the gap, and the jitter is smaller on both sides
    assert np.abs(out[15:].mean() - lm[15:].mean()) < 0.5 and np.abs(out[:10].mean() - lm[:10].mean()) < 0.5
    assert jitter(out[:10]) < jitter(lm[:10]) and jitter(out[15:]) < jitter(lm[15:])
    off = smooth_landmarks(lm, 24.0, SmoothingConfig(enabled=False))
    np.testing.assert_array_equal(off, lm)


def test_smooth_landmarks_uses_given_timestamps():
    # the same motion sampled unevenly: smoothing with the true times tracks it better than assuming 24 fps
    rng = np.random.default_rng(2)
    times = np.cumsum(rng.uniform(0.01, 0.08, 60))
    truth = 80 * np.sin(2 * np.pi * 0.5 * times)
    lm = np.repeat(truth[:, None, None], 68, axis=1).repeat(2, axis=2).astype(np.float32) + 200
    with_t = smooth_landmarks(lm, 24.0, SmoothingConfig(), times=times)
    without = smooth_landmarks(lm, 24.0, SmoothingConfig())
    assert np.abs(with_t - lm).mean() < np.abs(without - lm).mean()


def test_track_video_reads_s3_and_names_the_uri_in_errors(clean, s3, photo_landmarks):
    from pathlib import Path

    from facepose import storage
    from facepose.errors import MediaError

    video, uri = clean
    storage.write_bytes(f"{s3}/drive/clean.mp4", Path(uri).read_bytes())
    pose = track_video(f"{s3}/drive/clean.mp4", unsmoothed(), progress=lambda done, total: None)
    assert len(pose) == N and pose.source == f"{s3}/drive/clean.mp4"
    assert errors(pose.landmarks, video.truth(photo_landmarks)).mean() < 1.5
    storage.write_bytes(f"{s3}/drive/notes.mp4", b"these are not video bytes" * 40)
    with pytest.raises(MediaError, match=rf"{s3}/drive/notes\.mp4"):
        track_video(f"{s3}/drive/notes.mp4", FaceConfig())
