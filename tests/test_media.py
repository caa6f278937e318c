"""facepose.media: video read/resample/write, audio from files and video tracks, images, bad inputs."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from facepose import storage
from facepose.errors import InputError, MediaError, StorageError
from facepose.media import (
    VideoWriter,
    audio_duration,
    iter_frames,
    load_audio,
    probe_video,
    read_frames,
    read_image,
    write_image,
    write_video,
)
from facepose.media.video import frame_indices
from facepose.timeline import SAMPLE_RATE as SR

# Grey levels 4 apart survive H.264 at crf 18 (measured error <= 1), so a frame's level says which
# source frame it is.
STEP = 4
BASE = 16


def counter_frames(n: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """(n, H, W, 3) uint8: frame k is uniform grey BASE + STEP*k, a frame counter the codec keeps."""
    w, h = size
    levels = BASE + STEP * np.arange(n)
    assert levels[-1] <= 235
    return np.broadcast_to(levels[:, None, None, None].astype(np.uint8), (n, h, w, 3)).copy()


def frame_numbers(frames: np.ndarray) -> np.ndarray:
    """Which counter frame each decoded frame is: (T, H, W, 3) -> (T,) int."""
    return np.rint((frames.reshape(len(frames), -1).mean(axis=1) - BASE) / STEP).astype(int)


def chirp(seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.5 * np.sin(2 * np.pi * (150 + 300 * t) * t)).astype(np.float32)


@pytest.fixture(scope="module")
def clip24(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """2 s at 24 fps (48 counter frames) with a 2 s chirp as AAC audio."""
    path = tmp_path_factory.mktemp("media") / "clip24.mp4"
    audio = chirp(2.0)
    n = write_video(path, counter_frames(48), fps=24, audio=audio)
    assert n == 48
    return path, audio


@pytest.fixture(scope="module")
def clip30(tmp_path_factory) -> Path:
    """1.5 s at 30 fps: 45 counter frames, no audio."""
    path = tmp_path_factory.mktemp("media") / "clip30.mp4"
    write_video(path, counter_frames(45), fps=30)
    return path


# -- video: reading and resampling ----------------------------------------------------------------
def test_round_trip_keeps_every_frame_in_order_at_24fps(clip24):
    path, _ = clip24
    frames = read_frames(path, fps=24)
    assert frames.shape == (48, 48, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frame_numbers(frames), np.arange(48))
    assert np.abs(frames.astype(int) - counter_frames(48).astype(int)).max() <= 2


def test_probe_reports_rate_count_size_duration_and_audio(clip24, clip30):
    info = probe_video(clip24[0])
    assert (info.fps, info.frames, info.width, info.height, info.has_audio) == (24.0, 48, 64, 48, True)
    assert info.duration == pytest.approx(2.0, abs=1e-3)
    info30 = probe_video(clip30)
    assert (info30.fps, info30.frames, info30.has_audio) == (30.0, 45, False)
    assert info30.frames_at(24) == 36


def test_resampling_30_to_24fps_keeps_duration_and_takes_the_nearest_source_frame(clip30):
    frames = read_frames(clip30, fps=24)
    assert len(frames) == round(24 * 1.5)
    # output frame i sits at t = i/24 s; the nearest 30 fps source frame is round(i * 30/24), ties up
    expected = np.floor(np.arange(36) * 30 / 24 + 0.5).astype(int)
    np.testing.assert_array_equal(frame_numbers(frames), expected)


def test_resampling_24_to_30fps_repeats_frames_without_reordering(clip24):
    frames = read_frames(clip24[0], fps=30)
    assert len(frames) == 60
    numbers = frame_numbers(frames)
    np.testing.assert_array_equal(numbers, np.floor(np.arange(60) * 24 / 30 + 0.5).astype(int))
    assert np.all(np.diff(numbers) >= 0)


def test_frame_indices_follow_timestamps_of_a_variable_rate_source():
    # a phone video: 10 frames at 1/30 s, then 5 frames at 1/15 s (1 s in all)
    starts = np.concatenate([np.arange(10) / 30, 10 / 30 + np.arange(5) / 15])
    duration = float(starts[-1] + 1 / 15)
    idx = frame_indices(starts, duration, fps=24)
    assert len(idx) == round(duration * 24)
    t = np.arange(len(idx)) / 24
    # every chosen frame starts no farther from t than any other frame does
    best = np.abs(starts[None, :] - t[:, None]).min(axis=1)
    np.testing.assert_allclose(np.abs(starts[idx] - t), best, atol=1e-9)
    assert np.all(np.diff(idx) >= 0)


def test_chunked_iteration_equals_the_full_read(clip30):
    full = read_frames(clip30, fps=24)
    chunks = list(iter_frames(clip30, fps=24, chunk=7))
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 7, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), full)


def test_chunked_upsampling_equals_the_full_read(clip24):
    # repeats that straddle chunk boundaries come from the kept last frame, not a second decode
    full = read_frames(clip24[0], fps=30, chunk=1000)
    np.testing.assert_array_equal(np.concatenate(list(iter_frames(clip24[0], fps=30, chunk=5))), full)


def test_start_stop_are_frame_indices_at_the_target_fps(clip30):
    full = read_frames(clip30, fps=24)
    np.testing.assert_array_equal(read_frames(clip30, fps=24, start=10, stop=20), full[10:20])
    np.testing.assert_array_equal(read_frames(clip30, fps=24, start=30), full[30:])
    np.testing.assert_array_equal(read_frames(clip30, fps=24, start=-4), full[-4:])
    empty = read_frames(clip30, fps=24, start=40)
    assert empty.shape == (0, 48, 64, 3)


def test_time_range_selects_seconds_of_the_source(clip24):
    full = read_frames(clip24[0], fps=24)
    part = np.concatenate(list(iter_frames(clip24[0], fps=24, start_s=0.5, end_s=1.25)))
    np.testing.assert_array_equal(part, full[12:30])
    # start/stop count from the start of the time range
    np.testing.assert_array_equal(read_frames(clip24[0], fps=24, start=2, stop=4, start_s=0.5), full[14:16])
    # an end past the video stops at its end
    assert len(read_frames(clip24[0], fps=24, start_s=1.5, end_s=99)) == 12


# -- video: writing -------------------------------------------------------------------------------
def test_written_mp4_is_h264_yuv420p_24fps_with_faststart(clip24):
    path, _ = clip24
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        assert v.codec_context.name == "h264"
        assert v.codec_context.format.name == "yuv420p"
        assert v.average_rate == 24
        assert v.frames == 48
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "moov must come first so browsers can stream the file"


def test_audio_track_is_aac_mono_and_as_long_as_the_video(clip24):
    path, _ = clip24
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert a.codec_context.name == "aac"
        assert a.codec_context.sample_rate == SR
        assert a.codec_context.layout.nb_channels == 1
        video_s = float(v.duration * v.time_base)
        audio_s = float(a.duration * a.time_base)
    assert video_s == pytest.approx(2.0, abs=1e-3)
    assert abs(audio_s - video_s) <= 1024 / SR  # within one AAC frame
    assert audio_duration(path) == pytest.approx(audio_s)


def test_load_audio_recovers_the_written_signal_in_sync(clip24):
    path, audio = clip24
    got = load_audio(path, sr=SR)
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(len(got) - len(audio)) <= 1024
    n = min(len(got), len(audio))
    assert np.corrcoef(got[:n], audio[:n])[0, 1] > 0.9  # a shift of even 1 ms would decorrelate the chirp


def test_audio_is_trimmed_or_padded_to_the_video_duration(tmp_path):
    frames = counter_frames(24)  # 1 s
    long_path, short_path = tmp_path / "long.mp4", tmp_path / "short.mp4"
    write_video(long_path, frames, fps=24, audio=chirp(3.0))
    write_video(short_path, frames, fps=24, audio=chirp(0.5))
    long, short = load_audio(long_path), load_audio(short_path)
    assert abs(len(long) - SR) <= 1024 and abs(len(short) - SR) <= 1024
    np.testing.assert_allclose(np.abs(short[int(0.6 * SR) :]).max(), 0.0, atol=0.02)  # silence after the speech
    assert np.corrcoef(short[: int(0.45 * SR)], chirp(0.45))[0, 1] > 0.9


def test_video_writer_streams_frames_and_publishes_only_on_success(tmp_path):
    target = tmp_path / "out" / "streamed.mp4"
    with VideoWriter(target, fps=24) as w:
        for frame in counter_frames(10):
            w.write(frame)
        assert not target.exists(), "the file appears only when the writer finishes"
    assert w.frames == 10 and len(read_frames(target)) == 10

    failed = tmp_path / "out" / "failed.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(failed) as w:
            w.write(counter_frames(1)[0])
            raise RuntimeError("renderer crashed")
    assert not failed.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["streamed.mp4"], "no temporary files left behind"


def test_odd_sizes_and_size_changes_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"odd\.mp4.*even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 49, 64, 3), np.uint8))
    with pytest.raises(InputError, match=r"mixed\.mp4.*same size"):
        write_video(tmp_path / "mixed.mp4", [np.zeros((48, 64, 3), np.uint8), np.zeros((32, 64, 3), np.uint8)])
    with pytest.raises(InputError, match=r"none\.mp4.*no frames"):
        write_video(tmp_path / "none.mp4", [])
    assert not any(tmp_path.iterdir())


def test_s3_round_trip(s3, astronaut):
    uri = f"{s3}/videos/clip.mp4"
    write_video(uri, counter_frames(24), fps=24, audio=chirp(1.0))
    assert storage.exists(uri)
    assert probe_video(uri).frames == 24
    frames = np.concatenate(list(iter_frames(uri, fps=24, chunk=10)))
    np.testing.assert_array_equal(frame_numbers(frames), np.arange(24))
    assert np.corrcoef(load_audio(uri)[:SR], chirp(1.0))[0, 1] > 0.9

    img_uri = f"{s3}/refs/astronaut.png"
    write_image(img_uri, astronaut)
    np.testing.assert_array_equal(read_image(img_uri), astronaut)


# -- audio ----------------------------------------------------------------------------------------
def test_load_audio_reads_real_speech_at_16khz(speech_wav):
    info = sf.info(str(speech_wav))
    y = load_audio(speech_wav, sr=SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == pytest.approx(info.duration * SR, abs=2)
    assert 0.05 < np.abs(y).max() <= 1.0
    # the spoken parts are loud and the pauses quiet: real speech, not noise or silence
    rms = np.sqrt(np.mean(y[: len(y) // 400 * 400].reshape(-1, 400) ** 2, axis=1))
    assert np.percentile(rms, 90) > 20 * max(np.percentile(rms, 10), 1e-5)
    assert audio_duration(speech_wav) == pytest.approx(info.duration)
    clip = load_audio(speech_wav, sr=SR, start_s=0.5, end_s=1.0)
    np.testing.assert_array_equal(clip, y[8000:16000])


def test_load_audio_averages_stereo_to_mono(tmp_path):
    left = chirp(1.0, 22050)
    path = tmp_path / "stereo.flac"
    sf.write(str(path), np.stack([left, np.zeros_like(left)], axis=1), 22050)
    y = load_audio(path, sr=SR)
    assert len(y) == SR
    assert np.abs(y).max() == pytest.approx(0.25, abs=0.02)  # (L + R) / 2 of a 0.5 sine


@pytest.mark.parametrize("name, codec", [("voice.m4a", "aac"), ("voice.mp3", "libmp3lame")])
def test_load_audio_decodes_compressed_stereo_at_44k_to_16k_mono(tmp_path, name, codec):
    # left = chirp, right = silence: mono must be their mean (swresample's own downmix would give 0.707x)
    rate, left = 44100, chirp(1.0, 44100)
    path = tmp_path / name
    with av.open(str(path), "w") as c:
        stream = c.add_stream(codec, rate=rate)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.stack([left, np.zeros_like(left)]), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            c.mux(packet)
    y = load_audio(path, sr=SR)
    assert abs(len(y) - SR) <= 0.06 * SR  # mp3 may pad up to a frame
    n, ref = min(len(y), SR), chirp(1.0)
    assert np.corrcoef(y[:n], ref[:n])[0, 1] > 0.9  # in sync: decoder delay is removed
    assert np.sqrt(np.mean(y[:n] ** 2)) == pytest.approx(0.5 * np.sqrt(np.mean(ref[:n] ** 2)), rel=0.1)
    assert audio_duration(path) == pytest.approx(1.0, abs=0.06)


# -- images ---------------------------------------------------------------------------------------
def _quadrants(h: int = 40, w: int = 60) -> np.ndarray:
    """An image whose orientation is obvious: red top-left, green top-right, blue bottom, 8 px margins."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :] = (0, 0, 255)
    return img


