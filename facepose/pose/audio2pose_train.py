"""The learned Audio2Pose model: the network, what it learns (targets, loss, normalisation), the curated
features it learns from, and its checkpoint folders.

Training has one path: ``facepose train audio2pose data.dataset=<curated prefix>`` (``flows/train.py``
starts Ray Train; each worker runs :func:`facepose.train.step.fit` with its ``Audio2PoseTask``, which
uses the pieces here). The inputs are the curated dataset's own rows: ``audio/<video_id>.parquet`` holds
each frame's log-mel (written by curation with :func:`facepose.pose.audio_features.audio_features`, the
function inference runs on new speech) and ``poses/<video_id>.parquet`` its landmarks.

Targets are what relative retargeting (:mod:`facepose.pose.retarget`) carries from a driver to a
reference: each frame's non-rigid offsets of the 68 points in model units (half face widths) relative to
the clip's rest frame (closed mouth, most frontal), plus the head pose (yaw and pitch fitted with the
face model, roll from the in-plane similarity) relative to the rest frame. So a model trained on any
faces drives any reference, whose own face shape is kept.

A checkpoint is a diffusers-style ``save_pretrained`` folder (``config.json`` + safetensors weights, the
feature and target normalisation among them as buffers): loading it runs no pickled code.
``audio2pose.checkpoint=<folder>`` makes :func:`facepose.pose.audio2pose.audio_to_pose` use it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from facepose import storage
from facepose.errors import InputError, ModelNotFoundError, PoseFormatError
from facepose.pose import face_model as fm
from facepose.pose.audio_features import FEATURES, FPS, SAMPLE_RATE
from facepose.pose.retarget import decompose, pick_neutral
from facepose.pose.sequence import PoseSequence

log = logging.getLogger(__name__)

N_OUT = 68 * 2 + 3  # offsets (136) model units, yaw, pitch, roll degrees
TRAIN_COMMAND = "facepose train audio2pose data.dataset=<curated dataset>"


class Audio2PoseNet(ModelMixin, ConfigMixin):
    """log-mel (B, T, n_mels) as :func:`~facepose.pose.audio_features.audio_features` computes it ->
    (B, T, 139) normalised targets (offsets / target_std, head pose / target_std).

    Two 1D convolutions (receptive field about 0.5 s), a bidirectional GRU for phrase context, a linear
    head. The feature and target normalisation are buffers, so they are saved with the weights;
    ``sample_rate`` and ``fps`` record the features the model was trained on."""

    @register_to_config
    def __init__(self, n_mels: int = 80, hidden: int = 128, kernel: int = 5, gru_layers: int = 1,
                 sample_rate: int = SAMPLE_RATE, fps: float = FPS):
        super().__init__()
        pad = kernel // 2
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, hidden, kernel, padding=pad), nn.GELU(),
            nn.Conv1d(hidden, hidden, kernel, padding=2 * pad, dilation=2), nn.GELU(),
        )
        self.gru = nn.GRU(hidden, hidden, num_layers=gru_layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, N_OUT)
        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))
        self.register_buffer("target_std", torch.ones(N_OUT))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = (log_mel - self.mel_mean) / self.mel_std
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, M) -> (B, T, H)
        h, _ = self.gru(h)  # (B, T, 2H)
        return self.head(h)  # (B, T, 139)

    def set_normalisation(self, mel_mean: np.ndarray, mel_std: np.ndarray, target_std: np.ndarray) -> None:
        with torch.no_grad():
            for name, value in (("mel_mean", mel_mean), ("mel_std", mel_std), ("target_std", target_std)):
                getattr(self, name).copy_(torch.as_tensor(np.asarray(value, np.float32)))

    @torch.no_grad()
    def predict(self, log_mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log_mel: (T, n_mels) -> offsets (T, 68, 2) model units, head_pose (T, 3) degrees."""
        x = torch.as_tensor(np.asarray(log_mel, np.float32))[None].to(self.device)
        out = (self(x)[0] * self.target_std).cpu().numpy()  # (T, 139)
        return out[:, :136].reshape(-1, 68, 2), out[:, 136:]


# -- what it learns --------------------------------------------------------------------------------
def pair_targets(pose: PoseSequence) -> tuple[np.ndarray, np.ndarray]:
    """pose at 24 fps -> targets (T, 139) [offsets (136) model units, yaw, pitch, roll degrees], mask (T,) bool."""
    n = pick_neutral(pose, "auto")
    lm = pose.landmarks.astype(np.float64)
    motion = decompose(lm, lm[n])
    if pose.head_pose is not None:
        yp = pose.head_pose[:, :2].astype(np.float64) - pose.head_pose[n, :2]
    else:
        est = fm.estimate_head_pose(lm)
        yp = est[:, :2] - est[n, :2]
    T = len(pose)
    y = np.concatenate([motion.expr.reshape(T, 136), yp, motion.roll[:, None]], axis=1)
    return y.astype(np.float32), pose.visible.copy()


