"""Inpaint: a new background around the untouched product, at the canvas size.

Adds ``background`` (HxWx3 uint8, canvas size) and ``inpaint_s``. The product is pasted back later by
Composite; here the model only needs to paint what is not product.

Backends:
- ``diffusers``: an inpainting pipeline (SD 1.5 / 2 / XL) given the background mask (white = repaint,
  i.e. NOT product), prompt from style + caption, negative prompt, per-row seeded generators, batched per
  model resolution and LoRA mix (a batch never mixes sizes); LoRA adapters by name via
  ``load_lora_weights`` + ``set_adapters``.
- ``studio``: weight-free backdrops from the style's recipe (solid, gradient, floor/wall sweep).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from canvas_ray.backdrops import render_backdrop
from canvas_ray.compose import HARD, background_mask, model_size
from canvas_ray.config import CanvasConfig, InpaintConfig
from canvas_ray.stages.base import (
    PLACEHOLDER_IMAGE,
    Batch,
    ensure_status,
    object_column,
    ok_indices,
    run_rows,
    timed,
)
from canvas_ray.styles import Style, StyleBook

log = logging.getLogger(__name__)
STAGE = "inpaint"


class StudioInpainter:
    """Renders the style's backdrop; the wall/floor line sits just above the product's base."""

    def __init__(self, spec: InpaintConfig, styles: StyleBook):
        self.styles = styles

    def backgrounds(self, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        out = []
        for row in rows:
            style: Style = self.styles.resolve(row["style"])
            mask = row["canvas_mask"]
            height, width = mask.shape
            ys = np.nonzero((mask >= HARD).any(axis=1))[0]
            horizon = None
            if len(ys):
                top, bottom = ys.min(), ys.max()
                horizon = (bottom - 0.22 * (bottom - top)) / height
            out.append(render_backdrop(style.backdrop, (width, height), int(row["seed"]), horizon))
        return out


class DiffusersInpainter:
    """A diffusers inpainting pipeline with named LoRA adapters (config-wide and per style)."""

    def __init__(self, spec: InpaintConfig, styles: StyleBook):
        from canvas_ray.models.loading import load_inpainter

        self.spec = spec
        self.styles = styles
        self.loaded = load_inpainter(spec)
        self.pipe = self.loaded.model
        self.adapters: dict[str, float] = {}
        self._style_adapters: dict[str, str] = {}
        for lora in spec.loras:
            self._load_lora(lora.name, lora.path, lora.weight_name)
            self.adapters[lora.name] = lora.weight
        for name, preset in styles.presets.items():
            if preset.lora:
                adapter = "style_" + styles.resolve(name).key.replace("-", "_")
                self._load_lora(adapter, preset.lora, None)
                self._style_adapters[name.lower()] = adapter
        self._active: tuple[tuple[str, float], ...] | None = None

    def _load_lora(self, adapter: str, path: str, weight_name: str | None) -> None:
        kwargs: dict[str, Any] = {"adapter_name": adapter}
        location = Path(path)
        if location.is_file():
            kwargs["weight_name"] = location.name
            path = str(location.parent)
        elif weight_name:
            kwargs["weight_name"] = weight_name
        self.pipe.load_lora_weights(path, **kwargs)
        log.info("loaded LoRA %s from %s", adapter, path)

    def _mix(self, style: Style) -> tuple[tuple[str, float], ...]:
        mix = dict(self.adapters)
        adapter = self._style_adapters.get(style.name.lower())
        if adapter:
            mix[adapter] = style.lora_weight
        return tuple(sorted(mix.items()))

    def _activate(self, mix: tuple[tuple[str, float], ...]) -> None:
        if mix == self._active:
            return
        if mix:
            self.pipe.enable_lora()
            self.pipe.set_adapters([name for name, _ in mix], adapter_weights=[w for _, w in mix])
        elif self._style_adapters or self.adapters:
            self.pipe.disable_lora()
        self._active = mix

    def backgrounds(self, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        import torch

        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        styles = [self.styles.resolve(row["style"]) for row in rows]
        for position, (row, style) in enumerate(zip(rows, styles, strict=True)):
            size = model_size((row["canvas"].shape[1], row["canvas"].shape[0]), self.spec.resolution)
            groups[(size, self._mix(style))].append(position)
        out: list[np.ndarray | None] = [None] * len(rows)
        generator_device = "cpu" if self.loaded.device.type == "mps" else self.loaded.device
        for (size, mix), positions in groups.items():
            self._activate(mix)
            images, masks = [], []
            for position in positions:
                row = rows[position]
                images.append(Image.fromarray(row["canvas"]).resize(size, Image.Resampling.LANCZOS))
                repaint = background_mask(row["canvas_mask"], self.spec.keep_dilate_px)
                masks.append(Image.fromarray(repaint).resize(size, Image.Resampling.NEAREST))
            generators = [
                torch.Generator(device=generator_device).manual_seed(int(rows[p]["seed"])) for p in positions
            ]
            result = self.pipe(
                prompt=[rows[p]["prompt"] for p in positions],
                negative_prompt=[rows[p]["negative_prompt"] for p in positions],
                image=images,
                mask_image=masks,
                width=size[0],
                height=size[1],
                num_inference_steps=self.spec.steps,
                guidance_scale=self.spec.guidance_scale,
                strength=self.spec.strength,
                generator=generators,
                output_type="np",
            ).images
            for position, generated in zip(positions, result, strict=True):
                canvas = rows[position]["canvas"]
                array = np.clip(np.round(np.asarray(generated) * 255), 0, 255).astype(np.uint8)
                full = Image.fromarray(array).resize(
                    (canvas.shape[1], canvas.shape[0]), Image.Resampling.LANCZOS
                )
                out[position] = np.asarray(full)
        return [image for image in out if image is not None]


_BACKENDS: dict[str, type[StudioInpainter] | type[DiffusersInpainter]] = {
    "studio": StudioInpainter,
    "diffusers": DiffusersInpainter,
}
_ROW_COLUMNS = ("canvas", "canvas_mask", "style", "seed", "prompt", "negative_prompt")


class Inpaint:
    """Stage: canvas, canvas_mask, prompt, seed, style → ``background`` (canvas size)."""

    def __init__(self, config: CanvasConfig, styles: StyleBook | None = None):
        self.spec = config.inpaint
        if self.spec.backend not in _BACKENDS:
            raise ValueError(
                f"inpaint.backend {self.spec.backend!r} unknown; choose one of {sorted(_BACKENDS)}"
            )
        self.styles = styles or StyleBook.from_config(config)
        self.inpainter = _BACKENDS[self.spec.backend](self.spec, self.styles)

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        n = len(batch["status"])
        indices = ok_indices(batch)
        backgrounds = [PLACEHOLDER_IMAGE] * n

        def rows(selected: list[int]) -> list[dict[str, Any]]:
            return [{c: batch[c][i] for c in _ROW_COLUMNS} for i in selected]

        with timed(batch, "inpaint_s", indices):
            results = run_rows(
                batch, indices, STAGE, lambda selected: self.inpainter.backgrounds(rows(selected))
            )
        for index, background in results.items():
            backgrounds[index] = background
        batch["background"] = object_column(backgrounds)
        return batch
