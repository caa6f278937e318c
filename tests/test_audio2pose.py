"""Audio2Pose: exact length, a mouth that follows real speech, calm for silence, noise and music."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from facepose.errors import FaceposeError, MediaError, ModelNotFoundError
from facepose.pose import face_model as fm
from facepose.pose.audio2pose import Audio2PoseConfig, audio_features, audio_to_pose
from facepose.pose.sequence import PoseSequence

SR = 16000


@pytest.fixture(scope="module")
def reference(astronaut) -> np.ndarray:
    from facepose.face.crop import crop_face

    return crop_face(astronaut).landmarks


def loudness_envelope(path) -> np.ndarray:
    """RMS of each 1/24 s of the file at its own sample rate (computed apart from the model's front end)."""
    y, sr = sf.read(str(path), dtype="float32")
    y = y if y.ndim == 1 else y.mean(1)
    n = int(round(len(y) * 24 / sr))
    edges = np.round(np.arange(n + 1) * sr / 24).astype(int)
    return np.array([np.sqrt(np.mean(y[a:b] ** 2)) if b > a else 0.0 for a, b in zip(edges[:-1], edges[1:])])


def motion(pose: PoseSequence) -> float:
    """Mean point motion per frame in pixels."""
    return float(np.linalg.norm(np.diff(pose.landmarks, axis=0), axis=2).mean())


@pytest.mark.parametrize("seconds", [1.0, 2.51, 3.0208, 0.5])
def test_length_is_round_24_times_duration(seconds, reference):
    y = (0.01 * np.random.default_rng(0).standard_normal(int(round(seconds * SR)))).astype(np.float32)
    pose = audio_to_pose(y, reference)
    assert len(pose) == round(24 * seconds) == audio_features(y).frames
    assert pose.fps == 24.0 and (pose.width, pose.height) == (512, 512)
    assert pose.head_pose.shape == (len(pose), 3)


def test_seconds_trims_loops_or_pads_with_silence(speech_wav, reference):
    full = fm.mouth_opening(audio_to_pose(speech_wav, reference).landmarks)
    short = audio_to_pose(speech_wav, reference, seconds=1.25)
    assert len(short) == 30
    np.testing.assert_allclose(fm.mouth_opening(short.landmarks)[:24], full[:24], atol=0.03)
    looped = audio_to_pose(speech_wav, reference, seconds=8.0)  # the audio repeats, and so does the mouth
    assert len(looped) == 192 and looped.meta["audio"] == str(speech_wav)
    second = fm.mouth_opening(looped.landmarks)[len(full): 2 * len(full) - 2]
    assert np.corrcoef(second, full[: len(second)])[0, 1] > 0.9
    padded = audio_to_pose(speech_wav, reference, seconds=8.0, extend="silence")
    assert len(padded) == 192
    assert fm.mouth_opening(padded.landmarks[-48:]).max() < 0.005  # the recording ended: mouth at rest


def test_speech_drives_the_mouth_and_pauses_close_it(speech_wav, reference):
    pose = audio_to_pose(speech_wav, reference)
    env = loudness_envelope(speech_wav)
    assert len(pose) == len(env)
    mouth = fm.mouth_opening(pose.landmarks)
    r = np.corrcoef(mouth, env)[0, 1]
    assert r >= 0.6, f"mouth opening vs loudness r = {r:.2f}"
    db = 20 * np.log10(env + 1e-9)
    pause = db < db.max() - 40
    inner = pause & np.roll(pause, 2) & np.roll(pause, -2)  # pause frames not next to speech
    assert inner.sum() >= 12  # the fixture has two pauses of about half a second
    assert mouth[inner].max() < 0.01
    assert mouth[~pause].mean() > 0.1  # and it does open while speaking
    assert pose.meta["audio"] == str(speech_wav) and pose.meta["audio2pose"] == "signal"
    # Prosody moves the head a little, never wildly.
    assert 0.5 < np.ptp(pose.head_pose[:, 0]) + np.ptp(pose.head_pose[:, 1]) and np.abs(pose.head_pose).max() < 8.5


def test_silence_gives_a_closed_calm_mouth(reference):
    pose = audio_to_pose(np.zeros(3 * SR, np.float32), reference)
    assert len(pose) == 72
    assert fm.mouth_opening(pose.landmarks).max() < 0.005
    assert np.abs(pose.head_pose).max() < 2.5


def test_noise_and_music_give_small_motion(speech_wav, reference):
    speech = audio_to_pose(speech_wav, reference)
    t = np.arange(4 * SR) / SR
    noise = 0.3 * np.random.default_rng(1).standard_normal(len(t))
    chord = 0.2 * sum(np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0))  # C major, held
    for name, y in (("white noise", noise), ("chord", chord)):
        pose = audio_to_pose(y.astype(np.float32), reference)
        mouth = fm.mouth_opening(pose.landmarks)
        assert mouth.max() < 0.05, name
        assert motion(pose) < 0.25 * motion(speech), name
        assert np.abs(pose.head_pose).max() < 3.0, name


