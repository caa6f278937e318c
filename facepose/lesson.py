"""Lessons from text: a script becomes speech (facepose.tts), the speech a pose (Audio2Pose), and the
sentences subtitles (WebVTT + SRT beside the video, optionally burnt into the frames).

Drivers: ``text:<the script>`` or a script file (``.txt``, ``.md`` / ``.markdown``: paragraphs, i.e. blank
lines, become pauses; Markdown markup is not read aloud). ``facepose.pose.source.from_source`` calls
:func:`text_pose`; ``facepose.render.job.render_video`` calls :func:`caption_frames` and
:func:`write_captions`. The ``lesson`` batch kind (:mod:`facepose.batch.lesson`) renders a manifest of lessons (one row a lesson) with the
speech cache shared across rows.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Optional

import numpy as np

from facepose.config import Config, TTSConfig
from facepose.errors import InputError
from facepose.tts import Speech, cached_speech

TEXT_PREFIX = "text:"
SCRIPT_EXTS = (".txt", ".md", ".markdown")
CAPTION_MODES = ("files", "burn", "none")


# -- the driver ----------------------------------------------------------------------------------
def read_script(source: str) -> tuple[str, bool]:
    """``text:...`` or a script URI -> (text, is_markdown). A literal ``\\n`` in ``text:`` is a newline,
    so ``text:One.\\n\\nTwo.`` has two paragraphs on one command line."""
    if source.startswith(TEXT_PREFIX):
        return source[len(TEXT_PREFIX):].replace("\\n", "\n"), False
    from facepose import storage

    ext = PurePosixPath(source.split("?", 1)[0]).suffix.lower()
    try:
        text = storage.read_text(source)
    except UnicodeDecodeError:
        raise InputError(f"script {source} is not UTF-8 text; save it as UTF-8") from None
    return text.lstrip("\ufeff"), ext in (".md", ".markdown")


def speech_for(source: str, tts: TTSConfig, with_audio: bool = False) -> tuple[Speech, Path, bool]:
    """The (cached) speech of a text driver: (Speech, its WAV, came from the cache). The samples are
    left in the WAV unless ``with_audio``."""
    text, markdown = read_script(source)
    return cached_speech(text, tts, markdown=markdown, with_audio=with_audio)


def text_pose(source: str, reference_landmarks: np.ndarray, canvas: tuple[int, int], tts: TTSConfig,
              a2p_cfg, seconds: Optional[float] = None):
    """Text driver -> PoseSequence through the speech-to-pose path (its length is the speech's, or
    ``seconds``: silence, i.e. listening poses, pads a longer request). ``meta["audio"]`` is the WAV to
    mux, ``meta["cues"]`` the sentence cues (start, end, text) in seconds, trimmed to the video."""
    from facepose.pose.audio2pose import audio_to_pose

    speech, wav, _ = speech_for(source, tts)
    pose = audio_to_pose(str(wav), reference_landmarks, canvas, a2p_cfg, seconds=seconds, extend="silence")
    end = len(pose) / pose.fps
    pose.meta["cues"] = [(c.start, min(c.end, end), c.text) for c in speech.cues if c.start < end]
    pose.meta["speech_seconds"] = speech.seconds
    pose.meta["voice"] = speech.voice
    pose.meta["language"] = speech.language
    if seconds is not None and seconds > speech.seconds:
        pose.meta["audio_pad"] = True  # the muxed track is padded with silence, not looped
    return pose


def with_voice(cfg: Optional[Config], voice: Optional[str] = None, language: Optional[str] = None,
               rate: Optional[float] = None) -> Config:
    """``cfg`` (None: the defaults) with a manifest row's voice / language / rate in its ``tts`` section
    (a new object; the given one is not changed). A language without a voice picks that language's voice."""
    cfg = Config() if cfg is None else cfg
    changes = {k: v for k, v in (("voice", voice), ("language", language), ("rate", rate)) if v is not None}
    if language is not None and voice is None:
        changes["voice"] = None
    return dataclasses.replace(cfg, tts=dataclasses.replace(cfg.tts, **changes))


def caption_mode(tts: TTSConfig) -> str:
    if tts.captions not in CAPTION_MODES:
        raise InputError(f"unknown captions mode {tts.captions!r}; choose from {list(CAPTION_MODES)} (tts.captions)")
    return tts.captions


# -- subtitle files ------------------------------------------------------------------------------
def _cues(pose_or_cues) -> list[tuple[float, float, str]]:
    cues = pose_or_cues.meta.get("cues") if hasattr(pose_or_cues, "meta") else pose_or_cues
    return [(float(a), float(b), str(t)) for a, b, t in (cues or [])]


