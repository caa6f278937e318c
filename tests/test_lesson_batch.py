"""Lessons by the hundred through the real lesson flow (the ``lesson`` job kind on Prefect + Ray actors):
text drivers and script files with voice / language / rate columns; identical script + voice synthesised
once (counted in the results and in the shared speech cache's log); a rerun renders nothing."""

from __future__ import annotations

import csv

import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.ray]

SCRIPTS = ["Welcome back.", "Two plus two is four.", "Water boils at one hundred degrees.", "Cats can sleep all day.",
           "Read one page tonight.", "Plants need light.", "The sun is a star.", "Practice makes progress.",
           "Listen and repeat.", "See you tomorrow."]


def test_hundred_lesson_manifest_synthesises_each_script_once_and_reruns_nothing(tmp_path, astronaut_png):
    import pyarrow.parquet as pq
    import webvtt

    from facepose.tts import SYNTH_LOG
    from flows.lesson import run_lesson_batch

    script_file = tmp_path / "intro.md"
    script_file.write_text("# Hello\n\nWelcome to the course.\n", encoding="utf-8")
    rows = []
    for i in range(100):
        if i % 25 == 24:  # a script file, 4 times
            rows.append({"job_id": f"lesson-{i:03d}", "reference": str(astronaut_png), "driver": "intro.md"})
        elif i % 10 == 9:  # a Spanish lesson, 10 times the same
            rows.append({"job_id": f"lesson-{i:03d}", "reference": str(astronaut_png),
                         "driver": "text:Hola a todos.", "language": "es"})
        else:
            rows.append({"job_id": f"lesson-{i:03d}", "reference": str(astronaut_png),
                         "driver": f"text:{SCRIPTS[i % len(SCRIPTS)]}", "rate": "1.5" if i % 2 else ""})
    rows.append({"job_id": "not-a-lesson", "reference": str(astronaut_png), "driver": "preset:nod"})
    manifest = tmp_path / "lessons.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["job_id", "reference", "driver", "voice", "language", "rate"])
        w.writeheader()
        w.writerows(rows)
    unique = {(r["driver"], r.get("language", ""), r.get("rate", "")) for r in rows[:100]}
    cache = tmp_path / "tts-cache"
    out = tmp_path / "out"
    overrides = ["render.workers=2", "render.shard_size=25", "render.warp.size=128", f"tts.cache_dir={cache}"]

    summary = run_lesson_batch(str(manifest), str(out), overrides=overrides)
    assert (summary["ok"], summary["error"]) == (100, 1), summary["errors"][:3]
    assert "not-a-lesson" in summary["errors"][0]["job_id"] and "not a script" in summary["errors"][0]["error"]
    assert summary["synthesized"] == 11
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert sum(bool(r["synthesized"]) for r in results) == 11
    assert {r["voice"] for r in results if r["status"] == "ok"} == {"en-us", "es"}
    log_lines = (cache / SYNTH_LOG).read_text().splitlines()
    assert len(log_lines) == len(unique) == 11  # 100 lessons, 11 distinct script + voice + rate: duplicates synthesised once, across both actors
    assert len({line.split("\t")[0] for line in log_lines}) == len(log_lines)
    for r in rows[:100]:
        stem = out / r["job_id"]
        assert stem.with_suffix(".mp4").stat().st_size > 0
        cues = list(webvtt.read(str(stem.with_suffix(".vtt"))))
        assert len(cues) >= 1 and stem.with_suffix(".srt").is_file()
    assert [c.text for c in webvtt.read(str(out / "lesson-009.vtt"))] == ["Hola a todos."]

    again = run_lesson_batch(str(manifest), str(out), overrides=overrides)
    assert (again["ok"], again["skipped"], again["error"]) == (0, 100, 1)
    assert len((cache / SYNTH_LOG).read_text().splitlines()) == 11
