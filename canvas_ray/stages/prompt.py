"""Prompt: one row per item becomes one row per requested output (style × variant × aspect ratio/profile).

For each output it resolves the style, builds the prompt and negative prompt, derives the seed
(hash of item id, variant, style and config fingerprint) and lays the product out on a canvas of the
target aspect ratio. Error rows expand too, so every requested output has exactly one record.

Per-row requests override the config: ``style`` ("a|b" for several), ``variants``, ``aspect_ratios``,
``profile`` ("a|b"). A profile (:mod:`canvas_ray.profiles`) is a target like an aspect ratio: its frame,
fill and product scale come from the profile, and its output id names it instead of the aspect
(``item__style__amazon-main__v0``). When profiles are asked for, the config's default aspect ratios are not
made (a row's own ``aspect_ratios`` still are).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from canvas_ray.compose import aspect_slug, place_product, plan_placement
from canvas_ray.config import CanvasConfig, canonical_aspect, parse_aspect
from canvas_ray.profiles import OutputProfile, ProfileBook, ProfileError, plan_profile_placement
from canvas_ray.rows import (
    ERROR,
    OK,
    PLACEHOLDER_IMAGE,
    PLACEHOLDER_MASK,
    Batch,
    describe,
    ensure_status,
    rows_batch,
)
from canvas_ray.schema import ITEM_TIMING_COLUMNS
from canvas_ray.stages.base import StageContext
from canvas_ray.styles import build_prompt

STAGE = "prompt"
INVALID_STYLE = "invalid-style"
DONE_SEPARATOR = "\n"  # `done_outputs`: ids of an item's outputs that a resume keeps
# Item columns copied to every output row (when present).
CARRIED = (
    "item_id",
    "image_uri",
    "title",
    "category",
    "brand",
    "caption",
    "product_description",
    "mask_area",
    "mask_confidence",
    "mask_flags",
    *ITEM_TIMING_COLUMNS,
    "source_width",
    "source_height",
    "source_sha256",  # the source photo's hash (its C2PA ingredient)
    "style_image_uri",
    "style_image",  # the reference image: every output of an item is steered by it
    "thumb_uri",  # the item's review thumbnails (the thumbnails sink, in batch runs)
    "mask_uri",
    "request_id",  # the online request a row belongs to (Serve batches rows of several requests)
)


def derive_seed(item_id: str, variant: int, style_key: str, fingerprint: str) -> int:
    digest = hashlib.sha256(f"{item_id}\x1f{variant}\x1f{style_key}\x1f{fingerprint}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def output_id(item_id: str, style_key: str, aspect: str, variant: int, profile: str = "") -> str:
    """``item__style__1x1__v0`` for an aspect ratio; ``item__style__amazon-main__v0`` for a profile."""
    return f"{item_id}__{style_key}__{profile or aspect_slug(aspect)}__v{variant}"


Target = tuple[str, str]  # (aspect ratio, profile name or "")


def _valid_aspect(value: str) -> bool:
    try:
        parse_aspect(value)
    except ValueError:
        return False
    return True


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _done_outputs(batch: Batch, index: int) -> set[str]:
    if "done_outputs" not in batch:
        return set()
    value = batch["done_outputs"][index]
    return set(str(value).split(DONE_SEPARATOR)) if value and not _missing(value) else set()


def _split(value: Any, default: list[str]) -> list[str]:
    if _missing(value):
        return default
    parts = [part.strip() for part in str(value).split("|") if part.strip()]
    return parts or default


class Prompt:
    """Stage (CPU): expand items into outputs with style, prompt, seed and the placed canvas."""

    requires: tuple[str, ...] = ("item_id", "image", "product_mask")
    produces: tuple[str, ...] = (
        "output_id",
        "style",
        "style_key",
        "aspect",
        "variant",
        "seed",
        "prompt",
        "negative_prompt",
        "placement",
        "canvas",
        "canvas_mask",
    )

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        context = context or StageContext()
        self.config = config
        self.styles = context.style_book(config)
        # Computed on the driver and passed in: workers on other nodes may not see the styles file.
        self.fingerprint = context.fingerprint or config.fingerprint()
        self._profiles: ProfileBook | None = None

    @property
    def profiles(self) -> ProfileBook:
        if self._profiles is None:
            self._profiles = ProfileBook.load(self.config.output.profiles_file)
        return self._profiles

    def requests(self, batch: Batch, index: int) -> tuple[list[str], int, list[Target]]:
        """Styles, variants and targets (aspect ratio or profile) row ``index`` asks for."""
        output = self.config.output
        styles = _split(batch["style"][index] if "style" in batch else None, self.config.styles.default)
        variants = output.variants
        if "variants" in batch and not _missing(batch["variants"][index]):
            variants = int(batch["variants"][index])
        profiles = _split(batch["profile"][index] if "profile" in batch else None, output.profiles)
        own_aspects = batch["aspect_ratios"][index] if "aspect_ratios" in batch else None
        default_aspects = [] if profiles and _missing(own_aspects) else output.aspect_ratios
        aspects = _split(own_aspects, default_aspects)
        aspects = list(dict.fromkeys(canonical_aspect(a) if _valid_aspect(a) else a for a in aspects))
        targets: list[Target] = [(aspect, "") for aspect in aspects]
        for name in dict.fromkeys(profiles):
            try:
                targets.append((self.profiles.get(name).aspect, name))
            except (ProfileError, OSError):
                targets.append(("", name))  # an error row says why
        return styles, max(1, variants), targets

    def style_key(self, requested: str) -> str:
        try:
            return self.styles.resolve(requested).key
        except ValueError:
            return INVALID_STYLE

    def output_ids(self, batch: Batch, index: int) -> list[str]:
        """The output ids row ``index`` asks for (what resume and the exactly-once check count)."""
        item_id = str(batch["item_id"][index])
        styles, variants, targets = self.requests(batch, index)
        return [
            output_id(item_id, self.style_key(requested), aspect, variant, profile)
            for requested in styles
            for aspect, profile in targets
            for variant in range(variants)
        ]

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        composite = self.config.composite
        long_side = self.config.output.long_side if composite.scale == "fit" else None
        rows: list[dict[str, Any]] = []
        for index in range(len(batch["status"])):
            carried = {c: batch[c][index] for c in CARRIED if c in batch}
            item_id = str(batch["item_id"][index])
            styles, variants, targets = self.requests(batch, index)
            done = _done_outputs(batch, index)
            for requested in styles:
                key = self.style_key(requested) if done else ""
                for aspect, profile in targets:
                    for variant in range(variants):
                        if done and output_id(item_id, key, aspect, variant, profile) in done:
                            continue  # finished by an earlier run (resume)
                        row: dict[str, Any] = dict(carried)
                        row.update(
                            status=batch["status"][index],
                            error=batch["error"][index],
                            style=requested,
                            style_key="",
                            aspect=aspect,
                            variant=variant,
                            seed=-1,
                            prompt="",
                            negative_prompt="",
                            placement="",
                            output_id="",
                            profile=profile,
                            background_rule="",
                            image_format="",
                            image_quality=0,
                            product_scale=float("nan"),
                            canvas=PLACEHOLDER_IMAGE,
                            canvas_mask=PLACEHOLDER_MASK,
                        )
                        target = (aspect, profile)
                        self._fill(row, batch, index, item_id, requested, target, variant, long_side)
                        rows.append(row)
        return rows_batch(
            rows,
            arrays=("canvas", "canvas_mask", "style_image"),
            ints=("variant", "seed", "image_quality"),
            floats_by_value=True,
        )

    def _fill(
        self,
        row: dict[str, Any],
        batch: Batch,
        index: int,
        item_id: str,
        requested: str,
        target: Target,
        variant: int,
        long_side: int | None,
    ) -> None:
        aspect, profile_name = target
        try:
            style = self.styles.resolve(requested)
            row["style"], row["style_key"] = style.name, style.key
            row["output_id"] = output_id(item_id, style.key, aspect, variant, profile_name)
            requested_seed = batch["seed"][index] if "seed" in batch else None
            if requested_seed is not None and not _missing(requested_seed) and int(requested_seed) >= 0:
                row["seed"] = (int(requested_seed) + variant) & 0x7FFFFFFF
            else:
                row["seed"] = derive_seed(item_id, variant, style.key, self.fingerprint)
            row["negative_prompt"] = style.negative_prompt
            given = batch["prompt"][index] if "prompt" in batch else None  # a request's own prompt
            row["prompt"] = (
                " ".join(str(given).split())
                if isinstance(given, str) and given.strip()
                else build_prompt(
                    style,
                    str(batch["product_description"][index]) if "product_description" in batch else "",
                    self.config.caption.max_words,
                )
            )
            profile = self._profile(row, profile_name, style.name) if profile_name else None
            if row["status"] != OK:
                return
            composite = self.config.composite
            if profile is not None:
                image = batch["image"][index]
                where = plan_profile_placement(
                    batch["product_mask"][index], (int(image.shape[1]), int(image.shape[0])), profile
                )
            else:
                where = plan_placement(
                    batch["product_mask"][index],
                    parse_aspect(aspect),
                    fill=composite.fill,
                    placement=composite.placement,
                    floor_margin=composite.floor_margin,
                    long_side=long_side,
                )
            width, height = where.canvas
            if width * height > self.config.limits.max_pixels:
                raise ValueError(f"canvas {width}x{height} for aspect {aspect} exceeds limits.max_pixels")
            row["canvas"], row["canvas_mask"] = place_product(
                batch["image"][index], batch["product_mask"][index], where
            )
            row["placement"] = where.to_json()
            row["product_scale"] = float(where.scale)
        except Exception as error:  # noqa: BLE001 - becomes an error row
            if row["status"] == OK:
                stage = "profile" if isinstance(error, ProfileError) else STAGE
                row["status"], row["error"] = ERROR, f"{stage}: {describe(error)}"
            if not row["output_id"]:
                row["output_id"] = output_id(item_id, INVALID_STYLE, aspect, variant, profile_name)

    def _profile(self, row: dict[str, Any], name: str, style: str) -> OutputProfile:
        """The row's profile, its encoding and background rule set on the row; raises ProfileError."""
        profile = self.profiles.get(name)
        if profile.styles is not None and style not in profile.styles:
            raise ProfileError(f"profile {name} allows the styles {profile.styles}, not {style!r}")
        row["background_rule"] = profile.background
        row["image_format"], row["image_quality"] = profile.format, profile.quality
        return profile


def placement_of(row_placement: str) -> dict[str, Any]:
    return json.loads(row_placement) if row_placement else {}
