"""The learned Audio2Pose model: network, training on (audio, landmarks) pairs, checkpoints.

Targets are what relative retargeting (:mod:`facepose.pose.retarget`) carries from a driver to a
reference: each frame's non-rigid offsets of the 68 points in model units (half face widths) relative to
the pair's rest frame (closed mouth, most frontal), plus the head pose (yaw and pitch fitted with the
face model, roll from the in-plane similarity) relative to the rest frame. So a model trained on any
faces drives any reference, whose own face shape is kept.

A checkpoint is one file (``torch.save``): the architecture config, weights, feature and target
normalisation, and the loss history. :func:`load_audio2pose` reads it; ``Audio2PoseConfig.checkpoint``
makes :func:`facepose.pose.audio2pose.audio_to_pose` use it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from facepose import storage
from facepose.errors import InputError, ModelNotFoundError
from facepose.pose import face_model as fm
from facepose.pose.audio2pose import SAMPLE_RATE, AudioInput, audio_features, read_audio
from facepose.pose.retarget import decompose, pick_neutral
from facepose.pose.sequence import PoseSequence

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "facepose.audio2pose/1"
N_OUT = 68 * 2 + 3


class Audio2PoseNet(nn.Module):
    """log-mel (B, T, n_mels) normalised -> offsets (B, T, 68, 2), head_pose (B, T, 3), both normalised.

    Two 1D convolutions (receptive field about 0.5 s), a bidirectional GRU for phrase context, a linear
    head. ``config`` holds the architecture only and is saved with the weights."""

    def __init__(self, n_mels: int = 40, hidden: int = 128, kernel: int = 5, gru_layers: int = 1):
        super().__init__()
        self.config = dict(n_mels=n_mels, hidden=hidden, kernel=kernel, gru_layers=gru_layers)
        pad = kernel // 2
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, hidden, kernel, padding=pad), nn.GELU(),
            nn.Conv1d(hidden, hidden, kernel, padding=2 * pad, dilation=2), nn.GELU(),
        )
        self.gru = nn.GRU(hidden, hidden, num_layers=gru_layers, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, N_OUT)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(mel.transpose(1, 2)).transpose(1, 2)  # (B, T, M) -> (B, T, H)
        h, _ = self.gru(h)  # (B, T, 2H)
        out = self.head(h)  # (B, T, 139)
        B, T = out.shape[:2]
        return out[..., :136].reshape(B, T, 68, 2), out[..., 136:]


@dataclass
class Audio2PoseTrainConfig:
    output: str = "audio2pose.pt"  # checkpoint path or URI
    steps: int = 2000
    batch_size: int = 16
    window: int = 96  # frames per training crop (4 s at 24 fps)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 128
    n_mels: int = 40
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None  # CPU threads for torch while training (None: torch's default); small
    # models train faster on 1 thread than on 2 contended ones
    log_every: int = 100


@dataclass
class LearnedAudio2Pose:
    """A loaded checkpoint: the network plus the normalisation it was trained with."""

    net: Audio2PoseNet
    mel_mean: np.ndarray
    mel_std: np.ndarray
    target_std: np.ndarray  # (139,)
    n_mels: int
    device: str = "cpu"

    def predict(self, log_mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log_mel: (T, n_mels) -> offsets (T, 68, 2) model units, head_pose (T, 3) degrees."""
        x = (np.asarray(log_mel, np.float32) - self.mel_mean) / self.mel_std
        with torch.no_grad():
            off, hp = self.net(torch.from_numpy(x)[None].to(self.device))
        off = off[0].cpu().numpy().reshape(-1, 136) * self.target_std[:136]
        hp = hp[0].cpu().numpy() * self.target_std[136:]
        return off.reshape(-1, 68, 2), hp


# -- data --------------------------------------------------------------------------------------------
Pair = tuple[AudioInput, Union[PoseSequence, str, os.PathLike]]


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


