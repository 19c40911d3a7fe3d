"""The pipeline's sinks: the steps that write files under the run's output root.

- :class:`ThumbnailWriter` (``thumbnails``): a review thumbnail of each item's photo and of its mask;
- :class:`ImageWriter` (``write``): each delivered output, encoded with its provenance, and one manifest
  row per output (an error row included), as an Arrow table;
- :class:`ManifestPartWriter` (``manifest_part``): those rows as one staging part of the manifest.

They have the shape of every stage (``(config, context)``, ``requires`` / ``produces``, batch in, batch out),
so the pipeline spec names them like the other stages and the batch plan runs them in its task steps. The
in-process drivers (``LocalPipeline``, Serve, training prep) return their images instead of storing them
and skip them (:data:`canvas_ray.spec.SINKS`). They need the run's output root and id
(:attr:`StageContext.output_root`, :attr:`StageContext.run_id`).

Why not Ray Data Datasinks: the driver counts each written part's statuses as the plan streams (progress,
the bar and ``progress.json``), and exactly-once comes from our own manifest (staging parts, compacted per
id bucket, :mod:`canvas_ray.io.manifest`). A Datasink ends the plan and reports only once the whole write
has finished, so the parts are written by a task step that hands the statuses on.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from canvas_ray.config import CanvasConfig
from canvas_ray.io.images import encode_image, resize
from canvas_ray.io.manifest_parts import write_staging_part
from canvas_ray.io.outputs import OutputLayout, WriteOutputs, write_bytes
from canvas_ray.logs import get_logger
from canvas_ray.provenance import ProvenanceContext
from canvas_ray.rows import Batch, ensure_status
from canvas_ray.stages.base import StageContext

log = get_logger(__name__)

THUMB_SIDE = 192  # long side of a review thumbnail, px


def _root(context: StageContext | None, sink: str) -> tuple[StageContext, str]:
    if context is None or not context.output_root:
        raise ValueError(f"the {sink} sink writes under the run's output root: give StageContext.output_root")
    return context, context.output_root


class ThumbnailWriter:
    """Sink (task): for each ``ok`` item, a JPEG thumbnail of the photo and a PNG of its mask under
    ``thumbs/``; their paths in ``thumb_uri`` / ``mask_uri`` ('' where none was written). A failure is
    logged and leaves the row as it was: thumbnails are for review only."""

    requires: tuple[str, ...] = ("item_id", "image", "product_mask")
    produces: tuple[str, ...] = ("thumb_uri", "mask_uri")

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        context, root = _root(context, "thumbnails")
        self.layout = OutputLayout(root, shard_width=config.output.shard_width)
        self.storage_options = context.storage_options

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        n = len(batch["status"])
        thumbs, masks = [""] * n, [""] * n
        for index in range(n):
            if batch["status"][index] != "ok":
                continue
            item_id = str(batch["item_id"][index])
            try:
                image, mask = batch["image"][index], batch["product_mask"][index]
                scale = THUMB_SIDE / max(image.shape[:2])
                size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
                thumb = resize(np.ascontiguousarray(image[..., :3]), size)
                image_rel = self.layout.thumb_rel(item_id, "image")
                mask_rel = self.layout.thumb_rel(item_id, "mask")
                options = self.storage_options
                write_bytes(self.layout.uri(image_rel), encode_image(thumb, "jpeg", 85), options)
                write_bytes(self.layout.uri(mask_rel), encode_image(resize(mask, size), "png"), options)
                thumbs[index], masks[index] = image_rel, mask_rel
            except Exception as error:  # noqa: BLE001 - thumbnails are for review only
                log.warning("thumbnail for %s failed: %s", item_id, error)
        batch["thumb_uri"] = np.asarray(thumbs, dtype=object)
        batch["mask_uri"] = np.asarray(masks, dtype=object)
        return batch


class ImageWriter:
    """Sink (task): store each delivered (``ok`` / ``review``) output with its provenance and return one
    manifest row per output, errors included (:meth:`canvas_ray.io.outputs.WriteOutputs.rows`)."""

    requires: tuple[str, ...] = ("output_id", "result")
    produces: tuple[str, ...] = ("output_uri", "write_s")

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        context, root = _root(context, "write")
        self.writer = WriteOutputs(
            root,
            context.run_id,
            context.fingerprint or "",
            config.output.format,
            config.output.quality,
            config.output.shard_width,
            context.storage_options,
            write_part=False,
            provenance=ProvenanceContext.from_config(config),
        )

    def __call__(self, batch: Batch) -> pa.Table:
        return self.writer.rows(batch)


class ManifestPartWriter:
    """Sink (task): the manifest rows of one call as one staging part; the statuses go on to the driver,
    which counts them for progress."""

    requires: tuple[str, ...] = ("output_id", "status")
    produces: tuple[str, ...] = ()

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        context, self.root = _root(context, "manifest_part")
        self.run_id, self.storage_options = context.run_id, context.storage_options

    def __call__(self, table: pa.Table) -> pa.Table:
        write_staging_part(table, self.root, self.run_id, self.storage_options)
        return table.select(["status"])
