"""What a stage is: the :class:`Stage` protocol, the :class:`StageContext` a driver shares between its
stages, and the helpers stages use to time and chunk their work.

The row conventions (``Batch``, ``Status``, the error helpers) live below the stages, in
:mod:`canvas_ray.rows`, and one finished row in :mod:`canvas_ray.records`: import them from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from canvas_ray.rows import (
    OK,
    Batch,
    concat_batches,
    ensure_status,
    num_rows,
    ok_indices,
    take_rows,
)

if TYPE_CHECKING:
    from canvas_ray.config import CanvasConfig
    from canvas_ray.styles import StyleBook

__all__ = [
    "Stage",
    "StageContext",
    "alpha_mask",
    "run_in_chunks",
    "timed",
    "to_rgb",
]


@dataclass
class StageContext:
    """What a stage may need besides its config, shared by every stage of one driver, actor or replica:
    the style book (built once), the run's config fingerprint (it seeds the outputs), the storage options
    of the catalog's filesystem, whether Composite keeps its intermediate columns (for tests), and for a
    driver that stores its outputs (the batch plan) the output root and run id its sinks write under."""

    styles: StyleBook | None = None
    fingerprint: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    keep_intermediate: bool = False
    output_root: str | None = None  # where the sinks write (canvas_ray.stages.sinks); None: no sinks
    run_id: str = ""  # names the run's manifest parts

    def style_book(self, config: CanvasConfig) -> StyleBook:
        """The shared style book, built from ``config`` on first use."""
        if self.styles is None:
            from canvas_ray.styles import StyleBook

            self.styles = StyleBook.from_config(config)
        return self.styles


class Stage(Protocol):
    """What every stage class is: ``__init__(config, context=None)`` (one shape for every stage: the config
    and a :class:`StageContext`) loads what it needs once; ``__call__`` maps a
    batch to a batch, touching only ``ok`` rows and passing every other row through untouched (no row
    dropped; 1 row in → 1 row out, except Prompt, which expands items into their outputs). ``requires``
    and ``produces`` declare its columns (the pipeline spec and the contract test read them)."""

    requires: tuple[str, ...]
    produces: tuple[str, ...]

    def __init__(self, config: CanvasConfig, context: StageContext | None = None) -> None: ...

    def __call__(self, batch: Batch) -> Batch: ...


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
