"""Output layout, the manifest schema, and the writer stage.

```
OUTPUT/images/<shard>/<output name>.<ext>   final images (shard = hash prefix of item_id)
OUTPUT/thumbs/<shard>/<item>.jpg|_mask.png  review thumbnails (original, mask)
OUTPUT/expansion/<shard>/<output name>.png  where the product grew (red), for expanded/rejected outputs
OUTPUT/manifest/…                           one row per output (layout: canvas_ray.io.manifest)
OUTPUT/summary.json, OUTPUT/index.html      counts and throughput; the review pages
```
File names are sanitised: nothing is ever written outside OUTPUT.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import time
from typing import Any

import fsspec
import pyarrow as pa

from canvas_ray.io.images import delivery_quality, encode_image
from canvas_ray.logs import get_logger
from canvas_ray.provenance import (
    Provenance,
    ProvenanceContext,
    check_provenance,
    encode_with_provenance,
    read_provenance,
)
from canvas_ray.records import OutputRecord
from canvas_ray.rows import Batch, describe, ensure_status
from canvas_ray.schema import MANIFEST_SCHEMA

log = get_logger(__name__)
_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, limit: int = 80) -> str:
    """A filesystem-safe name; changed names get a hash suffix so two ids never collide."""
    cleaned = _SAFE_RE.sub("_", text).strip("._") or "item"
    if cleaned == text and len(text) <= limit:
        return text
    return f"{cleaned[:limit]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def shard_of(item_id: str, width: int = 2) -> str:
    return hashlib.sha1(item_id.encode()).hexdigest()[:width]


def join_uri(root: str, *parts: str) -> str:
    return posixpath.join(root.rstrip("/"), *parts)


class OutputLayout:
    def __init__(self, root: str, image_format: str = "png", shard_width: int = 2):
        self.root = root.rstrip("/")
        self.ext = {"jpeg": "jpg"}.get(image_format, image_format)
        self.shard_width = shard_width

    def image_rel(
        self, item_id: str, style_key: str, aspect: str, variant: int, image_format: str | None = None
    ) -> str:
        """``aspect`` is the aspect ratio, or the profile name for a profile's output."""
        aspect_part = safe_name(aspect.replace(":", "x"), 40)
        name = f"{safe_name(item_id)}__{safe_name(style_key, 60)}__{aspect_part}__v{variant}"
        ext = {"jpeg": "jpg"}.get(image_format, image_format) if image_format else self.ext
        return posixpath.join("images", shard_of(item_id, self.shard_width), f"{name}.{ext}")

    def expansion_rel(self, item_id: str, style_key: str, aspect: str, variant: int) -> str:
        """The grown-pixel overlay of one output: named like its image, under ``expansion/``."""
        image = self.image_rel(item_id, style_key, aspect, variant, "png")
        return posixpath.join("expansion", *image.split("/")[1:])

    def thumb_rel(self, item_id: str, kind: str) -> str:
        suffix = "jpg" if kind == "image" else "png"
        name = safe_name(item_id) + ("" if kind == "image" else "_mask")
        return posixpath.join("thumbs", shard_of(item_id, self.shard_width), f"{name}.{suffix}")

    def uri(self, rel: str) -> str:
        return join_uri(self.root, rel)

    @property
    def parts(self) -> str:
        return self.uri("manifest/_staging")


def write_bytes(uri: str, data: bytes, storage_options: dict[str, Any]) -> None:
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    if protocol in ("file", "local"):
        tmp = f"{path}.tmp-{time.time_ns()}"
        with fs.open(tmp, "wb") as handle:
            handle.write(data)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as handle:
            handle.write(data)


def manifest_table(records: list[OutputRecord], run_id: str, fingerprint: str) -> pa.Table:
    """The manifest rows of ``records`` (:meth:`OutputRecord.manifest_row`) as a table of
    :data:`~canvas_ray.schema.MANIFEST_SCHEMA`, with the run's id, config fingerprint and finish time."""
    finished_at = time.time()
    run = {"run_id": run_id, "config_fingerprint": fingerprint, "finished_at": finished_at}
    rows = [{**record.manifest_row(), **run} for record in records]
    arrays = []
    for column in MANIFEST_SCHEMA:
        values = [row.get(column.name) for row in rows]
        arrays.append(
            pa.array(values, from_pandas=True).cast(column.type, safe=False)
            if values
            else pa.nulls(0, column.type)
        )
    return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)


