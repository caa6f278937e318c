"""A curated dataset made by the real curation code from talking-face videos with known paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facepose import curate as cu
from facepose import storage
from tests.support.synth import write_face_video

CLIP_SIZE = 128  # curated crop side: small keeps the tests fast


def curate_dataset(out: str | Path, workdir: Path, astronaut: np.ndarray, speech: np.ndarray, videos: tuple[str, ...] = ("a", "b")) -> str:
    """Curate tiny talking-face videos (1.5-2 s, with speech) into ``out`` with facepose.curate."""
    from facepose.config import load_config
    from facepose.manifest import CurateJob

    curator = cu.Curator(load_config([f"curate.clip_size={CLIP_SIZE}"]))
    for i, vid in enumerate(videos):
        seconds = 1.5 + 0.5 * (i % 2)
        video = write_face_video(workdir / f"{vid}.mp4", astronaut, seconds=seconds, audio=speech[i * 4000:], amplitude=0.05 + 0.02 * i)
        result = curator(CurateJob(vid, video), str(out)).result
        assert result["status"] == "ok" and result["kept"] == 1, result
    return str(out)


def corrupt_clip(prefix: str, video_id: str) -> str:
    """Cut a curated clip's mp4 short (as an interrupted upload leaves it) -> its clip id."""
    clip_id = f"{video_id}_0000"
    uri = cu.clip_uri(prefix, video_id, clip_id)
    data = storage.read_bytes(uri)
    storage.write_bytes(uri, data[: len(data) // 3])
    return clip_id
