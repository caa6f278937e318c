"""Images in and out as (H, W, 3) uint8 RGB, through storage (so ``s3://`` works).

Reading applies the EXIF orientation (phone photos are stored sideways with a rotate tag), composites
transparency over white, and brings greyscale, palette, CMYK and 16-bit images to 8-bit RGB.
"""

from __future__ import annotations

import io
import os
from pathlib import PurePosixPath

import numpy as np

from facepose import storage
from facepose.errors import InputError, MediaError

__all__ = ["read_image", "write_image", "to_rgb"]


def read_image(uri: str | os.PathLike) -> np.ndarray:
    """The image at ``uri`` -> (H, W, 3) uint8 RGB, upright per its EXIF orientation.

    Raises MediaError naming the input when the bytes are not a readable image, StorageError when missing."""
    from PIL import Image, ImageOps

    name = os.fspath(uri)
    data = storage.read_bytes(uri)
    if not data:
        raise MediaError(f"{name}: empty file (0 bytes); expected an image (png, jpg, webp, ...)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{name}: image too large ({exc}); downscale it first") from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).split(" (")[0].replace(f"{io.BytesIO!r}", "").strip() or type(exc).__name__
        if isinstance(exc, Image.UnidentifiedImageError):
            reason = "not an image format Pillow reads"
        raise MediaError(f"{name}: cannot read image ({reason}); use a png, jpg or webp file") from None


def to_rgb(img) -> np.ndarray:
    """A PIL image in any mode -> (H, W, 3) uint8 RGB; transparency is composited over white."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255) else 255.0
        if mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def write_image(uri: str | os.PathLike, array: np.ndarray, quality: int = 95) -> None:
    """Write (H, W, 3) or (H, W, 4) RGB(A) or (H, W) grey uint8 to ``uri``; the format comes from the
    extension (.png, .jpg, .webp, ...). JPEG drops alpha; ``quality`` applies to lossy formats."""
    from PIL import Image

    name = os.fspath(uri)
    ext = PurePosixPath(storage.parse(uri).path).suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"{name}: unknown image extension {ext or '(none)'!r}; use .png, .jpg or .webp")
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise InputError(f"{name}: images must be (H, W), (H, W, 3) or (H, W, 4) uint8, got {arr.shape} {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(np.ascontiguousarray(arr))
    if fmt == "JPEG" and img.mode == "RGBA":
        img = Image.fromarray(to_rgb(img))
    options = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    storage.write_bytes(uri, buf.getvalue())
