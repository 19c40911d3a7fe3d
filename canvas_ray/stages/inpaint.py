"""Inpaint: a new background around the untouched product, at the canvas size.

Adds ``background`` (HxWx3 uint8, canvas size), ``inpaint_s`` and the quality figures of the guard
(:mod:`canvas_ray.quality.guard`: object-expansion retries, k scored candidates). The product is pasted back
later by Composite; here the model only needs to paint what is not product.

Backends:
- ``diffusers``: an inpainting pipeline (SD 1.5 / 2 / XL) given the background mask (white = repaint,
  i.e. NOT product), prompt from style + caption, negative prompt, per-row seeded generators, batched per
  model resolution, LoRA mix and reference image (a batch never mixes sizes); LoRA adapters by name via
  ``load_lora_weights`` + ``set_adapters``; a brand's reference image (``style_image``) through an
  IP-Adapter when ``inpaint.ip_adapter`` is configured.
- ``studio``: weight-free backdrops from the style's recipe (solid, gradient, floor/wall sweep); a
  reference image sets the palette.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from canvas_ray.backdrops import palette_from_reference, render_backdrop
from canvas_ray.compose import HARD, background_mask, model_size
from canvas_ray.config import CanvasConfig, InpaintConfig
from canvas_ray.logs import get_logger
from canvas_ray.matte import keep_level
from canvas_ray.quality.guard import CandidateGuard
from canvas_ray.registry import Registry
from canvas_ray.rows import Batch, ensure_status, ok_indices
from canvas_ray.stages.base import StageContext
from canvas_ray.stages.composite import Composite
from canvas_ray.stages.segment import build_segmenter
from canvas_ray.styles import Style, StyleBook

log = get_logger(__name__)
STAGE = "inpaint"


def style_reference(row: dict[str, Any]) -> np.ndarray | None:
    """The row's reference image (``style_image``, RGB uint8), or None: absent, or the 1x1 placeholder."""
    image = row.get("style_image")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or min(image.shape[:2]) < 2:
        return None
    return image


def _reference_key(image: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16)
    digest.update(repr(image.shape).encode())
    return digest.hexdigest()


