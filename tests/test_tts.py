"""Speech synthesis backends: eSpeak NG from the espeakng-loader wheel (real synthesis), and Piper's
pre/post-processing around a tiny ONNX voice built in the test (real onnxruntime, real piper-tts code)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facepose.config import TTSConfig
from facepose.errors import InputError, ModelNotFoundError
from facepose.tts import STATS, cached_speech, get_backend, list_voices, synthesize


def test_espeak_is_the_bundled_library_and_speaks_the_lesson_languages():
    import espeakng_loader

    from facepose.tts.espeak import _library

    lib, sr = _library()
    assert lib._name == espeakng_loader.get_library_path() and sr == 22050  # the wheel's, not a system package
    names = {v.name for v in list_voices()}
    assert {"cmn", "ar", "es", "en-us"} <= names
    backend = get_backend(TTSConfig())
    assert backend.resolve(None, "zh") == ("cmn", "zh")
    assert backend.resolve(None, "es-ES")[0] == "es"
    assert backend.resolve("ar", None)[0] == "ar"
    with pytest.raises(InputError, match="unknown espeak voice or language 'xx-nope'.*cmn"):
        backend.resolve("xx-nope", None)


def test_sentences_become_cues_at_their_sound_with_paragraph_pauses():
    cfg = TTSConfig(sentence_pause_s=0.3, paragraph_pause_s=1.0, edge_pause_s=0.2)
    speech = synthesize("Good morning class. Today we count.\n\nOne two three.", cfg)
    assert speech.sample_rate == 22050 and speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert [c.text for c in speech.cues] == ["Good morning class.", "Today we count.", "One two three."]
    assert [c.paragraph for c in speech.cues] == [0, 0, 1]
    sr, y = speech.sample_rate, speech.audio
    assert abs(speech.cues[0].start - 0.2) < 1e-6
    assert abs((speech.cues[1].start - speech.cues[0].end) - 0.3) < 1e-3
    assert abs((speech.cues[2].start - speech.cues[1].end) - 1.0) < 1e-3
    for c in speech.cues:  # silence before each cue, sound right at its start
        assert np.abs(y[int((c.start - 0.15) * sr):int((c.start - 0.01) * sr)]).max() < 1e-3
        assert np.abs(y[int(c.start * sr):int((c.start + 0.1) * sr)]).max() > 0.05
    assert abs(speech.seconds - (speech.cues[-1].end + 0.2)) < 1e-3


def test_rate_speeds_speech_up():
    slow = synthesize("The quick brown fox jumps over the lazy dog.", TTSConfig(rate=1.0))
    fast = synthesize("The quick brown fox jumps over the lazy dog.", TTSConfig(rate=2.0))
    speaking = lambda s: s.cues[0].end - s.cues[0].start  # noqa: E731
    assert 0.4 < speaking(fast) / speaking(slow) < 0.7
    with pytest.raises(InputError, match="rate"):
        synthesize("Hi.", TTSConfig(rate=0.0))


def test_empty_script_is_a_clear_error():
    with pytest.raises(InputError, match="no words"):
        synthesize("  \n\n ... \n")


def test_identical_scripts_are_synthesised_once(tmp_path):
    cfg = TTSConfig(cache_dir=str(tmp_path))
    before = dict(STATS)
    a, wav_a, hit_a = cached_speech("Cache me if you can.", cfg)
    b, wav_b, hit_b = cached_speech("Cache me if you can.", cfg)
    c, _, hit_c = cached_speech("Cache me if you can.", cfg, voice="es")
    assert (hit_a, hit_b, hit_c) == (False, True, False) and wav_a == wav_b
    assert STATS["synthesized"] - before["synthesized"] == 2 and STATS["cached"] - before["cached"] == 1
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-6)
    # Streamed to the cache at tts.sample_rate = synthesised whole at the voice's rate (eSpeak may differ by a
    # few samples after a voice switch), resampled
    whole = synthesize("Cache me if you can.", cfg)
    assert a.sample_rate == 16000 and whole.sample_rate == 22050
    assert abs(whole.seconds - a.seconds) < 0.01
    assert [c.text for c in whole.cues] == [c.text for c in a.cues]
    import soxr

    ref = soxr.resample(whole.audio, 22050, 16000)
    n = min(len(ref), len(a.audio)) // 160 * 160
    env = lambda y: np.sqrt((y[:n].reshape(-1, 160) ** 2).mean(1))  # noqa: E731 - 10 ms loudness
    assert np.corrcoef(env(ref), env(a.audio))[0, 1] > 0.95
    assert a.cues == b.cues and b.voice == "en-us" and c.voice == "es"


# -- piper ---------------------------------------------------------------------------------------
def test_piper_without_a_voice_folder_says_which_files_go_where(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"tts.piper_dir.*<voice>.onnx and <voice>.onnx.json"):
        synthesize("Hello.", TTSConfig(backend="piper"))
    missing = tmp_path / "voices"
    with pytest.raises(ModelNotFoundError, match=f"{missing} does not exist.*<voice>.onnx.json"):
        synthesize("Hello.", TTSConfig(backend="piper", piper_dir=str(missing)))
    missing.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no piper voice in .*voices"):
        synthesize("Hello.", TTSConfig(backend="piper", piper_dir=str(missing)))
    with pytest.raises(ModelNotFoundError, match=r"en_US-x.onnx, en_US-x.onnx.json not found"):
        synthesize("Hello.", TTSConfig(backend="piper", piper_dir=str(missing), voice="en_US-x"))


def tiny_piper_voice(folder, name: str, phoneme_type: str, id_map: dict, sample_rate: int = 16000):
    """A VITS-shaped ONNX voice: inputs ``input`` (1, P) int64, ``input_lengths`` (1,) int64, ``scales``
    (3,) float32; output (1, 1, P + 4) float32 = the ids, then the three scales, then the length: what
    went in comes out as audio, so the test can read the model's inputs back."""
    import onnx
    from onnx import TensorProto, helper

    axes0 = helper.make_tensor("axes0", TensorProto.INT64, [1], [0])
    axes1 = helper.make_tensor("axes1", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Cast", ["input"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["scales", "axes0"], ["sc"]),
        helper.make_node("Cast", ["input_lengths"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["len_f", "axes0"], ["len2"]),
        helper.make_node("Concat", ["ids_f", "sc", "len2"], ["cat"], axis=1),
        helper.make_node("Unsqueeze", ["cat", "axes1"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_piper",
        [helper.make_tensor_value_info("input", TensorProto.INT64, [1, "P"]),
         helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "N"])],
        initializer=[axes0, axes1])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / f"{name}.onnx"))
    (folder / f"{name}.onnx.json").write_text(json.dumps({
        "audio": {"sample_rate": sample_rate}, "espeak": {"voice": "en-us"}, "language": {"code": "en_US"},
        "phoneme_type": phoneme_type, "num_symbols": 256, "num_speakers": 1, "phoneme_id_map": id_map,
        "inference": {"noise_scale": 0.5, "length_scale": 1.2, "noise_w": 0.75}}), encoding="utf-8")


