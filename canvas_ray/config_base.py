"""The ground every config section stands on: the error type, the strict base model, shared validators.

Below :mod:`canvas_ray.config_stages`, :mod:`canvas_ray.config_sections`, :mod:`canvas_ray.config_serve`,
:mod:`canvas_ray.config` and the fine-tuning schema (:mod:`canvas_ray.train.config`); imports nothing of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_STYLES_FILE = REPO_ROOT / "configs" / "styles.yaml"
DEFAULT_PROFILES_FILE = REPO_ROOT / "configs" / "profiles.yaml"
_ASPECT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$")


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names the key and says what to fix."""


class StrictModel(BaseModel):
    """A config section: unknown keys fail, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def multiple_of_8(value: int) -> int:
    """Validator of a model canvas size (``resolution``): latents are an eighth of the pixels."""
    if value % 8:
        raise ValueError(f"resolution must be a multiple of 8, got {value}")
    return value


def check_device(value: str) -> str:
    """Validator of a torch device name: auto, cpu, mps, cuda or cuda:N."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N, got {value!r}")
    return value


def checked_prefixes(values: list[str]) -> list[str]:
    """Validator of URI prefix allowlists (:func:`canvas_ray.io.uris.prefix_problem` names what is wrong)."""
    from canvas_ray.io.uris import prefix_problem

    for value in values:
        problem = prefix_problem(value)
        if problem:
            raise ValueError(problem)
    return values


def parse_aspect(value: str) -> float:
    """``"2:3"`` (also ``2x3``, ``2/3``) → width / height."""
    match = _ASPECT_RE.match(value)
    if not match or float(match.group(1)) <= 0 or float(match.group(2)) <= 0:
        raise ValueError(f"aspect ratio must look like 'W:H' with positive numbers, got {value!r}")
    ratio = float(match.group(1)) / float(match.group(2))
    if not 0.2 <= ratio <= 5.0:
        raise ValueError(f"aspect ratio {value!r} is outside 1:5 .. 5:1")
    return ratio


def canonical_aspect(value: str) -> str:
    """``"16x9"``, ``" 16 / 9 "`` → ``"16:9"`` (so equal ratios get equal output ids)."""
    parse_aspect(value)
    match = _ASPECT_RE.match(value)
    assert match is not None
    width, height = (f"{float(g):g}" for g in match.groups())
    return f"{width}:{height}"
