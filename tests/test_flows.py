"""The batch flows end to end with the real parts: manifests, inputs and outputs on an S3 server on
127.0.0.1 (moto) through the real ``minio`` client, a local Ray with 2 CPUs, real Prefect flow runs
(Prefect's test harness). Outputs are read back with another S3 client (boto3).

Covers: rendering a manifest of every kind of pose source, reruns (skip, changed input, retry-failed),
bad rows failing alone, a render killed midway and resumed, storage failing for a while mid-run,
curating real face videos with speech, the scheduled "new manifests" flow, and prefect.yaml.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from facepose import manifest as mf
from facepose import storage
from facepose.config import StorageConfig
from facepose.media.video import probe_video, write_video
from tests.support import ROOT
from tests.support.net import free_port
from tests.support.speech import espeak
from tests.support.synth import scenery_frames, write_face_video

FAST = ["render.workers=2", "render.shard_size=2", "storage.backoff_s=0.2", "batch.lease_s=3"]


# -- inputs on S3 -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(s3_server, tmp_path_factory, astronaut, astronaut_png, speech_16k):
    """Real inputs in s3://flows-in: the astronaut photo, speech, a driving video (the photo moved,
    with the speech), a pose Parquet, a photo without a face and a corrupt video."""
    from PIL import Image
    from skimage import data

    from facepose.pose.presets import load_preset

    tmp = tmp_path_factory.mktemp("flow-inputs")
    bucket = s3_server.bucket("flows-in")
    espeak("Good morning. This is a test.", tmp / "speech.wav", sample_rate=16000)
    write_face_video(tmp / "driving.mp4", astronaut, seconds=1.0, audio=speech_16k)
    load_preset("nod").slice(0, 24).save(str(tmp / "pose.parquet"))
    Image.fromarray(data.coffee()).save(tmp / "coffee.png")
    (tmp / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    uris = {"astronaut": f"{bucket}/astronaut.png"}
    storage.upload(astronaut_png, uris["astronaut"])
    for name in ("speech.wav", "driving.mp4", "pose.parquet", "coffee.png", "corrupt.mp4"):
        uris[name.split(".")[0]] = f"{bucket}/{name}"
        storage.upload(tmp / name, uris[name.split(".")[0]])
    return uris


def _get(s3_server, uri: str) -> bytes:
    loc = storage.parse(uri)
    return s3_server.boto3().get_object(Bucket=loc.bucket, Key=loc.path)["Body"].read()


def _frames(s3_server, uri: str, tmp_path: Path) -> int:
    """Frames of the mp4 at ``uri``, fetched with boto3 (not our client)."""
    path = tmp_path / f"check-{abs(hash(uri))}.mp4"
    path.write_bytes(_get(s3_server, uri))
    return probe_video(str(path)).frames


def _results(s3_server, out: str) -> list[dict]:
    return pq.read_table(io.BytesIO(_get(s3_server, f"{out}/results.parquet"))).to_pylist()


def _keys(s3_server, prefix: str) -> list[str]:
    loc = storage.parse(prefix)
    pages = s3_server.boto3().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.path.rstrip("/") + "/")
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def _preset_jobs(inputs, n: int, seconds: float = 1.0) -> list[dict]:
    presets = ["nod", "smile", "head_shake", "idle", "tilt", "listen", "look_around", "surprise"]
    return [{"job_id": f"p{i}", "reference": inputs["astronaut"], "driver": f"preset:{presets[i % len(presets)]}", "seconds": seconds} for i in range(n)]


# -- rendering --------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.prefect
def test_render_manifest_of_every_pose_source_end_to_end_on_s3(s3, s3_server, inputs, tmp_path):
    from flows.render import run_render_batch

    jobs = [
        {"job_id": "preset-nod", "reference": "astronaut.png", "driver": "preset:nod", "seconds": 1},
        {"job_id": "preset-talk", "reference": "astronaut.png", "driver": "preset:calm_talk", "seconds": 1.5, "seed": 2},
        {"job_id": "video", "reference": "astronaut.png", "driver": "driving.mp4"},
        {"job_id": "speech", "reference": "astronaut.png", "driver": "speech.wav", "seconds": 1},
        {"job_id": "pose-file", "reference": "astronaut.png", "driver": "pose.parquet"},
        {"job_id": "custom-out", "reference": "astronaut.png", "driver": "preset:smile", "seconds": 1, "output": "nested/smile.mp4"},
    ]
    manifest = "s3://flows-in/manifest.jsonl"  # relative paths resolve beside the manifest
    mf.write_rows(manifest, jobs)
    out = f"{s3}/renders"
    seen: list[tuple[int, int, str]] = []
    summary = run_render_batch(manifest, out, overrides=FAST, progress=lambda n, t, row: seen.append((n, t, row["job_id"])))

    assert (summary["ok"], summary["error"], summary["skipped"]) == (6, 0, 0), summary["errors"]
    expected = {"preset-nod": 24, "preset-talk": 36, "video": 24, "speech": 24, "pose-file": 24, "custom-out": 24}
    outputs = {j["job_id"]: f"{out}/{j['job_id']}.mp4" for j in jobs}
    outputs["custom-out"] = f"{out}/nested/smile.mp4"
    for job_id, frames in expected.items():
        assert _frames(s3_server, outputs[job_id], tmp_path) == frames, job_id
    results = _results(s3_server, out)
    assert sorted(r["job_id"] for r in results) == sorted(expected)
    assert all(r["status"] == "ok" and r["input_digest"] and r["output"] == outputs[r["job_id"]] for r in results)
    assert sorted(n for n, _, _ in seen) == list(range(1, 7)) and {t for _, t, _ in seen} == {6}
    # audio-driven jobs carry their audio
    speech = tmp_path / "speech-out.mp4"
    speech.write_bytes(_get(s3_server, outputs["speech"]))
    assert probe_video(str(speech)).has_audio

    # artifacts of the run: progress at 100 %, a summary table with one row per job
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[summary["flow_run_id"]])))
    by_key = {a.key: a for a in arts}
    assert by_key["render-progress"].data == 100.0
    table = by_key["render-summary"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert sorted(r["job_id"] for r in table) == sorted(expected)

    # a rerun skips everything; a changed input renders that job again, and only it
    before = {k: o["LastModified"] for k, o in _objects(s3_server, out).items()}
    again = run_render_batch(manifest, out, overrides=FAST)
    assert (again["ok"], again["skipped"]) == (0, 6)
    storage.write_bytes("s3://flows-in/pose.parquet", _slower_pose())
    changed = run_render_batch(manifest, out, overrides=FAST)
    assert (changed["ok"], changed["skipped"]) == (1, 5) and changed["outputs"] == [outputs["pose-file"]]
    after = {k: o["LastModified"] for k, o in _objects(s3_server, out).items()}
    redone = {k for k in before if k.endswith(".mp4") and after[k] != before[k]}
    assert redone == {storage.parse(outputs["pose-file"]).path}
    assert _frames(s3_server, outputs["pose-file"], tmp_path) == 12
    assert len(_results(s3_server, out)) == 6


def _objects(s3_server, prefix: str) -> dict:
    loc = storage.parse(prefix)
    return {o["Key"]: o for o in s3_server.boto3().list_objects_v2(Bucket=loc.bucket, Prefix=loc.path + "/").get("Contents", [])}


def _slower_pose() -> bytes:
    from facepose.pose.presets import load_preset

    return load_preset("nod").slice(0, 12).to_parquet_bytes()


@pytest.mark.ray
@pytest.mark.prefect
def test_bad_rows_fail_alone_with_clear_errors(s3, s3_server, inputs):
    from flows.render import run_render_batch

    jobs = _preset_jobs(inputs, 3) + [
        {"job_id": "missing-ref", "reference": "s3://flows-in/nobody.png", "driver": "preset:nod", "seconds": 1},
        {"job_id": "no-face", "reference": inputs["coffee"], "driver": "preset:nod", "seconds": 1},
        {"job_id": "corrupt-driver", "reference": inputs["astronaut"], "driver": inputs["corrupt"]},
        {"job_id": "unknown-preset", "reference": inputs["astronaut"], "driver": "preset:moonwalk", "seconds": 1},
        {"job_id": "escapes", "reference": inputs["astronaut"], "driver": "preset:nod", "output": "s3://flows-in/stolen.mp4"},
    ]
    manifest = f"{s3}/bad.csv"
    mf.write_rows(manifest, jobs)
    out = f"{s3}/renders"
    summary = run_render_batch(manifest, out, overrides=FAST)
    assert (summary["ok"], summary["error"]) == (3, 5)
    errors = {e["job_id"]: e["error"] for e in summary["errors"]}
    assert "reference s3://flows-in/nobody.png does not exist" in errors["missing-ref"]
    assert "no face found" in errors["no-face"] and "coffee.png" in errors["no-face"]
    assert "corrupt.mp4" in errors["corrupt-driver"]
    assert "moonwalk" in errors["unknown-preset"]
    assert "outside the output prefix" in errors["escapes"]
    results = {r["job_id"]: r for r in _results(s3_server, out)}
    assert len(results) == 8 and all(results[j["job_id"]]["status"] == "ok" for j in jobs[:3])
    assert {k: r["error_kind"] for k, r in results.items() if r["status"] == "error"} == {
        "missing-ref": "input", "no-face": "no_face", "corrupt-driver": "media", "unknown-preset": "input", "escapes": "input"}
    assert not storage.exists("s3://flows-in/stolen.mp4")
    assert [k for k in _keys(s3_server, out) if k.endswith(".mp4")] == [f"renders/p{i}.mp4" for i in range(3)]
    # a plain rerun leaves failed jobs alone, still counted as failed; --retry-failed reruns only them
    again = run_render_batch(manifest, out, overrides=FAST)
    assert (again["ok"], again["skipped"], again["error"]) == (0, 3, 5)
    assert {e["job_id"]: e["error_kind"] for e in again["errors"]}["no-face"] == "no_face"
    retry = run_render_batch(manifest, out, overrides=FAST, retry_failed=True)
    assert (retry["ok"], retry["skipped"], retry["error"]) == (0, 3, 5)
    assert len(_results(s3_server, out)) == 8


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url)


@pytest.mark.ray
@pytest.mark.prefect
def test_a_render_killed_midway_resumes_and_each_job_ends_ok_once(s3, s3_server, inputs, tmp_path):
    from flows.render import run_render_batch

    jobs = _preset_jobs(inputs, 8)
    manifest = f"{s3}/eight.csv"
    mf.write_rows(manifest, jobs)
    out = f"{s3}/renders"
    code = f"from flows.render import run_render_batch; run_render_batch({manifest!r}, {out!r}, overrides={FAST!r})"
    env = dict(os.environ, RAY_ADDRESS=_ray_address(), PREFECT_API_URL=_api_url(), PYTHONPATH=str(ROOT))
    import ray

    print("resources before the subprocess:", ray.available_resources())
    log = tmp_path / "killed-run.log"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            if any(k.startswith("renders/_done/") for k in _keys(s3_server, out)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the flow ended before it could be killed: {log.read_text()[-2000:]}"
        assert time.time() < deadline, f"no job finished in time: {log.read_text()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    import ray

    # Ray frees the dead driver's actors and their CPUs; the killed run's claims lapse after batch.lease_s
    _wait_for(lambda: ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"], 60, "the killed run's actors to go")
    done_before = [k for k in _keys(s3_server, out) if k.startswith("renders/_done/")]
    assert 1 <= len(done_before) < 8, "the kill should land midway"

    summary = run_render_batch(manifest, out, overrides=FAST)
    assert summary["error"] == 0, summary["errors"]
    assert summary["skipped"] >= len(done_before) and summary["ok"] + summary["skipped"] == 8
    results = _results(s3_server, out)
    assert sorted(r["job_id"] for r in results) == sorted(j["job_id"] for j in jobs)
    assert all(r["status"] == "ok" for r in results)
    mp4s = [k for k in _keys(s3_server, out) if k.endswith(".mp4")]
    assert mp4s == sorted(f"renders/p{i}.mp4" for i in range(8))
    for key in mp4s:  # no partial object: every video decodes whole
        assert _frames(s3_server, f"{s3}/{key}", tmp_path) == 24, key


@pytest.mark.ray
@pytest.mark.prefect
def test_storage_failing_for_a_while_mid_run_is_retried_to_completion(s3, s3_server, inputs, tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    from flows.render import run_render_batch

    # A second endpoint onto the same moto state, which the test takes down for a while mid-run.
    port = free_port()
    flaky = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    flaky.start()
    monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{port}")
    storage._clients.clear()
    jobs = _preset_jobs(inputs, 8, seconds=2.0)  # enough work left after the first job that the outage meets running shards
    manifest = f"{s3}/eight.csv"
    mf.write_rows(manifest, jobs)
    out = f"{s3}/renders"
    outage = {"down": None, "up": None}
    started = datetime.now(UTC)

    def a_shard_awaits_its_retry() -> bool:
        """A render-shard task of this run failed on the dead endpoint and Prefect scheduled its retry."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_="render-shard"), start_time=TaskRunFilterStartTime(after_=started)))
        return any(r.state_name in ("AwaitingRetry", "Retrying") or r.run_count > 1 for r in runs)

    def take_down_then_restore() -> None:
        nonlocal flaky
        deadline = time.time() + 120
        while time.time() < deadline and not any(k.startswith("renders/_done/") for k in _keys(s3_server, out)):
            time.sleep(0.05)
        flaky.stop()
        outage["down"] = time.time()
        while time.time() < deadline and not a_shard_awaits_its_retry():  # down until the run has felt it
            time.sleep(0.1)
        flaky = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        flaky.start()
        outage["up"] = time.time()

    saboteur = threading.Thread(target=take_down_then_restore, daemon=True)
    saboteur.start()
    try:
        summary = run_render_batch(manifest, out, overrides=FAST + ["storage.retries=1"])
    finally:
        saboteur.join(timeout=30)
        flaky.stop()
        monkeypatch.delenv("MINIO_ENDPOINT")
        storage._clients.clear()
        storage.configure(StorageConfig())
    assert outage["down"] is not None and outage["up"] is not None, "the outage never happened"
    assert (summary["ok"] + summary["skipped"], summary["error"]) == (8, 0), summary["errors"]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[summary["flow_run_id"]])))
    retried = [r.name for r in runs if r.name.startswith("render-shard") and r.run_count > 1]
    assert retried, "no shard was retried: the outage missed the run"
    results = _results(s3_server, out)
    assert sorted(r["job_id"] for r in results) == sorted(j["job_id"] for j in jobs) and all(r["status"] == "ok" for r in results)
    for job in jobs:
        assert _frames(s3_server, f"{out}/{job['job_id']}.mp4", tmp_path) == 48


