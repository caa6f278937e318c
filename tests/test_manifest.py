"""Manifests and results (facepose.manifest): formats, per-row validation, input digests, planning a
rerun, and results that list each job once. Storage is real: local files and moto's S3 on loopback."""

from __future__ import annotations

import json
import os
import time

import pyarrow.parquet as pq
import pytest

from facepose import manifest as mf
from facepose import storage
from facepose.errors import InputError, StorageError

ROWS = [
    {"job_id": "a", "reference": "ref.png", "driver": "preset:nod", "seconds": 1.5, "seed": 3},
    {"job_id": "b", "reference": "s3://bucket/ref.png", "driver": "drive.mp4", "backend": "diffusion"},
]


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.parquet"])
def test_rows_round_trip_through_each_format(tmp_path, name):
    uri = str(tmp_path / name)
    mf.write_rows(uri, ROWS)
    back = mf.read_rows(uri)
    assert [r["job_id"] for r in back] == ["a", "b"]
    assert back[1]["reference"] == "s3://bucket/ref.png"
    assert float(back[0]["seconds"]) == 1.5
    # empty cells read as missing, not as empty strings
    assert back[1].get("seconds") is None


def test_unknown_manifest_format_names_the_file(tmp_path):
    (tmp_path / "m.txt").write_text("job_id\n")
    with pytest.raises(InputError, match=r"m\.txt.*\.csv, \.jsonl or \.parquet"):
        mf.read_rows(str(tmp_path / "m.txt"))


def test_garbled_jsonl_is_an_input_error_naming_the_file(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"job_id": "a"}\n{not json\n')
    with pytest.raises(InputError, match=r"m\.jsonl: not a readable jsonl table"):
        mf.read_rows(str(tmp_path / "m.jsonl"))


def test_missing_manifest_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="no such file"):
        mf.read_rows(str(tmp_path / "nope.csv"))


def test_rows_get_defaults_and_paths_relative_to_the_manifest(tmp_path):
    jobs, errors = mf.parse_render_rows(ROWS, "s3://out/run1", base=str(tmp_path), backend="warp", seed=7)
    assert errors == []
    a, b = jobs
    assert a.reference == str(tmp_path / "ref.png") and a.driver == "preset:nod"
    assert a.output == "s3://out/run1/a.mp4" and a.marker == "s3://out/run1/_done/a.json"
    assert (a.backend, a.seed, a.seconds) == ("warp", 3, 1.5)
    assert (b.backend, b.seed, b.seconds) == ("diffusion", 7, None)
    assert b.reference == "s3://bucket/ref.png" and b.driver == str(tmp_path / "drive.mp4")


def test_relative_paths_in_an_s3_manifest_resolve_in_its_bucket():
    assert mf.manifest_dir("s3://bkt/jobs/m.csv") == "s3://bkt/jobs"
    assert mf.resolve("refs/a.png", "s3://bkt/jobs") == "s3://bkt/jobs/refs/a.png"
    assert mf.resolve("../refs/a.png", "s3://bkt/jobs") == "s3://bkt/refs/a.png"


BAD = [
    ({"reference": "r.png", "driver": "preset:nod"}, "#1", "job_id is empty"),
    ({"job_id": "a/b", "reference": "r.png", "driver": "preset:nod"}, "#1", "job_id may only hold"),
    ({"job_id": "j", "driver": "preset:nod"}, "j", "reference is empty"),
    ({"job_id": "j", "reference": "r.png"}, "j", "driver is empty"),
    ({"job_id": "j", "reference": "r.png", "driver": "preset:nod", "seconds": "long"}, "j", "seconds 'long' is not a number"),
    ({"job_id": "j", "reference": "r.png", "driver": "preset:nod", "seconds": -1}, "j", "seconds must be positive"),
    ({"job_id": "j", "reference": "r.png", "driver": "preset:nod", "seed": "x"}, "j", "seed 'x' is not an integer"),
    ({"job_id": "j", "reference": "r.png", "driver": "preset:nod", "output": "s3://elsewhere/j.mp4"}, "j", "outside the output prefix"),
    ({"job_id": "j", "reference": "r.png", "driver": "preset:nod", "output": "s3://out/run/../other/j.mp4"}, "j", "outside the output prefix"),
    ({"job_id": "j", "reference": "r.png", "driver": "preset:nod", "output": "s3://out/run/_done/j.mp4"}, "j", "outside the output prefix"),
    ({"job_id": "j", "reference": "r.png", "driver": "preset:nod", "output": "s3://out/run/j.avi"}, "j", "must end in .mp4"),
]