def prepare_pairs(pairs: Sequence[Pair], n_mels: int = 40) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """-> [(log_mel (T, n_mels), targets (T, 139), mask (T,))] with audio and landmarks cut to a common length."""
    out = []
    for i, (audio, pose) in enumerate(pairs):
        if not isinstance(pose, PoseSequence):
            pose = PoseSequence.load(os.fspath(pose))
        pose = pose.resample(24.0)
        y, uri = read_audio(audio, SAMPLE_RATE)
        mel = audio_features(y, SAMPLE_RATE, n_mels=n_mels).log_mel
        name = uri or f"pair {i}"
        if abs(len(mel) - len(pose)) > 2:
            log.warning("%s: audio has %d frames, landmarks %d; using the common part", name, len(mel), len(pose))
        T = min(len(mel), len(pose))
        if T < 8:
            raise InputError(f"{name}: training pair too short ({T} frames); use clips of at least a second")
        targets, mask = pair_targets(pose.slice(0, T))
        out.append((mel[:T], targets, mask))
    if not out:
        raise InputError("train_audio2pose needs at least one (audio, landmarks) pair")
    return out


def curated_pairs(prefix: str, limit: Optional[int] = None) -> list[tuple[str, PoseSequence]]:
    """(clip mp4 URI, landmarks) pairs from a curated dataset under ``prefix`` (facepose.curate's layout:
    ``poses/<video_id>.parquet`` frame rows with ``clip_id``, ``clips/<video_id>/<clip_id>.mp4`` with
    the clip's audio, ``audio/<video_id>.parquet`` saying ``has_audio``). Clips without audio are skipped."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    pairs: list[tuple[str, PoseSequence]] = []
    for uri in sorted(storage.listdir(storage.join(prefix, "poses"))):
        if not uri.endswith(".parquet"):
            continue
        video_id = uri.rsplit("/", 1)[-1][: -len(".parquet")]
        with storage.local_path(uri, suffix=".parquet") as path:
            table = pq.read_table(path)
        silent: set[str] = set()
        audio_uri = storage.join(prefix, "audio", f"{video_id}.parquet")
        if storage.exists(audio_uri):
            with storage.local_path(audio_uri, suffix=".parquet") as path:
                audio = pq.read_table(path, columns=["clip_id", "has_audio"]).to_pydict()
            silent = {c for c, h in zip(audio["clip_id"], audio["has_audio"]) if not h}
        for clip_id in pc.unique(table.column("clip_id")).to_pylist():
            if clip_id in silent:
                continue
            rows = table.filter(pc.equal(table.column("clip_id"), clip_id))
            pose = PoseSequence.from_table(rows, source=f"{uri}#{clip_id}")
            pairs.append((storage.join(prefix, "clips", video_id, f"{clip_id}.mp4"), pose))
            if limit is not None and len(pairs) >= limit:
                return pairs
    if not pairs:
        raise InputError(f"no curated clips with audio under {prefix}; run the curate flow first (poses/, clips/)")
    return pairs


# -- training ----------------------------------------------------------------------------------------
def train_audio2pose(pairs: Sequence[Pair], cfg: Optional[Audio2PoseTrainConfig] = None) -> str:
    """Fit :class:`Audio2PoseNet` on curated (audio, landmarks) pairs and write the checkpoint.

    pairs: (audio URI or 16 kHz samples, PoseSequence or pose Parquet URI) with the landmarks aligned to
    the audio (frame k at k / fps seconds), e.g. :func:`curated_pairs`. -> ``cfg.output``. Masked MSE on normalised targets, AdamW,
    random crops of ``cfg.window`` frames; the per-step loss history is saved in the checkpoint.
    """
    cfg = cfg or Audio2PoseTrainConfig()
    data = prepare_pairs(pairs, cfg.n_mels)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        net, mel_mean, mel_std, target_std, history = _fit(data, cfg)
    finally:
        torch.set_num_threads(threads)
    save_checkpoint(cfg.output, net, mel_mean, mel_std, target_std, history, train_config=asdict(cfg))
    return cfg.output


def _fit(data: list, cfg: Audio2PoseTrainConfig) -> tuple:
    """The training loop: -> (net, mel_mean, mel_std, target_std, history)."""
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    mel_all = np.concatenate([m for m, _, _ in data])
    tgt_all = np.concatenate([t[k] for _, t, k in data])
    mel_mean = mel_all.mean(0)
    mel_std = mel_all.std(0) + 1e-3
    target_std = np.concatenate([np.full(136, max(float(tgt_all[:, :136].std()), 1e-3)),
                                 np.maximum(tgt_all[:, 136:].std(0), 0.5)]).astype(np.float32)

    net = Audio2PoseNet(n_mels=cfg.n_mels, hidden=cfg.hidden).to(cfg.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    window = min(cfg.window, min(len(m) for m, _, _ in data))
    history: list[float] = []
    net.train()
    for step in range(cfg.steps):
        xs, ys, ms = [], [], []
        for _ in range(cfg.batch_size):
            mel, tgt, mask = data[rng.integers(len(data))]
            s = int(rng.integers(0, len(mel) - window + 1))
            xs.append((mel[s:s + window] - mel_mean) / mel_std)
            ys.append(tgt[s:s + window] / target_std)
            ms.append(mask[s:s + window])
        x = torch.from_numpy(np.stack(xs).astype(np.float32)).to(cfg.device)
        y = torch.from_numpy(np.stack(ys).astype(np.float32)).to(cfg.device)
        m = torch.from_numpy(np.stack(ms).astype(np.float32)).to(cfg.device)[..., None]
        off, hp = net(x)
        pred = torch.cat([off.flatten(2), hp], dim=-1)  # (B, T, 139)
        loss = (((pred - y) ** 2) * m).sum() / (m.sum() * N_OUT).clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append(float(loss.item()))
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            log.info("audio2pose step %d/%d loss %.4f", step + 1, cfg.steps, np.mean(history[-cfg.log_every:]))
    net.eval()
    return net, mel_mean, mel_std, target_std, history


# -- checkpoints -------------------------------------------------------------------------------------
def save_checkpoint(uri: str, net: Audio2PoseNet, mel_mean: np.ndarray, mel_std: np.ndarray,
                    target_std: np.ndarray, history: Sequence[float], train_config: Optional[dict] = None) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": dict(net.config),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "mel_mean": np.asarray(mel_mean, np.float32),
        "mel_std": np.asarray(mel_std, np.float32),
        "target_std": np.asarray(target_std, np.float32),
        "history": [float(h) for h in history],
        "train_config": train_config or {},
    }
    with storage.writer(uri, suffix=".pt") as path:
        torch.save(payload, path)


def load_checkpoint_payload(uri: str) -> dict:
    """The checkpoint dict: ``config``, ``state_dict``, normalisation, ``history``, ``train_config``."""
    if not storage.exists(uri):
        raise ModelNotFoundError(f"audio2pose checkpoint {uri} not found; train one with train_audio2pose "
                                 f"or unset audio2pose.checkpoint to use the signal model")
    with storage.local_path(uri, suffix=".pt") as path:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - whatever torch says, the fix is the same
            raise ModelNotFoundError(f"audio2pose checkpoint {uri} is not readable ({type(e).__name__}); "
                                     f"retrain it with train_audio2pose") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelNotFoundError(f"{uri} is not an audio2pose checkpoint (train one with train_audio2pose)")
    return payload


_loaded: dict[tuple, LearnedAudio2Pose] = {}


def load_audio2pose(uri: str, device: str = "cpu") -> LearnedAudio2Pose:
    """Load (and cache per process) a checkpoint written by :func:`train_audio2pose`."""
    uri = os.fspath(uri)
    stamp = os.path.getmtime(uri) if not storage.is_remote(uri) and os.path.exists(uri) else None
    key = (uri, device, stamp)
    if key not in _loaded:
        p = load_checkpoint_payload(os.fspath(uri))
        net = Audio2PoseNet(**p["config"])
        net.load_state_dict(p["state_dict"])
        net.eval().to(device)
        _loaded[key] = LearnedAudio2Pose(net=net, mel_mean=p["mel_mean"], mel_std=p["mel_std"],
                                         target_std=p["target_std"], n_mels=int(p["config"]["n_mels"]), device=device)
    return _loaded[key]
