"""Placing the product on a canvas, pasting it back over a generated background, and proving it untouched.

The product is never resampled in the default ``native`` scale: the canvas is sized around it for the
target aspect ratio, the model works on a downscaled copy, and the final composite copies the original
product pixels back through the hard mask. Feathering and shadows touch background pixels only.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image

HARD = 128  # product_mask values >= HARD are product


@dataclass(frozen=True)
class Placement:
    """Where the product crop sits: source crop box, canvas size, top-left offset, scale (1 = native)."""

    crop: tuple[int, int, int, int]  # x0, y0, x1, y1 in the source image
    canvas: tuple[int, int]  # width, height
    offset: tuple[int, int]  # x, y of the crop's top-left in the canvas
    scale: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Placement:
        data = json.loads(text)
        return cls(tuple(data["crop"]), tuple(data["canvas"]), tuple(data["offset"]), float(data["scale"]))


@dataclass(frozen=True)
class Verification:
    product_preserved: bool
    max_product_diff: int
    product_pixels: int


def product_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), exclusive ends, of every pixel with any product weight."""
    ys, xs = np.nonzero(mask > 0)
    if len(xs) == 0:
        raise ValueError("empty product mask")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def plan_placement(
    mask: np.ndarray,
    aspect: float,
    *,
    fill: float = 0.78,
    placement: str = "floor",
    floor_margin: float = 0.1,
    long_side: int | None = None,
) -> Placement:
    """The smallest canvas of the given aspect in which the product takes at most ``fill`` of each side."""
    x0, y0, x1, y1 = product_bbox(mask)
    w, h = x1 - x0, y1 - y0
    height = max(h / fill, w / (fill * aspect))
    width = aspect * height
    scale = 1.0
    if long_side is not None:
        scale = long_side / max(width, height)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    canvas_w = max(w, round(width * scale))
    canvas_h = max(h, round(height * scale))
    x = (canvas_w - w) // 2
    if placement == "floor":
        y = canvas_h - h - round(floor_margin * canvas_h)
        y = min(max(y, (canvas_h - h) // 2), canvas_h - h)
    else:
        y = (canvas_h - h) // 2
    return Placement((x0, y0, x1, y1), (canvas_w, canvas_h), (x, y), scale)


def place_product(
    image: np.ndarray, mask: np.ndarray, where: Placement, fill_color: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The canvas (RGB uint8) with the product crop at its place, and the canvas product mask (uint8)."""
    x0, y0, x1, y1 = where.crop
    crop = np.ascontiguousarray(image[y0:y1, x0:x1, :3])
    crop_mask = np.ascontiguousarray(mask[y0:y1, x0:x1])
    if where.scale != 1.0:
        size = (max(1, round(crop.shape[1] * where.scale)), max(1, round(crop.shape[0] * where.scale)))
        crop = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
        crop_mask = np.asarray(Image.fromarray(crop_mask).resize(size, Image.Resampling.BILINEAR))
    width, height = where.canvas
    fill_rgb: tuple[int, ...]
    if fill_color is None:
        outside = image[..., :3][mask < HARD]
        fill_rgb = tuple(int(v) for v in np.median(outside, axis=0)) if len(outside) else (127, 127, 127)
    else:
        fill_rgb = fill_color
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = np.array(fill_rgb, np.uint8)
    canvas_mask = np.zeros((height, width), np.uint8)
    x, y = where.offset
    canvas[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    canvas_mask[y : y + crop.shape[0], x : x + crop.shape[1]] = crop_mask
    return canvas, canvas_mask


def model_size(
    aspect_or_size: float | tuple[int, int], resolution: int, multiple: int = 8
) -> tuple[int, int]:
    """(width, height) with long side ``resolution``, both multiples of ``multiple``, for the model canvas."""
    aspect = aspect_or_size[0] / aspect_or_size[1] if isinstance(aspect_or_size, tuple) else aspect_or_size
    width: float
    height: float
    if aspect >= 1:
        width, height = resolution, resolution / aspect
    else:
        width, height = resolution * aspect, resolution
    return max(multiple, round(width / multiple) * multiple), max(
        multiple, round(height / multiple) * multiple
    )


def background_mask(canvas_mask: np.ndarray, keep_dilate_px: int = 0, keep_level: int = HARD) -> np.ndarray:
    """Inpainting mask (uint8, 255 = repaint): everything that is not product. White repaints, black keeps.
    ``keep_level``: the mask level kept (a matte keeps only its opaque core, :func:`canvas_ray.matte.
    keep_level`, so that every partial pixel gets a new background behind it)."""
    keep: np.ndarray = (canvas_mask >= keep_level).astype(np.uint8)
    if keep_dilate_px > 0:
        kernel = cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (2 * keep_dilate_px + 1, 2 * keep_dilate_px + 1)
        )
        keep = cv2.dilate(keep, kernel)
    return np.where(keep > 0, 0, 255).astype(np.uint8)


def contact_shadow(canvas_mask: np.ndarray, strength: float) -> np.ndarray:
    """Multiplicative shade (float32, 1 = no shade): a soft ellipse under the product plus a faint drop."""
    height, width = canvas_mask.shape
    shade: np.ndarray = np.zeros((height, width), np.float32)
    if strength <= 0:
        return np.ones_like(shade)
    hard = canvas_mask >= HARD
    ys, xs = np.nonzero(hard)
    if len(xs) == 0:
        return np.ones_like(shade)
    bottom, left, right = int(ys.max()), int(xs.min()), int(xs.max())
    product_w = right - left + 1
    centre = ((left + right) // 2, min(height - 1, bottom))
    axes = (max(2, int(product_w * 0.48)), max(2, int(product_w * 0.06)))
    cv2.ellipse(shade, centre, axes, 0, 0, 360, 1.0, -1)
    blur = max(3, int(product_w * 0.08)) | 1
    shade = cv2.GaussianBlur(shade, (blur, blur), 0)
    drop = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigmaX=max(2.0, product_w * 0.03))
    drop = np.roll(drop, max(1, int(product_w * 0.02)), axis=0)
    shade = np.clip(0.75 * shade + 0.25 * drop, 0, 1)
    return (1.0 - strength * 0.65 * shade).astype(np.float32)


def _blur_radius(sigma: float) -> int:
    """How far OpenCV's Gaussian of ``sigma`` (kernel size 0, float images) reaches: 4 sigma, rounded."""
    return (round(sigma * 8 + 1) | 1) // 2


def composite(
    canvas: np.ndarray,
    canvas_mask: np.ndarray,
    background: np.ndarray,
    *,
    feather_px: int = 2,
    shadow: float = 0.0,
) -> np.ndarray:
    """Background with shadow, blended through the soft edge, then the product pixels copied back exactly.

    Only a window around the product blends (its mask's box, grown by the feather's and the edge colour's
    blur reach): outside it the blend weight is exactly 0, so the result there is the shaded background,
    and inside it every blur sees what it would see over the whole canvas. The same bytes as blending the
    whole canvas, at the cost of the product's box instead of the canvas."""
    if background.shape[:2] != canvas.shape[:2]:
        raise ValueError(f"background is {background.shape[:2]}, canvas is {canvas.shape[:2]}")
    base = background[..., :3].astype(np.float32)
    if shadow > 0:
        base *= contact_shadow(canvas_mask, shadow)[..., None]
    result = np.clip(np.round(base), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(canvas_mask)
    if len(xs) == 0:
        return result
    sigma = max(1.0, feather_px)
    margin = (_blur_radius(feather_px / 2.0) if feather_px > 0 else 0) + _blur_radius(sigma) + 1
    height, width = canvas_mask.shape
    y0, y1 = max(0, int(ys.min()) - margin), min(height, int(ys.max()) + 1 + margin)
    x0, x1 = max(0, int(xs.min()) - margin), min(width, int(xs.max()) + 1 + margin)
    window = (slice(y0, y1), slice(x0, x1))
    mask, place, under = canvas_mask[window], canvas[window][..., :3], base[window]
    hard = mask >= HARD
    alpha = mask.astype(np.float32) / 255.0
    if feather_px > 0:
        feather = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigmaX=feather_px / 2.0) * 0.6
        alpha = np.maximum(alpha, feather)
    alpha[hard] = 1.0
    # Edge pixels outside the product take the colour of the nearest product pixels, never the photo's
    # old background: premultiplied blur of the product, normalised by the blurred mask.
    hard_f = hard.astype(np.float32)
    weight = cv2.GaussianBlur(hard_f, (0, 0), sigmaX=sigma)
    bleed = cv2.GaussianBlur(place.astype(np.float32) * hard_f[..., None], (0, 0), sigmaX=sigma)
    edge = bleed / np.maximum(weight, 1e-6)[..., None]
    edge[weight < 1e-3] = under[weight < 1e-3]
    foreground = np.where(hard[..., None], place.astype(np.float32), edge)
    out = alpha[..., None] * foreground + (1.0 - alpha[..., None]) * under
    blended = np.clip(np.round(out), 0, 255).astype(np.uint8)
    blended[hard] = place[hard]  # the product, bit for bit
    result[window] = blended
    return result


def verify_product_preserved(result: np.ndarray, canvas: np.ndarray, canvas_mask: np.ndarray) -> Verification:
    """Compare every product pixel of the result with the placed product; record the largest difference."""
    hard = canvas_mask >= HARD
    count = int(hard.sum())
    if result.shape[:2] != canvas.shape[:2] or count == 0:
        return Verification(False, 255, count)
    diff = np.abs(result[..., :3][hard].astype(np.int16) - canvas[..., :3][hard].astype(np.int16))
    max_diff = int(diff.max()) if diff.size else 0
    return Verification(max_diff == 0, max_diff, count)


def verify_against_source(
    result: np.ndarray, source: np.ndarray, source_mask: np.ndarray, where: Placement
) -> Verification:
    """Native placements only: the result's product pixels equal the source photo's, at the placed offset."""
    if where.scale != 1.0:
        raise ValueError("source verification needs a native-scale placement")
    x0, y0, x1, y1 = where.crop
    x, y = where.offset
    window = result[y : y + (y1 - y0), x : x + (x1 - x0)]
    return verify_product_preserved(window, source[y0:y1, x0:x1, :3], source_mask[y0:y1, x0:x1])


def aspect_slug(aspect: str) -> str:
    return aspect.replace(":", "x").replace("/", "x").replace(" ", "")


def clamp01(value: float) -> float:
    return 0.0 if math.isnan(value) else min(1.0, max(0.0, value))
