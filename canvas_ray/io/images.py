"""Image bytes in and out: decoding with limits, mode normalisation, and encoding of results.

Every way an input can be bad (empty, not an image, truncated, too many pixels, too small, odd mode)
raises :class:`ImageError` with a reason a person can act on; callers turn it into an error row.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

# We enforce our own pixel limit before decoding; PIL's bomb check would raise a less useful error.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An input image that cannot be used, with the reason."""


def decode_image(
    data: bytes | None,
    *,
    max_bytes: int = 40 * 1024 * 1024,
    max_pixels: int = 40_000_000,
    min_side: int = 16,
) -> np.ndarray:
    """Decode to ``HxWx3`` RGB or ``HxWx4`` RGBA uint8 (RGBA only when the image has real transparency).

    EXIF orientation is applied; palette, grey, 16-bit, float and CMYK images are converted; animated
    images give their first frame.
    """
    if data is None or len(data) == 0:
        raise ImageError("empty file: no image bytes")
    if len(data) > max_bytes:
        raise ImageError(f"file is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width}x{height} = {width * height / 1e6:.1f} MP; the limit is "
                    f"{max_pixels / 1e6:.1f} MP (downscale it or raise limits.max_pixels)"
                )
            if min(width, height) < min_side:
                raise ImageError(f"image is {width}x{height}; both sides must be at least {min_side} px")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image: the bytes are not in a format Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"corrupt or truncated image: {error}") from None
    return _to_uint8_array(image)


def _to_uint8_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L"):  # 16-bit: a fixed scale keeps flat images flat, not black
        grey = (np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        grey = ((values - lo) * scale).round().clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info)
    image = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    if has_alpha and array[..., 3].min() == 255:
        array = array[..., :3]
    return np.ascontiguousarray(array)


def delivery_quality(fmt: str, quality: int) -> int:
    """The encode rule of a delivered output that follows no output profile: WebP is written at quality 100,
    which :func:`encode_image` makes lossless, so the verified product pixels reach the file exactly; JPEG
    at the configured ``quality`` (``output.quality``); PNG is lossless whatever ``quality`` says. (A
    profile's output is encoded as its profile says: the channel chose that format and quality.)"""
    return 100 if fmt.lower() == "webp" else quality


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 95, xmp: str | None = None) -> bytes:
    """Encode ``HxWx3`` / ``HxWx4`` uint8 as png, jpeg or webp (lossless webp keeps product pixels exact).

    ``xmp``: an XMP packet to embed (PNG iTXt ``XML:com.adobe.xmp``, JPEG APP1, WebP ``XMP`` chunk).
    """
    image = Image.fromarray(np.ascontiguousarray(array))
    buffer = io.BytesIO()
    fmt = fmt.lower()
    if fmt == "png":
        info = None
        if xmp:
            info = PngImagePlugin.PngInfo()
            info.add_itxt("XML:com.adobe.xmp", xmp)
        image.save(buffer, format="PNG", compress_level=4, pnginfo=info)
    elif fmt in ("jpeg", "jpg"):
        extra = {"xmp": xmp.encode()} if xmp else {}
        image.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0, **extra)
    elif fmt == "webp":
        extra = {"xmp": xmp.encode()} if xmp else {}
        image.save(buffer, format="WEBP", lossless=quality >= 100, quality=quality, **extra)
    else:
        raise ValueError(f"unknown image format {fmt!r}: use png, jpeg or webp")
    return buffer.getvalue()


def rgb(array: np.ndarray) -> np.ndarray:
    """The colour channels of an RGB or RGBA array."""
    return array[..., :3] if array.ndim == 3 and array.shape[2] == 4 else array


def resize(array: np.ndarray, size: tuple[int, int], resample: int = Image.Resampling.LANCZOS) -> np.ndarray:
    """Resize ``HxW[xC]`` uint8 to ``(width, height)``."""
    if (array.shape[1], array.shape[0]) == tuple(size):
        return array
    return np.asarray(Image.fromarray(array).resize(size, resample=resample))
