"""Manifest files, one at a time: staging parts written by a run, any part or bucket file read back.

- :func:`write_staging_part` is the one writer of manifest parts (the batch job's manifest step and
  :class:`~canvas_ray.io.outputs.WriteOutputs` both call it): a table of :data:`MANIFEST_SCHEMA` rows →
  ``OUTPUT/manifest/_staging/<run>/<hash of its output ids>.parquet``, written atomically where the
  filesystem allows, so a retried task rewrites the same file.
- :func:`read_part` / :func:`iter_part_batches` read a part or bucket file in :data:`MANIFEST_SCHEMA`
  order (missing columns as nulls), skipping torn files; :func:`latest_per_output` keeps the newest row
  of each output.

The layout of the whole manifest (buckets, compaction, readers) is :mod:`canvas_ray.io.manifest`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.logs import get_logger
from canvas_ray.rows import describe
from canvas_ray.schema import MANIFEST_SCHEMA

log = get_logger("canvas_ray.io.manifest")  # one logger name for the whole manifest


def bucket_dir(bucket: int) -> str:
    return f"bucket={bucket:05d}"


def part_name(output_ids: list[str]) -> str:
    """Staging part file name: the hash of the ids it holds (a retried task rewrites the same file)."""
    return hashlib.sha256("\n".join(sorted(output_ids)).encode()).hexdigest()[:24] + ".parquet"


def staging_part_uri(root: str, run_id: str, output_ids: list[str]) -> str:
    """Where the staging part holding ``output_ids`` of run ``run_id`` goes under output root ``root``."""
    return join_uri(root, "manifest", "_staging", run_id, part_name(output_ids))


def write_staging_part(
    table: pa.Table, root: str, run_id: str, storage_options: dict[str, Any] | None = None
) -> str | None:
    """Write ``table`` (manifest rows) as one staging part of ``root``'s manifest; its URI, None if empty.

    Args:
        table (`pa.Table`): rows of :data:`MANIFEST_SCHEMA` (an ``output_id`` column at least).
        root (`str`): the output root (any fsspec URI).
        run_id (`str`): the run writing it (parts are kept per run until compaction).
        storage_options (`dict`, *optional*): fsspec options of ``root``.
    """
    if not table.num_rows:
        return None
    uri = staging_part_uri(root, run_id, table.column("output_id").to_pylist())
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    write_bytes(uri, buffer.getvalue().to_pybytes(), dict(storage_options or {}))
    return uri


def schema_of(columns: list[str] | None) -> pa.Schema:
    if columns is None:
        return MANIFEST_SCHEMA
    return pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in order and cast (missing ones as nulls)."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def _skip(path: str, error: Exception) -> None:
    log.warning("skipping unreadable manifest part %s (%s); its items will be redone", path, describe(error))


def read_part(fs: Any, path: str, columns: list[str] | None = None) -> pa.Table | None:
    """One part or bucket file in :data:`MANIFEST_SCHEMA` order (missing columns as nulls).

    None if the file is torn (a killed run on a filesystem without atomic writes)."""
    schema = schema_of(columns)
    try:
        with fs.open(path, "rb") as handle:
            data = handle.read()
        parquet = pq.ParquetFile(io.BytesIO(data))
        present = set(parquet.schema_arrow.names)
        table = parquet.read(columns=[c for c in schema.names if c in present])
    except Exception as error:  # noqa: BLE001 - a torn part from a killed run is skipped, its rows redone
        _skip(path, error)
        return None
    return conform(table, schema)


def iter_part_batches(fs: Any, path: str, columns: list[str], batch_rows: int) -> Iterator[pa.Table]:
    """One file's rows as tables of at most ``batch_rows`` rows, ``columns`` only (conformed as in
    :func:`read_part`), read row group by row group: memory is bounded by the batch, not the file."""
    schema = schema_of(columns)
    with fs.open(path, "rb") as handle:
        try:
            parquet = pq.ParquetFile(handle)
            present = set(parquet.schema_arrow.names)
            names = [c for c in schema.names if c in present]
            batches = parquet.iter_batches(batch_size=batch_rows, columns=names)
        except Exception as error:  # noqa: BLE001 - as read_part: a torn file is skipped
            _skip(path, error)
            return
        for batch in batches:
            yield conform(pa.Table.from_batches([batch]), schema)


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
