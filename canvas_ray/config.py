"""The one config schema shared by the batch job, the online service and the tools.

A YAML file maps onto :class:`CanvasConfig`. Unknown keys and bad values fail with a :class:`ConfigError`
that names the offending key (``inpaint.steps: Input should be greater than 0``). Paths inside a config
(styles file, local model folders) are resolved relative to the config file.

The sections live by concern: :mod:`canvas_ray.config_stages` (resources and the model stages),
:mod:`canvas_ray.config_sections` (composite, output, styles, quality, provenance, limits, ray),
:mod:`canvas_ray.config_serve` (serve and its jobs) on :mod:`canvas_ray.config_base`; every name stays
importable from here.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from canvas_ray.config_base import (
    DEFAULT_PROFILES_FILE,
    DEFAULT_STYLES_FILE,
    PACKAGE_ROOT,
    REPO_ROOT,
    ConfigError,
    StrictModel,
    canonical_aspect,
    parse_aspect,
)
from canvas_ray.config_sections import (
    CompositeConfig,
    ExpansionConfig,
    LimitsConfig,
    OutputConfig,
    ProvenanceConfig,
    QualityConfig,
    RayConfig,
    ScoringConfig,
    StylesConfig,
)
from canvas_ray.config_serve import JobsConfig, ServeConfig
from canvas_ray.config_stages import (
    CaptionConfig,
    InpaintConfig,
    IPAdapterSpec,
    LoraSpec,
    ModelStage,
    Resources,
    SegmentConfig,
)

_Strict = StrictModel
Schema = TypeVar("Schema", bound=BaseModel)  # the name before the sections moved out

__all__ = [
    "DEFAULT_PROFILES_FILE",
    "DEFAULT_STYLES_FILE",
    "PACKAGE_ROOT",
    "REPO_ROOT",
    "CanvasConfig",
    "CaptionConfig",
    "CompositeConfig",
    "ConfigError",
    "ExpansionConfig",
    "IPAdapterSpec",
    "InpaintConfig",
    "JobsConfig",
    "LimitsConfig",
    "LoraSpec",
    "ModelStage",
    "OutputConfig",
    "ProvenanceConfig",
    "QualityConfig",
    "RayConfig",
    "Resources",
    "ScoringConfig",
    "SegmentConfig",
    "ServeConfig",
    "StylesConfig",
    "apply_overrides",
    "canonical_aspect",
    "config_from_dict",
    "load_config",
    "parse_aspect",
    "read_yaml_mapping",
    "relative_to",
    "resolve_relative",
    "validated",
]


class CanvasConfig(StrictModel):
    """Everything a run needs; the same file drives `canvas-ray generate`, `generate-one` and `serve`."""

    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    inpaint: InpaintConfig = Field(default_factory=InpaintConfig)
    composite: CompositeConfig = Field(default_factory=CompositeConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    styles: StylesConfig = Field(default_factory=StylesConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    provenance: ProvenanceConfig = Field(default_factory=ProvenanceConfig)
    source: str | None = Field(None, exclude=True, description="file this config was read from")

    @model_validator(mode="after")
    def _fit_needs_size(self) -> CanvasConfig:
        if self.composite.scale == "fit" and self.output.long_side is None:
            raise ValueError("composite.scale=fit needs output.long_side")
        if self.output.profiles:
            from canvas_ray.profiles import ProfileBook

            book = ProfileBook.load(self.output.profiles_file)
            for name in self.output.profiles:
                book.get(name)  # unknown names fail here, listing the known ones
        return self

    def fingerprint(self) -> str:
        """Hash of everything that changes pixels (not resources, not serving), plus the style presets."""
        payload = self.model_dump(mode="json", exclude={"ray", "serve", "limits", "source", "provenance"})
        for stage in ("segment", "caption", "inpaint"):
            payload[stage].pop("resources", None)
            payload[stage].pop("device", None)
        for knob in ("channels_last", "compile", "compile_mode", "attention", "vae_slicing", "offload"):
            payload["inpaint"].pop(knob, None)  # how fast, not what is drawn
        if not payload["inpaint"].get("vae_tiling"):
            payload["inpaint"].pop("vae_tiling", None)  # tiles can leave seams: counts only when on
        payload["composite"].pop("resources", None)
        # Style files count by content, not by path: the same job from another checkout keeps its seeds.
        files = [payload["styles"].pop("file"), *payload["styles"].pop("extra_files")]
        payload["styles_content"] = [Path(f).read_bytes().decode() if Path(f).is_file() else f for f in files]
        for stage in ("segment", "caption", "inpaint"):
            model = payload[stage].get("model")
            if model and Path(model).is_dir():  # local folders count by name, not by absolute path
                payload[stage]["model"] = Path(model).name
        adapter = payload["inpaint"].get("ip_adapter")
        if adapter and Path(adapter["model"]).is_dir():
            adapter["model"] = Path(adapter["model"]).name
        # Which profiles are made is part of each output id (like aspect ratios); what they draw counts by
        # content when a run uses them (left out otherwise, so plain runs keep their fingerprints).
        profiles_file = payload["output"].pop("profiles_file")
        if payload["output"].pop("profiles"):
            payload["profiles_content"] = Path(profiles_file).read_text()
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/local.yaml for every key)"
        lines.append(f"  {key}: {message}")
    return f"invalid config {source}:\n" + "\n".join(lines)


def relative_to(base: Path, value: Any) -> Any:
    """A relative file path of a config file in folder ``base``, made relative to that file when it exists
    there (or starts with '.'); URIs, absolute paths, empty values and non-strings come back unchanged."""
    if not isinstance(value, str) or not value or "://" in value or Path(value).is_absolute():
        return value
    candidate = (base / value).resolve()
    return str(candidate) if candidate.exists() or value.startswith(".") else value


def resolve_relative(data: dict[str, Any], base: Path) -> None:
    """Make relative file paths in a config file relative to that file, if they exist there."""

    fix = partial(relative_to, base)
    for stage in ("segment", "caption", "inpaint"):
        section = data.get(stage)
        if isinstance(section, dict) and isinstance(section.get("model"), str):
            section["model"] = fix(section["model"])
        adapter = section.get("ip_adapter") if isinstance(section, dict) else None
        if isinstance(adapter, dict) and isinstance(adapter.get("model"), str):
            adapter["model"] = fix(adapter["model"])
        if isinstance(section, dict) and isinstance(section.get("loras"), list):
            for lora in section["loras"]:
                if isinstance(lora, dict) and isinstance(lora.get("path"), str):
                    lora["path"] = fix(lora["path"])
    output = data.get("output")
    if isinstance(output, dict) and isinstance(output.get("profiles_file"), str):
        output["profiles_file"] = fix(output["profiles_file"])
    styles = data.get("styles")
    if isinstance(styles, dict):
        if isinstance(styles.get("file"), str):
            styles["file"] = fix(styles["file"])
        if isinstance(styles.get("extra_files"), list):
            styles["extra_files"] = [fix(v) if isinstance(v, str) else v for v in styles["extra_files"]]


def config_from_dict(
    data: dict[str, Any] | None, source: str = "<dict>", base: Path | None = None
) -> CanvasConfig:
    data = dict(data or {})
    if base is not None:
        resolve_relative(data, base)
    return validated(CanvasConfig, data, source)


def validated(schema: type[Schema], data: dict[str, Any], source: str) -> Schema:
    """``data`` read from ``source`` as a config ``schema`` (with a ``source`` field, which is set); a
    :class:`ConfigError` naming every bad key otherwise."""
    try:
        return schema.model_validate({**data, "source": source})
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def read_yaml_mapping(file: Path, missing_hint: str = "") -> dict[str, Any]:
    """A YAML file that must hold a mapping of sections; clear ConfigErrors otherwise."""
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}{missing_hint}")
    try:
        loaded = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config {file} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {file} must be a mapping of sections")
    return loaded


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> None:
    """Set dotted keys like ``{"output.variants": 2}`` in a config mapping, creating sections as needed."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
        node[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CanvasConfig:
    """Read a YAML config (None: defaults); apply dotted overrides like ``{"output.variants": 2}``."""
    data: dict[str, Any] = {}
    base = None
    source = "<defaults>"
    if path is not None:
        file = Path(path)
        data = read_yaml_mapping(file, " (pass --config with a path to a YAML file)")
        base, source = file.resolve().parent, str(file)
    apply_overrides(data, overrides)
    return config_from_dict(data, source=source, base=base)