def to_vtt(cues) -> str:
    """Cues (start, end, text) in seconds -> WebVTT text (webvtt-py)."""
    import webvtt

    doc = webvtt.WebVTT()
    for a, b, text in _cues(cues):
        doc.captions.append(webvtt.Caption(_stamp(a, "."), _stamp(b, "."), text))
    return doc.content


def to_srt(cues) -> str:
    """Cues (start, end, text) in seconds -> SRT text (srt)."""
    import datetime

    import srt

    def ms(seconds: float) -> datetime.timedelta:  # rounded to the millisecond as the WebVTT stamps are
        return datetime.timedelta(milliseconds=int(round(seconds * 1000)))

    subs = [srt.Subtitle(index=i + 1, start=ms(a), end=ms(b), content=t) for i, (a, b, t) in enumerate(_cues(cues))]
    return srt.compose(subs)


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def caption_paths(output: str) -> tuple[str, str]:
    """``talk.mp4`` -> (``talk.vtt``, ``talk.srt``), beside the video (local path or URI)."""
    base = re.sub(r"\.[A-Za-z0-9]+$", "", str(output))
    return base + ".vtt", base + ".srt"


def write_captions(output: str, pose, tts: TTSConfig) -> list[str]:
    """Write the pose's cues as WebVTT and SRT beside ``output`` (unless ``tts.captions`` is none)."""
    from facepose import storage

    if not pose.meta.get("cues") or caption_mode(tts) == "none":
        return []
    vtt, srt_path = caption_paths(output)
    storage.write_text(vtt, to_vtt(pose))
    storage.write_text(srt_path, to_srt(pose))
    return [vtt, srt_path]


# -- burn-in -------------------------------------------------------------------------------------
_FONT_DIRS = ("/usr/share/fonts/opentype/noto", "/usr/share/fonts/truetype/noto", "/usr/share/fonts/truetype/dejavu")
# (file, face index in a collection): NotoSansCJK-Regular.ttc holds JP, KR, SC, TC, HK in that order.
_FONTS = {
    "cjk": [("NotoSansCJK-Regular.ttc", 2)],
    "arabic": [("NotoSansArabic-Regular.ttf", 0), ("NotoNaskhArabic-Regular.ttf", 0), ("DejaVuSans.ttf", 0)],
    "hebrew": [("NotoSansHebrew-Regular.ttf", 0), ("DejaVuSans.ttf", 0)],
    "latin": [("NotoSans-Regular.ttf", 0), ("DejaVuSans.ttf", 0)],
}


def script_of(text: str) -> str:
    """The writing system a caption needs a font for: cjk, arabic, hebrew or latin (everything else)."""
    for ch in text:
        name = unicodedata.name(ch, "")
        if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL")) or "FULLWIDTH" in name or "IDEOGRAPH" in name:
            return "cjk"
        if name.startswith("ARABIC"):
            return "arabic"
        if name.startswith("HEBREW"):
            return "hebrew"
    return "latin"


def _is_rtl(text: str) -> bool:
    return any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in text)


@lru_cache(maxsize=16)
def _font(script: str, size: int, path: Optional[str]):
    from PIL import ImageFont

    layout = ImageFont.Layout.RAQM if _raqm() else ImageFont.Layout.BASIC
    if path:
        return ImageFont.truetype(path, size, layout_engine=layout)
    for name, index in _FONTS[script]:
        for folder in _FONT_DIRS:
            f = Path(folder) / name
            if f.is_file():
                return ImageFont.truetype(str(f), size, index=index, layout_engine=layout)
    if script != "latin":
        raise InputError(f"no font for {script} captions; install fonts-noto-core and fonts-noto-cjk "
                         f"(bash scripts/setup.sh does) or set tts.caption_font=/path/to/font.ttf")
    return ImageFont.load_default(size)


@lru_cache(maxsize=1)
def _raqm() -> bool:
    """Pillow's raqm layout (HarfBuzz shaping + FriBiDi order) is usable here."""
    from PIL import features

    return bool(features.check("raqm") and features.check("fribidi"))


def _visual(text: str) -> str:
    """Logical -> display order for the BASIC layout: Arabic letters joined (arabic-reshaper) and the
    line reordered right to left (python-bidi). raqm does both itself."""
    if _raqm() or not _is_rtl(text):
        return text
    import arabic_reshaper
    from bidi import get_display

    return get_display(arabic_reshaper.reshape(text))


def _units(text: str, script: str) -> list[str]:
    """Break opportunities: characters for CJK (kept with following punctuation), words otherwise."""
    if script == "cjk":
        out: list[str] = []
        for ch in text:
            if out and (unicodedata.category(ch).startswith("P") or ch == " "):
                out[-1] += ch
            else:
                out.append(ch)
        return out
    words = text.split()
    return [w + " " for w in words[:-1]] + words[-1:]