@pytest.mark.ray
@pytest.mark.prefect
def test_two_runs_on_one_prefix_at_once_run_each_job_once_and_keep_every_row(s3, s3_server, inputs, tmp_path):
    from flows.render import run_render_batch

    jobs = _preset_jobs(inputs, 9)
    mf.write_rows(f"{s3}/first.csv", jobs[:6])
    mf.write_rows(f"{s3}/second.csv", jobs[3:])  # p3..p5 are in both
    out = f"{s3}/renders"
    summaries: dict[str, dict] = {}

    def run(name: str) -> None:
        summaries[name] = run_render_batch(f"{s3}/{name}.csv", out, overrides=FAST + ["batch.lease_s=120"])  # no lapse under load: claims alone keep the runs apart

    threads = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    first, second = summaries["first"], summaries["second"]
    assert first["error"] == second["error"] == 0, (first["errors"], second["errors"])
    rendered = first["outputs"] + second["outputs"]
    assert sorted(rendered) == sorted(f"{out}/{j['job_id']}.mp4" for j in jobs)  # each job rendered by one run only
    assert first["skipped"] + second["skipped"] == 3
    results = _results(s3_server, out)
    assert sorted(r["job_id"] for r in results) == sorted(j["job_id"] for j in jobs) and all(r["status"] == "ok" for r in results)
    assert not [k for k in _keys(s3_server, out) if k.startswith("renders/_claims/")]  # every claim given back
    # and a rerun of both has nothing to do: no Prefect flow run, no Ray
    again = run_render_batch(f"{s3}/second.csv", out, overrides=FAST)
    assert (again["ok"], again["skipped"], again["flow_run_id"]) == (0, 6, None)
    import ray

    _wait_for(lambda: ray.available_resources().get("CPU", 0) >= ray.cluster_resources()["CPU"], 60, "both runs' actors to go")


