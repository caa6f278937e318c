"""The training flow end to end: Prefect's test harness, one local Ray (2 CPUs), Ray Train workers over
gloo, tiny models at 64x64 on a curated dataset made by the curation code from real-face videos with
real speech; checkpoints in S3 (moto on 127.0.0.1) or on disk."""

from __future__ import annotations

import os

# Each Ray Train report waits up to the health-check interval (2 s by default): read when Ray starts,
# so set here, at collection, before the session's Ray (docs/environment.md, "Ray Train").
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facepose import curate as cu
from facepose import storage
from facepose.errors import InputError, StorageError
from facepose.pose.sequence import PoseSequence
from facepose.train.step import read_state
from tests.support.datasets import CLIP_SIZE, corrupt_clip, curate_dataset
from tests.support.synth import write_face_video

pytestmark = [pytest.mark.prefect, pytest.mark.ray]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, astronaut, speech_16k) -> str:
    work = tmp_path_factory.mktemp("train-flow-ds")
    return curate_dataset(work / "ds", work, astronaut, speech_16k)


def upload_dataset(local: str, prefix: str) -> str:
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            storage.upload(path, storage.join(prefix, path.relative_to(local).as_posix()))
    return prefix


def mean(values) -> float:
    return float(np.mean(list(values)))


def test_stage1_on_two_workers_learns_checkpoints_to_s3_and_the_checkpoint_renders(s3, dataset, astronaut, speech_16k, tmp_path):
    from facepose.config import ModelConfig, load_config
    from facepose.manifest import CurateJob
    from facepose.media.video import probe_video
    from facepose.render.diffusion.renderer import build_diffusion_renderer
    from flows.train import run_train

    # a curated dataset on S3 with one clip whose mp4 is cut short
    prefix = upload_dataset(dataset, f"{s3}/datasets/tiny")
    video = write_face_video(tmp_path / "c.mp4", astronaut, seconds=1.5, audio=speech_16k)
    assert cu.Curator(load_config([f"curate.clip_size={CLIP_SIZE}"]))(CurateJob("c", video), prefix).result["status"] == "ok"
    corrupt_clip(prefix, "c")

    seen: list[int] = []
    summary = run_train(
        ["stage1", "tiny"],
        [f"data.dataset={prefix}", f"output={s3}/runs", "name=stage1-s3", "steps=20", "diffusion.validation_frames=4"],
        progress=lambda step, steps, row: seen.append(step),
    )

    # 2 workers ran every step; the loss fell on a dataset small enough to overfit
    history = summary["history"]
    assert [r["step"] for r in history] == list(range(1, 21)) and seen == list(range(1, 21))
    assert summary["workers"] == 2 and all(r["workers"] == 2 for r in history)
    losses = [r["loss"] for r in history]
    assert mean(losses[-5:]) < 0.7 * mean(losses[:5]), losses
    assert all(r["samples_per_s"] > 0 and r["lr"] == pytest.approx(1e-3) for r in history)
    # the corrupt clip was skipped and counted, not fatal
    assert summary["skipped_clips"] == 1 and history[-1]["skipped_clips"] == 1
    # checkpoints every 10 steps in S3 (Ray Train through pyarrow's S3 filesystem); validation renders beside them
    run = f"{s3}/runs/stage1-s3"
    keys = set(storage.listdir(run))
    assert {f"{run}/checkpoint_00000010/state.pt", f"{run}/checkpoint_00000020/state.pt", f"{run}/checkpoint_00000020/pipeline/model_index.json"} <= keys
    assert summary["checkpoint"] == f"{run}/checkpoint_00000020" and summary["model"] == f"{run}/checkpoint_00000020/pipeline"
    assert summary["validation"] == [f"{run}/validation/step_00000010.mp4", f"{run}/validation/step_00000020.mp4"]
    info = probe_video(summary["validation"][-1])
    assert (info.width, info.height, info.frames) == (64, 64, 4)

    # the checkpoint loads into the render pipeline and renders
    renderer = build_diffusion_renderer(model=ModelConfig(checkpoint=summary["model"], steps=2, device="cpu"))
    assert renderer.pipeline.scheduler.config.prediction_type == "epsilon"  # what tiny.yaml trained
    table = pq.read_table(f"{dataset}/poses/a.parquet")
    pose = PoseSequence.from_table(table).slice(0, 3)
    frames = list(renderer.render(astronaut, pose, seed=0))
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3) and np.std(frames[0]) > 1