@pytest.mark.parametrize("row,job_id,message", BAD, ids=[b[2] for b in BAD])
def test_a_bad_row_fails_alone_with_a_message_naming_it(row, job_id, message):
    good = {"job_id": "good", "reference": "r.png", "driver": "preset:nod"}
    jobs, errors = mf.parse_render_rows([row, good], "s3://out/run")
    assert [j.job_id for j in jobs] == ["good"]
    assert len(errors) == 1
    err = errors[0]
    assert err["job_id"] == job_id and err["status"] == "error" and err["error_kind"] == "input"
    assert message in err["error"] and "manifest row 1" in err["error"]


def test_duplicate_job_ids_and_outputs_fail_the_later_rows():
    rows = [
        {"job_id": "a", "reference": "r.png", "driver": "preset:nod"},
        {"job_id": "a", "reference": "r.png", "driver": "preset:smile"},
        {"job_id": "c", "reference": "r.png", "driver": "preset:nod", "output": "a.mp4"},
    ]
    jobs, errors = mf.parse_render_rows(rows, "out")
    assert [j.job_id for j in jobs] == ["a"]
    assert "duplicate job_id (first on row 1)" in errors[0]["error"] and errors[0]["job_id"] == "#2"
    assert "also the output of job 'a'" in errors[1]["error"] and errors[1]["job_id"] == "c"


def _job(tmp_path, **kw):
    ref = tmp_path / "ref.png"
    if not ref.exists():
        ref.write_bytes(b"image bytes")
    row = {"job_id": "j", "reference": str(ref), "driver": "preset:nod", **kw}
    jobs, errors = mf.parse_render_rows([row], str(tmp_path / "out"))
    assert not errors
    jobs, errors = mf.attach_digests(jobs)
    return jobs[0] if jobs else errors[0]


def test_input_digest_is_stable_and_changes_with_any_input(tmp_path):
    base = _job(tmp_path).input_digest
    assert base and _job(tmp_path).input_digest == base
    assert _job(tmp_path, seconds=2).input_digest != base
    assert _job(tmp_path, seed=1).input_digest != base
    assert _job(tmp_path, driver="preset:smile").input_digest != base
    assert _job(tmp_path, backend="diffusion").input_digest != base
    time.sleep(0.01)
    (tmp_path / "ref.png").write_bytes(b"other image bytes")  # the reference changed in place
    assert _job(tmp_path).input_digest != base


def test_missing_reference_or_driver_fails_that_job_at_planning(tmp_path):
    err = _job(tmp_path, reference=str(tmp_path / "missing.png"))
    assert err["status"] == "error" and "reference" in err["error"] and "missing.png does not exist" in err["error"]
    err = _job(tmp_path, driver=str(tmp_path / "gone.mp4"))
    assert "driver" in err["error"] and "gone.mp4 does not exist" in err["error"]


def test_s3_fingerprint_follows_the_object_content(s3):
    uri = f"{s3}/refs/a.png"
    assert mf.fingerprint(uri) is None
    storage.write_bytes(uri, b"one")
    first = mf.fingerprint(uri)
    storage.write_bytes(uri, b"two")
    assert first is not None and mf.fingerprint(uri) not in (None, first)
    assert mf.fingerprint(f"{s3}-no-such-bucket/x.png") is None


def _ok(job, **kw):
    return mf.result_row(job.job_id, "ok", output=job.output, frames=24, seconds=1.0, input_digest=job.input_digest, **kw)


def test_plan_skips_ok_jobs_and_reruns_changed_ones(tmp_path):
    job = _job(tmp_path)
    plan = mf.plan_render([job], [], {"j": _ok(job)}, {})
    assert plan.todo == [] and plan.done[0]["status"] == "ok"
    changed = _job(tmp_path, seconds=3)
    plan = mf.plan_render([changed], [], {"j": _ok(job)}, {})
    assert [j.job_id for j in plan.todo] == ["j"]


def test_failed_jobs_rerun_only_with_retry_failed_unless_transient(tmp_path):
    job = _job(tmp_path)
    failed = mf.error_result("j", InputError("bad"), input_digest=job.input_digest)
    assert mf.plan_render([job], [], {"j": failed}, {}).todo == []
    assert [j.job_id for j in mf.plan_render([job], [], {"j": failed}, {}, retry_failed=True).todo] == ["j"]
    blip = mf.error_result("j", StorageError("endpoint down", transient=True), input_digest=job.input_digest)
    assert [j.job_id for j in mf.plan_render([job], [], {"j": blip}, {}).todo] == ["j"]


