"""The ``onnx`` segment backend: salient-object / background-removal ONNX models run by onnxruntime.

One :class:`OnnxPreset` per model family says how to feed and read the model (input size, scaling,
mean/std, output activation, which output); ``segment.options`` overrides any field, e.g.
``{preset: u2net, input_size: 320}``. ``segment.model`` is a local ``.onnx`` file or a fetchable name
(``isnet`` → ``<models folder>/isnet-imgly-medium.onnx``, see :mod:`canvas_ray.models.fetch`).

The session is built once per stage instance (one per actor / replica). Its intra-op threads follow the
pool's ``resources.num_cpus`` (rounded up, at least 1) unless ``options.threads`` says otherwise; its
providers come from ``options.providers`` or the stage's ``device`` (CUDA when onnxruntime-gpu offers it).
Models exported with a fixed batch of 1 (rembg's, img.ly's) are looped inside the batch.

``options.tta: flip`` runs every image a second time mirrored (test-time augmentation). The mask is the mean
of the two views and :meth:`OnnxSegmenter.masks_and_views` also returns both views, so that the Segment
stage can score their disagreement (:func:`canvas_ray.stages.mask_trust.assess_mask`): IS-Net is sometimes
certain of a mask in one view and of another mask in the mirrored one (a watch strap kept, then dropped).
It doubles the model's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import cv2
import numpy as np

from canvas_ray.config import SegmentConfig
from canvas_ray.stages.base import alpha_mask, to_rgb

Activation = Literal["none", "sigmoid", "minmax"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class OnnxPreset:
    """How to feed one model family: ``x = (rgb * pixel_scale - mean) / std`` at ``input_size``²."""

    input_size: int = 1024
    pixel_scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    activation: Activation = "none"
    output: str | int = 0  # output name, or its index

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 → 1x3xSxS float32."""
        size = (self.input_size, self.input_size)
        resized = cv2.resize(
            rgb, size, interpolation=cv2.INTER_AREA if rgb.shape[0] > size[1] else cv2.INTER_LINEAR
        )
        x: np.ndarray = resized.astype(np.float32) * np.float32(self.pixel_scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def activate(self, raw: np.ndarray) -> np.ndarray:
        """One raw HxW output → probabilities in [0, 1]."""
        raw = raw.astype(np.float32)
        if self.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-np.clip(raw, -60, 60)))
        if self.activation == "minmax":
            low, high = float(raw.min()), float(raw.max())
            return (raw - low) / (high - low) if high > low else np.zeros_like(raw)
        return np.clip(raw, 0.0, 1.0)


PRESETS: dict[str, OnnxPreset] = {
    # img.ly's IS-Net export (`canvas-ray models fetch isnet`): (RGB - 128) / 256, output already in [0, 1]
    "isnet-imgly": OnnxPreset(1024, 1.0, (128.0,) * 3, (256.0,) * 3, "none", "output"),
    # rembg's isnet-general-use.onnx: /255, mean 0.5, std 1.0, min-max normalised output
    "isnet-general-use": OnnxPreset(1024, 1.0 / 255.0, (0.5,) * 3, (1.0,) * 3, "minmax", 0),
    # rembg's u2net.onnx / u2netp.onnx: 320², ImageNet mean/std, min-max normalised output
    "u2net": OnnxPreset(320, 1.0 / 255.0, IMAGENET_MEAN, IMAGENET_STD, "minmax", 0),
    # BiRefNet ONNX exports: 1024², ImageNet mean/std, logits → sigmoid
    "birefnet": OnnxPreset(1024, 1.0 / 255.0, IMAGENET_MEAN, IMAGENET_STD, "sigmoid", 0),
}
PRESET_FIELDS = {f.name for f in fields(OnnxPreset)}
SESSION_OPTIONS = {"preset", "threads", "providers", "tta"}
TTA = ("none", "flip")


def preset_from_options(options: dict[str, Any], model: str | None = None) -> OnnxPreset:
    """``options.preset`` (default: guessed from the model name, else isnet-imgly) plus field overrides."""
    name = options.get("preset") or _guess_preset(model)
    if name not in PRESETS:
        raise ValueError(f"segment.options.preset {name!r} unknown; choose one of {sorted(PRESETS)}")
    overrides = {k: v for k, v in options.items() if k in PRESET_FIELDS}
    for key in ("mean", "std"):
        if key in overrides:
            value = overrides[key]
            overrides[key] = tuple(
                float(v) for v in (value if isinstance(value, list | tuple) else [value] * 3)
            )
    unknown = set(options) - PRESET_FIELDS - SESSION_OPTIONS - {"refine", "confidence"}
    if unknown:
        raise ValueError(f"segment.options {sorted(unknown)} unknown for the onnx backend")
    return replace(PRESETS[name], **overrides)


