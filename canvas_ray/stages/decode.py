"""Fetch and Decode: image bytes from any fsspec URI, then a validated RGB(A) array.

Both are cheap stages (Ray tasks in the batch plan). A missing file, a refused URI, or bytes that are
not a usable image become error rows with the reason; nothing raises out of a batch. With
``limits.allowed_read_prefixes`` set (every job submitted over HTTP), a URI outside those prefixes, after
normalisation and symlink resolution (:mod:`canvas_ray.io.uris`), is refused before anything is read.
The optional reference image of a row (``style_image_uri`` → ``style_image``) goes the same way, under
the same limits; its errors read ``style image: ...``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from canvas_ray.config import CanvasConfig, LimitsConfig
from canvas_ray.io.http import fetch_url, is_http
from canvas_ray.io.images import decode_image
from canvas_ray.io.uris import UriRefusedError, resolve_allowed
from canvas_ray.rows import (
    OK,
    PLACEHOLDER_IMAGE,
    Batch,
    describe,
    ensure_status,
    object_column,
    ok_indices,
    set_error,
)
from canvas_ray.stages.base import StageContext, timed


def read_bytes(uri: str, limits: LimitsConfig, storage_options: dict | None = None) -> bytes:
    """Read at most ``limits.max_image_bytes`` (+1, to detect oversize) from ``uri``."""
    if is_http(uri):  # feed image links: timeouts, retries, per-host bound (canvas_ray.io.http)
        return fetch_url(uri, limits)
    with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
        size = getattr(handle, "size", None)
        if size is not None and size > limits.max_image_bytes:
            raise ValueError(
                f"file is {size / 2**20:.1f} MiB; the limit is {limits.max_image_bytes / 2**20:.1f} MiB"
            )
        return handle.read(limits.max_image_bytes + 1)


# Reference (style) images: decoded no larger than this on the long side; fetched bytes kept per URI.
STYLE_IMAGE_SIDE = 512
STYLE_CACHE_ENTRIES = 32
STYLE_CACHE_BYTES = 64 * 2**20


def _sha256(data: Any) -> str:
    return "" if _empty(data) else hashlib.sha256(data).hexdigest()


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or not str(value).strip()


def _empty(data: Any) -> bool:
    return data is None or (isinstance(data, float) and data != data) or len(data) == 0


def decode_style_image(data: bytes, limits: LimitsConfig) -> np.ndarray:
    """A reference image as ``HxWx3`` RGB uint8 (transparency over white), long side at most 512 px."""
    image = decode_image(
        data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_pixels, min_side=limits.min_side
    )
    if image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float32) / 255.0
        image = np.round(image[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    height, width = image.shape[:2]
    scale = STYLE_IMAGE_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(image)


class Fetch:
    """``image_uri`` → ``image_bytes`` and ``style_image_uri`` → ``style_image_bytes`` (rows that already
    carry bytes are left alone).

    Many rows share one brand's reference image, so style images are cached by URI in the instance
    (at most ``STYLE_CACHE_ENTRIES`` images and ``STYLE_CACHE_BYTES`` bytes, least recently used out first).
    """

    requires: tuple[str, ...] = ("image_uri",)
    produces: tuple[str, ...] = ("image_bytes", "fetch_s")  # and style_image_bytes for reference rows

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        self.limits = config.limits
        self.allowed = config.limits.allowed_read_prefixes
        self.storage_options = context.storage_options if context else {}
        self._style_cache: OrderedDict[str, bytes] = OrderedDict()
        self._style_cache_bytes = 0
        self.style_reads = 0  # style images read from storage (cache misses)

    def _readable(self, uri: str) -> str:
        """The URI to read (symlinks resolved when an allowlist applies); UriRefusedError when refused."""
        if self.allowed is None:
            return uri
        resolved = resolve_allowed(uri, self.allowed)
        if resolved is None:
            raise UriRefusedError(f"refused: {uri[:300]} is not under an allowed prefix")
        return resolved

    def _style_bytes(self, uri: str) -> bytes:
        uri = self._readable(uri)
        cached = self._style_cache.get(uri)
        if cached is not None:
            self._style_cache.move_to_end(uri)
            return cached
        data = read_bytes(uri, self.limits, self.storage_options)
        self.style_reads += 1
        self._style_cache[uri] = data
        self._style_cache_bytes += len(data)
        while len(self._style_cache) > STYLE_CACHE_ENTRIES or self._style_cache_bytes > STYLE_CACHE_BYTES:
            _, dropped = self._style_cache.popitem(last=False)
            self._style_cache_bytes -= len(dropped)
        return data

    def _fetch_styles(self, batch: Batch, indices: list[int]) -> None:
        n = len(batch["status"])
        existing = batch.get("style_image_bytes")
        data = [b""] * n if existing is None else [b"" if _empty(b) else b for b in existing]
        for index in indices:
            if batch["status"][index] != OK:
                continue
            uri = str(batch["style_image_uri"][index]).strip()
            try:
                data[index] = self._style_bytes(uri)
            except UriRefusedError as error:
                set_error(batch, index, "fetch", f"style image: {error}")
            except FileNotFoundError:
                set_error(batch, index, "fetch", f"style image: file not found: {uri}")
            except Exception as error:  # noqa: BLE001 - becomes an error row
                set_error(batch, index, "fetch", f"style image: cannot read {uri}: {describe(error)}")
        batch["style_image_bytes"] = object_column(data)

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        n = len(batch["status"])
        existing = batch.get("image_bytes")
        data: list[bytes | None] = [None] * n if existing is None else list(existing)
        # rows without bytes are fetched; given bytes (an upload, even an empty one: Decode says so) are kept
        has_uri = "image_uri" in batch
        indices = [i for i in ok_indices(batch) if (item := data[i]) is None or (has_uri and len(item) == 0)]
        style_indices: list[int] = []
        if "style_image_uri" in batch:
            given = batch.get("style_image_bytes")
            style_indices = [
                i
                for i in ok_indices(batch)
                if not _blank(batch["style_image_uri"][i]) and (given is None or _empty(given[i]))
            ]
        with timed(batch, "fetch_s", sorted(set(indices) | set(style_indices))):
            for index in indices:
                uri = batch["image_uri"][index] if has_uri else None
                if uri is None or not str(uri).strip():
                    set_error(batch, index, "fetch", "image_uri is empty")
                    continue
                try:
                    data[index] = read_bytes(self._readable(str(uri)), self.limits, self.storage_options)
                except UriRefusedError as error:
                    set_error(batch, index, "fetch", str(error))
                except FileNotFoundError:
                    set_error(batch, index, "fetch", f"file not found: {uri}")
                except Exception as error:  # noqa: BLE001 - becomes an error row
                    set_error(batch, index, "fetch", f"cannot read {uri}: {describe(error)}")
            if style_indices:
                self._fetch_styles(batch, style_indices)
        batch["image_bytes"] = object_column([b if b is not None else b"" for b in data])
        return batch


class Decode:
    """``image_bytes`` → ``image`` (HxWx3 RGB or HxWx4 RGBA uint8) and ``style_image_bytes`` →
    ``style_image`` (RGB, long side ≤ ``STYLE_IMAGE_SIDE``; ``PLACEHOLDER_IMAGE`` for rows without a
    reference); drops the bytes. The ``style_image`` column is always added."""

    requires: tuple[str, ...] = ("image_bytes",)
    produces: tuple[str, ...] = (
        "image",
        "style_image",
        "source_width",
        "source_height",
        "source_sha256",
        "decode_s",
    )

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
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
            styles = self._decode_styles(batch, batch.pop("style_image_bytes", None))
        raw = batch.pop("image_bytes", None)  # the source photo's hash: its C2PA ingredient (provenance)
        batch["source_sha256"] = object_column([_sha256(raw[i]) if raw is not None else "" for i in range(n)])
        batch["image"] = object_column(images)
        batch["style_image"] = object_column(styles)
        batch["source_width"] = widths
        batch["source_height"] = heights
        return batch

    def _decode_styles(self, batch: Batch, data: np.ndarray | None) -> list[np.ndarray]:
        styles = [PLACEHOLDER_IMAGE] * len(batch["status"])
        if data is None:
            return styles
        decoded: dict[int, np.ndarray | str] = {}  # rows of one brand share the (cached) bytes object
        for index in ok_indices(batch):
            if _empty(data[index]):
                continue
            key = id(data[index])
            if key not in decoded:
                try:
                    decoded[key] = decode_style_image(data[index], self.limits)
                except Exception as error:  # noqa: BLE001 - becomes an error row
                    decoded[key] = f"style image: {describe(error)}"
            result = decoded[key]
            if isinstance(result, str):
                set_error(batch, index, "decode", result)
            else:
                styles[index] = result
        return styles
