"""Inputs the old reader refused or misread: AV1 video, a codec no decoder reads, a WAV whose size
fields are 0, a phone video's rotation tag, seeking into a long video; and the one-decode curation."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from facepose.config import Config
from facepose.errors import MediaError
from facepose.media.audio import audio_duration, load_audio
from facepose.media.video import iter_frames, probe_video, read_frames
from facepose.timeline import FPS
from tests.fixtures_batch import moving_face_frames



def encode(path: Path, frames: np.ndarray, codec: str = "libx264", gop: int = 0, rotation: float = 0.0) -> Path:
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "18", "preset": "veryfast", **({"g": str(gop), "keyint_min": str(gop)} if gop else {})}
        elif codec == "libsvtav1":
            s.options = {"preset": "12", "crf": "35"}
        if rotation:
            s.set_display_rotation(rotation)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def binary_frames(n: int) -> np.ndarray:
    """(n, 64, 128, 3): frame k shows k in binary as 8 white/black columns of 16 px (MSB left)."""
    bits = (np.arange(n)[:, None] >> np.arange(7, -1, -1)[None, :]) & 1  # (n, 8)
    cols = np.repeat(bits * 255, 16, axis=1).astype(np.uint8)  # (n, 128)
    return np.broadcast_to(cols[:, None, :, None], (n, 64, 128, 3)).copy()


def frame_ids(frames: np.ndarray) -> np.ndarray:
    blocks = frames[:, 16:48, :, :].reshape(len(frames), 32, 8, 16, 3).mean(axis=(1, 3, 4))  # (n, 8)
    bits = (blocks > 127).astype(int)
    return (bits * (1 << np.arange(7, -1, -1))[None]).sum(axis=1)


# -- AV1 and unknown codecs --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def av1_clip(tmp_path_factory, astronaut) -> Path:
    """2 s at 24 fps of a moving real face, AV1 (SVT-AV1) in mp4: the kind of av1.mp4."""
    frames = np.stack(list(moving_face_frames(astronaut, 2.0)))
    return encode(tmp_path_factory.mktemp("av1") / "av1.mp4", frames, codec="libsvtav1")


def test_an_av1_clip_gives_its_pose_frames(av1_clip, astronaut):
    from facepose.pose.source import from_source

    info = probe_video(av1_clip)
    assert info.codec in ("libdav1d", "av1") and info.frames == 48
    assert read_frames(av1_clip).shape == (48, 256, 256, 3)
    pose = from_source(str(av1_clip), astronaut)
    assert len(pose) == 48 and pose.visible.all()


def test_a_codec_no_decoder_reads_is_named(tmp_path, av1_clip):
    data = av1_clip.read_bytes()
    at = data.find(b"av01", data.find(b"stsd"))
    assert at > 0
    bad = tmp_path / "unknown.mp4"
    bad.write_bytes(data[:at] + b"xv01" + data[at + 4 :])
    for read in (probe_video, lambda p: next(iter_frames(p))):
        with pytest.raises(MediaError) as err:
            read(bad)
        text = str(err.value)
        assert "unknown.mp4" in text and "'xv01'" in text and "no installed decoder" in text and "\n" not in text


# -- WAV with size fields of 0 ------------------------------------------------------------------------
def zero_size_wav(path: Path, y: np.ndarray, sr: int) -> Path:
    sf.write(str(path), y, sr, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[4:8] = b"\0\0\0\0"  # RIFF size
    at = data.find(b"data")
    data[at + 4 : at + 8] = b"\0\0\0\0"  # data size
    path.write_bytes(bytes(data))
    return path


def test_a_wav_with_zero_size_fields_gives_all_its_samples(tmp_path, speech_wav, astronaut):
    from facepose.pose.source import from_source

    y = load_audio(str(speech_wav), sr=16000)
    assert sf.info(str(zero_size_wav(tmp_path / "z.wav", y, 16000))).frames == 0  # what libsndfile sees
    got = load_audio(tmp_path / "z.wav", sr=16000)
    assert len(got) == len(y) and np.abs(got - y).max() < 2e-4  # 16-bit quantisation
    assert audio_duration(tmp_path / "z.wav") == pytest.approx(len(y) / 16000, abs=1e-3)
    pose = from_source(str(tmp_path / "z.wav"), astronaut)
    assert len(pose) == int(np.floor(len(y) / 16000 * 24 + 0.5))


# -- rotation, seeking -----------------------------------------------------------------------------
def test_a_rotation_tag_gives_upright_frames(tmp_path):
    frames = np.zeros((6, 32, 64, 3), np.uint8)
    frames[:, :, :16] = 255  # a white band on the left of the stored frame
    path = encode(tmp_path / "phone.mp4", frames, rotation=-90)  # displayed turned 90 degrees clockwise
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (32, 64, 270)
    got = read_frames(path)
    assert got.shape == (6, 64, 32, 3)
    assert got[:, :16].mean() > 240 and got[:, 20:].mean() < 15  # the band is on top, as displayed


def test_a_range_deep_in_a_video_seeks_and_gives_the_same_frames(tmp_path):
    path = encode(tmp_path / "long.mp4", binary_frames(240), gop=24)  # 10 s, a keyframe each second
    full = frame_ids(read_frames(path))
    assert full.tolist() == list(range(240))
    part = frame_ids(read_frames(path, start_s=6.3, end_s=8.0))
    assert part.tolist() == full[151:192].tolist()
    chunks = list(iter_frames(path, fps=10, start=70, stop=90, chunk=7))
    assert [len(c) for c in chunks] == [7, 7, 6]
    assert frame_ids(np.concatenate(chunks)).tolist() == [round(i * 2.4) for i in range(70, 90)]


# -- curation decodes once ---------------------------------------------------------------------------
def test_curation_decodes_once_and_rereads_only_a_shot_longer_than_its_buffer(tmp_path, astronaut, monkeypatch):
    import dataclasses

    import facepose.media.video as mv
    from facepose.curate import Curator
    from facepose.manifest import CurateJob
    from tests.fixtures_batch import write_face_video

    video = write_face_video(tmp_path / "v.mp4", astronaut, seconds=2.0)
    reads: list[dict] = []
    real = mv.iter_frames

    def counting(*args, **kwargs):
        reads.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mv, "iter_frames", counting)
    cfg = Config()
    once = Curator(cfg)(CurateJob("v", video), str(tmp_path / "a"))
    assert once.result["status"] == "ok" and once.result["kept"] == 1 and len(reads) == 1
    reads.clear()
    small = dataclasses.replace(cfg, curate=dataclasses.replace(cfg.curate, buffer_mb=1))  # about 5 frames of 256x256
    twice = Curator(small)(CurateJob("v", video), str(tmp_path / "b"))
    assert twice.result["status"] == "ok" and len(reads) == 2 and reads[1]["start"] == 0 and reads[1]["stop"] == 48
    a = read_frames(once.clips[0]["clip"]).astype(int)
    b = read_frames(twice.clips[0]["clip"]).astype(int)
    assert a.shape == b.shape == (48, 512, 512, 3) and np.abs(a - b).max() == 0
