"""Video in and out: PyAV reads (streamed, resampled to a target fps, in chunks), PyAV writes H.264 mp4 (+AAC).

Reading maps every output frame ``i`` at the target fps to the source frame whose timestamp is nearest to
``t = i / fps`` (measured from the first frame), so a 30 fps source read at 24 fps keeps its duration and
its content order, and a variable-frame-rate phone video comes out evenly spaced. A clip of ``duration``
seconds gives ``round(duration * fps)`` frames.

Memory stays flat whatever the video's length: frames are decoded one after another by PyAV
(``container.decode``, FFmpeg's own frame/slice threads) and only the frames an output chunk needs are
converted to RGB, straight into that chunk's array (``chunk`` frames at most). The frame timestamps come
from a demux pass over the packets (no decoding), so the count and the mapping are known before the
first frame is decoded. A time range that starts late seeks to the keyframe before it. (decord, used
before, kept an index and frame cache that grew with the video: 0.83 GB at 5 s, 4.22 GB at 90 s of 720p;
it also has no AV1 decoder here.) Every codec the installed FFmpeg decodes is read (AV1 through
libdav1d); a codec it cannot decode is a MediaError naming the codec.

A phone video's rotation (the display matrix side data) is applied: frames come out upright and
``VideoInfo.width``/``height`` are the displayed size.

Before decoding, a file is checked cheaply (size, MP4 box layout, a video stream with packets), so a bad
file gives one line naming it, not FFmpeg's log.

Writing streams frames into libx264 (yuv420p) through PyAV; an optional mono audio track is encoded as
AAC beside it, interleaved as frames arrive, and trimmed or zero-padded to exactly the video's duration.
The file is published atomically through :func:`facepose.storage.writer`, so ``s3://`` works and a
failed write leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from facepose import storage
from facepose.errors import InputError, MediaError
from facepose.timeline import FPS, SAMPLE_RATE, frames_for_seconds, samples_for_frames

log = logging.getLogger(__name__)

__all__ = ["VideoInfo", "probe_video", "iter_frames", "read_frames", "VideoWriter", "write_video", "frame_indices", "video_timeline"]


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds: ``fps`` (average, of the source), ``frames`` (source frame count),
    ``width``/``height`` in pixels as displayed (after the rotation tag), ``duration`` in seconds (first
    frame start to last frame end), ``start`` the first frame's presentation time in seconds (the
    origin of the video's timeline; the audio track is read against it), ``codec`` the decoder's name,
    ``rotation`` degrees counter-clockwise applied to make frames upright (0, 90, 180, 270)."""

    fps: float
    frames: int
    width: int
    height: int
    duration: float
    has_audio: bool
    start: float = 0.0
    codec: str = ""
    rotation: int = 0

    def frames_at(self, fps: float) -> int:
        """How many frames :func:`iter_frames` yields for the whole video at ``fps``."""
        return frames_for_seconds(self.duration, fps)


# -- errors ---------------------------------------------------------------------------------------
_FFMPEG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\]\s+\S+?:\d+:\s*")


def _short(exc: BaseException, limit: int = 160) -> str:
    """One short line from an FFmpeg/PyAV error (theirs may carry timestamps, source paths, traces)."""
    text = _FFMPEG_PREFIX.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(("Stack trace", "[bt]"))]
    line = lines[-1] if lines else ""
    line = re.sub(r"^\[Errno -?\d+\]\s*", "", line)  # PyAV: "[Errno 1094995529] Invalid data ..."
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # "[file.mp4] Failed to ..."
    line = re.sub(r"^Check failed: .*\(-?\d+ vs\. -?\d+\)\s*", "", line)
    line = re.sub(r":\s*'[^']*'$", "", line)  # PyAV appends the path, which the caller's message names already
    return (line.strip() or type(exc).__name__)[:limit]


