"""Manifests and results (facepose.manifest): formats, per-row validation, input digests, planning a
rerun, and results that list each job once. Storage is real: local files and moto's S3 on loopback."""

from __future__ import annotations

import json
import os
import time

import numpy as np
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
    ({"job_id": "a/b", "reference": "r.png", "driver": "preset:nod"}, "#1", "job_id holds '/'"),
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


def _kind(name="render", *overrides):
    from facepose.batch import get_kind
    from facepose.config import load_config

    return get_kind(name, load_config(list(overrides), []))


def _render_manifest(tmp_path, rows=None) -> str:
    (tmp_path / "ref.png").write_bytes(b"image bytes")
    uri = str(tmp_path / "m.csv")
    mf.write_rows(uri, rows or [{"job_id": "j", "reference": "ref.png", "driver": "preset:nod", "seconds": 1}])
    return uri


def _curate_manifest(tmp_path) -> str:
    (tmp_path / "v.mp4").write_bytes(b"video bytes")
    uri = str(tmp_path / "c.csv")
    mf.write_rows(uri, [{"video_id": "j", "video": "v.mp4"}])
    return uri


@pytest.mark.parametrize("kind_name", ["render", "curate"])
def test_one_rerun_rule_for_every_kind(tmp_path, kind_name):
    """ok + same inputs: skipped; failed: rerun only with retry_failed unless transient; changed inputs rerun."""
    from facepose.batch.plan import plan_run
    from facepose.batch.results import write_part

    kind = _kind(kind_name)
    manifest = _render_manifest(tmp_path) if kind_name == "render" else _curate_manifest(tmp_path)
    out = str(tmp_path / "out")
    first = plan_run(kind, manifest, out)
    assert [j[kind.id_column] for j in first.todo] == ["j"]
    digest = first.todo[0]["input_digest"]

    def plan_after(row, **kw):
        write_part(kind, out, "20260101T000000-aaaaaaaa", "0", [row])
        return plan_run(kind, manifest, out, **kw)

    assert plan_after(kind.result("j", "ok", input_digest=digest)).todo == []
    failed = kind.error_row("j", InputError("bad input"), input_digest=digest)
    time.sleep(1.1)  # finished_at has a resolution of one second: the newer row must win
    assert plan_after(failed).todo == [] and plan_after(failed, retry_failed=True).todo
    time.sleep(1.1)
    assert plan_after(kind.error_row("j", StorageError("endpoint down", transient=True), input_digest=digest)).todo
    time.sleep(1.1)
    assert plan_after(kind.result("j", "ok", input_digest="older inputs")).todo


def test_a_done_marker_counts_as_finished_when_the_results_missed_it(tmp_path):
    from facepose.batch.plan import plan_run

    kind, manifest, out = _kind(), _render_manifest(tmp_path), str(tmp_path / "out")
    job = plan_run(kind, manifest, out).todo[0]
    storage.write_text(job["marker"], json.dumps(kind.result("j", "ok", input_digest=job["input_digest"])))
    plan = plan_run(kind, manifest, out)
    assert plan.todo == [] and [r["job_id"] for r in plan.kept] == ["j"] and plan.record[0]["status"] == "ok"
    storage.write_text(job["marker"], json.dumps(kind.result("j", "ok", input_digest="stale")))
    assert [j["job_id"] for j in plan_run(kind, manifest, out).todo] == ["j"]


