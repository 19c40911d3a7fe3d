"""Background styles: named presets from YAML, free-text styles, and the prompts built from them.

A brand asks for a style by preset name ("marble countertop") or by plain description ("on a mossy rock by
a waterfall"). Either way it resolves to a :class:`Style`, which carries the diffusion prompt, the negative
prompt, the weight-free backdrop recipe and optionally a LoRA adapter with its weight.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from canvas_ray.config import CanvasConfig, ConfigError

_HEX_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
MAX_STYLE_TEXT = 400
DEFAULT_NEGATIVE = (
    "text, watermark, logo, extra objects, duplicate product, people, hands, blurry, distorted, "
    "deformed, low quality, jpeg artifacts, oversaturated"
)


class Backdrop(BaseModel):
    """Recipe for the weight-free studio renderer."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["solid", "gradient", "sweep"] = "sweep"
    colors: list[str] = Field(default_factory=lambda: ["#f5f5f3", "#e6e6e2"], min_length=1, max_length=4)
    floor: str | None = None
    shadow: float = Field(0.35, ge=0, le=1)
    texture: Literal["none", "noise", "marble", "wood", "linen"] = "none"
    light: Literal["top", "left", "right", "center"] = "top"

    @field_validator("colors")
    @classmethod
    def _hex_colors(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _HEX_RE.match(value):
                raise ValueError(f"colour must be #rrggbb, got {value!r}")
        return values

    @field_validator("floor")
    @classmethod
    def _hex_floor(cls, value: str | None) -> str | None:
        if value is not None and not _HEX_RE.match(value):
            raise ValueError(f"floor must be #rrggbb, got {value!r}")
        return value


class StylePreset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    backdrop: Backdrop = Field(default_factory=Backdrop)
    lora: str | None = None
    lora_weight: float = 1.0
    description: str = ""


@dataclass(frozen=True)
class Style:
    """A resolved style. ``key`` is stable and filesystem-safe; it names output folders and seeds."""

    name: str
    key: str
    prompt: str
    negative_prompt: str
    backdrop: Backdrop
    lora: str | None = None
    lora_weight: float = 1.0
    description: str = ""
    preset: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def style_key(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "style"
    return slug


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


# Colour words a free-text style may use, so the weight-free backdrop follows the request too.
_COLOUR_WORDS = {
    "white": "#f4f4f2",
    "black": "#1c1c1e",
    "grey": "#9a9a9e",
    "gray": "#9a9a9e",
    "red": "#c8413b",
    "orange": "#e98a3c",
    "yellow": "#f0d264",
    "gold": "#c9a34a",
    "golden": "#c9a34a",
    "green": "#6f9a5b",
    "sage": "#a3b18a",
    "mint": "#bfe3cf",
    "teal": "#3f8f8c",
    "blue": "#4f7cc0",
    "navy": "#22335a",
    "sky": "#a9cdea",
    "purple": "#7d5ba6",
    "lavender": "#c9b8e6",
    "pink": "#efb6c8",
    "peach": "#f6c7a8",
    "beige": "#e4d5bd",
    "cream": "#f3ead6",
    "brown": "#7a5537",
    "wood": "#a27650",
    "wooden": "#a27650",
    "marble": "#eeeceb",
    "concrete": "#a8a6a1",
    "sand": "#dcc7a0",
    "beach": "#e6d2a8",
    "ocean": "#3f83a6",
    "forest": "#3f5e3a",
    "snow": "#f1f4f8",
    "pastel": "#f3d9e2",
    "terracotta": "#c46d4e",
    "silver": "#c5c8cc",
}
_TEXTURE_WORDS = {
    "marble": "marble",
    "wood": "wood",
    "wooden": "wood",
    "linen": "linen",
    "fabric": "linen",
    "concrete": "noise",
    "stone": "noise",
    "sand": "noise",
}


def _free_text_backdrop(text: str) -> Backdrop:
    words = re.findall(r"[a-z]+", text.lower())
    colours = [_COLOUR_WORDS[w] for w in words if w in _COLOUR_WORDS]
    texture = next((_TEXTURE_WORDS[w] for w in words if w in _TEXTURE_WORDS), "none")
    if not colours:
        digest = hashlib.sha256(text.encode()).digest()
        base = tuple(200 + b % 50 for b in digest[:3])
        colours = ["#{:02x}{:02x}{:02x}".format(*base)]
    if len(colours) == 1:
        r, g, b = hex_to_rgb(colours[0])
        colours.append("#{:02x}{:02x}{:02x}".format(*(max(0, int(c * 0.85)) for c in (r, g, b))))
    dark = sum(hex_to_rgb(colours[0])) < 300
    return Backdrop(
        kind="sweep",
        colors=colours[:3],
        floor=colours[1],
        texture=texture,  # type: ignore[arg-type]
        shadow=0.5 if not dark else 0.25,
        light="top",
    )


class StyleBook:
    """The preset catalogue (one or more YAML files) and the resolver for names or free text."""

    def __init__(self, presets: dict[str, StylePreset], default_negative: str = DEFAULT_NEGATIVE):
        self.presets = presets
        self.default_negative = default_negative
        self._by_lower = {name.lower(): name for name in presets}

    @classmethod
    def from_files(cls, files: Iterable[str | Path]) -> StyleBook:
        presets: dict[str, StylePreset] = {}
        negative = DEFAULT_NEGATIVE
        for file in files:
            path = Path(file)
            if not path.is_file():
                raise ConfigError(f"styles file not found: {path} (set styles.file in the config)")
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict) or not isinstance(data.get("styles"), dict):
                raise ConfigError(
                    f"styles file {path} must have a top-level 'styles:' mapping of name -> preset"
                )
            negative = data.get("default_negative_prompt") or negative
            for name, raw in data["styles"].items():
                if raw is not None and not isinstance(raw, dict):
                    raise ConfigError(
                        f"styles file {path}: style {name!r}: must be a mapping of fields "
                        f"(prompt:, backdrop:, ...), got {type(raw).__name__}"
                    )
                raw = dict(raw or {})
                if raw.get("lora") and not Path(raw["lora"]).is_absolute():
                    candidate = (path.parent / raw["lora"]).resolve()
                    raw["lora"] = str(candidate) if candidate.exists() else raw["lora"]
                try:
                    presets[str(name)] = StylePreset.model_validate(raw)
                except ValidationError as error:
                    first = error.errors()[0]
                    key = ".".join(str(p) for p in first["loc"])
                    raise ConfigError(f"styles file {path}: style {name!r}: {key}: {first['msg']}") from None
        return cls(presets, negative)

    @classmethod
    def from_config(cls, config: CanvasConfig) -> StyleBook:
        return cls.from_files([config.styles.file, *config.styles.extra_files])

    def names(self) -> list[str]:
        return list(self.presets)

    def resolve(self, requested: str) -> Style:
        """A preset by name (case-insensitive), else the text itself as a free-text style."""
        text = " ".join(str(requested).split())
        if not text:
            raise ValueError(
                "style is empty: give a preset name (see `canvas-ray styles list`) or a description"
            )
        if len(text) > MAX_STYLE_TEXT:
            raise ValueError(f"style text is {len(text)} characters; at most {MAX_STYLE_TEXT}")
        name = self._by_lower.get(text.lower())
        if name is not None:
            preset = self.presets[name]
            return Style(
                name=name,
                key=style_key(name),
                prompt=preset.prompt,
                negative_prompt=preset.negative_prompt or self.default_negative,
                backdrop=preset.backdrop,
                lora=preset.lora,
                lora_weight=preset.lora_weight,
                description=preset.description,
            )
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return Style(
            name=text,
            key=f"custom-{style_key(text)[:24]}-{digest}",
            prompt=f"{text}, professional product photography, high detail, soft natural light",
            negative_prompt=self.default_negative,
            backdrop=_free_text_backdrop(text),
            preset=False,
        )


def build_prompt(style: Style, product_description: str, max_words: int = 20) -> str:
    """Product first (what must stay), then the scene the style asks for."""
    words = product_description.split()
    product = " ".join(words[:max_words]).rstrip(" ,.")
    if not product:
        return style.prompt
    return f"{product}, {style.prompt}"
