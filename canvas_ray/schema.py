"""The one row schema: every column an output row can carry, its Arrow type, and the named groups
(timings, quality figures, compliance) that the manifest, the in-process result, the Serve response
model and the run summary are derived from. A new column is added here, once.

Every row carries ``status`` (:class:`Status`) and, when it failed, ``error`` as ``"stage: reason"``
(what the stages write) split into ``error_stage`` and ``error_reason`` (what readers use: the manifest,
the summary, the Serve error responses). The typed record of one finished row is
:class:`canvas_ray.records.OutputRecord`.

This module is the bottom of the package: it imports nothing from ``canvas_ray``."""

from __future__ import annotations

from enum import Enum

import pyarrow as pa

__all__ = [
    "COMPLIANCE_COLUMNS",
    "DELIVERED",
    "ITEM_TIMING_COLUMNS",
    "MANIFEST_SCHEMA",
    "QUALITY_COLUMNS",
    "SCORE_COLUMNS",
    "Status",
    "TIMING_COLUMNS",
    "split_error",
]


class Status(str, Enum):
    """Every row's ``status``; the manifest, the summary and the Serve response use these values."""

    OK = "ok"
    ERROR = "error"
    REJECTED = "rejected"  # generated, but failed a quality guard (e.g. object expansion); figures recorded
    REVIEW = "review"  # generated and kept, but the mask is not trusted (low mask_confidence): never ok


# The statuses of a delivered output: its image is stored (batch) or returned (Serve, in-process), and a
# resume keeps it. ``review`` is delivered, flagged for a person to check the mask. The one definition.
DELIVERED: tuple[str, ...] = (Status.OK.value, Status.REVIEW.value)

# seconds per stage, per output row (a batch's wall time shared equally between its rows)
TIMING_COLUMNS = (
    "fetch_s",
    "decode_s",
    "segment_s",
    "caption_s",
    "inpaint_s",
    "composite_s",
    "quality_s",
    "write_s",
)
# timings measured once per item (before Prompt expands it into outputs), copied to each output
ITEM_TIMING_COLUMNS = TIMING_COLUMNS[:4]
# the in-generation quality guard's figures (NaN / null where not measured)
QUALITY_TYPES: dict[str, pa.DataType] = {
    "expansion_ratio": pa.float64(),
    "expansion_px": pa.int64(),
    "attempts": pa.int64(),
    "candidates": pa.int64(),
    "quality_score": pa.float64(),
    "clip_score": pa.float64(),
    "seam_energy": pa.float64(),
    "color_harmony": pa.float64(),
    "exposure": pa.float64(),
}
QUALITY_COLUMNS = tuple(QUALITY_TYPES)
# the candidate scores among them (higher is better, except seam_energy)
SCORE_COLUMNS = ("quality_score", "clip_score", "seam_energy", "color_harmony", "exposure")
# output profiles (canvas_ray.profiles): null for plain aspect-ratio outputs
COMPLIANCE_TYPES: dict[str, pa.DataType] = {
    "profile": pa.string(),
    "compliant": pa.bool_(),
    "compliance_issues": pa.string(),
    "fill_ratio": pa.float64(),
    "background_purity": pa.float64(),
    "product_scale": pa.float64(),
    "upscaled": pa.bool_(),
}
COMPLIANCE_COLUMNS = tuple(COMPLIANCE_TYPES)

MANIFEST_SCHEMA = pa.schema(
    [
        ("output_id", pa.string()),
        ("item_id", pa.string()),
        ("status", pa.string()),  # a Status value
        ("error", pa.string()),  # "stage: reason", as set by the stage
        ("error_stage", pa.string()),  # the same, split: the failing stage ...
        ("error_reason", pa.string()),  # ... and what to do about it
        ("output_uri", pa.string()),
        ("style", pa.string()),
        ("style_key", pa.string()),
        ("aspect", pa.string()),
        ("variant", pa.int64()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("caption", pa.string()),
        ("image_uri", pa.string()),
        ("title", pa.string()),
        ("category", pa.string()),
        ("brand", pa.string()),
        ("thumb_uri", pa.string()),
        ("mask_uri", pa.string()),
        ("mask_area", pa.float64()),
        ("mask_confidence", pa.float64()),
        ("mask_flags", pa.string()),
        ("product_preserved", pa.bool_()),
        ("max_product_diff", pa.int64()),
        ("product_pixels", pa.int64()),
        ("preserve_rule", pa.string()),  # "opaque" | "matte": what product_preserved means (canvas_ray.matte)
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("source_width", pa.int64()),
        ("source_height", pa.int64()),
        ("placement", pa.string()),
        *COMPLIANCE_TYPES.items(),
        ("style_image_uri", pa.string()),
        *QUALITY_TYPES.items(),
        ("expansion_uri", pa.string()),  # PNG: the generated image, the pixels the product grew in red
        *((name, pa.float64()) for name in TIMING_COLUMNS),
        ("config_fingerprint", pa.string()),
        ("provenance", pa.string()),  # JSON: what says the image is generated (canvas_ray.provenance)
        ("run_id", pa.string()),
        ("finished_at", pa.float64()),
    ]
)


def split_error(error: str) -> tuple[str | None, str | None]:
    """``"decode: not an image"`` → ``("decode", "not an image")``; ``""`` → ``(None, None)``."""
    if not error:
        return None, None
    stage, sep, reason = error.partition(": ")
    return (stage, reason) if sep and stage.isidentifier() else (None, error)
