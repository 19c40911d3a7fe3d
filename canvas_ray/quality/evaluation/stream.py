"""Streaming over a manifest for evaluation: batches in bounded memory, and accumulators that give the
same figures as a computation over the whole table.

A *source* is a :class:`~canvas_ray.io.manifest.Manifest` (streamed bucket by bucket with
:meth:`~canvas_ray.io.manifest.Manifest.scan`, in batches of at most ``batch_rows`` rows) or a
``pa.Table`` already in memory (tests, small callers). "First" means first in the order a whole-table
read gives: row order for a table, ``(item_id, output_id)`` for a manifest (what
:func:`~canvas_ray.io.manifest.read_manifest` returns), so ties break as they did before streaming.

Percentiles come from a :class:`~canvas_ray.io.manifest_summary.Reservoir` that holds every value up to
:data:`EXACT_VALUES` per figure (exact below that, a uniform sample above it); counts, sums (correctly
rounded, so independent of row order), minima and maxima are always exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from canvas_ray.io.manifest import SCAN_BATCH_ROWS, Manifest
from canvas_ray.io.manifest_summary import Reservoir
from canvas_ray.schema import MANIFEST_SCHEMA

EXACT_VALUES = 1_000_000  # values per figure held for exact percentiles (8 MB); sampled beyond
BATCH_ROWS = SCAN_BATCH_ROWS  # rows per batch evaluation reads
Source: TypeAlias = pa.Table | Manifest


@dataclass
class Chunk:
    """A batch of a source: ``bucket`` (0 for a table), its rows, and where they sit in the source."""

    bucket: int
    table: pa.Table
    offset: int  # rows of the source before this batch
    by_position: bool  # a table source: "first" is row order; a manifest: (item_id, output_id) order

    def orders(self, indices: np.ndarray | list[int]) -> list[tuple[Any, ...]]:
        """Sort keys of rows ``indices`` in the order of a whole-table read."""
        if self.by_position:
            return [(self.offset + int(i),) for i in indices]
        taken = self.table.select(["item_id", "output_id"]).take(pa.array(indices, pa.int64()))
        return [
            (item or "", output or "")
            for item, output in zip(taken["item_id"].to_pylist(), taken["output_id"].to_pylist(), strict=True)
        ]

    def ranked(self, indices: np.ndarray) -> np.ndarray:
        """``indices`` (ascending) reordered as a whole-table read orders their rows."""
        if self.by_position or len(indices) < 2:
            return indices
        keys = self.table.select(["item_id", "output_id"]).take(pa.array(indices, pa.int64()))
        keys = pa.table({name: pc.fill_null(keys[name], "") for name in keys.column_names})
        order = pc.sort_indices(keys, sort_keys=[("item_id", "ascending"), ("output_id", "ascending")])
        return indices[order.to_numpy()]

    def first(self, mask: np.ndarray) -> int:
        """The row that comes first, in the order of a whole-table read, among rows ``mask``."""
        return int(self.ranked(np.flatnonzero(mask))[0])


def chunks(source: Source, columns: list[str], batch_rows: int | None = None) -> Iterator[Chunk]:
    """``source`` as :class:`Chunk`s of at most ``batch_rows`` rows, ``columns`` only (missing ones as
    nulls); a manifest also gets ``item_id`` and ``output_id`` (for :meth:`Chunk.order`)."""
    batch_rows = batch_rows or BATCH_ROWS
    offset = 0
    if isinstance(source, pa.Table):
        table = source
        for name in columns:
            if name not in table.column_names:
                kind = MANIFEST_SCHEMA.field(name).type if name in MANIFEST_SCHEMA.names else pa.null()
                table = table.append_column(pa.field(name, kind), pa.nulls(table.num_rows, kind))
        table = table.select(list(dict.fromkeys(columns)))
        for batch in table.to_batches(max_chunksize=batch_rows):
            if not batch.num_rows:
                continue
            yield Chunk(0, pa.Table.from_batches([batch], schema=table.schema), offset, True)
            offset += batch.num_rows
        return
    wanted = list(dict.fromkeys([*columns, "item_id", "output_id"]))
    for bucket, part in source.scan(wanted, batch_rows):
        if not part.num_rows:
            continue
        yield Chunk(bucket, part, offset, False)
        offset += part.num_rows


def numbers(table: pa.Table, column: str, mask: np.ndarray | None = None) -> np.ndarray:
    """Finite values of ``column`` (rows where ``mask``) as float64: nulls, NaN, inf and booleans dropped,
    as :func:`~canvas_ray.quality.evaluation.metrics.as_number` does row by row."""
    array = floats(table, column)
    if mask is not None:
        array = array[mask]
    return array[np.isfinite(array)]


def floats(table: pa.Table, column: str) -> np.ndarray:
    """``column`` as float64, one value per row: NaN where it is null, not finite or not a number."""
    if column not in table.column_names:
        return np.full(table.num_rows, np.nan)
    values = table.column(column)
    if pa.types.is_boolean(values.type) or pa.types.is_null(values.type):
        return np.full(table.num_rows, np.nan)
    array = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    array[~np.isfinite(array)] = np.nan
    return array


def is_status(table: pa.Table, *statuses: str) -> np.ndarray:
    """Boolean mask of the rows whose status is one of ``statuses``."""
    found = pc.is_in(table.column("status"), value_set=pa.array(statuses, pa.string()))
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


class Sum:
    """A sum of a stream of floats, correctly rounded whatever the order or chunking (Shewchuk's exact
    partials kept as three non-overlapping floats between chunks), and its count."""

    def __init__(self) -> None:
        self.terms: list[float] = []
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        terms = self.terms + values.tolist()
        high = math.fsum(terms)
        middle = math.fsum([*terms, -high])
        self.terms = [high, middle, math.fsum([*terms, -high, -middle])]
        self.n += len(values)

    def mean(self) -> float | None:
        return math.fsum(self.terms) / self.n if self.n else None


class Figure:
    """One column's values over a stream: exact count, mean, min and max; percentiles from a reservoir."""

    def __init__(self, seed: int = 0, exact: int = EXACT_VALUES):
        self.sum = Sum()
        self.low, self.high = math.inf, -math.inf
        self.reservoir = Reservoir(exact, seed)

    @property
    def n(self) -> int:
        return self.sum.n

    def add(self, values: np.ndarray) -> None:
        if not len(values):
            return
        self.sum.add(values)
        self.low, self.high = min(self.low, float(values.min())), max(self.high, float(values.max()))
        self.reservoir.add(values)

    def percentiles(self, quantiles: list[float]) -> list[float]:
        return [float(v) for v in np.percentile(self.reservoir.sample(), quantiles)]


