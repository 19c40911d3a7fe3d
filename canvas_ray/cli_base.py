"""What every ``canvas-ray`` command module shares: the default config and dotted overrides from options."""

from __future__ import annotations

import argparse
from typing import Any

from canvas_ray.config import REPO_ROOT, CanvasConfig, load_config

DEFAULT_CONFIG = REPO_ROOT / "configs" / "local.yaml"


def cli_config(path: str | None, overrides: dict[str, Any] | None = None) -> CanvasConfig:
    """The config of a command: ``--config`` or, without one, ``configs/local.yaml`` (if present)."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = str(DEFAULT_CONFIG)
    return load_config(path, overrides)


def given(args: argparse.Namespace, keys: dict[str, str]) -> dict[str, Any]:
    """Dotted config overrides from the options that were given: ``{"variants": "output.variants"}`` →
    ``{"output.variants": args.variants}`` when ``args.variants`` is set (not None, 0 or empty)."""
    return {dotted: getattr(args, name) for name, dotted in keys.items() if getattr(args, name)}