def example(log_mel: np.ndarray, pose: PoseSequence, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clip's features (T, n_mels) and landmarks -> (log_mel, targets (T, 139), mask (T,)) of their
    common length. InputError naming the clip when it is under 8 frames."""
    pose = pose.resample(FPS)
    if abs(len(log_mel) - len(pose)) > 2:
        log.warning("%s: audio features have %d frames, landmarks %d; using the common part", name, len(log_mel), len(pose))
    T = min(len(log_mel), len(pose))
    if T < 8:
        raise InputError(f"{name}: training clip too short ({T} frames); curate clips of at least a second")
    targets, mask = pair_targets(pose.slice(0, T))
    return np.asarray(log_mel[:T], np.float32), targets, mask


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, target: (B, T, 139) normalised; mask: (B, T) 1 where the face was seen -> the mean squared
    error over the seen frames."""
    m = mask[..., None]
    return (((pred - target) ** 2) * m).sum() / (m.sum() * N_OUT).clamp(min=1.0)


def normalisation_sums(data: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_mels: int) -> torch.Tensor:
    """Sums over ``[(log_mel, targets, mask)]`` from which :func:`normalisation` derives the statistics
    (sums add across data-parallel workers: all-reduce them before)."""
    sums = torch.zeros(2 + 2 * n_mels + 2 * N_OUT, dtype=torch.float64)
    for mel, tgt, mask in data:
        mel = mel.astype(np.float64)
        t = tgt[mask].astype(np.float64)
        sums[0] += len(mel)
        sums[1] += len(t)
        sums[2:2 + n_mels] += torch.from_numpy(mel.sum(0))
        sums[2 + n_mels:2 + 2 * n_mels] += torch.from_numpy((mel ** 2).sum(0))
        sums[2 + 2 * n_mels:2 + 2 * n_mels + N_OUT] += torch.from_numpy(t.sum(0))
        sums[2 + 2 * n_mels + N_OUT:] += torch.from_numpy((t ** 2).sum(0))
    return sums


def normalisation(sums: torch.Tensor, n_mels: int, dataset: str = "the dataset") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (mel_mean (n_mels,), mel_std (n_mels,), target_std (139,)): per-band feature statistics; one
    scale shared by the 136 offsets (they are one geometry) and one per head angle (at least 0.5 degrees)."""
    s = sums.numpy()
    n_mel, n_tgt = float(s[0]), float(s[1])
    if n_mel == 0 or n_tgt == 0:
        raise InputError(f"no usable clip with audio in curated dataset {dataset}")
    mel_mean = s[2:2 + n_mels] / n_mel
    mel_std = np.sqrt(np.maximum(s[2 + n_mels:2 + 2 * n_mels] / n_mel - mel_mean ** 2, 0)) + 1e-3
    t_sum, t_sq = s[2 + 2 * n_mels:2 + 2 * n_mels + N_OUT], s[2 + 2 * n_mels + N_OUT:]
    off_mean = t_sum[:136].sum() / (n_tgt * 136)
    off_std = math.sqrt(max(t_sq[:136].sum() / (n_tgt * 136) - off_mean ** 2, 0))
    hp_std = np.sqrt(np.maximum(t_sq[136:] / n_tgt - (t_sum[136:] / n_tgt) ** 2, 0))
    target_std = np.concatenate([np.full(136, max(off_std, 1e-3)), np.maximum(hp_std, 0.5)])
    return mel_mean.astype(np.float32), mel_std.astype(np.float32), target_std.astype(np.float32)


# -- curated features --------------------------------------------------------------------------------
class AudioShards:
    """Per-clip log-mel features read from a curated dataset's ``audio/<video_id>.parquet``, a few
    shards cached. Every shard must hold the features of one front end (its metadata says which)."""

    def __init__(self, prefix: str, cache: int = 16):
        self.prefix = prefix
        self.cache = cache
        self._tables: OrderedDict[str, object] = OrderedDict()

    def uri(self, video_id: str) -> str:
        from facepose import curate as cu

        return cu.shard_uri(self.prefix, "audio", video_id)

    def meta(self, video_id: str) -> dict[str, str]:
        """The shard's ``facepose.*`` metadata (fps, sample_rate, n_mels, features)."""
        table = self._table(video_id)
        return {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}

    def n_mels(self, video_id: str) -> int:
        """The shard's mel bands, after checking it holds this front end's features."""
        meta = self.meta(video_id)
        if meta.get("facepose.features") != FEATURES or "facepose.n_mels" not in meta:
            raise PoseFormatError(f"{self.uri(video_id)} holds audio features of another front end "
                                  f"({meta.get('facepose.features', 'none recorded')[:60]!r}); recurate the dataset with this "
                                  f"facepose (facepose curate MANIFEST {self.prefix}) before training Audio2Pose on it")
        return int(meta["facepose.n_mels"])

    def get(self, video_id: str, clip_id: str) -> np.ndarray:
        """-> the clip's log-mel (T, n_mels), frame 0 first. PoseFormatError when missing."""
        import pyarrow.compute as pc

        table = self._table(video_id)
        self.n_mels(video_id)
        meta = self.meta(video_id)
        if int(meta.get("facepose.sample_rate", 0)) != SAMPLE_RATE or float(meta.get("facepose.fps", 0)) != FPS:
            raise PoseFormatError(f"{self.uri(video_id)}: features at {meta.get('facepose.sample_rate')} Hz, "
                                  f"{meta.get('facepose.fps')} fps; Audio2Pose trains on {SAMPLE_RATE} Hz, {FPS:g} fps "
                                  f"(recurate with curate.sample_rate={SAMPLE_RATE})")
        rows = table.filter(pc.equal(table.column("clip_id"), clip_id))
        if rows.num_rows == 0:
            raise PoseFormatError(f"no audio feature rows for clip {clip_id} in {self.uri(video_id)}")
        order = np.argsort(rows.column("frame").to_numpy())
        mel = rows.column("mel").combine_chunks().flatten().to_numpy().reshape(rows.num_rows, -1)
        return np.ascontiguousarray(mel[order], np.float32)

    def _table(self, video_id: str):
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        table = self._tables.get(video_id)
        if table is None:
            uri = self.uri(video_id)
            try:
                table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
            except (pa.ArrowInvalid, OSError) as e:
                raise PoseFormatError(f"{uri} is not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
            self._tables[video_id] = table
            while len(self._tables) > self.cache:
                self._tables.popitem(last=False)
        self._tables.move_to_end(video_id)
        return table


# -- checkpoints -------------------------------------------------------------------------------------
def save_audio2pose(net: Audio2PoseNet, uri: str) -> None:
    """Write ``net`` as a ``save_pretrained`` folder (config.json + safetensors) at a path or URI."""
    if not storage.is_remote(uri):
        net.save_pretrained(storage.parse(uri).path, safe_serialization=True)
        return
    with tempfile.TemporaryDirectory(prefix="facepose-a2p-") as tmp:
        net.save_pretrained(tmp, safe_serialization=True)
        for path in sorted(Path(tmp).iterdir()):
            storage.upload(path, storage.join(uri, path.name))


def _not_found(uri: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"audio2pose checkpoint {uri} {why}; train one with `{TRAIN_COMMAND}` and pass its "
                              f"checkpoint_*/audio2pose folder, or unset audio2pose.checkpoint to use the signal model")


def _local_folder(uri: str, tmp: str) -> Path:
    """A local folder with the checkpoint's files: the folder itself, or its objects downloaded."""
    if not storage.is_remote(uri):
        path = Path(storage.parse(uri).path)
        if not path.exists():
            raise _not_found(uri, "not found")
        if not path.is_dir():
            raise _not_found(uri, "is a file, not a save_pretrained folder (config.json + safetensors)")
        return path
    prefix = uri.rstrip("/")
    objects = list(storage.listdir(prefix))
    if not objects:
        raise _not_found(uri, "not found")
    for obj in objects:
        dst = Path(tmp) / obj[len(prefix) + 1:]
        dst.parent.mkdir(parents=True, exist_ok=True)
        storage.download(obj, dst)
    return Path(tmp)


_loaded: dict[tuple, Audio2PoseNet] = {}


def load_audio2pose(uri: str | os.PathLike, device: str = "cpu") -> Audio2PoseNet:
    """Load (and cache per process) an Audio2Pose ``save_pretrained`` folder (path or URI), in eval mode.
    ModelNotFoundError naming ``uri`` when it is missing or not an Audio2Pose folder."""
    uri = os.fspath(uri)
    stamp = None
    if not storage.is_remote(uri):
        cfg_file = Path(storage.parse(uri).path) / "config.json"
        stamp = cfg_file.stat().st_mtime if cfg_file.is_file() else None
    key = (uri, device, stamp)
    if key not in _loaded:
        _loaded[key] = read_audio2pose(uri).eval().to(device)
    return _loaded[key]


def read_audio2pose(uri: str | os.PathLike) -> Audio2PoseNet:
    """An Audio2Pose ``save_pretrained`` folder (path or URI) -> a new Audio2PoseNet on the CPU (not
    cached: training resumes from it). ModelNotFoundError naming ``uri`` when it is missing or not one."""
    uri = os.fspath(uri)
    with tempfile.TemporaryDirectory(prefix="facepose-a2p-") as tmp:
        folder = _local_folder(uri, tmp)
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            raise _not_found(uri, "has no readable config.json") from None
        if config.get("_class_name") != Audio2PoseNet.__name__:
            raise _not_found(uri, f"holds a {config.get('_class_name') or 'model of unknown kind'}, not an Audio2PoseNet")
        try:
            net = Audio2PoseNet.from_pretrained(str(folder), use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise _not_found(uri, f"is not readable ({str(e).splitlines()[0][:160]})") from None
    return net
