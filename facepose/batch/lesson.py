"""The ``lesson`` kind: a manifest row (presenter photo + a script) -> an mp4 with the spoken script and
its subtitles (``<job_id>.vtt`` and ``.srt`` beside it; see :mod:`facepose.lesson`).

Rows are render rows (:func:`facepose.manifest.parse_render_rows`) whose ``driver`` is ``text:<script>``
or a ``.txt`` / ``.md`` script URI, with optional ``voice``, ``language`` and ``rate`` columns. Speech is
synthesised in the actors through the digest-keyed cache (``tts.cache_dir``): identical script + voice +
rate is synthesised once, whichever actor gets it first, and read by the others. The input digest also
covers the ``tts`` settings that change the sound or the captions, so changing them re-renders."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable, Optional

import pyarrow as pa

from facepose import manifest as mf
from facepose.batch.render import RenderKind
from facepose.config import TTSConfig
from facepose.errors import FaceposeError, InputError

LESSON_RESULT_SCHEMA = pa.schema(list(mf.RESULT_SCHEMA) + [
    pa.field("speech_s", pa.float64()),  # length of the synthesised speech
    pa.field("voice", pa.string()),  # the voice that spoke it
    pa.field("synthesized", pa.bool_()),  # this job synthesised the speech (false: from the cache)
    pa.field("captions", pa.list_(pa.string())),  # the .vtt and .srt written beside the video
])


class LessonKind(RenderKind):
    name = "lesson"
    noun = "lesson"
    result_schema = LESSON_RESULT_SCHEMA

    def parse(self, rows: list[dict[str, Any]], out: str, base: str, *, start: int = 1,
              seen: Optional[dict[str, Any]] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        from facepose.pose.source import source_kind

        jobs, errors = super().parse(rows, out, base, start=start, seen=seen)
        kept = []
        for job in jobs:
            try:
                kind = source_kind(job["driver"], job.get("driver_type"))
            except InputError:
                kind = None
            if kind == "text":
                kept.append(job)
            else:
                errors.append(self.error_row(job["job_id"], InputError(
                    f"lesson {job['job_id']!r}: driver {job['driver']} is not a script; give text:<the script> or a "
                    f".txt/.md file (other drivers go to facepose render-batch)"), kind="input", output=job["output"]))
        return kept, errors

    def digest(self, job: dict[str, Any]) -> Optional[str]:
        base = super().digest(job)
        if base is None:
            return None
        tts = dataclasses.asdict(self.cfg.tts)
        tts.pop("cache_dir")  # where speech is cached does not change it
        return mf.digest({"render": base, "tts": tts})

    def run(self, job: dict[str, Any], models: Any, out: str) -> dict[str, Any]:
        from facepose import tts
        from facepose.lesson import with_voice
        from facepose.render.base import get_renderer
        from facepose.render.job import render_video

        t0 = time.perf_counter()
        job_id = job["job_id"]
        try:
            renderer = models.get(job["backend"])
            if renderer is None:
                renderer = models[job["backend"]] = get_renderer(job["backend"], self.cfg)
            cfg = with_voice(self.cfg, job.get("voice"), job.get("language"), job.get("rate"))
            before = tts.STATS["synthesized"]
            res = render_video(job["reference"], job["driver"], job["output"], seconds=job.get("seconds"),
                               backend=job["backend"], seed=job["seed"], cfg=cfg, renderer=renderer,
                               driver_type=job.get("driver_type"))
            speech, _, _ = _speech(job["driver"], cfg.tts)
            row = self.result(job_id, "ok", output=job["output"], frames=res.frames, seconds=res.seconds,
                              render_s=time.perf_counter() - t0, input_digest=job["input_digest"],
                              speech_s=speech.seconds, voice=speech.voice,
                              synthesized=tts.STATS["synthesized"] > before, captions=list(res.captions))
            mf.storage.write_text(self.marker(out, job_id), mf.json.dumps(row))  # last: vouches for the outputs
            return row
        except Exception as exc:  # noqa: BLE001 - one bad row must not take the shard down
            if not isinstance(exc, FaceposeError):
                mf.log.exception("lesson %s: unexpected error", job_id)
            return self.error_row(job_id, exc, output=job["output"], render_s=time.perf_counter() - t0,
                                  input_digest=job["input_digest"])

    def summary(self, rows: Iterable[dict[str, Any]], work_s: float) -> dict[str, Any]:
        rows = list(rows)
        out = super().summary(rows, work_s)
        ok = [r for r in rows if r["status"] == "ok"]
        out.update(synthesized=sum(bool(r.get("synthesized")) for r in ok),
                   lessons_per_min=(60.0 * len(ok) / work_s) if work_s > 0 else 0.0)
        return out

    def describe(self, row: dict[str, Any]) -> str:
        if row["status"] == "ok":
            how = "synthesised" if row.get("synthesized") else "speech from the cache"
            return f"lesson {row['job_id']}: ok, {row['seconds']:.1f} s ({how}) -> {row['output']}"
        return f"lesson {row['job_id']}: {row['error']}"


def _speech(driver: str, tts_cfg: TTSConfig):
    """The job's speech, from the cache the render just filled (no second synthesis)."""
    from facepose.lesson import speech_for

    return speech_for(driver, tts_cfg)
