"""PoseSequence: T frames of 68 face landmarks at a fixed fps, and its Parquet form (docs/contracts.md).

Parquet form: one row per frame with ``frame`` int32, ``landmarks`` fixed_size_list<float32, 136>
(x0, y0, x1, y1, ...), ``scores`` fixed_size_list<float32, 68>, optional ``head_pose``
fixed_size_list<float32, 3> (yaw, pitch, roll in degrees), and in curated shards ``clip_id`` and ``bbox``.
Schema metadata: ``facepose.layout=face68``, ``facepose.fps``, ``facepose.width``, ``facepose.height``,
``facepose.version``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facepose.errors import PoseFormatError
from facepose.face_layout import N_POINTS, face_size, is_seen
from facepose.timeline import FPS, frames_for_seconds

LAYOUT = "face68"
FORMAT_VERSION = "1"


@dataclass
class PoseSequence:
    """Landmarks in canvas pixels.

    landmarks: (T, 68, 2) float32, x right / y down, in a ``width`` x ``height`` canvas;
    scores: (T, 68) float32 in [0, 1], 0 where the face was not seen;
    head_pose: optional (T, 3) float32 yaw, pitch, roll in degrees.
    """

    landmarks: np.ndarray
    scores: Optional[np.ndarray] = None
    fps: float = FPS
    width: int = 512
    height: int = 512
    head_pose: Optional[np.ndarray] = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.landmarks = np.ascontiguousarray(self.landmarks, dtype=np.float32)
        if self.scores is None:
            self.scores = np.ones(self.landmarks.shape[:2], np.float32)
        self.scores = np.ascontiguousarray(self.scores, dtype=np.float32)
        if self.head_pose is not None:
            self.head_pose = np.ascontiguousarray(self.head_pose, dtype=np.float32)
        self.validate()

    # -- shape ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.landmarks.shape[0])

    @property
    def duration(self) -> float:
        return len(self) / float(self.fps)

    def validate(self) -> None:
        where = f" ({self.source})" if self.source else ""
        lm = self.landmarks
        if lm.ndim != 3 or lm.shape[1:] != (N_POINTS, 2):
            raise PoseFormatError(f"pose landmarks{where} must have shape (T, 68, 2), got {tuple(lm.shape)}")
        if self.scores.shape != lm.shape[:2]:
            raise PoseFormatError(f"pose scores{where} must have shape {lm.shape[:2]}, got {tuple(self.scores.shape)}")
        if self.head_pose is not None and self.head_pose.shape != (lm.shape[0], 3):
            raise PoseFormatError(f"head_pose{where} must have shape ({lm.shape[0]}, 3), got {tuple(self.head_pose.shape)}")
        if not (self.fps > 0 and self.width > 0 and self.height > 0):
            raise PoseFormatError(f"pose{where} needs positive fps, width and height")
        if not np.isfinite(lm[self.scores > 0]).all():
            raise PoseFormatError(f"pose landmarks{where} contain NaN or inf in frames marked as seen")

    @property
    def visible(self) -> np.ndarray:
        """(T,) bool: frames where the face was seen."""
        return is_seen(self.landmarks, self.scores)

    def face_size(self) -> np.ndarray:
        """(T,) side of the landmark bounding box in canvas pixels (the larger of width and height)."""
        return face_size(self.landmarks)

    # -- edits ---------------------------------------------------------------------------------
    def slice(self, start: int, stop: int) -> "PoseSequence":
        hp = None if self.head_pose is None else self.head_pose[start:stop]
        return replace(self, landmarks=self.landmarks[start:stop], scores=self.scores[start:stop], head_pose=hp)

    def with_length(self, frames: int) -> "PoseSequence":
        """Trim, or loop (wrapping around) to exactly ``frames`` frames."""
        if frames < 0:
            raise PoseFormatError(f"a pose sequence cannot have {frames} frames")
        if len(self) == 0:
            raise PoseFormatError(f"pose sequence{(' ' + self.source) if self.source else ''} is empty")
        idx = np.arange(frames) % len(self)
        hp = None if self.head_pose is None else self.head_pose[idx]
        return replace(self, landmarks=self.landmarks[idx], scores=self.scores[idx], head_pose=hp)

    def resample(self, fps: float = FPS) -> "PoseSequence":
        """Linear resampling in time to ``fps``; the duration is kept (round(duration * fps) frames)."""
        if abs(fps - self.fps) < 1e-9 or len(self) == 0:
            return replace(self, fps=float(fps))
        n_out = max(1, frames_for_seconds(len(self) / self.fps, fps))
        t_src = np.arange(len(self)) / self.fps
        t_out = np.arange(n_out) / fps
        pos = np.clip(np.interp(t_out, t_src, np.arange(len(self))), 0, len(self) - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, len(self) - 1)
        w = (pos - lo).astype(np.float32)

        def lerp(a: np.ndarray) -> np.ndarray:
            shape = (-1,) + (1,) * (a.ndim - 1)
            return a[lo] * (1 - w.reshape(shape)) + a[hi] * w.reshape(shape)

        # An interpolated frame is seen only if both neighbours are; an exact hit takes its own score.
        scores = np.where((w > 0)[:, None], np.minimum(self.scores[lo], self.scores[hi]), self.scores[lo])
        hp = None if self.head_pose is None else lerp(self.head_pose)
        return replace(self, landmarks=lerp(self.landmarks), scores=scores, head_pose=hp, fps=float(fps))

    def rescale(self, width: int, height: int) -> "PoseSequence":
        """Map coordinates onto a ``width`` x ``height`` canvas (scaling x and y independently)."""
        s = np.array([width / self.width, height / self.height], np.float32)
        return replace(self, landmarks=self.landmarks * s, width=int(width), height=int(height))

    # -- Parquet -------------------------------------------------------------------------------
    def to_table(self, extra: Optional[dict] = None) -> pa.Table:
        """The Parquet form as an Arrow table; ``extra`` adds per-frame columns (``clip_id``, ``bbox``)."""
        t = len(self)
        cols = {
            "frame": pa.array(np.arange(t, dtype=np.int32)),
            "landmarks": _fixed_list(self.landmarks.reshape(t, N_POINTS * 2)),
            "scores": _fixed_list(self.scores),
        }
        if self.head_pose is not None:
            cols["head_pose"] = _fixed_list(self.head_pose)
        for name, values in (extra or {}).items():
            arr = np.asarray(values)
            cols[name] = _fixed_list(arr.astype(np.float32)) if arr.ndim == 2 else pa.array(values)
        meta = {
            "facepose.layout": LAYOUT,
            "facepose.fps": repr(float(self.fps)),
            "facepose.width": str(int(self.width)),
            "facepose.height": str(int(self.height)),
            "facepose.version": FORMAT_VERSION,
            "facepose.source": self.source,
        }
        # String-valued meta (e.g. the audio URI that drove the pose) travels with the file.
        meta.update({f"facepose.meta.{k}": v for k, v in self.meta.items() if isinstance(v, str)})
        return pa.table(cols).replace_schema_metadata(meta)

    def to_parquet_bytes(self, extra: Optional[dict] = None) -> bytes:
        buf = io.BytesIO()
        pq.write_table(self.to_table(extra), buf, compression="zstd")
        return buf.getvalue()

    def save(self, uri: str, extra: Optional[dict] = None) -> None:
        """Write the Parquet form to a path or URI (atomically, through facepose.storage)."""
        from facepose import storage

        storage.write_bytes(uri, self.to_parquet_bytes(extra))

    @classmethod
    def from_table(cls, table: pa.Table, source: str = "") -> "PoseSequence":
        name = source or "pose table"
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if meta.get("facepose.layout") != LAYOUT:
            raise PoseFormatError(
                f"{name} is not a facepose pose file: schema metadata facepose.layout is "
                f"{meta.get('facepose.layout')!r}, expected {LAYOUT!r}"
            )
        for col in ("frame", "landmarks", "scores"):
            if col not in table.column_names:
                raise PoseFormatError(f"{name} has no {col!r} column")
        landmarks = _read_fixed(table, "landmarks", N_POINTS * 2, name).reshape(-1, N_POINTS, 2)
        scores = _read_fixed(table, "scores", N_POINTS, name)
        head_pose = _read_fixed(table, "head_pose", 3, name) if "head_pose" in table.column_names else None
        frames = table.column("frame").to_numpy()
        if len(frames) and not np.array_equal(np.sort(frames), np.arange(len(frames))):
            raise PoseFormatError(f"{name}: frame column must number the rows 0..{len(frames) - 1}")
        order = np.argsort(frames, kind="stable")
        try:
            fps = float(meta.get("facepose.fps", "24"))
            width = int(meta.get("facepose.width", "512"))
            height = int(meta.get("facepose.height", "512"))
        except ValueError:
            raise PoseFormatError(f"{name}: bad facepose.fps/width/height metadata") from None
        return cls(
            landmarks=landmarks[order],
            scores=scores[order],
            head_pose=None if head_pose is None else head_pose[order],
            fps=fps,
            width=width,
            height=height,
            source=source or meta.get("facepose.source", ""),
            meta={k[len("facepose.meta."):]: v for k, v in meta.items() if k.startswith("facepose.meta.")},
        )

    @classmethod
    def from_parquet_bytes(cls, data: bytes, source: str = "") -> "PoseSequence":
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as e:
            raise PoseFormatError(f"{source or 'pose data'} is not a readable Parquet file: {e}") from None
        return cls.from_table(table, source=source)

    @classmethod
    def load(cls, uri: str) -> "PoseSequence":
        from facepose import storage

        return cls.from_parquet_bytes(storage.read_bytes(uri), source=str(uri))


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _read_fixed(table: pa.Table, column: str, width: int, name: str) -> np.ndarray:
    col = table.column(column).combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != width:
        raise PoseFormatError(f"{name}: column {column!r} must be fixed_size_list<float32, {width}>, got {col.type}")
    if col.null_count:
        raise PoseFormatError(f"{name}: column {column!r} has null rows")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(col), width)
