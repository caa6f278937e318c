"""Ray actor classes of the batch flows (DESIGN.md, "Ray actor"): ``__init__(cfg)`` loads models once,
``__call__(rows)`` returns one result row per input row and never raises for a bad row. The work is in
:mod:`facepose.manifest` (rendering a job) and :mod:`facepose.curate` (curating a video); resources
(``num_cpus``, ``num_gpus``) are set where the pool is built (:mod:`tasks.pool`), not here.
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


def _load_face_models(cfg: Any) -> None:
    """Load the face detector and landmark model (cached per process) before the first job needs them."""
    import numpy as np

    from facepose.face.detect import FaceDetector
    from facepose.face.landmarks import get_landmark_model

    FaceDetector(cfg.face).detect(np.zeros((64, 64, 3), np.uint8))
    get_landmark_model(cfg.face)


class RenderActor:
    """Renders manifest jobs; keeps each backend loaded after its first job (the default one at once).

    cfg: a :class:`facepose.config.Config`; env: environment for this process
    (:func:`tasks.pool.actor_env`)."""

    def __init__(self, cfg: Any, env: Optional[dict[str, str]] = None):
        _setup(cfg, env)
        from facepose.render.base import get_renderer

        self.cfg = cfg
        _load_face_models(cfg)
        self.renderers: dict[str, Any] = {}
        try:
            self.renderers[cfg.render.backend] = get_renderer(cfg.render.backend, cfg)
        except Exception as exc:  # noqa: BLE001 - each job that needs it will report the error
            log.warning("could not load the %s renderer up front: %s", cfg.render.backend, exc)

    def ready(self) -> bool:
        return True

    def __call__(self, rows: list[dict]) -> list[dict]:
        """rows: :meth:`facepose.manifest.RenderJob.to_row` dicts -> result rows (RESULT_SCHEMA)."""
        from facepose.manifest import run_render_job

        return [run_render_job(row, self.cfg, self.renderers) for row in rows]


class CurateActor:
    """Curates videos; the face detector and landmark model load once.

    cfg: a :class:`facepose.config.Config`. Rows: :meth:`facepose.manifest.CurateJob.to_row`
    dicts plus ``out`` (the dataset prefix). env: as for :class:`RenderActor`."""

    def __init__(self, cfg: Any, env: Optional[dict[str, str]] = None):
        _setup(cfg, env)
        from facepose.curate import Curator

        self.curator = Curator(cfg)

    def ready(self) -> bool:
        return True

    def __call__(self, rows: list[dict]) -> list[dict]:
        """-> one result row per video (CURATE_RESULT_SCHEMA)."""
        from facepose.manifest import CurateJob

        fields = CurateJob.__dataclass_fields__
        return [self.curator(CurateJob(**{k: row.get(k) for k in fields}), row["out"]).result for row in rows]
