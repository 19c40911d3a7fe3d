"""One finished row, typed: :class:`OutputRecord`.

The manifest row (:mod:`canvas_ray.io.outputs`), the in-process result (:mod:`canvas_ray.pipeline`) and
the Serve response (:mod:`serve.responses`) are all derived from it. It sits at the bottom of the package
with :mod:`canvas_ray.rows` and :mod:`canvas_ray.schema` (``tests/test_layers.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from canvas_ray.rows import OK, Batch
from canvas_ray.schema import (
    COMPLIANCE_COLUMNS,
    DELIVERED,
    MANIFEST_SCHEMA,
    QUALITY_COLUMNS,
    QUALITY_TYPES,
    TIMING_COLUMNS,
    Status,
    split_error,
)

__all__ = ["OutputRecord"]

_INTEGER_QUALITY = frozenset(name for name, kind in QUALITY_TYPES.items() if str(kind) == "int64")
_STRING_COLUMNS = frozenset(f.name for f in MANIFEST_SCHEMA if str(f.type) == "string")
_MANIFEST_NAMES = tuple(MANIFEST_SCHEMA.names)  # read once: iterating a pyarrow schema per row is slow


def plain(value: Any, string: bool = False) -> Any:
    """A cell as a plain Python value: ``None`` for missing or NaN ("not measured"), NumPy scalars
    unwrapped, and text for string columns."""
    if value is None or (isinstance(value, float | np.floating) and value != value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    return str(value) if string else value


def _column_list(column: Any) -> list[Any]:
    """A column's cells as a list: NumPy arrays through ``tolist`` (plain Python scalars; an object
    array's cells as they are), anything else as it iterates."""
    return column.tolist() if isinstance(column, np.ndarray) else list(column)


def _plain_cells(cells: Any, names: list[str], index: int) -> dict[str, Any]:
    """Row ``index`` of the manifest columns ``names`` (arrays or lists) as plain values."""
    return {name: plain(cells[name][index], name in _STRING_COLUMNS) for name in names}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass
