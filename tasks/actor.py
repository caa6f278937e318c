"""The Ray actor of every job kind (:mod:`facepose.batch`), in a module that imports neither Prefect nor
Ray: Ray pickles the class by reference, so each actor process imports this module, and importing
Prefect there would add about 1.5 s to every actor's start (bench/bench_orchestration.py)."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional


def setup_actor_process(cfg: Any, env: Optional[dict[str, str]]) -> None:
    """Per-process settings: ``env`` (thread caps, storage endpoint and keys) before the heavy imports
    read it, then OpenCV's thread count and the storage config."""
    os.environ.update(env or {})
    import cv2

    from facepose import storage

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    threads = max(1, int(cfg.batch.threads_per_actor))
    cv2.setNumThreads(threads)
    try:  # BLAS pools that numpy started before the environment was set
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    except ImportError:
        pass
    storage.configure(cfg.storage)


class KindActor:
    """``kind.load()`` once, then ``kind.run(row)`` per row.

    kind: a :data:`facepose.batch.KINDS` name; cfg: a :class:`facepose.config.Config`; out: the run's
    output prefix; env: environment for this process (:func:`tasks.pool.actor_env`)."""

    def __init__(self, kind: str, cfg: Any, out: str, env: Optional[dict[str, str]] = None):
        from facepose.batch import get_kind

        setup_actor_process(cfg, env)
        self.kind, self.out = get_kind(kind, cfg), out
        self.models = self.kind.load()

    def ready(self) -> bool:
        return True

    def __call__(self, rows: list[dict]) -> list[dict]:
        return [self.kind.run(row, self.models, self.out) for row in rows]
