"""Catalog input: Parquet, JSONL, CSV (one file or many) or a folder of images, from any fsspec URI.

Two entry points share one set of rules:

- :func:`catalog_dataset` streams a catalog of any size through Ray Data. Each catalog file is read by a
  Ray task in bounded chunks (``iter_batches`` / a streaming CSV reader / JSON lines), so the driver only
  ever holds the list of file names. Every row carries ``_pos`` (file index and row number) so that rules
  which need "the first occurrence" stay deterministic however the work is spread.
- :func:`read_catalog` reads a small catalog into one table in this process (curation, training data,
  ``--limit`` trial runs, tests).

Rules (:func:`normalise` per chunk, :func:`validate_ids` per group of rows that share an id bucket):
text columns become strings ("" rather than null), relative ``image_uri`` values resolve against the
catalog file's folder, and missing ids, missing URIs and duplicate ``item_id`` values become error rows
with a reason, never dropped rows. Duplicates keep the first occurrence (catalog order); later ones get
a fresh id ``<id>#dupN`` that never takes an id the catalog itself uses.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from canvas_ray.io import feeds
from canvas_ray.logs import get_logger

log = get_logger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
TABLE_SUFFIXES = (".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".xml")
FEED_SUFFIXES = (".tsv", ".xml", ".txt")  # merchant feeds (canvas_ray.io.feeds); .csv may be Shopify
TEXT_COLUMNS = (
    "item_id",
    "image_uri",
    "title",
    "description",
    "category",
    "brand",
    "style",
    "style_image_uri",
    "profile",  # output profiles for this item, "a|b" (canvas_ray.profiles); empty: the config's
    "product_box",  # optional "x0,y0,x1,y1" in source pixels: which object is the product (Segment)
)
COUNT_COLUMNS = ("impressions", "saves", "clicks")
ROW_BITS = 40  # _pos = file_index << ROW_BITS | row: a trillion rows per file, a million files
CHUNK_ROWS = 4096
CATALOG_SCHEMA = pa.schema(
    [(c, pa.string()) for c in TEXT_COLUMNS]
    + [(c, pa.int64()) for c in COUNT_COLUMNS]
    + [("status", pa.string()), ("error", pa.string()), ("_pos", pa.int64())]
)
_DUP_RE = re.compile(r"#dup\d+$")


@dataclass
class Catalog:
    """Validated catalog rows (read in this process) plus what was wrong with the input."""

    table: pa.Table
    source: str
    problems: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


@dataclass(frozen=True)
class CatalogFiles:
    """Where a catalog's rows come from: table files (read by tasks) or a listed folder of images."""

    source: str
    files: tuple[str, ...] = ()  # full URIs of table files, in catalog order
    images: pa.Table | None = None  # item_id, image_uri for a folder of images


def _protocol_prefix(fs: Any) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return "" if protocol in ("file", "local") else f"{protocol}://"


def _join(base: str, relative: str) -> str:
    if "://" in relative or relative.startswith("/"):
        return relative
    return posixpath.normpath(posixpath.join(base, relative)) if "://" not in base else f"{base}/{relative}"


def _format(path: str) -> str:
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "json"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(FEED_SUFFIXES):
        return "feed"
    raise ValueError(f"catalog {path}: unknown format; use .parquet, .jsonl, .csv or a folder of images")


