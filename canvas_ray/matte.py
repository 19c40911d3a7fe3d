"""Soft-edged and see-through products (hair, fur, sheer fabric, glass): which preservation rule an output
gets, the product's foreground colours freed from the old background, and the alpha-aware composite.

Two rules, recorded per output as ``preserve_rule``:

* ``opaque`` (hard-edged products, the default behaviour): every product pixel (mask >= ``HARD``) is the
  source's, byte for byte; the edge is feathered outside the product only (:func:`canvas_ray.compose.
  composite`).
* ``matte`` (a substantial partial band): the opaque pixels (mask >= ``OPAQUE``) are the source's, byte for
  byte; every partial pixel is recomposed as ``alpha * F + (1 - alpha) * B_new`` from the estimated
  foreground ``F``, never from the source pixel, which still carries the old background.

``F`` is the source with the old background taken out: ``F = (I - (1-alpha) * B_old) / alpha``, ``B_old``
extrapolated smoothly under the product from the clear pixels around it (pull-push over an image pyramid).
The recomposed pixel is then wrong by at most ``(1-alpha) * |B_old - extrapolation|``, which is what the
refusal test below measures on the clear ring around the band. pymatting's ``estimate_foreground_ml``
(multi-level estimation, Germer et al. 2020) was measured against it (``python -m benchmarks.matte``, which
carries a NumPy port of it): equal on hair and sheer fabric, but on a glass body of uniform alpha it pulls
F from the neighbouring opaque label (21 levels mean error against 1.5), and its numba kernels took 233 s
to compile on their first import on these machines (3.5 s per process after), so it is not a dependency.

A matte that cannot be separated well (old background too busy to extrapolate under the soft band, a band
far wider than a soft edge, no opaque core to take colours from) is not faked: the output keeps the
``opaque`` rule and goes to ``review`` with a ``matte: ...`` reason in ``mask_flags``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from canvas_ray.compose import HARD, Verification, contact_shadow

OPAQUE = 243  # mask >= OPAQUE (alpha >= 0.953): opaque product, copied from the source bit for bit
CLEAR = 13  # mask <= CLEAR (alpha <= 0.051): not product
KNOWN_BACKGROUND = 2  # mask <= this: old background, the pixels the extrapolation of B_old starts from
# Mean width of the partial band (partial pixels per outline pixel of the opaque core) from which a mask is a
# matte and not an anti-aliased or segmenter-softened edge. Measured (python -m benchmarks.matte): anti-
# aliased shapes 0.5 px; a Gaussian-softened edge 2.7 x sigma (5.4 px at sigma 2); IS-Net's masks of the 12
# sample-catalog photos (configs/local.yaml) 1.3-2.5 px for 9 of them, 6.1 px (sku-0010) and 7.6 px (the
# watch, whose leather strap on wood it left as a plateau of ~0.85: doubt, not transparency); hair, sheer
# fabric and a glass body 11.5-28 px.
# (The segmenter draws its soft edge at 1024 px: on larger canvases the limit grows with the long side.)
MIN_BAND_PX = 10.0
SEGMENTER_SIDE = 1024
# band wider than this share of the product's size (sqrt of its support): the "edge" is most of the product
MAX_BAND_SIZE_SHARE = 0.4
MIN_OPAQUE_SHARE = 0.1  # opaque pixels / product support below this: no core to take colours from: review
# Mean abs error (0..255) of a smooth extrapolation of the old background, measured on the clear ring around
# the partial band. The estimate of F is only as good as B_old under the band: busy old backgrounds leak.
MAX_BACKGROUND_RESIDUAL = 12.0
# A wide band is only a matte if its pixels are mixtures: the foreground they imply over the extrapolated
# old background, (I - (1-alpha)*B_old)/alpha, must be a colour (within DOUBT_LEVELS of 0..255) and not the
# old background itself. A segmenter's doubt about a hard edge fails that (the pixel is all product or all
# background): such masks keep the opaque rule, unflagged (doubt is mask_confidence's business).
DOUBT_LEVELS = 24.0
MAX_DOUBT_SHARE = 0.25
MODES = ("auto", "off")
PLAN_SIDE = 512  # the refusal tests run on a copy at most this long


@dataclass(frozen=True)
class MattePlan:
    """The rule for one canvas mask, the figures it was decided on, and why a matte was refused."""

    rule: str  # "opaque" | "matte"
    band_px: float  # partial pixels / outline pixels of the opaque core: mean width of the partial band
    partial_share: float  # partial pixels / product support (mask > CLEAR)
    refused: str = ""  # a matte was needed but cannot be done well: the mask_flags reason
    doubt_share: float = 0.0  # share of the band whose pixels are not mixtures (a segmenter's doubt)

    @property
    def matte(self) -> bool:
        return self.rule == "matte"


def partial_band(mask: np.ndarray) -> np.ndarray:
    return (mask > CLEAR) & (mask < OPAQUE)


def band_figures(mask: np.ndarray) -> tuple[float, float, float]:
    """(band_px, partial_share, opaque_share) of a uint8 product mask."""
    partial = int(partial_band(mask).sum())
    support = int((mask > CLEAR).sum())
    core = (mask >= OPAQUE).astype(np.uint8)
    outline = int((core - cv2.erode(core, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)).sum())
    band = partial / outline if outline else float("inf") if partial else 0.0
    share = partial / support if support else 0.0
    opaque = float((mask >= OPAQUE).sum() / support) if support else 0.0
    return float(band), float(share), opaque


def background_residual(image: np.ndarray, mask: np.ndarray, band_px: float) -> float:
    """How well the old background under the band can be told from the product: mean abs error (0..255) of
    a smooth extrapolation of the clear pixels, measured on the clear ring just outside the partial band."""
    clear = mask <= CLEAR
    reach = int(np.clip(round(2 * band_px), 3, 24))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    ring = clear & (cv2.dilate((mask > CLEAR).astype(np.uint8), kernel) > 0)
    if not ring.any():
        return 0.0
    sigma = max(2.0, reach / 2.0)
    weight = cv2.GaussianBlur(clear.astype(np.float32), (0, 0), sigmaX=sigma)
    smooth = cv2.GaussianBlur(image.astype(np.float32) * clear[..., None], (0, 0), sigmaX=sigma)
    predicted = smooth / np.maximum(weight, 1e-6)[..., None]
    return float(np.abs(image.astype(np.float32) - predicted)[ring].mean())


def plan_matte(mask: np.ndarray, image: np.ndarray | None = None, mode: str = "auto") -> MattePlan:
    """The preservation rule for a canvas (or product) mask; with the image, also whether the matte can be
    separated (otherwise ``refused`` says why and the rule stays ``opaque``)."""
    if mode not in MODES:
        raise ValueError(f"composite.matte must be one of {MODES}, not {mode!r}")
    band, share, opaque_share = band_figures(mask)
    if mode == "off" or band < MIN_BAND_PX * max(1.0, max(mask.shape) / SEGMENTER_SIDE):
        return MattePlan("opaque", band, share)
    refused = ""
    size = float(np.sqrt((mask > CLEAR).sum()))
    if band > MAX_BAND_SIZE_SHARE * size:
        refused = f"matte: partial band too wide ({band:.0f} px mean, {share:.0%} of the product)"
    elif opaque_share < MIN_OPAQUE_SHARE:
        refused = f"matte: no opaque core ({opaque_share:.0%} of the product is opaque)"
    elif image is not None:
        image, mask, scale = _small(image[..., :3], mask)
        residual = background_residual(image, mask, band * scale)
        if residual > MAX_BACKGROUND_RESIDUAL:
            refused = (
                f"matte: old background too busy to separate from the soft edge (residual {residual:.1f}, "
                f"limit {MAX_BACKGROUND_RESIDUAL:.0f}); old colours would leak"
            )
        else:
            doubt = doubt_share(image, mask)
            if doubt > MAX_DOUBT_SHARE:
                return MattePlan("opaque", band, share, "", doubt)
    return MattePlan("opaque" if refused else "matte", band, share, refused)


def _small(
    image: np.ndarray, mask: np.ndarray, side: int = PLAN_SIDE
) -> tuple[np.ndarray, np.ndarray, float]:
    """The image and mask at most ``side`` px on the long side (the refusal tests are statistics)."""
    scale = min(1.0, side / max(mask.shape))
    if scale == 1.0:
        return image, mask, 1.0
    size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    small_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small_image, cv2.resize(mask, size, interpolation=cv2.INTER_AREA), scale


def doubt_share(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of the band (0.1 <= alpha < OPAQUE) whose implied foreground over the extrapolated old
    background is out of gamut or is the old background: pixels that are not mixtures."""
    band = (mask >= 26) & (mask < OPAQUE)
    if not band.any():
        return 0.0
    source = image[..., :3].astype(np.float32)
    old = fill_background(source, mask <= KNOWN_BACKGROUND)[band]
    alpha = (mask[band].astype(np.float32) / 255.0)[..., None]
    implied = (source[band] - (1.0 - alpha) * old) / alpha
    out_of_gamut = ((implied < -DOUBT_LEVELS) | (implied > 255.0 + DOUBT_LEVELS)).any(axis=-1)
    like_old = np.abs(implied - old).max(axis=-1) < DOUBT_LEVELS
    return float((out_of_gamut | like_old).mean())


