"""Lessons from text, end to end with real synthesis (eSpeak NG from the espeakng-loader wheel), the real
warp renderer and the real encoder: length, lip sync, subtitle timing measured on the video's own audio,
and other languages with their own voices and burnt-in captions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from facepose.config import Config, TTSConfig
from facepose.lesson import _font, caption_paths, read_script, script_of, wrap
from facepose.media.audio import load_audio
from facepose.render.job import render_video
from facepose.timeline import FPS, SAMPLE_RATE as SR, frames_for_seconds

# Two paragraphs, no commas inside sentences, so every silence of 0.25 s or more on the audio is a
# sentence boundary (the synthesiser's own short pauses inside a sentence are shorter).
SCRIPT = ("# Fractions\n\nA fraction has two parts. The top number is the numerator.\n\n"
          "The bottom number is the denominator. It tells how many equal parts make a whole.\n")
SENTENCES = ["Fractions", "A fraction has two parts.", "The top number is the numerator.",
             "The bottom number is the denominator.", "It tells how many equal parts make a whole."]


def envelope_db(y: np.ndarray, sr: int = SR, hop_s: float = 0.01) -> np.ndarray:
    hop = int(sr * hop_s)
    n = len(y) // hop
    rms = np.sqrt(np.mean(y[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-12)
    return 20 * np.log10(rms / rms.max())


def speech_segments(y: np.ndarray, sr: int = SR, floor_db: float = -35.0, min_gap_s: float = 0.25) -> list[tuple[float, float]]:
    """(start, end) seconds of the sound on ``y``, runs split at silences of at least ``min_gap_s``."""
    loud = envelope_db(y, sr) > floor_db
    idx = np.flatnonzero(loud)
    segs, start, prev = [], idx[0], idx[0]
    for i in idx[1:]:
        if (i - prev) * 0.01 >= min_gap_s:
            segs.append((start * 0.01, (prev + 1) * 0.01))
            start = i
        prev = i
    segs.append((start * 0.01, (prev + 1) * 0.01))
    return segs


def cfg_with(tmp_path, **tts) -> Config:
    return Config(tts=TTSConfig(cache_dir=str(tmp_path / "tts"), **tts))


@pytest.fixture(scope="module")
def english_lesson(tmp_path_factory, astronaut):
    tmp = tmp_path_factory.mktemp("lesson")
    script = tmp / "fractions.md"
    script.write_text(SCRIPT, encoding="utf-8")
    cfg = cfg_with(tmp)
    out = tmp / "fractions.mp4"
    result = render_video(astronaut, str(script), str(out), cfg=cfg)
    return result, out, cfg


def test_script_paragraphs_and_markdown_are_read_as_sentences():
    from facepose.tts.base import paragraphs

    text, md = read_script("text:One. Two!\\n\\nThree?")
    assert not md and paragraphs(text) == [["One.", "Two!"], ["Three?"]]
    assert paragraphs(SCRIPT, markdown=True) == [SENTENCES[:1], SENTENCES[1:3], SENTENCES[3:]]
    assert paragraphs("- **Bold** and [a link](http://x).\n", markdown=True) == [["Bold and a link."]]
    assert paragraphs("你好。我们学习数学。") == [["你好。", "我们学习数学。"]]
    assert paragraphs("مرحبا. كيف حالك؟ بخير") == [["مرحبا.", "كيف حالك؟", "بخير"]]


def test_lesson_video_is_as_long_as_its_speech(english_lesson):
    from facepose.media.video import probe_video
    from facepose.tts import cached_speech

    result, out, cfg = english_lesson
    speech, _, hit = cached_speech(read_script(str(out.with_suffix(".md")))[0], cfg.tts, markdown=True)
    assert hit  # the render put it in the cache
    assert result.frames == frames_for_seconds(speech.seconds)
    info = probe_video(str(out))
    assert abs(info.duration - speech.seconds) < 1.5 / FPS
    audio = load_audio(str(out), sr=SR)
    assert abs(len(audio) / SR - speech.seconds) < 0.05


def test_subtitle_cues_start_at_each_sentence_onset_on_the_video_audio(english_lesson):
    import srt
    import webvtt

    result, out, _ = english_lesson
    vtt, srt_path = caption_paths(str(out))
    assert set(result.captions) == {vtt, srt_path}
    vtt_cues = [(c.start_time.in_milliseconds() / 1000, c.text) for c in webvtt.read(vtt)]
    srt_cues = [(s.start.total_seconds(), s.content) for s in srt.parse(open(srt_path, encoding="utf-8").read())]
    assert [t for _, t in vtt_cues] == SENTENCES == [t for _, t in srt_cues]
    onsets = [a for a, _ in speech_segments(load_audio(str(out), sr=SR))]
    assert len(onsets) == len(SENTENCES), onsets
    for (v, text), (s, _), onset in zip(vtt_cues, srt_cues, onsets):
        assert abs(v - onset) <= 0.1, (text, v, onset)
        assert abs(s - onset) <= 0.1, (text, s, onset)


def test_mouth_follows_the_speech_and_closes_in_the_paragraph_pause(english_lesson):
    from facepose.config import FaceConfig
    from facepose.face.track import track_video
    from facepose.face_layout import mouth_opening

    result, out, _ = english_lesson
    track = track_video(str(out), FaceConfig(), fps=FPS)  # landmarks measured on the rendered frames
    assert track.visible.all()
    opening = mouth_opening(track.landmarks)
    audio = load_audio(str(out), sr=SR)
    hop = SR / FPS
    loud = np.array([np.sqrt(np.mean(audio[int(t * hop):int((t + 1) * hop)] ** 2) + 1e-12) for t in range(len(opening))])
    r = np.corrcoef(opening, loud)[0, 1]
    assert r >= 0.6, r
    segs = speech_segments(audio)
    # the paragraph pauses: between sentence 1 and 2 (after the heading) and between 3 and 4
    for i in (0, 2):
        gap_a, gap_b = segs[i][1], segs[i + 1][0]
        assert gap_b - gap_a > 0.8
        mid = slice(int((gap_a + 0.2) * FPS), int((gap_b - 0.2) * FPS))
        assert opening[mid].max() < 0.25 * np.percentile(opening, 95), (opening[mid], np.percentile(opening, 95))


def test_seconds_pads_a_lesson_with_listening_silence(tmp_path, astronaut):
    cfg = cfg_with(tmp_path)
    out = tmp_path / "padded.mp4"
    result = render_video(astronaut, "text:Short and sweet.", str(out), cfg=cfg, seconds=4.0)
    assert result.frames == 96
    audio = load_audio(str(out), sr=SR)
    segs = speech_segments(audio)
    assert len(segs) == 1 and segs[0][1] < 2.0  # spoken once, not looped; silence after


@pytest.mark.parametrize("language,voice,text", [
    ("zh", "cmn", "今天我们学习分数。一个分数有两个部分，上面的数字叫做分子，下面的数字叫做分母。"),
    ("ar", "ar", "مرحبا بكم في درس اليوم. سنتعلم الكسور معا، وهي جزء مهم من الرياضيات التي نستخدمها كل يوم."),
    ("es", "es", "Hoy aprendemos las fracciones. Una fracción tiene dos partes: el numerador y el denominador."),
])
def test_other_languages_speak_with_their_own_voice_and_burn_captions(tmp_path, astronaut, language, voice, text):
    import webvtt

    from facepose.media.video import read_frames

    cfg = cfg_with(tmp_path, language=language, captions="burn")
    out = tmp_path / f"{language}.mp4"
    result = render_video(astronaut, f"text:{text}", str(out), cfg=cfg)
    from facepose.tts import cached_speech

    speech, _, hit = cached_speech(text, cfg.tts)
    assert hit and speech.voice == voice and len(speech.cues) == 2
    assert result.frames == frames_for_seconds(speech.seconds)
    cues = list(webvtt.read(caption_paths(str(out))[0]))
    assert [c.text for c in cues] == [c.text for c in speech.cues]
    assert "".join(c.text for c in cues).replace(" ", "") == text.replace(" ", "")
    # Burnt in: mid-cue, the bottom band holds the dark box with white text; before the first cue it does not.
    plain = render_video(astronaut, f"text:{text}", str(tmp_path / "plain.mp4"),
                         cfg=dataclasses.replace(cfg, tts=dataclasses.replace(cfg.tts, captions="none")))
    assert plain.captions == ()
    t = int((cues[1].start_time.in_milliseconds() / 1000 + 0.5) * FPS)
    burnt = read_frames(str(out), start=t, stop=t + 1)[0].astype(int)
    clean = read_frames(str(tmp_path / "plain.mp4"), start=t, stop=t + 1)[0].astype(int)
    band = slice(380, 500)
    diff = np.abs(burnt[band] - clean[band]).max(-1)
    assert (diff > 60).mean() > 0.15
    assert (burnt[band].min(-1) > 230).sum() > 300  # white glyph pixels
    first = read_frames(str(out), start=0, stop=1)[0].astype(int)
    first_clean = read_frames(str(tmp_path / "plain.mp4"), start=0, stop=1)[0].astype(int)
    assert np.abs(first - first_clean).mean() < 3


def test_captions_wrap_within_the_frame_for_every_script():
    cases = {
        "latin": "The bottom number is the denominator and it tells how many equal parts make a whole thing.",
        "cjk": "一个分数有两个部分，上面的数字叫做分子，下面的数字叫做分母，分母告诉我们整体被分成了几份。",
        "arabic": "سنتعلم الكسور معا، وهي جزء مهم من الرياضيات التي نستخدمها كل يوم في حياتنا.",
    }
    for script, text in cases.items():
        assert script_of(text) == script
        font = _font(script, 26, None)
        lines = wrap(text, font, 456, script)
        assert len(lines) >= 2
        assert "".join(lines).replace(" ", "") == text.replace(" ", "")
        assert all(font.getlength(line) <= 456 for line in lines), script


def test_arabic_is_shaped_and_right_to_left_without_raqm(monkeypatch):
    import facepose.lesson as lesson

    monkeypatch.setattr(lesson, "_raqm", lambda: False)
    shown = lesson._visual("مرحبا بكم")
    assert all(0xFB50 <= ord(c) <= 0xFEFF or c == " " for c in shown)  # joined presentation forms
    assert shown.split(" ")[0] != "مرحبا"  # the first word read is drawn at the right end


def test_cli_renders_a_spanish_lesson_and_names_a_bad_language(astronaut_png, tmp_path):
    from tests.test_cli import assert_one_line_error, facepose

    out = tmp_path / "hola.mp4"
    env = {"FACEPOSE_PROGRESS": "0"}
    ok = facepose("-s", f"tts.cache_dir={tmp_path / 'tts'}", "render", "-r", str(astronaut_png), "-p",
                  "text:Hola a todos. Hoy aprendemos.", "-o", str(out), "--language", "es", env=env)
    assert ok.returncode == 0, ok.stderr
    assert out.is_file() and out.with_suffix(".vtt").is_file() and out.with_suffix(".srt").is_file()
    bad = facepose("render", "-r", str(astronaut_png), "-p", "text:Hello.", "-o", str(tmp_path / "x.mp4"),
                   "--language", "klingon", env=env)
    assert_one_line_error(bad, "klingon")
    empty = facepose("render", "-r", str(astronaut_png), "-p", "text: ... ", "-o", str(tmp_path / "y.mp4"), env=env)
    assert_one_line_error(empty, "no words")
    piper = facepose("-s", "tts.backend=piper", "render", "-r", str(astronaut_png), "-p", "text:Hello.",
                     "-o", str(tmp_path / "z.mp4"), env=env)
    assert_one_line_error(piper, "tts.piper_dir", ".onnx.json")


def test_lesson_kind_takes_scripts_only_and_its_digest_follows_the_voice_settings(tmp_path, astronaut_png):
    from facepose.batch import get_kind

    rows = [{"job_id": "a", "reference": str(astronaut_png), "driver": "text:Hello there."},
            {"job_id": "b", "reference": str(astronaut_png), "driver": "intro.md", "language": "es", "rate": "1.2"},
            {"job_id": "c", "reference": str(astronaut_png), "driver": "preset:nod"},
            {"job_id": "d", "reference": str(astronaut_png), "driver": "text:Hi.", "rate": "fast"}]
    (tmp_path / "intro.md").write_text("# Hola\n\nBienvenidos.\n", encoding="utf-8")
    kind = get_kind("lesson", Config())
    jobs, errors = kind.parse(rows, str(tmp_path / "out"), str(tmp_path))
    assert [j["job_id"] for j in jobs] == ["a", "b"]
    assert jobs[1]["driver"] == str(tmp_path / "intro.md") and jobs[1]["language"] == "es" and jobs[1]["rate"] == 1.2
    by_id = {e["job_id"]: e["error"] for e in errors}
    assert "not a script" in by_id["c"] and "rate 'fast' is not a number" in by_id["d"]
    digest = kind.digest(jobs[0])
    assert digest == get_kind("lesson", Config(tts=TTSConfig(cache_dir=str(tmp_path)))).digest(jobs[0])
    assert digest != get_kind("lesson", Config(tts=TTSConfig(paragraph_pause_s=2.0))).digest(jobs[0])
    assert digest != kind.digest(dict(jobs[0], voice="en-gb"))


def test_long_sentences_are_paged_within_their_cue_and_short_videos_trim_cues(tmp_path, astronaut):
    from facepose.lesson import caption_pages
    from facepose.pose.source import from_source

    long = ("This sentence is far too long to fit on two lines of a small video frame, so the captions show it "
            "in pages of two lines each, one after another, while the sentence is being spoken aloud.")
    pages = caption_pages([(1.0, 9.0, long)], 512, TTSConfig())
    assert len(pages) >= 2 and all(len(p[2]) <= 2 for p in pages)
    assert pages[0][0] == 1.0 and abs(pages[-1][1] - 9.0) < 1e-9
    assert all(abs(a[1] - b[0]) < 1e-9 for a, b in zip(pages, pages[1:]))  # back to back
    assert " ".join(line for p in pages for line in p[2]) == long

    pose = from_source("text:First sentence here. Second sentence there. Third one at the end.", astronaut,
                       seconds=2.5, cfg=cfg_with(tmp_path))
    assert len(pose) == 60 and pose.meta["speech_seconds"] > 2.5
    cues = pose.meta["cues"]
    assert cues[0][2] == "First sentence here." and all(a < 2.5 and b <= 2.5 for a, b, _ in cues)
