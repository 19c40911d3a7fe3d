"""Weight-free studio backdrops: solid, gradient and floor/wall sweep, with light falloff and textures.

Used by the ``studio`` inpaint backend and as the palette path of reference-image styles. Deterministic
for a given seed; the seed varies lighting position, tint and texture so variants differ.
"""

from __future__ import annotations

import colorsys
from typing import Any

import cv2
import numpy as np
from PIL import Image

from canvas_ray.styles import Backdrop, hex_to_rgb

# A reference image only lends its colours: tints are kept muted (no neon walls) and in a lit range.
MAX_WALL_SATURATION = 0.38
MAX_FLOOR_SATURATION = 0.5
WALL_VALUE = (0.78, 0.96)
FLOOR_VALUE = (0.35, 0.8)
MIN_SHARE = 0.08  # colours covering less of the reference (text, small details) do not count


def _lerp_colours(colours: list[np.ndarray], t: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour ramp over t in [0, 1] (any shape) → shape + (3,)."""
    if len(colours) == 1:
        return np.broadcast_to(colours[0], (*t.shape, 3)).astype(np.float32)
    stops = np.linspace(0.0, 1.0, len(colours))
    out = np.empty((*t.shape, 3), np.float32)
    for channel in range(3):
        out[..., channel] = np.interp(t, stops, [c[channel] for c in colours])
    return out


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    small = rng.standard_normal((max(2, int(height / scale)), max(2, int(width / scale)))).astype(np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return big / (np.abs(big).max() + 1e-6)


def _texture(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Zero-mean brightness modulation (float32 HxW, roughly in [-1, 1])."""
    if kind == "noise":
        return (
            rng.standard_normal((height, width)).astype(np.float32) * 0.35
            + _smooth_noise(rng, height, width, 24) * 0.4
        )
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "marble":
        turbulence = _smooth_noise(rng, height, width, 40) * 6 + _smooth_noise(rng, height, width, 12) * 2
        angle = rng.uniform(0.3, 1.2)
        veins = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / max(width, height) * 14 + turbulence)
        return -np.power(np.abs(veins), 0.15) + 0.85
    if kind == "wood":
        warp = _smooth_noise(rng, height, width, 60) * 10
        grain = np.sin(yy / max(2.0, height / 90) + warp) * 0.6 + _smooth_noise(rng, height, width, 6) * 0.2
        planks = (np.floor(yy / max(8.0, height / 6)) % 2) * 0.25
        return grain + planks - 0.12
    if kind == "linen":
        weave = np.sin(xx * 1.9) * np.sin(yy * 1.9)
        return weave * 0.5 + rng.standard_normal((height, width)).astype(np.float32) * 0.25
    return np.zeros((height, width), np.float32)