def _kill_a_train_worker_after(snapshot: Path, checkpoint: str, killed: list[int]) -> None:
    """Once Ray Train has registered ``checkpoint`` (its snapshot names it), SIGKILL one of this test
    process's own RayTrainWorker processes (found among its descendants in /proc), as a crash would."""
    import signal

    deadline = time.time() + 120
    while time.time() < deadline and not (snapshot.is_file() and checkpoint in snapshot.read_text()):
        time.sleep(0.05)
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo, mine = [os.getpid()], []
    while todo:
        for child in children.get(todo.pop(), []):
            mine.append(child)
            todo.append(child)
    for pid in mine:
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        except OSError:
            continue


def test_a_run_killed_after_a_checkpoint_resumes_from_it(dataset, tmp_path):
    import threading

    from facepose.errors import FaceposeError
    from flows.train import run_train

    run = tmp_path / "runs" / "crashy"
    args = [f"data.dataset={dataset}", f"output={tmp_path}/runs", "name=crashy", "checkpoint_every=2", "validate_every=0", "steps=8"]
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_train_worker_after, args=(run / "checkpoint_manager_snapshot.json", "checkpoint_00000002", killed))
    killer.start()
    with pytest.raises(FaceposeError, match="training run crashy failed: .*rerun with name=crashy to resume"):
        run_train(["stage1", "tiny"], args)
    killer.join()
    assert len(killed) == 1
    stopped_at = read_state(max(run.glob("checkpoint_0*")))["step"]
    assert 2 <= stopped_at < 8

    again = run_train(["stage1", "tiny"], args)  # the same run name: it resumes from its latest checkpoint
    history = again["history"]
    assert [r["step"] for r in history] == list(range(1, 9))
    resumed = [r for r in history if r["resumed_from"]]
    assert resumed[0]["step"] == stopped_at + 1 and {r["resumed_from"] for r in resumed} == {stopped_at}  # the step counter continued
    assert [r["optimizer_step"] for r in resumed] == [r["step"] for r in resumed]  # Adam's own count: its state was restored
    assert again["checkpoint"] == str(run / "checkpoint_00000008")
    state = read_state(run / "checkpoint_00000008")
    assert state["step"] == 8 and max(int(s["step"]) for s in state["optimizer"]["state"].values()) == 8
    kept = sorted(p.name for p in run.glob("checkpoint_0*"))
    assert kept == ["checkpoint_00000006", "checkpoint_00000008"]  # keep_checkpoints: 2


def test_stage2_from_a_pipeline_changes_only_its_motion_modules(dataset, tmp_path):
    import torch

    from facepose.render.diffusion.build import build_pipeline
    from facepose.render.diffusion.checkpoint import load_pipeline, save_pipeline
    from facepose.train.step import is_motion_parameter
    from flows.train import run_train

    start = build_pipeline("tiny", seed=0)  # random motion modules, as a stage-1 result with any motion weights
    save_pipeline(start, tmp_path / "stage1")
    summary = run_train(["stage2", "tiny"], [
        f"data.dataset={dataset}", f"output={tmp_path}/runs", "name=stage2", "steps=4", "checkpoint_every=4",
        "validate_every=4", "data.num_frames=4", "diffusion.validation_frames=6", f"diffusion.init_from={tmp_path / 'stage1'}",
    ])
    assert summary["stage"] == 2 and summary["workers"] == 2 and summary["steps"] == 4
    trained = load_pipeline(summary["model"])
    motion = changed = 0
    for name in ("vae", "image_encoder", "reference_unet", "denoising_unet", "pose_guider", "face_locator"):
        after = dict(getattr(trained, name).named_parameters())
        for key, before in getattr(start, name).named_parameters():
            if name == "denoising_unet" and is_motion_parameter(key):
                motion += 1
                changed += not torch.equal(before, after[key])
            else:
                assert torch.equal(before, after[key]), f"{name}.{key} changed in stage 2"
    assert changed > 0.8 * motion
    frames = trained(np.zeros((64, 64, 3), np.uint8), np.zeros((6, 64, 64, 3), np.uint8), num_inference_steps=2).frames
    assert frames.shape == (6, 64, 64, 3)


