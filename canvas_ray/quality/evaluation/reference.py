"""Reference-set metrics: FID and KID of the ok outputs against a reference image set, in the feature
space of a transformers vision model (loaded through :mod:`canvas_ray.models.loading`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import fsspec
import numpy as np
import pyarrow.compute as pc

from canvas_ray.io.outputs import join_uri
from canvas_ray.logs import get_logger
from canvas_ray.quality.evaluation.metrics import ReferenceMetrics
from canvas_ray.quality.evaluation.stream import Source, chunks, is_status
from canvas_ray.rows import OK, describe

log = get_logger(__name__)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """tr(sqrt(a·b)) for covariance matrices: scipy's ``sqrtm`` when installed, else eigen-decompositions.

    Without scipy: a·b has the eigenvalues of the symmetric PSD matrix sqrt(a)·b·sqrt(a), so the trace is
    the sum of the square roots of that matrix's eigenvalues.
    """
    try:
        from scipy import linalg
    except ImportError:
        root = _psd_sqrt(a)
        return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ b @ root), 0, None)).sum())
    product = linalg.sqrtm(a @ b)
    if not np.isfinite(product).all():  # singular product: nudge both (as pytorch-fid does)
        offset = np.eye(len(a)) * 1e-6
        product = linalg.sqrtm((a + offset) @ (b + offset))
    return float(np.real(np.trace(product)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = images): FID on features."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 feature vectors per set")
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    diff = a.mean(0) - b.mean(0)
    value = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt_product(cov_a, cov_b)
    return max(float(value), 0.0)  # a squared distance; below 0 only by rounding


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD² with the kernel (x·y/d + 1)³, averaged over random subsets; (mean, std)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 feature vectors per set")
    dim = a.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for index in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** 3
        k_yy = (y @ y.T / dim + 1) ** 3
        k_xy = (x @ y.T / dim + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[index] = within - 2 * k_xy.mean()
    return float(values.mean()), float(values.std())


class ImageFeatures:
    """A transformers vision model as a feature extractor.

    Dual encoders (CLIP and kin) give ``get_image_features`` (the projected image embedding); any other
    ``AutoModel`` gives its pooled output (or the mean of its last hidden state).
    """

    def __init__(self, model: str, device: str = "auto"):
        from canvas_ray.models.loading import load_image_encoder

        loaded = load_image_encoder(model, device)
        self.device, self.model, self.processor = loaded.device, loaded.model, loaded.processor

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        inputs = self.processor(images=[Image.fromarray(i) for i in images], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            if hasattr(self.model, "get_image_features"):
                output = self.model.get_image_features(pixel_values=pixel_values)
                features = output if isinstance(output, torch.Tensor) else output.pooler_output
            else:
                output = self.model(pixel_values=pixel_values)
                features = getattr(output, "pooler_output", None)
                if features is None:
                    hidden = output.last_hidden_state
                    features = hidden.flatten(2).mean(-1) if hidden.ndim == 4 else hidden.mean(1)
        return features.flatten(1).float().cpu().numpy()


def _embed(
    uris: list[str],
    features: Callable[[list[np.ndarray]], np.ndarray],
    storage_options: dict[str, Any],
    batch_size: int = 16,
) -> np.ndarray:
    """Features of every readable image (unreadable ones are logged and skipped)."""
    from canvas_ray.io.images import ImageError, decode_image, rgb

    chunks, batch = [], []
    for number, uri in enumerate(uris, start=1):
        try:
            with fsspec.open(uri, "rb", **storage_options) as handle:
                batch.append(rgb(decode_image(handle.read())))
        except (OSError, ImageError) as error:
            log.warning("evaluate: skipping %s (%s)", uri, describe(error))
        if batch and (len(batch) == batch_size or number == len(uris)):
            chunks.append(features(batch))
            batch = []
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def generated_uris(manifest: Source, output: str) -> list[str]:
    """The ok outputs' image URIs, streamed from the manifest, in the order of a whole-table read (so
    KID's random subsets are the same however the manifest is read). One URI per ok output: their
    features, held for FID and KID, are larger still."""
    found: list[tuple[tuple[Any, ...], str]] = []
    for chunk in chunks(manifest, ["status", "output_uri"]):
        uri = chunk.table.column("output_uri")
        shown = pc.fill_null(pc.not_equal(uri, ""), False).to_numpy(zero_copy_only=False).astype(bool)
        picked = np.flatnonzero(is_status(chunk.table, OK) & shown)
        uris = uri.take(picked).to_pylist()
        found += zip(chunk.orders(picked), (join_uri(output, u) for u in uris), strict=True)
    return [u for _, u in sorted(found, key=lambda pair: pair[0])]


def reference_metrics(
    manifest: Source,
    output: str,
    reference: str,
    feature_model: str,
    storage_options: dict[str, Any] | None = None,
    device: str = "auto",
) -> ReferenceMetrics:
    """FID and KID of the ok outputs against a reference folder or catalog (its ok rows' images)."""
    from canvas_ray.io.catalog import read_catalog

    options = dict(storage_options or {})
    result = ReferenceMetrics(reference=reference, feature_model=feature_model, reason=None)
    try:
        catalog = read_catalog(reference, options).table
        reference_uris = [
            uri
            for uri, status in zip(
                catalog["image_uri"].to_pylist(), catalog["status"].to_pylist(), strict=True
            )
            if status == OK
        ]
        generated_images = generated_uris(manifest, output)
        extractor = ImageFeatures(feature_model, device)
        generated = _embed(generated_images, extractor, options)
        references = _embed(reference_uris, extractor, options)
    except (OSError, ValueError) as error:
        log.warning("evaluate: reference metrics failed: %s", describe(error))
        return replace(result, reason=f"failed: {describe(error)}")
    result = replace(result, generated_images=len(generated), reference_images=len(references))
    if len(generated) < 2 or len(references) < 2:
        return replace(result, reason="needs at least 2 readable images on each side")
    kid, kid_std = kernel_inception_distance(generated, references)
    return replace(result, fid=frechet_distance(generated, references), kid=kid, kid_std=kid_std)