def test_piper_feeds_phoneme_ids_and_scales_and_scales_the_output(tmp_path):
    id_map = {"_": [0], "^": [1], "$": [2], " ": [3], "a": [5], "b": [6]}
    tiny_piper_voice(tmp_path, "tiny", "text", id_map, sample_rate=16000)
    cfg = TTSConfig(backend="piper", piper_dir=str(tmp_path))
    assert [(v.name, v.languages) for v in list_voices(cfg)] == [("tiny", ("en_US",))]
    backend = get_backend(cfg)
    assert backend.resolve(None, "en") == ("tiny", "en")
    audio, sr = backend.sentence("ab a", "tiny", rate=2.0)
    assert sr == 16000 and audio.dtype == np.float32
    # phonemes = the text's code points; ids: BOS, PAD, then each phoneme followed by PAD, EOS (piper's layout)
    ids = [1, 0, 5, 0, 6, 0, 3, 0, 5, 0, 2]
    expected = np.array(ids + [0.5, 1.2 / 2.0, 0.75, len(ids)], np.float32)  # length_scale = voice's / rate
    np.testing.assert_allclose(audio, expected / expected.max(), atol=1e-6)  # peak-normalised to [-1, 1]


def test_piper_espeak_phonemes_use_the_voice_id_map(tmp_path):
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    tiny_piper_voice(tmp_path, "ipa", "espeak", DEFAULT_PHONEME_ID_MAP)
    backend = get_backend(TTSConfig(backend="piper", piper_dir=str(tmp_path)))
    audio, _ = backend.sentence("Hello world.", "ipa", rate=1.0)
    n = int(round(audio[-1] / audio[-2] * 0.75))  # the length, read back against noise_w
    ids = np.round(audio[:n] / audio[-1] * n).astype(int)
    inverse = {v[0]: k for k, v in DEFAULT_PHONEME_ID_MAP.items()}
    phonemes = "".join(inverse[i] for i in ids[2:-1:2])
    assert ids[0] == 1 and ids[-1] == 2 and (ids[1:-1:2] == 0).all() and (ids[2:-1:2] != 0).all()
    assert phonemes.startswith("həl") and "wˈɜːld" in phonemes, phonemes


