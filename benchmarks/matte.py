"""Soft edges and see-through products: synthetic scenes with a known truth, and what the ``matte`` rule
does on them against the naive composite (the source's partial pixels blended as they are).

Each scene is a product with a known foreground colour ``F`` and alpha over a known old background: the
source is ``alpha*F + (1-alpha)*B_old``. Recomposed over a new background, the truth is
``alpha*F + (1-alpha)*B_new``; the error is measured on the partial pixels (0.05 < alpha < 0.95).

    python -m benchmarks.matte
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from canvas_ray.compose import composite
from canvas_ray.matte import CLEAR, OPAQUE, composite_matte, doubt_share, plan_matte

SIZE = 192


def _resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    ys = np.minimum(np.arange(height) * array.shape[0] // height, array.shape[0] - 1)
    xs = np.minimum(np.arange(width) * array.shape[1] // width, array.shape[1] - 1)
    return array[ys][:, xs]


def _shifted(array: np.ndarray) -> list[np.ndarray]:
    """The four edge-clamped neighbours (left, right, up, down) of every pixel."""
    pad = [(1, 1), (1, 1)] + [(0, 0)] * (array.ndim - 2)
    p = np.pad(array, pad, mode="edge")
    return [p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]]


def estimate_foreground(
    image: np.ndarray,
    alpha: np.ndarray,
    *,
    regularization: float = 1e-5,
    small_iterations: int = 10,
    big_iterations: int = 2,
    small_size: int = 32,
    gradient_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours (float32 HxWx3, 0..1) with ``image = alpha*fore + (1-alpha)*back``.

    Multi-level estimation (Germer et al. 2020): solved coarse to fine, each pixel's fore and back the least-
    squares fit of the compositing equation plus smoothness towards its neighbours, weighted by alpha's
    local change. Same defaults as ``pymatting.estimate_foreground_ml``; red-black instead of raster order.
    """
    image = image[..., :3].astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    alpha = np.clip(alpha.astype(np.float32), 0.0, 1.0)
    h0, w0 = alpha.shape
    fg, bg = alpha > 0.9, alpha < 0.1
    f_mean = image[fg].mean(axis=0) if fg.any() else np.zeros(3, np.float32)
    b_mean = image[bg].mean(axis=0) if bg.any() else np.zeros(3, np.float32)
    fore = np.broadcast_to(f_mean, (1, 1, 3)).astype(np.float32)
    back = np.broadcast_to(b_mean, (1, 1, 3)).astype(np.float32)
    levels = max(1, int(np.ceil(np.log2(max(w0, h0)))))
    for level in range(levels + 1):
        w, h = round(w0 ** (level / levels)), round(h0 ** (level / levels))
        img, a0 = _resize_nearest(image, h, w), _resize_nearest(alpha, h, w)
        fore, back = _resize_nearest(fore, h, w).copy(), _resize_nearest(back, h, w).copy()
        a1 = 1.0 - a0
        weights = [regularization + gradient_weight * np.abs(a0 - n) for n in _shifted(a0)]
        a00 = a0 * a0 + sum(weights)
        a11 = a1 * a1 + sum(weights)
        a01 = a0 * a1
        inv_det = 1.0 / (a00 * a11 - a01 * a01)
        b0_own, b1_own = a0[..., None] * img, a1[..., None] * img
        parity = (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)
        for _ in range(small_iterations if w <= small_size and h <= small_size else big_iterations):
            for red in (parity, ~parity):
                b0, b1 = b0_own.copy(), b1_own.copy()
                for wk, fk, bk in zip(weights, _shifted(fore), _shifted(back), strict=True):
                    b0 += wk[..., None] * fk
                    b1 += wk[..., None] * bk
                f_new = (inv_det * a11)[..., None] * b0 - (inv_det * a01)[..., None] * b1
                b_new = (inv_det * a00)[..., None] * b1 - (inv_det * a01)[..., None] * b0
                fore[red] = np.clip(f_new[red], 0.0, 1.0)
                back[red] = np.clip(b_new[red], 0.0, 1.0)
    return fore, back


@dataclass
class Scene:
    name: str
    source: np.ndarray  # HxWx3 uint8: alpha*F + (1-alpha)*B_old
    mask: np.ndarray  # HxW uint8: alpha*255
    foreground: np.ndarray  # HxWx3 float32 0..255: the true F
    old_background: np.ndarray  # HxWx3 float32 0..255
    alpha: np.ndarray  # HxW float32: the true alpha (the mask is its rounding, unless a scene plants doubt)


def _grid(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return ys, xs


def _scene(name: str, alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> Scene:
    mask = np.clip(np.round(alpha * 255), 0, 255).astype(np.uint8)
    a = (mask.astype(np.float32) / 255.0)[..., None]
    source = np.clip(np.round(a * fg + (1 - a) * bg), 0, 255).astype(np.uint8)
    return Scene(name, source, mask, fg.astype(np.float32), bg.astype(np.float32), a[..., 0])


def _plain(colour: tuple[float, float, float], size: int = SIZE) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.float32), (size, size, 3)).copy()