def test_audio_without_samples_or_unreadable_is_a_media_error(tmp_path, reference):
    with pytest.raises(MediaError):
        audio_to_pose(np.zeros(0, np.float32), reference)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), SR)
    with pytest.raises(MediaError, match="empty.wav"):
        audio_to_pose(str(empty), reference)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(MediaError, match="junk.wav"):
        audio_to_pose(str(junk), reference)


# -- learned model -------------------------------------------------------------------------------
def synthetic_pair(seed: int, seconds: float = 3.0):
    """A vowel-like buzz whose loudness follows a syllable envelope, and the face model opening its jaw
    with that envelope: (samples, landmarks PoseSequence, envelope per frame)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 24)
    env = np.clip(np.sin(2 * np.pi * rng.uniform(2, 4) * np.arange(n) / 24 + rng.uniform(0, 6)), 0, None)
    ts = np.arange(int(seconds * SR)) / SR
    y = np.interp(ts, (np.arange(n) + 0.5) / 24, env) * 0.3 * sum(np.sin(2 * np.pi * 140 * k * ts) / k for k in range(1, 8))
    expr = np.zeros((n, fm.N_EXPR))
    expr[:, fm.EXPRESSIONS.index("jaw_open")] = 0.7 * env
    lm = fm.project(np.zeros((n, 3)), expr, scale=80, center=(200, 150))
    return y.astype(np.float32), PoseSequence(lm, width=400, height=400), env


def test_learned_model_overfits_tiny_pairs_and_then_drives_the_mouth(tmp_path, reference):
    from facepose.pose.audio2pose_train import Audio2PoseTrainConfig, load_checkpoint_payload, train_audio2pose

    pairs = [synthetic_pair(i)[:2] for i in range(3)]
    cfg = Audio2PoseTrainConfig(output=str(tmp_path / "a2p.pt"), steps=60, batch_size=4, window=48, hidden=32,
                                lr=5e-3, threads=1, log_every=0)
    ckpt = train_audio2pose(pairs, cfg)
    history = load_checkpoint_payload(ckpt)["history"]
    assert len(history) == 60
    assert np.mean(history[-10:]) < 0.2 * np.mean(history[:10])  # the loss falls

    y, _, env = synthetic_pair(0)
    pose = audio_to_pose(y, reference, cfg=Audio2PoseConfig(checkpoint=ckpt))
    assert pose.meta["audio2pose"] == "learned" and len(pose) == 72
    mouth = fm.mouth_opening(pose.landmarks)
    assert np.corrcoef(mouth, env)[0, 1] > 0.8
    assert mouth.max() > 0.1


def test_missing_or_foreign_checkpoint_is_model_not_found(tmp_path, reference):
    y = np.zeros(SR, np.float32)
    with pytest.raises(ModelNotFoundError, match="nowhere.pt"):
        audio_to_pose(y, reference, cfg=Audio2PoseConfig(checkpoint=str(tmp_path / "nowhere.pt")))
    other = tmp_path / "other.pt"
    other.write_bytes(b"not a checkpoint")
    with pytest.raises(FaceposeError, match="other.pt"):
        audio_to_pose(y, reference, cfg=Audio2PoseConfig(checkpoint=str(other)))


def test_training_reads_pairs_from_a_curated_dataset(tmp_path):
    """The curated layout (poses/<video>.parquet with clip_id rows, clips/<video>/<clip>.mp4 with audio)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facepose.media.video import write_video
    from facepose.pose.audio2pose_train import Audio2PoseTrainConfig, curated_pairs, load_checkpoint_payload, train_audio2pose

    tables = []
    for k in range(2):
        y, pose, _ = synthetic_pair(k, seconds=2.0)
        clip_id = f"vid_{k:04d}"
        write_video(str(tmp_path / "clips" / "vid" / f"{clip_id}.mp4"), np.zeros((len(pose), 64, 64, 3), np.uint8), audio=y)
        tables.append(pose.to_table(extra={"clip_id": [clip_id] * len(pose)}))
    (tmp_path / "poses").mkdir()
    pq.write_table(pa.concat_tables(tables), tmp_path / "poses" / "vid.parquet")
    pairs = curated_pairs(str(tmp_path))
    assert [p[0].rsplit("/", 1)[-1] for p in pairs] == ["vid_0000.mp4", "vid_0001.mp4"]
    assert all(len(p[1]) == 48 for p in pairs)
    cfg = Audio2PoseTrainConfig(output=str(tmp_path / "a2p.pt"), steps=3, batch_size=2, window=24, hidden=8, threads=1, log_every=0)
    assert len(load_checkpoint_payload(train_audio2pose(pairs, cfg))["history"]) == 3