@pytest.mark.ray
@pytest.mark.prefect
def test_a_run_whose_actors_wait_for_a_cpu_claims_nothing_so_the_run_holding_the_cpus_finishes(s3, s3_server, inputs, capfd, caplog):
    # Run A's actors hold every CPU; run B starts while A renders, with two of A's later jobs in its
    # manifest and an actor that cannot start. If B claimed those jobs up front, A would wait for B's
    # claims while B waited for A's CPUs, for good (B renews its claims). A run claims a job only with a
    # started actor in hand, so A renders all of its jobs, stops, and B then finds its two done.
    import ray

    from flows.render import run_render_batch

    total = int(_all_cpus_free())
    jobs = _preset_jobs(inputs, 24, seconds=0.5)  # enough that B starts long before A's shards reach its two
    mf.write_rows(f"{s3}/cpu-a.csv", jobs)
    mf.write_rows(f"{s3}/cpu-b.csv", jobs[-2:])
    out = f"{s3}/renders-cpu"
    long_lease = ["storage.backoff_s=0.2", "batch.lease_s=120", "render.shard_size=1"]
    summaries: dict[str, dict] = {}
    a_rendering = threading.Event()

    def run_a() -> None:
        summaries["a"] = run_render_batch(f"{s3}/cpu-a.csv", out, overrides=long_lease + [f"render.workers={total}"], progress=lambda n, t, row: a_rendering.set())

    def run_b() -> None:
        summaries["b"] = run_render_batch(f"{s3}/cpu-b.csv", out, overrides=long_lease + ["render.workers=1"])

    caplog.set_level(logging.INFO, logger="prefect")
    a = threading.Thread(target=run_a, daemon=True)
    a.start()
    assert a_rendering.wait(120), "run A rendered nothing"
    assert ray.available_resources().get("CPU", 0) == 0  # A's actors hold every CPU
    b = threading.Thread(target=run_b, daemon=True)
    b.start()
    a.join(timeout=180)
    b.join(timeout=60)
    assert "a" in summaries and "b" in summaries, "the two runs waited on each other"
    assert (summaries["a"]["ok"], summaries["a"]["error"]) == (24, 0), summaries["a"]["errors"]
    assert (summaries["b"]["ok"], summaries["b"]["skipped"], summaries["b"]["error"]) == (0, 2, 0)
    logged = "".join(capfd.readouterr()) + caplog.text  # Prefect's log of both flow runs (the console's, or the records)
    assert "2 jobs: 0 ok, 0 failed, 2 skipped" in logged
    assert "Retry" not in logged  # jobs done by the other run are not mistaken for storage errors and retried
    assert not [k for k in _keys(s3_server, out) if k.startswith("renders-cpu/_claims/")]


