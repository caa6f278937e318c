"""The deployments of prefect.yaml, deployed and run for real: a Prefect server on 127.0.0.1 (SQLite),
the process work pool, `prefect deploy --all` from this checkout (the pull step finds it through
FACEPOSE_HOME), a worker, and the `render` and scheduled `render-new-manifests` deployments run on
manifests in S3 (moto on loopback)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from facepose import manifest as mf
from facepose import storage
from tests.support import ROOT
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _prefect(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _wait_for(condition, timeout_s: float, what: str, logs: Path) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}:\n{logs.read_text()[-4000:] if logs.exists() else ''}"
        time.sleep(0.5)


def test_render_deployments_run_through_a_real_server_and_worker(s3, s3_server, astronaut_png, tmp_path, ray_local):
    import urllib.request

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}", FACEPOSE_HOME=str(ROOT),
               PYTHONPATH=str(ROOT), RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off", "--no-ui"],
                              cwd=tmp_path, env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{api}/health", timeout=1).status == 200
            except OSError:
                return False

        _wait_for(healthy, 120, "the Prefect server", server_log)
        _prefect(env, "work-pool", "create", "facepose-process", "--type", "process")
        _prefect(env, "--no-prompt", "deploy", "--all")
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "facepose-process", "--limit", "1"],
                                  cwd=tmp_path, env=env, stdout=worker_log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

        # the `render` deployment on one manifest
        storage.upload(astronaut_png, f"{s3}/in/ref.png")
        mf.write_rows(f"{s3}/in/one.csv", [{"job_id": "a", "reference": "ref.png", "driver": "preset:nod", "seconds": 1}])
        out = f"{s3}/deployed"
        run = _prefect(env, "deployment", "run", "render-batch/render", "--param", f"manifest={s3}/in/one.csv", "--param", f"out={out}",
                       "--param", 'overrides=["render.workers=1"]', "--watch", "--watch-timeout", "300", timeout=360)
        assert "Completed" in run.stdout + run.stderr, run.stdout[-2000:]
        assert storage.exists(f"{out}/a.mp4") and storage.exists(f"{out}/results.parquet")

        # the scheduled deployment, triggered by hand: new manifests render once
        mf.write_rows(f"{s3}/manifests/monday.csv", [{"job_id": "m", "reference": f"{s3}/in/ref.png", "driver": "preset:smile", "seconds": 1}])
        params = ["--param", f"prefix={s3}/manifests", "--param", f"out={s3}/renders", "--param", 'overrides=["render.workers=1"]']
        first = _prefect(env, "deployment", "run", "render-new-manifests/render-new-manifests", *params, "--watch", "--watch-timeout", "300", timeout=360)
        assert "Completed" in first.stdout + first.stderr
        assert storage.exists(f"{s3}/renders/monday/m.mp4") and storage.exists(f"{s3}/renders/_manifests/monday.json")
        rows = pq.read_table(io.BytesIO(storage.read_bytes(f"{s3}/renders/monday/results.parquet"))).to_pylist()
        assert [(r["job_id"], r["status"]) for r in rows] == [("m", "ok")]
        before = storage.fingerprint(f"{s3}/renders/monday/m.mp4")
        second = _prefect(env, "deployment", "run", "render-new-manifests/render-new-manifests", *params, "--watch", "--watch-timeout", "300", timeout=360)
        assert "Completed" in second.stdout + second.stderr
        assert storage.fingerprint(f"{s3}/renders/monday/m.mp4") == before  # nothing rendered again
        assert "0 new manifest(s) rendered" in worker_log.read_text()
    finally:
        for proc in (worker, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
