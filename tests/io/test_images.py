"""Decoding with limits and mode normalisation; encoding round trips."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from canvas_ray.io.images import ImageError, decode_image, encode_image, resize, rgb


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _rgb_array(h: int = 37, w: int = 53, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth_rgb(h: int = 48, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 128)], axis=-1).astype(
        np.uint8
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _huge_bilevel_png(side: int, rows: int | None = None) -> bytes:
    """A 1-bit grey PNG of side x side, all black: tiny on disk, huge in pixels.

    ``rows``: pixel data for only that many rows.
    """
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    raw = zlib.compress(row * (side if rows is None else rows), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")
    )


# --- RGB formats ----------------------------------------------------------------------------------------


def test_png_rgb_exact():
    array = _rgb_array()
    out = decode_image(_save(Image.fromarray(array), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (37, 53, 3)
    np.testing.assert_array_equal(out, array)


def test_webp_lossless_rgb_exact():
    array = _rgb_array()
    out = decode_image(_save(Image.fromarray(array), "WEBP", lossless=True))
    assert out.shape == (37, 53, 3)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize(("fmt", "kwargs"), [("JPEG", {"quality": 95}), ("WEBP", {"quality": 95})])
def test_lossy_rgb_close(fmt, kwargs):
    array = _smooth_rgb()
    out = decode_image(_save(Image.fromarray(array), fmt, **kwargs))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - array.astype(int)).mean() < 4


# --- alpha and other modes ------------------------------------------------------------------------------


def test_rgba_with_transparency_keeps_alpha():
    array = np.dstack([_rgb_array(), np.full((37, 53), 255, np.uint8)])
    array[:10, :10, 3] = 0
    array[20, 20, 3] = 100
    out = decode_image(_save(Image.fromarray(array, "RGBA"), "PNG"))
    assert out.shape == (37, 53, 4)
    np.testing.assert_array_equal(out, array)


def test_opaque_rgba_becomes_rgb():
    colour = _rgb_array()
    array = np.dstack([colour, np.full((37, 53), 255, np.uint8)])
    out = decode_image(_save(Image.fromarray(array, "RGBA"), "PNG"))
    assert out.shape == (37, 53, 3)
    np.testing.assert_array_equal(out, colour)


def test_palette_with_transparency_gives_rgba():
    index = np.zeros((20, 30), np.uint8)
    index[:, 15:] = 1
    image = Image.fromarray(index, "P")
    image.putpalette([0, 0, 0, 200, 30, 40] + [0] * (254 * 3))
    out = decode_image(_save(image, "PNG", transparency=0))
    assert out.shape == (20, 30, 4)
    assert (out[:, :15, 3] == 0).all()
    assert (out[:, 15:, 3] == 255).all()
    np.testing.assert_array_equal(out[:, 15:, :3], np.broadcast_to([200, 30, 40], (20, 15, 3)))


def test_palette_without_transparency_gives_rgb():
    index = np.zeros((20, 30), np.uint8)
    index[5:, :] = 1
    image = Image.fromarray(index, "P")
    image.putpalette([10, 20, 30, 200, 30, 40] + [0] * (254 * 3))
    out = decode_image(_save(image, "PNG"))
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[10, 10], [200, 30, 40])


def test_grey_l_becomes_three_equal_channels():
    grey = np.arange(20 * 30, dtype=np.uint32).reshape(20, 30).astype(np.uint8)
    out = decode_image(_save(Image.fromarray(grey, "L"), "PNG"))
    assert out.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


def test_la_with_transparency_and_opaque():
    grey = np.full((20, 30), 90, np.uint8)
    alpha = np.full((20, 30), 255, np.uint8)
    opaque = decode_image(_save(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG"))
    assert opaque.shape == (20, 30, 3)
    assert (opaque == 90).all()
    alpha[:5] = 0
    out = decode_image(_save(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG"))
    assert out.shape == (20, 30, 4)
    assert (out[:5, :, 3] == 0).all() and (out[5:, :, 3] == 255).all()
    assert (out[5:, :, :3] == 90).all()


def test_one_bit_image():
    bits = np.zeros((20, 32), bool)
    bits[:, 16:] = True
    out = decode_image(_save(Image.fromarray(bits).convert("1"), "PNG"))
    assert out.shape == (20, 32, 3) and out.dtype == np.uint8
    assert (out[:, :16] == 0).all()
    assert (out[:, 16:] == 255).all()


def test_cmyk_jpeg():
    cmyk = np.zeros((32, 64, 4), np.uint8)
    cmyk[:, 32:, 0] = 255  # right half: full cyan, left half: no ink = white
    out = decode_image(_save(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100))
    assert out.shape == (32, 64, 3) and out.dtype == np.uint8
    assert np.abs(out[4:28, 4:28].astype(int) - 255).max() < 12  # white
    cyan = out[4:28, 36:60].astype(int)
    assert cyan[..., 0].max() < 12
    assert cyan[..., 1:].min() > 243


def test_sixteen_bit_png_scales_by_257():
    lo, step = 1000, 100
    values = lo + step * np.arange(256, dtype=np.int64)  # lo .. lo + 255*step
    array = np.tile(values, (16, 1)).astype(np.uint16)
    data = _save(Image.fromarray(array), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data)
    assert out.shape == (16, 256, 3) and out.dtype == np.uint8
    # a fixed 65535 -> 255 scale (not a per-image stretch, which would turn flat images black)
    expected = np.tile(np.round(values / 257.0).astype(np.uint8), (16, 1))
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], expected)


def test_float_tiff_mode_f():
    array = np.zeros((20, 30), np.float32)
    array[:, 10:20] = 0.5
    array[:, 20:] = 1.0
    image = Image.fromarray(array, "F")
    data = _save(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = decode_image(data)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert (out[:, :10] == 0).all()
    assert (out[:, 10:20] == 128).all()  # 0.5 * 255 = 127.5 rounds to even 128
    assert (out[:, 20:] == 255).all()


def test_exif_orientation_is_applied():
    array = np.zeros((20, 40, 3), np.uint8)  # H=20, W=40
    array[:, :20] = (230, 20, 20)  # left half red
    array[:, 20:] = (20, 20, 230)  # right half blue
    image = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(_save(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)
    # a clockwise quarter turn puts the left column on top
    top, bottom = out[4:16].astype(int), out[24:36].astype(int)
    assert top[..., 0].mean() > 180 and top[..., 2].mean() < 70
    assert bottom[..., 2].mean() > 180 and bottom[..., 0].mean() < 70


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (24, 24), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 3
    out = decode_image(buffer.getvalue())
    assert out.shape == (24, 24, 3)
    assert (out == np.array([255, 0, 0], np.uint8)).all()


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", None])
def test_empty(data):
    with pytest.raises(ImageError, match="empty"):
        decode_image(data)


def test_random_bytes_not_an_image():
    data = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not an image"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    data = _save(Image.fromarray(_rgb_array(128, 128)), fmt)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2])


def test_over_max_bytes():
    data = _save(Image.fromarray(_rgb_array(64, 64)), "PNG")
    with pytest.raises(ImageError, match="limit"):
        decode_image(data, max_bytes=len(data) - 1)
    assert decode_image(data, max_bytes=len(data)).shape == (64, 64, 3)


def test_over_max_pixels_refused_before_decoding(monkeypatch):
    data = _huge_bilevel_png(12000)
    assert len(data) < 200_000  # small file, 144 MP of pixels
    loads = []
    original = ImageFile.ImageFile.load

    def spy(self, *args, **kwargs):
        loads.append(self.size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(ImageError, match="12000x12000") as info:
        decode_image(data, max_pixels=1_000_000)
    assert "limit" in str(info.value)
    assert loads == []  # pixel data never decoded
    small = _save(Image.fromarray(_rgb_array(32, 32)), "PNG")
    loads.clear()
    decode_image(small)
    assert (32, 32) in loads  # the spy does see real decodes


def test_header_only_huge_png_is_refused_by_pixel_limit_not_decoding():
    # Header claims 20000x20000 but the pixel data stops early: with a pixel limit the size is refused
    # before any decoding; without it, decoding finds the truncation.
    data = _huge_bilevel_png(20000, rows=4000)[:200]  # cut inside the pixel data chunk
    with pytest.raises(ImageError, match="20000x20000"):
        decode_image(data, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data, max_pixels=10**9)


def test_under_min_side():
    data = _save(Image.fromarray(_rgb_array(10, 40)), "PNG")
    with pytest.raises(ImageError, match="at least 16"):
        decode_image(data, min_side=16)
    assert decode_image(data, min_side=10).shape == (10, 40, 3)


# --- encoding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 4])
def test_encode_png_round_trip_exact(channels):
    array = np.random.default_rng(1).integers(0, 256, (31, 47, channels), dtype=np.uint8)
    if channels == 4:
        array[0, 0, 3] = 0  # keep real transparency so decode keeps 4 channels
    data = encode_image(array, "png")
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(decode_image(data), array)


def test_encode_lossless_webp_round_trip_exact():
    array = _rgb_array(31, 47, seed=2)
    data = encode_image(array, "webp", quality=100)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    np.testing.assert_array_equal(decode_image(data), array)


def test_encode_jpeg():
    array = _smooth_rgb()
    data = encode_image(array, "jpeg", quality=95)
    assert data[:2] == b"\xff\xd8"
    out = decode_image(data)
    assert out.shape == array.shape
    assert np.abs(out.astype(int) - array.astype(int)).mean() < 4


@pytest.mark.parametrize("fmt", ["bmp", "gif", ""])
def test_encode_unknown_format(fmt):
    with pytest.raises(ValueError, match="unknown image format"):
        encode_image(_rgb_array(), fmt)


def test_rgb_and_resize_helpers():
    rgba = np.zeros((4, 5, 4), np.uint8)
    assert rgb(rgba).shape == (4, 5, 3)
    assert rgb(rgba[..., :3]).shape == (4, 5, 3)
    array = _rgb_array(20, 30)
    assert resize(array, (30, 20)) is array
    assert resize(array, (15, 10)).shape == (10, 15, 3)