def test_result_parts_merge_on_read_and_compact_once(tmp_path):
    from facepose.batch.results import compact, part_uris, read_results, write_part

    kind, out = _kind(), str(tmp_path / "out")
    write_part(kind, out, "20260101T000000-aaaaaaaa", "0", [mf.result_row("a", "error", error="boom"), mf.result_row("b", "ok", frames=3)])
    time.sleep(1.1)
    write_part(kind, out, "20260101T000001-bbbbbbbb", "0", [mf.result_row("a", "ok", frames=5), mf.result_row("b", "skipped"), mf.result_row("c", "ok")])
    rows = read_results(kind, out)
    assert sorted(rows) == ["a", "b", "c"] and rows["a"]["frames"] == 5 and rows["b"]["frames"] == 3  # skipped never replaces
    assert compact(kind, out, grace_s=1e12) == 3 and len(part_uris(out)) == 2  # young parts stay for concurrent readers
    table = pq.read_table(str(tmp_path / "out" / "results.parquet"))
    assert table.schema.equals(mf.RESULT_SCHEMA) and table.column("job_id").to_pylist() == ["a", "b", "c"]
    assert compact(kind, out, grace_s=0) == 3 and part_uris(out) == []  # old parts are folded in and deleted
    assert read_results(kind, out)["a"]["frames"] == 5 and mf.read_results(str(tmp_path / "out" / "results.parquet"))["c"]["status"] == "ok"


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.parquet"])
def test_planning_in_batches_checks_ids_across_batches_and_numbers_rows_of_the_whole_manifest(tmp_path, name):
    """A manifest planned 3 rows at a time: a duplicate id and a duplicate output in a later batch fail
    with the row numbers of the file, and the planned rows come back in manifest order."""
    from facepose.batch.plan import plan_run

    (tmp_path / "ref.png").write_bytes(b"photo bytes")
    rows = [{"job_id": f"j{i}", "reference": "ref.png", "driver": "preset:nod", "seconds": 1, "output": None} for i in range(8)]
    rows[5]["job_id"] = "j1"  # duplicate id, two batches after its first row
    rows[7]["output"] = "j2.mp4"  # the default output of j2
    uri = str(tmp_path / name)
    mf.write_rows(uri, rows)
    kind, out = _kind(), str(tmp_path / "out")
    plan = plan_run(kind, uri, out, batch_rows=3)
    assert [j["job_id"] for j in plan.todo] == ["j0", "j1", "j2", "j3", "j4", "j6"]
    errors = {r["job_id"]: r["error"] for r in plan.failed}
    assert "manifest row 6" in errors["#6"] and "first on row 2" in errors["#6"]
    assert "manifest row 8" in errors["j7"] and "also the output of job 'j2'" in errors["j7"]
    assert plan.todo[5]["job_id"] == "j6" and len(plan.todo) == 6 and plan.total == 8


def test_latest_result_per_id_in_arrow_matches_the_row_merge(tmp_path):
    """The columnar merge keeps, per id, the newest row, a later file on a tie, and never a skipped row over another."""
    from facepose.batch.results import latest, merge_into

    rows = [
        dict(mf.result_row("a", "error", error="boom"), finished_at="2026-01-01T00:00:01Z"),
        dict(mf.result_row("a", "ok", frames=5), finished_at="2026-01-01T00:00:02Z"),
        dict(mf.result_row("a", "skipped"), finished_at="2026-01-01T00:00:09Z"),
        dict(mf.result_row("b", "ok", frames=1), finished_at="2026-01-01T00:00:03Z"),
        dict(mf.result_row("b", "ok", frames=2), finished_at="2026-01-01T00:00:03Z"),
        dict(mf.result_row("c", "skipped"), finished_at="2026-01-01T00:00:03Z"),
        dict(mf.result_row("d", "ok", frames=7), finished_at="2026-01-01T00:00:05Z"),
        dict(mf.result_row("d", "error", error="later"), finished_at="2026-01-01T00:00:06Z"),
    ]
    import pyarrow as pa

    merged = latest(pa.Table.from_pylist(rows, schema=mf.RESULT_SCHEMA), "job_id").to_pylist()
    expected: dict = {}
    merge_into(expected, rows, "job_id")
    assert [r["job_id"] for r in merged] == ["a", "b", "c", "d"]
    assert {r["job_id"]: (r["status"], r["frames"]) for r in merged} == {k: (v["status"], v["frames"]) for k, v in expected.items()}


