"""The per-video curation unit: one video (or a time range of one) -> face clips, poses and audio
features in the curated-dataset layout (docs/contracts.md, "Curated dataset").

Per video:

1. **Scan** (one decode at ``curate.fps``): PySceneDetect's luma-histogram detector, fed the decoded
   frames one by one, marks shot cuts (:class:`ShotDetector`); the face tracker follows the face (reset
   at each cut) and, per frame, the landmark box side (face size) and the sharpness of the face (variance of the Laplacian of the face region
   resized to 128 px, so it does not grow with resolution) are recorded.
2. **Clips**: when a shot ends (at the next cut, or the video's end) it is cut into clips of at most
   ``curate.max_clip_s``; a clip is dropped, with the reason recorded, when it is ``too_short``, has the
   face missing in too many frames (``face_missing``), a face too small (``face_too_small``) or too
   blurry (``too_blurry``).
3. **Write**, in the same decode: the frames of the current shot wait in a buffer, and when the shot
   ends each kept clip is written from it as a ``clip_size`` square face crop held steady over the clip
   (``facepose.face.crop.crop_box``, which needs the whole clip's landmarks, hence the buffer), H.264
   at ``curate.fps`` with its audio; then its landmarks in crop pixels with per-frame Face Locator
   boxes; per-frame audio features (log-mel bands and RMS over each frame's 1/fps window, zeros and
   ``has_audio=false`` without audio).

Memory: the buffer holds at most ``curate.buffer_mb`` of RGB frames (768 MB: about 12 s of 720p, 5 s
of 1080p). A shot longer than that is not kept: its frames are let go and, when it ends, its clips are
written from a second decode of that shot's time range only (the reader seeks to the keyframe before
it). So every video is decoded once except for its over-long shots, and memory stays bounded whatever
the length (bench_memory.py: 0.55 GB at 5 s, 1.10 GB at 90 s of one 720p shot, the buffer full).
Buffering downscaled or re-encoded frames instead was rejected: the crop box, hence the resolution
needed, is known only when the clip ends, and JPEG-coding a 720p frame and decoding it back (5.9 ms
CPU) costs what decoding it again from the H.264 does (6.0 ms), and loses quality.

Timing: the audio (the video's own track, read on the video's timeline, so the sound at a frame's
presentation time lines up with that frame even when the tracks start at different times; or the
manifest's audio file) is read once, before the pass, for the features and every clip.

Outputs under the prefix ``out``::

    clips/<video_id>/<clip_id>.mp4
    poses/<video_id>.parquet     frame rows: PoseSequence columns + clip_id, bbox (Face Locator box)
    audio/<video_id>.parquet     frame rows: clip_id, frame, mel[n_mels], rms, has_audio
    index/<video_id>.parquet     one row per clip, kept or dropped (INDEX_SCHEMA)
    _done/<video_id>.json        the video's result row, written last

A shard file holds one video: the video is the unit of resume, so a rerun redoes whole videos only.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Optional

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facepose import storage
from facepose.config import Config, CurateConfig
from facepose.errors import FaceposeError, InputError, MediaError
from facepose.face_layout import face_size, fill_gaps, locator_box
from facepose.manifest import CurateJob, curate_result, digest, error_result, fingerprint
from facepose.timeline import frames_for_seconds, samples_for_frames

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (frames done, frames total)

REASONS = ("too_short", "face_missing", "face_too_small", "too_blurry")
SHARPNESS_SIZE = 128  # the face region is resized to this before the Laplacian

#: index/<video_id>.parquet: one row per clip.
INDEX_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("clip_id", pa.string()),
        ("status", pa.string()),  # ok | dropped
        ("reason", pa.string()),  # why it was dropped (REASONS), null when kept
        ("start_frame", pa.int64()),  # in the decoded range at curate.fps
        ("end_frame", pa.int64()),  # exclusive
        ("start_s", pa.float64()),  # seconds in the source video
        ("end_s", pa.float64()),
        ("frames", pa.int64()),
        ("missing", pa.float64()),  # share of frames without a face
        ("face_px", pa.float64()),  # median landmark-box side in source pixels
        ("sharpness", pa.float64()),  # median variance of the Laplacian of the face at 128 px
        ("clip", pa.string()),  # URI of the clip mp4, null when dropped
        ("crop_box", pa.list_(pa.float32(), 3)),  # (cx, cy, side) in source pixels
        ("locator_box", pa.list_(pa.float32(), 4)),  # union Face Locator box over the clip, crop pixels
        ("has_audio", pa.bool_()),
    ]
)


@dataclass
class CurateOutcome:
    """What :func:`curate_video` did: the video's result row and one index row per clip."""

    result: dict[str, Any]
    clips: list[dict[str, Any]] = field(default_factory=list)


