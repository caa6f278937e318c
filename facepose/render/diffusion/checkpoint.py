"""Checkpoints of the diffusion backend.

Two layouts load:

1. Our own: a :meth:`FaceAnimationPipeline.save_pretrained` folder (``model_index.json`` and one
   sub-folder per component); :func:`save_pipeline` / :func:`load_pipeline` also take ``s3://`` prefixes.
2. Moore-AnimateAnyone's released ``pretrained_weights/`` folder (:func:`load_moore_animateanyone`)::

       <root>/denoising_unet.pth            686 keys = the SD 1.5 UNet2DConditionModel keys
       <root>/reference_unet.pth            682 keys = the same minus conv_norm_out.*, conv_out.*
       <root>/pose_guider.pth               16 keys  = ControlNetConditioningEmbedding(320, 3, (16, 32, 96, 256))
       <root>/motion_module.pth             588 keys, AnimateDiff names (renamed onto UNetMotionModel below)
       <root>/stable-diffusion-v1-5/unet/config.json   (only the config is read)
       <root>/sd-vae-ft-mse/                AutoencoderKL folder
       <root>/image_encoder/                CLIPVisionModelWithProjection folder

   Every key and shape is checked (the key lists in ``tests/data/moore-animateanyone/``); a missing file, key or
   shape is a :class:`ModelNotFoundError` naming the file, the key and the expected layout. Three
   explicit, documented adaptations are made and nothing else:

   - motion-module keys are renamed (``.temporal_transformer.`` dropped, ``attention_blocks.{0,1}`` ->
     ``attn{1,2}``, ``norms.{0,1}`` -> ``norm{1,2}``, ``ff_norm`` -> ``norm3``); their two identical
     ``pos_encoder.pe`` buffers per block become diffusers' one ``pos_embed.pe`` (checked equal);
   - the ReferenceNet's ``conv_in`` takes the motion frames too (``4 * (1 + motion_frames)`` channels):
     the released ``[320, 4, 3, 3]`` weight is zero-padded on the new input channels, so the released
     model behaves exactly as released until Motion Frames are trained;
   - the ReferenceNet's unused output layers (``conv_norm_out``, ``conv_out``; its output is discarded)
     are zero-filled when absent, as they are in the release.

   No Face Locator is released: it is built zero-initialised (adds nothing) unless ``face_locator``
   names a trained one. The motion modules run with per-frame temporal norm (see motion.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from facepose import storage
from facepose.config import ModelConfig
from facepose.errors import ModelNotFoundError
from facepose.render.diffusion.config import ArchConfig, load_arch

log = logging.getLogger(__name__)

MOORE_FILES = ("denoising_unet.pth", "reference_unet.pth", "pose_guider.pth", "motion_module.pth")
MOORE_LAYOUT = (
    "expected Moore-AnimateAnyone's layout: <folder>/{denoising_unet.pth, reference_unet.pth, pose_guider.pth, "
    "motion_module.pth} from huggingface.co/patrolli/AnimateAnyone, <folder>/stable-diffusion-v1-5/unet/config.json "
    "from huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5, <folder>/sd-vae-ft-mse/ from "
    "huggingface.co/stabilityai/sd-vae-ft-mse, <folder>/image_encoder/ from the image_encoder folder of "
    "huggingface.co/lambdalabs/sd-image-variations-diffusers; or a folder written by save_pipeline (model_index.json)"
)
# ReferenceNet layers the release leaves out (its forward stops after the last up block)
REFERENCE_OPTIONAL = ("conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias")


# -- our layout -------------------------------------------------------------------------------------
def save_pipeline(pipe: Any, uri: Union[str, os.PathLike]) -> None:
    """``pipe.save_pretrained`` to a local folder or an ``s3://`` prefix (uploaded file by file;
    ``model_index.json`` last, so a reader never sees a half-written pipeline as complete)."""
    if not storage.is_remote(uri):
        pipe.save_pretrained(storage.parse(uri).path, safe_serialization=True)
        return
    with tempfile.TemporaryDirectory(prefix="facepose-ckpt-") as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        files = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == "model_index.json")
        for path in files:
            storage.upload(path, storage.join(os.fspath(uri), path.relative_to(tmp).as_posix()))


def load_pipeline(uri: Union[str, os.PathLike], model: Optional[ModelConfig] = None, arch: Optional[ArchConfig] = None) -> Any:
    """Load a pipeline from a save_pipeline folder or a Moore-AnimateAnyone folder (local or ``s3://``)."""
    from facepose.render.diffusion.pipeline import FaceAnimationPipeline

    model = model or ModelConfig()
    root = localize(uri)
    if (root / "model_index.json").is_file():
        try:
            pipe = FaceAnimationPipeline.from_pretrained(root, low_cpu_mem_usage=_low_cpu_mem())
        except (OSError, ValueError, KeyError) as e:
            raise ModelNotFoundError(f"cannot load the saved pipeline at {uri}: {_first_line(e)}") from None
        pipe.set_progress_bar_config(disable=True)
        align_tensors(pipe)
        return pipe
    if any((root / f).exists() for f in MOORE_FILES):
        return load_moore_animateanyone(
            root, arch or load_arch(model.arch), sd15_dir=model.sd15_dir, vae_dir=model.vae_dir,
            image_encoder_dir=model.image_encoder_dir, face_locator=model.face_locator, name=os.fspath(uri),
        )
    raise ModelNotFoundError(
        f"{uri} holds neither a saved pipeline (model_index.json) nor Moore-AnimateAnyone weights; {MOORE_LAYOUT}"
    )


def align_tensors(pipe: Any, alignment: int = 64) -> int:
    """Copy every parameter and buffer whose memory does not start on an ``alignment``-byte boundary.

    transformers 5 loads a checkpoint's tensors as views into one buffer at arbitrary offsets; CPU kernels
    then take other vectorised paths and round differently (measured: the tiny CLIP image encoder's
    embedding moved by 2.4e-7 and 36 of 319,488 frame values by 1 after a save/load). Aligned copies make a
    loaded pipeline compute bit for bit what the saved one did. Returns how many tensors were copied."""
    copied = 0
    with torch.no_grad():
        for module in pipe.components.values():
            if not isinstance(module, torch.nn.Module):
                continue
            for t in list(module.parameters()) + list(module.buffers()):
                if t.device.type == "cpu" and t.numel() and t.data_ptr() % alignment:
                    t.data = t.data.clone()
                    copied += 1
    return copied


def localize(uri: Union[str, os.PathLike]) -> Path:
    """A local folder for ``uri``: the folder itself, or a cached copy of an ``s3://`` prefix
    (``$FACEPOSE_CACHE`` or ``~/.cache/facepose``; files already there with the same size are kept)."""
    if not storage.is_remote(uri):
        path = Path(storage.parse(uri).path)
        if not path.is_dir():
            raise ModelNotFoundError(f"checkpoint folder {uri} does not exist; {MOORE_LAYOUT}")
        return path
    text = os.fspath(uri).rstrip("/")
    cache = Path(os.environ.get("FACEPOSE_CACHE", Path.home() / ".cache" / "facepose"))
    root = cache / "checkpoints" / hashlib.sha1(text.encode()).hexdigest()[:16]
    objects = list(storage.listdir(text))
    if not objects:
        raise ModelNotFoundError(f"checkpoint prefix {uri} is empty or missing; {MOORE_LAYOUT}")
    for obj in objects:
        dst = root / obj[len(text) + 1:]
        if not (dst.is_file() and dst.stat().st_size == storage.size(obj)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            storage.download(obj, dst)
    return root


# -- Moore-AnimateAnyone layout ---------------------------------------------------------------------
_ATTN_BLOCK = re.compile(r"\.attention_blocks\.(\d+)\.")
_NORMS = re.compile(r"\.norms\.(\d+)\.")
_PE = re.compile(r"\.attention_blocks\.\d+\.pos_encoder\.pe$")


def moore_to_diffusers_key(key: str) -> str:
    """A motion_module.pth (AnimateDiff) key -> its diffusers UNetMotionModel key; other keys unchanged."""
    if ".temporal_transformer." not in key:
        return key
    k = key.replace(".temporal_transformer.", ".")
    k = _PE.sub(".pos_embed.pe", k)
    k = _ATTN_BLOCK.sub(lambda m: f".attn{int(m.group(1)) + 1}.", k)
    k = _NORMS.sub(lambda m: f".norm{int(m.group(1)) + 1}.", k)
    return k.replace(".ff_norm.", ".norm3.")


def diffusers_to_moore_keys(key: str, attention_blocks: int = 2) -> list[str]:
    """Inverse of :func:`moore_to_diffusers_key` for a ``.motion_modules.`` key (``pos_embed.pe`` -> one
    ``pos_encoder.pe`` per attention block)."""
    m = re.match(r"^(.*\.motion_modules\.\d+)\.(.*)$", key)
    if m is None:
        return [key]
    head, rest = m.groups()
    if rest.endswith(".pos_embed.pe"):
        block = rest[: -len(".pos_embed.pe")]
        return [f"{head}.temporal_transformer.{block}.attention_blocks.{i}.pos_encoder.pe" for i in range(attention_blocks)]
    rest = re.sub(r"\.attn(\d+)\.", lambda x: f".attention_blocks.{int(x.group(1)) - 1}.", "." + rest)
    rest = re.sub(r"\.norm([12])\.", lambda x: f".norms.{int(x.group(1)) - 1}.", rest)
    rest = rest.replace(".norm3.", ".ff_norm.")
    return [f"{head}.temporal_transformer{rest}"]


def expected_moore_keys(reference_unet: torch.nn.Module, denoising_unet: torch.nn.Module, pose_guider: torch.nn.Module,
                        latent_channels: int = 4) -> dict[str, dict[str, tuple[int, ...]]]:
    """file name -> {key: shape} each released file must hold for these models (optional ReferenceNet
    output layers left out; the ReferenceNet's conv_in at ``latent_channels`` inputs)."""
    ref = {k: tuple(v.shape) for k, v in reference_unet.state_dict().items() if k not in REFERENCE_OPTIONAL}
    ref["conv_in.weight"] = (ref["conv_in.weight"][0], latent_channels) + ref["conv_in.weight"][2:]
    den = denoising_unet.state_dict()
    spatial = {k: tuple(v.shape) for k, v in den.items() if ".motion_modules." not in k}
    motion = {mk: tuple(v.shape) for k, v in den.items() if ".motion_modules." in k for mk in diffusers_to_moore_keys(k)}
    return {
        "reference_unet.pth": ref,
        "denoising_unet.pth": spatial,
        "motion_module.pth": motion,
        "pose_guider.pth": {k: tuple(v.shape) for k, v in pose_guider.state_dict().items()},
    }


def check_keys(path: Union[str, Path], found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]],
               optional: dict[str, tuple[int, ...]] | None = None) -> None:
    """Raise ModelNotFoundError naming ``path`` and the first differing key unless ``found`` has exactly the
    ``expected`` keys and shapes (keys in ``optional`` may be there, with their shape)."""
    optional = optional or {}
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and k not in optional)
    misshaped = sorted(k for k in found if (expected.get(k) or optional.get(k)) not in (None, tuple(found[k])))
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]!r}{_more(missing)}")
    if unexpected:
        problems.append(f"unexpected key {unexpected[0]!r}{_more(unexpected)}")
    if misshaped:
        k = misshaped[0]
        want = expected.get(k) or optional.get(k)
        problems.append(f"key {k!r} has shape {list(found[k])}, the model needs {list(want or ())}{_more(misshaped)}")
    if problems:
        raise ModelNotFoundError(f"{path} does not match the model: {'; '.join(problems)}; {MOORE_LAYOUT}")


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def convert_moore_state_dicts(files: dict[str, dict[str, torch.Tensor]], reference_unet: torch.nn.Module,
                              denoising_unet: torch.nn.Module, pose_guider: torch.nn.Module, latent_channels: int = 4,
                              paths: Optional[dict[str, Any]] = None) -> dict[str, dict[str, torch.Tensor]]:
    """Check the four released state dicts key by key and map them onto our models:
    {"reference_unet", "denoising_unet", "pose_guider"} -> state dict ready for ``load_state_dict(strict=True)``."""
    paths = paths or {f: f for f in MOORE_FILES}
    expected = expected_moore_keys(reference_unet, denoising_unet, pose_guider, latent_channels)
    shapes = {f: {k: tuple(v.shape) for k, v in sd.items()} for f, sd in files.items()}
    ref_model = {k: tuple(v.shape) for k, v in reference_unet.state_dict().items()}
    for f in MOORE_FILES:
        optional = {k: ref_model[k] for k in REFERENCE_OPTIONAL} if f == "reference_unet.pth" else None
        check_keys(paths[f], shapes[f], expected[f], optional)

    # ReferenceNet: zero-pad conv_in for the motion-frame channels; fill the unused output layers
    ref = dict(files["reference_unet.pth"])
    w = ref["conv_in.weight"]
    extra = ref_model["conv_in.weight"][1] - w.shape[1]
    if extra:
        ref["conv_in.weight"] = torch.cat([w, w.new_zeros((w.shape[0], extra) + tuple(w.shape[2:]))], dim=1)
    for k in REFERENCE_OPTIONAL:
        if k not in ref:
            ref[k] = torch.zeros(ref_model[k], dtype=w.dtype)

    # denoising UNet: spatial keys as they are, motion keys renamed; duplicated pe must agree
    den = dict(files["denoising_unet.pth"])
    for k, v in files["motion_module.pth"].items():
        new = moore_to_diffusers_key(k)
        if new in den and not (v.is_meta or torch.equal(den[new], v)):
            raise ModelNotFoundError(
                f"{paths['motion_module.pth']}: {k!r} differs from the other positional encoding of its block; "
                "the file is corrupt, download it again"
            )
        den[new] = v
    return {"reference_unet": ref, "denoising_unet": den, "pose_guider": dict(files["pose_guider.pth"])}


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelNotFoundError(f"missing {path}; {MOORE_LAYOUT}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated download, an HTML error page saved as .pth, ...  # noqa: BLE001
        raise ModelNotFoundError(
            f"cannot read {path} as a PyTorch state dict ({type(e).__name__}); download it again; {MOORE_LAYOUT}"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelNotFoundError(
            f"{path} is not a plain state dict (key -> tensor) as Moore-AnimateAnyone saves them; {MOORE_LAYOUT}"
        )
    return sd


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _low_cpu_mem() -> bool:
    """diffusers loads without a full random init first only with ``accelerate`` installed (and warns otherwise)."""
    from diffusers.utils import is_accelerate_available

    return bool(is_accelerate_available())


def _sub(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p


def load_moore_animateanyone(root: Union[str, Path], arch: ArchConfig, *, sd15_dir: str = "stable-diffusion-v1-5",
                             vae_dir: str = "sd-vae-ft-mse", image_encoder_dir: str = "image_encoder",
                             face_locator: Optional[str] = None, name: Optional[str] = None) -> Any:
    """Build a :class:`FaceAnimationPipeline` from Moore-AnimateAnyone's released files (module docstring).
    Model sizes come from ``<sd15_dir>/unet/config.json``; motion, pose-guider, Face Locator, clip and
    scheduler settings from ``arch``. Weights stay fp32 on CPU; call ``configure_runtime`` next."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPVisionModelWithProjection

    from facepose.render.diffusion.models import FaceLocator, PoseGuider
    from facepose.render.diffusion.motion import denoising_unet_config, reference_unet_config
    from facepose.render.diffusion.pipeline import FaceAnimationPipeline

    root = Path(root)
    name = name or str(root)
    missing = [f for f in MOORE_FILES if not (root / f).is_file()]
    unet_config_path = _sub(root, sd15_dir) / "unet" / "config.json"
    if not unet_config_path.is_file():
        missing.append(f"{sd15_dir}/unet/config.json")
    for d in (vae_dir, image_encoder_dir):
        if not (_sub(root, d) / "config.json").is_file():
            missing.append(f"{d}/")
    if missing:
        raise ModelNotFoundError(f"{name} lacks {', '.join(missing)}; {MOORE_LAYOUT}")

    unet_config = {k: v for k, v in json.loads(unet_config_path.read_text()).items() if not k.startswith("_")}
    with torch.device("meta"):
        reference_unet = UNet2DConditionModel(**reference_unet_config(arch, unet_config))
        denoising_unet = UNetMotionModel(**denoising_unet_config(arch, unet_config))
        pose_guider = PoseGuider(**arch.pose_guider)
    paths = {f: root / f for f in MOORE_FILES}
    files = {f: _load_pth(p) for f, p in paths.items()}
    latent_channels = int(unet_config.get("in_channels", 4))
    converted = convert_moore_state_dicts(files, reference_unet, denoising_unet, pose_guider, latent_channels, paths)
    for module, key in ((reference_unet, "reference_unet"), (denoising_unet, "denoising_unet"), (pose_guider, "pose_guider")):
        module.load_state_dict(converted[key], strict=True, assign=True)
        left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
        if left:
            raise ModelNotFoundError(f"{name}: {key} has no weights for {left[0]!r}; {MOORE_LAYOUT}")
        module.eval()

    try:
        vae = AutoencoderKL.from_pretrained(_sub(root, vae_dir), low_cpu_mem_usage=_low_cpu_mem())
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load the VAE at {_sub(root, vae_dir)} ({_first_line(e)}); {MOORE_LAYOUT}") from None
    try:
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(_sub(root, image_encoder_dir))
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"cannot load the image encoder at {_sub(root, image_encoder_dir)} ({_first_line(e)}); {MOORE_LAYOUT}"
        ) from None
    if image_encoder.config.projection_dim != unet_config.get("cross_attention_dim"):
        raise ModelNotFoundError(
            f"the image encoder at {_sub(root, image_encoder_dir)} embeds to {image_encoder.config.projection_dim} "
            f"but the UNets' cross_attention_dim is {unet_config.get('cross_attention_dim')}; {MOORE_LAYOUT}"
        )
    if face_locator:
        locator = FaceLocator.from_pretrained(localize(face_locator))
    else:
        log.info("no Face Locator weights are released; it is zero-initialised and adds nothing until trained")
        locator = FaceLocator(**arch.face_locator).eval()
    pipe = FaceAnimationPipeline(
        vae=vae.eval(), image_encoder=image_encoder.eval(), reference_unet=reference_unet, denoising_unet=denoising_unet,
        pose_guider=pose_guider, face_locator=locator, scheduler=DDIMScheduler(**arch.scheduler),
        clip_length=arch.clip_length, motion_frames=arch.motion_frames, temporal_norm=arch.temporal_norm,
    )
    pipe.set_progress_bar_config(disable=True)
    align_tensors(pipe)
    return pipe
