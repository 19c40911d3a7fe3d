"""Candidate scoring: which of k generated backgrounds to keep.

Weight-free checks, all in [0, 1], run on the final composite (what the shopper sees):

- ``seam_energy`` (lower is better): mean luminance gradient in a thin band just outside the product,
  beyond the feathered edge. A clean background is smooth there; a halo, a pasted-looking rim or a
  texture that collides with the outline is not.
- ``color_harmony``: the product stands out from what surrounds it (CIE Lab ΔE), product and background
  hues sit in a pleasant relation (analogous or complementary rather than a 60–100° clash; neutrals go
  with anything), and the background is no louder (chroma) than the product: the product is the star.
- ``exposure``: the image is neither murky nor blown out (mean lightness and share of clipped pixels).

With ``quality.scoring.clip_model`` set, ``clip_score`` = max(0, cos(image, prompt)) from a CLIP model
(the usual CLIPScore / 100). ``quality_score`` is the weighted mean of the available figures, with
``1 - seam_energy`` standing in for the seam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from canvas_ray.compose import HARD
from canvas_ray.config import ScoringConfig

SEAM_FULL_SCALE = 48.0  # mean gradient (grey levels per pixel) that counts as seam energy 1
CLIPPED_ALLOWED = 0.2  # share of clipped pixels tolerated (studio-white sweeps are bright on purpose)


@dataclass(frozen=True)
class Scores:
    seam_energy: float
    color_harmony: float
    exposure: float
    clip_score: float | None = None

    def total(self, weights: dict[str, float]) -> float:
        parts = {
            "seam": 1.0 - self.seam_energy,
            "harmony": self.color_harmony,
            "exposure": self.exposure,
            "clip": self.clip_score,
        }
        used = {k: v for k, v in parts.items() if v is not None and weights.get(k, 0.0) > 0}
        total_weight = sum(weights[k] for k in used)
        if total_weight == 0:
            return 0.0
        return float(sum(weights[k] * v for k, v in used.items() if v is not None) / total_weight)


def _luminance(image: np.ndarray) -> np.ndarray:
    rgb = image[..., :3].astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def distance_to_product(canvas_mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of every pixel to the nearest product pixel; 0 on the product."""
    outside = (canvas_mask < HARD).astype(np.uint8)
    return cv2.distanceTransform(outside, cv2.DIST_L2, 5)


def seam_energy(
    image: np.ndarray,
    canvas_mask: np.ndarray,
    feather_px: int = 2,
    band_px: int = 4,
    distance: np.ndarray | None = None,
) -> float:
    """Mean gradient magnitude in the band (feather_px + 1 .. + band_px) outside the product, in [0, 1]."""
    distance = distance_to_product(canvas_mask) if distance is None else distance
    band = (distance > feather_px + 1) & (distance <= feather_px + 1 + band_px)
    if not band.any():
        return 0.0
    luma = _luminance(image)
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    magnitude = np.sqrt(gx * gx + gy * gy)
    return float(min(1.0, magnitude[band].mean() / SEAM_FULL_SCALE))


