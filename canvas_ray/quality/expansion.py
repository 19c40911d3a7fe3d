"""Object expansion: how far the generated image grew the product into the background.

Diffusion inpainting tends to redraw the product larger than it is (a second rim, a longer handle, a
shadow that reads as product). Following the metric of Yahoo's CVPRW 2024 paper, the generated image is
re-segmented and ``E = area(m_out ∪ m_in) − area(m_in)``; the guard compares ``E / area(m_in)`` with a
threshold. ``tolerance_px`` forgives the few pixels of edge jitter any segmenter has: pixels of ``m_out``
within that (Euclidean) distance of ``m_in`` do not count.

Holes and gaps are not growth. A segmenter may fill a ring's hole, a pair of glasses' lenses or the gap
under a handle whatever the background; counting those pixels rejected right products (a ring at mask IoU
0.99 "grew by 136%"). So the meter also segments a *control*: the known product (``m_in``) on a plain fill
of the generated background's own colour. What the segmenter calls product there, outside ``m_in``, is its
reading of this product, not something the generator drew, and is subtracted:
``E = area(m_out − m_in − m_control)``. Growth is also counted only outside the product's convex hull:
inside it (holes, the gap between two earrings, the arch of headphones) segmenters disagree with each other
far more than generators grow products, and the weight-free segmenter fills such regions on busy
backgrounds whatever was drawn there. :class:`Expansion` keeps the grown pixels' bounding box so a
rejected output can say where the product grew, and the grown pixels themselves: :func:`expansion_overlay`
draws them in red over the generated image, for the review page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from canvas_ray.compose import HARD
from canvas_ray.config import CanvasConfig, SegmentConfig


class Segmenter(Protocol):
    """What the meter needs of a segmentation backend (a :class:`canvas_ray.stages.segment.Segmenter`)."""

    def product_masks(self, images: list[np.ndarray]) -> list[np.ndarray]: ...


# Builds a segmenter from its spec: :func:`canvas_ray.stages.segment.build_segmenter`, passed in by the
# caller (the Inpaint stage), so that quality never imports the stages above it.
SegmenterFactory = Callable[[SegmentConfig], Segmenter]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)


@dataclass(frozen=True)
class Expansion:
    """``pixels`` = E, ``ratio`` = E / area(m_in) (both at the measured scale); ``box``: where the grown
    pixels lie, in the pixels of the image given to the meter (None when nothing grew); ``grown``: those
    pixels (bool, at the measured scale; None when not kept)."""

    pixels: int
    ratio: float
    product_pixels: int
    box: Box | None = None
    grown: np.ndarray | None = field(default=None, repr=False, compare=False)

    def where(self) -> str:
        """The grown region in words, for a rejection message."""
        if self.box is None:
            return "nothing grew"
        x0, y0, x1, y1 = self.box
        return f"{self.ratio:.0%} of its area, in the box x {x0}-{x1}, y {y0}-{y1} of the canvas"


def measure_expansion(
    product_in: np.ndarray,
    product_out: np.ndarray,
    tolerance_px: int = 0,
    control: np.ndarray | None = None,
    hull: bool = False,
) -> Expansion:
    """E and E / area(in) for boolean masks of the same shape (``m_in`` = the product given to the model).

    Args:
        control (np.ndarray | None, default None): the segmenter's mask of the known product alone (on a
            plain fill); pixels it calls product are the segmenter's reading of the product (holes, gaps),
            not growth.
        hull (bool, default False): only count pixels outside the product's convex hull, in regions at
            least 3 px thick: holes, the gaps between a product's parts and its concavities are where
            segmenters disagree most (and thin traced lines are segmenter artefacts), while a generator
            grows a product outward.
    """
    if product_in.shape != product_out.shape:
        raise ValueError(f"mask shapes differ: {product_in.shape} vs {product_out.shape}")
    inside = product_in.astype(bool)
    area = int(inside.sum())
    if area == 0:
        raise ValueError("the input product mask is empty")
    grown = product_out.astype(bool) & ~inside
    if hull:
        grown &= ~convex_hull(inside)
    if control is not None:
        if control.shape != inside.shape:
            raise ValueError(f"control mask shape {control.shape} differs from {inside.shape}")
        grown &= ~control.astype(bool)
    if tolerance_px > 0:
        distance = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        grown &= distance > tolerance_px
    if hull:  # and lines 1-2 px thin (a horizon, a seam the segmenter traced): no product grows that way
        grown = cv2.morphologyEx(grown.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    pixels = int(grown.sum())
    return Expansion(pixels, pixels / area, area, grown_box(grown), grown)


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """The convex hull of a boolean mask's pixels (filled), as a boolean mask."""
    points = cv2.findNonZero(mask.astype(np.uint8))
    out = np.zeros(mask.shape, np.uint8)
    if points is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(points), 1)
    return out.astype(bool) | mask


GROWN_RED = np.array([255, 0, 0], np.float32)
GROWN_TINT = 0.7  # share of red in a grown pixel of the overlay


