"""Evidence outside the mask: a salient-object model that masks one of two objects cleanly leaves the other
as a faint blob in its own soft output. The mask then holds one clean object (nothing inside it can tell),
so the faint blob outside it sends the output to review, unless a ``product_box`` names the product.

The segmenter here is a stand-in with IS-Net's habits: about 0.98 on the object it picks, a few percent on
an object it drops, near 0 on the backdrop, soft edges."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from canvas_ray.config import load_config
from canvas_ray.stages import segment as segment_module
from canvas_ray.stages.mask_outside import OUTSIDE_MIN_SHARE, OUTSIDE_SOFT, outside_objects
from canvas_ray.stages.mask_trust import assess_mask
from canvas_ray.stages.segment import Segment

FLAG = "a second object outside the mask"
NAME_IT = "name the product with product_box"
BACKDROP = 236
PRODUCT = (190, 25, 30)
OTHER = (30, 60, 170)


def scene(second: bool = True, texture: float = 0.0, seed: int = 0) -> np.ndarray:
    """A red bottle on a plain (or, with ``texture``, mildly textured) backdrop; with ``second`` a blue
    passer-by stands apart from it."""
    rng = np.random.default_rng(seed)
    image = np.full((180, 270, 3), BACKDROP, np.float32)
    if texture:
        grain = cv2.resize(rng.normal(0, 1, (18, 27)).astype(np.float32), (270, 180))
        image += texture * grain[..., None] + rng.normal(0, 2.0, image.shape).astype(np.float32)
    image = np.clip(image, 0, 255).astype(np.uint8)
    cv2.rectangle(image, (30, 60), (80, 165), PRODUCT, -1)
    cv2.rectangle(image, (49, 25), (61, 60), PRODUCT, -1)
    if second:
        cv2.rectangle(image, (170, 55), (215, 125), OTHER, -1)
        cv2.rectangle(image, (176, 125), (209, 168), OTHER, -1)
        cv2.circle(image, (192, 38), 15, OTHER, -1)
    return image


def near(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(image.astype(np.int16) - np.array(colour)).sum(-1) < 30


class DropsTheSecond:
    """IS-Net's habit: the red object at 0.98, the blue one only faintly (``faint``), backdrop ~0; with
    ``speckle`` the backdrop's texture lifts it to a haze of 0.4–0.9% and scatters small specks above
    that."""

    def __init__(self, faint: float = 0.03, speckle: bool = False):
        self.faint, self.speckle = faint, speckle

    def product_masks(self, images: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for image in images:
            soft = np.full(image.shape[:2], 0.0005, np.float32)
            soft[near(image, OTHER)] = self.faint
            soft[near(image, PRODUCT)] = 0.98
            if self.speckle:
                rng = np.random.default_rng(1)
                haze = cv2.resize(rng.random((12, 18)).astype(np.float32), soft.shape[::-1])
                soft = np.maximum(soft, 0.004 + 0.005 * haze)  # IS-Net on a textured backdrop
                specks = cv2.dilate((rng.random(soft.shape) < 0.003).astype(np.uint8), np.ones((3, 3)))
                soft[(specks > 0) & (soft < 0.5)] = 0.08
            out.append(cv2.GaussianBlur(soft, (0, 0), 1.5))
        return out


def run(segmenter: object, image: np.ndarray, box: object = None, monkeypatch=None) -> dict:
    """The Segment stage with ``segmenter`` as its (non-backdrop) backend, one row."""
    monkeypatch.setattr(segment_module, "build_segmenter", lambda spec: segmenter)
    stage = Segment(load_config(None, {"segment.backend": "onnx", "segment.min_confidence": 0.6}))
    column, boxes = np.empty(1, dtype=object), np.empty(1, dtype=object)
    column[0], boxes[0] = image, box
    return stage({"item_id": np.array(["i"], dtype=object), "image": column, "product_box": boxes})


def test_a_second_object_the_mask_leaves_out_goes_to_review_with_the_reason(monkeypatch):
    image = scene()
    out = run(DropsTheSecond(), image, monkeypatch=monkeypatch)
    assert out["status"][0] == "ok"
    mask = out["product_mask"][0] >= 128
    assert mask[near(image, PRODUCT)].mean() > 0.95 and not mask[near(image, OTHER)].any()
    flags = str(out["mask_flags"][0])
    assert f"{FLAG} (" in flags and NAME_IT in flags, flags
    assert "several separate objects" not in flags  # the mask itself is one clean object
    assert out["mask_confidence"][0] < 0.6  # below segment.min_confidence: review


def test_one_product_on_a_plain_or_mildly_textured_backdrop_is_not_flagged(monkeypatch):
    for texture, speckle in ((0.0, False), (6.0, True)):
        image = scene(second=False, texture=texture)
        out = run(DropsTheSecond(speckle=speckle), image, monkeypatch=monkeypatch)
        assert out["status"][0] == "ok"
        flags = str(out["mask_flags"][0])
        assert "outside the mask" not in flags, (texture, flags)
        assert out["mask_confidence"][0] >= 0.6, (texture, flags)


def test_a_product_box_names_the_product_and_the_flag_goes(monkeypatch):
    image = scene()
    # a box around both objects: the faint blob stays inside the crop, only the box's word removes the flag
    for box in (None, "10,10,260,175"):
        out = run(DropsTheSecond(), image, box, monkeypatch=monkeypatch)
        assert out["status"][0] == "ok"
        assert (FLAG in str(out["mask_flags"][0])) == (box is None), (box, out["mask_flags"][0])
    # and the mask-level switch the stage uses for it
    soft = DropsTheSecond().product_masks([image])[0]
    assert FLAG in assess_mask(image, soft).flags
    assert FLAG not in assess_mask(image, soft, one_object=True).flags
    # the weight-free backdrop segmenter's soft mask has no faint blobs to read: not scored there
    assert "outside the mask" not in assess_mask(image, soft, plain_backdrop_model=True).flags


def test_what_counts_as_an_object_outside_the_mask():
    image = scene()
    hard = near(image, PRODUCT)
    product_area = float(hard.sum())
    other = near(image, OTHER)
    background = np.full(hard.shape, 0.0005, np.float32)

    def soft_with(region: np.ndarray, level: float) -> np.ndarray:
        soft = background.copy()
        soft[region] = level
        soft[hard] = 0.98
        return soft

    found = outside_objects(soft_with(other, 0.03), hard)
    assert found.share == pytest.approx(other.sum() / product_area, rel=0.15) and not found.beside
    assert 0.02 < found.level < 0.04
    # below the probability that marks a salient region: nothing
    assert outside_objects(soft_with(other, OUTSIDE_SOFT / 2), hard).share == 0
    # a fleck under OUTSIDE_MIN_SHARE of the mask: nothing
    fleck = np.zeros_like(hard)
    side = int(np.sqrt(OUTSIDE_MIN_SHARE * product_area / 2))
    fleck[20 : 20 + side, 200 : 200 + side] = True
    assert outside_objects(soft_with(fleck, 0.05), hard).share == 0
    # a thin diagonal streak (texture, a stripe of light) is no object, however long
    streak = np.zeros(hard.shape, np.uint8)
    cv2.line(streak, (120, 5), (265, 175), 1, 5)
    assert outside_objects(soft_with(streak.astype(bool), 0.05), hard).share == 0
    # a faint part that continues the mask (a strap above a dial) is found, and said to be beside it
    strap = np.zeros_like(hard)
    strap[5:25, 45:66] = True
    strap[25:28, 49:62] = True
    upper = hard.copy()
    upper[:60] = False  # the mask lost the neck
    found = outside_objects(soft_with(strap | (hard & ~upper), 0.04), upper)
    assert found.share > OUTSIDE_MIN_SHARE and found.beside
    # no mask: nothing to compare with
    assert outside_objects(background, np.zeros_like(hard)).share == 0
