"""Audio2Pose: exact length, a mouth that follows real speech, calm for silence, noise and music."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from facepose import face_layout as layout
from facepose.config import Audio2PoseConfig
from facepose.errors import FaceposeError, MediaError, ModelNotFoundError
from facepose.pose import face_model as fm
from facepose.pose.audio2pose import audio_features, audio_to_pose
from facepose.pose.sequence import PoseSequence
from facepose.timeline import SAMPLE_RATE as SR


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
    full = layout.mouth_opening(audio_to_pose(speech_wav, reference).landmarks)
    short = audio_to_pose(speech_wav, reference, seconds=1.25)
    assert len(short) == 30
    np.testing.assert_allclose(layout.mouth_opening(short.landmarks)[:24], full[:24], atol=0.03)
    looped = audio_to_pose(speech_wav, reference, seconds=8.0)  # the audio repeats, and so does the mouth
    assert len(looped) == 192 and looped.meta["audio"] == str(speech_wav)
    second = layout.mouth_opening(looped.landmarks)[len(full): 2 * len(full) - 2]
    assert np.corrcoef(second, full[: len(second)])[0, 1] > 0.9
    padded = audio_to_pose(speech_wav, reference, seconds=8.0, extend="silence")
    assert len(padded) == 192
    assert layout.mouth_opening(padded.landmarks[-48:]).max() < 0.005  # the recording ended: mouth at rest


def test_speech_drives_the_mouth_and_pauses_close_it(speech_wav, reference):
    pose = audio_to_pose(speech_wav, reference)
    env = loudness_envelope(speech_wav)
    assert len(pose) == len(env)
    mouth = layout.mouth_opening(pose.landmarks)
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
    assert np.ptp(pose.head_pose[:, 0]) + np.ptp(pose.head_pose[:, 1]) > 0.5 and np.abs(pose.head_pose).max() < 8.5


def test_silence_gives_a_closed_calm_mouth(reference):
    pose = audio_to_pose(np.zeros(3 * SR, np.float32), reference)
    assert len(pose) == 72
    assert layout.mouth_opening(pose.landmarks).max() < 0.005
    assert np.abs(pose.head_pose).max() < 2.5


def test_noise_and_music_give_small_motion(speech_wav, reference):
    speech = audio_to_pose(speech_wav, reference)
    t = np.arange(4 * SR) / SR
    noise = 0.3 * np.random.default_rng(1).standard_normal(len(t))
    chord = 0.2 * sum(np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0))  # C major, held
    for name, y in (("white noise", noise), ("chord", chord)):
        pose = audio_to_pose(y.astype(np.float32), reference)
        mouth = layout.mouth_opening(pose.landmarks)
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


def write_curated(prefix, clips, features: str | None = None) -> str:
    """A curated dataset in facepose.curate's layout (index/, poses/, audio/ with the curated log-mel,
    _done/ markers) holding ``clips``: [(video_id, samples at 16 kHz, PoseSequence at 24 fps)], one clip
    per video. -> the prefix."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from facepose import curate as cu

    features = features or cu.AUDIO_FEATURES
    for kind in ("index", "poses", "audio", "_done"):
        (prefix / kind).mkdir(parents=True, exist_ok=True)
    for video_id, y, pose in clips:
        clip_id, n = f"{video_id}_0000", len(pose)
        mel, rms = cu.audio_features(y, n, 24.0, SR, 80)
        pq.write_table(pose.to_table(extra={"clip_id": [clip_id] * n}), prefix / "poses" / f"{video_id}.parquet")
        audio = pa.table({"clip_id": [clip_id] * n, "frame": pa.array(np.arange(n, dtype=np.int32)), "mel": cu._fixed(mel),
                          "rms": pa.array(rms), "has_audio": [True] * n})
        meta = {"facepose.fps": "24.0", "facepose.sample_rate": str(SR), "facepose.n_mels": "80", "facepose.features": features}
        pq.write_table(audio.replace_schema_metadata(meta), prefix / "audio" / f"{video_id}.parquet")
        pq.write_table(pa.Table.from_pylist([{"video_id": video_id, "clip_id": clip_id, "status": "ok", "frames": n, "has_audio": True}]),
                       prefix / "index" / f"{video_id}.parquet")
        (prefix / "_done" / f"{video_id}.json").write_text(json.dumps({"video_id": video_id, "status": "ok"}))
    return str(prefix)