def test_audio2pose_trains_through_the_same_flow(dataset, tmp_path, astronaut, speech_16k):
    from facepose.config import Audio2PoseConfig
    from facepose.face.crop import crop_face
    from facepose.pose.audio2pose import audio_to_pose
    from flows.train import run_train

    summary = run_train(["audio2pose"], [
        f"data.dataset={dataset}", f"output={tmp_path}/runs", "name=a2p", "steps=30", "batch_size=4", "log_every=3",
        "checkpoint_every=15", "optim.warmup_steps=3", "audio2pose.hidden=32", "audio2pose.window=24", "scaling.num_workers=2",
    ])
    assert summary["kind"] == "audio2pose" and summary["steps"] == 30 and summary["workers"] == 2
    assert summary["loss_last"] < 0.8 * summary["loss_first"], [r["loss"] for r in summary["history"]]
    assert summary["model"] == f"{tmp_path}/runs/a2p/checkpoint_00000030/audio2pose"
    # audio_to_pose drives a reference with the trained checkpoint
    pose = audio_to_pose(speech_16k[:16000 * 2], crop_face(astronaut).landmarks, cfg=Audio2PoseConfig(checkpoint=summary["model"]))
    assert len(pose) == 48 and pose.meta["audio2pose"] == "learned" and np.isfinite(pose.landmarks).all()


def test_empty_dataset_fails_before_training_naming_the_prefix(tmp_path):
    from flows.train import run_train

    empty = tmp_path / "empty"
    empty.mkdir()
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=f"curated dataset {empty} has no usable clips"):
        run_train(["stage1", "tiny"], [f"data.dataset={empty}", f"output={tmp_path}/runs", "name=empty"])
    assert time.perf_counter() - t0 < 10  # no worker group was started (that alone takes longer)
    assert not (tmp_path / "runs").exists()


def test_unwritable_checkpoint_storage_fails_before_training(dataset, tmp_path, s3):
    from flows.train import run_train

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    t0 = time.perf_counter()
    with pytest.raises(StorageError, match=f"checkpoint storage {blocker}/runs/x is not writable"):
        run_train(["stage1", "tiny"], [f"data.dataset={dataset}", f"output={blocker}/runs", "name=x"])
    with pytest.raises(StorageError, match="checkpoint storage s3://no-such-bucket-for-runs/runs/y is not writable"):
        run_train(["stage1", "tiny"], [f"data.dataset={dataset}", "output=s3://no-such-bucket-for-runs/runs", "name=y"])
    assert time.perf_counter() - t0 < 20  # both failed before any worker group started


def test_workers_that_cannot_be_placed_fail_at_once(dataset, tmp_path):
    from facepose.errors import ConfigError
    from flows.train import run_train

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="scaling.use_gpu=true needs 2 GPU"):
        run_train(["stage1", "tiny"], [f"data.dataset={dataset}", f"output={tmp_path}/runs", "scaling.use_gpu=true"])
    with pytest.raises(ConfigError, match="5 workers x 1.0 CPUs do not fit"):
        run_train(["stage1", "tiny"], [f"data.dataset={dataset}", f"output={tmp_path}/runs", "scaling.num_workers=5"])
    assert time.perf_counter() - t0 < 20  # no waiting for resources that never come
