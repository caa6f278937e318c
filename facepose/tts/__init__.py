"""Text to speech for lessons: ``synthesize(text, cfg) -> Speech`` (mono float32 audio + one cue per
sentence), backends found by name in :data:`BACKENDS` (``tts.backend``).

- ``espeak`` (default): eSpeak NG from the ``espeakng-loader`` wheel; ~100 languages, no model files.
- ``piper``: Piper neural voices from a local folder (``tts.piper_dir``), see :mod:`facepose.tts.piper`.

Each sentence is synthesised on its own and trimmed to its sound, so a cue's start is the sentence's
speech onset (see :mod:`facepose.tts.base`). ``cached_speech`` keys the result by a digest of everything
that changes the sound and keeps it as a WAV + JSON pair, so identical scripts are synthesised once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from facepose.config import TTSConfig
from facepose.errors import InputError
from facepose.tts.base import Cue, Speech, Voice, paragraphs, voiced_span

__all__ = ["BACKENDS", "Cue", "Speech", "Voice", "cached_speech", "get_backend", "iter_speech", "list_voices",
           "synthesize", "speech_digest"]


def _espeak(cfg: TTSConfig):
    from facepose.tts.espeak import EspeakBackend

    return EspeakBackend(cfg)


def _piper(cfg: TTSConfig):
    from facepose.tts.piper import PiperBackend

    return PiperBackend(cfg)


BACKENDS: dict[str, Callable[[TTSConfig], object]] = {"espeak": _espeak, "piper": _piper}
_INSTANCES: dict[tuple, object] = {}
_INSTANCES_LOCK = threading.Lock()


def get_backend(cfg: TTSConfig):
    """The backend ``cfg.backend`` (one instance per backend and voice folder in a process)."""
    if cfg.backend not in BACKENDS:
        raise InputError(f"unknown speech backend {cfg.backend!r}; choose from {sorted(BACKENDS)} (tts.backend)")
    key = (cfg.backend, cfg.piper_dir)
    with _INSTANCES_LOCK:
        if key not in _INSTANCES:
            _INSTANCES[key] = BACKENDS[cfg.backend](cfg)
        return _INSTANCES[key]


def list_voices(cfg: Optional[TTSConfig] = None) -> list[Voice]:
    """The voices of ``cfg.backend`` (for pickers: name, languages, description)."""
    return get_backend(cfg or TTSConfig()).voices()


def _request(cfg: TTSConfig, voice: Optional[str], language: Optional[str], rate: Optional[float]) -> tuple[str, str, float]:
    rate = float(cfg.rate if rate is None else rate)
    if not 0.25 <= rate <= 4.0:
        raise InputError(f"speaking rate {rate} is out of range; use 0.25 .. 4 (1 is the voice's own speed)")
    name, lang = get_backend(cfg).resolve(voice if voice is not None else cfg.voice,
                                          language if language is not None else cfg.language)
    return name, lang, rate


def iter_speech(text: str, cfg: TTSConfig, *, voice: Optional[str] = None, language: Optional[str] = None,
                rate: Optional[float] = None, markdown: bool = False) -> Iterator[tuple[np.ndarray, Optional[Cue], int]]:
    """The speech of ``text`` in pieces, so a long script never has to sit in memory whole:
    yields (float32 samples, the Cue that starts with them or None for a pause, sample rate). Cue times
    count from the first sample of the first piece."""
    name, _, rate = _request(cfg, voice, language, rate)
    paras = paragraphs(text, markdown=markdown)
    if not paras:
        raise InputError("the script has no words to speak; give text with at least one sentence")
    backend = get_backend(cfg)
    sr, pos, last = None, 0, None  # sample rate, samples so far, the previous cue
    for p, sentences in enumerate(paras):
        for sentence in sentences:
            audio, rate_hz = backend.sentence(sentence, name, rate)
            if sr is None:
                sr = rate_hz
                lead = np.zeros(int(cfg.edge_pause_s * sr), np.float32)
                pos += len(lead)
                yield lead, None, sr
            elif rate_hz != sr:
                raise RuntimeError(f"{backend.name} changed sample rate mid-script ({sr} -> {rate_hz})")
            a, b = voiced_span(audio, sr)
            if b <= a:  # nothing audible (punctuation only)
                continue
            if last is not None:
                gap = np.zeros(int((cfg.paragraph_pause_s if last.paragraph != p else cfg.sentence_pause_s) * sr), np.float32)
                pos += len(gap)
                yield gap, None, sr
            last = Cue(start=pos / sr, end=(pos + b - a) / sr, text=sentence, paragraph=p)
            pos += b - a
            yield np.clip(audio[a:b], -1.0, 1.0).astype(np.float32), last, sr
    if last is None:
        raise InputError("the script made no sound; give text with words in the voice's language")
    yield np.zeros(int(cfg.edge_pause_s * sr), np.float32), None, sr


def synthesize(text: str, cfg: Optional[TTSConfig] = None, *, voice: Optional[str] = None,
               language: Optional[str] = None, rate: Optional[float] = None, markdown: bool = False) -> Speech:
    """Speak ``text`` (paragraphs split at blank lines; ``markdown`` strips Markdown first).

    voice / language / rate override the config's. -> Speech: (N,) float32 audio at the backend's sample
    rate, one Cue per sentence whose start is where that sentence's sound begins (seconds)."""
    cfg = cfg or TTSConfig()
    name, lang, _ = _request(cfg, voice, language, rate)
    parts, cues, sr = [], [], 0
    for audio, cue, sr in iter_speech(text, cfg, voice=voice, language=language, rate=rate, markdown=markdown):  # noqa: B007 - sr is read after the loop
        parts.append(audio)
        if cue is not None:
            cues.append(cue)
    return Speech(audio=np.concatenate(parts), sample_rate=int(sr), cues=cues, voice=name, language=lang,
                  backend=cfg.backend)


