"""The training dataset over a curated dataset made by the curation code from real-face videos (the
astronaut photo moving along a known path, with real speech): what a sample holds, which frames it
decodes, and what happens with a corrupt clip or an empty dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from facepose import storage
from facepose.errors import InputError
from facepose.pose.sequence import PoseSequence
from facepose.train.config import DataConfig
from facepose.train.dataset import (
    CuratedClips,
    EpochBatches,
    audio_pairs,
    clip_preprocess,
    collate,
    pick_window,
    read_clips,
    resize_images,
)
from tests.support.datasets import CLIP_SIZE, corrupt_clip, curate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, astronaut, speech_16k) -> str:
    work = tmp_path_factory.mktemp("train-ds")
    return curate_dataset(work / "ds", work, astronaut, speech_16k)


def data_cfg(prefix: str, **kw) -> DataConfig:
    return DataConfig(**{"dataset": prefix, "size": 64, "num_frames": 1, "motion_frames": 2, "reference_margin": 4, **kw})


def whole_clip(uri: str) -> np.ndarray:
    from facepose.media.video import read_frames

    return read_frames(uri)


# -- what a sample holds ------------------------------------------------------------------------------
def test_a_sample_holds_targets_motion_frames_reference_pose_and_mask(dataset):
    ds = CuratedClips(data_cfg(dataset, num_frames=3), clip_size=32, seed=1)
    assert [c.clip_id for c in ds.clips] == ["a_0000", "b_0000"] and [c.frames for c in ds.clips] == [36, 48]
    s = ds[1]
    assert s["clip_id"] == "b_0000" and s["skipped"] == []
    assert s["pixel_values"].shape == (3, 3, 64, 64) and s["motion_values"].shape == (2, 3, 64, 64)
    assert s["reference_values"].shape == (3, 64, 64) and s["clip_reference"].shape == (3, 32, 32)
    assert s["pose"].shape == (3, 3, 64, 64) and s["mask"].shape == (1, 64, 64)
    for key in ("pixel_values", "motion_values", "reference_values"):
        assert s[key].min() >= -1 and s[key].max() <= 1
    # the targets, the motion frames before them and the reference are those frames of the clip
    frames = resize_images(whole_clip(ds.clips[1].uri), 64) * 2 - 1
    start, ref = s["start"], s["reference_index"]
    assert torch.allclose(s["pixel_values"], frames[start:start + 3], atol=1e-6)
    assert torch.allclose(s["motion_values"], frames[start - 2:start], atol=1e-6)
    assert torch.allclose(s["reference_values"], frames[ref], atol=1e-6)
    assert ref < start - 2 - 4 or ref >= start + 3 + 4  # at least reference_margin frames from the window
    # pose images: white dots at the target frames' landmarks; the mask holds them and not the corners
    pose = PoseSequence.from_table(pq.read_table(f"{dataset}/poses/b.parquet"))
    lm = pose.landmarks[start:start + 3] * 64 / CLIP_SIZE
    for t in range(3):
        xs, ys = np.floor(lm[t]).astype(int).T
        assert (s["pose"][t, :, ys, xs] == 1).all()
        assert s["pose"][t].mean() < 0.2  # dots on black
        assert (s["mask"][0, ys, xs] == 1).all()
    assert s["mask"][0, 0, 0] == 0 and s["mask"][0, -1, -1] == 0


def test_clip_input_is_normalised_like_the_pipeline(astronaut):
    from facepose.render.diffusion.pipeline import CLIP_MEAN, CLIP_STD
    from facepose.train import dataset as tds

    assert tds.CLIP_MEAN == CLIP_MEAN and tds.CLIP_STD == CLIP_STD
    x = clip_preprocess(astronaut, 224)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    assert x.shape == (3, 224, 224)
    back = x * std + mean
    assert back.min() >= 0 and back.max() <= 1
    assert abs(float(back.mean()) - astronaut.mean() / 255) < 0.02


def test_only_the_needed_frames_are_decoded(dataset, monkeypatch):
    from facepose.media import video

    decoded: list[int] = []
    real = video.read_frames

    def counting(*args, **kwargs):  # the real decoder, counting what it returns
        out = real(*args, **kwargs)
        decoded.append(len(out))
        return out

    monkeypatch.setattr(video, "read_frames", counting)
    ds = CuratedClips(data_cfg(dataset, num_frames=4), clip_size=32)
    ds[0]
    assert sum(decoded) == 4 + 2 + 1  # targets, motion frames, reference; the clip has 36


def test_windows_keep_the_reference_away_from_the_targets():
    rng = np.random.default_rng(0)
    for frames, n, m, margin in [(36, 1, 2, 12), (48, 24, 2, 12), (30, 24, 2, 12), (8, 4, 2, 0)]:
        for _ in range(200):
            start, ref = pick_window(frames, n, m, margin, rng)
            first, last = start - m, start + n - 1
            assert first >= 0 and last < frames and 0 <= ref < frames
            assert not first <= ref <= last  # never a frame of the window
            room = max(first - margin, 0) + max(frames - 1 - last - margin, 0)
            if frames >= n + m + 2 * margin + 1 and room:
                assert ref <= first - margin - 1 or ref >= last + margin + 1
    with pytest.raises(InputError):
        pick_window(5, 4, 2, 0, rng)


def test_epochs_draw_new_windows_and_a_seed_repeats_them(dataset):
    a = CuratedClips(data_cfg(dataset), clip_size=32, seed=3)
    b = CuratedClips(data_cfg(dataset), clip_size=32, seed=3)
    windows = []
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        sa, sb = a[1], b[1]
        assert (sa["start"], sa["reference_index"]) == (sb["start"], sb["reference_index"])
        windows.append((sa["start"], sa["reference_index"]))
    assert len(set(windows)) > 1


def test_batches_collate_and_repeats_give_more_windows_per_clip(dataset):
    ds = CuratedClips(data_cfg(dataset, repeats=3), clip_size=32)
    assert len(ds) == 6
    batch = collate([ds[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 1, 3, 64, 64) and batch["clip_id"] == ["a_0000", "b_0000", "a_0000", "b_0000"]
    assert batch["skipped"] == []


def test_workers_get_full_batches_of_disjoint_samples_epoch_after_epoch():
    n, batch = 5, 2
    streams = [iter(EpochBatches(n, batch, rank, 2, seed=0, epoch=3)) for rank in range(2)]
    firsts = [[next(s) for _ in range(6)] for s in streams]  # 12 samples per worker: several epochs
    for batches in firsts:
        assert all(len(b) == batch for b in batches)
        keys = [k for b in batches for k in b]
        assert [e for _, e in keys] == sorted(e for _, e in keys) and keys[0][1] == 3  # epochs run on in order
    for epoch in (3, 4):  # within an epoch the two workers cover every sample (one padded repeat)
        got = [i for batches in firsts for b in batches for i, e in b if e == epoch]
        assert set(got) == set(range(n)) and len(got) == 6
    again = iter(EpochBatches(n, batch, 0, 2, seed=0, epoch=3))
    assert [next(again) for _ in range(6)] == firsts[0]  # seeded: a resumed run sees the same order


# -- bad input ------------------------------------------------------------------------------------------
def test_corrupt_clip_is_skipped_and_counted(dataset, tmp_path):
    prefix = str(tmp_path / "ds")
    shutil.copytree(dataset, prefix)
    bad = corrupt_clip(prefix, "a")
    ds = CuratedClips(data_cfg(prefix), clip_size=32)
    s = ds[0]  # index 0 is the corrupt clip: the next one is used instead
    assert s["clip_id"] == "b_0000" and s["skipped"] == [bad]
    assert list(ds.bad) == [bad] and "truncated" in ds.bad[bad]
    again = ds[0]  # known bad now: skipped without another try
    assert again["clip_id"] == "b_0000" and again["skipped"] == []
    corrupt_clip(prefix, "b")
    with pytest.raises(InputError, match=f"no readable clip left in curated dataset {prefix}"):
        CuratedClips(data_cfg(prefix), clip_size=32)[0]


def test_empty_dataset_is_an_input_error_naming_the_prefix(dataset, tmp_path):
    empty = str(tmp_path / "empty")
    with pytest.raises(InputError, match=f"curated dataset {empty} has no usable clips.*facepose curate"):
        CuratedClips(data_cfg(empty))
    # videos still being curated (no done marker) do not count
    undone = str(tmp_path / "undone")
    shutil.copytree(dataset, undone)
    shutil.rmtree(Path(undone) / "_done")
    with pytest.raises(InputError, match=f"curated dataset {undone} has no usable clips"):
        read_clips(undone)
    with pytest.raises(InputError, match="no training dataset given; set data.dataset"):
        CuratedClips(data_cfg(""))


def test_clips_too_short_for_the_window_are_named(dataset):
    with pytest.raises(InputError, match="shorter than 103 frames.*lower data.num_frames"):
        CuratedClips(data_cfg(dataset, num_frames=100))


def test_reads_a_curated_dataset_on_s3(dataset, s3):
    prefix = f"{s3}/datasets/tiny"
    for path in sorted(Path(dataset).rglob("*")):
        if path.is_file():
            storage.upload(path, storage.join(prefix, path.relative_to(dataset).as_posix()))
    ds = CuratedClips(data_cfg(prefix), clip_size=32)
    assert ds.clips[0].uri == f"{prefix}/clips/a/a_0000.mp4"
    s = ds[0]
    assert s["clip_id"] == "a_0000" and s["pixel_values"].shape == (1, 3, 64, 64)


def test_audio2pose_pairs_are_the_clips_with_audio(dataset):
    pairs, skipped = audio_pairs(dataset)
    assert [c.clip_id for c, _ in pairs] == ["a_0000", "b_0000"] and skipped == {}
    assert [len(p) for _, p in pairs] == [36, 48]