@pytest.mark.parametrize(
    "orientation, stored",
    [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180)],
)
def test_exif_rotated_jpeg_comes_back_upright(tmp_path, orientation, stored):
    upright = _quadrants()
    path = tmp_path / f"phone_{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: how to turn the stored pixels to show them upright
    Image.fromarray(upright).transpose(stored).save(path, quality=95, exif=exif)
    got = read_image(path)
    assert got.shape == upright.shape
    for y, x in [(10, 10), (10, 50), (30, 30)]:
        assert np.abs(got[y, x].astype(int) - upright[y, x]).max() < 40


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # opaque red
    rgba[:, 4:6] = (0, 0, 0, 0)  # transparent
    rgba[:, 6:] = (0, 0, 0, 128)  # half-transparent black
    write_image(tmp_path / "a.png", rgba)
    got = read_image(tmp_path / "a.png")
    assert got.shape == (8, 8, 3) and got.dtype == np.uint8
    assert tuple(got[0, 0]) == (255, 0, 0)
    assert tuple(got[0, 4]) == (255, 255, 255)
    assert np.abs(got[0, 7].astype(int) - 127).max() <= 1


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "CMYK", "LA"])
def test_greyscale_palette_cmyk_and_16bit_become_rgb(tmp_path, astronaut, mode):
    grey = np.asarray(Image.fromarray(astronaut).convert("L"))
    if mode == "I;16":
        img = Image.fromarray(grey.astype(np.uint16) * 257)  # 16-bit greyscale PNG
        assert img.mode == "I;16"
        path = tmp_path / "grey16.png"
    elif mode == "CMYK":
        img = Image.fromarray(astronaut).convert("CMYK")
        path = tmp_path / "cmyk.tif"
    elif mode == "P":
        img = Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        path = tmp_path / "palette.png"
    else:
        img = Image.fromarray(grey).convert(mode)
        path = tmp_path / f"{mode}.png"
    img.save(path)
    got = read_image(path)
    assert got.shape == (512, 512, 3) and got.dtype == np.uint8
    if mode in ("L", "I;16", "LA"):
        np.testing.assert_array_equal(got[..., 0], grey)
        np.testing.assert_array_equal(got[..., 0], got[..., 2])
    else:
        assert np.abs(got.astype(int) - astronaut).mean() < 8


