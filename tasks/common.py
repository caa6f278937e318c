"""What the Prefect tasks of both flows share: the retry policy (transient storage errors only) and a
run's progress (the caller's callback, a Prefect progress artifact)."""

from __future__ import annotations

import threading
import uuid
from typing import Any, Callable, Optional

from prefect.cache_policies import NONE

from facepose.errors import FaceposeError, StorageError

RETRIES = 3  # the storage tasks' @task(retries=...): a shard's last attempt returns its errors instead of raising
RETRY_DELAYS = [2, 5, 15]

ProgressCallback = Callable[[int, int, dict], None]  # (rows finished, rows in the run, the result row)


class TransientRowsError(StorageError):
    """Some rows of a shard hit a transient storage error: the shard task is retried for those rows."""

    def __init__(self, message: str):
        super().__init__(message, transient=True)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only for transient storage errors (unreachable endpoint,
    throttling, 5xx), never for bad input or bugs."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            state.result()
        except BaseException as e:  # noqa: BLE001 - we only classify it
            exc = e
    return isinstance(exc, FaceposeError) and bool(exc.transient)




#: ``@task(**STORAGE_RETRIES)``: the retry policy of storage-touching tasks (tasks/train.py uses it)
STORAGE_RETRIES = dict(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient, cache_policy=NONE)


class RunProgress:
    """Counts finished rows of a run (each id once, whatever the retries) and reports them to the
    caller's callback (from shard threads) and to a Prefect progress artifact (from the flow body)."""

    def __init__(self, total: int, id_key: str, callback: Optional[ProgressCallback] = None, artifact_key: Optional[str] = None, description: str = ""):
        from prefect.artifacts import create_progress_artifact

        self.total, self.id_key, self.callback = total, id_key, callback
        self._done: set[str] = set()
        self._lock = threading.Lock()
        self.artifact_id = create_progress_artifact(0.0, key=artifact_key, description=description) if artifact_key else None

    @property
    def done(self) -> int:
        return len(self._done)

    def add(self, row: dict) -> None:
        with self._lock:
            if row[self.id_key] in self._done:
                return
            self._done.add(row[self.id_key])
            n = len(self._done)
        if self.callback is not None:
            self.callback(n, self.total, row)

    def publish(self) -> None:
        """Update the progress artifact (call from the flow body)."""
        from prefect.artifacts import update_progress_artifact

        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0 * self.done / max(self.total, 1))


# Objects that cannot be task parameters (actor pools, progress) are handed over by key.
_HELD: dict[str, Any] = {}


def hold(obj: Any) -> str:
    key = uuid.uuid4().hex
    _HELD[key] = obj
    return key


def held(key: str) -> Any:
    try:
        return _HELD[key]
    except KeyError:
        raise RuntimeError(f"nothing held under {key!r} in this process; shard tasks run in the flow's process") from None


def release(key: str) -> None:
    _HELD.pop(key, None)


def run_on_pool(
    rows: list[dict],
    *,
    cfg: Any,
    section: Any,
    actor: type,
    submit_shard: Callable[[int, list[dict], str, str], Any],
    progress: RunProgress,
    on_crash: Callable[[dict, BaseException], dict],
    on_rows: Callable[[list[dict]], None],
    logger: Any,
) -> list[dict]:
    """The transform stage both flows share: ``rows`` cut into shards of ``section.shard_size``, one
    Prefect task each (``submit_shard(index, shard, pool_key, progress_key)`` returns its future), all fed
    to one pool of ``section.workers`` Ray actors of ``actor`` (``section.num_cpus``/``num_gpus`` each).
    ``on_rows`` gets each shard's result rows as the shard lands (the flow merges them into its results
    file); a shard whose retries ran out yields ``on_crash`` rows. Returns every result row."""
    from prefect.futures import as_completed

    from tasks.pool import ActorPool, actor_env, ray_session

    size = max(1, int(section.shard_size))
    shards = [rows[i : i + size] for i in range(0, len(rows), size)]
    ran: list[dict] = []
    with ray_session(cfg.batch):
        pool = ActorPool(
            actor, (cfg,), max(1, min(int(section.workers), len(rows))), num_cpus=section.num_cpus, num_gpus=section.num_gpus,
            env=actor_env(cfg.batch), max_restarts=cfg.batch.actor_restarts, on_crash=on_crash, poll_s=cfg.batch.poll_s,
        )
        pool_key, progress_key = hold(pool), hold(progress)
        try:
            futures = {submit_shard(i, shard, pool_key, progress_key): shard for i, shard in enumerate(shards)}
            for fut in as_completed(list(futures)):
                try:
                    done = fut.result()
                except Exception as exc:  # noqa: BLE001 - retries exhausted: the shard's rows fail, the run goes on
                    logger.error("a shard failed after its retries: %s", exc)
                    done = [on_crash(row, exc) for row in futures[fut]]
                    for r in done:
                        progress.add(r)
                ran.extend(done)
                on_rows(done)
                progress.publish()
        finally:
            release(pool_key)
            release(progress_key)
            pool.shutdown()
    return ran