def _light(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xx / max(1, width - 1), yy / max(1, height - 1)
    jitter = rng.uniform(-0.1, 0.1)
    if kind == "left":
        gain = 1.08 - 0.22 * np.clip(u + jitter, 0, 1)
    elif kind == "right":
        gain = 0.86 + 0.22 * np.clip(u + jitter, 0, 1)
    elif kind == "center":
        gain = 1.06 - 0.28 * np.sqrt((u - 0.5 - jitter) ** 2 + (v - 0.45) ** 2)
    else:  # top: a soft key light above, centred with a little jitter
        gain = 1.06 - 0.16 * v - 0.12 * np.abs(u - 0.5 - jitter)
    return gain.astype(np.float32)


def render_backdrop(
    backdrop: Backdrop, size: tuple[int, int], seed: int, horizon: float | None = None
) -> np.ndarray:
    """An ``HxWx3`` uint8 backdrop of ``size=(width, height)``; ``horizon`` is the wall/floor line (0..1)."""
    width, height = size
    rng = np.random.default_rng(seed & 0xFFFFFFFF)
    colours = [np.array(hex_to_rgb(c), np.float32) for c in backdrop.colors]
    tint = 1.0 + rng.uniform(-0.025, 0.025, 3).astype(np.float32)
    v = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None] * np.ones((1, width), np.float32)
    if backdrop.kind == "solid":
        image = _lerp_colours(colours[:1], v)
    elif backdrop.kind == "gradient":
        image = _lerp_colours(colours, v)
    else:
        line = 0.62 if horizon is None else float(np.clip(horizon, 0.3, 0.85))
        wall_colours = colours[:2] if len(colours) > 1 else colours
        wall = _lerp_colours(wall_colours, np.clip(v / line, 0, 1))
        floor_rgb = np.array(hex_to_rgb(backdrop.floor), np.float32) if backdrop.floor else colours[-1] * 0.94
        floor = _lerp_colours([floor_rgb * 1.03, floor_rgb * 0.9], np.clip((v - line) / (1 - line), 0, 1))
        blend = 1.0 / (1.0 + np.exp(-(v - line) / 0.035))
        image = wall * (1 - blend[..., None]) + floor * blend[..., None]
    image = image * tint * _light(backdrop.light, rng, height, width)[..., None]
    if backdrop.texture != "none":
        strength = {"noise": 6.0, "marble": 22.0, "wood": 18.0, "linen": 7.0}[backdrop.texture]
        image = image + strength * _texture(backdrop.texture, rng, height, width)[..., None]
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def dominant_colours(image: np.ndarray, count: int = 6) -> list[tuple[np.ndarray, float]]:
    """The main colours of an ``HxWx3[+1]`` uint8 image with their shares, largest share first.

    Median cut (PIL ``quantize``) on a copy at most 64 px on its long side: deterministic and fast.
    """
    thumb = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    thumb.thumbnail((64, 64), Image.Resampling.BILINEAR)
    quantized = thumb.quantize(colors=count, method=Image.Quantize.MEDIANCUT)
    palette = np.asarray(quantized.getpalette() or [], np.float32)[: 3 * count].reshape(-1, 3)
    counts: list[tuple[int, Any]] = quantized.getcolors() or []  # (count, palette index) in P mode
    total = float(sum(n for n, _ in counts)) or 1.0
    ranked = sorted(counts, key=lambda item: (-item[0], item[1]))
    return [(palette[int(index)], n / total) for n, index in ranked]


def _luminance(rgb: np.ndarray) -> float:
    return float(0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2])


def _tame(rgb: np.ndarray, max_saturation: float, value: tuple[float, float], gain: float = 1.0) -> str:
    """``rgb`` with its hue kept, saturation capped and brightness (HSV value) clamped, as ``#rrggbb``."""
    hue, saturation, bright = colorsys.rgb_to_hsv(*(np.clip(rgb, 0, 255) / 255.0))
    saturation = min(saturation, max_saturation)
    bright = float(np.clip(bright * gain, *value))
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, bright)
    return "#{:02x}{:02x}{:02x}".format(*(round(c * 255) for c in (red, green, blue)))


def palette_from_reference(image: np.ndarray, base: Backdrop | None = None) -> Backdrop:
    """A backdrop in the colours of a reference image (a brand's style image).

    The wall is a light tint of the reference's dominant colour (its hue, saturation capped at
    ``MAX_WALL_SATURATION``), the lower wall a little deeper, and the floor the darkest colour that covers
    at least ``MIN_SHARE`` of the reference (the dominant one when none is darker), muted and kept darker
    than the wall. Kind, texture, light and shadow come from ``base`` (the requested style's recipe), so a
    text style plus a reference gives, say, marble in the brand's colours.
    """
    base = base or Backdrop()
    colours = dominant_colours(image)
    significant = [rgb for rgb, share in colours if share >= MIN_SHARE] or [colours[0][0]]
    dominant = significant[0]
    darkest = min(significant, key=_luminance)
    floor_source = darkest if _luminance(darkest) < _luminance(dominant) - 8 else dominant
    wall = _tame(dominant, MAX_WALL_SATURATION, WALL_VALUE)
    lower = _tame(dominant, MAX_WALL_SATURATION, (WALL_VALUE[0] - 0.08, WALL_VALUE[1] - 0.06), gain=0.92)
    floor = _tame(floor_source, MAX_FLOOR_SATURATION, FLOOR_VALUE)
    if _luminance(np.array(hex_to_rgb(floor), np.float32)) > 0.9 * _luminance(np.array(hex_to_rgb(lower))):
        floor = _tame(floor_source, MAX_FLOOR_SATURATION, FLOOR_VALUE, gain=0.8)
    if base.kind == "solid":
        return base.model_copy(update={"colors": [wall], "floor": None})
    if base.kind == "gradient":
        return base.model_copy(update={"colors": [wall, lower], "floor": None})
    return base.model_copy(update={"colors": [wall, lower], "floor": floor})
