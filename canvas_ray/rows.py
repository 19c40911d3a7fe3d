"""Row types: what every layer of the package agrees a row is.

A batch is a dict of equal-length NumPy columns (what Ray Data's ``batch_format="numpy"`` gives).
Image-like columns are 1-D object arrays of per-row ndarrays (rows differ in size). Every row carries
``status`` (:class:`~canvas_ray.schema.Status`: ``ok``/``error``/``rejected``/``review``) and ``error``
(``"stage: reason"``); a stage works on ``ok`` rows only and passes the others through untouched, so no
row is ever dropped. Errors are rows: the helpers here turn a failure into an error row.

One finished row, typed, is :class:`canvas_ray.records.OutputRecord` (the same layer).

This module sits at the bottom of the package (with :mod:`canvas_ray.schema` and :mod:`canvas_ray.logs`):
stages, quality, io and the drivers import it, never the other way round (``tests/test_layers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import numpy as np

from canvas_ray.logs import get_logger
from canvas_ray.schema import (
    DELIVERED,
    Status,
    split_error,
)

__all__ = [
    "DELIVERED",
    "ERROR",
    "OK",
    "PLACEHOLDER_IMAGE",
    "PLACEHOLDER_MASK",
    "REJECTED",
    "REVIEW",
    "Batch",
    "Status",
    "concat_batches",
    "describe",
    "each_alone_on_failure",
    "ensure_status",
    "fail_rows",
    "num_rows",
    "object_column",
    "ok_indices",
    "rows_batch",
    "run_rows",
    "set_error",
    "split_error",
    "take_rows",
]

log = get_logger(__name__)
Batch = dict[str, np.ndarray]
T = TypeVar("T")
R = TypeVar("R")

OK, ERROR, REJECTED, REVIEW = (s.value for s in Status)
PLACEHOLDER_IMAGE = np.zeros((1, 1, 3), np.uint8)
PLACEHOLDER_MASK = np.zeros((1, 1), np.uint8)


# --------------------------------------------------------------------------------------------- batches


def object_column(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array, even when every element is an ndarray of the same shape."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def rows_batch(
    rows: Sequence[dict[str, Any]],
    *,
    arrays: Collection[str] = (),
    ints: Collection[str] = (),
    floats_by_value: bool = False,
) -> Batch:
    """Rows (dicts) → a batch, every key in first-seen order (``None`` where a row lacks it): ``arrays``
    become object columns of one element per row (images, bytes), ``ints`` int64, floats float64 when
    ``floats_by_value`` and the first value is one; the rest object columns of plain Python values."""
    out: Batch = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(key) for row in rows]
        if key in arrays:
            out[key] = object_column(values)
        elif key in ints:
            out[key] = np.asarray(values, dtype=np.int64)
        elif floats_by_value and isinstance(values[0], float | np.floating):
            out[key] = np.asarray(values, dtype=np.float64)
        else:
            out[key] = np.asarray(
                [v.item() if isinstance(v, np.generic) else v for v in values], dtype=object
            )
    return out


def num_rows(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def concat_batches(batches: list[Batch]) -> Batch:
    """Rows of several batches in order; columns missing in some batches become ``None`` there."""
    out: Batch = {}
    for key in dict.fromkeys(k for batch in batches for k in batch):  # every column, first-seen order
        columns = [batch.get(key) for batch in batches]
        present = [c for c in columns if c is not None]
        same = len(present) == len(columns) and len({c.dtype for c in present}) == 1
        if same and present[0].dtype != object:
            out[key] = np.concatenate(present)
            continue
        values: list[Any] = []
        for batch, column in zip(batches, columns, strict=True):
            values.extend(list(column) if column is not None else [None] * num_rows(batch))
        out[key] = object_column(values)
    return out


def take_rows(batch: Batch, indices: list[int]) -> Batch:
    out: Batch = {}
    for key, column in batch.items():
        out[key] = object_column([column[i] for i in indices]) if column.dtype == object else column[indices]
    return out


# ------------------------------------------------------------------------------------ status and errors


def ensure_status(batch: Batch) -> Batch:
    n = num_rows(batch)
    if "status" not in batch:
        batch["status"] = np.array([OK] * n, dtype=object)
    else:
        batch["status"] = np.asarray(batch["status"], dtype=object).copy()
    if "error" not in batch:
        batch["error"] = np.array([""] * n, dtype=object)
    else:
        batch["error"] = np.asarray(batch["error"], dtype=object).copy()
    return batch


def ok_indices(batch: Batch) -> list[int]:
    return [i for i, status in enumerate(batch["status"]) if status == OK]


def set_error(batch: Batch, index: int, stage: str, reason: str) -> None:
    batch["status"][index] = ERROR
    batch["error"][index] = f"{stage}: {reason}"[:2000]


def describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"


def each_alone_on_failure(
    items: list[T],
    run: Callable[[list[T]], list[R]],
    on_error: Callable[[T, Exception], R],
    what: str,
) -> list[R]:
    """``run(items)``, one result per item; if it raises, ``run([item])`` for each item alone, so that one
    bad item fails alone (``on_error(item, error)`` gives its result). The one retry rule of the project:
    stages apply it to rows (:func:`run_rows`), the Serve deployments to the requests of a batch."""
    if not items:
        return []
    try:
        return run(items)
    except Exception as error:  # noqa: BLE001 - a batch failure is retried one by one below
        if len(items) == 1:
            return [on_error(items[0], error)]
        log.warning("%s: batch of %d failed (%s); retrying one by one", what, len(items), describe(error))
    results: list[R] = []
    for item in items:
        try:
            results.extend(run([item]))
        except Exception as error:  # noqa: BLE001 - this item's result says why
            results.append(on_error(item, error))
    return results


_FAILED: Any = object()


def run_rows(
    batch: Batch,
    indices: list[int],
    stage: str,
    batched: Callable[[list[int]], list[T]],
) -> dict[int, T]:
    """Run ``batched`` on all rows at once; if it raises, retry row by row so one bad row fails alone
    (its row becomes an error row: ``"stage: reason"``)."""

    def failed(index: int, error: Exception) -> Any:
        set_error(batch, index, stage, describe(error))
        return _FAILED

    results = each_alone_on_failure(indices, batched, failed, stage)
    return {i: r for i, r in zip(indices, results, strict=True) if r is not _FAILED}


def fail_rows(batch: Batch, stage: str, error: Exception) -> Batch:
    """Every ``ok`` row of ``batch`` becomes an error row of ``stage`` (a whole call failed)."""
    batch = ensure_status(dict(batch))
    for index in ok_indices(batch):
        set_error(batch, index, stage, describe(error))
    return batch