def train_locally(tmp_path, dataset: str, *overrides: str) -> tuple[str, list]:
    """``facepose train audio2pose`` 's own loop (facepose.train.step.fit with the Audio2Pose task) in this
    process -> (the last checkpoint's audio2pose folder, the metric rows)."""
    import torch

    from facepose.train.config import load_train_config
    from facepose.train.step import AUDIO2POSE_DIR, LocalSession, fit

    cfg = load_train_config(["audio2pose"], [f"data.dataset={dataset}", *overrides])
    session = LocalSession(tmp_path / "run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model trains faster on one thread than on two contended ones
    try:
        fit(cfg, session)
    finally:
        torch.set_num_threads(threads)
    last = sorted((tmp_path / "run").glob("checkpoint_*"))[-1]
    return str(last / AUDIO2POSE_DIR), session.reports


def test_learned_model_overfits_tiny_clips_through_the_one_trainer_and_drives_the_mouth(tmp_path, reference):
    dataset = write_curated(tmp_path / "ds", [(f"v{i}", *synthetic_pair(i)[:2]) for i in range(3)])
    ckpt, reports = train_locally(tmp_path, dataset, "steps=60", "batch_size=4", "audio2pose.window=48", "audio2pose.hidden=32",
                                  "optim.lr=5e-3", "optim.warmup_steps=5", "log_every=10", "checkpoint_every=60")
    losses = [r["loss"] for r in reports]
    assert len(losses) == 6 and losses[-1] < 0.2 * losses[0]  # the loss falls
    # a save_pretrained folder: config.json and safetensors weights, no pickle
    files = sorted(p.name for p in Path(ckpt).iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"], files

    y, _, env = synthetic_pair(0)
    pose = audio_to_pose(y, reference, cfg=Audio2PoseConfig(checkpoint=ckpt))
    assert pose.meta["audio2pose"] == "learned" and len(pose) == 72
    mouth = layout.mouth_opening(pose.landmarks)
    assert np.corrcoef(mouth, env)[0, 1] > 0.8
    assert mouth.max() > 0.1


def test_a_run_resumes_from_its_checkpoint_folder(tmp_path):
    dataset = write_curated(tmp_path / "ds", [(f"v{i}", *synthetic_pair(i)[:2]) for i in range(2)])
    common = ("batch_size=2", "audio2pose.window=24", "audio2pose.hidden=8", "log_every=3", "checkpoint_every=3")
    first, _ = train_locally(tmp_path, dataset, "steps=3", *common)
    from facepose.pose.audio2pose_train import read_audio2pose

    before = read_audio2pose(first).state_dict()
    last, reports = train_locally(tmp_path, dataset, "steps=6", *common)  # the same run folder: resumes at step 3
    assert last.endswith("checkpoint_00000006/audio2pose")
    assert [r["step"] for r in reports] == [6] and reports[-1]["resumed_from"] == 3
    after = read_audio2pose(last).state_dict()
    assert all(torch_equal(before[k], after[k]) for k in ("mel_mean", "mel_std", "target_std"))  # normalisation kept
    assert not torch_equal(before["head.weight"], after["head.weight"])  # and the weights trained on


def test_features_of_another_front_end_are_refused_naming_the_shard(tmp_path):
    from facepose.errors import PoseFormatError

    old = "log-mel (n_fft=400, hop=160, natural log) mean over each frame; rms over each frame"  # curation before the one front end
    dataset = write_curated(tmp_path / "ds", [("v0", *synthetic_pair(0)[:2])], features=old)
    with pytest.raises(PoseFormatError, match=r"audio/v0\.parquet holds audio features of another front end.*recurate"):
        train_locally(tmp_path, dataset, "steps=1", "batch_size=1", "audio2pose.hidden=8")


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


class _Exploit:
    """Unpickling this writes a file: what a pickle in a checkpoint could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_missing_foreign_or_pickled_checkpoint_is_model_not_found_and_runs_no_code(tmp_path, reference):
    import torch

    y = np.zeros(SR, np.float32)
    with pytest.raises(ModelNotFoundError, match="nowhere.*facepose train audio2pose"):
        audio_to_pose(y, reference, cfg=Audio2PoseConfig(checkpoint=str(tmp_path / "nowhere")))
    pickled = tmp_path / "audio2pose.pt"
    torch.save({"payload": _Exploit(tmp_path / "pwned")}, pickled)
    with pytest.raises(ModelNotFoundError, match="audio2pose.pt is a file"):
        audio_to_pose(y, reference, cfg=Audio2PoseConfig(checkpoint=str(pickled)))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(FaceposeError, match="other holds a UNet2DModel"):
        audio_to_pose(y, reference, cfg=Audio2PoseConfig(checkpoint=str(other)))
    assert not (tmp_path / "pwned").exists()


def test_training_state_is_read_without_unpickling_code(tmp_path):
    import torch

    from facepose.errors import InputError
    from facepose.train.step import STATE_FILE, read_state

    torch.save({"format": "facepose.train/1", "payload": _Exploit(tmp_path / "pwned")}, tmp_path / STATE_FILE)
    with pytest.raises(InputError, match="state.pt is not a facepose training checkpoint"):
        read_state(tmp_path)
    assert not (tmp_path / "pwned").exists()


# -- one front end ---------------------------------------------------------------------------------
def test_features_in_blocks_equal_one_pass(speech_wav):
    from facepose.media.audio import load_audio
    from facepose.pose.audio_features import audio_features as front_end

    y = load_audio(str(speech_wav), sr=SR)
    whole = front_end(y, block_frames=10**6)
    for block in (7, 50):
        parts = front_end(y, block_frames=block)
        assert parts.frames == whole.frames
        for name in ("rms_db", "flatness", "centroid", "formant_balance", "voicing", "log_mel"):
            np.testing.assert_allclose(getattr(parts, name), getattr(whole, name), rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(parts.f0, whole.f0, rtol=1e-4, equal_nan=True)


def test_curated_features_are_what_inference_computes(speech_wav):
    """Curation stores the features a learned model is trained on; inference must compute the same."""
    from facepose import curate as cu
    from facepose.media.audio import load_audio

    y = load_audio(str(speech_wav), sr=SR)
    feat = audio_features(y, SR, n_mels=80)
    mel, rms = cu.audio_features(y, feat.frames, 24.0, SR, 80)
    np.testing.assert_array_equal(mel, feat.log_mel)
    np.testing.assert_allclose(rms, feat.rms, rtol=1e-6)


def test_a_checkpoint_folder_round_trips_through_s3(s3):
    import torch

    from facepose.pose.audio2pose_train import Audio2PoseNet, load_audio2pose, save_audio2pose

    torch.manual_seed(0)
    net = Audio2PoseNet(n_mels=80, hidden=8).eval()
    net.set_normalisation(np.full(80, -3.0), np.full(80, 2.0), np.full(139, 0.1))
    save_audio2pose(net, f"{s3}/runs/a2p/audio2pose")
    loaded = load_audio2pose(f"{s3}/runs/a2p/audio2pose")
    mel = np.random.default_rng(0).normal(-3, 2, (30, 80)).astype(np.float32)
    for a, b in zip(net.predict(mel), loaded.predict(mel)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ModelNotFoundError, match="runs/nothing not found"):
        load_audio2pose(f"{s3}/runs/nothing")