def _guess_preset(model: str | None) -> str:
    name = (model or "").lower().rsplit("/", 1)[-1]
    for key in ("isnet-general-use", "u2net", "birefnet"):
        if key in name:
            return key
    return "isnet-imgly"


def session_threads(spec: SegmentConfig) -> int:
    """Intra-op threads: ``options.threads``, else the pool's num_cpus rounded up (at least 1)."""
    threads = spec.options.get("threads")
    return max(1, int(threads)) if threads else max(1, math.ceil(spec.resources.num_cpus))


def session_providers(spec: SegmentConfig, available: list[str]) -> list[str]:
    requested = spec.options.get("providers")
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(f"onnxruntime providers {missing} are not available here (have {available})")
        return list(requested)
    wants_gpu = spec.device.startswith("cuda") or spec.device == "auto"
    if wants_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if spec.device.startswith("cuda"):
        raise ValueError(
            "segment.device is cuda but onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu"
        )
    return ["CPUExecutionProvider"]


class OnnxSegmenter:
    """Segmenter over an ONNX background-removal model; masks come back at each image's size."""

    def __init__(self, spec: SegmentConfig):
        import onnxruntime as ort

        from canvas_ray.models.fetch import resolve_model_path

        self.path = resolve_model_path(spec.model)
        self.preset = preset_from_options(dict(spec.options), str(spec.model))
        options = ort.SessionOptions()
        options.intra_op_num_threads = session_threads(spec)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(self.path), options, providers=session_providers(spec, ort.get_available_providers())
        )
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.fixed_batch = isinstance(model_input.shape[0], int) and model_input.shape[0] == 1
        names = [o.name for o in self.session.get_outputs()]
        output = self.preset.output
        if isinstance(output, int):
            if not 0 <= output < len(names):
                raise ValueError(f"segment.options.output {output} out of range: the model has {names}")
            self.output_name = names[output]
        elif output in names:
            self.output_name = output
        else:
            raise ValueError(
                f"segment.options.output {output!r} is not an output of {self.path.name}: {names}"
            )
        self.runs = 0  # forward calls, for tests of the fixed-batch loop
        self.tta = str(spec.options.get("tta", "none"))
        if self.tta not in TTA:
            raise ValueError(f"segment.options.tta {self.tta!r} unknown; choose one of {list(TTA)}")

    def _forward(self, x: np.ndarray) -> np.ndarray:
        self.runs += 1
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        out = np.asarray(out)
        if out.ndim == 4:
            out = out[:, 0]
        elif out.ndim == 2:
            out = out[None]
        return out

    def raw_outputs(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Model-resolution probabilities (SxS float32), one per image."""
        inputs = [self.preset.normalise(to_rgb(image)) for image in images]
        if self.fixed_batch or len(inputs) == 1:
            outs = [self._forward(x)[0] for x in inputs]
        else:
            outs = list(self._forward(np.concatenate(inputs)))
        return [self.preset.activate(o) for o in outs]

    def product_masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Cut-outs keep their own alpha channel (exact); the other images go through the model."""
        return [mask for mask, _ in self.masks_and_views(images)]

    def masks_and_views(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
        """(mask, the views it was fused from) per image; a single view, or none for alpha cut-outs."""
        alphas = [alpha_mask(image) for image in images]
        todo = [image for image, alpha in zip(images, alphas, strict=True) if alpha is None]
        probs = iter(self.raw_outputs(todo) if todo else [])
        mirrored = iter(
            self.raw_outputs([np.ascontiguousarray(image[:, ::-1]) for image in todo])
            if todo and self.tta == "flip"
            else []
        )
        out: list[tuple[np.ndarray, list[np.ndarray]]] = []
        for image, alpha in zip(images, alphas, strict=True):
            if alpha is not None:
                out.append((alpha, []))
                continue
            views = [_at_size(image, next(probs))]
            if self.tta == "flip":
                views.append(np.ascontiguousarray(_at_size(image, next(mirrored)[:, ::-1])))
            out.append((views[0] if len(views) == 1 else np.mean(views, axis=0).astype(np.float32), views))
        return out


def _at_size(image: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """A model-resolution probability map resized (bilinear) to the image."""
    height, width = image.shape[:2]
    up = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(up, 0.0, 1.0).astype(np.float32)