def test_write_image_takes_the_format_from_the_extension(tmp_path, astronaut):
    write_image(tmp_path / "x.jpg", astronaut)
    write_image(tmp_path / "x.png", astronaut)
    assert Image.open(tmp_path / "x.jpg").format == "JPEG"
    assert Image.open(tmp_path / "x.png").format == "PNG"
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), astronaut)
    with pytest.raises(InputError, match=r"x\.xyz"):
        write_image(tmp_path / "x.xyz", astronaut)


# -- bad inputs -----------------------------------------------------------------------------------
def _text(d: Path, clip: Path) -> Path:
    (d / "notes.mp4").write_text("not a video\n")
    return d / "notes.mp4"


def _empty(d: Path, clip: Path) -> Path:
    (d / "empty.mp4").write_bytes(b"")
    return d / "empty.mp4"


def _zero_frames(d: Path, clip: Path) -> Path:
    path = d / "noframes.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()  # header and an empty track, no frames
    return path


def _truncated(d: Path, clip: Path) -> Path:
    data = clip.read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) // 2])
    return d / "cut.mp4"


def _still_image(d: Path, clip: Path) -> Path:
    Image.new("RGB", (8, 8)).save(d / "still.png")
    return d / "still.png"


def _missing(d: Path, clip: Path) -> Path:
    return d / "missing.mp4"