def _gradient_bg(size: int = SIZE) -> np.ndarray:
    ys, xs = _grid(size)
    return np.stack([40 + 0.3 * xs, 160 + 0.2 * ys, 60 + 0.1 * (xs + ys)], axis=-1)


def _shaded_fg(base: tuple[float, float, float], size: int = SIZE) -> np.ndarray:
    ys, xs = _grid(size)
    shade = 0.85 + 0.15 * np.sin(xs / 23.0) * np.cos(ys / 31.0)
    return np.clip(np.array(base, np.float32) * shade[..., None], 0, 255)


def _disc(cx: float, cy: float, r: float, supersample: int = 4, size: int = SIZE) -> np.ndarray:
    """An anti-aliased disc (box-filtered supersampling): the alpha of a hard-edged product."""
    big = size * supersample
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float32) / supersample
    inside = ((xs - cx) ** 2 + (ys - cy) ** 2 <= r * r).astype(np.float32)
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def hard_edged() -> Scene:
    """A hard-edged product (anti-aliased disc + box), dark red on a light grey backdrop."""
    alpha = np.maximum(_disc(96, 80, 50), 0)
    alpha[120:170, 50:142] = 1.0
    return _scene("hard edge (anti-aliased)", alpha, _shaded_fg((150, 30, 40)), _plain((225, 225, 220)))


def soft_segmenter_edge() -> Scene:
    """A hard-edged product as a segmenter sees it: its edge blurred (Gaussian, sigma 1.5 px)."""
    hard = (_disc(96, 96, 60) >= 0.5).astype(np.float32)
    alpha = cv2.GaussianBlur(hard, (0, 0), sigmaX=1.5)
    return _scene(
        "soft segmenter edge (sigma 1.5)", alpha, _shaded_fg((30, 60, 150)), _plain((230, 230, 230))
    )


def doubtful_edge() -> Scene:
    """A hard-edged product whose mask is doubtful, not see-through: the image has a sharp edge, the mask a
    wide soft band (a segmenter unsure where the edge is; Gaussian, sigma 4 px)."""
    hard = (_disc(96, 96, 60) >= 0.5).astype(np.float32)
    scene = _scene("doubtful edge (mask sigma 4)", hard, _shaded_fg((60, 40, 30)), _plain((228, 228, 222)))
    scene.mask = np.round(cv2.GaussianBlur(hard, (0, 0), sigmaX=4.0) * 255).astype(np.uint8)
    return scene


def hair_fringe(background: np.ndarray | None = None, name: str = "hair fringe") -> Scene:
    """A head of dark-blond hair: opaque core, a wide fringe of thin strands whose alpha falls off."""
    ys, xs = _grid()
    rng = np.random.default_rng(3)
    r = np.hypot(xs - 96, ys - 110)
    angle = np.arctan2(ys - 110, xs - 96)
    strands = np.zeros_like(r)
    for _ in range(6):
        frequency, phase = rng.integers(20, 60), rng.uniform(0, 2 * np.pi)
        strands += 0.5 + 0.5 * np.sin(frequency * angle + phase + r / rng.uniform(6, 14))
    strands /= 6
    falloff = np.clip((75 - r) / 30.0, 0, 1)  # opaque within r 45, nothing beyond r 75
    alpha = np.where(r < 45, 1.0, falloff * np.clip(0.25 + strands, 0, 1))
    bg = _plain((70, 140, 220)) if background is None else background  # blue sky behind the hair
    return _scene(name, alpha, _shaded_fg((190, 150, 80)), bg)


def glass() -> Scene:
    """A bottle: opaque cap and label, a glass body of alpha 0.4 (tinted green) in between."""
    alpha: np.ndarray = np.zeros((SIZE, SIZE), np.float32)
    alpha[30:60, 80:112] = 1.0  # cap
    alpha[60:170, 56:136] = 0.4  # glass body
    alpha[100:140, 56:136] = 1.0  # label
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=0.7)
    fg = _plain((40, 120, 60))
    fg[30:60] = (200, 200, 205)
    fg[100:140] = (240, 220, 90)
    return _scene("glass bottle (alpha 0.4)", alpha, fg, _gradient_bg())


def sheer_fabric() -> Scene:
    """A garment with a sheer sleeve: opaque body, a sleeve with a woven alpha of 0.3-0.7."""
    ys, xs = _grid()
    alpha: np.ndarray = np.zeros((SIZE, SIZE), np.float32)
    alpha[40:170, 60:120] = 1.0
    sleeve = (xs >= 120) & (xs < 176) & (ys >= 50) & (ys < 110)
    weave = 0.5 + 0.2 * np.sin(xs * 1.3) * np.sin(ys * 1.1)
    alpha[sleeve] = weave[sleeve]
    alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=0.6)
    return _scene("sheer sleeve", alpha, _shaded_fg((220, 60, 120)), _plain((235, 235, 225)))


def busy_background_hair() -> Scene:
    """Hair in front of a busy, high-contrast pattern: the old background cannot be told from the strands."""
    ys, xs = _grid()
    checks = (((xs // 5) + (ys // 5)) % 2).astype(np.float32)
    rng = np.random.default_rng(9)
    noise = rng.uniform(-40, 40, (SIZE, SIZE, 3)).astype(np.float32)
    bg = np.clip(np.stack([30 + 200 * checks, 200 - 150 * checks, 90 + 100 * checks], -1) + noise, 0, 255)
    return hair_fringe(bg, "hair over a busy pattern")


SCENES: dict[str, Callable[[], Scene]] = {
    "hard": hard_edged,
    "soft_edge": soft_segmenter_edge,
    "doubtful_edge": doubtful_edge,
    "hair": hair_fringe,
    "glass": glass,
    "sheer": sheer_fabric,
    "busy_hair": busy_background_hair,
}


def new_background(size: int = SIZE) -> np.ndarray:
    """The generated background: a warm studio gradient, far from every old background."""
    ys, xs = _grid(size)
    return np.clip(np.stack([200 + 0.2 * ys, 120 + 0.1 * xs, 40 + 0 * xs], -1), 0, 255).astype(np.uint8)


@dataclass
class SceneFigures:
    name: str
    rule: str
    band_px: float
    doubt: float
    refused: str
    matte_error: float  # mean abs error of partial pixels vs truth (0..255), matte composite
    naive_error: float  # the same, naive composite (the source's partial pixels as they are)
    ml_error: float  # the same, F from multi-level estimation (pymatting's algorithm) instead
    delivered_error: float  # the same, for the image the rule delivers (opaque: compose.composite)
    opaque_identical: bool
    seconds: float


def measure(scene: Scene, new: np.ndarray | None = None) -> SceneFigures:
    new = new_background(scene.mask.shape[0]) if new is None else new
    plan = plan_matte(scene.mask, scene.source)
    start = time.perf_counter()
    matte = composite_matte(scene.source, scene.mask, new)
    seconds = time.perf_counter() - start
    alpha = (scene.mask.astype(np.float32) / 255.0)[..., None]
    true_alpha = scene.alpha[..., None]
    truth = true_alpha * scene.foreground + (1 - true_alpha) * new.astype(np.float32)
    naive = naive_composite(scene.source, scene.mask, new)
    fore, _ = estimate_foreground(scene.source, alpha[..., 0])
    ml = np.clip(np.round(alpha * fore * 255 + (1 - alpha) * new.astype(np.float32)), 0, 255)
    opaque = scene.mask >= OPAQUE
    ml[opaque] = scene.source[opaque]
    delivered = matte.result if plan.matte else opaque_rule_composite(scene, new)
    partial = (scene.mask > CLEAR) & (scene.mask < OPAQUE)
    return SceneFigures(
        scene.name,
        plan.rule,
        plan.band_px,
        doubt_share(scene.source, scene.mask),
        plan.refused,
        float(np.abs(matte.result[partial].astype(np.float32) - truth[partial]).mean()),
        float(np.abs(naive[partial].astype(np.float32) - truth[partial]).mean()),
        float(np.abs(ml[partial] - truth[partial]).mean()),
        float(np.abs(delivered[partial].astype(np.float32) - truth[partial]).mean()),
        bool(np.array_equal(matte.result[opaque], scene.source[opaque])),
        seconds,
    )


def naive_composite(source: np.ndarray, mask: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The partial pixels blended as they are (they still carry the old background)."""
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    out = alpha * source.astype(np.float32) + (1 - alpha) * new.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def opaque_rule_composite(scene: Scene, new: np.ndarray) -> np.ndarray:
    return composite(scene.source, scene.mask, new, feather_px=2)


def time_per_image(long_side: int = 1024) -> float:
    """Seconds to plan and make one matte composite of the hair scene scaled to ``long_side``."""
    scene = hair_fringe()
    source = cv2.resize(scene.source, (long_side, long_side), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(scene.mask, (long_side, long_side), interpolation=cv2.INTER_LINEAR)
    new = new_background(long_side)
    start = time.perf_counter()
    if plan_matte(mask, source).matte:
        composite_matte(source, mask, new)
    return time.perf_counter() - start


def main() -> None:
    print(
        "mean abs error of the partial pixels (0.05 < alpha < 0.95) against alpha*F + (1-alpha)*B_new, 0..255"
    )
    header = ("scene", "rule", "band px", "doubt", "matte", "naive", "ml", "deliver", "opaque==", "s")
    print("{:34} {:6} {:>7} {:>5} {:>6} {:>6} {:>6} {:>7} {:>8} {:>6}".format(*header))
    for make in SCENES.values():
        f = measure(make())
        print(
            f"{f.name:34} {f.rule:6} {f.band_px:7.1f} {f.doubt:5.2f} {f.matte_error:6.2f} "
            f"{f.naive_error:6.2f} {f.ml_error:6.2f} {f.delivered_error:7.2f} "
            f"{f.opaque_identical!s:>8} {f.seconds:6.3f}" + (f"  review: {f.refused}" if f.refused else "")
        )
    for side in (512, 1024, 2048):
        print(f"plan + matte composite, hair scene at {side}x{side}: {time_per_image(side):.2f} s")


if __name__ == "__main__":
    main()
