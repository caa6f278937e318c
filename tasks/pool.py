"""Ray for the flows: starting or joining a cluster, and a pool of actors fed one row at a time.

:func:`ray_session` runs in the flow body (the main thread; docs/environment.md, "Ray": Ray started from a worker
thread dies with it). It joins ``RAY_ADDRESS`` (or ``batch.ray_address``) when set, and otherwise
starts a local Ray on loopback with ``batch.num_cpus`` CPUs.

:class:`ActorPool` keeps ``n`` actors busy: Prefect shard tasks (threads) hand it rows, a single
dispatcher thread gives each free actor the next row (earlier shards first, so shards finish in
order), and every row comes back as a result row. An actor whose process dies fails only the row it
was working on (Ray restarts the actor).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import os
import queue
import threading
from typing import Any, Callable, Iterator, Optional

# A local Ray stays on loopback (docs/environment.md, "Ray"); Ray reads this when it is imported. Joining a cluster
# (RAY_ADDRESS) needs the node's real address, so then it is left alone.
_LOOPBACK_DEFAULT = not os.environ.get("RAY_ADDRESS") and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
if _LOOPBACK_DEFAULT:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

log = logging.getLogger(__name__)

#: Environment passed on to actors, so workers reach the same storage as the flow.
STORAGE_ENV = ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_SECURE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@contextlib.contextmanager
def ray_session(batch: Any) -> Iterator[bool]:
    """Join or start Ray for a flow run; yields whether this call started it (and shuts it down after).

    batch: the ``batch`` config section (``ray_address``, ``num_cpus``, ``num_gpus``)."""
    import ray

    if ray.is_initialized():
        yield False
        return
    address = os.environ.get("RAY_ADDRESS") or getattr(batch, "ray_address", None)
    if address:
        log.info("joining the Ray cluster at %s", address)
        host = address.split("://")[-1].rsplit(":", 1)[0]
        if _LOOPBACK_DEFAULT and host not in ("127.0.0.1", "localhost"):
            from ray._private import ray_constants

            # batch.ray_address came from config after this module chose loopback: undo that, or
            # this driver would announce 127.0.0.1 to a multi-node cluster.
            ray_constants.ENABLE_RAY_CLUSTER = True
        ray.init(address=address, logging_level=logging.ERROR)
    else:
        # Ray nices its workers to 15 by default; a local batch run should not lose its CPUs to whatever
        # else runs (a plain loop would not). Actors log to files under /tmp/ray; the flow logs each result.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=batch.num_cpus, num_gpus=batch.num_gpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield True
    finally:
        ray.shutdown()


def actor_env(batch: Any) -> dict[str, str]:
    """Environment for actor processes: thread caps, and the storage settings when forwarded."""
    threads = str(max(1, int(batch.threads_per_actor)))
    env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if getattr(batch, "forward_storage_env", True):
        env.update({k: os.environ[k] for k in STORAGE_ENV if os.environ.get(k)})
    return env


class ActorPool:
    """``n`` Ray actors of ``cls`` (``cls(*args, env=env)`` in each), fed rows one at a time.

    ``env`` goes to the actor's constructor rather than a Ray ``runtime_env``: actors then start in
    Ray's pre-started worker processes instead of fresh ones (a second or more each), and storage keys
    stay out of the runtime env that the dashboard shows.

    ``submit(rows, priority)`` returns one concurrent future per row, resolving to the actor's result
    row; a row whose actor died resolves to ``on_crash(row, error)``. Thread-safe."""

    def __init__(
        self,
        cls: type,
        args: tuple,
        n: int,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        env: Optional[dict[str, str]] = None,
        max_restarts: int = 2,
        on_crash: Callable[[dict, BaseException], dict],
        poll_s: float = 0.02,
        max_crashes: int = 3,
    ):
        import ray

        if n < 1:
            raise ValueError(f"an actor pool needs at least one actor, got {n}")
        remote = ray.remote(cls).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0)
        self.actors = [remote.remote(*args, env=dict(env or {})) for _ in range(n)]
        self.on_crash = on_crash
        self.poll_s = poll_s
        self.max_crashes = max_crashes
        self._queue: "queue.PriorityQueue[tuple[Any, int, dict, cf.Future]]" = queue.PriorityQueue()
        self._order = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="actor-pool", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Block until every actor has loaded its models (raises if one cannot start)."""
        import ray

        ray.get([a.ready.remote() for a in self.actors], timeout=timeout)

    def submit(self, rows: list[dict], priority: Any = 0) -> list[cf.Future]:
        futures = []
        for row in rows:
            fut: cf.Future = cf.Future()
            self._queue.put((priority, next(self._order), row, fut))
            futures.append(fut)
        return futures

    def map(self, rows: list[dict], priority: Any = 0, on_result: Optional[Callable[[dict], None]] = None) -> list[dict]:
        """Results for ``rows`` in order; ``on_result`` sees each as it arrives."""
        futures = self.submit(rows, priority)
        if on_result is not None:
            for fut in cf.as_completed(futures):
                on_result(fut.result())
        return [f.result() for f in futures]

    def shutdown(self) -> None:
        """Stop dispatching, fail what is queued, and kill the actors."""
        import ray

        self._stop.set()
        self._thread.join(timeout=10)
        while True:
            try:
                _, _, row, fut = self._queue.get_nowait()
            except queue.Empty:
                break
            fut.set_result(self.on_crash(row, RuntimeError("the actor pool shut down before this row ran")))
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a)

    # The dispatcher: one thread owns the actors, so no two shards race for one.
    def _dispatch(self) -> None:
        import ray

        idle = list(self.actors)
        crashes = {id(a): 0 for a in self.actors}  # consecutive crashes per actor
        inflight: dict[Any, tuple[Any, dict, cf.Future]] = {}
        while not self._stop.is_set():
            while idle:
                try:
                    item = self._queue.get_nowait() if inflight else self._queue.get(timeout=self.poll_s)
                except queue.Empty:
                    break
                _, _, row, fut = item
                if not fut.set_running_or_notify_cancel():
                    continue
                actor = idle.pop(0)
                inflight[actor.__call__.remote([row])] = (actor, row, fut)
            if not inflight:
                if not idle:  # every actor is gone for good
                    self._fail_queued(RuntimeError("every actor of the pool died; see the Ray logs"))
                continue
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
            for ref in done:
                actor, row, fut = inflight.pop(ref)
                try:
                    fut.set_result(ray.get(ref)[0])
                    crashes[id(actor)] = 0
                    idle.append(actor)
                except Exception as exc:  # noqa: BLE001 - the process died (RayActorError) or the actor raised
                    fut.set_result(self.on_crash(row, exc))
                    crashes[id(actor)] += 1
                    if crashes[id(actor)] >= self.max_crashes:
                        log.error("an actor crashed %d times in a row; dropping it (%d left)", crashes[id(actor)], len(idle) + len(inflight))
                    else:
                        idle.append(actor)  # Ray restarts a dead actor process (max_restarts)

    def _fail_queued(self, exc: BaseException) -> None:
        while True:
            try:
                _, _, row, fut = self._queue.get(timeout=self.poll_s)
            except queue.Empty:
                return
            if fut.set_running_or_notify_cancel():
                fut.set_result(self.on_crash(row, exc))