def tone_piper_voice(folder, name: str = "tone", hop: int = 256, sample_rate: int = 16000):
    """A piper voice whose ONNX model sings a tone ``hop * P * length_scale`` samples long for P phoneme
    ids, as a VITS voice's duration follows its input and its length scale."""
    import onnx
    from onnx import TensorProto, helper

    def const(name, value, dtype=TensorProto.FLOAT, dims=()):
        return helper.make_tensor(name, dtype, list(dims), [value] if not dims else value)

    nodes = [
        helper.make_node("Cast", ["input_lengths"], ["len_f"], to=TensorProto.FLOAT),
        helper.make_node("Squeeze", ["len_f", "axis0"], ["len_s"]),
        helper.make_node("Gather", ["scales", "one"], ["length_scale"], axis=0),
        helper.make_node("Mul", ["len_s", "hop"], ["n0"]),
        helper.make_node("Mul", ["n0", "length_scale"], ["limit"]),
        helper.make_node("Range", ["zero", "limit", "step"], ["t"]),
        helper.make_node("Mul", ["t", "omega"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["wave"]),
        helper.make_node("Mul", ["wave", "half"], ["audio"]),
        helper.make_node("Reshape", ["audio", "shape"], ["output"]),
    ]
    inits = [const("axis0", [0], TensorProto.INT64, (1,)), const("one", 1, TensorProto.INT64),
             const("hop", float(hop)), const("zero", 0.0), const("step", 1.0), const("omega", 0.3),
             const("half", 0.5), const("shape", [1, 1, -1], TensorProto.INT64, (3,))]
    graph = helper.make_graph(
        nodes, "tone",
        [helper.make_tensor_value_info("input", TensorProto.INT64, [1, "P"]),
         helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "N"])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / f"{name}.onnx"))
    id_map = {"_": [0], "^": [1], "$": [2], " ": [3], ".": [4], **{c: [10 + i] for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    (folder / f"{name}.onnx.json").write_text(json.dumps({
        "audio": {"sample_rate": sample_rate}, "espeak": {"voice": "en-us"}, "language": {"code": "en_US"},
        "phoneme_type": "text", "num_symbols": 64, "num_speakers": 1, "phoneme_id_map": id_map,
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}}), encoding="utf-8")


def test_piper_voice_speaks_a_script_with_cues_and_rate(tmp_path):
    tone_piper_voice(tmp_path)
    cfg = TTSConfig(backend="piper", piper_dir=str(tmp_path), voice="tone", edge_pause_s=0.2, sentence_pause_s=0.3)
    speech = synthesize("abc def.\n\nxyz.", cfg)
    assert speech.backend == "piper" and speech.voice == "tone" and speech.sample_rate == 16000
    assert [c.text for c in speech.cues] == ["abc def.", "xyz."]
    # "abc def." is 8 code points -> 2 * 8 + 3 ids (BOS, PAD after each, EOS) -> 19 * 256 samples
    first = speech.cues[0]
    assert abs((first.end - first.start) - 19 * 256 / 16000) < 0.03
    assert abs(speech.cues[1].start - first.end - cfg.paragraph_pause_s) < 1e-3
    fast = synthesize("abc def.\n\nxyz.", cfg, rate=2.0)
    assert abs((fast.cues[0].end - fast.cues[0].start) - 19 * 128 / 16000) < 0.03
