"""PoseSequence: the Parquet form of docs/contracts.md (round trips, schema, validation) and time edits."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facepose.errors import PoseFormatError
from facepose.pose.sequence import PoseSequence


def make_pose(t: int = 10, fps: float = 24.0, head_pose: bool = True, seed: int = 0, source: str = "") -> PoseSequence:
    rng = np.random.default_rng(seed)
    lm = rng.uniform(0, 500, (t, 68, 2)).astype(np.float32)
    scores = rng.uniform(0.2, 1.0, (t, 68)).astype(np.float32)
    scores[t // 2] = 0  # one lost frame
    hp = rng.uniform(-30, 30, (t, 3)).astype(np.float32) if head_pose else None
    return PoseSequence(landmarks=lm, scores=scores, fps=fps, width=640, height=480, head_pose=hp, source=source)


def assert_same(a: PoseSequence, b: PoseSequence) -> None:
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    np.testing.assert_array_equal(a.scores, b.scores)
    if a.head_pose is None:
        assert b.head_pose is None
    else:
        np.testing.assert_array_equal(a.head_pose, b.head_pose)
    assert (a.fps, a.width, a.height) == (b.fps, b.width, b.height)


# -- round trips ------------------------------------------------------------------------------------
def test_parquet_bytes_round_trip_is_exact():
    pose = make_pose(fps=29.97)
    back = PoseSequence.from_parquet_bytes(pose.to_parquet_bytes())
    assert_same(pose, back)


def test_round_trip_without_head_pose_keeps_it_absent():
    pose = make_pose(head_pose=False)
    table = pose.to_table()
    assert "head_pose" not in table.column_names
    back = PoseSequence.from_parquet_bytes(pose.to_parquet_bytes())
    assert back.head_pose is None
    assert_same(pose, back)


def test_local_path_round_trip(tmp_path):
    pose = make_pose()
    path = tmp_path / "sub" / "pose.parquet"
    pose.save(str(path))
    assert path.is_file()
    back = PoseSequence.load(str(path))
    assert_same(pose, back)
    assert back.source == str(path)


def test_s3_round_trip(s3):
    pose = make_pose(t=7)
    uri = f"{s3}/poses/a.parquet"
    pose.save(uri)
    back = PoseSequence.load(uri)
    assert_same(pose, back)
    assert back.source == uri


def test_file_written_to_s3_is_plain_parquet_readable_by_pyarrow(s3):
    from facepose import storage

    pose = make_pose(t=5)
    uri = f"{s3}/b.parquet"
    pose.save(uri)
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    assert table.num_rows == 5
    assert table.schema.metadata[b"facepose.layout"] == b"face68"


def test_empty_sequence_round_trips():
    pose = PoseSequence(landmarks=np.zeros((0, 68, 2), np.float32))
    back = PoseSequence.from_parquet_bytes(pose.to_parquet_bytes())
    assert len(back) == 0


# -- schema -----------------------------------------------------------------------------------------
def test_schema_matches_design():
    pose = make_pose(t=4, fps=30.0)
    schema = pq.read_schema(io.BytesIO(pose.to_parquet_bytes()))
    assert schema.field("frame").type == pa.int32()
    for name, width in (("landmarks", 136), ("scores", 68), ("head_pose", 3)):
        typ = schema.field(name).type
        assert pa.types.is_fixed_size_list(typ), name
        assert typ.list_size == width, name
        assert typ.value_type == pa.float32(), name
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["facepose.layout"] == "face68"
    assert float(meta["facepose.fps"]) == 30.0
    assert int(meta["facepose.width"]) == 640
    assert int(meta["facepose.height"]) == 480
    assert meta["facepose.version"]


def test_one_row_per_frame_with_xy_interleaved():
    pose = make_pose(t=3)
    table = pose.to_table()
    assert table.column("frame").to_pylist() == [0, 1, 2]
    row1 = np.asarray(table.column("landmarks")[1].as_py(), np.float32)
    np.testing.assert_array_equal(row1[0::2], pose.landmarks[1, :, 0])  # x0, y0, x1, y1, ...
    np.testing.assert_array_equal(row1[1::2], pose.landmarks[1, :, 1])


def test_extra_columns_clip_id_and_bbox_are_written():
    pose = make_pose(t=4)
    bbox = np.array([[1, 2, 3, 4]] * 4, np.float32) + np.arange(4, dtype=np.float32)[:, None]
    data = pose.to_parquet_bytes(extra={"clip_id": ["c0", "c0", "c1", "c1"], "bbox": bbox})
    table = pq.read_table(io.BytesIO(data))
    assert table.column("clip_id").to_pylist() == ["c0", "c0", "c1", "c1"]
    assert pa.types.is_string(table.schema.field("clip_id").type)
    btype = table.schema.field("bbox").type
    assert pa.types.is_fixed_size_list(btype) and btype.list_size == 4 and btype.value_type == pa.float32()
    np.testing.assert_array_equal(np.array(table.column("bbox").to_pylist(), np.float32), bbox)
    # a shard with extra columns still reads as a pose
    assert_same(pose, PoseSequence.from_parquet_bytes(data))


def test_rows_out_of_order_are_sorted_by_frame():
    pose = make_pose(t=6)
    table = pose.to_table()
    shuffled = table.take(pa.array([3, 0, 5, 1, 4, 2]))
    back = PoseSequence.from_table(shuffled)
    assert_same(pose, back)


# -- validation -------------------------------------------------------------------------------------
def test_wrong_landmark_shape_is_pose_format_error_naming_source():
    with pytest.raises(PoseFormatError, match=r"clip7\.mp4.*\(T, 68, 2\)"):
        PoseSequence(landmarks=np.zeros((5, 21, 2), np.float32), source="clip7.mp4")


def test_wrong_scores_shape_is_pose_format_error():
    with pytest.raises(PoseFormatError, match="scores"):
        PoseSequence(landmarks=np.zeros((5, 68, 2)), scores=np.zeros((5, 67)), source="x")


def test_nan_in_seen_frame_is_rejected_but_allowed_in_lost_frame():
    lm = np.zeros((2, 68, 2), np.float32)
    lm[1, 3, 0] = np.nan
    scores = np.ones((2, 68), np.float32)
    with pytest.raises(PoseFormatError, match="NaN"):
        PoseSequence(landmarks=lm, scores=scores)
    scores[1] = 0
    assert len(PoseSequence(landmarks=lm, scores=scores)) == 2


def _bytes_of(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_missing_column_is_pose_format_error_naming_source():
    table = make_pose().to_table()
    table = table.drop_columns(["scores"])
    with pytest.raises(PoseFormatError, match=r"s3://bucket/p\.parquet.*'scores'"):
        PoseSequence.from_parquet_bytes(_bytes_of(table), source="s3://bucket/p.parquet")


def test_wrong_list_size_is_pose_format_error_naming_source():
    pose = make_pose(t=3)
    table = pose.to_table()
    i = table.column_names.index("landmarks")
    bad = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(3 * 42, np.float32)), 42)  # 21 points
    table = table.set_column(i, "landmarks", bad)
    with pytest.raises(PoseFormatError, match=r"hands\.parquet.*landmarks.*136"):
        PoseSequence.from_parquet_bytes(_bytes_of(table), source="hands.parquet")


def test_variable_length_list_is_pose_format_error():
    pose = make_pose(t=2)
    table = pose.to_table()
    i = table.column_names.index("scores")
    table = table.set_column(i, "scores", pa.array([list(r) for r in pose.scores.tolist()], pa.list_(pa.float32())))
    with pytest.raises(PoseFormatError, match="scores"):
        PoseSequence.from_parquet_bytes(_bytes_of(table), source="v.parquet")


def test_wrong_layout_metadata_is_pose_format_error_naming_source(tmp_path):
    table = make_pose().to_table()
    meta = dict(table.schema.metadata)
    meta[b"facepose.layout"] = b"body25"
    path = tmp_path / "body.parquet"
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(PoseFormatError, match=r"body\.parquet.*body25"):
        PoseSequence.load(str(path))


def test_parquet_without_metadata_is_pose_format_error(tmp_path):
    table = make_pose().to_table().replace_schema_metadata(None)
    path = tmp_path / "plain.parquet"
    pq.write_table(table, path)
    with pytest.raises(PoseFormatError, match="plain.parquet"):
        PoseSequence.load(str(path))


def test_non_parquet_bytes_are_pose_format_error_naming_source(tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_bytes(b"this is not parquet at all\n" * 10)
    with pytest.raises(PoseFormatError, match=r"notes\.parquet.*not a readable Parquet"):
        PoseSequence.load(str(path))
    with pytest.raises(PoseFormatError, match="upload.bin"):
        PoseSequence.from_parquet_bytes(b"", source="upload.bin")


def test_frame_column_with_gaps_is_pose_format_error():
    table = make_pose(t=3).to_table()
    table = table.set_column(0, "frame", pa.array(np.array([0, 1, 5], np.int32)))
    with pytest.raises(PoseFormatError, match="frame"):
        PoseSequence.from_table(table, source="gappy.parquet")


# -- resampling and length --------------------------------------------------------------------------
def linear_pose(t: int, fps: float) -> PoseSequence:
    """Every point moves at a known constant velocity: x = 10 + 30 * time, y = 20 - 12 * time (+ point index)."""
    time = np.arange(t, dtype=np.float64) / fps
    lm = np.empty((t, 68, 2), np.float64)
    lm[..., 0] = 10 + 30 * time[:, None] + np.arange(68)
    lm[..., 1] = 20 - 12 * time[:, None] + 2 * np.arange(68)
    hp = np.stack([5 * time, -3 * time, np.zeros_like(time)], 1)
    return PoseSequence(landmarks=lm, fps=fps, head_pose=hp)


def test_resample_30_to_24_keeps_duration_and_interpolates_linearly():
    src = linear_pose(90, 30.0)  # 3 s
    out = src.resample(24.0)
    assert out.fps == 24.0
    assert len(out) == 72
    assert out.duration == pytest.approx(src.duration)
    expected = linear_pose(72, 24.0)
    np.testing.assert_allclose(out.landmarks, expected.landmarks, atol=1e-3)
    np.testing.assert_allclose(out.head_pose, expected.head_pose, atol=1e-4)


def test_resample_keeps_lost_frames_lost():
    src = linear_pose(30, 30.0)
    scores = src.scores.copy()
    scores[15] = 0
    src = PoseSequence(landmarks=src.landmarks, scores=scores, fps=30.0)
    out = src.resample(24.0)
    lost = np.flatnonzero(~out.visible)
    assert len(lost) >= 1
    t_lost = lost / 24.0
    assert np.all(np.abs(t_lost - 15 / 30.0) < 1 / 30.0)  # only output frames next to the lost one


def test_resample_to_same_fps_is_identity():
    src = make_pose(fps=24.0)
    assert_same(src, src.resample(24.0))


def test_with_length_loops_and_trims_exactly():
    src = make_pose(t=5)
    looped = src.with_length(12)
    assert len(looped) == 12
    for i in range(12):
        np.testing.assert_array_equal(looped.landmarks[i], src.landmarks[i % 5])
        np.testing.assert_array_equal(looped.scores[i], src.scores[i % 5])
        np.testing.assert_array_equal(looped.head_pose[i], src.head_pose[i % 5])
    trimmed = src.with_length(3)
    assert len(trimmed) == 3
    np.testing.assert_array_equal(trimmed.landmarks, src.landmarks[:3])
    assert trimmed.fps == src.fps and (trimmed.width, trimmed.height) == (src.width, src.height)


def test_with_length_of_empty_or_negative_is_pose_format_error():
    with pytest.raises(PoseFormatError):
        make_pose(t=3).with_length(-1)
    with pytest.raises(PoseFormatError, match="empty"):
        PoseSequence(landmarks=np.zeros((0, 68, 2)), source="blank").with_length(4)


def test_slice_keeps_all_fields_aligned():
    src = make_pose(t=8)
    part = src.slice(2, 5)
    assert len(part) == 3
    np.testing.assert_array_equal(part.landmarks, src.landmarks[2:5])
    np.testing.assert_array_equal(part.scores, src.scores[2:5])
    np.testing.assert_array_equal(part.head_pose, src.head_pose[2:5])


def test_string_meta_such_as_the_driving_audio_survives_parquet(tmp_path):
    import numpy as np

    from facepose.pose.sequence import PoseSequence

    pose = PoseSequence(np.zeros((3, 68, 2), np.float32), meta={"audio": "s3://b/speech.wav", "driver_type": "audio"})
    pose.save(str(tmp_path / "p.parquet"))
    back = PoseSequence.load(str(tmp_path / "p.parquet"))
    assert back.meta == {"audio": "s3://b/speech.wav", "driver_type": "audio"}