class OutputRecord:
    """One requested output (item × style × variant × aspect/profile) as a finished row.

    Built once from a row (:meth:`from_row`); every consumer derives from it: the manifest row
    (:meth:`manifest_row`, written by :class:`canvas_ray.io.outputs.WriteOutputs`), the in-process result
    (``LocalPipeline.generate``) and the Serve response (:mod:`serve.responses`).

    Args:
        output_id, item_id (str): the output's and its item's ids.
        status (str): a :class:`~canvas_ray.schema.Status` value; the writer may still change it (a
            failed write or provenance check).
        error (str): ``"stage: reason"``, or ``""``.
        style, style_key, aspect, prompt, caption (str): ``""`` where the row has none.
        variant, seed (int): 0 where the row has none.
        image (np.ndarray | None): the final image, only for a delivered output.
        product_preserved (bool): every product pixel equals the source (checked by Composite).
        max_product_diff (int): the largest product-pixel difference found.
        width, height (int | None): the image's size (the row's columns when it has no image).
        mask_confidence (float | None): evidence the product mask is right, 0..1.
        profile (str | None): the output profile, None for a plain aspect ratio.
        quality (dict[str, float | int | None]): the guard's figures (:data:`~canvas_ray.schema.
            QUALITY_COLUMNS`), None where not measured.
        timings (dict[str, float]): seconds per stage, for the stages that timed the row.
        output_uri (str | None): where the writer stored the image, relative to the output root.
        expansion_uri (str | None): where the writer stored the grown-pixel overlay of an output the
            product grew in (rejected, or kept within the limit), relative to the output root.
        provenance (str | None): the JSON provenance record embedded in the written file.
        columns (dict[str, Any]): every manifest column the row carried, as plain values (None: null);
            the typed fields above are read from it.
    """

    output_id: str
    item_id: str
    status: str
    error: str
    style: str = ""
    style_key: str = ""
    aspect: str = ""
    variant: int = 0
    seed: int = 0
    prompt: str = ""
    caption: str = ""
    image: np.ndarray | None = None
    product_preserved: bool = False
    max_product_diff: int = 0
    width: int | None = None
    height: int | None = None
    mask_confidence: float | None = None
    profile: str | None = None
    quality: dict[str, float | int | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    output_uri: str | None = None
    expansion_uri: str | None = None
    provenance: str | None = None
    columns: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_row(cls, batch: Batch, index: int) -> OutputRecord:
        """The record of row ``index`` of a finished batch (after Composite+Verify)."""
        names = [name for name in _MANIFEST_NAMES if name in batch]
        return cls._from_columns(batch, index, _plain_cells(batch, names, index))

    @classmethod
    def _from_columns(cls, batch: Batch, index: int, columns: dict[str, Any]) -> OutputRecord:
        status = _text(columns.get("status")) or OK
        delivered = status in DELIVERED
        image = batch["result"][index] if delivered and "result" in batch else None
        width, height = columns.get("width"), columns.get("height")
        if isinstance(image, np.ndarray):
            height, width = int(image.shape[0]), int(image.shape[1])
        confidence = columns.get("mask_confidence")
        return cls(
            output_id=_text(columns.get("output_id")),
            item_id=_text(columns.get("item_id")),
            status=status,
            error=_text(columns.get("error")),
            style=_text(columns.get("style")),
            style_key=_text(columns.get("style_key")),
            aspect=_text(columns.get("aspect")),
            variant=int(columns.get("variant") or 0),
            seed=int(columns.get("seed") or 0),
            prompt=_text(columns.get("prompt")),
            caption=_text(columns.get("caption")),
            image=image,
            product_preserved=bool(columns.get("product_preserved") or False),
            max_product_diff=int(columns.get("max_product_diff") or 0),
            width=None if width is None else int(width),
            height=None if height is None else int(height),
            mask_confidence=None if confidence is None else float(confidence),
            profile=_text(columns.get("profile")) or None,
            quality={name: _quality(name, columns.get(name)) for name in QUALITY_COLUMNS},
            timings={name: float(columns[name]) for name in TIMING_COLUMNS if columns.get(name) is not None},
            output_uri=_text(columns.get("output_uri")) or None,
            expansion_uri=_text(columns.get("expansion_uri")) or None,
            provenance=columns.get("provenance"),
            columns=columns,
        )

    @classmethod
    def from_batch(cls, batch: Batch) -> list[OutputRecord]:
        """One record per row of a finished batch, the same as :meth:`from_row` of each. Each manifest
        column is converted once (``tolist`` unwraps NumPy scalars in C), not cell by cell: the writer
        makes a record of every output, error rows included."""
        rows = len(batch.get("status", ()))
        names = [name for name in _MANIFEST_NAMES if name in batch]
        cells = {name: _column_list(batch[name]) for name in names}
        return [cls._from_columns(batch, index, _plain_cells(cells, names, index)) for index in range(rows)]

    @property
    def delivered(self) -> bool:
        """Its image is stored / returned: ``ok``, or ``review`` (kept for a person to check the mask)."""
        return self.status in DELIVERED

    @property
    def review(self) -> bool:
        return self.status == Status.REVIEW.value

    @property
    def error_stage(self) -> str | None:
        return split_error(self.error)[0]

    @property
    def error_reason(self) -> str | None:
        return split_error(self.error)[1]

    @property
    def compliance(self) -> dict[str, Any]:
        """The output profile's compliance columns (:data:`~canvas_ray.schema.COMPLIANCE_COLUMNS`)."""
        return {name: self.columns.get(name) for name in COMPLIANCE_COLUMNS}

    def manifest_row(self) -> dict[str, Any]:
        """The row's manifest columns (:data:`~canvas_ray.schema.MANIFEST_SCHEMA`): what it carried, with
        what the writer decided (status, error, output URI, provenance, size, ``write_s``). Run-wide columns
        (``run_id``, ``config_fingerprint``, ``finished_at``) are the writer's to add."""
        stage, reason = split_error(self.error)
        return {
            **self.columns,
            "output_id": self.columns.get("output_id"),
            "item_id": self.item_id,
            "status": self.status,
            "error": self.error,
            "error_stage": stage,
            "error_reason": reason,
            "output_uri": self.output_uri or "",
            "expansion_uri": self.expansion_uri or "",
            "provenance": self.provenance,
            "width": self.width,
            "height": self.height,
            "product_preserved": self.product_preserved and self.delivered,
            "write_s": self.timings.get("write_s", 0.0),
        }


def _quality(name: str, value: Any) -> float | int | None:
    """A guard figure: None where not measured (NaN, or ``expansion_px`` < 0), int for the counts."""
    if value is None or (name == "expansion_px" and value < 0):
        return None
    return int(value) if name in _INTEGER_QUALITY else float(value)
