"""Segment: the product mask of each image.

Adds ``product_mask`` (HxW uint8, 255 = product, soft edge), ``mask_area`` (share of pixels that are
product), ``mask_confidence`` (float in [0, 1]) and ``mask_flags`` (why it is low, '' when fine; see
:mod:`canvas_ray.stages.mask_trust`). With ``segment.refine: grabcut`` the mask is refined first. Masks
taken from an image's own alpha channel are exact: confidence 1. A row with a ``product_box`` column
("x0,y0,x1,y1" in source pixels) is segmented inside that box plus an 8% margin, whatever the backend, and is
background outside it (a photo with a passer-by names its product); without one, a mask of several
separate objects goes to review. Backends, chosen by ``segment.backend``:

- ``hf``: a transformers segmentation model (semantic segmentation with a background label, or a
  one-channel matting model such as BiRefNet with ``trust_remote_code``);
- ``alpha``: the image's own alpha channel, for cut-outs; images without one use ``segment.fallback``;
- ``backdrop``: weight-free, a border colour model refined with GrabCut (uses alpha when present);
- ``onnx``: an ONNX background-removal model (IS-Net, U²-Net, BiRefNet) run by onnxruntime, see
  :mod:`canvas_ray.stages.segment_onnx`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from canvas_ray.config import CanvasConfig, SegmentConfig
from canvas_ray.registry import Registry
from canvas_ray.rows import (
    PLACEHOLDER_MASK,
    Batch,
    ensure_status,
    object_column,
    ok_indices,
    run_rows,
    set_error,
)
from canvas_ray.stages.backdrop_mask import backdrop_product_mask
from canvas_ray.stages.base import StageContext, alpha_mask, timed, to_rgb
from canvas_ray.stages.mask_trust import assess_mask
from canvas_ray.stages.segment_onnx import OnnxSegmenter

STAGE = "segment"


class Segmenter(Protocol):
    def product_masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Float32 HxW masks in [0, 1] (1 = product), one per image, at the image's size."""
        ...


BACKENDS: Registry[Segmenter] = Registry("segment")
register = BACKENDS.register


_alpha_mask = alpha_mask


@register("backdrop")
class BackdropSegmenter:
    def __init__(self, spec: SegmentConfig):
        self.options = dict(spec.options)

    def product_masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        masks = []
        for image in images:
            alpha = _alpha_mask(image)
            masks.append(alpha if alpha is not None else backdrop_product_mask(to_rgb(image), **self.options))
        return masks


@register("alpha")
class AlphaSegmenter:
    def __init__(self, spec: SegmentConfig):
        self.fallback = BackdropSegmenter(spec) if spec.fallback == "backdrop" else None

    def product_masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        masks = []
        for image in images:
            alpha = _alpha_mask(image)
            if alpha is None:
                if self.fallback is None:
                    raise ValueError("image has no transparency and segment.fallback is none")
                alpha = self.fallback.product_masks([image])[0]
            masks.append(alpha)
        return masks


