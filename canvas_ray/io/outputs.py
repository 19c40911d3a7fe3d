"""Output layout, the manifest schema, and the writer stage.

```
OUTPUT/images/<shard>/<output name>.<ext>   final images (shard = hash prefix of item_id)
OUTPUT/thumbs/<shard>/<item>.jpg|_mask.png  review thumbnails (original, mask)
OUTPUT/manifest/…                           one row per output (layout: canvas_ray.io.manifest)
OUTPUT/summary.json, OUTPUT/index.html      counts and throughput; the review pages
```
File names are sanitised: nothing is ever written outside OUTPUT.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import time
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from canvas_ray.io.images import encode_image
from canvas_ray.logs import get_logger
from canvas_ray.provenance import (
    Provenance,
    ProvenanceContext,
    check_provenance,
    encode_with_provenance,
    read_provenance,
)
from canvas_ray.schema import MANIFEST_SCHEMA, split_error
from canvas_ray.stages.base import Batch, describe, ensure_status

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


def _column(batch: Batch, name: str, kind: pa.DataType, n: int) -> pa.Array:
    """A batch column as a manifest column: NaN ("not measured") and None become nulls."""
    if name not in batch:
        return pa.nulls(n, kind)
    values = batch[name]
    if values.dtype != object:
        return pa.array(values, from_pandas=True).cast(kind, safe=False)
    cleaned = [
        None
        if v is None or (isinstance(v, float) and v != v)
        else (v.item() if isinstance(v, np.generic) else v)
        for v in values
    ]
    if pa.types.is_string(kind):
        cleaned = [None if v is None else str(v) for v in cleaned]
    return pa.array(cleaned, from_pandas=True).cast(kind, safe=False) if cleaned else pa.nulls(0, kind)


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
        """Store each ``ok``/``review`` result; one manifest row per output (errors included)."""
        batch = ensure_status(batch)
        n = len(batch["status"])
        status = [str(s) for s in batch["status"]]
        error = [str(e or "") for e in batch["error"]]
        item_ids = [str(i) for i in batch["item_id"]]
        output_uri = [""] * n
        provenance: list[str | None] = [None] * n
        width = _column(batch, "width", pa.int64(), n).to_pylist()
        height = _column(batch, "height", pa.int64(), n).to_pylist()
        write_s = np.zeros(n)
        for index in range(n):
            if status[index] not in ("ok", "review"):  # review: kept for a person to check the mask
                continue
            start = time.perf_counter()
            # a profile's output is named by the profile and encoded as it says
            profile = str(batch["profile"][index] or "") if "profile" in batch else ""
            fmt = str(batch["image_format"][index] or self.format) if profile else self.format
            quality = int(batch["image_quality"][index] or self.quality) if profile else self.quality
            rel = self.layout.image_rel(
                item_ids[index],
                str(batch["style_key"][index]),
                profile or str(batch["aspect"][index]),
                int(batch["variant"][index]),
                fmt,
            )
            try:
                result = batch["result"][index]
                if self.provenance is None:
                    data = encode_image(result, fmt, quality)
                else:
                    record = self.provenance.record(batch, index, self.fingerprint)
                    try:
                        data = encode_with_provenance(result, fmt, quality, record, self.provenance.settings)
                    except Exception as failure:  # noqa: BLE001 - never deliver an unmarked image
                        status[index], error[index] = "error", f"provenance: {describe(failure)}"
                        continue
                    provenance[index] = record.to_json()
                write_bytes(self.layout.uri(rel), data, self.storage_options)
                output_uri[index] = rel
                height[index], width[index] = int(result.shape[0]), int(result.shape[1])
                if self.provenance is not None:
                    self._read_back(batch, index, rel, record, status, error)
            except Exception as failure:  # noqa: BLE001 - becomes an error row
                status[index], error[index] = "error", f"write: {describe(failure)}"
            write_s[index] = time.perf_counter() - start
        delivered = np.array([s in ("ok", "review") for s in status], dtype=bool)
        preserved = (
            _column(batch, "product_preserved", pa.bool_(), n).fill_null(False).to_numpy(zero_copy_only=False)
        )
        stages, reasons = zip(*(split_error(e) for e in error), strict=True) if n else ((), ())
        given = {
            "error_stage": pa.array(stages, pa.string()),
            "error_reason": pa.array(reasons, pa.string()),
            "item_id": pa.array(item_ids, pa.string()),
            "status": pa.array(status, pa.string()),
            "error": pa.array(error, pa.string()),
            "run_id": pa.array([self.run_id] * n, pa.string()),
            "config_fingerprint": pa.array([self.fingerprint] * n, pa.string()),
            "output_uri": pa.array(output_uri, pa.string()),
            "provenance": pa.array(provenance, pa.string()),
            "width": pa.array(width, pa.int64()),
            "height": pa.array(height, pa.int64()),
            "product_preserved": pa.array(preserved & delivered),
            "write_s": pa.array(write_s),
            "finished_at": pa.array(np.full(n, time.time())),
        }
        arrays = [
            given[f.name] if f.name in given else _column(batch, f.name, f.type, n) for f in MANIFEST_SCHEMA
        ]
        return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA)

    def _read_back(
        self, batch: Batch, index: int, rel: str, expected: Provenance, status: list[str], error: list[str]
    ) -> None:
        """Read the written file back and check its provenance: against its manifest record always, and
        against its profile's channel rules (``provenance`` of the profile) when it has one. A missing or
        stripped tag makes the output an error (no profile) or non-compliant and ``rejected``."""
        assert self.provenance is not None
        fs, path = fsspec.core.url_to_fs(self.layout.uri(rel), **self.storage_options)
        with fs.open(path, "rb") as handle:
            found = read_provenance(handle.read())
        profile = str(batch["profile"][index] or "") if "profile" in batch else ""
        rule = self.provenance.rules.get(profile) if profile else None
        problems = check_provenance(
            found, expected, rule.c2pa if rule else "none", rule.iptc if rule else True
        )
        if not problems:
            return
        if rule is None:
            status[index], error[index] = "error", "provenance: read back: " + "; ".join(problems)
            return
        policy = rule.policy.split(";")[0] or "channel rule"
        reason = f"compliance: {profile}: provenance ({policy}): " + "; ".join(problems)
        status[index], error[index] = "rejected", reason
        if "compliant" in batch:
            batch["compliant"][index] = False
            issues = str(batch["compliance_issues"][index] or "")
            batch["compliance_issues"][index] = "; ".join(x for x in (issues, *problems) if x)

    def __call__(self, batch: Batch) -> Batch:
        """:meth:`rows`, plus a staging part of the manifest when ``write_part``; small columns out."""
        table = self.rows(batch)
        if self.write_part and table.num_rows:
            digest = hashlib.sha256("\n".join(sorted(table.column("output_id").to_pylist())).encode())
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            write_bytes(
                join_uri(self.layout.parts, self.run_id, f"{digest.hexdigest()[:24]}.parquet"),
                buffer.getvalue(),
                self.storage_options,
            )
        keep = ("output_id", "item_id", "status", "error", "product_preserved")
        return {name: table.column(name).to_numpy(zero_copy_only=False) for name in keep}