class _Fragile:
    """An actor that dies (the whole process) on rows that ask for it."""

    def __init__(self, cfg, env=None):
        self.cfg = cfg

    def ready(self):
        return True

    def __call__(self, rows):
        if rows[0].get("crash"):
            os._exit(1)
        return [{"job_id": rows[0]["job_id"], "status": "ok", "pid": os.getpid()}]


@pytest.mark.ray
def test_an_actor_dying_fails_only_the_row_it_was_on():
    from tasks.pool import ActorPool

    def crashed(row, exc):
        return {"job_id": row["job_id"], "status": "error", "error": type(exc).__name__}

    pool = ActorPool(_Fragile, (None,), 1, num_cpus=0.5, on_crash=crashed, max_restarts=2)
    try:
        rows = [{"job_id": "a"}, {"job_id": "b", "crash": True}, {"job_id": "c"}, {"job_id": "d"}]
        results = pool.map(rows)
    finally:
        pool.shutdown()
    assert [r["status"] for r in results] == ["ok", "error", "ok", "ok"]
    assert "Actor" in results[1]["error"]  # Ray's actor-died error
    assert results[0]["pid"] != results[2]["pid"]  # Ray restarted the actor in a new process


class _Echo:
    def __init__(self, cfg, env=None):
        pass

    def ready(self):
        return True

    def __call__(self, rows):
        return [{"job_id": rows[0]["job_id"], "status": "ok", "pid": os.getpid()}]


