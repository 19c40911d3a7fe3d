"""Which object is the product: without a ``product_box``, a mask of several separate salient objects (a
car and a passer-by, two unrelated products) is not trusted; the parts of one product (a pair of earrings,
a set, a cable and its plug, a ring's hole) are one object; a ``product_box`` names the product."""

from __future__ import annotations

import cv2
import numpy as np

from canvas_ray.config import load_config
from canvas_ray.stages.mask_trust import assess_mask, separate_objects
from canvas_ray.stages.segment import Segment

BACKDROP = 236
FLAG = "several separate objects"


def two_objects() -> tuple[np.ndarray, np.ndarray]:
    """A red bottle and, apart from it, a person in a blue coat with a skin-coloured head."""
    image = np.full((160, 240, 3), BACKDROP, np.uint8)
    mask = np.zeros((160, 240), np.uint8)
    cv2.rectangle(mask, (30, 50), (75, 150), 1, -1)  # bottle body
    cv2.rectangle(mask, (46, 20), (58, 50), 1, -1)  # neck
    image[mask > 0] = (190, 25, 30)
    person = np.zeros_like(mask)
    cv2.rectangle(person, (150, 45), (190, 110), 1, -1)  # coat
    cv2.rectangle(person, (155, 110), (185, 152), 1, -1)  # trousers
    cv2.circle(person, (170, 30), 13, 1, -1)  # head (touching the coat)
    image[person > 0] = (30, 60, 170)
    image[110:152, 155:186][person[110:152, 155:186] > 0] = (40, 40, 45)
    image[17:44, 157:184][person[17:44, 157:184] > 0] = (230, 180, 140)
    return image, (mask | person).astype(bool)


def stage() -> Segment:
    return Segment(load_config(None, {"segment.backend": "backdrop", "segment.min_confidence": 0.6}))


def run(image: np.ndarray, box: object = None) -> dict:
    column = np.empty(1, dtype=object)
    column[0] = image
    boxes = np.empty(1, dtype=object)
    boxes[0] = box
    return stage()({"item_id": np.array(["i"], dtype=object), "image": column, "product_box": boxes})


def test_two_separate_objects_go_to_review_with_the_reason_and_the_fix():
    image, truth = two_objects()
    out = run(image)
    assert out["status"][0] == "ok"
    mask = out["product_mask"][0] >= 128
    assert mask[truth].mean() > 0.9  # the segmenter found both objects
    flags = str(out["mask_flags"][0])
    assert f"{FLAG} (2): name the product with product_box" in flags, flags
    assert out["mask_confidence"][0] < 0.6  # below segment.min_confidence: review


def test_a_product_box_names_the_product_and_the_flag_goes():
    image, _ = two_objects()
    for box in ("0,0,240,160", "20,10,90,155"):  # a box around both (the catalog vouches) or one object
        out = run(image, box)
        assert out["status"][0] == "ok"
        assert FLAG not in str(out["mask_flags"][0]), (box, out["mask_flags"][0])
    # and the mask-level switch the stage uses for it
    image, truth = two_objects()
    soft = truth.astype(np.float32)
    assert FLAG in assess_mask(image, soft).flags
    assert FLAG not in assess_mask(image, soft, one_object=True).flags


def drop(mask: np.ndarray, cx: int, cy: int, mirror: bool = False) -> None:
    """An earring: a hook, a bead and a tear-drop pendant (mirrored for the other ear)."""
    sign = -1 if mirror else 1
    cv2.ellipse(mask, (cx, cy + 40), (14, 22), 0, 0, 360, 1, -1)
    cv2.circle(mask, (cx + sign * 3, cy + 10), 6, 1, -1)
    cv2.line(mask, (cx + sign * 3, cy + 10), (cx + sign * 10, cy - 6), 1, 3)
    cv2.rectangle(mask, (cx + sign * 3 - 2, cy + 10), (cx + sign * 3 + 2, cy + 20), 1, -1)


def objects(mask: np.ndarray) -> int:
    image = np.full((*mask.shape, 3), BACKDROP, np.uint8)
    image[mask > 0] = (200, 160, 40)
    return separate_objects(image, mask > 0).count


def test_a_pair_of_earrings_is_one_product():
    mask = np.zeros((160, 240), np.uint8)
    drop(mask, 90, 40)
    drop(mask, 150, 40, mirror=True)  # close together
    assert objects(mask) == 1
    wide = np.zeros((160, 300), np.uint8)
    drop(wide, 60, 40)
    drop(wide, 240, 40, mirror=True)  # far apart: twins by area and shape
    assert objects(wide) == 1
    image = np.full((160, 240, 3), BACKDROP, np.uint8)
    image[mask > 0] = (200, 160, 40)
    trust = assess_mask(image, mask.astype(np.float32))
    assert FLAG not in trust.flags and trust.figures["objects"] == 1


def test_a_set_a_cable_with_its_plug_and_a_ring_are_one_product():
    # a cufflink pair and a tie bar below, all in the same metal
    cufflinks = np.zeros((200, 260), np.uint8)
    for cx in (70, 190):
        cv2.circle(cufflinks, (cx, 60), 30, 1, -1)
    cv2.rectangle(cufflinks, (40, 150), (220, 160), 1, -1)
    assert objects(cufflinks) == 1
    # a set of three jars with small gaps
    jars = np.zeros((160, 240), np.uint8)
    for x0 in (20, 90, 160):
        cv2.rectangle(jars, (x0, 40), (x0 + 62, 150), 1, -1)
    assert objects(jars) == 1
    # a cable whose thin end the segmenter broke before the plug
    cable = np.zeros((200, 200), np.uint8)
    cv2.rectangle(cable, (60, 20), (140, 80), 1, -1)  # charger body
    cv2.line(cable, (100, 80), (100, 150), 1, 4)
    cv2.rectangle(cable, (92, 156), (108, 190), 1, -1)  # plug, 6 px below the cable's end
    assert objects(cable) == 1
    # a ring: the hole is no second object
    ring = np.zeros((160, 160), np.uint8)
    cv2.circle(ring, (80, 80), 50, 1, 12)
    assert objects(ring) == 1
