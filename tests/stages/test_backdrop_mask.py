"""Tests for the weight-free backdrop product segmenter (synthetic scenes with known masks)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from canvas_ray.stages.backdrop_mask import backdrop_product_mask, hard_mask

H, W = 240, 320
SS = 4  # products are drawn super-sampled, then area-downscaled (anti-aliased edges)

# (rgb, mask, scale) -> None, drawing in place; mask 255 = product, 128 = see-through hole
Painter = Callable[[np.ndarray, np.ndarray, int], None]


def _pt(x: float, y: float, s: int) -> tuple[int, int]:
    return round(x * s), round(y * s)


def _bottle(img: np.ndarray, mask: np.ndarray, s: int) -> None:
    for canvas, body, cap in ((img, (30, 100, 60), (20, 20, 20)), (mask, 255, 255)):
        cv2.ellipse(canvas, _pt(160, 140, s), _pt(50, 75, s), 0, 0, 360, body, -1)
        cv2.rectangle(canvas, _pt(148, 45, s), _pt(172, 80, s), body, -1)
        cv2.rectangle(canvas, _pt(144, 32, s), _pt(176, 48, s), cap, -1)


def _box(img: np.ndarray, mask: np.ndarray, s: int) -> None:
    x0, y0, x1, y1 = 100, 55, 225, 195
    cv2.rectangle(mask, _pt(x0, y0, s), _pt(x1, y1, s), 255, -1)
    cv2.rectangle(img, _pt(x0, y0, s), _pt(x1, y1, s), (30, 40, 120), -1)
    for i, x in enumerate(range(x0, x1, 15)):  # checker pattern on the face
        for j, y in enumerate(range(y0, y1, 15)):
            if (i + j) % 2:
                cv2.rectangle(img, _pt(x, y, s), _pt(min(x + 15, x1), min(y + 15, y1), s), (230, 120, 30), -1)


def _mug(img: np.ndarray, mask: np.ndarray, s: int) -> None:
    # Handle = ring whose hole (backdrop visible) is enclosed by ring + body; the truth is the
    # filled silhouette because the segmenter fills enclosed holes by design.
    for canvas, col in ((img, (200, 40, 60)), (mask, 255)):
        cv2.circle(canvas, _pt(200, 130, s), 38 * s, col, -1)
        cv2.rectangle(canvas, _pt(110, 70, s), _pt(200, 200, s), col, -1)
    cv2.circle(mask, _pt(200, 130, s), 22 * s, 128, -1)  # 128 = see-through hole (backdrop visible)
    cv2.rectangle(mask, _pt(110, 70, s), _pt(200, 200, s), 255, -1)


def _multicolour(img: np.ndarray, mask: np.ndarray, s: int) -> None:
    bands = [(210, 40, 40), (235, 200, 30), (40, 70, 190), (40, 150, 70)]
    for k, col in enumerate(bands):
        cv2.rectangle(img, _pt(105, 70 + 30 * k, s), _pt(215, 100 + 30 * k, s), col, -1)
    cv2.rectangle(mask, _pt(105, 70, s), _pt(215, 190, s), 255, -1)
    for canvas, col in ((img, (120, 40, 150)), (mask, 255)):
        cv2.circle(canvas, _pt(160, 55, s), 25 * s, col, -1)


def _labelled(img: np.ndarray, mask: np.ndarray, s: int) -> None:
    # Product whose small parts (label, dots) have exactly the white backdrop colour.
    for canvas, col in ((img, (40, 70, 170)), (mask, 255)):
        cv2.rectangle(canvas, _pt(115, 50, s), _pt(205, 200, s), col, -1)
    cv2.rectangle(img, _pt(125, 95, s), _pt(195, 140, s), (255, 255, 255), -1)
    for x in range(130, 200, 16):
        cv2.circle(img, _pt(x, 175, s), 3 * s, (255, 255, 255), -1)


PRODUCTS: dict[str, Painter] = {
    "bottle": _bottle,
    "box": _box,
    "mug": _mug,
    "multicolour": _multicolour,
    "labelled": _labelled,
}


def _cast_shadow(bg: np.ndarray, truth: np.ndarray, strength: float) -> np.ndarray:
    """Darken ``bg`` with a soft elliptical floor shadow below / right of the product."""
    ys, xs = np.nonzero(truth)
    shadow = np.zeros(truth.shape, np.float32)
    centre = (int(xs.mean()) + 25, int(ys.max()) - 5)
    cv2.ellipse(shadow, centre, (int(np.ptp(xs) * 0.6), 14), 0, 0, 360, 1.0, -1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 9)
    return bg * (1.0 - strength * shadow[..., None])


def _backdrop(kind: str, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bg = np.empty((H, W, 3), np.float32)
    if kind in ("white", "shadow"):
        bg[:] = 255.0
    elif kind == "grey_noise":
        bg[:] = 232.0
        bg += rng.normal(0.0, 4.0, bg.shape)
    elif kind == "pastel":
        bg[:] = (205.0, 228.0, 246.0)
    elif kind == "gradient":
        t = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None, None]
        bg[:] = (1 - t) * np.array([248.0, 246.0, 242.0]) + t * np.array([170.0, 182.0, 200.0])
    else:
        raise ValueError(kind)
    return _cast_shadow(bg, truth, 0.45) if kind == "shadow" else bg


def make_scene(product: str, backdrop: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Composite (HxWx3 uint8) and its ground-truth mask (HxW bool)."""
    rng = np.random.default_rng(seed)
    big_img = np.zeros((H * SS, W * SS, 3), np.uint8)
    big_mask = np.zeros((H * SS, W * SS), np.uint8)
    PRODUCTS[product](big_img, big_mask, SS)
    visible = (big_mask == 255).astype(np.float32)
    prod = cv2.resize(big_img.astype(np.float32) * visible[..., None], (W, H), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(visible, (W, H), interpolation=cv2.INTER_AREA)
    truth = cv2.resize((big_mask > 0).astype(np.float32), (W, H), interpolation=cv2.INTER_AREA) > 0.5
    # premultiplied downscale -> unpremultiply so edge colours stay the product's
    prod = prod / np.maximum(alpha, 1e-3)[..., None]
    bg = _backdrop(backdrop, truth, rng)
    out = alpha[..., None] * prod + (1.0 - alpha[..., None]) * bg
    out += rng.normal(0.0, 1.5, out.shape)  # mild sensor noise everywhere
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


BACKDROPS = ["white", "grey_noise", "pastel", "gradient", "shadow"]


@pytest.mark.parametrize("backdrop", BACKDROPS)
@pytest.mark.parametrize("product", list(PRODUCTS))
def test_iou_synthetic(product: str, backdrop: str) -> None:
    img, truth = make_scene(product, backdrop)
    pred = backdrop_product_mask(img)
    score = iou(hard_mask(pred), truth)
    assert score >= 0.9, f"{product} on {backdrop}: IoU {score:.3f}"


def test_output_contract_and_soft_edge() -> None:
    img, truth = make_scene("bottle", "white")
    pred = backdrop_product_mask(img)
    assert pred.shape == truth.shape
    assert pred.dtype == np.float32
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0
    inner = cv2.erode(truth.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    outer = ~cv2.dilate(truth.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert np.all(pred[inner] == 1.0)
    assert np.all(pred[outer] == 0.0)
    assert np.any((pred > 0.0) & (pred < 1.0))  # there is a soft edge
    assert hard_mask(pred).dtype == bool


def test_large_image_is_downscaled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A big photo is segmented at ``max_side`` (the GrabCut refinement never sees full resolution), and
    the mask comes back at full size and right. Its speed is a benchmark's business
    (``python -m benchmarks.segmentation``), not a timed unit test's."""
    import canvas_ray.stages.backdrop_mask as module

    img, truth = make_scene("box", "gradient")
    big = cv2.resize(img, (W * 4, H * 4), interpolation=cv2.INTER_CUBIC)
    big_truth = cv2.resize(truth.astype(np.uint8), (W * 4, H * 4), interpolation=cv2.INTER_NEAREST) > 0
    seen: list[tuple[int, ...]] = []
    grabcut = module.cv2.grabCut

    def recording(image, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(image.shape)
        return grabcut(image, *args, **kwargs)

    monkeypatch.setattr(module.cv2, "grabCut", recording)
    pred = backdrop_product_mask(big)
    assert pred.shape == big_truth.shape
    assert iou(hard_mask(pred), big_truth) >= 0.9
    assert seen and all(max(shape[:2]) <= 512 for shape in seen), seen


def _flat_scene(colour: tuple[int, int, int], truth: np.ndarray, shadow: float = 0.0) -> np.ndarray:
    """White backdrop (optional soft shadow) with a flat-coloured product given by ``truth``."""
    alpha = cv2.GaussianBlur(truth.astype(np.float32), (0, 0), 0.6)  # slightly soft product edge
    bg = _cast_shadow(np.full((H, W, 3), 252.0, np.float32), truth, shadow)
    img = alpha[..., None] * np.array(colour, np.float32) + (1.0 - alpha[..., None]) * bg
    img += np.random.default_rng(3).normal(0.0, 1.5, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("colour", "shadow"), [((15, 15, 18), 0.7), ((128, 128, 128), 0.45)])
def test_grey_product_kept_shadow_dropped(colour: tuple[int, int, int], shadow: float) -> None:
    # Grey / black products have shadow-like colours; their crisp outline keeps them.  (A
    # shadow as dark as a grey product merges with it where they touch: known limitation.)
    truth = np.zeros((H, W), np.uint8)
    cv2.ellipse(truth, (160, 120), (50, 80), 0, 0, 360, 1, -1)
    pred = hard_mask(backdrop_product_mask(_flat_scene(colour, truth > 0, shadow=shadow)))
    assert iou(pred, truth > 0) >= 0.95


def test_product_touching_bottom_border() -> None:
    truth = np.zeros((H, W), np.uint8)
    cv2.rectangle(truth, (120, 60), (200, H - 1), 1, -1)
    pred = hard_mask(backdrop_product_mask(_flat_scene((40, 70, 170), truth > 0)))
    assert iou(pred, truth > 0) >= 0.9


def test_close_colour_product_best_effort() -> None:
    # Light-grey product on white: low contrast, only a loose bound is expected.
    rng = np.random.default_rng(1)
    img = np.full((H, W, 3), 250.0, np.float32)
    truth = np.zeros((H, W), np.uint8)
    cv2.ellipse(truth, (160, 125), (60, 80), 0, 0, 360, 1, -1)
    img[truth > 0] = (222.0, 222.0, 228.0)
    img += rng.normal(0.0, 1.5, img.shape)
    pred = backdrop_product_mask(np.clip(img, 0, 255).astype(np.uint8))
    assert iou(hard_mask(pred), truth > 0) >= 0.8


@pytest.mark.parametrize("value", [0, 128, 255])
def test_uniform_image_gives_empty_mask(value: int) -> None:
    img = np.full((H, W, 3), value, np.uint8)
    assert not backdrop_product_mask(img).any()
    noisy = np.clip(value + np.random.default_rng(2).normal(0.0, 3.0, img.shape), 0, 255).astype(np.uint8)
    assert hard_mask(backdrop_product_mask(noisy)).mean() < 0.001


def test_uniform_gradient_gives_empty_mask() -> None:
    t = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None, None]
    img = ((1 - t) * np.array([250.0, 250.0, 250.0]) + t * np.array([160.0, 170.0, 190.0])).astype(np.uint8)
    assert hard_mask(backdrop_product_mask(np.broadcast_to(img, (H, W, 3)).copy())).mean() < 0.001


def test_tiny_images() -> None:
    img = np.full((8, 8, 3), 255, np.uint8)
    img[3:6, 3:6] = (20, 30, 200)
    pred = backdrop_product_mask(img)
    assert pred.shape == (8, 8) and pred.dtype == np.float32
    assert pred[4, 4] == 1.0 and pred[0, 0] == 0.0
    for shape in [(1, 1, 3), (2, 5, 3), (3, 3, 3), (8, 8, 3)]:
        out = backdrop_product_mask(np.zeros(shape, np.uint8))
        assert out.shape == shape[:2] and not out.any()


def test_deterministic() -> None:
    img, _ = make_scene("multicolour", "grey_noise")
    np.testing.assert_array_equal(backdrop_product_mask(img), backdrop_product_mask(img))


def test_hard_mask_threshold() -> None:
    soft = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]], np.float32)
    np.testing.assert_array_equal(hard_mask(soft), [[False, False, True, True, True]])
    np.testing.assert_array_equal(hard_mask(soft, 0.8), [[False, False, False, False, True]])