def wrap(text: str, font, width: int, script: str) -> list[str]:
    """Greedy line wrap of ``text`` to ``width`` pixels in ``font`` (lines in logical order)."""
    lines, cur = [], ""
    for unit in _units(text, script):
        trial = cur + unit
        if cur and font.getlength(_visual(trial.rstrip())) > width:
            lines.append(cur.rstrip())
            cur = unit.lstrip()
        else:
            cur = trial
    if cur.strip():
        lines.append(cur.rstrip())
    return lines


def caption_overlay(lines: list[str], frame_w: int, tts: TTSConfig, script: str):
    """(RGBA overlay (h, frame_w, 4) uint8 of white text on a translucent dark box, its top row)."""
    from PIL import Image, ImageDraw

    scale = frame_w / 512.0
    size = max(10, int(round(tts.caption_size * scale)))
    font = _font(script, size, tts.caption_font)
    pad, gap = int(8 * scale), int(4 * scale)
    rtl = any(_is_rtl(line) for line in lines)
    shown = [_visual(line) for line in lines]
    boxes = [font.getbbox(s, direction="rtl" if rtl and _raqm() else None) if _raqm() else font.getbbox(s) for s in shown]
    line_h = max(size, max(b[3] - b[1] for b in boxes)) + gap
    widths = [b[2] - b[0] for b in boxes]
    h = line_h * len(lines) + 2 * pad
    img = Image.new("RGBA", (frame_w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    box_w = max(widths) + 2 * pad
    x0 = (frame_w - box_w) // 2
    draw.rounded_rectangle((x0, 0, x0 + box_w, h - 1), radius=int(6 * scale), fill=(0, 0, 0, 165))
    for i, (s, b, w) in enumerate(zip(shown, boxes, widths)):
        x = (frame_w - w) // 2 - b[0]
        y = pad + i * line_h - b[1] + (line_h - gap - (b[3] - b[1])) // 2
        kw = {"direction": "rtl"} if rtl and _raqm() else {}
        draw.text((x, y), s, font=font, fill=(255, 255, 255, 255), stroke_width=max(1, int(scale)),
                  stroke_fill=(0, 0, 0, 255), **kw)
    return np.asarray(img), h


def caption_pages(cues, frame_w: int, tts: TTSConfig) -> list[tuple[float, float, list[str], str]]:
    """Cues -> pages of at most ``tts.caption_lines`` wrapped lines: (start, end, lines, script); a long
    sentence's time is shared among its pages by their length in characters."""
    scale = frame_w / 512.0
    size = max(10, int(round(tts.caption_size * scale)))
    max_w = int(frame_w - 2 * 28 * scale)
    pages = []
    for a, b, text in _cues(cues):
        script = script_of(text)
        lines = wrap(text, _font(script, size, tts.caption_font), max_w, script)
        groups = [lines[i:i + tts.caption_lines] for i in range(0, len(lines), max(1, tts.caption_lines))]
        total = sum(len("".join(g)) for g in groups) or 1
        t = a
        for g in groups:
            dt = (b - a) * len("".join(g)) / total
            pages.append((t, t + dt, g, script))
            t += dt
    return pages


def caption_frames(frames: Iterable[np.ndarray], pose, tts: TTSConfig) -> Iterator[np.ndarray]:
    """Burn the pose's cues into ``frames`` (HxWx3 uint8, streamed) when ``tts.captions`` is burn;
    otherwise pass them through. Each page's overlay is drawn once and blended into its frames."""
    cues = pose.meta.get("cues")
    if not cues or caption_mode(tts) != "burn":
        yield from frames
        return
    pages = None
    cache: dict[int, tuple[np.ndarray, int]] = {}
    for t, frame in enumerate(frames):
        if pages is None:
            pages = caption_pages(cues, frame.shape[1], tts)
        now = (t + 0.5) / pose.fps
        hit = next((i for i, p in enumerate(pages) if p[0] <= now < p[1]), None)
        if hit is not None:
            if hit not in cache:
                cache = {hit: caption_overlay(pages[hit][2], frame.shape[1], tts, pages[hit][3])}
            overlay, h = cache[hit]
            top = frame.shape[0] - h - int(20 * frame.shape[1] / 512.0)
            frame = frame.copy()
            region = frame[top:top + h].astype(np.float32)
            alpha = overlay[..., 3:4].astype(np.float32) / 255.0
            frame[top:top + h] = (region * (1 - alpha) + overlay[..., :3] * alpha + 0.5).astype(np.uint8)
        yield frame
