"""eSpeak NG through its C library, from the ``espeakng-loader`` wheel (the library and its voice data
bundled: no system package needed). Called with ctypes in synchronous mode: the library hands back
16-bit samples at 22050 Hz through a callback. The library keeps one global state, so calls are
serialised by a lock."""

from __future__ import annotations

import ctypes
import threading
from typing import Optional

import numpy as np

from facepose.config import TTSConfig
from facepose.errors import InputError, ModelNotFoundError
from facepose.tts.base import Voice

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE = 1
_DEFAULT_WPM = 175  # eSpeak's own default speed, words per minute
# A bare language code names this voice (otherwise the first voice listing the language).
_PREFERRED = {"en": "en-us", "zh": "cmn", "zh-cn": "cmn", "fr": "fr-fr", "pt": "pt-br"}


class _VoiceStruct(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.RLock()
_STATE: dict = {}


def _library():
    """(lib, sample_rate), loaded and initialised once per process."""
    if "lib" in _STATE:
        return _STATE["lib"], _STATE["sr"]
    try:
        import espeakng_loader
    except ImportError:
        raise ModelNotFoundError("the espeak speech backend needs the espeakng-loader package "
                                 "(pip install espeakng-loader==0.2.4; bash scripts/setup.sh installs it)") from None
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceStruct))
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if sr <= 0:
        raise ModelNotFoundError(f"eSpeak NG did not start with its data at {espeakng_loader.get_data_path()}; "
                                 f"reinstall espeakng-loader")
    chunks: list[np.ndarray] = []

    def on_audio(wav, n, events) -> int:  # called by the library during espeak_Synth
        if n > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    cb = _CALLBACK(on_audio)
    lib.espeak_SetSynthCallback(cb)
    _STATE.update(lib=lib, sr=sr, cb=cb, chunks=chunks, voice=None)
    return lib, sr


def _languages(raw: int) -> tuple[str, ...]:
    """The packed ``languages`` field: (priority byte, NUL-terminated name) pairs, ended by a 0 byte."""
    out, p = [], raw
    while p and ctypes.c_ubyte.from_address(p).value != 0:
        name = ctypes.string_at(p + 1)
        out.append(name.decode("utf-8", "replace"))
        p += 2 + len(name)
    return tuple(out)


class EspeakBackend:
    """The embedded default backend: eSpeak NG's ~100 languages, formant synthesis, CPU, no model files."""

    name = "espeak"

    def __init__(self, cfg: Optional[TTSConfig] = None):
        self.cfg = cfg

    def voices(self) -> list[Voice]:
        with _LOCK:
            lib, _ = _library()
            arr = lib.espeak_ListVoices(None)
            out, i = [], 0
            while arr[i]:
                v = arr[i].contents
                ident = (v.identifier or b"").decode()
                langs = _languages(v.languages)
                out.append(Voice(name=langs[0] if langs else ident, languages=langs, backend=self.name,
                                 description=(v.name or b"").decode()))
                i += 1
        return out

    def resolve(self, voice: Optional[str], language: Optional[str]) -> tuple[str, str]:
        voices = self.voices()
        names = {v.name.lower(): v for v in voices}
        for lang, name in _PREFERRED.items():
            if name in names:
                names.setdefault(lang, names[name])
        for v in voices:  # a language code names the first voice that speaks it ("zh" -> cmn, "en" -> en-gb)
            for lang in v.languages:
                names.setdefault(lang.lower(), v)
        want = (voice or language or "en").strip()
        key = want.lower().replace("_", "-")
        if key not in names and key.split("-")[0] in names:
            key = key.split("-")[0]
        if key not in names:
            raise InputError(f"unknown espeak voice or language {want!r}; choose from "
                             f"{sorted(v.name for v in voices)} (facepose.tts.list_voices)")
        return names[key].name, (language or names[key].languages[0])

    def sentence(self, text: str, voice: str, rate: float) -> tuple[np.ndarray, int]:
        data = text.encode("utf-8") + b"\0"
        with _LOCK:
            lib, sr = _library()
            if _STATE["voice"] != voice:
                if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise InputError(f"espeak cannot load voice {voice!r}; see facepose tts voices")
                _STATE["voice"] = voice
            lib.espeak_SetParameter(_RATE, int(round(_DEFAULT_WPM * rate)), 0)
            chunks = _STATE["chunks"]
            chunks.clear()
            lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
            chunks.clear()
        return (pcm.astype(np.float32) / 32768.0), int(sr)
