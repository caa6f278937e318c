"""Ray for the flows: starting or joining a cluster, and a pool of actors fed one row at a time.

:func:`ray_session` runs in the flow body (the main thread; docs/environment.md, "Ray": Ray started from a worker
thread dies with it). It joins ``RAY_ADDRESS`` (or ``batch.ray_address``) when set, and otherwise
starts a local Ray on loopback with ``batch.num_cpus`` CPUs.

:class:`ActorPool` is ``n`` actors in a queue of idle ones: each Prefect shard task (a thread) takes
an idle actor per row and waits on its calls with ``ray.wait``; every row comes back as a result row.
An actor whose process dies fails only the row it was working on (Ray restarts the actor).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import signal
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
    # ray.init replaces the SIGTERM handler with sys.exit(15); a Python handler set before it (the CLI's:
    # SIGTERM unwinds like Ctrl+C) is put back, so a stopped run ends the same way whenever it is stopped.
    keep = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
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
    if callable(keep):
        signal.signal(signal.SIGTERM, keep)
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


def kind_pool(kind: Any, out: str, jobs: int) -> "ActorPool":
    """The actor pool of a batch run: ``min(<section>.workers, jobs)`` :class:`tasks.actor.KindActor`
    actors of ``kind`` (a :class:`facepose.batch.JobKind`, with its config) with the section's
    ``num_cpus`` / ``num_gpus``. Returns at once; the actors load their models in their own processes."""
    from tasks.actor import KindActor

    cfg, section = kind.cfg, kind.settings
    return ActorPool(KindActor, (kind.name, cfg, out), max(1, min(int(section.workers), jobs)), num_cpus=section.num_cpus,
                     num_gpus=section.num_gpus, env=actor_env(cfg.batch), max_restarts=cfg.batch.actor_restarts, on_crash=kind.crashed,
                     poll_s=cfg.batch.poll_s)


class ActorPool:
    """``n`` Ray actors of ``cls`` (``cls(*args, env=env)`` in each), shared by the shard tasks.

    The idle actors wait in a thread-safe queue, which an actor joins once it has started (loaded its
    models); :meth:`map`, called from a shard task's thread, takes an idle actor for each row, calls
    it, waits on the calls with ``ray.wait`` and gives each actor back as its row returns. No thread of its own: what runs where is the shard tasks' threads and the
    actors. A row whose actor died resolves to ``on_crash(row, error)``; Ray restarts the actor
    (``max_restarts``), and an actor that crashes ``max_crashes`` times in a row is dropped.

    ``env`` goes to the actor's constructor rather than a Ray ``runtime_env``: actors then start in
    Ray's pre-started worker processes instead of fresh ones (a second or more each), and storage keys
    stay out of the runtime env that the dashboard shows."""

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
        self.on_crash, self.poll_s, self.max_crashes = on_crash, poll_s, max_crashes
        self._idle: "queue.Queue[Any]" = queue.Queue()
        self._crashes = {id(a): 0 for a in self.actors}  # consecutive crashes per actor
        self._alive = n
        self._closed = False
        self._lock = threading.Lock()
        self._start_error: Optional[BaseException] = None
        # An actor joins the idle queue once it has started (checked with ray.wait on its ready() call
        # whenever a row looks for an actor). Rows never queue on an actor still waiting for resources:
        # two pools sharing too few CPUs would otherwise each wait on their unstarted actor for good.
        self._starting = {actor.ready.remote(): actor for actor in self.actors}

    def _check_started(self) -> None:
        """Move the actors that have started since the last look into the idle queue."""
        import ray

        with self._lock:
            refs = list(self._starting)
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            with self._lock:
                actor = self._starting.pop(ref, None)
            if actor is None:  # another shard's thread moved it
                continue
            try:
                ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - __init__ raised, or the pool was shut down first
                with self._lock:
                    self._alive -= 1
                    self._start_error = exc
                if not self._closed:
                    log.error("an actor could not start: %s", exc)
                continue
            self._idle.put(actor)

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Block until every actor has loaded its models (raises if one cannot start)."""
        import ray

        ray.get([a.ready.remote() for a in self.actors], timeout=timeout)

    def _take(self, block: bool) -> Any:
        """An idle actor; None when none is idle (``block``: wait while some actor lives and the pool is open)."""
        while True:
            self._check_started()
            try:
                return self._idle.get(timeout=self.poll_s) if block else self._idle.get_nowait()
            except queue.Empty:
                if not block or self._closed or not self._alive:
                    return None

    def _give_back(self, actor: Any, crashed: bool) -> None:
        with self._lock:
            self._crashes[id(actor)] = self._crashes[id(actor)] + 1 if crashed else 0
            if self._crashes[id(actor)] >= self.max_crashes:
                self._alive -= 1
                log.error("an actor crashed %d times in a row; dropping it (%d left)", self.max_crashes, self._alive)
                return
        self._idle.put(actor)  # Ray restarts a dead actor process (max_restarts)

    def map(self, rows: list[dict], on_result: Optional[Callable[[dict], None]] = None,
            admit: Optional[Callable[[dict], bool]] = None) -> list[Optional[dict]]:
        """Results for ``rows`` in order; ``on_result`` sees each as it arrives. Thread-safe: shard
        tasks call it at once and share the actors.

        admit: asked ``admit(row)`` with an idle actor in hand, just before the row would start; a row
        it declines is not run and its result is None (a batch run claims the row here, so that it
        holds claims only on rows an actor is running). If it raises, no further row starts; the rows
        in flight finish, then the error is raised."""
        import ray

        results: list[Optional[dict]] = [None] * len(rows)
        inflight: dict[Any, tuple[Any, int]] = {}  # object ref -> (actor, row index)
        todo = iter(range(len(rows)))
        i = next(todo, None)
        refused: Optional[Exception] = None

        def finish(index: int, result: dict) -> None:
            results[index] = result
            if on_result is not None:
                on_result(result)

        while i is not None or inflight:
            while i is not None:  # start rows on the idle actors (wait for one only when none of ours runs)
                actor = self._take(block=not inflight)
                if actor is None:
                    if inflight:
                        break
                    exc = (RuntimeError("the actor pool shut down before this row ran") if self._closed
                           else self._start_error or RuntimeError("every actor of the pool died; see the Ray logs"))
                    for index in itertools.chain([i], todo):
                        finish(index, self.on_crash(rows[index], exc))
                    i = None
                    break
                if admit is not None:
                    try:
                        run_it = admit(rows[i])
                    except Exception as exc:  # noqa: BLE001 - raised once the rows in flight are back
                        run_it, refused, todo = False, exc, iter(())
                    if not run_it:
                        self._idle.put(actor)
                        i = next(todo, None)
                        continue
                inflight[actor.__call__.remote([rows[i]])] = (actor, i)
                i = next(todo, None)
            if not inflight:
                break
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
            for ref in done:
                actor, index = inflight.pop(ref)
                try:
                    result, crashed = ray.get(ref)[0], False
                except Exception as exc:  # noqa: BLE001 - the process died (RayActorError) or the actor raised
                    result, crashed = self.on_crash(rows[index], exc), True
                self._give_back(actor, crashed)
                finish(index, result)
        if refused is not None:
            raise refused
        return results

    def shutdown(self) -> None:
        """Stop handing out actors (rows not started fail) and kill the actors."""
        import ray

        self._closed = True
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
