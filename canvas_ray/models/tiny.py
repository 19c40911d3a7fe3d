"""Tiny, randomly initialised stand-ins for the real checkpoints, for tests and offline smoke runs.

Every builder writes a folder that the production loaders read with ``from_pretrained`` and no hub access:

* segmenter: ``AutoModelForSemanticSegmentation`` + ``AutoImageProcessor`` (Segformer: background/product)
* captioner: ``AutoModelForImageTextToText`` + ``AutoProcessor`` (BLIP captioning, small WordPiece vocab)
* inpainter: ``diffusers.AutoPipelineForInpainting`` (Stable Diffusion inpainting, 9-channel UNet)
* clip: ``CLIPModel`` + ``CLIPProcessor`` (image-text scoring)
* ip_adapter: an IP-Adapter for the inpainter (``pipe.load_ip_adapter``: CLIP image encoder + weights)

``make_tiny_*`` return the same objects in memory. Weights come from ``torch.manual_seed(seed)`` inside a
forked RNG (the caller's RNG state is untouched), so a seed always gives the same weights. The outputs are
noise: these models only exercise shapes, batching, I/O and loading paths. The set is about 9.5 MB on disk.

The models are made per kind in :mod:`canvas_ray.models.tiny_vision` (segmenter, captioner, clip) and
:mod:`canvas_ray.models.tiny_diffusion` (inpainter, ip_adapter) from the tokenizers of
:mod:`canvas_ray.models.tiny_common`; this module saves them and writes the config that runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from canvas_ray.config import REPO_ROOT, read_yaml_mapping, resolve_relative
from canvas_ray.models.tiny_common import clip_tokenizer, quiet
from canvas_ray.models.tiny_diffusion import (
    TINY_IP_ADAPTER_ENCODER,
    TINY_IP_ADAPTER_SUBFOLDER,
    TINY_IP_ADAPTER_WEIGHT,
    make_tiny_inpainter,
    make_tiny_ip_adapter,
    sd_scheduler,
)
from canvas_ray.models.tiny_vision import make_tiny_captioner, make_tiny_clip, make_tiny_segmenter

__all__ = [
    "TINY_IP_ADAPTER_ENCODER",
    "TINY_IP_ADAPTER_SUBFOLDER",
    "TINY_IP_ADAPTER_WEIGHT",
    "TINY_KINDS",
    "build_tiny_captioner",
    "build_tiny_clip",
    "build_tiny_inpainter",
    "build_tiny_ip_adapter",
    "build_tiny_models",
    "build_tiny_segmenter",
    "is_complete",
    "make_tiny_captioner",
    "make_tiny_clip",
    "make_tiny_inpainter",
    "make_tiny_ip_adapter",
    "make_tiny_segmenter",
    "sd_scheduler",
    "tiny_config",
]

TINY_KINDS: tuple[str, ...] = ("segmenter", "captioner", "inpainter", "clip", "ip_adapter")
MARKER_FILE = "tiny_model.json"
_FORMAT_VERSION = 1

_clip_tokenizer = clip_tokenizer  # its name before the split (benchmarks.gpu)
SHIPPED_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"


def is_complete(folder: Path, kind: str, seed: int | None = None) -> bool:
    """Whether ``folder`` holds a finished tiny ``kind`` model (built with ``seed`` when one is given)."""
    marker = Path(folder) / MARKER_FILE
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("kind") != kind or info.get("version") != _FORMAT_VERSION:
        return False
    if seed is not None and info.get("seed") != seed:
        return False
    return all((Path(folder) / name).is_file() for name in info.get("files", []))


def _atomic_build(out_dir: Path, kind: str, seed: int, save: Callable[[Path], None]) -> Path:
    """Save into a sibling temp folder, mark it complete, then move it to ``out_dir`` (replacing it)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with quiet():
            save(tmp)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        info = {"kind": kind, "seed": seed, "version": _FORMAT_VERSION, "files": files}
        (tmp / MARKER_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not is_complete(out_dir, kind, seed):  # lost a race to another builder: fine if it finished
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _save_all(*parts: Any) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        for part in parts:
            part.save_pretrained(folder)

    return save


def build_tiny_segmenter(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_segmenter` (model + image processor) to ``out_dir``."""
    return _atomic_build(out_dir, "segmenter", seed, _save_all(*make_tiny_segmenter(seed)))


def build_tiny_captioner(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_captioner` (model + BlipProcessor) to ``out_dir``."""
    return _atomic_build(out_dir, "captioner", seed, _save_all(*make_tiny_captioner(seed)))


def build_tiny_inpainter(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_inpainter` (diffusers pipeline folder with model_index.json) to ``out_dir``."""
    return _atomic_build(out_dir, "inpainter", seed, _save_all(make_tiny_inpainter(seed)))


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_clip` (model + CLIPProcessor) to ``out_dir``."""
    return _atomic_build(out_dir, "clip", seed, _save_all(*make_tiny_clip(seed)))


def build_tiny_ip_adapter(out_dir: Path, seed: int = 0) -> Path:
    """Save :func:`make_tiny_ip_adapter` in the layout of ``h94/IP-Adapter``.

    ``models/ip-adapter_tiny.safetensors`` and ``models/image_encoder/`` load into the tiny inpainter with
    stock ``pipe.load_ip_adapter(out_dir, subfolder="models", weight_name="ip-adapter_tiny.safetensors",
    image_encoder_folder="image_encoder")``. No image processor is saved: diffusers never reads one from
    the adapter folder; it sizes a ``CLIPImageProcessor`` from ``image_encoder.config.image_size`` when
    the pipeline has none (``canvas_ray.models.loading.load_ip_adapter`` also replaces a mismatched one).
    """
    from safetensors.torch import save_file

    encoder, state = make_tiny_ip_adapter(seed)

    def save(folder: Path) -> None:
        models = folder / TINY_IP_ADAPTER_SUBFOLDER
        encoder.save_pretrained(models / TINY_IP_ADAPTER_ENCODER)
        save_file(state, str(models / TINY_IP_ADAPTER_WEIGHT))

    return _atomic_build(out_dir, "ip_adapter", seed, save)


_BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "segmenter": build_tiny_segmenter,
    "captioner": build_tiny_captioner,
    "inpainter": build_tiny_inpainter,
    "clip": build_tiny_clip,
    "ip_adapter": build_tiny_ip_adapter,
}


def build_tiny_models(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Build every kind into ``out_dir/<kind>`` (``TINY_KINDS``); complete folders are reused.

    A folder counts as complete when its ``tiny_model.json`` marker names the same kind, seed and format
    version and every file it lists is present; anything else is rebuilt from scratch.
    """
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for kind in TINY_KINDS:
        folder = out_dir / kind
        paths[kind] = folder if is_complete(folder, kind, seed) else _BUILDERS[kind](folder, seed)
    return paths


def tiny_config(paths: dict[str, Path]) -> dict[str, Any]:
    """The shipped ``configs/tiny.yaml`` with its model folders (``.tiny-models/<kind>``) pointed at
    ``paths`` (from :func:`build_tiny_models`) and its other relative paths made absolute, so the config
    runs from any folder."""
    data = read_yaml_mapping(SHIPPED_CONFIG)
    for section in data.values():
        model = section.get("model") if isinstance(section, dict) else None
        if isinstance(model, str) and Path(model).parent.name == ".tiny-models" and Path(model).name in paths:
            section["model"] = str(paths[Path(model).name])
    resolve_relative(data, SHIPPED_CONFIG.parent)
    return data
