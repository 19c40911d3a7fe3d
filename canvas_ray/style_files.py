"""Editing a styles YAML file (``configs/styles.yaml`` layout): add or update a preset with a LoRA.

The file is checked as a :class:`canvas_ray.styles.StyleBook` before it replaces the original (written to a
temp file beside it, then renamed), so a bad edit never leaves a broken styles file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from canvas_ray.config import ConfigError


def add_lora_style(
    styles_file: str | Path,
    name: str,
    lora: str | Path,
    prompt: str,
    weight: float = 0.8,
    negative_prompt: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Append preset ``name`` with a LoRA to ``styles_file``, or update the preset of that name (any case).

    Args:
        styles_file (`str | Path`): the styles YAML; created (with its folder) when missing.
        name (`str`): preset name; an existing preset that matches it case-insensitively is updated.
        lora (`str | Path`): a LoRA folder (``pytorch_lora_weights.safetensors``) or file; must exist.
        prompt (`str`): scene prompt of the style.
        weight (`float`, defaults to 0.8): adapter scale.
        negative_prompt (`str | None`): replaces the preset's negative prompt when given.
        description (`str | None`): replaces the description; a new preset gets a default one.

    Returns:
        The preset as written. A new preset under a trailing ``styles:`` section is appended as text, so
        the file's comments stay; otherwise the whole file is written again.

    Raises:
        ConfigError: the file is not a mapping, the LoRA does not exist, or the result is no valid styles
            file (the original is then untouched).
    """
    from canvas_ray.styles import StyleBook

    target = Path(styles_file)
    data: dict[str, Any] = yaml.safe_load(target.read_text()) if target.is_file() else {}
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"styles file {target} must be a mapping with a styles: section")
    styles = data.setdefault("styles", {}) or {}
    data["styles"] = styles
    lora = Path(lora)
    if not lora.exists():
        raise ConfigError(f"--lora {lora} does not exist (a LoRA folder or .safetensors file)")
    existing = next((key for key in styles if str(key).lower() == name.lower()), None)
    preset = dict(styles.get(existing) or {}) if existing is not None else {}
    preset["prompt"] = prompt
    if negative_prompt is not None:
        preset["negative_prompt"] = negative_prompt
    preset["lora"] = str(lora.resolve())
    preset["lora_weight"] = weight
    if description is not None:
        preset["description"] = description
    preset.setdefault("description", f"fine-tuned LoRA style {name}")
    styles[existing if existing is not None else name] = preset
    target.parent.mkdir(parents=True, exist_ok=True)
    original = target.read_text() if target.is_file() else ""
    top_level = [line for line in original.splitlines() if line and not line[0].isspace() and line[0] != "#"]
    if existing is None and top_level and top_level[-1].strip() == "styles:":
        # a new preset under a trailing `styles:` section: append as text, keeping the file's comments
        entry = yaml.safe_dump({name: preset}, sort_keys=False, allow_unicode=True)
        text = original.rstrip("\n") + "\n" + "".join(f"  {line}\n" for line in entry.splitlines())
    else:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if (yaml.safe_load(text) or {}) != data:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        StyleBook.from_files([tmp])  # raises ConfigError naming the problem; the original stays untouched
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return preset
