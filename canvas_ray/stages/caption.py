"""Caption: a detailed caption that covers the product AND its background.

Catalog titles describe only the product; the inpainting model (and its fine-tuning data) needs the
scene too. Adds ``caption`` (full: product and background), ``product_description`` (the product part,
used in generation prompts so the old background is not asked for again) and ``caption_s``.

Backends: ``hf`` (a visual LLM through ``AutoModelForImageTextToText``, prompted for
"Product: … Background: …"), ``metadata`` (weight-free: title, brand, category and measured colours).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from canvas_ray.config import CanvasConfig, CaptionConfig
from canvas_ray.registry import Registry
from canvas_ray.rows import Batch, ensure_status, ok_indices, run_rows
from canvas_ray.stages.base import StageContext, timed, to_rgb

STAGE = "caption"
_NAMED_COLOURS = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
    "light grey": (200, 200, 200),
    "charcoal": (60, 60, 64),
    "red": (200, 40, 40),
    "burgundy": (110, 25, 40),
    "orange": (235, 130, 40),
    "yellow": (240, 210, 60),
    "gold": (200, 165, 70),
    "beige": (225, 210, 180),
    "cream": (245, 235, 210),
    "brown": (120, 80, 50),
    "tan": (190, 150, 100),
    "green": (60, 150, 70),
    "olive": (110, 120, 50),
    "teal": (40, 140, 140),
    "blue": (50, 100, 200),
    "navy": (30, 40, 90),
    "light blue": (160, 200, 235),
    "purple": (120, 70, 160),
    "lavender": (200, 185, 230),
    "pink": (240, 160, 190),
    "peach": (245, 200, 170),
    "silver": (190, 195, 200),
}
_NAMES = list(_NAMED_COLOURS)
_PALETTE = np.array([_NAMED_COLOURS[name] for name in _NAMES], dtype=np.float32)
_PARTS_RE = re.compile(
    r"product\s*:\s*(?P<product>.*?)(?:background\s*:\s*(?P<background>.*))?$", re.I | re.S
)


def colour_names(pixels: np.ndarray, top: int = 2) -> list[str]:
    """Names of the dominant colours of ``Nx3`` pixels (by share of pixels, nearest named colour)."""
    if len(pixels) == 0:
        return []
    sample = pixels[:: max(1, len(pixels) // 20000)].astype(np.float32)
    nearest = np.argmin(((sample[:, None, :] - _PALETTE[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(_NAMES))
    order = [i for i in np.argsort(-counts) if counts[i] >= 0.12 * len(sample)]
    return [_NAMES[i] for i in order[:top]] or [_NAMES[int(np.argmax(counts))]]


def describe_background(pixels: np.ndarray) -> str:
    if len(pixels) == 0:
        return "no visible background"
    colours = " and ".join(colour_names(pixels))
    spread = float(pixels.astype(np.float32).std(axis=0).mean())
    brightness = float(pixels.mean())
    texture = "a plain seamless" if spread < 12 else "a softly graded" if spread < 30 else "a busy, textured"
    light = "bright, high-key" if brightness > 200 else "dim, moody" if brightness < 70 else "even"
    return f"{texture} {colours} backdrop with {light} studio lighting"


def split_caption(text: str) -> tuple[str, str]:
    """``"Product: X. Background: Y."`` → ``(X, Y)``; unstructured text is all product."""
    match = _PARTS_RE.search(text.strip())
    if not match:
        return text.strip(), ""
    return match.group("product").strip(" .;\n"), (match.group("background") or "").strip(" .;\n")


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


class MetadataCaptioner:
    """Weight-free: catalog metadata for the product, measured colours and texture for both parts."""

    def __init__(self, spec: CaptionConfig):
        self.spec = spec

    def captions(
        self, images: list[np.ndarray], masks: list[np.ndarray], meta: list[dict[str, str]]
    ) -> list[str]:
        out = []
        for image, mask, row in zip(images, masks, meta, strict=True):
            pixels = to_rgb(image).reshape(-1, 3)
            hard = (mask >= 128).reshape(-1)
            product_colours = " and ".join(colour_names(pixels[hard]))
            title = row.get("title") or row.get("category") or "product"
            brand = row.get("brand")
            product = f"{title}{f' by {brand}' if brand else ''}, {product_colours}"
            if row.get("category") and row["category"].lower() not in title.lower():
                product += f", {row['category']}"
            out.append(f"Product: {product}. Background: {describe_background(pixels[~hard])}.")
        return out


class HFCaptioner:
    """A visual LLM asked for the product and the background; batched generation."""

    def __init__(self, spec: CaptionConfig):
        from canvas_ray.models.loading import load_captioner

        self.spec = spec
        self.loaded = load_captioner(spec)
        processor = self.loaded.processor
        self.chat = bool(getattr(processor, "chat_template", None))
        self.text_prompt = str(spec.options.get("text_prompt", "a product photo of"))

    def _prompt(self) -> str:
        if not self.chat:  # captioning models (BLIP …) continue a short text prefix
            return self.text_prompt
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.spec.prompt}]}
        ]
        return self.loaded.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def captions(
        self, images: list[np.ndarray], masks: list[np.ndarray], meta: list[dict[str, str]]
    ) -> list[str]:
        import torch
        from PIL import Image

        processor, model = self.loaded.processor, self.loaded.model
        pil = [Image.fromarray(to_rgb(image)) for image in images]
        prompt = self._prompt()
        inputs = processor(images=pil, text=[prompt] * len(pil), return_tensors="pt", padding=True)
        inputs = {
            k: (
                v.to(self.loaded.device, self.loaded.dtype)
                if v.is_floating_point()
                else v.to(self.loaded.device)
            )
            for k, v in inputs.items()
            if hasattr(v, "to")
        }
        with torch.inference_mode():
            generated = model.generate(**inputs, max_new_tokens=self.spec.max_new_tokens, do_sample=False)
        prompt_ids = inputs.get("input_ids")
        if (
            prompt_ids is not None
            and generated.shape[1] > prompt_ids.shape[1]
            and torch.equal(generated[:, : prompt_ids.shape[1]], prompt_ids)
        ):
            generated = generated[:, prompt_ids.shape[1] :]
        texts = processor.batch_decode(generated, skip_special_tokens=True)
        out = []
        for text, image, mask, row in zip(texts, images, masks, meta, strict=True):
            text = " ".join(text.split())
            if not self.chat and text.lower().startswith(self.text_prompt.lower()):
                text = text[len(self.text_prompt) :].strip()
            product, background = split_caption(text)
            if not background:  # the model gave one sentence: measure the background ourselves
                pixels = to_rgb(image).reshape(-1, 3)
                background = describe_background(pixels[(mask < 128).reshape(-1)])
            title = row.get("title")
            if title and title.lower() not in product.lower():
                product = f"{title}, {product}" if product else title
            out.append(f"Product: {product or 'product'}. Background: {background}.")
        return out


BACKENDS: Registry[Any] = Registry("caption")
BACKENDS.register("metadata")(MetadataCaptioner)
BACKENDS.register("hf")(HFCaptioner)
_META_COLUMNS = ("title", "description", "category", "brand")


class Caption:
    """Stage: ``image``, ``product_mask`` and metadata → ``caption``, ``product_description``."""

    requires: tuple[str, ...] = ("image", "product_mask")
    produces: tuple[str, ...] = ("caption", "product_description", "caption_s")

    def __init__(self, config: CanvasConfig, context: StageContext | None = None):
        self.spec = config.caption
        self.captioner = BACKENDS.build(self.spec.backend, self.spec)

    def __call__(self, batch: Batch) -> Batch:
        batch = ensure_status(batch)
        n = len(batch["status"])
        indices = ok_indices(batch)
        captions = np.array([""] * n, dtype=object)
        products = np.array([""] * n, dtype=object)

        def meta(i: int) -> dict[str, str]:
            return {c: _text(batch[c][i]) for c in _META_COLUMNS if c in batch}

        with timed(batch, "caption_s", indices):
            results = run_rows(
                batch,
                indices,
                STAGE,
                lambda rows: self.captioner.captions(
                    [batch["image"][i] for i in rows],
                    [batch["product_mask"][i] for i in rows],
                    [meta(i) for i in rows],
                ),
            )
        for index, caption in results.items():
            captions[index] = caption
            products[index] = split_caption(caption)[0]
        batch["caption"] = captions
        batch["product_description"] = products
        return batch
