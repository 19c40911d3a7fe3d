"""Output profiles per channel (Amazon, Google Shopping, Pinterest, Instagram, stories) and their checks.

A profile is an output axis like an aspect ratio: it fixes the frame size, how much of it the product
fills, the background rule, the shadow and the encoding, and every output made for it is checked
against it (:func:`check_compliance`). The product may be scaled to fit a profile (down, or up where the
profile allows it); the scale is recorded and the product check compares the result with the same
resampled product that was pasted, so preservation stays exact.

Profiles live in ``configs/profiles.yaml`` (``output.profiles_file``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from canvas_ray.compose import HARD, Placement, product_bbox

PROFILE_NAME = r"^[a-z][a-z0-9-]{1,39}$"
_NAME_RE = re.compile(PROFILE_NAME)
ASPECT_TOLERANCE = 0.01  # relative; frames are whole pixels


class ProfileError(ValueError):
    """A profile that does not exist or cannot be used; the message says what to fix."""


class ProvenanceRule(BaseModel):
    """What a channel asks of a generated image's embedded provenance; checked on the written file.

    Args:
        iptc: the XMP must carry the IPTC ``DigitalSourceType`` (default True).
        c2pa: ``none`` (not required), ``present`` or ``signed`` (a C2PA manifest that validates).
        policy: the channel policy the rule comes from (shown in reasons and docs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    iptc: bool = True
    c2pa: Literal["none", "present", "signed"] = "none"
    policy: str = ""


class OutputProfile(BaseModel):
    """One channel's rules for a delivered image.

    Args:
        name: the profile's name (``amazon-main``); also part of the output id.
        size: (width, height) of the output; the preferred size when ``min_size`` is smaller.
        min_size: the smallest accepted (width, height), same aspect (None: ``size``, a fixed size).
        fill: share of the frame the product's box takes along its tightest side (the target).
        min_fill: compliance: the product fills at least this share (None: not checked).
        min_margin: compliance: at least this share of the frame between the product box and each edge.
        placement: ``center`` or ``floor`` (on the floor with ``floor_margin`` below).
        background: ``pure_white`` (RGB 255 outside the product, nothing generated) or ``generated``.
        shadow: a contact shadow (generated backgrounds only).
        format: ``png``, ``jpeg`` or ``webp``; quality: 1..100 for the lossy formats.
        styles: the style names this profile accepts (None: any).
        allow_upscale: the product may be enlarged to reach ``min_size`` (recorded as ``upscaled``).
        min_source_side: a source photo whose longer side is below this is too small, always.
        provenance: the channel's provenance rule (:class:`ProvenanceRule`), checked on the written file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=PROFILE_NAME)
    description: str = ""
    size: tuple[int, int]
    min_size: tuple[int, int] | None = None
    fill: float = Field(0.8, gt=0.05, le=1.0)
    min_fill: float | None = Field(None, gt=0, le=1.0)
    min_margin: float = Field(0.0, ge=0, lt=0.5)
    placement: Literal["center", "floor"] = "center"
    floor_margin: float = Field(0.08, ge=0, lt=0.5)
    background: Literal["pure_white", "generated"] = "generated"
    shadow: bool = True
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(92, ge=1, le=100)
    styles: list[str] | None = None
    allow_upscale: bool = False
    min_source_side: int = Field(1, ge=1, le=10_000)
    provenance: ProvenanceRule = Field(default_factory=ProvenanceRule)

    @field_validator("size", "min_size")
    @classmethod
    def _size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not all(16 <= side <= 10_000 for side in value):
            raise ValueError(f"sides must be 16..10000 px, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OutputProfile:
        if self.name and re.fullmatch(r"\d+(\.\d+)?x\d+(\.\d+)?", self.name):
            raise ValueError("a profile name must not look like an aspect ratio")
        if self.min_size is not None:
            (w, h), (mw, mh) = self.size, self.min_size
            if mw > w or mh > h:
                raise ValueError("min_size must not exceed size")
            if abs(mw / mh - w / h) > ASPECT_TOLERANCE * (w / h):
                raise ValueError("min_size must have the aspect of size")
        if self.min_fill is not None and self.min_fill > self.fill:
            raise ValueError(f"min_fill {self.min_fill} is above the target fill {self.fill}")
        if self.background == "pure_white" and self.shadow:
            raise ValueError(
                "a pure_white background takes no shadow (everything outside the product is 255)"
            )
        if 2 * self.min_margin + self.fill > 1.0 + 1e-9:
            raise ValueError("fill plus both margins exceed the frame")
        return self

    @property
    def smallest(self) -> tuple[int, int]:
        return self.min_size or self.size

    @property
    def aspect(self) -> str:
        """The frame's aspect ratio as ``W:H`` in lowest terms (``2000x2000`` → ``1:1``)."""
        w, h = self.size
        g = math.gcd(w, h)
        return f"{w // g}:{h // g}"


@dataclass(frozen=True)
class ProfileBook:
    """The named profiles of one profiles file."""

    profiles: dict[str, OutputProfile]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> ProfileBook:
        return _load(str(Path(path).resolve()))

    def get(self, name: str) -> OutputProfile:
        try:
            return self.profiles[name]
        except KeyError:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise ProfileError(f"unknown profile {name!r}; profiles: {known}") from None

    def names(self) -> list[str]:
        return sorted(self.profiles)


@lru_cache(maxsize=8)
def _load(path: str) -> ProfileBook:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ProfileError(f"profiles file not found: {file}")
    data = yaml.safe_load(file.read_text()) or {}
    entries = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ProfileError(f"{file}: expected a mapping `profiles: {{name: {{...}}}}`")
    profiles: dict[str, OutputProfile] = {}
    for name, body in entries.items():
        if not isinstance(body, dict):
            raise ProfileError(f"{file}: profiles.{name} must be a mapping")
        try:
            profiles[str(name)] = OutputProfile.model_validate({**body, "name": name})
        except ValidationError as error:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or name}: {e['msg']}" for e in error.errors()
            )
            raise ProfileError(f"{file}: profiles.{name}: {detail}") from None
    return ProfileBook(profiles, str(file))


