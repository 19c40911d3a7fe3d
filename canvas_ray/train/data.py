"""Training examples: catalog rows → (image, product mask, full caption) at the training resolution.

The same Fetch → Decode → Segment → Caption stages as generation (so masks and captions match what the
model sees at inference), then a square crop: the short side is resized to ``resolution`` and the window
is centred on the product (clamped to the image). The caption is the full one, product AND background,
as Canvas does: the LoRA learns backgrounds described in words.

Two paths, same code per batch: :func:`prepare_examples` (in this process, for small sets and tests) and
:func:`prepare_dataset` (Ray Data ``map_batches`` with an actor pool; rows that fail are dropped after
being logged, with their reasons).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from canvas_ray.config import CanvasConfig, config_from_dict
from canvas_ray.logs import get_logger
from canvas_ray.pipeline import InProcess, items_batch
from canvas_ray.rows import Batch
from canvas_ray.stages.base import StageContext, to_rgb
from canvas_ray.train.config import FinetuneConfig

log = get_logger(__name__)
EXAMPLE_COLUMNS = ("item_id", "image", "mask", "caption")
_CATALOG_COLUMNS = ("item_id", "image_uri", "image_bytes", "title", "description", "category", "brand")


def stage_config(config: FinetuneConfig) -> CanvasConfig:
    data = config.data
    common = {"device": data.device, "trust_remote_code": data.trust_remote_code}
    segment: dict[str, Any] = {"backend": data.segment_backend, **common}
    if data.segment_model:
        segment["model"] = data.segment_model
    caption: dict[str, Any] = {"backend": data.caption_backend, **common}
    if data.caption_model:
        caption["model"] = data.caption_model
    return config_from_dict({"segment": segment, "caption": caption})


def crop_square(image: np.ndarray, mask: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize the short side to ``resolution``; crop a square centred on the product's bounding box."""
    height, width = mask.shape
    scale = resolution / min(height, width)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    img = np.asarray(Image.fromarray(to_rgb(image)).resize((new_w, new_h), Image.Resampling.LANCZOS))
    msk = np.asarray(Image.fromarray(mask).resize((new_w, new_h), Image.Resampling.BILINEAR))
    ys, xs = np.nonzero(msk >= 128)
    cy, cx = (ys.mean(), xs.mean()) if len(ys) else (new_h / 2, new_w / 2)
    top = int(np.clip(round(cy - resolution / 2), 0, new_h - resolution))
    left = int(np.clip(round(cx - resolution / 2), 0, new_w - resolution))
    window = (slice(top, top + resolution), slice(left, left + resolution))
    return np.ascontiguousarray(img[window]), np.ascontiguousarray(msk[window])


class PrepareExamples:
    """Callable for ``map_batches`` and for in-process use: catalog batch → example batch (ok rows only)."""

    def __init__(self, config: FinetuneConfig):
        canvas = stage_config(config)
        self.resolution = config.resolution
        # the pipeline spec's stages up to Caption: masks and captions exactly as generation makes them
        self.stages = InProcess(canvas, StageContext(), until="caption")
        self.errors: list[tuple[str, str]] = []

    def __call__(self, batch: Batch) -> Batch:
        batch = self.stages(batch)
        out: dict[str, list[Any]] = {c: [] for c in EXAMPLE_COLUMNS}
        for i, status in enumerate(batch["status"]):
            if status != "ok":
                self.errors.append((str(batch["item_id"][i]), str(batch["error"][i])))
                log.warning("training example %s skipped: %s", batch["item_id"][i], batch["error"][i])
                continue
            image, mask = crop_square(batch["image"][i], batch["product_mask"][i], self.resolution)
            out["item_id"].append(str(batch["item_id"][i]))
            out["image"].append(image)
            out["mask"].append(mask)
            out["caption"].append(str(batch["caption"][i]))
        size = (0, self.resolution, self.resolution)
        return {
            "item_id": np.asarray(out["item_id"], dtype=object),
            "image": np.stack(out["image"]) if out["image"] else np.zeros((*size, 3), np.uint8),
            "mask": np.stack(out["mask"]) if out["mask"] else np.zeros(size, np.uint8),
            "caption": np.asarray(out["caption"], dtype=object),
        }


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: row.get(k) or "" for k in _CATALOG_COLUMNS if k in row} for row in rows]


def prepare_examples(rows: list[dict[str, Any]], config: FinetuneConfig) -> list[dict[str, Any]]:
    """In-process path: a list of ``{item_id, image (HxWx3 uint8), mask (HxW uint8), caption}``."""
    if not rows:
        return []
    batch = PrepareExamples(config)(items_batch(_rows(rows)))
    return [{c: batch[c][i] for c in EXAMPLE_COLUMNS} for i in range(len(batch["item_id"]))]


def prepare_dataset(rows: list[dict[str, Any]], config: FinetuneConfig, batch_size: int = 8) -> Any:
    """Ray Data path: ``from_items → map_batches(PrepareExamples, actor pool)``; returns a Dataset."""
    import ray

    resources: dict[str, Any] = {"num_gpus": config.data.num_gpus} if config.data.num_gpus else {}
    return ray.data.from_items(_rows(rows)).map_batches(
        PrepareExamples,
        fn_constructor_args=(config,),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.data.actors),
        num_cpus=0.5,
        **resources,
    )


def data_fingerprint(item_ids: list[str], captions: list[str]) -> str:
    """sha256 of the sorted (item_id, caption) pairs: which data, described how, trained this LoRA."""
    digest = hashlib.sha256()
    for item_id, caption in sorted(zip(item_ids, captions, strict=True)):
        digest.update(f"{item_id}\t{caption}\n".encode())
    return digest.hexdigest()
