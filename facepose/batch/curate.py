"""The ``curate`` kind: a video (or a time range of one) -> face clips, poses and audio features in the
curated-dataset layout (docs/contracts.md, "Curated dataset"). The per-video unit is :class:`facepose.curate.Curator`."""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from facepose import manifest as mf
from facepose.batch.kind import JobKind


class CurateKind(JobKind):
    name = "curate"
    noun = "video"
    id_column = "video_id"
    required = ("video_id", "video")
    input_columns = ("video", "audio")
    result_schema = mf.CURATE_RESULT_SCHEMA
    section = "curate"

    def parse(self, rows: list[dict[str, Any]], out: str, base: str, *, start: int = 1,
              seen: Optional[dict[str, Any]] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        jobs, errors = mf.parse_curate_rows(rows, base=base, start=start, seen_state=seen)
        return [j.to_row() for j in jobs], errors

    def digest(self, job: dict[str, Any]) -> Optional[str]:
        from facepose.curate import input_digest

        return input_digest(mf.CurateJob(**job), self.cfg)

    def marker(self, out: str, job_id: str) -> str:
        from facepose.curate import marker_uri

        return marker_uri(out, job_id)

    def load(self) -> Any:
        from facepose.curate import Curator

        return Curator(self.cfg)

    def run(self, job: dict[str, Any], models: Any, out: str) -> dict[str, Any]:
        fields = mf.CurateJob.__dataclass_fields__
        return models(mf.CurateJob(**{k: job.get(k) for k in fields}), out).result

    def crashed(self, job: dict[str, Any], exc: BaseException) -> dict[str, Any]:
        return dict(super().crashed(job, exc), dropped="{}")

    def result(self, job_id: str, status: str, **fields: Any) -> dict[str, Any]:
        row = super().result(job_id, status, **fields)
        row["dropped"] = row["dropped"] or "{}"
        return row

    def summary(self, rows: Iterable[dict[str, Any]], work_s: float) -> dict[str, Any]:
        """Clips kept, clips dropped by reason, frames and the unit's speed (frames over the time actors
        spent on videos)."""
        rows = [r for r in rows if r["status"] == "ok"]
        dropped: dict[str, int] = {}
        for r in rows:
            for reason, n in json.loads(r.get("dropped") or "{}").items():
                dropped[reason] = dropped.get(reason, 0) + n
        frames = sum(int(r["frames"] or 0) for r in rows)
        busy = sum(float(r["elapsed_s"] or 0) for r in rows)
        return {"clips": sum(int(r["clips"] or 0) for r in rows), "kept": sum(int(r["kept"] or 0) for r in rows), "dropped": dropped,
                "frames": frames, "frames_per_s": frames / work_s if work_s > 0 else 0.0, "frames_per_worker_s": frames / busy if busy > 0 else 0.0}

    def describe(self, row: dict[str, Any]) -> str:
        if row["status"] == "ok":
            return f"video {row['video_id']}: {row['frames']} frames, kept {row['kept']} of {row['clips']} clips, dropped {row['dropped']}"
        return f"video {row['video_id']}: {row['error']}"