def test_a_done_marker_counts_as_finished_when_the_results_file_missed_it(tmp_path):
    job = _job(tmp_path)
    plan = mf.plan_render([job], [], {}, {"j": _ok(job)})
    assert plan.todo == [] and plan.done[0]["input_digest"] == job.input_digest
    stale = dict(_ok(job), input_digest="old")
    assert [j.job_id for j in mf.plan_render([job], [], {}, {"j": stale}).todo] == ["j"]


def test_merged_results_list_each_job_once(tmp_path):
    uri = str(tmp_path / "results.parquet")
    first = [mf.result_row("a", "error", error="boom"), mf.result_row("b", "ok", frames=3)]
    mf.write_results(uri, mf.merge_results({}, first))
    again = [mf.result_row("a", "ok", frames=5), mf.result_row("b", "skipped"), mf.result_row("c", "ok")]
    mf.write_results(uri, mf.merge_results(mf.read_results(uri), again))
    table = pq.read_table(uri)
    assert table.schema.equals(mf.RESULT_SCHEMA)
    rows = {r["job_id"]: r for r in table.to_pylist()}
    assert table.column("job_id").to_pylist() == ["a", "b", "c"]
    assert rows["a"]["status"] == "ok" and rows["a"]["frames"] == 5
    assert rows["b"]["status"] == "ok" and rows["b"]["frames"] == 3  # "skipped" never replaces a result


def test_prepare_render_reads_an_s3_manifest_and_markers(s3, astronaut_png):
    storage.upload(astronaut_png, f"{s3}/in/ref.png")
    rows = [
        {"job_id": "one", "reference": "ref.png", "driver": "preset:nod", "seconds": 1},
        {"job_id": "two", "reference": "ref.png", "driver": "preset:smile", "seconds": 1},
        {"job_id": "three", "reference": "nope.png", "driver": "preset:nod"},
    ]
    mf.write_rows(f"{s3}/in/m.jsonl", rows)
    out = f"{s3}/out"
    plan = mf.prepare_render(f"{s3}/in/m.jsonl", out)
    assert [j.job_id for j in plan.todo] == ["one", "two"] and plan.todo[0].reference == f"{s3}/in/ref.png"
    assert plan.failed[0]["job_id"] == "three" and "nope.png does not exist" in plan.failed[0]["error"]
    # a killed run finished "one" (marker written) but never merged it into the results
    one = plan.todo[0]
    storage.write_text(one.marker, json.dumps(_ok(one)))
    plan = mf.prepare_render(f"{s3}/in/m.jsonl", out)
    assert [j.job_id for j in plan.todo] == ["two"] and [r["job_id"] for r in plan.done] == ["one"]


def test_empty_manifest_is_an_input_error(tmp_path):
    (tmp_path / "m.csv").write_text("job_id,reference,driver\n")
    with pytest.raises(InputError, match="no rows"):
        mf.prepare_render(str(tmp_path / "m.csv"), str(tmp_path / "out"))


def test_curation_rows_are_validated_one_by_one(tmp_path):
    rows = [
        {"video_id": "v1", "video": "a.mp4", "start": "1.5", "end": 4},
        {"video_id": "v2", "video": "b.mp4", "start": 3, "end": 2},
        {"video_id": "v3"},
        {"video_id": "v1", "video": "c.mp4"},
        {"video_id": "v4", "video": "s3://b/d.mp4", "audio": "d.wav", "start": "soon"},
    ]
    jobs, errors = mf.parse_curate_rows(rows, base=str(tmp_path))
    assert [(j.video_id, j.video, j.start, j.end) for j in jobs] == [("v1", os.path.join(str(tmp_path), "a.mp4"), 1.5, 4.0)]
    messages = [e["error"] for e in errors]
    assert "end (2.0) must be after start (3.0)" in messages[0]
    assert "video is empty" in messages[1]
    assert "duplicate video_id" in messages[2]
    assert "start 'soon' is not a number" in messages[3]
    assert [e["video_id"] for e in errors] == ["v2", "v3", "#4", "v4"]


def test_bundled_example_manifest_is_valid_and_uses_every_kind_of_pose_source():
    from pathlib import Path

    from facepose.pose.source import source_kind

    examples = Path(__file__).resolve().parents[1] / "examples"
    plan = mf.prepare_render(str(examples / "manifest.csv"), "out-not-written")
    assert plan.failed == [] and len(plan.todo) >= 6
    assert {source_kind(j.driver, j.driver_type) for j in plan.todo} == {"preset", "video", "audio", "pose"}
    jobs, errors = mf.parse_curate_rows(mf.read_rows(str(examples / "curate.csv")), base=str(examples))
    assert errors == [] and all(Path(j.video).is_file() for j in jobs)
    assert sum(p.stat().st_size for p in examples.iterdir()) < 3 * 1024 * 1024
