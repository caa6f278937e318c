"""Training samples from a curated dataset (docs/contracts.md, "Curated dataset"; local or ``s3://``).

:func:`read_clips` lists the usable clips: index rows with ``status == "ok"`` of videos that have their
done marker (a video without one is still being curated, or failed half-way). A run lists them once
(:func:`write_clip_list`) and its workers read that list.

:class:`CuratedClips` is a map-style torch Dataset, one item per clip (a random window each epoch).
A sample holds, at ``data.size``:

- ``num_frames`` consecutive target frames and the ``motion_frames`` frames just before them;
- a reference frame of the same clip, at least ``reference_margin`` frames away from that window
  (fewer only when the clip is too short), and its CLIP-preprocessed copy (from the full-resolution
  crop, resized and normalised exactly as :class:`FaceAnimationPipeline` does at inference);
- the targets' drawn pose images and the Face Locator mask (the union of their expanded landmark boxes).

Only the frames a sample needs are decoded (two ranged reads of the clip). A clip that cannot be read
(corrupt mp4, missing pose rows) is skipped: the next clip is used instead, the clip is remembered as
bad and its id is returned in the sample's ``skipped`` list, so the training loop can count it.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from facepose import storage
from facepose.errors import FaceposeError, InputError, MediaError, PoseFormatError
from facepose.pose.sequence import PoseSequence
from facepose.timeline import FPS
from facepose.train.config import DataConfig

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # = facepose.render.diffusion.pipeline.CLIP_MEAN
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipEntry:
    """One usable clip: ``uri`` of its mp4, ``frames`` at ``fps``, whether it has audio."""

    video_id: str
    clip_id: str
    uri: str
    frames: int
    fps: float = FPS
    has_audio: bool = False


# -- the index --------------------------------------------------------------------------------------
def _read_table(uri: str) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except (pa.ArrowInvalid, OSError) as e:
        if isinstance(e, FaceposeError):
            raise
        raise PoseFormatError(f"{uri} is not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None


def _stem(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


def read_clips(prefix: str, min_frames: int = 1, threads: int = 16) -> list[ClipEntry]:
    """Usable clips of the curated dataset at ``prefix`` with at least ``min_frames`` frames, sorted by
    clip id (index shards are read ``threads`` at a time). Raises InputError naming the prefix when
    there are none."""
    from concurrent.futures import ThreadPoolExecutor

    from facepose import curate as cu

    # A done marker is written last, and only when the video was curated: its presence vouches for the rest.
    done = {_stem(u) for u in storage.listdir(storage.join(prefix, "_done")) if u.endswith(".json")}
    shards = sorted(u for u in storage.listdir(storage.join(prefix, "index")) if u.endswith(".parquet") and _stem(u) in done)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        tables = list(pool.map(_read_table, shards))
    clips: list[ClipEntry] = []
    ok = short = 0
    for table in tables:
        for row in table.to_pylist():
            if row.get("status") != "ok":
                continue
            ok += 1
            if int(row["frames"]) < min_frames:
                short += 1
                continue
            clips.append(ClipEntry(row["video_id"], row["clip_id"], cu.clip_uri(prefix, row["video_id"], row["clip_id"]),
                                   int(row["frames"]), has_audio=bool(row.get("has_audio"))))
    if not clips:
        why = (f"its {ok} clips are all shorter than {min_frames} frames (lower data.num_frames or curate longer clips)"
               if ok else f"{len(done)} curated videos, {len(shards)} of them indexed, no clip with status ok")
        raise InputError(f"curated dataset {prefix} has no usable clips ({why}); curate videos into it first "
                         f"(facepose curate MANIFEST {prefix})")
    clips.sort(key=lambda c: c.clip_id)
    return clips


CLIP_LIST_SCHEMA = pa.schema([("video_id", pa.string()), ("clip_id", pa.string()), ("uri", pa.string()), ("frames", pa.int64()),
                              ("fps", pa.float64()), ("has_audio", pa.bool_())])


def write_clip_list(uri: str, clips: Sequence[ClipEntry]) -> None:
    """The clips a run trains on, as one Parquet file: workers read it instead of every index shard."""
    from dataclasses import asdict

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([asdict(c) for c in clips], schema=CLIP_LIST_SCHEMA), buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def read_clip_list(uri: str) -> list[ClipEntry]:
    return [ClipEntry(**row) for row in _read_table(uri).to_pylist()]


class PoseShards:
    """Per-clip PoseSequences read from ``poses/<video_id>.parquet``, a few shards cached."""

    def __init__(self, prefix: str, cache: int = 16):
        self.prefix = prefix
        self.cache = cache
        self._tables: OrderedDict[str, pa.Table] = OrderedDict()

    def get(self, clip: ClipEntry) -> PoseSequence:
        """-> the clip's landmarks (T, 68, 2) in the pixels of its crop. PoseFormatError if missing."""
        from facepose import curate as cu

        table = self._tables.get(clip.video_id)
        if table is None:
            table = _read_table(cu.shard_uri(self.prefix, "poses", clip.video_id))
            self._tables[clip.video_id] = table
            while len(self._tables) > self.cache:
                self._tables.popitem(last=False)
        self._tables.move_to_end(clip.video_id)
        if "clip_id" not in table.column_names:
            raise PoseFormatError(f"{cu.shard_uri(self.prefix, 'poses', clip.video_id)} has no clip_id column; recurate {clip.video_id}")
        rows = table.filter(pc.equal(table.column("clip_id"), clip.clip_id))
        if rows.num_rows == 0:
            raise PoseFormatError(f"no pose rows for clip {clip.clip_id} in {cu.shard_uri(self.prefix, 'poses', clip.video_id)}")
        return PoseSequence.from_table(rows, source=f"{clip.uri}#poses")


