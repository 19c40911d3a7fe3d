"""The JSON that ``POST /v1/backgrounds`` answers, as pydantic models (so ``/docs`` shows it), built from
the one row schema (:mod:`canvas_ray.schema`): the quality figures and timings are its column groups, the
status values its :class:`~canvas_ray.schema.Status`. Each image or error item is derived from the
output's :class:`~canvas_ray.records.OutputRecord`, the record the manifest and the in-process result derive
from too."""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from canvas_ray.records import OutputRecord
from canvas_ray.rows import DELIVERED
from canvas_ray.schema import QUALITY_COLUMNS, QUALITY_TYPES, TIMING_COLUMNS

__all__ = [
    "DELIVERED",  # statuses whose image is returned (canvas_ray.schema.DELIVERED)
    "Compliance",
    "GenerateResponse",
    "ImageOut",
    "OutputError",
    "compliance_figures",
    "image_out",
    "output_error",
    "quality_figures",
    "text",
]
_INTEGER = frozenset(name for name, kind in QUALITY_TYPES.items() if str(kind) == "int64")

# {"expansion_ratio": float | None, "attempts": int | None, ...} plus the mask's trust
Quality = create_model(  # type: ignore[call-overload]
    "Quality",
    __doc__="The quality guard's figures of one output (null where not measured) and the mask's trust.",
    **{name: ((int if name in _INTEGER else float) | None, None) for name in QUALITY_COLUMNS},
    mask_confidence=(float | None, Field(None, description="evidence the product mask is right, 0..1")),
    mask_review=(bool, Field(False, description="the mask is not trusted: a person must check this output")),
)


class Compliance(BaseModel):
    """An output profile's rules, checked on the delivered image."""

    compliant: bool
    issues: list[str]
    fill_ratio: float | None
    background_purity: float | None
    product_scale: float | None
    upscaled: bool


class ImageOut(BaseModel):
    """One delivered output: ``ok``, or ``review`` (generated and kept, but the mask is not vouched for)."""

    status: Literal["ok", "review"]
    image_base64: str
    mime: str
    style: str
    aspect: str
    variant: int
    seed: int
    caption: str
    prompt: str
    product_preserved: bool = Field(description="every product pixel equals the source (checked)")
    max_product_diff: int
    width: int
    height: int
    quality: Quality  # type: ignore[valid-type]
    profile: str | None = None
    compliance: Compliance | None = None
    timings: dict[str, float] = Field(description=f"seconds per stage: {', '.join(TIMING_COLUMNS)}")
    uri: str | None = Field(None, description="where it was saved, when serve.output_root is set")


class OutputError(BaseModel):
    """A requested output that was not delivered (``error`` or ``rejected``), with the reason."""

    style: str
    aspect: str
    variant: int
    status: Literal["error", "rejected"]
    error: str
    error_stage: str | None
    error_reason: str | None
    quality: Quality  # type: ignore[valid-type]
    profile: str | None = None
    compliance: Compliance | None = None


class GenerateResponse(BaseModel):
    request_id: str
    caption: str
    images: list[ImageOut]
    errors: list[OutputError]
    seconds: float


def text(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def quality_figures(record: OutputRecord) -> dict[str, Any]:
    """The guard's figures of one output (None where not measured) and the mask's trust."""
    figures: dict[str, Any] = {}
    for name in QUALITY_COLUMNS:
        number = _number(record.quality.get(name))
        if number is None:
            figures[name] = None
        elif name in _INTEGER:
            figures[name] = int(number)
        else:
            figures[name] = round(number, 4)
    # Trust in product_preserved comes from the mask: its confidence, and whether a person must check it.
    if record.mask_confidence is not None:
        figures["mask_confidence"] = round(record.mask_confidence, 4)
    figures["mask_review"] = record.review
    return figures


def compliance_figures(record: OutputRecord) -> dict[str, Any]:
    """``profile`` and its ``compliance`` check for one output (both None for plain aspect ratios)."""
    if not record.profile:
        return {"profile": None, "compliance": None}
    checked = record.compliance
    if checked["compliant"] is None:
        return {"profile": record.profile, "compliance": None}

    def number(name: str) -> float | None:
        value = _number(checked[name])
        return None if value is None else round(value, 6)

    issues = text(checked["compliance_issues"])
    return {
        "profile": record.profile,
        "compliance": {
            "compliant": bool(checked["compliant"]),
            "issues": [part for part in issues.split("; ") if part],
            "fill_ratio": number("fill_ratio"),
            "background_purity": number("background_purity"),
            "product_scale": number("product_scale"),
            "upscaled": bool(checked["upscaled"]),
        },
    }


def image_out(record: OutputRecord, data: bytes, mime: str, uri: str | None) -> ImageOut:
    """The response item of a delivered output, its image encoded as ``data``."""
    return ImageOut.model_validate(
        {
            "status": record.status,
            "image_base64": base64.b64encode(data).decode(),
            "mime": mime,
            "style": record.style,
            "aspect": record.aspect,
            "variant": record.variant,
            "seed": record.seed,
            "caption": record.caption,
            "prompt": record.prompt,
            "product_preserved": record.product_preserved,
            "max_product_diff": record.max_product_diff,
            "width": record.width or 0,
            "height": record.height or 0,
            "quality": quality_figures(record),
            **compliance_figures(record),
            "timings": {name: round(seconds, 4) for name, seconds in record.timings.items()},
            "uri": uri,
        }
    )


def output_error(record: OutputRecord) -> OutputError:
    """The response item of an output that was not delivered (``error`` or ``rejected``)."""
    return OutputError.model_validate(
        {
            "style": record.style,
            "aspect": record.aspect,
            "variant": record.variant,
            "status": record.status,
            "error": record.error,
            "error_stage": record.error_stage,
            "error_reason": record.error_reason,
            "quality": quality_figures(record),
            **compliance_figures(record),
        }
    )
