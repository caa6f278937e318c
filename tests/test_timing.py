"""Sound on the video's timeline: tracks that start at different times, audio shorter than the video,
looped drivers. Renders and curated clips are checked by cross-correlating their sound with the
source's sound placed on the video timeline (the sound at frame 0's presentation time first)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional

import av
import numpy as np
import pytest

from facepose.config import Config
from facepose.media.audio import fit_track, load_audio, to_video_timeline
from facepose.media.video import probe_video, read_frames
from facepose.timeline import FPS, SAMPLE_RATE as SR
from tests.fixtures_batch import moving_face_frames



def write_av(path: Path, frames: np.ndarray, audio: Optional[np.ndarray], video_start: float = 0.0, audio_start: float = 0.0) -> Path:
    """An mp4 (H.264 + AAC mono 16 kHz) whose first video frame is presented at ``video_start`` seconds
    and whose first audio sample at ``audio_start`` (the muxer writes the offsets as edit lists)."""
    with av.open(str(path), "w", format="mp4") as c:
        v = c.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        v.options = {"crf": "20", "preset": "veryfast"}
        a = None
        if audio is not None:
            a = c.add_stream("aac", rate=SR)
            a.layout = "mono"
        vpts0 = int(round(video_start * FPS))
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = vpts0 + i, Fraction(1, FPS)
            for p in v.encode(vf):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            apts0 = int(round(audio_start * SR))
            for k in range(0, len(audio), 1024):
                part = np.ascontiguousarray(audio[None, k : k + 1024].astype(np.float32))
                af = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = SR, apts0 + k, Fraction(1, SR)
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def lag_s(out: np.ndarray, ref: np.ndarray, max_lag_s: float = 1.0) -> float:
    """Seconds by which ``out`` plays later than ``ref`` (positive: the sound is late), by
    cross-correlation over lags within +-``max_lag_s``."""
    n = min(len(out), len(ref))
    a, b = out[:n].astype(np.float64), ref[:n].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    m = int(max_lag_s * SR)
    lags = np.r_[np.arange(0, m + 1), np.arange(-m, 0)]
    values = np.r_[corr[: m + 1], corr[-m:]]
    return float(lags[int(np.argmax(values))]) / SR


def rms(y: np.ndarray, a: float, b: float) -> float:
    seg = y[int(a * SR) : int(b * SR)]
    return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))


@pytest.fixture(scope="module")
def speech(speech_wav) -> np.ndarray:
    """4 s of real speech at 16 kHz (espeak-ng, repeated if shorter)."""
    y = load_audio(str(speech_wav), sr=SR)
    return np.resize(y, 4 * SR).astype(np.float32)


@pytest.fixture(scope="module")
def face_frames(astronaut) -> np.ndarray:
    return np.stack(list(moving_face_frames(astronaut, 3.0)))  # 72 frames, 256x256


@pytest.fixture(scope="module")
def late_video(tmp_path_factory, face_frames, speech) -> Path:
    """Video (3 s) starting 0.5 s after its audio (4 s): the kind of video_starts_late.mp4."""
    return write_av(tmp_path_factory.mktemp("late") / "late.mp4", face_frames, speech, video_start=0.5)


# -- reading --------------------------------------------------------------------------------------
def test_a_late_video_reads_its_sound_from_the_first_frames_time(late_video, speech):
    info = probe_video(late_video)
    assert info.start == pytest.approx(0.5) and info.frames == 72
    raw = load_audio(late_video, sr=SR, timeline="audio")
    y = load_audio(late_video, sr=SR)
    assert len(raw) == pytest.approx(4 * SR, abs=1100)
    assert len(y) == 3 * SR  # the video's duration
    assert abs(lag_s(y, speech[SR // 2 :])) <= 1 / SR * 2
    assert abs(lag_s(raw, speech)) <= 2 / SR  # as stored, it starts with the audio track


def test_audio_that_starts_after_the_video_begins_with_silence(tmp_path, face_frames, speech):
    path = write_av(tmp_path / "early.mp4", face_frames, speech[: 2 * SR], audio_start=0.3)
    y = load_audio(path, sr=SR)
    assert len(y) == 3 * SR
    assert rms(y, 0.0, 0.25) < 1e-4 and rms(y, 0.3, 2.3) > 0.01  # (AAC pre-echo reaches a few ms before the onset)
    assert abs(lag_s(y[int(0.3 * SR) :], speech[: 2 * SR])) <= 2 / SR
    assert rms(y, 2.35, 3.0) < 1e-4  # and silence after its end, up to the video's end


def test_to_video_timeline_shifts_pads_and_trims():
    y = np.arange(10, dtype=np.float32) + 1
    assert to_video_timeline(y, 10, 0.0, 0.3, None).tolist() == (y[3:]).tolist()
    assert to_video_timeline(y, 10, 0.2, 0.0, 1.4).tolist() == [0, 0] + y.tolist() + [0, 0]
    assert to_video_timeline(y, 10, 0.0, 0.0, 0.5).tolist() == y[:5].tolist()


def test_fit_track_loops_the_drivers_sound_with_its_frames():
    sr, fps = 48, 24  # two samples per frame
    track = np.ones(6, np.float32)  # sound for 3 frames of a 4-frame driver
    out = fit_track(track, frames=10, fps=fps, sr=sr, period_frames=4)
    assert out.tolist() == ([1] * 6 + [0] * 2) * 2 + [1] * 4
    assert fit_track(np.arange(4, dtype=np.float32), 4, fps, sr).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # speech loops itself


# -- render ---------------------------------------------------------------------------------------
def test_render_of_a_late_video_keeps_the_sound_in_sync(tmp_path, late_video, speech, astronaut_png):
    from facepose.render.job import render_video

    out = tmp_path / "late_render.mp4"
    result = render_video(str(astronaut_png), str(late_video), str(out))
    assert result.frames == 72
    sound = load_audio(out, sr=SR)
    on_video_timeline = speech[SR // 2 : SR // 2 + 3 * SR]
    assert abs(lag_s(sound, on_video_timeline)) <= 0.04


def test_a_short_track_gives_silence_and_a_looped_driver_loops_sound_with_frames(tmp_path, speech, astronaut, astronaut_png):
    from facepose.render.job import render_video

    frames = np.stack(list(moving_face_frames(astronaut, 4.0)))  # 96 frames
    video = write_av(tmp_path / "short.mp4", frames, speech[: int(1.5 * SR)])  # the kind of short_audio_track.mp4
    out = tmp_path / "looped.mp4"
    result = render_video(str(astronaut_png), str(video), str(out), seconds=10.0)
    assert result.frames == 240
    sound = load_audio(out, sr=SR)
    assert len(sound) == 10 * SR
    for start in (0.0, 4.0, 8.0):  # the speech at the start of each pass of the driver ...
        assert abs(lag_s(sound[int(start * SR) : int((start + 1.5) * SR)], speech[: int(1.5 * SR)], 0.5)) <= 0.04
        assert rms(sound, start + 0.1, start + 1.4) > 0.01
    for start in (1.6, 5.6):  # ... then silence to the end of the pass
        assert rms(sound, start, start + 2.3) < 2e-3
    # the frames loop with the sound: pass 2 shows what pass 1 showed
    video_frames = read_frames(out).astype(np.int16)
    assert np.abs(video_frames[96:192] - video_frames[:96]).mean() < 1.0
    assert np.abs(video_frames[48] - video_frames[0]).mean() > 1.0  # and they do move within a pass


# -- curation -------------------------------------------------------------------------------------
def test_curated_clip_of_a_late_video_has_its_sound_in_sync(tmp_path, late_video, speech):
    from facepose.curate import Curator
    from facepose.manifest import CurateJob
    import pyarrow.parquet as pq

    outcome = Curator(Config())(CurateJob("late", str(late_video)), str(tmp_path / "ds"))
    assert outcome.result["status"] == "ok", outcome.result["error"]
    clip = outcome.clips[0]
    assert clip["status"] == "ok" and clip["start_s"] == 0.0 and clip["end_s"] == 3.0
    sound = load_audio(clip["clip"], sr=SR)
    on_video_timeline = speech[SR // 2 : SR // 2 + 3 * SR]
    assert abs(lag_s(sound, on_video_timeline)) <= 0.04
    # per-frame features: the RMS of frame i is the RMS of the source sound at frame i's time
    table = pq.read_table(str(tmp_path / "ds/audio/late.parquet"))
    got = np.array(table.column("rms").to_pylist())
    want = np.array([rms(on_video_timeline, i / FPS, (i + 1) / FPS) for i in range(72)])
    assert np.corrcoef(got, want)[0, 1] > 0.95
