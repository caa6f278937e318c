"""Starting a batch run from this process (what ``facepose render-batch`` / ``curate`` call): plan first,
and start Prefect and Ray only when there is work; then start the actors before the flow, so that they
load their models while Prefect starts. Imports neither at module level."""

from __future__ import annotations

import contextvars
import importlib
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from facepose import storage
from facepose.batch import get_kind
from facepose.batch.plan import Plan, plan_run
from facepose.batch.summary import dry_run_summary, finish, record_plan
from facepose.config import load_config
from facepose.errors import ConfigError

ProgressCallback = Any  # (rows finished, rows in the run, the result row) -> None; see tasks.common


@dataclass
class Handover:
    """What an in-process caller hands the flow body besides the flow's parameters (which must be plain
    data): its plan, its progress callback, and an actor pool already loading its models (or None)."""

    plan: Plan
    progress: Optional[ProgressCallback]
    pool: Any = None  # tasks.pool.ActorPool; the flow body shuts it down when done with it, the caller after the flow
    t0: float = 0.0  # time.perf_counter() when the caller began (the summary's wall_s counts from it)


handed: contextvars.ContextVar[Optional[Handover]] = contextvars.ContextVar("facepose_batch", default=None)


def _start_prefect_server() -> Optional[threading.Thread]:
    """Without ``PREFECT_API_URL`` a flow run starts Prefect's temporary server itself (a subprocess, about
    3 s); start it now in a thread instead, in a session of its own (:func:`_own_session_server`). Join
    the thread before calling the flow: the flow then finds the server started and uses it. With
    ``PREFECT_API_URL``, check that the server answers (ConfigError naming it if not), before anything
    else starts."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        import httpx

        try:
            httpx.get(f"{url.rstrip('/')}/health", timeout=10).raise_for_status()
        except httpx.HTTPError as e:
            raise ConfigError(f"cannot reach the Prefect API at {url} (PREFECT_API_URL): {e or type(e).__name__}; "
                              "start that server, or unset PREFECT_API_URL to run with a temporary one") from None
        return None
    thread = threading.Thread(target=_own_session_server().start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


def _own_session_server() -> Any:
    """Prefect's temporary server (``SubprocessASGIServer``, one per process: later calls get this one),
    with its uvicorn process in a session of its own. A terminal's Ctrl+C goes to the whole foreground
    process group; in it, the server died at once and the interrupted run then spent minutes retrying to
    report to it. Out of the group, the run stops and stops the server at exit, as before."""
    import os
    import subprocess
    import sys

    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class OwnSessionServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:  # Prefect 3.8's command, plus start_new_session
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error",
                 "--lifespan", "on"],
                env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                     **get_current_settings().to_environment_variables(exclude_unset=True)},
                start_new_session=True,
            )

    return OwnSessionServer()


def run_batch(kind_name: str, manifest: str, out: str, *, overrides: Sequence[str] = (), retry_failed: bool = False, dry_run: bool = False,
              progress: Optional[ProgressCallback] = None, config_files: Sequence[str] = ()) -> dict[str, Any]:
    """Plan ``manifest`` against ``out``; with ``dry_run`` return the plan's counts; with nothing to
    run record what planning found and return the summary; otherwise run the kind's flow with the plan.

    progress: ``progress(done, total, result_row)`` as rows finish (rows done before count at once).
    Raises InputError (bad manifest) and StorageError (unreachable storage) before anything starts."""
    t0 = time.perf_counter()
    cfg = load_config(list(overrides), list(config_files))
    storage.configure(cfg.storage)
    kind = get_kind(kind_name, cfg)
    plan = plan_run(kind, manifest, out, retry_failed=retry_failed)
    if dry_run:
        return dry_run_summary(kind, plan, t0)
    if not plan.todo:
        storage.ensure_bucket(out)
        record_plan(kind, plan)
        if progress is not None:
            for n, row in enumerate(itertools.chain(plan.kept, plan.failed), 1):
                progress(n, plan.total, row)
        summary = finish(kind, plan, grace_s=cfg.batch.compact_grace_s, t0=t0)
        summary.pop("rows")
        return summary
    flow = getattr(importlib.import_module(f"flows.{kind_name}"), f"{kind_name}_flow")  # flows/<kind>.py defines <kind>_flow
    from tasks.pool import kind_pool, ray_session

    # Ray and the actors start here, in this thread, while Prefect's temporary server (if one is needed)
    # starts in another: the actors load their models as Prefect boots (about 3 s each from the CLI).
    server = _start_prefect_server()
    with ray_session(cfg.batch):
        pool = kind_pool(kind, out, len(plan.todo))
        token = handed.set(Handover(plan, progress, pool, t0))
        try:
            if server is not None:
                server.join()
            return flow(manifest, out, overrides=list(overrides), retry_failed=retry_failed, config_files=[str(f) for f in config_files])
        finally:
            handed.reset(token)
            pool.shutdown()