def speech_digest(text: str, cfg: TTSConfig, voice: Optional[str] = None, language: Optional[str] = None,
                  rate: Optional[float] = None, markdown: bool = False) -> str:
    """Hex digest of everything that decides the synthesised sound (text, backend, resolved voice, rate,
    pauses; for piper the model file's size and time)."""
    name, lang, rate = _request(cfg, voice, language, rate)
    key = {"text": text, "markdown": markdown, "backend": cfg.backend, "voice": name, "language": lang, "rate": rate,
           "pauses": [cfg.sentence_pause_s, cfg.paragraph_pause_s, cfg.edge_pause_s], "sample_rate": cfg.sample_rate, "v": 1}
    if cfg.backend == "piper" and cfg.piper_dir:
        st = (Path(cfg.piper_dir).expanduser() / f"{name}.onnx").stat()
        key["model"] = [st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def cache_dir(cfg: TTSConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else Path(tempfile.gettempdir()) / "facepose-tts"


#: how many times this process synthesised (cache misses) and reused (hits) speech
STATS = {"synthesized": 0, "cached": 0}
#: every synthesis through the cache appends "<digest>\t<voice>\t<seconds>" here (in the cache folder)
SYNTH_LOG = "synthesized.log"
_LOCK_STALE_S = 300.0


def cached_speech(text: str, cfg: Optional[TTSConfig] = None, *, voice: Optional[str] = None,
                  language: Optional[str] = None, rate: Optional[float] = None, markdown: bool = False,
                  with_audio: bool = True) -> tuple[Speech, Path, bool]:
    """:func:`synthesize` through the digest-keyed cache in ``cfg.cache_dir``.

    -> (speech, path of its WAV, whether it came from the cache). With ``with_audio=False`` the Speech
    holds no samples (``audio`` is empty; ``seconds`` comes from the cache record): for callers that
    read the WAV themselves. Speech is written sentence by sentence (memory stays flat for any length)
    to a temporary name and renamed, so concurrent workers never read half a file; a lock file per
    digest makes workers asking for the same speech at once synthesise it once (the others wait)."""
    import soundfile as sf

    cfg = cfg or TTSConfig()
    digest = speech_digest(text, cfg, voice, language, rate, markdown)
    folder = cache_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    wav, meta, lock = folder / f"{digest}.wav", folder / f"{digest}.json", folder / f"{digest}.lock"
    hit = False
    while True:  # one synthesis per digest, also across processes sharing the folder (Ray actors)
        if meta.is_file() and wav.is_file():
            hit = True
            break
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            try:
                stale = time.time() - lock.stat().st_mtime > _LOCK_STALE_S  # its owner died
            except FileNotFoundError:
                continue
            if stale:
                lock.unlink(missing_ok=True)
            time.sleep(0.05)
    if not hit:
        try:
            name, lang, _ = _request(cfg, voice, language, rate)
            tmp = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}"
            cues, native, samples, out, rate_out = [], 0, 0, None, int(cfg.sample_rate)
            try:
                for audio, cue, sr in iter_speech(text, cfg, voice=voice, language=language, rate=rate, markdown=markdown):
                    if out is None:
                        out = sf.SoundFile(f"{tmp}.wav", "w", samplerate=rate_out, channels=1, subtype="FLOAT", format="WAV")
                    # Resampled piece by piece to the cache's rate; each piece ends exactly where the native
                    # timeline says, so cue times (native) and samples never drift apart.
                    native += len(audio)
                    end = int(round(native * rate_out / sr))
                    out.write(_fit(_resample(audio, sr, rate_out), end - samples))
                    samples = end
                    if cue is not None:
                        cues.append(cue)
            finally:
                if out is not None:
                    out.close()
            sr = rate_out
            STATS["synthesized"] += 1
            Path(f"{tmp}.json").write_text(json.dumps({
                "cues": [dataclasses.asdict(c) for c in cues], "voice": name, "language": lang,
                "backend": cfg.backend, "seconds": samples / sr, "sample_rate": sr}, ensure_ascii=False), encoding="utf-8")
            os.replace(f"{tmp}.wav", wav)
            os.replace(f"{tmp}.json", meta)  # written last: it vouches for the WAV
            with open(folder / SYNTH_LOG, "a", encoding="utf-8") as f:  # one short line: an atomic append
                f.write(f"{digest}\t{name}\t{samples / sr:.3f}\n")
        finally:
            lock.unlink(missing_ok=True)
    else:
        STATS["cached"] += 1
    return _load_cached(wav, meta, with_audio), wav, hit


def _resample(audio: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target or not len(audio) or not np.any(audio):
        return np.zeros(int(round(len(audio) * target / sr)), np.float32) if sr != target else audio
    import soxr

    return soxr.resample(audio, sr, target).astype(np.float32, copy=False)


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad to exactly ``n`` samples."""
    return audio[:n] if len(audio) >= n else np.concatenate([audio, np.zeros(n - len(audio), np.float32)])


def _load_cached(wav: Path, meta: Path, with_audio: bool = True) -> Speech:
    import soundfile as sf

    info = json.loads(meta.read_text(encoding="utf-8"))
    if with_audio:
        audio, sr = sf.read(wav, dtype="float32")
    else:
        sr = sf.info(str(wav)).samplerate
        audio = np.zeros(0, np.float32)
    speech = Speech(audio=audio, sample_rate=int(sr), cues=[Cue(**c) for c in info["cues"]],
                    voice=info["voice"], language=info["language"], backend=info["backend"])
    speech.duration_s = float(info["seconds"])
    return speech