def keep_level(mask: np.ndarray, mode: str = "auto") -> int:
    """The mask level a generator must keep (>= it) for this mask: under a matte, every partial pixel needs
    a new background behind it, so only the opaque core is kept."""
    return OPAQUE if plan_matte(mask, None, mode).matte else HARD


def estimate_foreground(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The product's foreground colours (float32 HxWx3, 0..255) where the matte is partial:
    ``F = (I - (1 - alpha) * B_old) / alpha``, with ``B_old`` the old background extrapolated smoothly under
    the product from the clear pixels (:func:`fill_background`), clipped to 0..255. The source elsewhere.

    The recomposed pixel ``alpha*F + (1-alpha)*B_new`` then differs from the truth by at most
    ``(1-alpha) * |B_old - extrapolation|``: what :func:`background_residual` bounds before a matte is used.
    """
    source = image[..., :3].astype(np.float32)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    old = fill_background(source, mask <= KNOWN_BACKGROUND)
    foreground = (source - (1.0 - alpha) * old) / np.maximum(alpha, 1.0 / 255.0)
    foreground = np.clip(foreground, 0.0, 255.0)
    return np.where((mask == 0)[..., None] | (mask >= OPAQUE)[..., None], source, foreground)


@dataclass
class MatteComposite:
    """A matte composite and what proves it: the estimated foreground and the new background it used."""

    result: np.ndarray  # HxWx3 uint8
    foreground: np.ndarray  # HxWx3 float32, 0..255 (the source where the mask is 0 or opaque)
    background: np.ndarray  # HxWx3 float32, 0..255: the new background, shadow applied


def composite_matte(
    canvas: np.ndarray, canvas_mask: np.ndarray, background: np.ndarray, *, shadow: float = 0.0, pad: int = 32
) -> MatteComposite:
    """Opaque pixels copied from the canvas bit for bit; partial ones ``alpha*F + (1-alpha)*B_new``."""
    if background.shape[:2] != canvas.shape[:2]:
        raise ValueError(f"background is {background.shape[:2]}, canvas is {canvas.shape[:2]}")
    base = background[..., :3].astype(np.float32)
    if shadow > 0:
        base *= contact_shadow(canvas_mask, shadow)[..., None]
    foreground = canvas[..., :3].astype(np.float32)
    ys, xs = np.nonzero(canvas_mask > 0)
    if len(xs):
        height, width = canvas_mask.shape
        y0, y1 = max(0, int(ys.min()) - pad), min(height, int(ys.max()) + 1 + pad)
        x0, x1 = max(0, int(xs.min()) - pad), min(width, int(xs.max()) + 1 + pad)
        foreground[y0:y1, x0:x1] = estimate_foreground(canvas[y0:y1, x0:x1], canvas_mask[y0:y1, x0:x1])
    result = recompose(canvas, canvas_mask, foreground, base)
    return MatteComposite(result, foreground, base)


def recompose(
    canvas: np.ndarray, canvas_mask: np.ndarray, foreground: np.ndarray, base: np.ndarray
) -> np.ndarray:
    """``round(alpha*F + (1-alpha)*B_new)``, with the opaque pixels the canvas's own."""
    alpha = (canvas_mask.astype(np.float32) / 255.0)[..., None]
    result = np.clip(np.round(alpha * foreground + (1.0 - alpha) * base), 0, 255).astype(np.uint8)
    opaque = canvas_mask >= OPAQUE
    result[opaque] = canvas[..., :3][opaque]
    return result


def verify_matte_preserved(
    result: np.ndarray, canvas: np.ndarray, canvas_mask: np.ndarray, foreground: np.ndarray, base: np.ndarray
) -> Verification:
    """The ``matte`` rule's check: opaque pixels equal the canvas exactly, partial pixels equal
    ``alpha*F + (1-alpha)*B_new`` within rounding (1 level). ``max_product_diff`` is the largest opaque
    difference, or the largest partial difference beyond rounding; ``product_pixels`` counts both."""
    opaque = canvas_mask >= OPAQUE
    partial = (canvas_mask > 0) & ~opaque
    count = int(opaque.sum() + partial.sum())
    if result.shape[:2] != canvas.shape[:2] or not opaque.any():
        return Verification(False, 255, count)
    exact = np.abs(result[..., :3][opaque].astype(np.int16) - canvas[..., :3][opaque].astype(np.int16))
    worst = int(exact.max()) if exact.size else 0
    if partial.any():
        alpha = (canvas_mask[partial].astype(np.float32) / 255.0)[..., None]
        expected = alpha * foreground[partial] + (1.0 - alpha) * base[partial]
        off = np.abs(result[..., :3][partial].astype(np.float32) - expected).max()
        worst = max(worst, int(np.ceil(off - 0.5 - 1e-3)))
    return Verification(worst == 0, worst, count)


def fill_background(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The old background (float32 HxWx3, 0..255) everywhere: the image where ``known``, elsewhere a smooth
    extrapolation of the known pixels (pull-push: normalised convolution down an image pyramid, filled in
    from the coarsest level that reaches)."""
    values = image[..., :3].astype(np.float32)
    if not known.any():
        return np.full_like(values, 127.0)
    weight = known.astype(np.float32)
    pulled: list[tuple[np.ndarray, np.ndarray]] = [(values * weight[..., None], weight)]
    while max(pulled[-1][1].shape) > 4:
        v, w = pulled[-1]
        pulled.append((cv2.pyrDown(v), cv2.pyrDown(w)))
    v, w = pulled[-1]
    filled = np.broadcast_to(values[known].mean(axis=0), v.shape).astype(np.float32)
    for v, w in reversed(pulled):
        height, width = w.shape
        up = cv2.resize(filled, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, 3)
        trust = np.clip(4.0 * w, 0.0, 1.0)[..., None]
        filled = trust * (v / np.maximum(w, 1e-6)[..., None]) + (1.0 - trust) * up
    return np.where(known[..., None], values, filled)