def list_catalog(uri: str, storage_options: dict[str, Any] | None = None) -> CatalogFiles:
    """The files of a catalog: one table file, a folder (or glob) of table files, or a folder of images.

    Only names are listed here; rows are read later by tasks. A folder that holds table files is a
    multi-file catalog; otherwise its images are the catalog (ids from their relative paths).
    """
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    prefix = _protocol_prefix(fs)
    if any(ch in path for ch in "*?["):
        tables = sorted(p for p in fs.glob(path) if p.lower().endswith(TABLE_SUFFIXES))
        if not tables:
            raise FileNotFoundError(f"catalog pattern {uri} matches no .parquet/.jsonl/.csv files")
        return CatalogFiles(uri, tuple(prefix + p for p in tables))
    if fs.isdir(path):
        found = sorted(fs.find(path))
        tables = [p for p in found if p.lower().endswith(TABLE_SUFFIXES)]
        if tables:
            return CatalogFiles(uri, tuple(prefix + p for p in tables))
        images = [p for p in found if p.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise FileNotFoundError(f"catalog folder {uri} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        ids = [posixpath.splitext(posixpath.relpath(p, path))[0].replace("/", "__") for p in images]
        return CatalogFiles(uri, images=pa.table({"item_id": ids, "image_uri": [prefix + p for p in images]}))
    _format(path)
    if not fs.exists(path):
        raise FileNotFoundError(f"catalog not found: {uri}")
    feeds.check_file(fs, path, uri)  # a merchant feed's columns / XML are checked before any work starts
    return CatalogFiles(uri, (prefix + path,))


def iter_file_chunks(
    uri: str, storage_options: dict[str, Any] | None = None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pa.Table]:
    """Raw rows of one catalog file, ``chunk_rows`` at a time (bounded memory for any file size)."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    kind = _format(path)
    with fs.open(path, "rb") as handle:
        feed = feeds.sniff(path, handle) if kind in ("csv", "feed") else None
        if feed is not None:
            yield from feeds.iter_feed_chunks(feed, handle, chunk_rows)
            return
        if kind == "feed":
            raise ValueError(f"catalog {uri}: not a Merchant Center TSV/XML feed")
        if kind == "parquet":
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows):
                yield pa.Table.from_batches([batch])
        elif kind == "csv":
            options = pacsv.ConvertOptions(column_types={c: pa.string() for c in TEXT_COLUMNS})
            reader = pacsv.open_csv(
                handle, read_options=pacsv.ReadOptions(block_size=1 << 22), convert_options=options
            )
            for batch in reader:
                yield pa.Table.from_batches([batch])
        else:
            yield from feeds.row_tables(_jsonl_rows(handle, uri), chunk_rows, _json_rows)


def _jsonl_rows(handle: Any, uri: str) -> Iterator[dict[str, Any]]:
    """The rows of a JSON Lines file (blank lines skipped); a line that is no JSON is a ValueError."""
    for number, line in enumerate(io.TextIOWrapper(handle, encoding="utf-8"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{uri} line {number} is not JSON: {error}") from None
        yield row


def _json_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """JSON rows as a table with every key any row has (``from_pylist`` keeps only the first row's keys)."""
    keys = dict.fromkeys(key for row in rows for key in row)
    return pa.Table.from_pydict({key: [row.get(key) for row in rows] for key in keys})


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def normalise(table: pa.Table, base: str, file_index: int, first_row: int) -> pa.Table:
    """Raw catalog rows → :data:`CATALOG_SCHEMA`: strings, resolved URIs, missing ids/URIs as errors.

    Duplicates are not visible here (they may sit in other chunks or files): see :func:`validate_ids`.
    """
    if table.num_rows and "image_uri" not in table.column_names:
        raise ValueError("catalog has no image_uri column (required: item_id, image_uri)")
    n = table.num_rows
    columns: dict[str, list[Any]] = {}
    for c in TEXT_COLUMNS:
        values = table.column(c).to_pylist() if c in table.column_names else [None] * n
        columns[c] = [_text(v) for v in values]
    for c in COUNT_COLUMNS:
        values = table.column(c).to_pylist() if c in table.column_names else [None] * n
        columns[c] = [
            int(v) if isinstance(v, int | float) and not isinstance(v, bool) and v == v else None
            for v in values
        ]
    status, error, positions = ["ok"] * n, [""] * n, [0] * n
    for i in range(n):
        row = first_row + i
        positions[i] = (file_index << ROW_BITS) | row
        where = f"row {row}" if file_index == 0 else f"file {file_index} row {row}"
        item_id = columns["item_id"][i].strip()
        if not item_id:
            item_id = f"row-{row:07d}" if file_index == 0 else f"row-{file_index}-{row:07d}"
            status[i], error[i] = "error", f"catalog: {where} has no item_id"
        columns["item_id"][i] = item_id
        uri = columns["image_uri"][i].strip()
        if not uri and status[i] == "ok":
            status[i], error[i] = "error", f"catalog: {where} ({item_id}) has no image_uri"
        columns["image_uri"][i] = _join(base, uri) if uri else ""
        if columns["style_image_uri"][i]:
            columns["style_image_uri"][i] = _join(base, columns["style_image_uri"][i])
    arrays = [pa.array(columns[c], pa.string()) for c in TEXT_COLUMNS]
    arrays += [pa.array(columns[c], pa.int64()) for c in COUNT_COLUMNS]
    arrays += [pa.array(status, pa.string()), pa.array(error, pa.string()), pa.array(positions, pa.int64())]
    return pa.Table.from_arrays(arrays, schema=CATALOG_SCHEMA)


def id_group(item_id: str) -> str:
    """The id whose bucket a row belongs to: ``a#dup1`` groups with ``a`` (so renames are checked locally)."""
    return _DUP_RE.sub("", item_id)


def id_bucket(item_id: str, buckets: int) -> int:
    """Stable bucket of an item id (the manifest's partition, and the resume/duplicate group)."""
    digest = hashlib.blake2b(id_group(item_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def validate_ids(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """Duplicate ``item_id``s among rows that hold every occurrence of their ids (a bucket, or a whole
    small catalog): the first occurrence by ``_pos`` stays; later ones become error rows with a new id."""
    if table.num_rows == 0:
        return table, []
    ids = table.column("item_id").to_pylist()
    positions = table.column("_pos").to_numpy()
    order = np.argsort(positions, kind="stable")
    counts: dict[str, int] = {}
    for item in ids:
        counts[item] = counts.get(item, 0) + 1
    if all(count == 1 for count in counts.values()):
        return table, []
    status = table.column("status").to_pylist()
    error = table.column("error").to_pylist()
    taken = set(ids)
    first: dict[str, int] = {}
    dups: dict[str, int] = {}
    problems = []
    for index in order:
        item = ids[index]
        if counts[item] == 1:
            continue
        position = int(positions[index])
        if item not in first:
            first[item] = position
            continue
        dups[item] = dups.get(item, 0) + 1
        renamed = f"{item}#dup{dups[item]}"
        while renamed in taken:
            dups[item] += 1
            renamed = f"{item}#dup{dups[item]}"
        taken.add(renamed)
        ids[index] = renamed
        status[index] = "error"
        error[index] = f"catalog: duplicate item_id {item!r} (first at {_where(first[item])})"
        problems.append(error[index])
    table = table.set_column(table.schema.get_field_index("item_id"), "item_id", pa.array(ids, pa.string()))
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    table = table.set_column(table.schema.get_field_index("error"), "error", pa.array(error, pa.string()))
    return table, problems


def _where(position: int) -> str:
    file_index, row = position >> ROW_BITS, position & ((1 << ROW_BITS) - 1)
    return f"row {row}" if file_index == 0 else f"file {file_index} row {row}"


def _base_of(uri: str, storage_options: dict[str, Any]) -> str:
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    return _protocol_prefix(fs) + posixpath.dirname(path)


def read_file_rows(
    file_index: int, uri: str, storage_options: dict[str, Any] | None = None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pa.Table]:
    """Normalised rows of one catalog file, chunk by chunk (what each Ray read task runs)."""
    options = dict(storage_options or {})
    base = _base_of(uri, options)
    row = 0
    for chunk in iter_file_chunks(uri, options, chunk_rows):
        yield normalise(chunk, base, file_index, row)
        row += chunk.num_rows


def _image_rows(images: pa.Table) -> pa.Table:
    return normalise(images, "", 0, 0)


def read_catalog(
    uri: str, storage_options: dict[str, Any] | None = None, limit: int | None = None
) -> Catalog:
    """Read and validate a (small) catalog in this process; stops after ``limit`` rows."""
    options = dict(storage_options or {})
    table, _ = validate_ids(read_catalog_rows(list_catalog(uri, options), options, limit))
    problems = [e for e in table.column("error").to_pylist() if e]
    _log_problems(problems)
    return Catalog(table.drop_columns(["_pos"]), uri, problems)


def read_catalog_rows(listing: CatalogFiles, options: dict[str, Any], limit: int | None = None) -> pa.Table:
    """Normalised rows (with ``_pos``, duplicates not yet resolved) read in this process."""
    tables: list[pa.Table] = []
    if listing.images is not None:
        images = listing.images if limit is None else listing.images.slice(0, limit)
        tables.append(_image_rows(images))
    else:
        remaining = limit
        for index, file in enumerate(listing.files):
            for chunk in read_file_rows(index, file, options):
                if remaining is not None:
                    chunk = chunk.slice(0, remaining)
                    remaining -= chunk.num_rows
                tables.append(chunk)
                if remaining == 0:
                    break
            if remaining == 0:
                break
    return pa.concat_tables(tables) if tables else CATALOG_SCHEMA.empty_table()


def _log_problems(problems: list[str]) -> None:
    for problem in problems[:20]:
        log.warning("%s", problem)
    if len(problems) > 20:
        log.warning("... and %d more catalog problems (see the manifest's error column)", len(problems) - 20)


# ---- the streaming read (Ray Data) ----


def _read_files_batch(batch: dict[str, np.ndarray], storage_options: dict[str, Any]) -> Iterator[pa.Table]:
    for file_index, uri in zip(batch["file_index"], batch["uri"], strict=True):
        yield from read_file_rows(int(file_index), str(uri), storage_options)


def catalog_dataset(listing: CatalogFiles, storage_options: dict[str, Any] | None = None) -> Any:
    """A lazy Ray Dataset of normalised catalog rows (:data:`CATALOG_SCHEMA`), one read task per file.

    Duplicate ids are not resolved yet: group rows by :func:`id_bucket` and apply :func:`validate_ids`.
    """
    import ray.data

    options = dict(storage_options or {})
    if listing.images is not None:
        return ray.data.from_arrow(_image_rows(listing.images))
    files: Any = ray.data.from_items([{"file_index": i, "uri": uri} for i, uri in enumerate(listing.files)])
    return files.map_batches(
        _read_files_batch,
        fn_kwargs={"storage_options": options},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.5,
    )
