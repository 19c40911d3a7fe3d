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

import contextlib
import hashlib
import io
import json
import posixpath
import time
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from canvas_ray.io.catalog import id_bucket
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.logs import get_logger
from canvas_ray.rows import describe
from canvas_ray.schema import DELIVERED, MANIFEST_SCHEMA, TIMING_COLUMNS, Status, split_error

log = get_logger(__name__)
VERSION = 2
ROWS_PER_BUCKET = 100_000  # target rows per bucket file (a few tens of MB with prompts and captions)
MAX_BUCKETS = 4096
LOCAL_COMPACTION_BYTES = 32 * 2**20  # pending parts up to this size are merged in this process
DONE_STATUSES = DELIVERED  # outputs a resume keeps; errors and rejections are tried again
LEGACY_FILES = ("manifest/manifest.parquet",)  # the single-file manifest of version 1, folded in


def bucket_dir(bucket: int) -> str:
    return f"bucket={bucket:05d}"


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
        schema = _schema(columns)
        if not tables:
            return schema.empty_table()
        table = pa.concat_tables(tables)
        return latest_per_output(table) if len(tables) > 1 else table

    def iter_batches(self, columns: list[str], batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Stream the compacted manifest (bounded memory), ``columns`` only."""
        for path in self.files():
            table = self.read_file(path, columns)
            if table is None:
                continue
            yield from table.to_batches(max_chunksize=batch_rows)

    def read(self) -> pa.Table:
        """The whole manifest as one table, staging parts included, newest row per output (small roots)."""
        paths = self.files() + self.pending_files()
        table = self._read_paths(paths)
        return latest_per_output(table)

    # ---- compaction ----

    def compact(self, run_id: str, review_pages: Any = None) -> dict[str, int]:
        """Fold pending parts into their buckets (and heal buckets holding several files).

        Runs on Ray Data (one task per group of buckets) when Ray is initialised, else in this process.
        ``review_pages(bucket, table)`` is called with each rewritten bucket (review pages per bucket).
        """
        pending = self.pending_files()
        buckets = self.buckets() or self.ensure(0)
        crowded = [b for b, files in self.bucket_files().items() if len(files) > 1]
        if not pending and not crowded:
            return {"buckets_rewritten": 0, "parts": 0}
        started = time.perf_counter()
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is a dependency
            ray = None  # type: ignore[assignment]
        pending_bytes = sum(int(self.fs.size(p) or 0) for p in pending) if len(pending) <= 256 else None
        small = pending_bytes is not None and pending_bytes <= LOCAL_COMPACTION_BYTES
        if ray is not None and ray.is_initialized() and not small:
            rewritten = self._compact_ray(pending, crowded, buckets, run_id, review_pages)
        else:
            rewritten = self._compact_local(pending, crowded, buckets, run_id, review_pages)
        for path in pending:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(path)
        for folder in (f"{self.path}/_staging", f"{self.path.rsplit('/', 1)[0]}/_parts"):
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
        log.info(
            "manifest: %d parts merged into %d buckets in %.1f s",
            len(pending),
            rewritten,
            time.perf_counter() - started,
        )
        return {"buckets_rewritten": rewritten, "parts": len(pending)}

    def _compact_local(
        self, pending: list[str], crowded: list[int], buckets: int, run_id: str, review_pages: Any
    ) -> int:
        by_bucket: dict[int, list[pa.Table]] = {b: [] for b in crowded}
        for path in pending:
            table = self.read_file(path)
            if table is None or table.num_rows == 0:
                continue
            ids = table.column("item_id").to_pylist()
            assigned = np.array([id_bucket(i, buckets) for i in ids])
            for bucket in np.unique(assigned):
                by_bucket.setdefault(int(bucket), []).append(table.filter(pa.array(assigned == bucket)))
        for bucket, tables in by_bucket.items():
            merge_bucket(self, bucket, pa.concat_tables(tables) if tables else None, run_id, review_pages)
        return len(by_bucket)

    def _compact_ray(
        self, pending: list[str], crowded: list[int], buckets: int, run_id: str, review_pages: Any
    ) -> int:
        import ray.data

        parts: Any = ray.data.from_items([{"path": p} for p in pending])
        rows: Any = parts.map_batches(
            _read_parts_with_bucket,
            fn_kwargs={"root": self.root, "options": self.storage_options, "buckets": buckets},
            batch_size=8,
            batch_format="numpy",
            num_cpus=0.5,
        )
        if crowded:  # buckets to heal get an empty group of their own
            heal = ray.data.from_arrow(_empty_rows(crowded))
            rows = rows.union(heal)
        groups = min(max(1, buckets), 64)
        merged = rows.groupby("_bucket", num_partitions=groups).map_groups(
            _merge_group,
            fn_kwargs={
                "root": self.root,
                "options": self.storage_options,
                "run_id": run_id,
                "review_pages": review_pages,
            },
            batch_format="pyarrow",
            num_cpus=0.5,
        )
        return int(merged.count())


def _schema(columns: list[str] | None) -> pa.Schema:
    if columns is None:
        return MANIFEST_SCHEMA
    return pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])


def read_part(fs: Any, path: str, columns: list[str] | None = None) -> pa.Table | None:
    schema = _schema(columns)
    try:
        with fs.open(path, "rb") as handle:
            data = handle.read()
        parquet = pq.ParquetFile(io.BytesIO(data))
        present = set(parquet.schema_arrow.names)
        table = parquet.read(columns=[c for c in schema.names if c in present])
    except Exception as error:  # noqa: BLE001 - a torn part from a killed run is skipped, its rows redone
        log.warning(
            "skipping unreadable manifest part %s (%s); its items will be redone", path, describe(error)
        )
        return None
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def latest_per_output(table: pa.Table) -> pa.Table:
    """Newest row (by ``finished_at``) per ``output_id``, sorted by item and output."""
    if table.num_rows == 0:
        return table
    finished = pc.fill_null(table.column("finished_at"), 0.0) if "finished_at" in table.column_names else None
    keyed = table.append_column("_finished", finished) if finished is not None else table
    order = pc.sort_indices(
        keyed, sort_keys=[("output_id", "ascending")] + ([("_finished", "ascending")] if finished else [])
    )
    keyed = keyed.take(order)
    ids = keyed.column("output_id").to_numpy(zero_copy_only=False)
    keep = np.ones(len(ids), dtype=bool)
    keep[:-1] = ids[1:] != ids[:-1]
    latest = keyed.filter(pa.array(keep))
    if finished is not None:
        latest = latest.drop_columns(["_finished"])
    order = pc.sort_indices(latest, sort_keys=[("item_id", "ascending"), ("output_id", "ascending")])
    return latest.take(order)


def merge_bucket(
    manifest: Manifest, bucket: int, new_rows: pa.Table | None, run_id: str, review_pages: Any = None
) -> int:
    """Old rows of ``bucket`` + ``new_rows`` → one file, newest row per output; returns its row count."""
    fs = manifest.fs
    folder = f"{manifest.path}/{bucket_dir(bucket)}"
    manifest._invalidate()
    old = (
        sorted(
            f
            for f in fs.ls(folder, detail=False)
            if f.endswith(".parquet") and not posixpath.basename(f).startswith(("_", "."))
        )
        if fs.exists(folder)
        else []
    )
    tables = [t for t in (read_part(fs, p) for p in old) if t is not None]
    if new_rows is not None and new_rows.num_rows:
        tables.append(new_rows.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA))
    merged = latest_per_output(pa.concat_tables(tables)) if tables else MANIFEST_SCHEMA.empty_table()
    name = f"part-{run_id}.parquet"
    target = f"{folder}/{name}"
    if target in old:  # merged twice in one run: a fresh name keeps the replace atomic
        name = f"part-{run_id}-{time.time_ns()}.parquet"
        target = f"{folder}/{name}"
    buffer = io.BytesIO()
    pq.write_table(merged, buffer, compression="zstd")
    write_bytes(
        f"{manifest.root}/manifest/{bucket_dir(bucket)}/{name}", buffer.getvalue(), manifest.storage_options
    )
    for path in old:
        if path != target:
            fs.rm(path)
    if review_pages is not None:
        review_pages(bucket, merged)
    return merged.num_rows


def _empty_rows(buckets: list[int]) -> pa.Table:
    table = MANIFEST_SCHEMA.empty_table()
    placeholder = {name: [None] * len(buckets) for name in MANIFEST_SCHEMA.names}
    table = pa.Table.from_pydict(placeholder, schema=MANIFEST_SCHEMA)
    return table.append_column("_bucket", pa.array(buckets, pa.int64()))


def _read_parts_with_bucket(
    batch: dict[str, np.ndarray], root: str, options: dict[str, Any], buckets: int
) -> Iterator[pa.Table]:
    manifest = Manifest(root, options)
    for path in batch["path"]:
        table = manifest.read_file(str(path))
        if table is None or table.num_rows == 0:
            continue
        assigned = [id_bucket(i, buckets) for i in table.column("item_id").to_pylist()]
        yield table.append_column("_bucket", pa.array(assigned, pa.int64()))


def _merge_group(
    group: pa.Table, root: str, options: dict[str, Any], run_id: str, review_pages: Any
) -> pa.Table:
    """map_groups: merge one bucket's new rows (a row without output_id only asks to heal the bucket)."""
    bucket = int(group.column("_bucket")[0].as_py())
    rows = group.drop_columns(["_bucket"]).filter(pc.is_valid(group.column("output_id")))
    count = merge_bucket(Manifest(root, options), bucket, rows, run_id, review_pages)
    return pa.table({"bucket": [bucket], "rows": [count]})


# ---- aggregation over the compacted manifest (streaming, bounded memory) ----



class _Reservoir:
    """A fixed-size uniform sample of a stream of numbers (for medians of millions of rows)."""

    def __init__(self, size: int = 100_000, seed: int = 0):
        self.size, self.seen, self.values = size, 0, np.empty(size)
        self.random = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        room = max(0, min(self.size - self.seen, len(values)))
        self.values[self.seen : self.seen + room] = values[:room]
        rest = values[room:]
        if len(rest):  # algorithm R, vectorised: value t replaces a random slot with chance size / (t + 1)
            positions = self.seen + room + np.arange(len(rest))
            slots = self.random.integers(0, positions + 1)
            chosen = slots < self.size
            self.values[slots[chosen]] = rest[chosen]
        self.seen += len(values)

    def median(self) -> float | None:
        count = min(self.seen, self.size)
        return round(float(np.median(self.values[:count])), 4) if count else None


def summarise(manifest: Manifest) -> dict[str, Any]:
    """Counts and figures of the compacted manifest, by streaming its files once."""
    columns = [
        "item_id",
        "status",
        "error",
        "error_stage",
        "product_preserved",
        "expansion_ratio",
        "quality_score",
        *TIMING_COLUMNS,
    ]
    optional = [c for c in ("mask_confidence",) if c in MANIFEST_SCHEMA.names]
    columns += optional + ["profile", "compliant"]
    by_profile: dict[str, dict[str, int]] = {}
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    sums = dict.fromkeys(TIMING_COLUMNS, 0.0)
    sum_counts = dict.fromkeys(TIMING_COLUMNS, 0)
    preserved = 0
    expansion, quality, confidence = _Reservoir(), _Reservoir(seed=1), _Reservoir(seed=2)
    expansion_max: float | None = None
    rows = 0
    for batch in manifest.iter_batches(columns):
        rows += batch.num_rows
        table = pa.Table.from_batches([batch])
        for entry in pc.value_counts(table.column("status")).to_pylist():
            counts[entry["values"]] = counts.get(entry["values"], 0) + entry["counts"]
        ok = table.filter(pc.equal(table.column("status"), "ok"))
        preserved += int(
            pc.sum(pc.cast(pc.fill_null(ok.column("product_preserved"), False), pa.int64())).as_py() or 0
        )
        for column in TIMING_COLUMNS:
            values = ok.column(column).drop_null()
            sums[column] += float(pc.sum(values).as_py() or 0.0)
            sum_counts[column] += len(values)
        values = ok.column("expansion_ratio").drop_null().to_numpy()
        expansion.add(values)
        if len(values):
            expansion_max = max(expansion_max or 0.0, float(values.max()))
        quality.add(ok.column("quality_score").drop_null().to_numpy())
        if optional:
            confidence.add(table.column("mask_confidence").drop_null().to_numpy())
        _count_profiles(table, by_profile)
        bad = table.filter(pc.not_equal(table.column("status"), "ok"))
        for entry in pc.value_counts(bad.column("error_stage")).to_pylist():
            if entry["values"] is not None:
                reasons[entry["values"]] = reasons.get(entry["values"], 0) + entry["counts"]
        legacy = bad.filter(pc.is_null(bad.column("error_stage")))  # rows written before error_stage
        for error in legacy.column("error").to_pylist():
            stage = split_error(error or "")[0] or "unknown"
            reasons[stage] = reasons.get(stage, 0) + 1
    summary: dict[str, Any] = {
        "outputs": rows,
        "ok": counts.get("ok", 0),
        "review": counts.get("review", 0),
        "rejected": counts.get("rejected", 0),
        "errors": rows - counts.get("ok", 0) - counts.get("review", 0) - counts.get("rejected", 0),
        "errors_by_stage": dict(sorted(reasons.items())),
        "expansion_ratio_p50": expansion.median(),
        "expansion_ratio_max": round(expansion_max, 4) if expansion_max is not None else None,
        "quality_score_p50": quality.median(),
        "mask_confidence_p50": confidence.median() if optional else None,
        "product_preserved": preserved,
        "mean_stage_seconds_per_output": {
            c.removesuffix("_s"): round(sums[c] / sum_counts[c], 4) if sum_counts[c] else None
            for c in TIMING_COLUMNS
        },
        "profiles": dict(sorted(by_profile.items())),
    }
    return summary


def _count_profiles(table: pa.Table, by_profile: dict[str, dict[str, int]]) -> None:
    """Per output profile: outputs, statuses, and how many were checked compliant / not compliant."""
    profiled = table.filter(pc.fill_null(pc.not_equal(table.column("profile"), ""), False))
    if not profiled.num_rows:
        return
    compliant = pc.cast(profiled.column("compliant"), pa.string())
    keyed = pa.table(
        {
            "profile": profiled.column("profile"),
            "status": profiled.column("status"),
            "compliant": pc.fill_null(compliant, "unchecked"),
        }
    )
    for row in (
        keyed.group_by(["profile", "status", "compliant"]).aggregate([("status", "count")]).to_pylist()
    ):
        entry = by_profile.setdefault(
            row["profile"],
            {
                "outputs": 0,
                "ok": 0,
                "review": 0,
                "rejected": 0,
                "errors": 0,
                "compliant": 0,
                "not_compliant": 0,
            },
        )
        n = int(row["status_count"])
        entry["outputs"] += n
        status = row["status"] if row["status"] in (*DELIVERED, Status.REJECTED.value) else "errors"
        entry[status] += n
        if row["compliant"] == "true":
            entry["compliant"] += n
        elif row["compliant"] == "false":
            entry["not_compliant"] += n


def part_name(output_ids: list[str]) -> str:
    """Staging part file name: the hash of the ids it holds (a retried task rewrites the same file)."""
    return hashlib.sha256("\n".join(sorted(output_ids)).encode()).hexdigest()[:24] + ".parquet"


def export(manifest: Manifest, destination: str, storage_options: dict[str, Any] | None = None) -> int:
    """Write the manifest as one consolidated Parquet file (streamed, bounded memory); returns rows."""
    rows = 0
    with fsspec.open(destination, "wb", **(storage_options or {})) as handle:
        writer = pq.ParquetWriter(handle, MANIFEST_SCHEMA, compression="zstd")
        for batch in manifest.iter_batches(list(MANIFEST_SCHEMA.names)):
            writer.write_batch(batch)
            rows += batch.num_rows
        writer.close()
    return rows


def read_manifest(root: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """The whole manifest of ``root`` as one table (small outputs: tests, evaluation, the CLI)."""
    return Manifest(root, storage_options).read()


def compact_manifest(
    root: str, storage_options: dict[str, Any] | None = None, run_id: str = "compact"
) -> pa.Table:
    """Fold pending parts into buckets and return the manifest (small outputs)."""
    manifest = Manifest(root, storage_options)
    manifest.compact(run_id)
    return manifest.read()