class FirstSeenCounter:
    """Counts per key, each key's first row (by :meth:`Chunk.order`) and a value from that row; ordered as
    ``collections.Counter.most_common`` orders keys counted over the whole table (ties: first seen)."""

    def __init__(self) -> None:
        self.counts: dict[Any, int] = {}
        self.first: dict[Any, tuple[tuple[Any, ...], Any]] = {}

    def add(self, key: Any, count: int, order: tuple[Any, ...], example: Any = None) -> None:
        self.counts[key] = self.counts.get(key, 0) + count
        seen = self.first.get(key)
        if seen is None or order < seen[0]:
            self.first[key] = (order, example)

    def example(self, key: Any) -> Any:
        return self.first[key][1]

    def most_common(self, limit: int | None = None) -> list[tuple[Any, int]]:
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], self.first[kv[0]][0]))
        return ranked if limit is None else ranked[:limit]


class Smallest:
    """The ``k`` items with the smallest keys (the largest when ``largest``) over a stream, in key order
    (smallest first, or largest first). Keys are unique: they end in a row's :meth:`Chunk.order`."""

    def __init__(self, k: int, largest: bool = False):
        self.k, self.largest = k, largest
        self.items: list[tuple[tuple[Any, ...], Any]] = []

    def add(self, key: tuple[Any, ...], item: Any) -> None:
        self.items.append((key, item))
        if len(self.items) >= 2 * self.k + 64:
            self._trim()

    def _trim(self) -> None:
        self.items = sorted(self.items, key=lambda pair: pair[0], reverse=self.largest)[: self.k]

    def result(self) -> list[Any]:
        self._trim()
        return [item for _, item in self.items]


def candidates(values: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Indices of ``values`` that can be among the ``k`` largest (or smallest), ties included."""
    if k <= 0 or not len(values):
        return np.empty(0, dtype=np.int64)
    if len(values) <= k:
        return np.arange(len(values))
    cut = (
        np.partition(values, len(values) - k)[len(values) - k]
        if largest
        else np.partition(values, k - 1)[k - 1]
    )
    return np.flatnonzero(values >= cut if largest else values <= cut)