class WriteOutputs:
    """Stage (task): encode and store each ok ``result``; emit manifest rows and write them as a part file."""

    def __init__(
        self,
        root: str,
        run_id: str,
        fingerprint: str,
        image_format: str = "png",
        quality: int = 95,
        shard_width: int = 2,
        storage_options: dict[str, Any] | None = None,
        write_part: bool = True,
        provenance: ProvenanceContext | None = None,
    ):
        self.layout = OutputLayout(root, image_format, shard_width)
        self.format, self.quality = image_format, quality
        self.run_id, self.fingerprint = run_id, fingerprint
        self.storage_options = storage_options or {}
        self.write_part = write_part
        self.provenance = provenance

    def rows(self, batch: Batch) -> pa.Table:
        """Store each delivered (``ok``/``review``) result; one manifest row per output (errors included),
        derived from its :class:`~canvas_ray.records.OutputRecord`."""
        batch = ensure_status(batch)
        records = OutputRecord.from_batch(batch)
        for index, record in enumerate(records):
            record.timings["write_s"] = 0.0
            if record.delivered:  # review: kept for a person to check the mask
                start = time.perf_counter()
                self._store(batch, index, record)
                record.timings["write_s"] = time.perf_counter() - start
            if record.delivered or record.status == "rejected":
                self._store_expansion(batch, index, record)
        return manifest_table(records, self.run_id, self.fingerprint)

    def _store_expansion(self, batch: Batch, index: int, record: OutputRecord) -> None:
        """The guard's grown-pixel overlay (``expansion_overlay``, a 1x1 placeholder where nothing grew) as
        a PNG beside the outputs; its path becomes ``expansion_uri``. For review only: a failure is logged."""
        overlay = batch["expansion_overlay"][index] if "expansion_overlay" in batch else None
        if overlay is None or getattr(overlay, "size", 0) <= 3:
            return
        profile = record.profile or ""
        rel = self.layout.expansion_rel(
            record.item_id, record.style_key, profile or record.aspect, record.variant
        )
        try:
            write_bytes(self.layout.uri(rel), encode_image(overlay, "png"), self.storage_options)
            record.expansion_uri = rel
        except Exception as failure:  # noqa: BLE001 - the overlay is for review only
            log.warning("expansion overlay for %s failed: %s", record.output_id, describe(failure))

    def _store(self, batch: Batch, index: int, record: OutputRecord) -> None:
        """Encode and write one delivered output; a failure makes it an error row (``write`` or
        ``provenance``), a file whose provenance reads back wrong an error or ``rejected`` row."""
        # a profile's output is named by the profile and encoded as it says; the others by the rule
        profile = record.profile or ""
        if profile:
            fmt = str(batch["image_format"][index] or self.format)
            quality = int(batch["image_quality"][index] or self.quality)
        else:
            fmt, quality = self.format, delivery_quality(self.format, self.quality)
        name = (record.item_id, record.style_key, profile or record.aspect, record.variant)
        rel = self.layout.image_rel(*name, fmt)
        try:
            result = batch["result"][index]
            if self.provenance is None:
                data = encode_image(result, fmt, quality)
            else:
                expected = self.provenance.record(batch, index, self.fingerprint)
                try:
                    data = encode_with_provenance(result, fmt, quality, expected, self.provenance.settings)
                except Exception as failure:  # noqa: BLE001 - never deliver an unmarked image
                    record.status, record.error = "error", f"provenance: {describe(failure)}"
                    return
                record.provenance = expected.to_json()
            write_bytes(self.layout.uri(rel), data, self.storage_options)
            record.output_uri = rel
            record.height, record.width = int(result.shape[0]), int(result.shape[1])
            if self.provenance is not None:
                self._read_back(record, rel, expected)
        except Exception as failure:  # noqa: BLE001 - becomes an error row
            record.status, record.error = "error", f"write: {describe(failure)}"

    def _read_back(self, record: OutputRecord, rel: str, expected: Provenance) -> None:
        """Read the written file back and check its provenance: against its manifest record always, and
        against its profile's channel rules (``provenance`` of the profile) when it has one. A missing or
        stripped tag makes the output an error (no profile) or non-compliant and ``rejected``."""
        assert self.provenance is not None
        fs, path = fsspec.core.url_to_fs(self.layout.uri(rel), **self.storage_options)
        with fs.open(path, "rb") as handle:
            found = read_provenance(handle.read())
        profile = record.profile or ""
        rule = self.provenance.rules.get(profile) if profile else None
        problems = check_provenance(
            found, expected, rule.c2pa if rule else "none", rule.iptc if rule else True
        )
        if not problems:
            return
        if rule is None:
            record.status, record.error = "error", "provenance: read back: " + "; ".join(problems)
            return
        policy = rule.policy.split(";")[0] or "channel rule"
        reason = f"compliance: {profile}: provenance ({policy}): " + "; ".join(problems)
        record.status, record.error = "rejected", reason
        if "compliant" in record.columns:
            record.columns["compliant"] = False
            issues = str(record.columns.get("compliance_issues") or "")
            record.columns["compliance_issues"] = "; ".join(x for x in (issues, *problems) if x)

    def __call__(self, batch: Batch) -> Batch:
        """:meth:`rows`, plus a staging part of the manifest when ``write_part``; small columns out."""
        table = self.rows(batch)
        if self.write_part:
            from canvas_ray.io.manifest_parts import write_staging_part  # manifest_parts imports this module

            write_staging_part(table, self.layout.root, self.run_id, self.storage_options)
        keep = ("output_id", "item_id", "status", "error", "product_preserved")
        return {name: table.column(name).to_numpy(zero_copy_only=False) for name in keep}
