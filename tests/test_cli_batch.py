"""`facepose render-batch` and `facepose curate` as a user runs them: exit status (0 all ok or skipped,
1 some rows failed, 2 the run could not start), one-line errors for manifests that cannot be read,
manifests saved by Excel, `--dry-run`, and a rerun with nothing to do that starts neither Prefect nor Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.support import ROOT
from tests.support.cli import assert_one_line_error, facepose
from tests.support.net import free_port


@pytest.fixture()
def folder(tmp_path, astronaut_png):
    shutil.copy(astronaut_png, tmp_path / "ref.png")
    return tmp_path


@pytest.mark.slow
def test_render_batch_exits_1_when_a_row_failed_and_0_when_none_did(folder):
    (folder / "one.csv").write_text("job_id,reference,driver,seconds\nnod,ref.png,preset:nod,1\n")
    out = str(folder / "out")
    ok = facepose("render-batch", str(folder / "one.csv"), "-o", out)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (folder / "out" / "nod.mp4").is_file()
    # the shared case: a duplicate id fails alone; the run exits 1 and the other rows still render
    (folder / "dup.csv").write_text("job_id,reference,driver,seconds\nnod,ref.png,preset:nod,1\nnod,ref.png,preset:smile,1\n"
                                    "uniq,ref.png,preset:nod,1\n")
    failed = facepose("render-batch", str(folder / "dup.csv"), "-o", out)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "duplicate job_id" in failed.stderr + failed.stdout and (folder / "out" / "uniq.mp4").is_file()
    rows = {r["job_id"]: r["status"] for r in pq.read_table(folder / "out" / "results.parquet").to_pylist()}
    assert rows == {"nod": "ok", "uniq": "ok", "#2": "error"}
    # a row that failed while running stays failed on a plain rerun (exit 1 again), reruns with --retry-failed
    from PIL import Image

    Image.new("RGB", (320, 240), (90, 140, 200)).save(folder / "sky.png")
    (folder / "noface.csv").write_text("job_id,reference,driver,seconds\nnod,ref.png,preset:nod,1\nsky,sky.png,preset:nod,1\n")
    for attempt in ([], [], ["--retry-failed"]):
        result = facepose("render-batch", str(folder / "noface.csv"), "-o", out, "--json", *attempt)
        summary = json.loads(result.stdout)
        assert result.returncode == 1 and (summary["error"], summary["skipped"]) == (1, 1), (attempt, result.stdout[-2000:])
        assert summary["errors"][0]["job_id"] == "sky" and summary["errors"][0]["error_kind"] == "no_face"
    # nothing left to do: exit 0, and fast (no Prefect server, no Ray)
    t0 = time.perf_counter()
    again = facepose("render-batch", str(folder / "one.csv"), "-o", out)
    assert again.returncode == 0 and time.perf_counter() - t0 < 8, again.stderr[-2000:]
    assert "temporary server" not in again.stderr


def test_manifests_that_cannot_be_read_exit_2_with_one_line(folder, s3):
    out = str(folder / "out")
    (folder / "pipes.csv").write_text("job_id|reference|driver\na|ref.png|preset:nod\n")
    result = facepose("render-batch", str(folder / "pipes.csv"), "-o", out)
    assert result.returncode == 2
    assert_one_line_error(result, "pipes.csv", "job_id", "'job_id|reference|driver'")
    (folder / "binary.csv").write_bytes(b"\x81\x8d\x8f\x90\x00\x01\x02")
    result = facepose("render-batch", str(folder / "binary.csv"), "-o", out)
    assert result.returncode == 2
    assert_one_line_error(result, "binary.csv", "UTF-8")
    result = facepose("curate", str(folder / "missing.csv"), "-o", out)
    assert result.returncode == 2
    assert_one_line_error(result, "missing.csv")
    (folder / "videos.csv").write_text("id,path\nv,x.mp4\n")
    result = facepose("curate", str(folder / "videos.csv"), "-o", out)
    assert result.returncode == 2
    assert_one_line_error(result, "videos.csv", "video_id")
    dead = f"127.0.0.1:{free_port()}"
    result = facepose("-s", "storage.retries=1", "-s", "storage.backoff_s=0.01", "render-batch", "s3://bucket/m.csv", "-o", "s3://bucket/out",
                      env={"MINIO_ENDPOINT": dead})
    assert result.returncode == 2
    assert_one_line_error(result, "s3://bucket/m.csv", dead)
    assert not (folder / "out").exists()


def test_excel_manifests_windows_1252_and_semicolons_plan_in_a_dry_run(folder):
    shutil.copy(folder / "ref.png", folder / "réf.png")
    (folder / "excel.csv").write_bytes("job_id;reference;driver;seconds\ncafé;réf.png;preset:nod;1\n课程;ref.png;preset:smile;1\n".encode())
    result = facepose("render-batch", str(folder / "excel.csv"), "-o", str(folder / "out"), "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "to_run" in result.stdout and "│ 2 " in result.stdout.split("to_run")[1].splitlines()[0]
    (folder / "cp1252.csv").write_bytes("job_id,reference,driver,seconds\ncafé,réf.png,preset:nod,1\n".encode("cp1252"))
    result = facepose("render-batch", str(folder / "cp1252.csv"), "-o", str(folder / "out"), "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Windows-1252" in result.stderr and not (folder / "out").exists()
    (folder / "long.csv").write_text("job_id,reference,driver,seconds\nlong,ref.png,preset:nod,4000\n")
    result = facepose("render-batch", str(folder / "long.csv"), "-o", str(folder / "out"), "--dry-run")
    assert result.returncode == 1 and "batch.max_seconds=600" in result.stdout + result.stderr
    # a misspelt preset is a bad row at planning: the dry run names it and the choices, the rest plans
    (folder / "typo.csv").write_text("job_id,reference,driver,seconds\nok,ref.png,preset:nod,1\ntypo,ref.png,preset: nodd,1\n")
    result = facepose("render-batch", str(folder / "typo.csv"), "-o", str(folder / "out"), "--dry-run", "--json")
    plan = json.loads(result.stdout)
    assert result.returncode == 1 and (plan["to_run"], plan["error"]) == (1, 1), result.stdout[-2000:]
    assert plan["errors"][0]["job_id"] == "typo" and "unknown preset 'nodd'" in plan["errors"][0]["error"] and "head_shake" in plan["errors"][0]["error"]


def test_help_documents_the_exit_codes():
    for command in ("render-batch", "lesson-batch", "curate"):
        result = facepose(command, "--help")
        text = " ".join(result.stdout.split())
        assert result.returncode == 0 and "0 every row ok or skipped" in text and "2 the run could not start" in text and "130 interrupted" in text
        assert "--retry-failed" in text and "--dry-run" in text


def test_json_summaries_of_render_curate_and_lesson_batches(folder):
    """`--json` prints one JSON document on stdout: the plan of a dry run, the summary of a run with
    nothing left to do, and the error of a run that cannot start (exit codes unchanged)."""
    import json

    out = str(folder / "out")
    (folder / "jobs.csv").write_text("job_id,reference,driver,seconds\nnod,ref.png,preset:nod,1\nbad,ref.png,,1\n")
    plan = facepose("render-batch", str(folder / "jobs.csv"), "-o", out, "--dry-run", "--json")
    assert plan.returncode == 1, plan.stderr[-2000:]
    summary = json.loads(plan.stdout)
    assert (summary["jobs"], summary["to_run"], summary["error"], summary["dry_run"]) == (2, 1, 1, True)
    assert summary["errors"][0]["job_id"] == "bad" and "driver is empty" in summary["errors"][0]["error"]
    (folder / "v.mp4").write_bytes(b"not really a video")
    (folder / "videos.csv").write_text("video_id,video\nv,v.mp4\n")
    curate = json.loads(facepose("curate", str(folder / "videos.csv"), "-o", out, "--dry-run", "--json").stdout)
    assert (curate["videos"], curate["to_run"]) == (1, 1)
    (folder / "sound.csv").write_text("video_id,video,audio\nv,v.mp4,nope.wav\n")  # a missing audio file is named at planning too
    result = facepose("curate", str(folder / "sound.csv"), "-o", out, "--dry-run", "--json")
    sound = json.loads(result.stdout)
    assert result.returncode == 1 and (sound["to_run"], sound["error"]) == (0, 1), result.stdout[-2000:]
    assert "audio" in sound["errors"][0]["error"] and "nope.wav does not exist" in sound["errors"][0]["error"]
    (folder / "lessons.csv").write_text("job_id,reference,driver\nintro,ref.png,text:Hello there.\n")
    lesson = facepose("lesson-batch", str(folder / "lessons.csv"), "-o", out, "--dry-run", "--json")
    assert lesson.returncode == 0 and json.loads(lesson.stdout)["to_run"] == 1, lesson.stderr[-2000:]
    missing = facepose("render-batch", str(folder / "missing.csv"), "-o", out, "--json")
    assert missing.returncode == 2 and "missing.csv" in json.loads(missing.stdout)["error"]


@pytest.mark.slow
def test_an_interrupted_run_stops_soon_says_so_and_a_rerun_finishes_it(folder):
    rows = "".join(f"j{i:02d},ref.png,preset:nod,10\n" for i in range(12))  # 240 frames each: ~15 s of rendering at 2 workers
    (folder / "m.csv").write_text("job_id,reference,driver,seconds\n" + rows)
    out = folder / "out"
    cmd = [sys.executable, "-m", "facepose.cli", "-s", "render.workers=2", "render-batch", str(folder / "m.csv"), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ), start_new_session=True)
    deadline = time.monotonic() + 180
    while not (out / "_done").is_dir() or not any((out / "_done").iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    # Ctrl+C in a terminal: SIGINT to the whole process group (Prefect's temporary server must not be in
    # it, or the run spends minutes reporting to a dead server); SIGTERM takes the same path (cli._terminate)
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    stopped_s, done = time.monotonic() - t0, len(list((out / "_done").iterdir()))
    assert proc.returncode == 130 and "interrupted" in stderr, stderr[-3000:]
    assert done < 12 and stopped_s < 30, (done, stopped_s)  # the rows not started were not rendered first
    # an actor killed mid-render may leave its hidden temporary file; outputs are only ever renamed into place
    assert all(p.name.startswith(".") for p in out.iterdir() if ".part" in p.name)
    again = subprocess.run([*cmd, "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    summary = json.loads(again.stdout)
    assert again.returncode == 0 and summary["skipped"] >= done and summary["ok"] + summary["skipped"] == 12, again.stderr[-2000:]
    assert not [p.name for p in out.iterdir() if ".part" in p.name]  # the rerun removed what the killed attempts left


def test_an_unreachable_prefect_api_is_one_line_and_exit_2(folder):
    (folder / "one.csv").write_text("job_id,reference,driver,seconds\nnod,ref.png,preset:nod,1\n")
    url = f"http://127.0.0.1:{free_port()}/api"
    result = facepose("render-batch", str(folder / "one.csv"), "-o", str(folder / "out"), env={"PREFECT_API_URL": url})
    assert result.returncode == 2
    assert_one_line_error(result, url, "PREFECT_API_URL")