def test_a_spool_keeps_rows_on_disk_and_reads_them_again(tmp_path):
    from facepose.batch.plan import Spool
    from facepose.batch.results import iter_shards

    spool = Spool({"job_id": f"j{i}", "seconds": i / 2} for i in range(7))
    assert len(spool) == 7 and spool[6] == {"job_id": "j6", "seconds": 3.0} and spool.head(2) == [{"job_id": "j0", "seconds": 0.0}, {"job_id": "j1", "seconds": 0.5}]
    assert [len(s) for s in iter_shards(spool, 3)] == [3, 3, 1] and list(spool) == list(spool)
    spool.append({"job_id": "x"})
    assert len(list(spool)) == 8 and Spool() == [] and not Spool()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_claim_is_held_by_one_run_until_released_or_lapsed(tmp_path, s3, where):
    from facepose.batch.results import Claims

    out = str(tmp_path / "out") if where == "local" else f"{s3}/claims"
    a, b = Claims(out, "run-a", lease_s=3.0), Claims(out, "run-b", lease_s=3.0)
    try:
        assert a.take("j") and not b.take("j")
        time.sleep(3.6)  # a renews every lease_s/3: its claim does not lapse while it holds it
        assert not b.take("j")
        a.release("j")
        assert b.take("j") and not a.take("j")
        b._stop.set()  # b is "killed": no more renewals
        time.sleep(3.9)
        assert a.take("j")  # the lapsed claim is taken over
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_runs_taking_over_one_lapsed_claim_at_once_get_it_once(tmp_path, s3, where):
    import threading

    from facepose.batch.results import CLAIMS_DIR, Claims

    out = str(tmp_path / "out") if where == "local" else f"{s3}/takeover"
    jobs = [f"j{i}" for i in range(40)]
    for job in jobs:  # claims of a killed run, lapsed a minute ago
        storage.write_text(storage.join(out, CLAIMS_DIR, f"{job}.json"), json.dumps({"run_id": "killed", "expires": time.time() - 60}))
    runs = [Claims(out, f"run-{k}", lease_s=30.0) for k in range(3)]
    won = {run.run_id: [] for run in runs}
    start = threading.Barrier(len(runs))

    def take_all(run):
        start.wait()
        won[run.run_id] = [job for job in jobs if run.take(job)]

    threads = [threading.Thread(target=take_all, args=(run,)) for run in runs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for run in runs:
            run.close()
    taken = sorted(job for got in won.values() for job in got)
    assert taken == sorted(jobs)  # each lapsed claim went to exactly one run


def test_empty_manifest_is_an_input_error(tmp_path):
    from facepose.batch.plan import plan_run

    (tmp_path / "m.csv").write_text("job_id,reference,driver\n")
    with pytest.raises(InputError, match="no rows"):
        plan_run(_kind(), str(tmp_path / "m.csv"), str(tmp_path / "out"))


# -- manifests as users save them -------------------------------------------------------------------------
def test_an_excel_windows_1252_csv_is_read_with_its_accents(tmp_path, caplog):
    uri = tmp_path / "m.csv"
    uri.write_bytes("job_id,reference,driver\ncafé,réf.png,preset:nod\n".encode("cp1252"))
    rows = mf.read_rows(str(uri), ("job_id", "reference", "driver"))
    assert rows == [{"job_id": "café", "reference": "réf.png", "driver": "preset:nod"}]
    assert "Windows-1252" in caplog.text


def test_bytes_that_are_neither_utf8_nor_windows_1252_fail_in_one_line(tmp_path):
    uri = tmp_path / "m.csv"
    uri.write_bytes(b"job_id,reference,driver\nx,\x81\x8d,preset:nod\n")
    with pytest.raises(InputError) as e:
        mf.read_rows(str(uri), ("job_id",))
    assert str(uri) in str(e.value) and "CSV UTF-8" in str(e.value) and "\n" not in str(e.value)


def test_semicolon_and_tab_separated_manifests_are_detected(tmp_path):
    for sep in (";", "\t"):
        uri = tmp_path / "m.csv"
        uri.write_text(sep.join(["job_id", "reference", "driver", "seconds"]) + "\n" + sep.join(["a", "r.png", "preset:nod", "1,5"]) + "\n")
        assert mf.read_rows(str(uri), ("job_id", "reference", "driver")) == [{"job_id": "a", "reference": "r.png", "driver": "preset:nod", "seconds": "1,5"}]


def test_missing_columns_say_what_the_header_holds(tmp_path):
    uri = tmp_path / "m.csv"
    uri.write_text("id|photo|driver\n1|r.png|preset:nod\n")
    with pytest.raises(InputError) as e:
        mf.read_rows(str(uri), ("job_id", "reference", "driver"))
    assert "missing the column(s) job_id, reference" in str(e.value) and "'id|photo|driver'" in str(e.value)
    mf.write_rows(str(tmp_path / "m.parquet"), [{"id": "1"}])
    with pytest.raises(InputError, match="missing the column"):
        mf.read_rows(str(tmp_path / "m.parquet"), ("job_id",))


@pytest.mark.parametrize("job_id", ["课程-第一课", "درس ١", "Ünïcödé lesson", "a.b_c-1"])
def test_ids_in_any_script_that_make_safe_file_names_are_accepted(job_id):
    jobs, errors = mf.parse_render_rows([{"job_id": job_id, "reference": "r.png", "driver": "preset:nod"}], "s3://out/run")
    assert errors == [] and jobs[0].output == f"s3://out/run/{job_id}.mp4" and jobs[0].marker.endswith(f"/_done/{job_id}.json")


@pytest.mark.parametrize("job_id,message", [("a/b", "'/'"), ("..\\x", "starts with '.'"), (".hidden", "starts with '.'"), ("tab\there", "'\\t'"),
                                            ("x" * 129, "129 characters long; at most 128"), ("字" * 70, "210 bytes long in UTF-8; at most 200"), ("a:b", "':'")])
def test_ids_that_are_not_safe_file_names_fail_alone(job_id, message):
    jobs, errors = mf.parse_render_rows([{"job_id": job_id, "reference": "r.png", "driver": "preset:nod"},
                                         {"job_id": "ok", "reference": "r.png", "driver": "preset:nod"}], "s3://out/run")
    assert [j.job_id for j in jobs] == ["ok"] and message in errors[0]["error"] and errors[0]["job_id"] == "#1"


def test_a_job_asking_for_more_than_max_seconds_fails_alone():
    rows = [{"job_id": "long", "reference": "r.png", "driver": "preset:nod", "seconds": 601},
            {"job_id": "ok", "reference": "r.png", "driver": "preset:nod", "seconds": 600}]
    jobs, errors = mf.parse_render_rows(rows, "out", max_seconds=600)
    assert [j.job_id for j in jobs] == ["ok"] and errors[0]["job_id"] == "long"
    assert "more than batch.max_seconds=600" in errors[0]["error"]
    assert _kind("render", "batch.max_seconds=1000").parse(rows, "out", "")[1] == []


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
    from facepose.batch.plan import plan_run

    plan = plan_run(_kind(), str(examples / "manifest.csv"), "out-not-written")
    assert plan.failed == [] and len(plan.todo) >= 6
    assert {source_kind(j["driver"], j["driver_type"]) for j in plan.todo} == {"preset", "video", "audio", "pose", "text"}
    jobs, errors = mf.parse_curate_rows(mf.read_rows(str(examples / "curate.csv")), base=str(examples))
    assert errors == [] and all(Path(j.video).is_file() for j in jobs)
    assert sum(p.stat().st_size for p in examples.iterdir()) < 3 * 1024 * 1024


class _BrokenRenderer:
    """A renderer with a bug: numpy raises ValueError deep inside it."""

    name = "broken"

    def render(self, reference, pose, **kw):
        yield np.zeros(3) + np.zeros(4)  # operands could not be broadcast


def test_a_value_error_in_a_renderer_is_internal_and_an_unknown_backend_is_input(tmp_path, astronaut_png, caplog):
    job = _job(tmp_path, reference=str(astronaut_png), seconds=0.5)
    bug = mf.run_render_job(job.to_row(), None, {"warp": _BrokenRenderer()})
    assert bug["status"] == "error" and bug["error_kind"] == "internal"
    assert bug["error"].startswith("ValueError: operands could not be broadcast"), bug["error"]
    assert "Traceback" in caplog.text  # logged with its traceback for whoever fixes it
    unknown = mf.run_render_job(_job(tmp_path, backend="teleport").to_row(), None, {})
    assert unknown["error_kind"] == "input" and "unknown renderer 'teleport'; choose from" in unknown["error"]


def test_per_row_pose_controls_override_the_runs_config_and_enter_the_digest(tmp_path):
    """head_amplitude ... roll columns: a value overrides pose.adjust for its row, an empty cell keeps the
    run's config, an out-of-range value fails the row alone, and the values change the input digest."""
    from facepose.batch.plan import plan_run
    from facepose.config import Config, PoseAdjustConfig, PoseConfig

    (tmp_path / "ref.png").write_bytes(b"photo bytes")
    base = {"reference": "ref.png", "driver": "preset:nod", "seconds": 1}
    rows = [dict(base, job_id="plain"), dict(base, job_id="still", head_amplitude=0, yaw=""), dict(base, job_id="turned", yaw=-20.5, blink_rate=12),
            dict(base, job_id="wild", smoothing=2), dict(base, job_id="word", expression="lots")]
    uri = str(tmp_path / "m.csv")
    mf.write_rows(uri, rows)
    plan = plan_run(_kind(), uri, str(tmp_path / "out"))
    jobs = {j["job_id"]: j for j in plan.todo}
    assert jobs["plain"]["adjust"] is None and jobs["still"]["adjust"] == {"head_amplitude": 0.0}
    assert jobs["turned"]["adjust"] == {"yaw": -20.5, "blink_rate": 12.0}
    errors = {r["job_id"]: r["error"] for r in plan.failed}
    assert "smoothing must be between 0 and 1" in errors["wild"] and "expression 'lots' is not a number" in errors["word"]
    digests = {j["input_digest"] for j in jobs.values()}
    assert len(digests) == 3  # same inputs otherwise: the controls make the difference
    cfg = Config(pose=PoseConfig(adjust=PoseAdjustConfig(expression=0.5)))  # the run's own setting
    row_cfg = mf.with_adjust(cfg, jobs["turned"]["adjust"])
    assert (row_cfg.pose.adjust.yaw, row_cfg.pose.adjust.blink_rate, row_cfg.pose.adjust.expression) == (-20.5, 12.0, 0.5)
    assert cfg.pose.adjust.yaw == 0.0  # the run's config is untouched


def test_videos_curated_before_the_timing_fix_are_curated_again_once(tmp_path, monkeypatch):
    """The curate digest carries CURATE_VERSION: a result with the digest of an older version (here:
    the digest as it was before the field existed) reruns; an ok result of this version is kept."""
    from dataclasses import asdict

    from facepose import curate as cu
    from facepose.batch.plan import plan_run
    from facepose.batch.results import write_part

    kind = _kind("curate")
    manifest, out = _curate_manifest(tmp_path), str(tmp_path / "out")
    job = plan_run(kind, manifest, out).todo[0]
    c, cfg = asdict(kind.cfg.curate), kind.cfg
    settings = {k: c[k] for k in ("fps", "clip_size", "crop_margin", "shot_threshold", "min_clip_s", "max_clip_s", "min_face_px",
                                   "max_missing", "min_sharpness", "smooth", "sample_rate", "n_mels", "crf")}
    before_fix = mf.digest({"video": job["video"], "video_fp": storage.fingerprint(job["video"]), "audio": None, "audio_fp": None, "start": None,
                            "end": None, "curate": settings, "face": asdict(cfg.face)})
    assert before_fix != job["input_digest"]
    write_part(kind, out, "20260101T000000-aaaaaaaa", "0", [kind.result("j", "ok", input_digest=before_fix)])
    assert [j["video_id"] for j in plan_run(kind, manifest, out).todo] == ["j"]  # curated before the fix: again
    time.sleep(1.1)
    write_part(kind, out, "20260101T000002-bbbbbbbb", "0", [kind.result("j", "ok", input_digest=job["input_digest"])])
    assert plan_run(kind, manifest, out).todo == []  # once
    monkeypatch.setattr(cu, "CURATE_VERSION", cu.CURATE_VERSION + 1)
    assert plan_run(kind, manifest, out).todo[0]["input_digest"] not in (job["input_digest"], before_fix)


def test_outputs_are_unique_across_batches_without_keeping_every_default_path():
    """Only named outputs are remembered; a default <prefix>/<id>.mp4 is known from its id."""
    seen: dict = {}
    batch1 = [{"job_id": "x", "reference": "r.png", "driver": "preset:nod", "output": "y.mp4"},
              {"job_id": "p", "reference": "r.png", "driver": "preset:nod", "output": "sub/p2.mp4"},
              {"job_id": "bad", "reference": "r.png", "driver": "preset:nod", "seconds": -1}]
    batch2 = [{"job_id": "y", "reference": "r.png", "driver": "preset:nod"},  # its default is x's output
              {"job_id": "q", "reference": "r.png", "driver": "preset:nod", "output": "p.mp4"},  # p's default path is free
              {"job_id": "r", "reference": "r.png", "driver": "preset:nod", "output": "bad.mp4"},  # so is a failed row's
              {"job_id": "s", "reference": "r.png", "driver": "preset:nod", "output": "./x.mp4"}]  # x renders to y.mp4
    jobs1, errors1 = mf.parse_render_rows(batch1, "out", seen=seen)
    jobs2, errors2 = mf.parse_render_rows(batch2, "out", start=4, seen=seen)
    assert [j.job_id for j in jobs1 + jobs2] == ["x", "p", "q", "r", "s"] and len(errors1) == 1
    assert [e["job_id"] for e in errors2] == ["y"] and "manifest row 4" in errors2[0]["error"] and "job 'x'" in errors2[0]["error"]
    assert set(seen["outputs"].values()) == {"x", "p", "q", "r", "s"}
