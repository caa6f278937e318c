"""Per-process set-up of the Ray actors (:class:`tasks.shard.KindActor` for every job kind): the
environment, thread caps and storage settings, before any model loads. Resources (``num_cpus``,
``num_gpus``) are set where the pool is built (:mod:`tasks.pool`), not here.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

log = logging.getLogger(__name__)


def _setup(cfg: Any, env: Optional[dict[str, str]]) -> None:
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
