"""The manifest: one row per requested output, as a bucketed Parquet dataset that scales.

```
OUTPUT/manifest/_manifest.json                      {"version": 2, "buckets": B}
OUTPUT/manifest/bucket=00042/part-<run>.parquet     every row of the items whose id hashes to bucket 42
OUTPUT/manifest/_staging/<run>/<hash>.parquet       rows written while a run is going (the crash log)
```
- **Buckets** partition rows by a stable hash of ``item_id`` (:func:`canvas_ray.io.catalog.id_bucket`), so
  every output of an item, and every row of an ``output_id``, lives in exactly one bucket. The bucket
  count is fixed when an output root is created (sized for tens of MB per file) and recorded in
  ``_manifest.json``.
- **While a run goes**, parts are appended under ``_staging/<run>/`` (named by the hash of the output ids
  they hold, written atomically where the filesystem allows), so a killed run loses only the rows not
  yet flushed, and a retried task rewrites the same file.
- **Compaction** (end of every run, or the next run after a crash) merges staging parts into the buckets
  they touch, one bucket at a time (in parallel Ray tasks when Ray is up): old rows + new rows, newest
  row per ``output_id``, written as a new file that replaces the bucket's old files. It is incremental
  (untouched buckets are not read) and out of core (one bucket in memory at a time).
- **Readers** see exactly one row per output in the ``bucket=*`` files: ``pyarrow.dataset``, Ray Data,
  DuckDB (``read_parquet('OUTPUT/manifest/bucket=*/*.parquet')``) and pandas read it as one table.
  Names starting with ``_`` are ignored by those readers. A crash between writing a bucket's new file
  and deleting its old ones can leave two files in a bucket for a moment; :func:`read_manifest` and the
  next compaction resolve it (newest row wins).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from canvas_ray.io.catalog import id_bucket
from canvas_ray.io.manifest_compaction import (
    LOCAL_COMPACTION_BYTES,
    compact,
    compact_local,
    compact_ray,
    merge_bucket,
)
from canvas_ray.io.manifest_parts import (
    bucket_dir,
    iter_part_batches,
    latest_per_output,
    part_name,
    read_part,
    schema_of,
    staging_part_uri,
    write_staging_part,
)
from canvas_ray.io.manifest_summary import Reservoir, export, summarise
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.schema import DELIVERED, MANIFEST_SCHEMA

__all__ = [
    "DONE_STATUSES",
    "LOCAL_COMPACTION_BYTES",
    "MANIFEST_SCHEMA",
    "SCAN_BATCH_ROWS",
    "Manifest",
    "Reservoir",
    "bucket_dir",
    "buckets_for",
    "compact_manifest",
    "export",
    "latest_per_output",
    "merge_bucket",
    "part_name",
    "read_manifest",
    "read_part",
    "staging_part_uri",
    "summarise",
    "write_staging_part",
]

VERSION = 2
ROWS_PER_BUCKET = 100_000  # target rows per bucket file (a few tens of MB with prompts and captions)
MAX_BUCKETS = 4096
SCAN_BATCH_ROWS = 65_536  # rows per batch of Manifest.scan / iter_batches
DONE_STATUSES = DELIVERED  # outputs a resume keeps; errors and rejections are tried again
LEGACY_FILES = ("manifest/manifest.parquet",)  # the single-file manifest of version 1, folded in
_KEYS = ("item_id", "output_id", "finished_at")  # what newest-row-per-output needs


def buckets_for(rows: int, rows_per_bucket: int = ROWS_PER_BUCKET) -> int:
    """Power-of-two bucket count for about ``rows`` manifest rows."""
    wanted = max(1, -(-rows // rows_per_bucket))
    return min(MAX_BUCKETS, 1 << (wanted - 1).bit_length())


class Manifest:
    """The manifest of one output root, on any fsspec filesystem."""

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = fsspec.core.url_to_fs(join_uri(self.root, "manifest"), **self.storage_options)
        self.path = self.path.rstrip("/")
        self._buckets: int | None = None

    # ---- layout ----

    @property
    def staging(self) -> str:
        return join_uri(self.root, "manifest", "_staging")

    def _invalidate(self) -> None:
        if hasattr(self.fs, "invalidate_cache"):
            self.fs.invalidate_cache()

    def buckets(self) -> int | None:
        """The bucket count of this root, or None if no manifest has been written yet."""
        if self._buckets is None:
            meta = f"{self.path}/_manifest.json"
            self._invalidate()
            if self.fs.exists(meta):
                with self.fs.open(meta, "rb") as handle:
                    self._buckets = int(json.loads(handle.read())["buckets"])
        return self._buckets

    def ensure(self, expected_rows: int, rows_per_bucket: int = ROWS_PER_BUCKET) -> int:
        """The bucket count, choosing and recording one for a new root."""
        existing = self.buckets()
        if existing is not None:
            return existing
        count = buckets_for(expected_rows, rows_per_bucket)
        write_bytes(
            f"{self.root}/manifest/_manifest.json",
            json.dumps({"version": VERSION, "buckets": count}).encode(),
            self.storage_options,
        )
        self._buckets = count
        return count

    def bucket_files(self) -> dict[int, list[str]]:
        """Bucket → its Parquet files (filesystem paths). Lists names only."""
        self._invalidate()
        out: dict[int, list[str]] = {}
        if not self.fs.exists(self.path):
            return out
        for entry in self.fs.ls(self.path, detail=False):
            name = posixpath.basename(entry.rstrip("/"))
            if not name.startswith("bucket="):
                continue
            files = [
                f
                for f in self.fs.ls(entry, detail=False)
                if f.endswith(".parquet") and not posixpath.basename(f).startswith(("_", "."))
            ]
            if files:
                out[int(name.split("=", 1)[1])] = sorted(files)
        return out

    def files(self) -> list[str]:
        return [f for files in self.bucket_files().values() for f in files]

    def pending_files(self) -> list[str]:
        """Staging parts (this run's and crashed runs') and legacy files, not yet in buckets."""
        self._invalidate()
        found: list[str] = []
        staging = f"{self.path}/_staging"
        if self.fs.exists(staging):
            found += sorted(p for p in self.fs.find(staging) if p.endswith(".parquet"))
        root_path = self.path.rsplit("/", 1)[0]
        for legacy in LEGACY_FILES:
            if self.fs.exists(f"{root_path}/{legacy}"):
                found.append(f"{root_path}/{legacy}")
        legacy_parts = f"{root_path}/_parts"
        if self.fs.exists(legacy_parts):
            found += sorted(p for p in self.fs.find(legacy_parts) if p.endswith(".parquet"))
        return found

    # ---- reading ----

    def read_file(self, path: str, columns: list[str] | None = None) -> pa.Table | None:
        """One part or bucket file in :data:`MANIFEST_SCHEMA` order (missing columns as nulls).

        None if the file is torn (a killed run on a filesystem without atomic writes)."""
        return read_part(self.fs, path, columns)

    def read_bucket(self, bucket: int, columns: list[str] | None = None) -> pa.Table:
        files = self.bucket_files().get(bucket, [])
        return self._read_paths(files, columns)

    def _read_paths(self, paths: list[str], columns: list[str] | None = None) -> pa.Table:
        tables = [t for t in (self.read_file(p, columns) for p in paths) if t is not None]
        schema = schema_of(columns)
        if not tables:
            return schema.empty_table()
        table = pa.concat_tables(tables)
        return latest_per_output(table) if len(tables) > 1 else table

    def iter_batches(self, columns: list[str], batch_rows: int = SCAN_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Stream the compacted manifest (bounded memory), ``columns`` only."""
        for path in self.files():
            table = self.read_file(path, columns)
            if table is None:
                continue
            yield from table.to_batches(max_chunksize=batch_rows)

    def scan(self, columns: list[str], batch_rows: int = SCAN_BATCH_ROWS) -> Iterator[tuple[int, pa.Table]]:
        """Every output's newest row (as :meth:`read`: staging parts included), ``columns`` only, as
        ``(bucket, table)`` pairs of at most ``batch_rows`` rows, bucket by bucket in bucket order; rows
        of a bucket in ``(item_id, output_id)`` order.

        Bounded memory: a compacted bucket (one file) streams row group by row group; a bucket with
        several files or with pending staging rows is merged in memory, one bucket at a time. Pending
        rows (a running or crashed run's staging parts, legacy files) are read first, ``columns`` only.
        """
        wanted = list(dict.fromkeys(columns))
        needed = list(dict.fromkeys([*wanted, *_KEYS]))
        files = self.bucket_files()
        pending = self._pending_by_bucket(needed)
        for bucket in sorted(set(files) | set(pending)):
            paths = files.get(bucket, [])
            if len(paths) == 1 and bucket not in pending:
                for table in iter_part_batches(self.fs, paths[0], wanted, batch_rows):
                    yield bucket, table
                continue
            tables = [t for t in (self.read_file(p, needed) for p in paths) if t is not None]
            tables += pending.get(bucket, [])
            if not tables:
                continue
            merged = latest_per_output(pa.concat_tables(tables)).select(wanted)
            for batch in merged.to_batches(max_chunksize=batch_rows):
                yield bucket, pa.Table.from_batches([batch], schema=merged.schema)

    def _pending_by_bucket(self, columns: list[str]) -> dict[int, list[pa.Table]]:
        """Pending rows (``columns``) by the bucket compaction will put them in."""
        buckets = self.buckets() or 1
        out: dict[int, list[pa.Table]] = {}
        for path in self.pending_files():
            table = self.read_file(path, columns)
            if table is None or table.num_rows == 0:
                continue
            assigned = pa.array([id_bucket(i, buckets) for i in table.column("item_id").to_pylist()])
            for bucket in pc.unique(assigned).to_pylist():
                out.setdefault(bucket, []).append(table.filter(pc.equal(assigned, bucket)))
        return out

    def read(self) -> pa.Table:
        """The whole manifest as one table, staging parts included, newest row per output (small roots)."""
        paths = self.files() + self.pending_files()
        table = self._read_paths(paths)
        return latest_per_output(table)

    # ---- compaction ----

    def compact(self, run_id: str, review_pages: Any = None) -> dict[str, int]:
        """Fold pending parts into their buckets (:func:`canvas_ray.io.manifest_compaction.compact`)."""
        return compact(self, run_id, review_pages)

    def _compact_local(
        self, pending: list[str], crowded: list[int], buckets: int, run_id: str, review_pages: Any
    ) -> int:
        return compact_local(self, pending, crowded, buckets, run_id, review_pages)

    def _compact_ray(
        self, pending: list[str], crowded: list[int], buckets: int, run_id: str, review_pages: Any
    ) -> int:
        return compact_ray(self, pending, crowded, buckets, run_id, review_pages)


def read_manifest(root: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """The whole manifest of ``root`` as one table (small outputs: tests, the CLI; evaluation streams
    with :meth:`Manifest.scan`)."""
    return Manifest(root, storage_options).read()


def compact_manifest(
    root: str, storage_options: dict[str, Any] | None = None, run_id: str = "compact"
) -> pa.Table:
    """Fold pending parts into buckets and return the manifest (small outputs)."""
    manifest = Manifest(root, storage_options)
    manifest.compact(run_id)
    return manifest.read()
