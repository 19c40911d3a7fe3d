"""Config sections of the steps around the models (composite, output, styles, quality, provenance) and of
the run itself (input limits, Ray). Part of :class:`canvas_ray.config.CanvasConfig`."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from canvas_ray.config_base import (
    DEFAULT_PROFILES_FILE,
    DEFAULT_STYLES_FILE,
    StrictModel,
    canonical_aspect,
    checked_prefixes,
)
from canvas_ray.config_stages import Resources, SegmentConfig


class ExpansionConfig(StrictModel):
    """Object-expansion guard: re-segment the generated image and retry when the product has grown."""

    enabled: bool = True
    threshold: float = Field(
        0.15, ge=0, description="largest accepted E / area(product), E = area(out ∪ in) - area(in)"
    )
    tolerance_px: int = Field(2, ge=0, le=32, description="segmenter edge jitter ignored around the product")
    resolution: int = Field(
        256, ge=32, le=2048, description="long side at which generated images are re-segmented"
    )
    max_attempts: int = Field(3, ge=1, le=16, description="generations per output, the first included")
    retry_dilate_px: int = Field(
        4, ge=0, le=64, description="grow the kept region by this much more on each retry"
    )
    on_fail: Literal["reject", "keep_best"] = Field(
        "reject", description="after max_attempts: a `rejected` row, or the least-expanded candidate"
    )
    applies_to: Literal["generative", "always"] = Field(
        "generative",
        description="generative: only for generators that paint the product region (diffusion); a "
        "procedural studio backdrop cannot grow the product. always: every generator",
    )
    segment: SegmentConfig | None = Field(
        None, description="segmenter for the generated image; None = the segment stage's (alpha → backdrop)"
    )


class ScoringConfig(StrictModel):
    """How candidates are ranked: weight-free checks, plus CLIP image–text alignment when a model is named."""

    clip_model: str | None = Field(None, description="CLIP checkpoint (hub id or folder) for alignment")
    clip_device: str = "auto"
    weights: dict[str, float] = Field(
        default_factory=lambda: {"clip": 1.0, "seam": 1.0, "harmony": 0.5, "exposure": 0.5},
        description="weight per figure: clip, seam, harmony, exposure",
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - {"clip", "seam", "harmony", "exposure"})
        if unknown:
            raise ValueError(f"unknown score names {unknown}; use clip, seam, harmony, exposure")
        if any(weight < 0 for weight in value.values()):
            raise ValueError("score weights must be >= 0")
        return value


class QualityConfig(StrictModel):
    candidates: int = Field(1, ge=1, le=16, description="generations per requested output; the best is kept")
    expansion: ExpansionConfig = Field(default_factory=ExpansionConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)


class CompositeConfig(StrictModel):
    fill: float = Field(
        0.78, gt=0.05, le=1.0, description="largest share of canvas width/height the product takes"
    )
    placement: Literal["center", "floor"] = "floor"
    floor_margin: float = Field(
        0.1, ge=0, lt=0.5, description="gap under the product for `floor`, share of height"
    )
    scale: Literal["native", "fit"] = Field(
        "native",
        description="native keeps source pixels bit-exact; fit resamples the product to output.long_side",
    )
    shadow: float | None = Field(None, ge=0, le=1, description="contact shadow strength; None = the style's")
    feather_px: int = Field(2, ge=0, le=32, description="soft edge width, applied outside the product only")
    matte: Literal["auto", "off"] = Field(
        "auto",
        description="auto: a product whose mask has a wide partial band (hair, fur, glass, sheer fabric) "
        "gets the `matte` preservation rule (opaque pixels the source's, partial ones recomposed from the "
        "estimated foreground; canvas_ray.matte), hard-edged products keep `opaque`; off: always `opaque`",
    )
    resources: Resources = Field(default_factory=lambda: Resources(batch_size=8))


class OutputConfig(StrictModel):
    aspect_ratios: list[str] = Field(default_factory=lambda: ["1:1"], min_length=1)
    variants: int = Field(1, ge=1, le=64)
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(95, ge=1, le=100)
    long_side: int | None = Field(None, ge=64, le=8192, description="output size for composite.scale=fit")
    shard_width: int = Field(2, ge=1, le=4, description="hex chars of the image-folder shard prefix")
    manifest_bucket_rows: int = Field(
        100_000,
        ge=1,
        description="target rows per manifest bucket file; fixes the bucket count of a new output root",
    )
    manifest_part_rows: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="manifest rows per staging part while a run goes (a crash loses at most the unflushed)",
    )

    profiles: list[str] = Field(
        default_factory=list,
        description="output profiles (configs/profiles.yaml) made per item and style; when set, the default "
        "aspect_ratios are not made (a row's own aspect_ratios still are)",
    )
    profiles_file: str = Field(str(DEFAULT_PROFILES_FILE), description="YAML file of output profiles")

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, values: list[str]) -> list[str]:
        from canvas_ray.profiles import PROFILE_NAME

        for value in values:
            if not re.fullmatch(PROFILE_NAME, value):
                raise ValueError(f"bad profile name {value!r} (lowercase letters, digits and '-')")
        if len(set(values)) != len(values):
            raise ValueError(f"profiles repeat: {values}")
        return values

    @field_validator("aspect_ratios")
    @classmethod
    def _aspects(cls, values: list[str]) -> list[str]:
        canonical = [canonical_aspect(value) for value in values]
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"aspect ratios repeat: {values}")
        return canonical


class StylesConfig(StrictModel):
    file: str = Field(str(DEFAULT_STYLES_FILE), description="YAML file of named presets")
    default: list[str] = Field(default_factory=lambda: ["studio white"], min_length=1)
    extra_files: list[str] = Field(
        default_factory=list, description="more preset files, e.g. published LoRA styles"
    )


class ProvenanceConfig(StrictModel):
    """How generated images say so (canvas_ray.provenance): IPTC XMP always, plus a signed C2PA manifest."""

    c2pa: Literal["sign", "unsigned"] = Field(
        "sign",
        description="sign: a C2PA manifest signed with key/cert (no key: outputs are error rows); unsigned: "
        "an explicit opt-out, XMP only, recorded in every manifest row",
    )
    cert: str | None = Field(None, description="PEM certificate chain file (leaf first); or cert_env")
    key: str | None = Field(None, description="PEM private key file of the leaf certificate; or key_env")
    cert_env: str = Field("CANVAS_RAY_C2PA_CERT", description="environment variable: chain file or PEM")
    key_env: str = Field("CANVAS_RAY_C2PA_KEY", description="environment variable: key file or PEM")
    alg: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = "es256"
    timestamp_url: str | None = Field(None, description="RFC 3161 time-stamp authority (None: none)")


class LimitsConfig(StrictModel):
    max_image_bytes: int = Field(40 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=64 * 64)
    min_side: int = Field(16, ge=1)
    fetch_timeout_s: float = Field(60.0, gt=0)
    fetch_retries: int = Field(2, ge=0, le=10, description="http(s) images: retries on 5xx/429/timeouts")
    fetch_per_host: int = Field(4, ge=1, le=256, description="http(s) images: downloads at once per host")
    allowed_read_prefixes: list[str] | None = Field(
        None,
        description="image and style-image URIs of catalog rows must lie under one of these (checked "
        "after normalisation and, for local paths, symlink resolution); a refused row is an error row. "
        "None: read whatever the catalog names (the CLI); jobs submitted over HTTP always get a list",
    )

    @field_validator("allowed_read_prefixes")
    @classmethod
    def _read_prefixes(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else checked_prefixes(values)


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: RAY_ADDRESS or a local cluster")
    read_parallelism: int | None = Field(None, ge=1)
    io_concurrency: int = Field(4, ge=1, description="parallel fetch/write tasks")
    block_rows: int = Field(
        256, ge=1, le=100_000, description="rows per batch of the cheap steps (fetch/decode, prompt)"
    )
    block_mb: int = Field(
        32,
        ge=1,
        le=1024,
        description="target MB per block of the generation plan: small blocks of decoded images, so every"
        " pool gets work from the first minutes and no task holds a huge block",
    )
    attach_timeout_s: float = Field(
        30.0, gt=0, le=600, description="seconds a cluster address may take to answer before the job fails"
    )
    shuffle: Literal["sort", "push", "hash"] = Field(
        "sort",
        description="how the catalog is grouped by id bucket for resume (and manifest parts by bucket): sort "
        "= Ray Data's pull-based sort shuffle (tasks only, well under a second on small catalogs); push = "
        "its push-based variant for catalogs of tens of millions of rows; hash = Ray Data's default "
        "(shuffle_v2), which starts aggregator actors first (~6 s on every run on 2 cores)",
    )
    stall_timeout_s: float = Field(
        1800.0,
        ge=0,
        description="seconds in which no block moves through the plan (e.g. pool actors lost with their "
        "node and nowhere to restart) before the job fails with the reason; a re-run resumes. 0: wait for "
        "ever. Raise it for models whose loading takes longer",
    )
