"""Piper neural voices (the ``piper-tts`` package: VITS models exported to ONNX, run by onnxruntime).

A voice is two files in the folder ``tts.piper_dir``: ``<voice>.onnx`` and ``<voice>.onnx.json`` (the
voice config: sample rate, the espeak voice used for phonemes, the phoneme -> id map). Nothing is
downloaded. Piper's own code turns text into phoneme ids (its bundled eSpeak NG phonemizer + the id map),
feeds the model ``input`` (1, P) int64, ``input_lengths`` (1,) int64, ``scales`` (3,) float32
(noise, length, noise_w) and optional ``sid`` (1,) int64, and scales the output (1, 1, N) to [-1, 1].
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from facepose.config import TTSConfig
from facepose.errors import InputError, ModelNotFoundError
from facepose.tts.base import Voice

_HOW = ("put <voice>.onnx and <voice>.onnx.json (e.g. en_US-lessac-medium.onnx and "
        "en_US-lessac-medium.onnx.json from a Piper voice release) into that folder and set tts.voice=<voice>")


class PiperBackend:
    """Neural voices from a local folder (``tts.piper_dir``); one loaded ONNX session per voice."""

    name = "piper"

    def __init__(self, cfg: TTSConfig):
        self.cfg = cfg
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def _folder(self) -> Path:
        folder = self.cfg.piper_dir
        if not folder:
            raise ModelNotFoundError(f"the piper speech backend needs a voice folder: set tts.piper_dir=/path/to/voices, "
                                     f"then {_HOW}")
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"piper voice folder {folder} does not exist; create it and {_HOW}")
        return path

    def voices(self) -> list[Voice]:
        import json

        out = []
        for model in sorted(self._folder().glob("*.onnx")):
            meta = model.with_name(model.name + ".json")
            if not meta.is_file():
                continue
            info = json.loads(meta.read_text(encoding="utf-8"))
            lang = info.get("language", {}).get("code") or info.get("espeak", {}).get("voice", "")
            out.append(Voice(name=model.stem, languages=(lang,) if lang else (), backend=self.name,
                             description=info.get("dataset", "")))
        return out

    def resolve(self, voice: Optional[str], language: Optional[str]) -> tuple[str, str]:
        folder = self._folder()
        voices = self.voices()
        if voice:
            model = folder / f"{voice}.onnx"
            missing = [p.name for p in (model, folder / f"{voice}.onnx.json") if not p.is_file()]
            if missing:
                raise ModelNotFoundError(f"piper voice {voice!r}: {', '.join(missing)} not found in {folder}; {_HOW}")
            match = [v for v in voices if v.name == voice]
            return voice, language or (match[0].languages[0] if match and match[0].languages else "")
        if not voices:
            raise ModelNotFoundError(f"no piper voice in {folder}; {_HOW}")
        if language:
            want = language.lower().replace("-", "_")
            for v in voices:
                if any(lang.lower().replace("-", "_").startswith(want) for lang in v.languages):
                    return v.name, language
            raise InputError(f"no piper voice for language {language!r} in {folder}; voices there: "
                             f"{[v.name for v in voices]}")
        return voices[0].name, voices[0].languages[0] if voices[0].languages else ""

    def load(self, voice: str):
        """The piper.PiperVoice for ``voice`` (loaded once)."""
        with self._lock:
            if voice not in self._loaded:
                try:
                    from piper import PiperVoice
                except ImportError:
                    raise ModelNotFoundError("the piper speech backend needs the piper-tts package "
                                             "(pip install piper-tts==1.8.0)") from None
                self.resolve(voice, None)
                self._loaded[voice] = PiperVoice.load(self._folder() / f"{voice}.onnx")
            return self._loaded[voice]

    def sentence(self, text: str, voice: str, rate: float) -> tuple[np.ndarray, int]:
        from piper import SynthesisConfig

        pv = self.load(voice)
        syn = SynthesisConfig(length_scale=float(pv.config.length_scale) / rate)
        chunks = [c.audio_float_array for c in pv.synthesize(text, syn)]
        audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        return audio, int(pv.config.sample_rate)