# -- paths ----------------------------------------------------------------------------------------
def clip_uri(out: str, video_id: str, clip_id: str) -> str:
    return storage.join(out, "clips", video_id, f"{clip_id}.mp4")


def shard_uri(out: str, kind: str, video_id: str) -> str:
    """``kind``: poses | audio | index."""
    return storage.join(out, kind, f"{video_id}.parquet")


def marker_uri(out: str, video_id: str) -> str:
    return storage.join(out, "_done", f"{video_id}.json")


# -- per-frame measures ---------------------------------------------------------------------------
class ShotDetector:
    """Shot cuts, one frame at a time: PySceneDetect's ``HistogramDetector`` (the field's standard
    library, as in video2dataset) fed the frames curation already decoded; it never opens the video.

    A cut where the correlation of the 128-bin luma histograms of consecutive frames drops below
    ``1 - threshold``, at least ``min_frames`` after the previous cut (so a fade or dissolve gives one
    cut, not one per frame). Frames are downscaled to PySceneDetect's default analysis width (256 px) as
    its ``SceneManager`` does. Its cut is always the frame just fed, which the scan needs (the tracker
    resets there); ``ContentDetector`` and ``AdaptiveDetector`` report cuts frames later, and missed a hard
    cut or the dissolve on the test clip (BENCHMARKS.md, "Shot cuts"). The price of ``min_frames``: a
    shot shorter than it is not split from the next one.

    threshold: in (0, 1], higher finds fewer cuts; min_frames: >= 0; fps: the rate frames come at."""

    WIDTH = 256  # scenedetect.scene_manager.DEFAULT_MIN_WIDTH

    def __init__(self, threshold: float, min_frames: int, fps: float):
        from scenedetect import FrameTimecode
        from scenedetect.detectors import HistogramDetector

        if not 0.0 < threshold <= 1.0 or min_frames < 0:
            raise InputError(f"curate.shot_threshold {threshold} / shot_min_frames {min_frames}: the threshold must be in (0, 1] "
                             "(1 - histogram correlation; 0.2 is the default) and the minimum shot length >= 0 frames")
        self.detector = HistogramDetector(threshold=threshold, min_scene_len=int(min_frames))
        self.timecode, self.fps, self.frame, self.size = FrameTimecode, float(fps), 0, None

    def __call__(self, frame: np.ndarray) -> bool:
        """frame: (H, W, 3) uint8 RGB, the next one -> True when a new shot starts at it."""
        if self.size is None:
            h, w = frame.shape[:2]
            f = max(1.0, w / self.WIDTH)
            self.size = (max(1, round(w / f)), max(1, round(h / f)))
        if self.size != (frame.shape[1], frame.shape[0]):
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_LINEAR)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        t = self.timecode(self.frame, self.fps)
        self.frame += 1
        return bool(self.detector.process_frame(t, bgr))


