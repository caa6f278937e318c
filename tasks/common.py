"""What the Prefect tasks share: the retry policy (transient storage errors only), declared once as
:data:`STORAGE_RETRIES`, and a run's progress (the caller's callback, a Prefect progress artifact)."""

from __future__ import annotations

import threading
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

#: ``@task(**STORAGE_RETRIES)``: the retry policy of every storage-touching task
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