def expansion_overlay(generated: np.ndarray, expansion: Expansion) -> np.ndarray | None:
    """The generated image (RGB, canvas size) with the grown pixels tinted red and the rest dimmed to a
    third of its contrast, so that a reviewer sees where the product grew; None when nothing grew or the
    grown pixels were not kept. The grown mask is scaled to the image with nearest-neighbour sampling."""
    if expansion.grown is None or not expansion.grown.any():
        return None
    rgb = np.asarray(generated)[..., :3].astype(np.float32)
    height, width = rgb.shape[:2]
    grown = expansion.grown.astype(bool)
    if grown.shape != (height, width):
        small = grown.astype(np.uint8)
        grown = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    dimmed = 255 - (255 - rgb) / 3  # washed out towards white: the red stands out on any background
    tinted = (1 - GROWN_TINT) * rgb + GROWN_TINT * GROWN_RED
    return np.round(np.where(grown[..., None], tinted, dimmed)).astype(np.uint8)


def grown_box(grown: np.ndarray) -> Box | None:
    ys, xs = np.nonzero(grown)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def control_image(generated: np.ndarray, product: np.ndarray, canvas: np.ndarray) -> np.ndarray:
    """The known product (``canvas`` through the boolean mask ``product``) on a plain fill: the median colour
    of the generated image outside the product. (A blurred copy of the generated background would keep the
    wall/floor layout, but it also keeps a large grown part, and the control would then excuse it.)"""
    outside = generated[..., :3][~product]
    fill = np.median(outside, axis=0) if outside.size else np.full(3, 255.0)
    plain = np.empty_like(canvas[..., :3])
    plain[:] = np.round(fill).astype(canvas.dtype)
    return np.where(product[..., None], canvas[..., :3], plain)


def guard_segment_spec(config: CanvasConfig) -> SegmentConfig:
    """The segmenter for generated images: configured, else the segment stage's (alpha has no alpha here)."""
    spec = config.quality.expansion.segment or config.segment
    if spec.backend == "alpha":
        spec = spec.model_copy(update={"backend": "backdrop"})
    return spec


class ExpansionMeter:
    """Re-segments generated images (downscaled to ``max_side``) and measures expansion against m_in, less
    what the segmenter reads into the known product alone (the control). The segmenter is built on first
    use by ``build_segmenter`` (given by the caller, e.g. :func:`canvas_ray.stages.segment.build_segmenter`),
    so a pipeline whose generator cannot grow the product never loads it.

    Args:
        config (CanvasConfig): ``quality.expansion`` and the segmenter spec (:func:`guard_segment_spec`).
        build_segmenter (SegmenterFactory): builds the segmenter from that spec, on first use.
    """

    def __init__(self, config: CanvasConfig, build_segmenter: SegmenterFactory):
        self.spec = config.quality.expansion
        self.segment_spec = guard_segment_spec(config)
        self.build_segmenter = build_segmenter
        self._segmenter: Segmenter | None = None
        self.max_side = self.spec.resolution

    @property
    def segmenter(self) -> Segmenter:
        if self._segmenter is None:
            self._segmenter = self.build_segmenter(self.segment_spec)
        return self._segmenter

    def _small(self, image: np.ndarray, canvas_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """The image and m_in at most ``max_side`` long, and the tolerance in pixels at that scale."""
        height, width = canvas_mask.shape
        scale = min(1.0, self.max_side / max(height, width))
        tolerance = self.spec.tolerance_px
        if scale >= 1.0:
            return image, canvas_mask >= HARD, tolerance
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        mask = np.asarray(Image.fromarray(canvas_mask).resize(size, Image.Resampling.BILINEAR)) >= HARD
        return small, mask, max(1 if tolerance else 0, round(tolerance * scale))

    def measure(
        self,
        generated: list[np.ndarray],
        canvas_masks: list[np.ndarray],
        canvases: list[np.ndarray] | None = None,
    ) -> list[Expansion]:
        """Expansion per generated image; with ``canvases`` (the product images given to the generator)
        each is measured against its control. Boxes come back in canvas pixels."""
        small = [self._small(image, mask) for image, mask in zip(generated, canvas_masks, strict=True)]
        images = [image for image, _, _ in small]
        controls: list[np.ndarray | None] = [None] * len(small)
        if canvases is not None:
            plain = [
                control_image(image, inside, self._small(canvas, mask)[0])
                for (image, inside, _), canvas, mask in zip(small, canvases, canvas_masks, strict=True)
            ]
            images += plain
        outs = self.segmenter.product_masks(images)
        threshold = self.segment_spec.threshold
        if canvases is not None:
            controls = [np.nan_to_num(soft) >= threshold for soft in outs[len(small) :]]
        results = []
        for (image, inside, tolerance), soft, control, mask in zip(
            small, outs[: len(small)], controls, canvas_masks, strict=True
        ):
            found = measure_expansion(
                inside, np.nan_to_num(soft) >= threshold, tolerance, control, hull=control is not None
            )
            results.append(_in_canvas_pixels(found, image.shape[1] / mask.shape[1]))
        return results


def _in_canvas_pixels(expansion: Expansion, scale: float) -> Expansion:
    if expansion.box is None or scale >= 1.0:
        return expansion
    x0, y0, x1, y1 = (round(v / scale) for v in expansion.box)
    return replace(expansion, box=(x0, y0, x1, y1))