@pytest.mark.parametrize(
    "make, kind, says",
    [
        (_text, MediaError, "not a readable video"),
        (_empty, MediaError, "empty file"),
        (_zero_frames, MediaError, "zero-length video"),
        (_truncated, MediaError, "truncated MP4"),
        (_still_image, MediaError, "cannot decode video"),
        (_missing, StorageError, "no such file"),
    ],
    ids=lambda v: getattr(v, "__name__", "").lstrip("_") or None,
)
def test_bad_videos_raise_one_line_errors_naming_the_file(tmp_path, clip24, make, kind, says):
    path = make(tmp_path, clip24[0])
    for read in (probe_video, lambda p: next(iter_frames(p))):
        with pytest.raises(kind) as err:
            read(path)
        message = str(err.value)
        assert path.name in message and says in message
        assert "\n" not in message and len(message) < 300


def test_truncated_moov_last_mp4_is_a_media_error(tmp_path):
    # muxed without faststart, the index (moov) sits at the end: cutting the file loses it
    path = tmp_path / "plain.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for frame in counter_frames(24):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cut = tmp_path / "plain_cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MediaError, match=r"plain_cut\.mp4: truncated"):
        probe_video(cut)


def test_load_audio_of_a_video_without_audio_names_the_file(clip30):
    with pytest.raises(MediaError, match=rf"{clip30.name}: no audio track"):
        load_audio(clip30)


@pytest.mark.parametrize(
    "name, data", [("corrupt.m4a", b"\x00" * 4096), ("noise.wav", b"RIFF" + bytes(range(256)) * 8), ("empty.mp3", b"")]
)
def test_unreadable_audio_is_a_media_error_naming_the_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(MediaError, match=name.replace(".", r"\.")):
        load_audio(path)


def test_missing_audio_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match=r"gone\.wav"):
        load_audio(tmp_path / "gone.wav")


@pytest.mark.parametrize("name, data", [("photo.jpg", b"this is not an image"), ("empty.png", b""), ("cut.png", None)])
def test_unreadable_images_are_media_errors_naming_the_file(tmp_path, astronaut, name, data):
    if data is None:  # a PNG cut short
        buf = io.BytesIO()
        Image.fromarray(astronaut).save(buf, format="PNG")
        data = buf.getvalue()[:5000]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(MediaError) as err:
        read_image(path)
    assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StorageError, match=r"nothing\.png"):
        read_image(tmp_path / "nothing.png")
