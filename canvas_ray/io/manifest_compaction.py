"""Compaction: staging parts (and crowded buckets) folded into the manifest's buckets.

One bucket at a time (out of core), only the buckets the parts touch (incremental); on Ray Data (one
task per group of buckets) when Ray is up and the parts are big, else in this process. The layout is
described in :mod:`canvas_ray.io.manifest`.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from canvas_ray.io.catalog import id_bucket
from canvas_ray.io.manifest_parts import bucket_dir, latest_per_output, log, read_part
from canvas_ray.io.outputs import write_bytes
from canvas_ray.schema import MANIFEST_SCHEMA

if TYPE_CHECKING:
    from canvas_ray.io.manifest import Manifest

LOCAL_COMPACTION_BYTES = 32 * 2**20  # pending parts up to this size are merged in this process


def compact(manifest: Manifest, run_id: str, review_pages: Any = None) -> dict[str, int]:
    """Fold pending parts into their buckets (and heal buckets holding several files).

    Runs on Ray Data (one task per group of buckets) when Ray is initialised, else in this process.
    ``review_pages(bucket, table)`` is called with each rewritten bucket (review pages per bucket).
    """
    pending = manifest.pending_files()
    buckets = manifest.buckets() or manifest.ensure(0)
    crowded = [b for b, files in manifest.bucket_files().items() if len(files) > 1]
    if not pending and not crowded:
        return {"buckets_rewritten": 0, "parts": 0}
    started = time.perf_counter()
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        ray = None  # type: ignore[assignment]
    fs = manifest.fs
    pending_bytes = sum(int(fs.size(p) or 0) for p in pending) if len(pending) <= 256 else None
    small = pending_bytes is not None and pending_bytes <= LOCAL_COMPACTION_BYTES
    if ray is not None and ray.is_initialized() and not small:
        rewritten = compact_ray(manifest, pending, crowded, buckets, run_id, review_pages)
    else:
        rewritten = compact_local(manifest, pending, crowded, buckets, run_id, review_pages)
    for path in pending:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)
    for folder in (f"{manifest.path}/_staging", f"{manifest.path.rsplit('/', 1)[0]}/_parts"):
        if fs.exists(folder):
            fs.rm(folder, recursive=True)
    log.info(
        "manifest: %d parts merged into %d buckets in %.1f s",
        len(pending),
        rewritten,
        time.perf_counter() - started,
    )
    return {"buckets_rewritten": rewritten, "parts": len(pending)}


def compact_local(
    manifest: Manifest, pending: list[str], crowded: list[int], buckets: int, run_id: str, review_pages: Any
) -> int:
    by_bucket: dict[int, list[pa.Table]] = {b: [] for b in crowded}
    for path in pending:
        table = manifest.read_file(path)
        if table is None or table.num_rows == 0:
            continue
        ids = table.column("item_id").to_pylist()
        assigned = np.array([id_bucket(i, buckets) for i in ids])
        for bucket in np.unique(assigned):
            by_bucket.setdefault(int(bucket), []).append(table.filter(pa.array(assigned == bucket)))
    for bucket, tables in by_bucket.items():
        merge_bucket(manifest, bucket, pa.concat_tables(tables) if tables else None, run_id, review_pages)
    return len(by_bucket)


def compact_ray(
    manifest: Manifest, pending: list[str], crowded: list[int], buckets: int, run_id: str, review_pages: Any
) -> int:
    import ray.data

    root, options = manifest.root, manifest.storage_options
    parts: Any = ray.data.from_items([{"path": p} for p in pending])
    rows: Any = parts.map_batches(
        _read_parts_with_bucket,
        fn_kwargs={"root": root, "options": options, "buckets": buckets},
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
        fn_kwargs={"root": root, "options": options, "run_id": run_id, "review_pages": review_pages},
        batch_format="pyarrow",
        num_cpus=0.5,
    )
    return int(merged.count())


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
    placeholder = {name: [None] * len(buckets) for name in MANIFEST_SCHEMA.names}
    table = pa.Table.from_pydict(placeholder, schema=MANIFEST_SCHEMA)
    return table.append_column("_bucket", pa.array(buckets, pa.int64()))


def _read_parts_with_bucket(
    batch: dict[str, np.ndarray], root: str, options: dict[str, Any], buckets: int
) -> Iterator[pa.Table]:
    from canvas_ray.io.manifest import Manifest  # the facade imports this module

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
    from canvas_ray.io.manifest import Manifest  # the facade imports this module

    bucket = int(group.column("_bucket")[0].as_py())
    rows = group.drop_columns(["_bucket"]).filter(pc.is_valid(group.column("output_id")))
    count = merge_bucket(Manifest(root, options), bucket, rows, run_id, review_pages)
    return pa.table({"bucket": [bucket], "rows": [count]})