def _lab(pixels: np.ndarray) -> np.ndarray:
    """Nx3 uint8 RGB → Nx3 float Lab (L 0..100, a/b signed)."""
    lab = cv2.cvtColor(pixels.reshape(-1, 1, 3).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return lab.reshape(-1, 3)


def _hue_pleasantness(degrees: float) -> float:
    """1 analogous (≤ 30°), 0.9 complementary (150–210°), 0.7 triadic (~120°), ~0.3 for clashes."""
    d = abs((degrees + 180.0) % 360.0 - 180.0)
    anchors = [(0, 1.0), (30, 1.0), (60, 0.35), (90, 0.3), (120, 0.7), (150, 0.9), (180, 0.9)]
    for (d0, v0), (d1, v1) in zip(anchors, anchors[1:], strict=False):
        if d <= d1:
            return v0 + (v1 - v0) * (d - d0) / (d1 - d0)
    return 0.9


def color_harmony(
    image: np.ndarray, canvas_mask: np.ndarray, ring_px: int = 24, distance: np.ndarray | None = None
) -> float:
    distance = distance_to_product(canvas_mask) if distance is None else distance
    hard = distance == 0
    near = (distance > 3) & (distance <= ring_px)
    background = distance > 3
    if not hard.any() or not near.any() or not background.any():
        return 0.0
    rgb = image[..., :3]
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 65536)))  # colour statistics on ≤ ~64k pixels
    product = _lab(rgb[::step, ::step][hard[::step, ::step]] if hard[::step, ::step].any() else rgb[hard])
    surround = _lab(rgb[near])
    scene = _lab(rgb[::step, ::step][background[::step, ::step]])
    p_mean, s_mean = product.mean(axis=0), surround.mean(axis=0)
    separation = min(1.0, float(np.linalg.norm(p_mean - s_mean)) / 25.0)
    p_chroma = float(np.hypot(product[:, 1], product[:, 2]).mean())
    b_chroma = float(np.hypot(scene[:, 1], scene[:, 2]).mean())
    if p_chroma > 15 and b_chroma > 15:
        hue_p = math.degrees(math.atan2(float(product[:, 2].mean()), float(product[:, 1].mean())))
        hue_b = math.degrees(math.atan2(float(scene[:, 2].mean()), float(scene[:, 1].mean())))
        hue = _hue_pleasantness(hue_p - hue_b)
    else:
        hue = 1.0  # a neutral on either side goes with anything
    restraint = 1.0 - min(1.0, max(0.0, b_chroma - p_chroma - 10.0) / 40.0)
    return float(0.4 * separation + 0.4 * hue + 0.2 * restraint)


def exposure(image: np.ndarray) -> float:
    """1 for a mean lightness in 0.12–0.94 with few clipped pixels; falls towards black or blown-out."""
    rgb = image[..., :3]
    mean = float(_luminance(image).mean()) / 255.0
    if mean < 0.12:
        level = mean / 0.12
    elif mean > 0.94:
        level = max(0.0, (1.0 - mean) / 0.06)
    else:
        level = 1.0
    clipped = float(((rgb >= 254).all(axis=-1) | (rgb <= 1).all(axis=-1)).mean())
    clip_term = 1.0 - max(0.0, clipped - CLIPPED_ALLOWED) / (1.0 - CLIPPED_ALLOWED)
    return float(level * clip_term)


def weight_free_scores(image: np.ndarray, canvas_mask: np.ndarray, feather_px: int = 2) -> Scores:
    distance = distance_to_product(canvas_mask)
    return Scores(
        seam_energy=seam_energy(image, canvas_mask, feather_px, distance=distance),
        color_harmony=color_harmony(image, canvas_mask, distance=distance),
        exposure=exposure(image),
    )


class ClipScorer:
    """Image–text alignment with a CLIP-family checkpoint (transformers ``CLIPModel``)."""

    def __init__(self, spec: ScoringConfig):
        import torch

        from canvas_ray.models.loading import load_clip

        if not spec.clip_model:
            raise ValueError("quality.scoring.clip_model is not set")
        loaded = load_clip(spec.clip_model, spec.clip_device)
        self.device, self.model, self.processor = loaded.device, loaded.model, loaded.processor
        self.torch = torch

    def __call__(self, images: list[np.ndarray], texts: list[str]) -> list[float]:
        torch = self.torch
        from PIL import Image

        inputs = self.processor(
            text=texts,
            images=[Image.fromarray(np.ascontiguousarray(image[..., :3])) for image in images],
            return_tensors="pt",
            padding=True,
            truncation=True,
        ).to(self.device)
        with torch.inference_mode():
            image_features = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            text_features = self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
            )
        image_features = _embedding(image_features)
        text_features = _embedding(text_features)
        cosine = torch.nn.functional.cosine_similarity(image_features.float(), text_features.float(), dim=-1)
        return [max(0.0, float(value)) for value in cosine.cpu()]


def _embedding(output: Any) -> Any:  # transformers v5 returns a model output, pooler_output projected
    return getattr(output, "pooler_output", None) if not hasattr(output, "shape") else output
