"""Video in and out: decord reads (resampled to a target fps, in chunks), PyAV writes H.264 mp4 (+AAC).

Reading maps every output frame ``i`` at the target fps to the source frame whose timestamp is nearest to
``t = i / fps`` (measured from the first frame), so a 30 fps source read at 24 fps keeps its duration and
its content order, and a variable-frame-rate phone video comes out evenly spaced. A clip of ``duration``
seconds gives ``round(duration * fps)`` frames. Frames come in chunks (``get_batch`` over index ranges),
so a ten-minute video never sits in memory.

Before decord sees a file it is checked cheaply (size, MP4 box layout, PyAV can open it and finds a video
packet): decord's own errors are long C++ traces, and on some garbage it crashes the process.

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

log = logging.getLogger(__name__)

__all__ = ["VideoInfo", "probe_video", "iter_frames", "read_frames", "VideoWriter", "write_video", "frame_indices"]


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds: ``fps`` (average, of the source), ``frames`` (source frame count),
    ``width``/``height`` in pixels, ``duration`` in seconds (first frame start to last frame end)."""

    fps: float
    frames: int
    width: int
    height: int
    duration: float
    has_audio: bool

    def frames_at(self, fps: float) -> int:
        """How many frames :func:`iter_frames` yields for the whole video at ``fps``."""
        return _round(self.duration * fps)


# -- errors ---------------------------------------------------------------------------------------
_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\]\s+\S+?:\d+:\s*")


def _short(exc: BaseException, limit: int = 160) -> str:
    """One short line from a decord/FFmpeg error (theirs carry timestamps, source paths, stack traces)."""
    text = _DECORD_PREFIX.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(("Stack trace", "[bt]"))]
    line = lines[-1] if lines else ""
    line = re.sub(r"^\[Errno -?\d+\]\s*", "", line)  # PyAV: "[Errno 1094995529] Invalid data ..."
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # decord: "[file.mp4] Failed to ..."
    line = re.sub(r"^Check failed: .*\(-?\d+ vs\. -?\d+\)\s*", "", line)
    line = re.sub(r":\s*'[^']*'$", "", line)  # PyAV appends the path, which the caller's message names already
    return (line.strip() or type(exc).__name__)[:limit]


def _decode_errors() -> tuple[type[BaseException], ...]:
    from decord._ffi.base import DECORDError

    return (DECORDError, RuntimeError)


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


def _validate(path: Path, name: str) -> tuple[int, int, bool]:
    """Cheap checks before decord opens ``path``; returns (width, height, has_audio)."""
    import av

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
            has_audio = bool(container.streams.audio)
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width <= 0 or height <= 0:
                raise MediaError(f"{name}: video stream has no frame size; the file is corrupt")
            for packet in container.demux(stream):
                if packet.size > 0:
                    return width, height, has_audio
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{name}: not a readable video ({_short(exc)}); expected an mp4/mov/mkv/webm file") from None
    raise MediaError(f"{name}: zero-length video (no frames); expected a video with at least one frame")


def _stream_kinds(container) -> str:
    kinds = [s.type for s in container.streams]
    return ", ".join(kinds) if kinds else "no streams"


# -- reading --------------------------------------------------------------------------------------
class _Source:
    """An open decord reader on a local file, with its frame start times (seconds)."""

    def __init__(self, path: Path, name: str, threads: int):
        import decord

        self.name = name
        self.width, self.height, self.has_audio = _validate(path, name)
        try:
            self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
            n = len(self.reader)
            if n == 0:
                raise MediaError(f"{name}: zero-length video (no frames); expected a video with at least one frame")
            ts = np.asarray(self.reader.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
        except MediaError:
            raise
        except (*_decode_errors(), AssertionError) as exc:
            raise MediaError(f"{name}: cannot decode video ({_short(exc)}); the file may be corrupt or truncated") from None
        self.frames = n
        self.starts = ts[:, 0]
        self.duration = float(ts[-1, 1] - ts[0, 0])
        if not np.isfinite(self.duration) or self.duration <= 0:
            fps = float(self.reader.get_avg_fps() or 0.0)
            self.duration = n / fps if fps > 0 else 0.0
        self.fps = float(self.reader.get_avg_fps())
        self._last: Optional[tuple[int, np.ndarray]] = None  # (source index, frame) of the last frame decoded

    def info(self) -> VideoInfo:
        return VideoInfo(self.fps, self.frames, self.width, self.height, self.duration, self.has_audio)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """indices: (n,) non-decreasing source indices -> (n, H, W, 3) uint8 frames."""
        # Upsampling repeats source frames. Asked again for a frame it has passed, decord seeks back to a
        # keyframe and decodes forward, so each source frame is decoded once: repeats inside a chunk are
        # copies, and a repeat across a chunk boundary comes from the last frame kept here.
        unique, inverse = np.unique(indices, return_inverse=True)
        reuse = self._last is not None and unique[0] == self._last[0]
        todo = unique[1:] if reuse else unique
        try:
            decoded = _asnumpy(self.reader.get_batch(todo.tolist())) if len(todo) else None
        except _decode_errors() as exc:
            raise MediaError(
                f"{self.name}: cannot decode source frames {int(indices[0])}-{int(indices[-1])} ({_short(exc)}); "
                "the file may be corrupt or truncated"
            ) from None
        if reuse:
            kept = self._last[1][None]
            decoded = kept if decoded is None else np.concatenate([kept, decoded])
        self._last = (int(unique[-1]), decoded[-1].copy())  # a copy: the caller may draw on its frames
        return decoded if len(unique) == len(indices) else decoded[inverse]


def _asnumpy(batch) -> np.ndarray:
    # decord's bridge is process-global (someone may have set it to torch); accept any of its outputs.
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


def _round(x: float) -> int:
    """Round half up, with a little slack for float noise (47.9999997 -> 48)."""
    return int(np.floor(x + 0.5 + 1e-6))


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
    count = max(0, _round((hi - lo) * fps))
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
    fps: float = 24.0,
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
    at ``fps`` within that range. ``threads`` is decord's decoder thread count (0 = FFmpeg's choice);
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
        for k in range(0, len(indices), chunk):
            yield src.get(indices[k : k + chunk])


def read_frames(uri: str | os.PathLike, fps: float = 24.0, start: int = 0, stop: Optional[int] = None, **kwargs) -> np.ndarray:
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
        fps: float = 24,
        audio: Optional[np.ndarray] = None,
        sample_rate: int = 16000,
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
        return _round(frames * self.sample_rate / float(self.rate))

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
    fps: float = 24,
    audio: Optional[np.ndarray] = None,
    sample_rate: int = 16000,
    **kwargs,
) -> int:
    """Write frames ((T, H, W, 3) array or any iterable of (H, W, 3) uint8) as an H.264 mp4; returns the
    frame count. ``kwargs`` go to :class:`VideoWriter` (``crf``, ``preset``, ``threads``)."""
    with VideoWriter(uri, fps=fps, audio=audio, sample_rate=sample_rate, **kwargs) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.frames
