"""Catalog input: Parquet, JSONL, CSV or a folder of images, from any fsspec URI.

The catalog is metadata only (ids, URIs, text, engagement counts), so the driver reads and validates
it whole: missing or duplicate ``item_id`` and missing ``image_uri`` become error rows with a clear
reason instead of being dropped. Relative ``image_uri`` values are resolved against the catalog's folder.
Image bytes are fetched later, row by row, by the Fetch stage on the workers.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
TEXT_COLUMNS = (
    "item_id",
    "image_uri",
    "title",
    "description",
    "category",
    "brand",
    "style",
    "style_image_uri",
)
COUNT_COLUMNS = ("impressions", "saves", "clicks")


@dataclass
class Catalog:
    """Validated catalog rows plus what was wrong with the input."""

    table: pa.Table
    source: str
    problems: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


def _join(base: str, relative: str) -> str:
    if "://" in relative or relative.startswith("/"):
        return relative
    return posixpath.normpath(posixpath.join(base, relative)) if "://" not in base else f"{base}/{relative}"


def _read_table(uri: str, storage_options: dict[str, Any]) -> tuple[pa.Table, str]:
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"catalog folder {uri} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        ids = [posixpath.splitext(posixpath.relpath(p, path))[0].replace("/", "__") for p in files]
        return pa.table({"item_id": ids, "image_uri": [prefix + p for p in files]}), prefix + path
    base = prefix + posixpath.dirname(path)
    lower = path.lower()
    with fs.open(path, "rb") as handle:
        data = handle.read()
    if lower.endswith((".parquet", ".pq")):
        table = pq.read_table(io.BytesIO(data))
    elif lower.endswith((".jsonl", ".ndjson", ".json")):
        rows = []
        for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{uri} line {number} is not JSON: {error}") from None
        table = pa.Table.from_pylist(rows)
    elif lower.endswith(".csv"):
        options = pacsv.ConvertOptions(column_types={c: pa.string() for c in TEXT_COLUMNS})
        table = pacsv.read_csv(io.BytesIO(data), convert_options=options)
    else:
        raise ValueError(f"catalog {uri}: unknown format; use .parquet, .jsonl, .csv or a folder of images")
    return table, base


def _normalise(table: pa.Table, base: str) -> tuple[pa.Table, list[str]]:
    problems: list[str] = []
    rows = table.to_pylist()
    if "image_uri" not in table.column_names:
        raise ValueError("catalog has no image_uri column (required: item_id, image_uri)")
    seen: Counter[str] = Counter()
    first_row: dict[str, int] = {}
    # every id the catalog itself uses: a renamed duplicate must not take one of them
    taken = {str(row.get("item_id")).strip() for row in rows if row.get("item_id") is not None}
    out = []
    for number, row in enumerate(rows):
        # "" rather than null: a block of all-null text would turn into float NaN columns downstream
        item: dict[str, Any] = {
            c: ("" if row.get(c) is None or row.get(c) != row.get(c) else str(row.get(c)))
            for c in TEXT_COLUMNS
        }
        for c in COUNT_COLUMNS:
            value = row.get(c)
            item[c] = int(value) if isinstance(value, int | float) and value == value else None
        item["status"], item["error"] = "ok", ""
        item_id = (item["item_id"] or "").strip()
        if not item_id:
            item_id = f"row-{number:07d}"
            item["status"], item["error"] = "error", f"catalog: row {number} has no item_id"
            problems.append(item["error"])
        seen[item_id] += 1
        if seen[item_id] > 1:
            item["status"] = "error"
            item["error"] = f"catalog: duplicate item_id {item_id!r} (first at row {first_row[item_id]})"
            problems.append(item["error"])
            dup = seen[item_id] - 1
            while f"{item_id}#dup{dup}" in taken:
                dup += 1
            item_id = f"{item_id}#dup{dup}"
            taken.add(item_id)
        else:
            first_row[item_id] = number
        item["item_id"] = item_id
        uri = (item["image_uri"] or "").strip()
        if not uri and item["status"] == "ok":
            item["status"], item["error"] = "error", f"catalog: row {number} ({item_id}) has no image_uri"
            problems.append(item["error"])
        item["image_uri"] = _join(base, uri) if uri else ""
        if item.get("style_image_uri"):
            item["style_image_uri"] = _join(base, item["style_image_uri"])
        out.append(item)
    schema = pa.schema(
        [(c, pa.string()) for c in TEXT_COLUMNS]
        + [(c, pa.int64()) for c in COUNT_COLUMNS]
        + [("status", pa.string()), ("error", pa.string())]
    )
    return pa.Table.from_pylist(out, schema=schema), problems


def read_catalog(
    uri: str, storage_options: dict[str, Any] | None = None, limit: int | None = None
) -> Catalog:
    """Read and validate a catalog; see the module docstring for formats and rules."""
    table, base = _read_table(uri, dict(storage_options or {}))
    if limit is not None:
        table = table.slice(0, limit)
    table, problems = _normalise(table, base)
    for problem in problems[:20]:
        log.warning("%s", problem)
    if len(problems) > 20:
        log.warning("... and %d more catalog problems (see the manifest's error column)", len(problems) - 20)
    return Catalog(table, uri, problems)
