"""Batch conventions every stage follows.

A batch is a dict of equal-length NumPy columns (what Ray Data's ``batch_format="numpy"`` gives).
Image-like columns are 1-D object arrays of per-row ndarrays (rows differ in size). Every row carries
``status`` (``ok``/``error``/``rejected``/``review``) and ``error`` (``"stage: reason"``); a stage works
on ``ok`` rows only and passes the others through untouched, so no row is ever dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any, Protocol, TypeVar

import numpy as np

log = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]
T = TypeVar("T")


class Status(str, Enum):
    """Every row's ``status``; the manifest, the summary and the Serve response use these values."""

    OK = "ok"
    ERROR = "error"
    REJECTED = "rejected"  # generated, but failed a quality guard (e.g. object expansion); figures recorded
    REVIEW = "review"  # generated and kept, but the mask is not trusted (low mask_confidence): never ok


OK, ERROR, REJECTED, REVIEW = (s.value for s in Status)
PLACEHOLDER_IMAGE = np.zeros((1, 1, 3), np.uint8)
PLACEHOLDER_MASK = np.zeros((1, 1), np.uint8)


class Stage(Protocol):
    """What every stage class is: ``__init__(config, ...)`` loads what it needs once; ``__call__`` maps a
    batch to a batch, touching only ``ok`` rows and passing every other row through untouched (no row
    dropped; 1 row in → 1 row out, except Prompt, which expands items into their outputs). ``requires``
    and ``produces`` declare its columns (the pipeline spec and the contract test read them)."""

    requires: tuple[str, ...]
    produces: tuple[str, ...]

    def __call__(self, batch: Batch) -> Batch: ...


def object_column(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array, even when every element is an ndarray of the same shape."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def num_rows(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


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


def run_rows(
    batch: Batch,
    indices: list[int],
    stage: str,
    batched: Callable[[list[int]], list[T]],
) -> dict[int, T]:
    """Run ``batched`` on all rows at once; if it raises, retry row by row so one bad row fails alone."""
    if not indices:
        return {}
    try:
        return dict(zip(indices, batched(indices), strict=True))
    except Exception as error:  # noqa: BLE001 - a batch failure is retried per row below
        if len(indices) == 1:
            set_error(batch, indices[0], stage, describe(error))
            return {}
        log.warning("%s: batch of %d failed (%s); retrying row by row", stage, len(indices), describe(error))
    results: dict[int, T] = {}
    for index in indices:
        try:
            results[index] = batched([index])[0]
        except Exception as error:  # noqa: BLE001 - becomes an error row
            set_error(batch, index, stage, describe(error))
    return results


@contextmanager
def timed(batch: Batch, column: str, indices: list[int]) -> Iterator[None]:
    """Record the batch's wall time, shared equally, in ``column`` for the given rows."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        n = num_rows(batch)
        values = np.asarray(batch.get(column, np.zeros(n)), dtype=np.float64).copy()
        if indices:
            values[indices] = elapsed / len(indices)
        batch[column] = values


def alpha_mask(image: np.ndarray) -> np.ndarray | None:
    """The image's own alpha channel as a float mask, when it has a usable one (a cut-out)."""
    if image.ndim == 3 and image.shape[2] == 4 and image[..., 3].min() < 250:
        return image[..., 3].astype(np.float32) / 255.0
    return None


def to_rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., :3]) if image.shape[-1] == 4 else image


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


def run_in_chunks(stage: Callable[[Batch], Batch], batch: Batch, chunk: int) -> Batch:
    """Call a 1-row-in, 1-row-out ``stage`` on a large batch: rows that are not ``ok`` in one call (they
    pass through), ``ok`` rows ``chunk`` at a time (the model's batch size). Row order may change."""
    batch = ensure_status(batch)
    n = num_rows(batch)
    ok = ok_indices(batch)
    if len(ok) <= chunk and (len(ok) == n or not ok):
        return stage(batch)
    parts = []
    rest = [i for i in range(n) if batch["status"][i] != OK]
    if rest:
        parts.append(stage(take_rows(batch, rest)))
    for start in range(0, len(ok), chunk):
        parts.append(stage(take_rows(batch, ok[start : start + chunk])))
    return concat_batches(parts)