def valid_profile_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


# ---- placement -----------------------------------------------------------------------------------


def plan_profile_placement(
    mask: np.ndarray, source_size: tuple[int, int], profile: OutputProfile
) -> Placement:
    """Frame and product scale for ``profile``; raises :class:`ProfileError` when the source is too small.

    The product box takes ``fill`` of the frame along its tightest side. The frame is the profile's size
    when the product can be scaled down (or kept) to fit it; a variable-size profile otherwise shrinks the
    frame, down to ``min_size``, so that the product keeps its native pixels; below that the product must
    be enlarged, which only ``allow_upscale`` permits.
    """
    source_w, source_h = source_size
    if max(source_w, source_h) < profile.min_source_side:
        raise ProfileError(
            f"source {source_w}x{source_h} px is too small for profile {profile.name}: its longer side "
            f"must be at least {profile.min_source_side} px"
        )
    x0, y0, x1, y1 = product_bbox(mask >= HARD) if (mask >= HARD).any() else product_bbox(mask)
    w, h = x1 - x0, y1 - y0
    width, height = profile.size
    scale = min(profile.fill * width / w, profile.fill * height / h)
    if scale > 1.0:
        min_w, min_h = profile.smallest
        native_w, native_h = round(width / scale), round(height / scale)
        if native_w >= min_w and native_h >= min_h:  # a smaller frame keeps the product's own pixels
            width, height, scale = native_w, native_h, 1.0
        else:
            needed = scale * min_w / width
            if not profile.allow_upscale:
                raise ProfileError(
                    f"source too small for profile {profile.name}: the product ({w}x{h} px) would have to "
                    f"be enlarged {needed:.2f}x to fill {profile.fill:.0%} of a {min_w}x{min_h} frame, "
                    "and the profile does not allow upscaling (use a larger photo)"
                )
            width, height, scale = min_w, min_h, needed
    scaled_w, scaled_h = max(1, round(w * scale)), max(1, round(h * scale))
    x = (width - scaled_w) // 2
    if profile.placement == "floor":
        y = height - scaled_h - round(profile.floor_margin * height)
        y = min(max(y, (height - scaled_h) // 2), height - scaled_h)
    else:
        y = (height - scaled_h) // 2
    return Placement((x0, y0, x1, y1), (width, height), (max(0, x), max(0, y)), scale)


# ---- compliance ----------------------------------------------------------------------------------


@dataclass
class Compliance:
    """What an output was checked for and found; ``issues`` empty means compliant."""

    profile: str
    width: int
    height: int
    fill_ratio: float
    min_margin: float
    background_purity: float | None  # share of non-product pixels exactly RGB 255 (pure_white only)
    product_scale: float
    upscaled: bool
    issues: list[str] = field(default_factory=list)

    @property
    def compliant(self) -> bool:
        return not self.issues

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "compliant": self.compliant})


def check_compliance(
    result: np.ndarray, canvas_mask: np.ndarray, profile: OutputProfile, product_scale: float = 1.0
) -> Compliance:
    """Check one final image against its profile: resolution, aspect, fill, margins, background."""
    height, width = result.shape[:2]
    hard = canvas_mask >= HARD
    issues: list[str] = []
    min_w, min_h = profile.smallest
    max_w, max_h = profile.size
    if width < min_w or height < min_h:
        issues.append(f"resolution {width}x{height} below {min_w}x{min_h}")
    if width > max_w or height > max_h:
        issues.append(f"resolution {width}x{height} above {max_w}x{max_h}")
    want = profile.size[0] / profile.size[1]
    if abs(width / height - want) > ASPECT_TOLERANCE * want:
        issues.append(f"aspect {width}:{height} is not {profile.aspect}")
    fill = margin = 0.0
    if hard.any():
        x0, y0, x1, y1 = product_bbox(hard)
        fill = max((x1 - x0) / width, (y1 - y0) / height)
        margin = min(x0 / width, (width - x1) / width, y0 / height, (height - y1) / height)
    else:
        issues.append("no product in the frame")
    if profile.min_fill is not None and fill + 1e-9 < profile.min_fill:
        issues.append(f"product fills {fill:.1%} of the frame, below {profile.min_fill:.0%}")
    if margin + 1e-9 < profile.min_margin:
        issues.append(f"margin {margin:.1%} below {profile.min_margin:.0%}")
    purity = None
    if profile.background == "pure_white":
        outside = result[..., :3][~hard]
        white = np.all(outside == 255, axis=-1)
        purity = float(white.mean()) if white.size else 1.0
        if not white.all():
            issues.append(f"background {1 - purity:.2%} of pixels outside the product are not RGB 255")
    return Compliance(
        profile.name,
        int(width),
        int(height),
        round(fill, 4),
        round(margin, 4),
        None if purity is None else round(purity, 6),
        round(float(product_scale), 4),
        product_scale > 1.0 + 1e-9,
        issues,
    )


def render_pure_white(canvas: np.ndarray, canvas_mask: np.ndarray) -> np.ndarray:
    """The product pixels on RGB 255: no feathering, no shadow, nothing else outside the product."""
    hard = canvas_mask >= HARD
    result = np.full_like(canvas[..., :3], 255)
    result[hard] = canvas[..., :3][hard]
    return result
