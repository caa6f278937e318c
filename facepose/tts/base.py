"""Speech synthesis: the data a backend returns and the text handling every backend shares.

A script is split into paragraphs (blank lines) and sentences; each sentence is synthesised on its own,
its leading and trailing silence trimmed, and the sentences laid end to end with fixed pauses
(``tts.sentence_pause_s``, ``tts.paragraph_pause_s``). The cue of a sentence therefore starts exactly
where its sound starts, which is what subtitles need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np


@dataclass(frozen=True)
class Voice:
    """A voice a backend can speak with: ``name`` is what ``voice=`` takes; ``languages`` the language
    codes it speaks (BCP 47-ish, as the backend names them)."""

    name: str
    languages: tuple[str, ...]
    backend: str
    description: str = ""


@dataclass(frozen=True)
class Cue:
    """One subtitle: ``start`` / ``end`` in seconds from the start of the speech, the sentence ``text``,
    and the ``paragraph`` index it belongs to."""

    start: float
    end: float
    text: str
    paragraph: int = 0


@dataclass
class Speech:
    """audio: (N,) float32 mono in [-1, 1] at ``sample_rate`` Hz; cues: one per sentence, in order."""

    audio: np.ndarray
    sample_rate: int
    cues: list[Cue] = field(default_factory=list)
    voice: str = ""
    language: str = ""
    backend: str = ""
    duration_s: Optional[float] = None  # set when ``audio`` was not loaded (facepose.tts.cached_speech)

    @property
    def seconds(self) -> float:
        return self.duration_s if self.duration_s is not None else len(self.audio) / float(self.sample_rate)


class SpeechBackend(Protocol):
    """What a backend implements: the voices it has, and one sentence to audio."""

    name: str

    def voices(self) -> list[Voice]: ...

    def resolve(self, voice: Optional[str], language: Optional[str]) -> tuple[str, str]:
        """(voice name, language) for the request; InputError naming the choices when unknown."""
        ...

    def sentence(self, text: str, voice: str, rate: float) -> tuple[np.ndarray, int]:
        """One sentence -> ((N,) float32 audio in [-1, 1], sample rate)."""
        ...


# -- text ----------------------------------------------------------------------------------------
_MD_RULES = [
    (re.compile(r"```.*?```", re.S), " "),  # fenced code is not read aloud
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> their text
    (re.compile(r"^\s{0,3}#{1,6}\s*", re.M), ""),  # headings
    (re.compile(r"^\s{0,3}>\s?", re.M), ""),  # quotes
    (re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.M), ""),  # list markers
    (re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$", re.M), ""),  # rules
    (re.compile(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1"), r"\2"),  # emphasis, inline code
    (re.compile(r"<[^>]+>"), ""),  # html tags
]
# A sentence ends at . ! ? ; (and their CJK / Arabic forms) followed by space or the end; CJK full stops
# need no space after them.
_SENTENCE_END = re.compile(r"(?<=[.!?;…])[\"'”’)\]]*\s+|(?<=[。！？；])[」』”’）]*\s*|(?<=[؟۔])\s*")


def strip_markdown(text: str) -> str:
    """Markdown -> the plain text to be spoken (headings, emphasis, links and list markers removed)."""
    for pattern, repl in _MD_RULES:
        text = pattern.sub(repl, text)
    return text


def paragraphs(text: str, markdown: bool = False) -> list[list[str]]:
    """Script text -> paragraphs (split at blank lines) of sentences; empty ones dropped. A markdown
    heading is a paragraph of its own."""
    if markdown:
        text = re.sub(r"^(\s{0,3}#{1,6}\s.*)$", r"\n\1\n", text, flags=re.M)
        text = strip_markdown(text)
    out = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        block = " ".join(block.split())
        if not block:
            continue
        sentences = [s.strip() for s in _SENTENCE_END.split(block) if s and s.strip()]
        sentences = [s for s in sentences if any(ch.isalnum() for ch in s)]
        if sentences:
            out.append(sentences)
    return out


def voiced_span(audio: np.ndarray, sample_rate: int, threshold_db: float = -40.0, margin_s: float = 0.02) -> tuple[int, int]:
    """(first, last) sample of the sound in ``audio``: 10 ms windows louder than ``threshold_db`` below
    the peak window, widened by ``margin_s``. (0, 0) for silence."""
    win = max(1, int(sample_rate * 0.01))
    n = len(audio) // win
    if n == 0:
        return 0, 0
    rms = np.sqrt(np.mean(audio[: n * win].reshape(n, win).astype(np.float64) ** 2, axis=1) + 1e-12)
    peak = rms.max()
    if peak < 1e-4:
        return 0, 0
    loud = np.flatnonzero(20 * np.log10(rms / peak) > threshold_db)
    m = int(margin_s * sample_rate)
    return max(0, loud[0] * win - m), min(len(audio), (loud[-1] + 1) * win + m)