# -- validation -----------------------------------------------------------------------------------
def _check_mp4_boxes(path: Path, name: str) -> None:
    """For ISO-BMFF files (mp4/mov/m4a): a top-level box that runs past the end of the file means the
    file was cut short (an interrupted download or copy). Reads only the box headers."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 8 or head[4:8] != b"ftyp":
            return
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(16)
            box_size = int.from_bytes(hdr[:4], "big")
            kind = hdr[4:8].decode("latin-1")
            if box_size == 1 and len(hdr) >= 16:  # 64-bit size follows the type
                box_size = int.from_bytes(hdr[8:16], "big")
            elif box_size == 0:  # box runs to the end of the file
                return
            if box_size < 8:
                raise MediaError(f"{name}: corrupt MP4 (bad {kind!r} box at byte {pos}); re-encode or re-download the file")
            if pos + box_size > size:
                raise MediaError(
                    f"{name}: truncated MP4 (its {kind!r} box needs {pos + box_size} bytes, the file has {size}); "
                    "re-download or re-encode the file"
                )
            pos += box_size


#: MP4 sample-entry codes of video codecs users meet, for naming one that no installed decoder reads.
_FOURCC_NAMES = {
    "av01": "AV1", "hvc1": "HEVC (H.265)", "hev1": "HEVC (H.265)", "vvc1": "VVC (H.266)", "vvi1": "VVC (H.266)",
    "vp09": "VP9", "vp08": "VP8", "avc1": "H.264", "avc3": "H.264", "apch": "ProRes", "apcn": "ProRes",
    "apcs": "ProRes", "apco": "ProRes", "ap4h": "ProRes 4444", "dvh1": "Dolby Vision", "dvhe": "Dolby Vision",
}


def _mp4_video_fourcc(path: Path) -> Optional[str]:
    """The sample-entry code (e.g. ``av01``) of the first video track of an MP4/MOV, read from its
    ``stsd`` box; None when the file is not ISO-BMFF or has none. Reads the header boxes only."""
    with open(path, "rb") as f:
        if f.read(8)[4:8] != b"ftyp":
            return None
        f.seek(0)
        data = f.read(8 << 20)  # the moov of a faststart file; enough for a name in an error message
    at = 0
    while True:
        at = data.find(b"stsd", at + 1)
        if at < 0:
            # moov at the end (no faststart): look there
            size = path.stat().st_size
            if size <= len(data):
                return None
            with open(path, "rb") as f:
                f.seek(max(0, size - (8 << 20)))
                tail = f.read()
            at = tail.find(b"stsd")
            if at < 0:
                return None
            data = tail
        code = data[at + 16 : at + 20]  # stsd: version/flags (4), count (4), entry size (4), entry type (4)
        if len(code) == 4 and code.isascii() and code not in (b"mp4a", b"tx3g", b"text", b"tmcd", b"Opus"):
            return code.decode("ascii", "replace")
        if at + 20 >= len(data):
            return None


def _no_decoder(path: Path, name: str) -> MediaError:
    code = _mp4_video_fourcc(path)
    codec = f"{_FOURCC_NAMES.get(code, 'codec')} ({code!r})" if code else "an unknown codec"
    return MediaError(
        f"{name}: its video is {codec}, which no installed decoder reads; "
        "re-encode it to H.264 (e.g. ffmpeg -i in -c:v libx264 -c:a aac out.mp4)"
    )


def _stream_kinds(container) -> str:
    kinds = [s.type for s in container.streams]
    return ", ".join(kinds) if kinds else "no streams"


def _is_still_image(container) -> bool:
    fmt = container.format.name or ""
    return fmt == "image2" or fmt.endswith("_pipe")


def _packet_index(container, stream) -> tuple[np.ndarray, float]:
    """Demux (no decoding) the video packets: (sorted presentation times (N,) in seconds, end time in
    seconds of the last frame). Packets that an edit list marks to discard are left out, as the decoder
    drops their frames."""
    tb = float(stream.time_base) if stream.time_base else 0.0
    pts: list[int] = []
    end = None
    missing = 0
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:
            continue
        value = packet.pts if packet.pts is not None else packet.dts
        if value is None or not tb:
            missing += 1
            continue
        pts.append(value)
        stop = value + (packet.duration or 0)
        end = stop if end is None else max(end, stop)
    if missing and not pts:  # no timestamps at all (raw streams): evenly spaced at the stream's rate
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        starts = np.arange(missing) / rate
        return starts, float(missing / rate)
    starts = np.sort(np.asarray(pts, np.int64)).astype(np.float64) * tb
    last_end = end * tb if end is not None else 0.0
    if len(starts) and last_end <= starts[-1]:  # no packet durations: one average frame after the last start
        rate = float(stream.average_rate or stream.guessed_rate or 0) or (len(starts) / max(starts[-1] - starts[0], 1e-9))
        last_end = starts[-1] + 1.0 / rate
    return starts, float(last_end)


def video_timeline(path: str | os.PathLike) -> Optional[tuple[float, float]]:
    """(start, duration) in seconds of the first video stream of the local file ``path``: the first
    frame's presentation time (the smallest pts among the first packets, as B-frames reorder them; edit
    lists are already applied by the demuxer) and the video's duration (from the stream header, or,
    where it gives none, as mkv/webm, from a demux pass, as :func:`probe_video` measures it). None when
    there is no video stream. No decoding."""
    import av

    with av.open(os.fspath(path), metadata_errors="ignore") as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 0.0
        if not stream.duration or not tb:
            starts, end = _packet_index(container, stream)
            return (float(starts[0]), float(end - starts[0])) if len(starts) else None
        first: Optional[int] = None
        seen = 0
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard or packet.pts is None:
                continue
            first = packet.pts if first is None else min(first, packet.pts)
            seen += 1
            if seen >= 32:
                break
        if first is None:
            start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        else:
            start = first * tb
        return start, float(stream.duration * tb)


def _rotation_k(frame) -> int:
    """Quarter turns counter-clockwise (np.rot90's k) that make a decoded frame upright, from its display
    matrix (FFmpeg's convention: the matrix rotates by ``frame.rotation`` degrees counter-clockwise)."""
    try:
        degrees = float(frame.rotation or 0.0)
    except (AttributeError, ValueError, TypeError):
        return 0
    return int(round(degrees / 90.0)) % 4


class _Source:
    """An opened video: checked, with its frame presentation times (seconds) from a demux pass; frames
    are decoded by :meth:`chunks`, streaming, from a fresh container."""

    def __init__(self, path: Path, name: str, threads: int):
        import av

        self.path, self.name, self.threads = path, name, int(threads)
        size = path.stat().st_size
        if size == 0:
            raise MediaError(f"{name}: empty file (0 bytes); expected a video")
        _check_mp4_boxes(path, name)
        try:
            with av.open(str(path), metadata_errors="ignore") as container:
                if not container.streams:  # e.g. an mp4 whose only track has no samples
                    raise MediaError(f"{name}: zero-length video (no streams, no frames); expected a video with at least one frame")
                if not container.streams.video:
                    raise MediaError(f"{name}: no video stream (found {_stream_kinds(container)}); expected a video file")
                if _is_still_image(container):
                    raise MediaError(f"{name}: cannot decode video (it is a still image, {container.format.name}); expected a video file")
                self.has_audio = bool(container.streams.audio)
                stream = container.streams.video[0]
                if stream.codec_context is None:
                    raise _no_decoder(path, name)
                self.codec = stream.codec_context.name
                width, height = stream.codec_context.width, stream.codec_context.height
                if width <= 0 or height <= 0:
                    raise MediaError(f"{name}: video stream has no frame size; the file is corrupt")
                self.time_base = stream.time_base
                self.starts, end = _packet_index(container, stream)
                rate = float(stream.average_rate or stream.guessed_rate or 0)
            if len(self.starts) == 0:
                raise MediaError(f"{name}: zero-length video (no frames); expected a video with at least one frame")
            first = self._first_frame()
        except MediaError:
            raise
        except av.DecoderNotFoundError:
            raise _no_decoder(path, name) from None
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"{name}: not a readable video ({_short(exc)}); expected an mp4/mov/mkv/webm file") from None
        self.rotation_k = _rotation_k(first)
        self.width, self.height = (height, width) if self.rotation_k % 2 else (width, height)
        self.frames = len(self.starts)
        self.start = float(self.starts[0])
        self.duration = float(end - self.starts[0])
        if not np.isfinite(self.duration) or self.duration <= 0:
            self.duration = self.frames / rate if rate > 0 else 0.0
        self.fps = rate if rate > 0 else (self.frames / self.duration if self.duration > 0 else 0.0)

    def _open(self):
        import av

        container = av.open(str(self.path), metadata_errors="ignore")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads; memory stays a few frames per thread
        stream.codec_context.thread_count = self.threads
        return container, stream

    def _first_frame(self):
        """Decode the first frame: proves the stream decodes (a codec without a decoder, or garbage,
        fails here, at probe time) and carries the display matrix."""
        import av

        container, stream = self._open()
        try:
            for frame in container.decode(stream):
                return frame
        except av.DecoderNotFoundError:
            raise _no_decoder(self.path, self.name) from None
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(f"{self.name}: cannot decode video ({_short(exc)}); the file may be corrupt or truncated") from None
        finally:
            container.close()
        raise MediaError(f"{self.name}: cannot decode video (no frame decodes); the file may be corrupt or truncated")

    def info(self) -> VideoInfo:
        return VideoInfo(self.fps, self.frames, self.width, self.height, self.duration, self.has_audio,
                         self.start, self.codec, 90 * self.rotation_k)

    def chunks(self, indices: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
        """indices: (T,) non-decreasing source frame indices -> (n, H, W, 3) uint8 RGB chunks, n <= chunk.

        One decode pass: each decoded frame is matched against the targets by its presentation time; a
        source frame used by several outputs (upsampling) is converted once. A range that starts more than
        two seconds in seeks to the keyframe before it (and decodes from the start if the seek overshoots)."""
        if len(indices) == 0:
            return
        targets = self.starts[indices]
        seek = float(targets[0]) - self.start > 2.0
        produced = 0
        for attempt in (seek, False) if seek else (False,):
            gen = self._decode(targets, chunk, attempt)
            try:
                for block in gen:
                    produced += len(block)
                    yield block
                return
            except _Overshot:
                if produced:  # cannot happen: an overshoot is seen before anything is yielded
                    raise MediaError(f"{self.name}: seeking gave frames out of order; re-encode the file") from None
                log.debug("%s: seek overshot, decoding from the start", self.name)

    def _decode(self, targets: np.ndarray, chunk: int, seek: bool) -> Iterator[np.ndarray]:
        import av

        container, stream = self._open()
        tb = float(self.time_base)
        total = len(targets)
        h, w = self.height, self.width
        out = np.empty((min(chunk, total), h, w, 3), np.uint8)
        filled = 0
        j = 0
        prev = None  # (frame, rgb or None)
        k = -1  # decoded frame counter (for frames without pts)
        try:
            if seek:
                container.seek(int(targets[0] / tb), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                k += 1
                t = frame.pts * tb if frame.pts is not None else (self.starts[min(k, len(self.starts) - 1)] if not seek else None)
                if t is None:
                    raise _Overshot()
                if seek and k == 0 and t > targets[0] + 1e-6:
                    raise _Overshot()
                cur = [frame, None]
                while j < total and targets[j] <= t + 1e-6:
                    use = cur if (targets[j] >= t - 1e-6 or prev is None) else prev
                    if use[1] is None:
                        use[1] = self._rgb(use[0])
                    out[filled] = use[1]
                    filled += 1
                    j += 1
                    if filled == len(out):
                        yield out
                        out = np.empty((min(chunk, total - j), h, w, 3), np.uint8) if j < total else out
                        filled = 0
                if j == total:
                    return
                prev = cur  # kept unconverted unless a later target falls back to it
        except _Overshot:
            raise
        except av.FFmpegError as exc:
            raise MediaError(
                f"{self.name}: cannot decode video near {targets[min(j, total - 1)] - self.start:.2f} s ({_short(exc)}); "
                "the file may be corrupt or truncated"
            ) from None
        finally:
            container.close()
        if prev is None:
            if seek:
                raise _Overshot()
            raise MediaError(f"{self.name}: cannot decode video (no frame decodes); the file may be corrupt or truncated")
        if j < total:
            log.debug("%s: the stream ended %d frames before its index did; holding its last frame", self.name, total - j)
        while j < total:  # the stream ended before the index said: hold its last frame
            if prev[1] is None:
                prev[1] = self._rgb(prev[0])
            out[filled] = prev[1]
            filled += 1
            j += 1
            if filled == len(out):
                yield out
                out = np.empty((min(chunk, total - j), h, w, 3), np.uint8) if j < total else out
                filled = 0
        if filled:
            yield out[:filled]

    def _rgb(self, frame) -> np.ndarray:
        """A decoded frame as (H, W, 3) uint8 RGB, upright."""
        rgb = frame.to_ndarray(format="rgb24")
        if self.rotation_k:
            rgb = np.rot90(rgb, self.rotation_k)
        if rgb.shape[:2] != (self.height, self.width):
            raise MediaError(
                f"{self.name}: the frame size changes mid-stream ({rgb.shape[1]}x{rgb.shape[0]}, first frame "
                f"{self.width}x{self.height}); re-encode the file to one size"
            )
        return rgb


class _Overshot(Exception):
    """A seek landed after the first wanted frame (or frames lack timestamps): decode from the start."""


def frame_indices(
    starts: np.ndarray,
    duration: float,
    fps: float,
    start: int = 0,
    stop: Optional[int] = None,
    start_s: Optional[float] = None,
    end_s: Optional[float] = None,
) -> np.ndarray:
    """Source frame index for each output frame.

    starts: (N,) source frame start times in seconds -> (T,) int64 indices into the source.
    The time range ``[start_s, end_s)`` (seconds from the first frame) is resampled at ``fps`` into
    ``round((end_s - start_s) * fps)`` frames; output frame ``i`` sits at ``start_s + i / fps`` and takes
    the source frame whose start is nearest (ties go to the later frame). ``start``/``stop`` then slice
    those output frames like a Python range (negative values count from the end)."""
    if fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    starts = np.asarray(starts, dtype=np.float64)
    t0 = float(starts[0]) if len(starts) else 0.0
    lo = max(0.0, float(start_s or 0.0))
    hi = duration if end_s is None else min(float(end_s), duration)
    count = max(0, frames_for_seconds(hi - lo, fps))
    frames = np.arange(count)[slice(start, stop)]
    t = t0 + lo + frames / fps
    right = np.clip(np.searchsorted(starts, t, side="left"), 0, len(starts) - 1)
    left = np.clip(right - 1, 0, len(starts) - 1)
    take_right = (starts[right] - t) <= (t - starts[left]) + 1e-6
    return np.where(take_right, right, left).astype(np.int64)


def probe_video(uri: str | os.PathLike) -> VideoInfo:
    """Frame rate, frame count, size, duration and whether there is an audio track.

    Raises MediaError for a file that is not a readable video, StorageError for a missing one."""
    with storage.local_path(uri) as path:
        return _Source(path, os.fspath(uri), threads=1).info()


def iter_frames(
    uri: str | os.PathLike,
    fps: float = FPS,
    start: int = 0,
    stop: Optional[int] = None,
    chunk: int = 48,
    start_s: Optional[float] = None,
    end_s: Optional[float] = None,
    *,
    threads: int = 1,
) -> Iterator[np.ndarray]:
    """Frames of a video resampled to ``fps``, in chunks: each item is (n, H, W, 3) uint8 RGB, n <= chunk.

    ``start_s``/``end_s`` pick a time range of the source in seconds; ``start``/``stop`` are frame indices
    at ``fps`` within that range. ``threads`` is the decoder's thread count (0 = FFmpeg's choice);
    one thread keeps batch jobs (one worker per core) predictable. An ``s3://`` video is downloaded to a
    temporary file for the length of the iteration. As with any generator, a missing or unreadable
    file raises (StorageError, MediaError) at the first ``next()``."""
    name = os.fspath(uri)
    if chunk < 1 or fps <= 0:
        raise InputError(f"{name}: need chunk >= 1 and fps > 0, got chunk={chunk}, fps={fps}")
    with storage.local_path(uri) as path:
        src = _Source(path, name, threads=threads)
        indices = frame_indices(src.starts, src.duration, fps, start, stop, start_s, end_s)
        log.debug("%s: %d source frames at %.3f fps -> %d frames at %g fps", name, src.frames, src.fps, len(indices), fps)
        yield from src.chunks(indices, chunk)


def read_frames(uri: str | os.PathLike, fps: float = FPS, start: int = 0, stop: Optional[int] = None, **kwargs) -> np.ndarray:
    """All frames of a range at once: (T, H, W, 3) uint8. For long videos use :func:`iter_frames`."""
    chunks = list(iter_frames(uri, fps=fps, start=start, stop=stop, **kwargs))
    if chunks:
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    info = probe_video(uri)
    return np.zeros((0, info.height, info.width, 3), np.uint8)


# -- writing --------------------------------------------------------------------------------------
class VideoWriter(AbstractContextManager):
    """Stream frames into an H.264 (yuv420p) mp4 at ``uri``, with an optional AAC mono audio track.

    ``audio``: float32 mono samples in [-1, 1] at ``sample_rate``; it is trimmed or zero-padded to the
    video's duration (frames / fps) and interleaved with the video as frames arrive. ``threads`` is the
    x264 thread count (1 keeps one worker per core predictable; 0 lets x264 choose).

    ::

        with VideoWriter("s3://out/clip.mp4", fps=24, audio=wave) as w:
            for frame in frames:      # (H, W, 3) uint8 RGB, even H and W
                w.write(frame)

    The file appears at ``uri`` only when the block ends without an error."""

    def __init__(
        self,
        uri: str | os.PathLike,
        fps: float = FPS,
        audio: Optional[np.ndarray] = None,
        sample_rate: int = SAMPLE_RATE,
        crf: int = 18,
        preset: str = "veryfast",
        *,
        threads: int = 1,
    ):
        if fps <= 0:
            raise InputError(f"{os.fspath(uri)}: fps must be positive, got {fps}")
        if audio is not None:
            audio = np.asarray(audio)
            if audio.ndim != 1:
                raise InputError(f"{os.fspath(uri)}: audio must be mono, shape (samples,), got {audio.shape}")
            if sample_rate <= 0:
                raise InputError(f"{os.fspath(uri)}: sample_rate must be positive, got {sample_rate}")
            audio = np.clip(np.nan_to_num(audio.astype(np.float32, copy=False)), -1.0, 1.0)
        self.uri = os.fspath(uri)
        self.rate = Fraction(fps).limit_denominator(1001 * 1000) if not isinstance(fps, Fraction) else fps
        self.audio = audio
        self.sample_rate = int(sample_rate)
        self.crf, self.preset, self.threads = int(crf), str(preset), int(threads)
        self.frames = 0
        self._publish = None
        self._container = None
        self._video = None
        self._audio_stream = None
        self._audio_pos = 0

    # context management: storage.writer gives a temporary local path, published when we finish
    def __enter__(self) -> "VideoWriter":
        import av

        self._publish = storage.writer(self.uri, suffix=".mp4")
        path = self._publish.__enter__()
        try:
            self._container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        except BaseException as exc:
            self._publish.__exit__(type(exc), exc, exc.__traceback__)
            raise MediaError(f"{self.uri}: cannot open for writing ({_short(exc)})") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._publish is None:
            return False
        publish, self._publish = self._publish, None
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                self._close_container()
                publish.__exit__(type(err), err, err.__traceback__)
                raise
            return bool(publish.__exit__(None, None, None))
        self._close_container()
        return bool(publish.__exit__(exc_type, exc, tb))

    def close(self) -> None:
        """Finish and publish the file (same as leaving the ``with`` block)."""
        self.__exit__(None, None, None)

    # frames
    def write(self, frame: np.ndarray) -> None:
        """frame: (H, W, 3) uint8 RGB; H and W even, the same for every frame."""
        import av

        if self._container is None:
            raise InputError(f"{self.uri}: VideoWriter.write called outside its `with` block")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"{self.uri}: frames must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        h, w = frame.shape[:2]
        if self._video is None:
            self._open_streams(w, h)
        elif (w, h) != (self._video.width, self._video.height):
            raise InputError(
                f"{self.uri}: frame {self.frames} is {w}x{h} but the video is {self._video.width}x{self._video.height}; "
                "every frame must have the same size"
            )
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.frames
        vf.time_base = 1 / self.rate
        self._mux(self._video.encode(vf))
        self.frames += 1
        self._write_audio_until(self._audio_samples(self.frames))

    def _open_streams(self, w: int, h: int) -> None:
        if w % 2 or h % 2:
            raise InputError(f"{self.uri}: H.264 yuv420p needs even frame sizes, got {w}x{h}; crop or pad by one pixel")
        video = self._container.add_stream("libx264", rate=self.rate)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"preset": self.preset, "crf": str(self.crf)}
        video.codec_context.thread_count = self.threads
        self._video = video
        if self.audio is not None:
            audio = self._container.add_stream("aac", rate=self.sample_rate)
            audio.layout = "mono"
            self._audio_stream = audio

    def _audio_samples(self, frames: int) -> int:
        """Audio samples that span ``frames`` video frames."""
        return samples_for_frames(frames, float(self.rate), self.sample_rate)

    def _write_audio_until(self, end: int) -> None:
        import av

        if self._audio_stream is None or end <= self._audio_pos:
            return
        chunk = self.audio[self._audio_pos : end]
        if len(chunk) < end - self._audio_pos:  # the audio ran out: silence to the end of the video
            chunk = np.concatenate([chunk, np.zeros(end - self._audio_pos - len(chunk), np.float32)])
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk[None, :]), format="fltp", layout="mono")
        af.sample_rate = self.sample_rate
        af.pts = self._audio_pos
        af.time_base = Fraction(1, self.sample_rate)
        self._mux(self._audio_stream.encode(af))
        self._audio_pos = end

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _finish(self) -> None:
        if self.frames == 0:
            raise InputError(f"{self.uri}: no frames were written; a video needs at least one frame")
        self._mux(self._video.encode(None))
        if self._audio_stream is not None:
            self._write_audio_until(self._audio_samples(self.frames))
            self._mux(self._audio_stream.encode(None))
        container, self._container = self._container, None
        container.close()

    def _close_container(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - the original error matters, this file is thrown away
                log.debug("closing %s after an error failed", self.uri, exc_info=True)


def write_video(
    uri: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float = FPS,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = SAMPLE_RATE,
    **kwargs,
) -> int:
    """Write frames ((T, H, W, 3) array or any iterable of (H, W, 3) uint8) as an H.264 mp4; returns the
    frame count. ``kwargs`` go to :class:`VideoWriter` (``crf``, ``preset``, ``threads``)."""
    with VideoWriter(uri, fps=fps, audio=audio, sample_rate=sample_rate, **kwargs) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames
