"""Weight-free product (foreground) segmentation for product photos.

Fallback used when no neural segmentation weights are available.  Product shots are taken on
a backdrop that fills the image border, so the backdrop is modelled from a border strip:

1. Work on a copy downscaled to ``max_side`` (long side), lightly blurred, in CIE Lab.
2. Backdrop model from the border strip: a robust quadratic colour surface over (x, y)
   (plain, gradient and vignetted backdrops) and, when that surface does not fit the border
   well, also k-means colour clusters (multi-tone backdrops).  Each pixel is compared with
   its nearest backdrop reference (Lab distance).
3. Threshold = max(floor, multiple of the 90th percentile of the border distances); pixels
   farther than that are product candidates.
4. Shadows: candidates are split along crisp edges (strong Lab gradient that mostly vanishes
   at a coarser scale, unlike a soft shadow ramp); parts that are mostly darkened backdrop
   colour *and* not outlined by crisp edges are shadows and become background.  Crisply
   outlined grey / black parts stay product.
5. GrabCut refinement (``cv2.GC_INIT_WITH_MASK``): backdrop-like border strip and shadows =
   definite background, estimate = probable fore/background, confident core = definite
   foreground.
6. Clean-up: drop components below ``min_component_frac`` (the largest is always kept),
   fill holes enclosed by the product, upsample, add a ~1 px distance-based soft edge.

Limitations: the backdrop must dominate the border; product parts matching the backdrop
colour are only recovered when enclosed (hole filling) or pulled in by GrabCut; real
see-through holes (e.g. a mug handle) are filled too; hard-edged shadows count as product.
"""

from __future__ import annotations

import cv2
import numpy as np

_THRESH_FLOOR = 7.0  # minimum Lab distance from the backdrop to count as product
_THRESH_GAIN = 2.5  # threshold = gain * p90 of the border distances (when above the floor)
_SURFACE_OK_P90 = 4.0  # border residual below which the quadratic surface alone is trusted
_KMEANS_K = 5
_MIN_CLUSTER_SHARE = 0.03  # rarer border colours are treated as outliers (product touching)
_CRISP_GRAD = 1.5  # min Lab gradient (per px, working resolution) of a crisp edge ...
_CRISP_NOISE_GAIN = 2.0  # ... and at least this times the 99th percentile of the border gradient
_COARSE_SIGMA = 2.8  # extra blur (px) for the coarse gradient; (1 px)^2 + 2.8^2 = (3 px)^2
_CRISP_SCALE_RATIO = 1.4  # fine / coarse gradient above this = edge blur below ~2.5 px
_CRISP_OUTLINE = 0.6  # share of a part's outline on crisp edges that makes it product
_SHADOW_MAX_DARKEN = 0.75  # shadows keep at least a quarter of the backdrop lightness
_EDGE_RAMP_PX = 1.0


def hard_mask(soft: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary mask (bool) of a soft mask: True where ``soft >= threshold``."""
    return np.asarray(soft) >= threshold


def _surface_fit(lab: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Quadratic Lab surface over (x, y) fitted to the border pixels, with outlier trimming."""
    h, w = border.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xn, yn = xx / max(w - 1, 1) * 2 - 1, yy / max(h - 1, 1) * 2 - 1
    design = np.stack([np.ones_like(xn), xn, yn, xn * xn, xn * yn, yn * yn], axis=-1)
    a, y = design[border], lab[border]
    keep = np.ones(len(a), dtype=bool)
    for _ in range(3):
        coef = np.linalg.lstsq(a[keep], y[keep], rcond=None)[0]
        res = np.linalg.norm(y - a @ coef, axis=1)
        keep = res <= 3.0 * float(np.median(res)) + 1.0
    return (design @ coef).astype(np.float32)


def _cluster_centres(lab: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Lab centres of a few k-means colour clusters of the border pixels (rare ones dropped)."""
    samples = lab[border]
    samples = samples[:: max(1, len(samples) // 6000)].astype(np.float32)
    k = min(_KMEANS_K, len(samples))
    cv2.setRNGSeed(0)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.1)
    # cv2 stubs require bestLabels, but None (let OpenCV allocate) is valid at runtime
    _, labels, centres = cv2.kmeans(samples, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)  # type: ignore[call-overload]
    share = np.bincount(labels.ravel(), minlength=k) / len(labels)
    return centres[share >= min(_MIN_CLUSTER_SHARE, float(share.max()))]


def _backdrop_diff(lab: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Lab difference of every pixel to its nearest backdrop reference (HxWx3)."""
    diff = lab - _surface_fit(lab, border)
    dist = np.linalg.norm(diff, axis=2)
    if np.percentile(dist[border], 90) > _SURFACE_OK_P90:  # not a smooth backdrop: add clusters
        for centre in _cluster_centres(lab, border):
            d = lab - centre
            dc = np.linalg.norm(d, axis=2)
            closer = dc < dist
            diff[closer], dist[closer] = d[closer], dc[closer]
    return diff


def _grad_mag(img: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(img, axis=(0, 1))
    return np.sqrt((gx * gx + gy * gy).sum(axis=2))


def _soft_shadows(cand: np.ndarray, lab: np.ndarray, diff: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Parts of ``cand`` that are darkened backdrop colour without crisp outlines (shadows)."""
    grad_fine, grad_coarse = _grad_mag(lab), _grad_mag(cv2.GaussianBlur(lab, (0, 0), _COARSE_SIGMA))
    floor = max(_CRISP_GRAD, _CRISP_NOISE_GAIN * float(np.percentile(grad_fine[border], 99)))
    # a crisp edge loses much of its gradient at the coarse scale, a soft shadow ramp does not
    crisp = (grad_fine >= floor) & (grad_fine >= _CRISP_SCALE_RATIO * grad_coarse)
    crisp = _remove_small(crisp, 8, keep_largest=False)  # isolated noise is no edge
    n, labels = cv2.connectedComponents((cand & ~crisp).astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(cand.shape, dtype=bool)
    parts = labels > 0
    outline = parts & ~cv2.erode(parts.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    near_crisp = cv2.dilate(crisp.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    dl, dab = diff[..., 0], np.hypot(diff[..., 1], diff[..., 2])
    backdrop_l = lab[..., 0] - dl
    shadowish = (dl < 0) & (dl > -_SHADOW_MAX_DARKEN * backdrop_l) & (dab <= 3.0 + 0.6 * np.abs(dl))
    area = np.bincount(labels.ravel(), minlength=n)
    shadow_frac = np.bincount(labels.ravel(), weights=shadowish.ravel(), minlength=n) / area
    n_outline = np.maximum(np.bincount(labels[outline], minlength=n), 1)
    crisp_frac = np.bincount(labels[outline], weights=near_crisp[outline], minlength=n) / n_outline
    reject = (shadow_frac >= 0.5) & (crisp_frac < _CRISP_OUTLINE)
    reject[0] = False
    return reject[labels]


def _remove_small(mask: np.ndarray, min_area: float, keep_largest: bool) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_area`` (optionally keep the largest)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= min_area])
    if keep_largest:
        keep[1 + int(np.argmax(areas))] = True
    return keep[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not connect to the image border."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 2)
    return (flood != 2)[1:-1, 1:-1]


def _soft_edge(mask: np.ndarray, ramp: float = _EDGE_RAMP_PX) -> np.ndarray:
    """Signed-distance ramp: 0.75 / 0.25 on the two sides of the edge, 1 / 0 beyond ``ramp``."""
    m = mask.astype(np.uint8)
    d_in = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform(1 - m, cv2.DIST_L2, 5)
    signed = np.where(mask, d_in - 0.5, 0.5 - d_out)
    return np.clip(0.5 + signed / (2.0 * ramp), 0.0, 1.0).astype(np.float32)


def grabcut_from_labels(img: np.ndarray, init: np.ndarray, iters: int) -> np.ndarray | None:
    """Run GrabCut from an init label mask with OpenCV's generator seeded (the result never depends on what
    ran before in the thread); returns the foreground (bool), or None on failure."""
    has_fg = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD)).any()
    has_bg = np.isin(init, (cv2.GC_BGD, cv2.GC_PR_BGD)).any()
    if iters <= 0 or min(init.shape) < 16 or not (has_fg and has_bg):
        return None
    labels = init.copy()
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    try:
        # cv2 stubs require rect, but None is valid (and ignored) with GC_INIT_WITH_MASK
        cv2.grabCut(img, labels, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)  # type: ignore[call-overload]
    except cv2.error:
        return None
    return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))


def backdrop_product_mask(
    rgb: np.ndarray,
    *,
    border_px: int | None = None,
    grabcut_iters: int = 3,
    min_component_frac: float = 0.002,
    max_side: int = 512,
) -> np.ndarray:
    """rgb: HxWx3 uint8. Returns float32 HxW soft product mask in [0,1] (1 = product)."""
    img = np.asarray(rgb)
    if img.ndim == 2:  # tolerate grey and RGBA input
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(np.nan_to_num(img.astype(np.float32)), 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(img[..., :3])
    h, w = img.shape[:2]
    if min(h, w) < 3:
        return np.zeros((h, w), np.float32)

    scale = min(1.0, max_side / max(h, w))
    hs, ws = max(3, round(h * scale)), max(3, round(w * scale))
    small = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_AREA) if scale < 1.0 else img
    bw = max(1, round(0.025 * min(hs, ws))) if border_px is None else max(1, round(border_px * scale))
    bw = min(bw, (min(hs, ws) - 1) // 2)
    border = np.ones((hs, ws), dtype=bool)
    border[bw:-bw, bw:-bw] = False

    sigma = 1.0 if min(hs, ws) >= 32 else 0.5
    lab = cv2.cvtColor(cv2.GaussianBlur(small, (0, 0), sigma).astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    diff = _backdrop_diff(lab, border)
    dist = np.linalg.norm(diff, axis=2)
    thr = max(_THRESH_FLOOR, _THRESH_GAIN * float(np.percentile(dist[border], 90)))

    area = hs * ws
    min_speck = max(2.0, 1e-4 * area)
    cand = _remove_small(dist > thr, min_speck, keep_largest=False)
    shadows = _soft_shadows(cand, lab, diff, border) if cand.any() else cand
    init_fg = _remove_small(cand & ~shadows, min_speck, keep_largest=False)
    if not init_fg.any():  # a shadow needs a product: all "shadow" means a soft-edged product
        init_fg, shadows = cand, np.zeros_like(cand)
    if not init_fg.any():
        return np.zeros((h, w), np.float32)

    labels = np.where(init_fg, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    core = (dist > 2.5 * thr) & init_fg
    if min(hs, ws) >= 32:
        core = cv2.erode(core.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    labels[core] = cv2.GC_FGD
    labels[shadows | (border & (dist <= thr))] = cv2.GC_BGD
    refined = grabcut_from_labels(small, labels, grabcut_iters)
    fg = init_fg if refined is None or not refined.any() else refined

    fg = _fill_holes(_remove_small(fg, min_component_frac * area, keep_largest=True))
    if scale < 1.0:
        fg = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return _soft_edge(fg)
