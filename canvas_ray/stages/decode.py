"""Fetch and Decode: image bytes from any fsspec URI, then a validated RGB(A) array.

Both are cheap stages (Ray tasks in the batch plan). A missing file, a refused URI, or bytes that are
not a usable image become error rows with the reason; nothing raises out of a batch.
"""

from __future__ import annotations

import fsspec
import numpy as np

from canvas_ray.config import CanvasConfig, LimitsConfig
from canvas_ray.io.images import decode_image
from canvas_ray.stages.base import (
    PLACEHOLDER_IMAGE,
    Batch,
    describe,
    ensure_status,
    object_column,
    ok_indices,
    set_error,
    timed,
)


def read_bytes(uri: str, limits: LimitsConfig, storage_options: dict | None = None) -> bytes:
    """Read at most ``limits.max_image_bytes`` (+1, to detect oversize) from ``uri``."""
    with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
        size = getattr(handle, "size", None)
        if size is not None and size > limits.max_image_bytes:
            raise ValueError(
                f"file is {size / 2**20:.1f} MiB; the limit is {limits.max_image_bytes / 2**20:.1f} MiB"
            )
        return handle.read(limits.max_image_bytes + 1)


class Fetch:
    """``image_uri`` → ``image_bytes`` (rows that already carry bytes are left alone)."""

    def __init__(self, config: CanvasConfig, storage_options: dict | None = None):
        self.limits = config.limits
        self.storage_options = storage_options or {}

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        n = len(batch["status"])
        existing = batch.get("image_bytes")
        data: list[bytes | None] = [None] * n if existing is None else list(existing)
        indices = [i for i in ok_indices(batch) if (item := data[i]) is None or len(item) == 0]
        with timed(batch, "fetch_s", indices):
            for index in indices:
                uri = batch["image_uri"][index]
                if uri is None or not str(uri).strip():
                    set_error(batch, index, "fetch", "image_uri is empty")
                    continue
                try:
                    data[index] = read_bytes(str(uri), self.limits, self.storage_options)
                except FileNotFoundError:
                    set_error(batch, index, "fetch", f"file not found: {uri}")
                except Exception as error:  # noqa: BLE001 - becomes an error row
                    set_error(batch, index, "fetch", f"cannot read {uri}: {describe(error)}")
        batch["image_bytes"] = object_column([b if b is not None else b"" for b in data])
        return batch


class Decode:
    """``image_bytes`` → ``image`` (HxWx3 RGB or HxWx4 RGBA uint8); drops the bytes."""

    def __init__(self, config: CanvasConfig):
        self.limits = config.limits

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        n = len(batch["status"])
        images = [PLACEHOLDER_IMAGE] * n
        widths = np.zeros(n, dtype=np.int64)
        heights = np.zeros(n, dtype=np.int64)
        indices = ok_indices(batch)
        with timed(batch, "decode_s", indices):
            for index in indices:
                try:
                    image = decode_image(
                        batch["image_bytes"][index],
                        max_bytes=self.limits.max_image_bytes,
                        max_pixels=self.limits.max_pixels,
                        min_side=self.limits.min_side,
                    )
                except Exception as error:  # noqa: BLE001 - becomes an error row
                    set_error(batch, index, "decode", describe(error))
                    continue
                images[index] = image
                heights[index], widths[index] = image.shape[:2]
        batch.pop("image_bytes", None)
        batch["image"] = object_column(images)
        batch["source_width"] = widths
        batch["source_height"] = heights
        return batch