def face_sharpness(frame: np.ndarray, landmarks: np.ndarray) -> float:
    """Variance of the Laplacian of the face region (landmark box, resized to 128 px, grey)."""
    h, w = frame.shape[:2]
    x0, y0 = np.floor(landmarks.min(axis=0)).astype(int)
    x1, y1 = np.ceil(landmarks.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    grey = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
    grey = cv2.resize(grey, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@dataclass
class Scan:
    """What the first pass found, per frame at ``fps``: landmarks (T, 68, 2) (zeros where lost),
    ``seen`` (T,), ``size`` and ``sharpness`` (T,) (NaN where lost), and the shot starts."""

    landmarks: np.ndarray
    seen: np.ndarray
    size: np.ndarray
    sharpness: np.ndarray
    cuts: list[int]
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.seen)


class Scanner:
    """The scan, fed one frame at a time: cuts, face track, size and sharpness per frame."""

    def __init__(self, tracker: Any, shots: ShotDetector):
        self.tracker, self.shots = tracker, shots
        self.lms: list[Optional[np.ndarray]] = []
        self.sizes: list[float] = []
        self.sharp: list[float] = []
        self.cuts = [0]
        self.width = self.height = 0
        tracker.reset()

    def __len__(self) -> int:
        return len(self.lms)

    def feed(self, frame: np.ndarray) -> bool:
        """frame: (H, W, 3) uint8 RGB. True when it starts a new shot (a cut before it)."""
        self.height, self.width = frame.shape[:2]
        cut = self.shots(frame)
        if cut:
            self.cuts.append(len(self.lms))
            self.tracker.reset()  # a new shot: find the face afresh, never carry a box across a cut
        lm = self.tracker.update(frame)
        self.lms.append(lm)
        self.sizes.append(float(face_size(lm)) if lm is not None else math.nan)
        self.sharp.append(face_sharpness(frame, lm) if lm is not None else math.nan)
        return cut

    def scan(self, start: int = 0, stop: Optional[int] = None) -> Scan:
        """The :class:`Scan` of frames [start, stop) (frame indices relative to ``start``)."""
        stop = len(self.lms) if stop is None else stop
        lms = self.lms[start:stop]
        seen = np.array([lm is not None for lm in lms], dtype=bool)
        landmarks = np.zeros((len(lms), 68, 2), np.float32)
        if seen.any():
            landmarks[seen] = np.stack([lm for lm in lms if lm is not None])
        cuts = [c - start for c in self.cuts if start <= c < stop] or [0]
        if cuts[0] != 0:
            cuts.insert(0, 0)
        return Scan(landmarks, seen, np.array(self.sizes[start:stop], np.float64), np.array(self.sharp[start:stop], np.float64),
                    cuts, int(self.width), int(self.height))


def scan_frames(chunks: Iterator[np.ndarray], tracker: Any, shots: ShotDetector, progress: Optional[ProgressFn] = None, total: int = 0) -> Scan:
    """chunks: (n, H, W, 3) uint8 frame chunks -> :class:`Scan`. ``tracker``: a FaceTracker (reset at cuts)."""
    scanner = Scanner(tracker, shots)
    for chunk in chunks:
        for frame in chunk:
            scanner.feed(frame)
        if progress is not None:
            progress(len(scanner), max(total, len(scanner)))
    return scanner.scan()


# -- clips ----------------------------------------------------------------------------------------
@dataclass
class Clip:
    clip_id: str
    start: int  # frame index in the scan (inclusive)
    end: int  # exclusive
    reason: Optional[str] = None  # None: kept
    missing: float = 0.0
    face_px: float = math.nan
    sharpness: float = math.nan

    @property
    def frames(self) -> int:
        return self.end - self.start


def split_clips(scan: Scan, video_id: str, fps: float, max_clip_s: float) -> list[Clip]:
    """Shots (between cuts) cut into clips of at most ``max_clip_s``, of nearly equal length."""
    bounds = scan.cuts + [len(scan)]
    clips: list[Clip] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        clips.extend(split_shot(a, b, video_id, fps, max_clip_s, first=len(clips)))
    return clips


def split_shot(a: int, b: int, video_id: str, fps: float, max_clip_s: float, first: int = 0) -> list[Clip]:
    """The shot [a, b) cut into clips of at most ``max_clip_s``, of nearly equal length; ids count from ``first``."""
    max_len = max(1, frames_for_seconds(max_clip_s, fps))
    parts = max(1, math.ceil((b - a) / max_len))
    edges = np.linspace(a, b, parts + 1).round().astype(int)
    return [Clip(clip_id=f"{video_id}_{first + k:04d}", start=int(s), end=int(e))
            for k, (s, e) in enumerate((s, e) for s, e in zip(edges[:-1], edges[1:]) if e > s)]


def judge(clip: Clip, scan: Scan, cfg: CurateConfig, fps: float) -> Clip:
    """Fill in the clip's quality figures and the reason it is dropped, if any (first failing check)."""
    seen = scan.seen[clip.start : clip.end]
    clip.missing = float(1.0 - seen.mean()) if len(seen) else 1.0
    if seen.any():
        clip.face_px = float(np.median(scan.size[clip.start : clip.end][seen]))
        clip.sharpness = float(np.median(scan.sharpness[clip.start : clip.end][seen]))
    if clip.frames < cfg.min_clip_s * fps - 1e-6:
        clip.reason = "too_short"
    elif clip.missing > cfg.max_missing:
        clip.reason = "face_missing"
    elif clip.face_px < cfg.min_face_px:
        clip.reason = "face_too_small"
    elif clip.sharpness < cfg.min_sharpness:
        clip.reason = "too_blurry"
    return clip


def locator_boxes(landmarks: np.ndarray, expand: float, size: int) -> np.ndarray:
    """(T, 68, 2) in crop pixels -> (T, 4) Face Locator boxes (x0, y0, x1, y1): the landmark box scaled
    by ``expand`` about its centre (EMO), clipped to the crop."""
    return np.clip(locator_box(landmarks, expand), 0, size).astype(np.float32)


# -- audio features -------------------------------------------------------------------------------
from facepose.pose.audio_features import FEATURES as AUDIO_FEATURES  # noqa: E402 - numpy only; kept beside its use


def audio_features(audio: Optional[np.ndarray], frames: int, fps: float, sr: int, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """audio: (N,) float32 mono at ``sr`` (or None) -> (mel (frames, n_mels) log-mel, rms (frames,)), frame
    i centred on (i + 0.5) / fps: the front end inference runs and training reads
    (:func:`facepose.pose.audio_features.audio_features`), the audio padded with silence or trimmed to
    the frames. Without audio both are zeros."""
    from facepose.pose.audio_features import audio_features as front_end

    mel_out = np.zeros((frames, n_mels), np.float32)
    rms_out = np.zeros(frames, np.float32)
    if audio is None or len(audio) == 0 or frames == 0:
        return mel_out, rms_out
    need = samples_for_frames(frames, fps, sr)
    y = np.zeros(need, np.float32)
    y[: min(need, len(audio))] = audio[:need]
    feat = front_end(y, sr, fps, n_mels, pitch=False)  # curation stores the log-mel and loudness only
    n = min(frames, feat.frames)
    mel_out[:n], rms_out[:n] = feat.log_mel[:n], feat.rms[:n]
    return mel_out, rms_out


def _fixed(values: np.ndarray) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _write_table(uri: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


# -- the unit -------------------------------------------------------------------------------------
#: Version of what curation makes of the same inputs and settings; part of :func:`input_digest`, so a
#: rerun re-curates (once) videos curated by an older version. 2: the sound is cut on the video's
#: timeline (the audio/video timing fix); outputs without a version came before it.
CURATE_VERSION = 2


def input_digest(job: CurateJob, cfg: Optional[Config]) -> Optional[str]:
    """Hash of a video's inputs (video and audio fingerprints, time range), of the settings that shape
    its outputs and of :data:`CURATE_VERSION`; None when the video, or the audio file it names, does
    not exist. A rerun redoes a video whose digest changed."""
    cfg = (cfg if cfg is not None else Config())
    video_fp = fingerprint(job.video)
    if video_fp is None:
        return None
    audio_fp = fingerprint(job.audio) if job.audio else None
    if job.audio and audio_fp is None:
        return None
    c = asdict(cfg.curate)
    settings = {k: c[k] for k in ("fps", "clip_size", "crop_margin", "shot_threshold", "shot_min_frames", "min_clip_s", "max_clip_s",
                                   "min_face_px",
                                   "max_missing", "min_sharpness", "smooth", "sample_rate", "n_mels", "crf")}
    return digest({"video": job.video, "video_fp": video_fp, "audio": job.audio, "audio_fp": audio_fp, "start": job.start,
                   "end": job.end, "curate": settings, "face": asdict(cfg.face), "version": CURATE_VERSION})


class Curator:
    """Curates videos one by one; the face models load once, in ``__init__`` (a Ray actor keeps one).

    cfg: a :class:`Config` (``curate`` and ``face`` sections are used)."""

    def __init__(self, cfg: Optional[Config] = None):
        from facepose.face.track import FaceTracker

        self.cfg: Config = (cfg if cfg is not None else Config())
        self.tracker = FaceTracker(self.cfg.face, fps=self.cfg.curate.fps)
        self.tracker.detector.detect(np.zeros((64, 64, 3), np.uint8))  # loads the detector now, not on the first video
        import facepose.media.audio
        import facepose.media.video  # noqa: F401

    def input_digest(self, job: CurateJob) -> Optional[str]:
        return input_digest(job, self.cfg)

    def __call__(self, job: CurateJob, out: str, progress: Optional[ProgressFn] = None) -> CurateOutcome:
        """Curate one video into ``out``; never raises: a failure is an ``error`` result row."""
        t0 = time.perf_counter()
        try:
            return self._curate(job, out, progress, t0)
        except Exception as exc:
            if not isinstance(exc, FaceposeError):
                log.exception("video %s: unexpected error", job.video_id)
            row = error_result(job.video_id, exc)
            result = curate_result(job.video_id, "error", error=row["error"], error_kind=row["error_kind"], transient=row["transient"],
                                   elapsed_s=time.perf_counter() - t0, input_digest=job.input_digest or None)
            log.warning("video %s: %s", job.video_id, result["error"])
            return CurateOutcome(result)

    def _curate(self, job: CurateJob, out: str, progress: Optional[ProgressFn], t0: float) -> CurateOutcome:
        from facepose.media.video import probe_video

        c, fps = self.cfg.curate, float(self.cfg.curate.fps)
        if not job.input_digest:
            job.input_digest = self.input_digest(job) or ""
            if not job.input_digest:
                raise InputError(f"video {job.video} does not exist; check the manifest's video column")
        storage.delete(marker_uri(out, job.video_id))  # a marker vouches for the files: not while they change
        info = probe_video(job.video)
        if job.start is not None and job.start >= info.duration:
            raise InputError(f"video {job.video_id}: start {job.start}s is past the end of {job.video} ({info.duration:.2f}s)")
        t_start = job.start or 0.0
        total = info.frames_at(fps) if job.start is None and job.end is None else frames_for_seconds(min(job.end or info.duration, info.duration) - t_start, fps)

        # Audio first, on the video's timeline: clips are written during the one decode.
        audio = self._audio(job, info.has_audio, t_start, total / fps)
        for stale in storage.listdir(storage.join(out, "clips", job.video_id)):
            storage.delete(stale)  # clips of an earlier run with other settings
        # 1-3. One decode: scan; at each shot's end cut it into clips, judge them, write the kept ones
        clips, crops, frames = self._scan_and_write(job, out, audio, fps, total, progress)
        if frames == 0:
            raise MediaError(f"{job.video}: no frames in the range {job.start or 0}-{job.end or 'end'} s")
        kept = [clip for clip in clips if clip.reason is None]
        mel, rms = audio_features(audio, frames, fps, c.sample_rate, c.n_mels)
        if kept:
            self._write_poses(job, out, kept, crops, fps)
            self._write_audio(job, out, kept, mel, rms, audio is not None, fps)
        else:
            for kind in ("poses", "audio"):
                storage.delete(shard_uri(out, kind, job.video_id))
        rows = [self._index_row(job, out, clip, crops.get(clip.clip_id), t_start, fps, audio is not None) for clip in clips]
        _write_table(shard_uri(out, "index", job.video_id), pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))
        dropped: dict[str, int] = {}
        for clip in clips:
            if clip.reason:
                dropped[clip.reason] = dropped.get(clip.reason, 0) + 1
        result = curate_result(job.video_id, "ok", clips=len(clips), kept=len(kept), dropped=dropped, frames=frames,
                               elapsed_s=time.perf_counter() - t0, input_digest=job.input_digest)
        storage.write_text(marker_uri(out, job.video_id), json.dumps(result))
        log.info("video %s: %d frames, %d clips kept, dropped %s (%.1f frames/s)", job.video_id, frames, len(kept), dropped or "none",
                 frames / max(result["elapsed_s"], 1e-9))
        return CurateOutcome(result, rows)

    # -- helpers ------------------------------------------------------------------------------------
    def _audio(self, job: CurateJob, has_audio: bool, t_start: float, seconds: float) -> Optional[np.ndarray]:
        from facepose.media.audio import load_audio

        sr = self.cfg.curate.sample_rate
        # A video's own track comes on the video's timeline (load_audio's default): sample 0 plays with
        # the first frame, so t_start and every clip's range mean the same instants for sound and frames.
        if job.audio:  # named in the manifest: failing to read it is the row's error
            return load_audio(job.audio, sr=sr, start_s=t_start, end_s=t_start + seconds)
        if not has_audio:
            return None
        try:
            return load_audio(job.video, sr=sr, start_s=t_start, end_s=t_start + seconds)
        except MediaError as e:
            log.warning("video %s: audio track unreadable, features are zeros (%s)", job.video_id, e)
            return None

    def _crop_plan(self, clip: Clip, scan: Scan) -> dict[str, Any]:
        """The clip's steady crop box, its landmarks in crop pixels and per-frame Face Locator boxes."""
        from facepose.face.crop import crop_box, to_crop
        from facepose.pose.smooth import smooth_landmarks

        c = self.cfg.curate
        seen = scan.seen[clip.start : clip.end]
        lm = fill_gaps(scan.landmarks[clip.start : clip.end], seen)
        if c.smooth:
            lm = smooth_landmarks(lm, c.fps, self.cfg.face.smoothing, visible=np.ones(len(lm), bool))
        box = tuple(float(v) for v in crop_box(lm, (scan.width, scan.height), c.crop_margin))
        crop_lm = to_crop(lm, box, c.clip_size)
        return {"box": box, "landmarks": crop_lm, "seen": seen, "locator": locator_boxes(crop_lm, self.cfg.face.mask_expand, c.clip_size)}

    def _scan_and_write(self, job: CurateJob, out: str, audio: Optional[np.ndarray], fps: float, total: int,
                        progress: Optional[ProgressFn]) -> tuple[list[Clip], dict, int]:
        """The one decode (module docstring): -> (every clip, kept or dropped, in order; crop plans of
        the kept ones by clip id; frames decoded)."""
        from facepose.media.video import iter_frames

        c = self.cfg.curate
        scanner = Scanner(self.tracker, ShotDetector(c.shot_threshold, c.shot_min_frames, fps))
        clips: list[Clip] = []
        crops: dict[str, dict[str, Any]] = {}
        buffer: Optional[list[np.ndarray]] = []  # frames of the current shot; None once it outgrew the budget
        budget = 0
        shot = 0  # first frame of the current shot

        def end_shot(stop: int) -> None:
            nonlocal buffer
            if stop > shot:
                self._finish_shot(job, out, scanner, shot, stop, buffer, audio, fps, clips, crops)
            buffer = []

        for chunk in iter_frames(job.video, fps=fps, start_s=job.start, end_s=job.end):
            if not budget:
                budget = max(1, int(c.buffer_mb * 2**20) // max(1, chunk[0].nbytes))
            for frame in chunk:
                i = len(scanner)
                if scanner.feed(frame):
                    end_shot(i)
                    shot = i
                if buffer is not None:
                    buffer.append(frame)
                    if len(buffer) > budget:
                        log.info("video %s: shot from frame %d is longer than the %d MB buffer; its clips are written from a second read",
                                 job.video_id, shot, c.buffer_mb)
                        buffer = None
            if progress is not None:
                progress(len(scanner), max(total, len(scanner)))
        end_shot(len(scanner))
        return clips, crops, len(scanner)

    def _finish_shot(self, job: CurateJob, out: str, scanner: Scanner, a: int, b: int, frames: Optional[list[np.ndarray]],
                     audio: Optional[np.ndarray], fps: float, clips: list[Clip], crops: dict) -> None:
        """Cut the shot [a, b) into clips, judge them, write the kept ones (from ``frames``, the shot's
        frames, or when None from a second read of its range); appends to ``clips`` and ``crops``."""
        from facepose.media.video import iter_frames

        c = self.cfg.curate
        local = scanner.scan(a, b)
        shot_clips = [judge(clip, local, c, fps) for clip in split_shot(0, b - a, job.video_id, fps, c.max_clip_s, first=len(clips))]
        plans = {clip.clip_id: self._crop_plan(clip, local) for clip in shot_clips if clip.reason is None}
        if plans:
            if frames is None:
                source = (f for chunk in iter_frames(job.video, fps=fps, start_s=job.start, end_s=job.end, start=a, stop=b) for f in chunk)
            else:
                source = iter(frames)
            self._write_clips(job, out, [clip for clip in shot_clips if clip.reason is None], plans, source, a, audio, fps, b - a)
        for clip in shot_clips:  # shot-relative -> video frame indices
            clip.start += a
            clip.end += a
        clips.extend(shot_clips)
        crops.update(plans)

    def _write_clips(self, job: CurateJob, out: str, kept: list[Clip], crops: dict, frames: Iterator[np.ndarray], offset: int,
                     audio: Optional[np.ndarray], fps: float, n: int) -> None:
        """Write the kept clips of one shot; ``frames`` are the shot's frames, ``kept`` clip ranges are
        relative to it, ``offset`` is the shot's first frame in the video (for the audio)."""
        from facepose.face.crop import crop_image
        from facepose.media.video import VideoWriter

        c = self.cfg.curate
        size = c.clip_size
        pending = iter(kept)
        clip = next(pending, None)
        writer: Optional[VideoWriter] = None
        i = 0
        try:
            for frame in frames:
                if clip is None:
                    break
                if i == clip.start:
                    a, b = offset + clip.start, offset + clip.end
                    seg = None if audio is None else audio[samples_for_frames(a, fps, c.sample_rate) : samples_for_frames(b, fps, c.sample_rate)]
                    writer = VideoWriter(clip_uri(out, job.video_id, clip.clip_id), fps=fps, audio=seg, sample_rate=c.sample_rate, crf=c.crf)
                    writer.__enter__()
                if writer is not None:
                    writer.write(crop_image(frame, crops[clip.clip_id]["box"], size))
                i += 1
                if writer is not None and i == clip.end:
                    w, writer = writer, None
                    w.close()
                    clip = next(pending, None)
        except BaseException as exc:
            if writer is not None:
                writer.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if writer is not None or clip is not None:
            err = MediaError(f"{job.video}: frames {offset}-{offset + n} gave only {i} frames when read for the clips; the file may be damaged")
            if writer is not None:
                writer.__exit__(MediaError, err, None)  # drops the unfinished clip
            raise err

    def _write_poses(self, job: CurateJob, out: str, kept: list[Clip], crops: dict, fps: float) -> None:
        from facepose.pose.sequence import PoseSequence

        size = self.cfg.curate.clip_size
        tables = []
        for clip in kept:
            p = crops[clip.clip_id]
            scores = np.repeat(p["seen"].astype(np.float32)[:, None], 68, axis=1)
            pose = PoseSequence(landmarks=p["landmarks"], scores=scores, fps=fps, width=size, height=size, source=f"{job.video}#{clip.clip_id}")
            tables.append(pose.to_table(extra={"clip_id": [clip.clip_id] * clip.frames, "bbox": p["locator"]}))
        _write_table(shard_uri(out, "poses", job.video_id), pa.concat_tables(tables))

    def _write_audio(self, job: CurateJob, out: str, kept: list[Clip], mel: np.ndarray, rms: np.ndarray, has_audio: bool, fps: float) -> None:
        c = self.cfg.curate
        parts = []
        for clip in kept:
            n = clip.frames
            parts.append(pa.table({
                "clip_id": pa.array([clip.clip_id] * n),
                "frame": pa.array(np.arange(n, dtype=np.int32)),
                "mel": _fixed(mel[clip.start : clip.end]),
                "rms": pa.array(rms[clip.start : clip.end]),
                "has_audio": pa.array(np.full(n, has_audio)),
            }))
        meta = {"facepose.fps": repr(fps), "facepose.sample_rate": str(c.sample_rate), "facepose.n_mels": str(c.n_mels),
                "facepose.features": AUDIO_FEATURES}
        _write_table(shard_uri(out, "audio", job.video_id), pa.concat_tables(parts).replace_schema_metadata(meta))

    def _index_row(self, job: CurateJob, out: str, clip: Clip, crop: Optional[dict], t_start: float, fps: float, has_audio: bool) -> dict[str, Any]:
        locator = None
        if crop is not None:
            b = crop["locator"]
            locator = [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]
        return {
            "video_id": job.video_id, "clip_id": clip.clip_id, "status": "dropped" if clip.reason else "ok", "reason": clip.reason,
            "start_frame": clip.start, "end_frame": clip.end, "start_s": t_start + clip.start / fps, "end_s": t_start + clip.end / fps,
            "frames": clip.frames, "missing": clip.missing, "face_px": None if math.isnan(clip.face_px) else clip.face_px,
            "sharpness": None if math.isnan(clip.sharpness) else clip.sharpness,
            "clip": clip_uri(out, job.video_id, clip.clip_id) if crop is not None else None,
            "crop_box": list(crop["box"]) if crop is not None else None, "locator_box": locator, "has_audio": has_audio,
        }


def curate_video(job: CurateJob, out: str, cfg: Optional[Config] = None, curator: Optional[Curator] = None, progress: Optional[ProgressFn] = None) -> CurateOutcome:
    """Curate one video (a :class:`CurateJob`) into the dataset under ``out``; see the module docstring.
    ``curator`` reuses loaded face models. Never raises: failures are ``error`` result rows."""
    return (curator or Curator(cfg))(job, out, progress)
