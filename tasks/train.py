"""Ray Train adapter of the training flow: the ``train_loop_per_worker`` that ``TorchTrainer`` runs on
every worker, and the :class:`RaySession` it hands to :func:`facepose.train.step.fit`, which holds the
logic (the model, the data, the loop). Also the Prefect tasks of the flow."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from prefect import task
from prefect.cache_policies import NONE

import tasks.pool  # noqa: F401 - Ray's environment defaults before anything imports ray
from facepose import storage
from facepose.train.config import TrainConfig, threads_per_worker, train_config_from_dict
from tasks.common import STORAGE_RETRIES

log = logging.getLogger(__name__)


class RaySession:
    """:class:`facepose.train.step.Session` on a Ray Train worker (rank, device, DDP, checkpoints)."""

    def __init__(self, resume_from: Optional[str] = None):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.resume_from = resume_from
        self._tmp = tempfile.TemporaryDirectory(prefix="facepose-resume-")

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        # Unused parameters are normal here: the ReferenceNet's last layers never feed the bank, and a
        # batch whose samples all dropped the reference skips the ReferenceNet.
        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"find_unused_parameters": True})

    def latest_checkpoint(self) -> Optional[Path]:
        """Ray's own (a rerun of the same run name, or a restart after a failure), else ``resume_from``."""
        import ray.train

        from facepose.train.step import fetch_checkpoint

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            return Path(checkpoint.to_directory(os.path.join(self._tmp.name, "ray")))
        if self.resume_from:
            return fetch_checkpoint(self.resume_from, Path(self._tmp.name) / "from")
        return None

    def report(self, metrics: dict[str, float], checkpoint: Optional[Path], name: Optional[str] = None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """config: {"train": asdict(TrainConfig), "run_uri": str, "clips": URI of the run's clip list,
    "resume_from": str | None, "storage": asdict(StorageConfig)}."""
    from facepose.config import StorageConfig
    from facepose.train.dataset import read_clip_list
    from facepose.train.step import fit

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg: TrainConfig = train_config_from_dict(config["train"])
    torch.set_num_threads(threads_per_worker(cfg))
    storage.configure(StorageConfig(**config.get("storage", {})))
    clips = read_clip_list(config["clips"]) if config.get("clips") else None
    fit(cfg, RaySession(config.get("resume_from")), run_uri=config["run_uri"], clips=clips)


# -- Prefect tasks ----------------------------------------------------------------------------------
@task(name="check-training-inputs", **STORAGE_RETRIES)
def check_inputs(cfg: TrainConfig, run_uri: str) -> dict[str, Any]:
    """Before any worker starts: the dataset has usable clips and ``resume_from: latest`` names a
    checkpoint. -> {"clips": [ClipEntry], "resume_from": uri or None}."""
    from facepose.errors import InputError
    from facepose.train.dataset import read_clips
    from facepose.train.step import latest_checkpoint_uri

    window = cfg.data.num_frames + cfg.data.motion_frames + 1 if cfg.kind == "diffusion" else 8
    clips = read_clips(cfg.data.dataset, min_frames=window)
    if cfg.kind == "audio2pose":
        from facepose.pose.audio2pose_train import AudioShards

        with_audio = [c for c in clips if c.has_audio]
        if not with_audio:
            raise InputError(f"curated dataset {cfg.data.dataset} has no clips with audio; Audio2Pose trains on talking-face videos with sound")
        AudioShards(cfg.data.dataset).n_mels(with_audio[0].video_id)  # curated with this front end, or a one-line error
    resume = cfg.resume_from
    if resume == "latest":
        resume = latest_checkpoint_uri(run_uri)
        if resume is None:
            raise InputError(f"resume_from=latest but run {run_uri} has no checkpoint; drop resume_from or name a run that has one")
    return {"clips": clips, "resume_from": resume}


@task(name="write-clip-list", **STORAGE_RETRIES)
def write_clips(uri: str, clips: list) -> str:
    """The run's clip list, read by every worker (instead of every index shard of the dataset)."""
    from facepose.train.dataset import write_clip_list

    write_clip_list(uri, clips)
    return uri


def check_resources(cfg: TrainConfig) -> None:
    """On a Ray this flow started (no autoscaler to add nodes), fail at once when the workers cannot all
    be placed, instead of waiting for resources that never come."""
    import ray

    from facepose.errors import ConfigError

    have = ray.cluster_resources()
    sc = cfg.scaling
    need_gpu = sc.num_workers if sc.use_gpu else 0
    if have.get("GPU", 0) < need_gpu:
        raise ConfigError(f"scaling.use_gpu=true needs {need_gpu} GPU(s), this machine's Ray has {int(have.get('GPU', 0))}; "
                          "set scaling.use_gpu=false (and mixed_precision=fp32) to train on CPU")
    if have.get("CPU", 0) < sc.num_workers * sc.cpus_per_worker:
        raise ConfigError(f"{sc.num_workers} workers x {sc.cpus_per_worker} CPUs do not fit this machine's Ray ({have.get('CPU', 0):g} CPUs); "
                          "lower scaling.num_workers or scaling.cpus_per_worker (or batch.num_cpus)")


@task(name="ray-train-fit", cache_policy=NONE)
def fit_on_ray(cfg: TrainConfig, name: str, run_uri: str, clips_uri: str, storage_path: str, filesystem: Any,
               resume_from: Optional[str], storage_cfg: dict[str, Any], env: dict[str, str]) -> Any:
    """Run ``TorchTrainer`` (``cfg.scaling.num_workers`` workers) -> its Result. A worker's FaceposeError
    (bad data, a bad checkpoint) is raised as itself."""
    from dataclasses import asdict

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    sc = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": asdict(cfg), "run_uri": run_uri, "clips": clips_uri, "resume_from": resume_from, "storage": storage_cfg},
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker={"CPU": sc.cpus_per_worker}),
        run_config=RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": env},
        ),
    )
    try:
        return trainer.fit()
    except TrainingFailedError as exc:
        raise worker_error(exc, name) from None


def worker_error(exc: BaseException, name: str = "") -> BaseException:
    """The error a worker raised when it is one of ours (bad data, a bad checkpoint); otherwise (a worker
    died, ...) a one-line FaceposeError saying how to resume."""
    from facepose.errors import FaceposeError

    seen: list[BaseException] = []
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        cause = getattr(e, "cause", None)  # a RayTaskError carries the worker's own exception
        if isinstance(cause, FaceposeError):
            return cause
        if isinstance(e, FaceposeError):
            return e
        todo.extend(getattr(e, "worker_failures", {}).values())
        todo.extend([getattr(e, "cause", None), getattr(e, "controller_failure", None), e.__cause__])
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith(("Training failed", "[Rank"))]
    why = " ".join(lines[:2])[:240] or type(exc).__name__
    return FaceposeError(f"training run {name} failed: {why}; rerun with name={name} to resume from its latest checkpoint")
