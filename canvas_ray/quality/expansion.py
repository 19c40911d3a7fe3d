"""Object expansion: how far the generated image grew the product into the background.

Diffusion inpainting tends to redraw the product larger than it is (a second rim, a longer handle, a
shadow that reads as product). Following the metric of Yahoo's CVPRW 2024 paper, the generated image is
re-segmented and ``E = area(m_out ∪ m_in) − area(m_in)``; the guard compares ``E / area(m_in)`` with a
threshold. ``tolerance_px`` forgives the few pixels of edge jitter any segmenter has: pixels of ``m_out``
within that (Euclidean) distance of ``m_in`` do not count.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from canvas_ray.compose import HARD
from canvas_ray.config import CanvasConfig, SegmentConfig


@dataclass(frozen=True)
class Expansion:
    """``pixels`` = E, ``ratio`` = E / area(m_in) (both at the measured scale)."""

    pixels: int
    ratio: float
    product_pixels: int


def measure_expansion(product_in: np.ndarray, product_out: np.ndarray, tolerance_px: int = 0) -> Expansion:
    """E and E / area(in) for boolean masks of the same shape (``m_in`` = the product given to the model)."""
    if product_in.shape != product_out.shape:
        raise ValueError(f"mask shapes differ: {product_in.shape} vs {product_out.shape}")
    inside = product_in.astype(bool)
    area = int(inside.sum())
    if area == 0:
        raise ValueError("the input product mask is empty")
    grown = product_out.astype(bool) & ~inside
    if tolerance_px > 0:
        distance = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        grown &= distance > tolerance_px
    pixels = int(grown.sum())
    return Expansion(pixels, pixels / area, area)


def guard_segment_spec(config: CanvasConfig) -> SegmentConfig:
    """The segmenter for generated images: configured, else the segment stage's (alpha has no alpha here)."""
    spec = config.quality.expansion.segment or config.segment
    if spec.backend == "alpha":
        spec = spec.model_copy(update={"backend": "backdrop"})
    return spec


class ExpansionMeter:
    """Re-segments generated images (downscaled to ``max_side``) and measures expansion against m_in."""

    def __init__(self, config: CanvasConfig):
        from canvas_ray.stages.segment import build_segmenter

        self.spec = config.quality.expansion
        self.segment_spec = guard_segment_spec(config)
        self.segmenter = build_segmenter(self.segment_spec)
        self.max_side = self.spec.resolution

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

    def measure(self, generated: list[np.ndarray], canvas_masks: list[np.ndarray]) -> list[Expansion]:
        small = [self._small(image, mask) for image, mask in zip(generated, canvas_masks, strict=True)]
        outs = self.segmenter.product_masks([image for image, _, _ in small])
        threshold = self.segment_spec.threshold
        return [
            measure_expansion(inside, np.nan_to_num(soft) >= threshold, tolerance)
            for (_, inside, tolerance), soft in zip(small, outs, strict=True)
        ]
