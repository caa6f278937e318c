"""The ``render`` kind: a manifest row (reference photo + driver) -> an mp4 (docs/contracts.md, "Render manifest and results").

Rows, validation and the result schema are :mod:`facepose.manifest`'s; one job is
:func:`facepose.render.job.render_video` through :func:`facepose.manifest.run_render_job`."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from facepose import manifest as mf
from facepose.batch.kind import JobKind
from facepose.config import Config


class RenderKind(JobKind):
    name = "render"
    noun = "job"
    id_column = "job_id"
    required = ("job_id", "reference", "driver")
    input_columns = ("reference", "driver")
    result_schema = mf.RESULT_SCHEMA
    section = "render"

    @property
    def results_name(self) -> str:  # type: ignore[override]
        return self.cfg.render.results

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self._fingerprints: dict[str, Optional[str]] = {}  # one planning pass: many jobs share a reference

    def parse(self, rows: list[dict[str, Any]], out: str, base: str, *, start: int = 1,
              seen: Optional[dict[str, Any]] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if start == 1 or len(self._fingerprints) > 10_000:
            self._fingerprints.clear()
        jobs, errors = mf.parse_render_rows(rows, out, base=base, backend=self.cfg.render.backend, seed=self.cfg.render.seed,
                                            max_seconds=self.cfg.batch.max_seconds, start=start, seen=seen)
        return [j.to_row() for j in jobs], errors

    def digest(self, job: dict[str, Any]) -> Optional[str]:
        ok, _ = mf.attach_digests([mf.RenderJob(**job)], self._fingerprints)
        return ok[0].input_digest if ok else None

    def marker(self, out: str, job_id: str) -> str:
        return mf.storage.join(out, mf.DONE_DIR, f"{job_id}.json")

    def load(self) -> dict[str, Any]:
        """The default backend and the face models, loaded before the first job."""
        import numpy as np

        from facepose.face.detect import FaceDetector
        from facepose.face.landmarks import get_landmark_model
        from facepose.render.base import get_renderer

        FaceDetector(self.cfg.face).detect(np.zeros((64, 64, 3), np.uint8))
        get_landmark_model(self.cfg.face)
        renderers: dict[str, Any] = {}
        try:
            renderers[self.cfg.render.backend] = get_renderer(self.cfg.render.backend, self.cfg)
        except Exception as exc:  # noqa: BLE001 - each job that needs it reports the error
            mf.log.warning("could not load the %s renderer up front: %s", self.cfg.render.backend, exc)
        return renderers

    def run(self, job: dict[str, Any], models: Any, out: str) -> dict[str, Any]:
        return mf.run_render_job(job, self.cfg, models)

    def crashed(self, job: dict[str, Any], exc: BaseException) -> dict[str, Any]:
        return dict(super().crashed(job, exc), output=job.get("output"))

    def summary(self, rows: Iterable[dict[str, Any]], work_s: float) -> dict[str, Any]:
        ok = [r for r in rows if r["status"] == "ok"]
        return {"video_s": sum(float(r["seconds"] or 0) for r in ok), "render_s": sum(float(r["render_s"] or 0) for r in ok),
                "outputs": sorted(r["output"] for r in ok)}

    def describe(self, row: dict[str, Any]) -> str:
        if row["status"] == "ok":
            return f"job {row['job_id']}: ok, {row['frames']} frames in {row['render_s']:.1f}s -> {row['output']}"
        return f"job {row['job_id']}: {row['error']}"