@register("hf")
class HFSegmenter:
    """Any transformers segmentation checkpoint; batched forward, logits resized to each image."""

    def __init__(self, spec: SegmentConfig):
        from canvas_ray.models.loading import load_segmenter

        self.loaded = load_segmenter(spec)
        config = self.loaded.model.config
        labels = {int(k): str(v).lower() for k, v in (getattr(config, "id2label", None) or {}).items()}
        background = [i for i, name in labels.items() if "background" in name or name in ("bg", "backdrop")]
        self.background_index = background[0] if background else 0
        self.input_size = int(spec.options.get("input_size", 1024))

    def _inputs(self, images: list[np.ndarray]):
        import torch
        from PIL import Image

        pil = [Image.fromarray(to_rgb(image)) for image in images]
        processor = self.loaded.processor
        if processor is not None:
            pixel_values = processor(images=pil, return_tensors="pt")["pixel_values"]
        else:  # matting models without a processor: ImageNet normalisation at a fixed size
            size = (self.input_size, self.input_size)
            arrays = [np.asarray(p.resize(size, Image.Resampling.BILINEAR), np.float32) / 255.0 for p in pil]
            mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
            stacked = ((np.stack(arrays) - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
            pixel_values = torch.from_numpy(stacked)
        return pixel_values.to(self.loaded.device, self.loaded.dtype)

    def product_masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        pixel_values = self._inputs(images)
        with torch.inference_mode():
            outputs = self.loaded.model(pixel_values=pixel_values)
        logits = getattr(outputs, "logits", outputs)
        if isinstance(logits, list | tuple):
            logits = logits[-1]
        logits = logits.float()
        if logits.ndim == 3:
            logits = logits[:, None]
        masks = []
        for image, logit in zip(images, logits, strict=True):
            up = F.interpolate(logit[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
            if up.shape[0] == 1:
                prob = torch.sigmoid(up[0])
            else:
                prob = 1.0 - torch.softmax(up, dim=0)[self.background_index]
            masks.append(prob.cpu().numpy().astype(np.float32))
        return masks


register("onnx")(OnnxSegmenter)


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in source pixels (x1, y1 exclusive)
BOX_MARGIN = 0.08  # share of the box's size added on each side before segmenting


def parse_box(value: object) -> Box | None:
    """A ``product_box`` cell: "x0,y0,x1,y1" or four numbers; None, "" or NaN mean no box."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        parts: list = value.strip().strip("[]()").replace(";", ",").split(",")
    else:
        parts = list(np.asarray(value, dtype=object).ravel())
    try:
        x0, y0, x1, y1 = (int(round(float(p))) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"product_box must be x0,y0,x1,y1 in source pixels, got {value!r}") from None
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise ValueError(f"product_box {value!r} is empty or negative: need 0 <= x0 < x1 and 0 <= y0 < y1")
    return x0, y0, x1, y1


def box_with_margin(box: Box, shape: tuple[int, ...]) -> Box:
    """The box grown by ``BOX_MARGIN`` on each side, clipped to the image; a box outside it is an error."""
    height, width = shape[:2]
    x0, y0, x1, y1 = box
    if x0 >= width or y0 >= height:
        raise ValueError(f"product_box {box} lies outside the {width}x{height} image")
    dx, dy = round((x1 - x0) * BOX_MARGIN), round((y1 - y0) * BOX_MARGIN)
    return max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)


def _paste(mask: np.ndarray, place: Box, shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape[:2], np.float32)
    x0, y0, x1, y1 = place
    full[y0:y1, x0:x1] = mask[..., 0] if mask.ndim == 3 else mask
    return full


def _row_box(batch: Batch, index: int) -> Box | None:
    return parse_box(batch["product_box"][index]) if "product_box" in batch else None


def build_segmenter(spec: SegmentConfig) -> Segmenter:
    return BACKENDS.build(spec.backend, spec)


class Segment:
    """Stage: ``image`` → ``product_mask`` (uint8), ``mask_area``, ``mask_confidence``, ``mask_flags``,
    ``segment_s``."""

    requires: tuple[str, ...] = ("image",)
    produces: tuple[str, ...] = ("product_mask", "mask_area", "mask_confidence", "mask_flags", "segment_s")

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        self.spec = config.segment
        self.segmenter = build_segmenter(self.spec)

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        n = len(batch["status"])
        indices = ok_indices(batch)
        masks = [PLACEHOLDER_MASK] * n
        areas = np.zeros(n, dtype=np.float64)
        confidences = np.zeros(n, dtype=np.float64)
        flags = np.array([""] * n, dtype=object)
        with timed(batch, "segment_s", indices):
            results = run_rows(
                batch,
                indices,
                STAGE,
                lambda rows: self._masks(
                    [batch["image"][i] for i in rows], [_row_box(batch, i) for i in rows]
                ),
            )
            trusted = run_rows(
                batch,
                [i for i in indices if i in results],
                STAGE,
                lambda rows: [
                    self._trust(batch["image"][i], *results[i], boxed=_row_box(batch, i) is not None)
                    for i in rows
                ],
            )
        for index, (soft, confidence, why) in trusted.items():
            confidences[index], flags[index] = confidence, why
            hard = soft >= self.spec.threshold
            area = float(hard.mean())
            if area < max(self.spec.min_area, 1e-9):
                set_error(batch, index, STAGE, f"no product found (mask covers {area:.2%} of the image)")
                continue
            if area > 0.995:
                set_error(batch, index, STAGE, "the mask covers the whole image: no background to replace")
                continue
            mask = np.round(soft * 255).astype(np.uint8)
            mask[hard] = np.maximum(mask[hard], 128)
            mask[~hard] = np.minimum(mask[~hard], 127)
            masks[index] = mask
            areas[index] = area
        batch["product_mask"] = object_column(masks)
        batch["mask_area"] = areas
        batch["mask_confidence"] = confidences
        batch["mask_flags"] = flags
        return batch

    def _masks(
        self, images: list[np.ndarray], boxes: list[Box | None] | None = None
    ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """(mask, the views it was fused from: test-time augmentation, when the backend does it). A row
        with a ``product_box`` is segmented inside its box (plus a margin) and is background outside it."""
        boxes = boxes or [None] * len(images)
        places = [
            None if box is None else box_with_margin(box, image.shape[:2])
            for image, box in zip(images, boxes, strict=True)
        ]
        crops = [
            image if place is None else np.ascontiguousarray(image[place[1] : place[3], place[0] : place[2]])
            for image, place in zip(images, places, strict=True)
        ]
        with_views = getattr(self.segmenter, "masks_and_views", None)
        found: list[tuple[np.ndarray, list[np.ndarray]]]
        if with_views is not None:
            found = list(with_views(crops))
        else:
            found = [(soft, []) for soft in self.segmenter.product_masks(crops)]
        out: list[tuple[np.ndarray, list[np.ndarray]]] = []
        for index, (mask, views) in enumerate(found):
            place = places[index]
            if place is not None:
                shape = images[index].shape[:2]
                mask, views = _paste(mask, place, shape), [_paste(v, place, shape) for v in views]
            out.append((mask, views))
        return out

    def _trust(
        self,
        image: np.ndarray,
        soft: np.ndarray,
        views: list[np.ndarray] | None = None,
        boxed: bool = False,
    ) -> tuple[np.ndarray, float, str]:
        """(soft mask, possibly refined; mask_confidence; mask_flags). ``boxed``: the row named its product
        with a ``product_box``, so several separate objects in the mask are not a reason for review."""
        soft = np.clip(np.nan_to_num(soft), 0.0, 1.0).astype(np.float32)
        if alpha_mask(image) is not None and self.spec.backend in ("alpha", "backdrop", "onnx"):
            return soft, 1.0, ""  # the image's own alpha channel: exact
        trust = assess_mask(
            to_rgb(image),
            soft,
            self.spec.threshold,
            refine=self.spec.refine == "grabcut",
            plain_backdrop_model=self.spec.backend in ("backdrop", "alpha"),
            views=views if views and len(views) > 1 else None,
            one_object=boxed,
        )
        return trust.soft, trust.confidence, trust.flags