def _crashed(row, exc):
    return {"job_id": row["job_id"], "status": "error", "error": str(exc)}


def _all_cpus_free() -> float:
    """The local Ray's CPUs, once earlier tests' actors have given theirs back."""
    import ray

    total = ray.cluster_resources()["CPU"]
    _wait_for(lambda: ray.available_resources().get("CPU", 0) >= total, 60, "earlier tests' actors to go")
    return total


@pytest.mark.ray
def test_rows_go_to_started_actors_not_to_one_waiting_for_a_cpu():
    # Another pool (here: one actor) holds a CPU; of this pool's two actors one starts and one cannot.
    # Rows queued on the waiting actor would wait for good (two concurrent runs did exactly that).

    from tasks.pool import ActorPool

    total = _all_cpus_free()
    free = int(total)
    holders = ActorPool(_Echo, (None,), max(free - 1, 1), num_cpus=1, on_crash=_crashed) if free > 1 else None
    pool = ActorPool(_Echo, (None,), 2, num_cpus=1, on_crash=_crashed)
    try:
        if holders is not None:
            holders.wait_ready(timeout=60)
        rows = [{"job_id": f"r{i}"} for i in range(6)]
        done: list = []
        worker = threading.Thread(target=lambda: done.append(pool.map(rows)), daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert done, "rows waited on an actor that could not start"
        assert [r["status"] for r in done[0]] == ["ok"] * 6 and len({r["pid"] for r in done[0]}) == 1
    finally:
        pool.shutdown()
        if holders is not None:
            holders.shutdown()


@pytest.mark.ray
def test_rows_are_admitted_only_with_a_started_actor_in_hand():
    # A batch run claims a job in admit(): a pool whose actor cannot start (every CPU is taken) must not
    # ask, or the run would hold claims another run waits on while its own rows wait for a CPU.

    from tasks.pool import ActorPool

    total = _all_cpus_free()
    holders = ActorPool(_Echo, (None,), int(total), num_cpus=1, on_crash=_crashed)
    waiting = ActorPool(_Echo, (None,), 1, num_cpus=1, on_crash=_crashed)
    asked: list[str] = []
    try:
        holders.wait_ready(timeout=60)
        done: list = []
        worker = threading.Thread(target=lambda: done.append(waiting.map([{"job_id": "w"}], admit=lambda r: asked.append(r["job_id"]) or True)), daemon=True)
        worker.start()
        worker.join(timeout=3)
        assert not done and asked == []  # still waiting for a CPU, nothing admitted
        # the holders run rows; declined rows give None, a raising admit stops new rows and is raised
        rows = [{"job_id": f"r{i}"} for i in range(4)]
        out = holders.map(rows, admit=lambda r: r["job_id"] != "r1")
        assert [r and r["status"] for r in out] == ["ok", None, "ok", "ok"]
        seen: list[str] = []

        def flaky(row):
            seen.append(row["job_id"])
            if row["job_id"] == "r2":
                raise OSError("storage is down")
            return True

        with pytest.raises(OSError, match="storage is down"):
            holders.map(rows, admit=flaky)
        assert seen == ["r0", "r1", "r2"]
        assert [r["status"] for r in holders.map(rows[:2])] == ["ok", "ok"]  # every actor came back to the queue
    finally:
        holders.shutdown()
        waiting.shutdown()
        worker.join(timeout=30)


def test_the_actor_module_imports_neither_prefect_nor_ray():
    # Ray imports the actor's module in every actor process: Prefect there costs each actor ~1.5 s of start.
    code = "import sys, tasks.actor; print(sorted(m for m in ('prefect', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "[]"


@pytest.mark.ray
@pytest.mark.prefect
def test_run_batch_starts_one_pool_before_the_flow_and_the_flow_runs_on_it(astronaut_png, tmp_path, monkeypatch):
    import tasks.pool
    import tasks.shard
    from flows.render import run_render_batch

    events, pools = [], []
    kind_pool, body = tasks.pool.kind_pool, tasks.shard.batch_flow_body

    def spy_pool(*args, **kwargs):
        pools.append(kind_pool(*args, **kwargs))
        events.append("pool")
        return pools[-1]

    def spy_body(*args, **kwargs):
        events.append("flow")
        return body(*args, **kwargs)

    monkeypatch.setattr(tasks.pool, "kind_pool", spy_pool)
    monkeypatch.setattr(tasks.shard, "batch_flow_body", spy_body)
    monkeypatch.setattr(sys.modules["flows.render"], "batch_flow_body", spy_body)
    rows = [{"job_id": f"j{i}", "reference": str(astronaut_png), "driver": "preset:nod", "seconds": 0.5} for i in range(3)]
    mf.write_rows(str(tmp_path / "m.csv"), rows)
    summary = run_render_batch(str(tmp_path / "m.csv"), str(tmp_path / "out"), overrides=["render.workers=2", "render.shard_size=2"])
    assert summary["ok"] == 3
    assert events == ["pool", "flow"]  # one pool, started before the flow run began
    assert len(pools[0].actors) == 2 and pools[0]._closed  # the flow ran on it; run_batch shut it down


# -- curation ---------------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.prefect
def test_curate_real_face_videos_with_speech_on_s3(s3, s3_server, astronaut, speech_16k, tmp_path):
    from flows.curate import run_curate

    rows = []
    for i, seconds in enumerate((1.25, 1.5, 1.25)):
        path = tmp_path / f"v{i}.mp4"
        if i == 1:  # a shot cut to scenery without a face: one clip kept, one dropped
            from tests.support.synth import moving_face_frames

            frames = list(moving_face_frames(astronaut, seconds)) + scenery_frames(1.0)
            n = len(frames)
            write_video(str(path), frames, fps=24, audio=np.resize(speech_16k, n * 16000 // 24), sample_rate=16000)
        else:
            write_face_video(path, astronaut, seconds=seconds, audio=speech_16k[i * 8000 :])
        storage.upload(path, f"{s3}/videos/v{i}.mp4")
        rows.append({"video_id": f"v{i}", "video": f"videos/v{i}.mp4"})
    rows.append({"video_id": "missing", "video": "videos/missing.mp4"})
    mf.write_rows(f"{s3}/curate.csv", rows)
    out = f"{s3}/dataset"
    summary = run_curate(f"{s3}/curate.csv", out, overrides=["curate.workers=2", "curate.shard_size=2"])

    assert (summary["videos"], summary["ok"], summary["error"]) == (4, 3, 1)
    assert summary["kept"] == 3 and summary["dropped"] == {"face_missing": 1} and summary["frames_per_s"] > 0 and summary["frames_per_worker_s"] > 0
    assert summary["frames"] == 30 + 60 + 30
    assert "missing.mp4 does not exist" in summary["errors"][0]["error"]
    keys = _keys(s3_server, out)
    for i in range(3):
        for key in (f"dataset/clips/v{i}/v{i}_0000.mp4", f"dataset/poses/v{i}.parquet", f"dataset/audio/v{i}.parquet",
                    f"dataset/index/v{i}.parquet", f"dataset/_done/v{i}.json"):
            assert key in keys
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(_get(s3_server, f"{out}/clips/v0/v0_0000.mp4"))
    info = probe_video(str(clip))
    assert (info.width, info.height, info.frames, info.has_audio) == (512, 512, 30, True)
    index = pq.read_table(io.BytesIO(_get(s3_server, f"{out}/index/v1.parquet"))).to_pylist()
    assert [(c["status"], c["reason"]) for c in index] == [("ok", None), ("dropped", "face_missing")]
    audio = pq.read_table(io.BytesIO(_get(s3_server, f"{out}/audio/v2.parquet")))
    assert audio.num_rows == 30 and max(audio.column("rms").to_pylist()) > 0.01
    results = pq.read_table(io.BytesIO(_get(s3_server, f"{out}/results.parquet"))).to_pylist()
    assert sorted(r["video_id"] for r in results) == ["missing", "v0", "v1", "v2"]
    # a rerun skips the videos whose done marker matches
    again = run_curate(f"{s3}/curate.csv", out, overrides=["curate.workers=2"])
    assert (again["skipped"], again["ok"], again["frames"]) == (3, 0, 0)


@pytest.mark.ray
@pytest.mark.prefect
def test_curate_reruns_a_failed_video_only_with_retry_failed(s3, s3_server, astronaut, tmp_path):
    from flows.curate import run_curate

    write_face_video(tmp_path / "good.mp4", astronaut, seconds=1.25)
    storage.upload(tmp_path / "good.mp4", f"{s3}/cv/good.mp4")
    storage.write_bytes(f"{s3}/cv/broken.mp4", b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    mf.write_rows(f"{s3}/cv/curate.csv", [{"video_id": "good", "video": "good.mp4"}, {"video_id": "broken", "video": "broken.mp4"}])
    out, fast = f"{s3}/cv-dataset", ["curate.workers=1"]
    first = run_curate(f"{s3}/cv/curate.csv", out, overrides=fast)
    assert (first["ok"], first["error"]) == (1, 1) and "broken.mp4" in first["errors"][0]["error"]
    plain = run_curate(f"{s3}/cv/curate.csv", out, overrides=fast)  # the same rule as render: a failed row stays failed
    assert (plain["ok"], plain["error"], plain["skipped"], plain["flow_run_id"]) == (0, 1, 1, None)
    assert "broken.mp4" in plain["errors"][0]["error"]
    retry = run_curate(f"{s3}/cv/curate.csv", out, overrides=fast, retry_failed=True)
    assert (retry["ok"], retry["error"], retry["skipped"]) == (0, 1, 1) and retry["flow_run_id"]
    results = {r["video_id"]: r for r in pq.read_table(io.BytesIO(_get(s3_server, f"{out}/results.parquet"))).to_pylist()}
    assert results["broken"]["finished_at"] >= first["errors"][0].get("finished_at", "") and results["good"]["status"] == "ok"


# -- scheduled bulk generation and deployments ----------------------------------------------------------
@pytest.mark.ray
@pytest.mark.prefect
def test_scheduled_flow_renders_each_new_manifest_once(s3, s3_server, inputs):
    from flows.render import render_new_manifests

    prefix, out = f"{s3}/manifests", f"{s3}/renders"
    mf.write_rows(f"{prefix}/monday.csv", _preset_jobs(inputs, 1))
    first = render_new_manifests(prefix, out, overrides=["render.workers=1"])
    assert [s["ok"] for s in first] == [1]
    assert render_new_manifests(prefix, out, overrides=["render.workers=1"]) == []
    mf.write_rows(f"{prefix}/tuesday.jsonl", _preset_jobs(inputs, 2)[1:])
    second = render_new_manifests(prefix, out, overrides=["render.workers=1"])
    assert [s["out"] for s in second] == [f"{out}/tuesday"]
    keys = _keys(s3_server, out)
    assert {"renders/monday/p0.mp4", "renders/tuesday/p1.mp4", "renders/_manifests/monday.json", "renders/_manifests/tuesday.json"} <= set(keys)


def test_prefect_yaml_deploys_the_flows_with_a_schedule_and_documented_parameters():
    from prefect.flows import Flow, load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert {"curate", "render", "render-new-manifests", "train"} <= set(deployments)
    for name in ("curate", "render", "render-new-manifests"):
        d = deployments[name]
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        assert isinstance(flow, Flow)
        assert set(d.get("parameters", {})) <= set(flow.parameters.properties), name
        assert d["work_pool"]["name"] == spec["deployments"][0]["work_pool"]["name"]
    crons = [s["cron"] for s in deployments["render-new-manifests"]["schedules"]]
    assert crons and all(len(c.split()) == 5 for c in crons)
    assert deployments["train"]["entrypoint"] == "flows/train.py:train_flow"