# -- image helpers ----------------------------------------------------------------------------------
def resize_images(images: np.ndarray, size: int, mode: str = "bilinear") -> torch.Tensor:
    """images: (n, H, W, C) uint8 -> (n, C, size, size) float in [0, 1] (antialiased, as the pipeline resizes)."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)  # (n, H, W, C) -> (n, C, H, W)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    return x.clamp(0, 1)


def clip_preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """image: (H, W, 3) uint8 -> (3, size, size) CLIP input (bicubic, normalised with CLIP's mean and std)."""
    x = resize_images(image[None], size, mode="bicubic")[0]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def draw_targets(landmarks: np.ndarray, canvas: int, size: int, point_radius: float, mask_expand: float) -> tuple[np.ndarray, np.ndarray]:
    """landmarks: (N, 68, 2) in a ``canvas`` square -> pose images (N, size, size, 3) uint8 and the Face
    Locator mask (size, size) uint8, the union of the expanded landmark boxes over the N frames."""
    from facepose.face.crop import face_mask
    from facepose.pose.draw import draw_pose, scaled_radius

    lm = landmarks.astype(np.float32) * np.float32(size / float(canvas))
    radius = scaled_radius(size, size, base=point_radius)
    poses = np.stack([draw_pose(p, (size, size), radius=radius) for p in lm])
    return poses, face_mask(lm, size=(size, size), expand=mask_expand)


# -- windows ----------------------------------------------------------------------------------------
def pick_window(frames: int, num_frames: int, motion_frames: int, margin: int, rng: np.random.Generator) -> tuple[int, int]:
    """-> (start of the targets, reference index) in a clip of ``frames`` frames.

    The targets are ``[start, start + num_frames)`` with ``motion_frames`` before them; the reference
    lies outside that window, at least ``margin`` frames away when the clip allows it (otherwise as far
    as it can)."""
    lo, hi = motion_frames, frames - num_frames  # start in [lo, hi]
    if hi < lo or frames < num_frames + motion_frames + 1:
        raise InputError(f"a clip of {frames} frames cannot hold {motion_frames} motion + {num_frames} target frames and a reference")
    starts = np.arange(lo, hi + 1)
    before = starts - motion_frames - margin  # references [0, before) are far enough
    after = starts + num_frames + margin  # references [after, frames) are far enough
    room = np.maximum(before, 0) + np.maximum(frames - after, 0)
    if room.max() > 0:
        starts, before, after, room = starts[room > 0], before[room > 0], after[room > 0], room[room > 0]
        k = int(rng.integers(len(starts)))
        j = int(rng.integers(room[k]))
        ref = j if j < max(before[k], 0) else after[k] + j - max(before[k], 0)
        return int(starts[k]), int(ref)
    start = int(rng.choice(starts))  # too short for the margin: the frame farthest from the window
    first, last = start - motion_frames, start + num_frames - 1
    ref = 0 if first > frames - 1 - last else frames - 1
    if first <= ref <= last:  # the window covers the clip but one end: take that end
        ref = first - 1 if first > 0 else last + 1
    return start, int(ref)


# -- the dataset ------------------------------------------------------------------------------------
class CuratedClips(Dataset):
    """Training samples from the curated dataset ``cfg.dataset`` (see the module docstring).

    clip_size: the CLIP image encoder's input side; seed: windows are drawn from
    ``(seed, epoch, index)``, so a sample is reproducible (:meth:`set_epoch` starts a new epoch)."""

    def __init__(self, cfg: DataConfig, clip_size: int = 224, seed: int = 0, clips: Optional[Sequence[ClipEntry]] = None):
        if not cfg.dataset:
            raise InputError("no training dataset given; set data.dataset to a curated dataset prefix (local or s3://)")
        self.cfg = cfg
        self.prefix = cfg.dataset
        self.clip_size = int(clip_size)
        self.seed = int(seed)
        self.epoch = 0
        self.window = cfg.num_frames + cfg.motion_frames
        self.clips = list(clips) if clips is not None else read_clips(cfg.dataset, min_frames=self.window + 1)
        self.poses = PoseShards(cfg.dataset)
        self.bad: dict[str, str] = {}  # clip id -> why it was skipped (in this process)

    def __len__(self) -> int:
        return len(self.clips) * max(1, self.cfg.repeats)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """key: an index, or (index, epoch) as :class:`EpochBatches` yields them (the epoch travels with
        the index, so DataLoader worker processes draw the windows of the right epoch)."""
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        skipped: list[str] = []
        n = len(self.clips)
        for k in range(n):  # index // n is the repeat: a different window of the same clip
            clip = self.clips[(index + k) % n]
            if clip.clip_id in self.bad:
                continue
            try:
                sample = self.load(clip, np.random.default_rng([self.seed, epoch, index, k]))
            except FaceposeError as e:
                if not e.transient:
                    self.bad[clip.clip_id] = str(e)
                skipped.append(clip.clip_id)
                log.warning("skipping clip %s: %s", clip.clip_id, e)
                continue
            sample["skipped"] = skipped
            sample["epoch"] = epoch
            return sample
        first = next(iter(self.bad.values()), "unknown error")
        raise InputError(f"no readable clip left in curated dataset {self.prefix}: {len(self.bad)} of {n} clips failed (first: {first})")

    def load(self, clip: ClipEntry, rng: np.random.Generator) -> dict[str, Any]:
        """One sample of ``clip`` (keys: pixel_values (N, 3, S, S) and motion_values (M, 3, S, S) and
        reference_values (3, S, S) in [-1, 1]; clip_reference (3, C, C) CLIP input; pose (N, 3, S, S) and
        mask (1, S, S) in [0, 1]; clip_id, start, reference_index). Raises FaceposeError for a bad clip."""
        from facepose.media.video import read_frames

        c = self.cfg
        pose = self.poses.get(clip)
        frames = min(clip.frames, len(pose))
        start, ref = pick_window(frames, c.num_frames, c.motion_frames, c.reference_margin, rng)
        with storage.local_path(clip.uri, suffix=".mp4") as path:  # one download for both reads on S3
            window = read_frames(path, fps=pose.fps, start=start - c.motion_frames, stop=start + c.num_frames)
            reference = read_frames(path, fps=pose.fps, start=ref, stop=ref + 1)
        if len(window) != self.window or len(reference) != 1:
            raise MediaError(f"{clip.uri}: decoded {len(window)} of frames {start - c.motion_frames}..{start + c.num_frames - 1}; "
                             f"the clip is shorter than its index says ({clip.frames} frames); recurate {clip.video_id}")
        pose_images, mask = draw_targets(pose.landmarks[start:start + c.num_frames], pose.width, c.size, c.point_radius, c.mask_expand)
        pixels = resize_images(window, c.size) * 2 - 1
        return {
            "pixel_values": pixels[c.motion_frames:],
            "motion_values": pixels[:c.motion_frames],
            "reference_values": resize_images(reference, c.size)[0] * 2 - 1,
            "clip_reference": clip_preprocess(reference[0], self.clip_size),
            "pose": resize_images(pose_images, c.size),
            "mask": torch.from_numpy(mask)[None].float() / 255.0,
            "clip_id": clip.clip_id,
            "start": start,
            "reference_index": ref,
        }

    def validation_inputs(self, num_frames: int) -> dict[str, Any]:
        """A fixed reference and pose for validation renders: the first readable clip's frame 0 as the
        reference, and the pose of its first ``num_frames`` frames (fewer if the clip is shorter) ->
        {reference (S, S, 3) uint8, pose_images (F, S, S, 3) uint8, mask (S, S) uint8, clip_id}."""
        from facepose.media.video import read_frames

        errors = []
        for clip in self.clips:
            if clip.clip_id in self.bad:
                continue
            try:
                pose = self.poses.get(clip)
                n = max(1, min(num_frames, len(pose)))
                frame = read_frames(clip.uri, fps=pose.fps, start=0, stop=1)
                if len(frame) != 1:
                    raise MediaError(f"{clip.uri}: no frames")
            except FaceposeError as e:
                errors.append(str(e))
                continue
            reference = (resize_images(frame, self.cfg.size)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            pose_images, mask = draw_targets(pose.landmarks[:n], pose.width, self.cfg.size, self.cfg.point_radius, self.cfg.mask_expand)
            return {"reference": reference, "pose_images": pose_images, "mask": mask, "clip_id": clip.clip_id}
        raise InputError(f"no readable clip in curated dataset {self.prefix} for the validation render ({errors[:1]})")


class EpochBatches:
    """Batches of ``(index, epoch)`` keys for one of ``world_size`` workers, endlessly: each epoch a
    seeded permutation of the ``n`` samples, padded to a multiple of ``world_size`` and dealt out by rank
    (as torch's DistributedSampler), then cut into batches of ``batch_size`` that run on across epoch
    ends, so every batch is full however small the dataset."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0):
        self.n, self.batch_size, self.rank, self.world_size, self.seed, self.epoch = n, batch_size, rank, world_size, seed, epoch

    def __iter__(self):
        batch: list[tuple[int, int]] = []
        epoch = self.epoch
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            total = -(-self.n // self.world_size) * self.world_size
            order = (order * (total // self.n + 1))[:total]
            for index in order[self.rank::self.world_size]:
                batch.append((index, epoch))
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            epoch += 1


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of samples: tensors gain a batch dimension, other fields become lists;
    ``skipped`` is the concatenation of the samples' lists."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "skipped":
            out[key] = [c for v in values for c in v]
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


# -- Audio2Pose pairs -------------------------------------------------------------------------------
def audio_pairs(prefix: str, clips: Optional[Sequence[ClipEntry]] = None,
                min_frames: int = 8) -> tuple[list[tuple[ClipEntry, PoseSequence]], dict[str, str]]:
    """Audio2Pose training pairs: the clips with audio (their mp4's AAC track is the audio) and their
    landmarks -> (pairs [(clip, pose)], skipped {clip id: why}). Raises InputError when no clip has audio."""
    clips = list(clips) if clips is not None else read_clips(prefix, min_frames=min_frames)
    with_audio = [c for c in clips if c.has_audio]
    if not with_audio:
        raise InputError(f"curated dataset {prefix} has no clips with audio; Audio2Pose trains on talking-face videos with sound")
    poses = PoseShards(prefix)
    pairs: list[tuple[ClipEntry, PoseSequence]] = []
    skipped: dict[str, str] = {}
    for clip in with_audio:
        try:
            pairs.append((clip, poses.get(clip)))
        except FaceposeError as e:
            skipped[clip.clip_id] = str(e)
            log.warning("skipping clip %s: %s", clip.clip_id, e)
    return pairs, skipped