class StudioInpainter:
    """Renders the style's backdrop; the wall/floor line sits just above the product's base.

    With a reference image (``style_image``) the backdrop takes the reference's palette
    (:func:`canvas_ray.backdrops.palette_from_reference`) and keeps the style's kind, texture and light.
    """

    paints_product = False  # returns the backdrop alone

    def __init__(self, spec: InpaintConfig, styles: StyleBook):
        self.styles = styles

    def backgrounds(self, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        out = []
        for row in rows:
            style: Style = self.styles.resolve(row["style"])
            backdrop = style.backdrop
            reference = style_reference(row)
            if reference is not None:
                backdrop = palette_from_reference(reference, backdrop)
            mask = row["canvas_mask"]
            height, width = mask.shape
            ys = np.nonzero((mask >= HARD).any(axis=1))[0]
            horizon = None
            if len(ys):
                top, bottom = ys.min(), ys.max()
                horizon = (bottom - 0.22 * (bottom - top)) / height
            out.append(render_backdrop(backdrop, (width, height), int(row["seed"]), horizon))
        return out


class DiffusersInpainter:
    """A diffusers inpainting pipeline with named LoRA adapters (config-wide and per style) and, when
    ``inpaint.ip_adapter`` is set, an IP-Adapter steered per row by the reference image (``style_image``).

    diffusers applies one IP-Adapter image to every prompt of a call (``prepare_ip_adapter_image_embeds``
    tiles it over the batch), and a UNet with an IP-Adapter loaded requires image embeds on every call.
    So a call never mixes references: rows are grouped by reference, and rows without one run at
    IP-Adapter scale 0 (diffusers then skips the adapter's attention, giving the plain model's output)
    with a neutral grey image to satisfy the pipeline.
    """

    paints_product = True  # returns the whole generated image, product region redrawn by the model
    matte_mode = "auto"  # composite.matte (set by Inpaint): a matte's partial band is repainted too

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
        self.ip_adapter = spec.ip_adapter  # loaded into the pipeline by load_inpainter
        self._ip_scale = spec.ip_adapter.scale if spec.ip_adapter is not None else None
        self._neutral_reference = Image.new("RGB", (64, 64), (128, 128, 128))
        self._warned_unused_reference = False

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

    def _reference_inputs(self, reference: np.ndarray | None) -> dict[str, Any]:
        """IP-Adapter arguments of one pipeline call (and the matching adapter scale)."""
        if self.ip_adapter is None:
            return {}
        scale = self.ip_adapter.scale if reference is not None else 0.0
        if scale != self._ip_scale:
            self.pipe.set_ip_adapter_scale(scale)
            self._ip_scale = scale
        if reference is None:
            return {"ip_adapter_image": self._neutral_reference}
        return {"ip_adapter_image": Image.fromarray(reference)}

    def _reference_group(self, row: dict[str, Any], digests: dict[int, str]) -> str | None:
        reference = style_reference(row)
        if reference is None:
            return None
        if self.ip_adapter is None:
            if not self._warned_unused_reference:
                log.warning("rows carry a style_image but inpaint.ip_adapter is not set: references ignored")
                self._warned_unused_reference = True
            return None
        if id(reference) not in digests:
            digests[id(reference)] = _reference_key(reference)
        return digests[id(reference)]

    def backgrounds(self, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        import torch

        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        styles = [self.styles.resolve(row["style"]) for row in rows]
        digests: dict[int, str] = {}
        references: dict[str | None, np.ndarray | None] = {None: None}
        for position, (row, style) in enumerate(zip(rows, styles, strict=True)):
            size = model_size((row["canvas"].shape[1], row["canvas"].shape[0]), self.spec.resolution)
            reference = self._reference_group(row, digests)
            references.setdefault(reference, style_reference(row))
            groups[(size, self._mix(style), reference)].append(position)
        out: list[np.ndarray | None] = [None] * len(rows)
        generator_device = "cpu" if self.loaded.device.type == "mps" else self.loaded.device
        for (size, mix, reference), positions in groups.items():
            self._activate(mix)
            reference_inputs = self._reference_inputs(references[reference])
            images, masks = [], []
            for position in positions:
                row = rows[position]
                images.append(Image.fromarray(row["canvas"]).resize(size, Image.Resampling.LANCZOS))
                repaint = background_mask(
                    row["canvas_mask"],
                    row.get("keep_dilate_px", self.spec.keep_dilate_px),
                    keep_level(row["canvas_mask"], self.matte_mode),
                )
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
                **reference_inputs,
            ).images
            for position, generated in zip(positions, result, strict=True):
                canvas = rows[position]["canvas"]
                array = np.clip(np.round(np.asarray(generated) * 255), 0, 255).astype(np.uint8)
                full = Image.fromarray(array).resize(
                    (canvas.shape[1], canvas.shape[0]), Image.Resampling.LANCZOS
                )
                out[position] = np.asarray(full)
        return [image for image in out if image is not None]


class TimedInpainter(StudioInpainter):
    """For cluster benchmarks and tests only: holds its actor's GPU slot for
    ``options.seconds_per_image`` per background (a measured or published figure for a real model, e.g.
    SD-1.5 at 512² or SDXL at 1024²), then renders the studio backdrop so that everything downstream does
    its real work. With logical GPUs it shows how a real cluster's pools would be fed."""

    def __init__(self, spec: InpaintConfig, styles: StyleBook):
        super().__init__(spec, styles)
        seconds = spec.options.get("seconds_per_image")
        if not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("inpaint.backend timed needs options.seconds_per_image (a number >= 0)")
        self.seconds = float(seconds)

    def backgrounds(self, rows: list[dict[str, Any]]) -> list[np.ndarray]:
        import time

        time.sleep(self.seconds * len(rows))
        return super().backgrounds(rows)


BACKENDS: Registry[Any] = Registry("inpaint")
BACKENDS.register("studio")(StudioInpainter)
BACKENDS.register("diffusers")(DiffusersInpainter)
BACKENDS.register("timed")(TimedInpainter)


class Inpaint:
    """Stage: canvas, canvas_mask, prompt, seed, style → ``background`` (canvas size), guarded and scored.

    The backend paints; :class:`canvas_ray.quality.guard.CandidateGuard` asks it for ``quality.candidates``
    backgrounds per output, retries on object expansion and records the quality figures
    (``expansion_ratio``, ``expansion_px``, ``attempts``, ``candidates``, ``quality_score``, ``clip_score``,
    ``seam_energy``, ``color_harmony``, ``exposure``, ``inpaint_s``, ``quality_s``); ``seed`` becomes the
    kept candidate's seed.
    """

    requires: tuple[str, ...] = ("canvas", "canvas_mask", "style", "seed", "prompt")
    produces: tuple[str, ...] = (
        "background",
        "inpaint_s",
        "quality_s",
        "expansion_ratio",
        "attempts",
        "candidates",
        "quality_score",
    )

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        self.spec = config.inpaint
        self.styles = (context or StageContext()).style_book(config)
        self.inpainter = BACKENDS.build(self.spec.backend, self.spec, self.styles)
        if hasattr(self.inpainter, "matte_mode"):
            self.inpainter.matte_mode = config.composite.matte
        # the guard scores candidates as Composite renders them and re-segments them with the segment
        # stage's backends: both are given to it here, quality imports no stage
        preview = Composite(config, StageContext(styles=self.styles))
        self.guard = CandidateGuard(config, preview, build_segmenter, stage=STAGE)

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        # profile outputs on pure white (canvas_ray.profiles) need no generated background
        white = [i for i in ok_indices(batch) if _pure_white(batch, i)]
        skip = set(white)
        batch = self.guard(self.inpainter, batch, [i for i in ok_indices(batch) if i not in skip])
        for index in white:
            batch["background"][index] = np.full_like(batch["canvas"][index][..., :3], 255)
        return batch


def _pure_white(batch: Batch, index: int) -> bool:
    return "background_rule" in batch and batch["background_rule"][index] == "pure_white"
