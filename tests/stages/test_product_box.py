"""``product_box``: a row may name its product by a box (x0,y0,x1,y1 in source pixels); every segment
backend then segments inside the box (plus a margin) and calls everything outside it background."""

from __future__ import annotations

import numpy as np
import pytest

from canvas_ray.config import load_config
from canvas_ray.stages.segment import Segment, parse_box


def two_objects() -> np.ndarray:
    image = np.full((120, 200, 3), 235, np.uint8)
    image[30:90, 20:70] = (200, 30, 30)  # the product
    image[40:100, 130:180] = (30, 60, 200)  # a second object (a passer-by, another item)
    return image


def segment(boxes: list[object]) -> dict:
    column = np.empty(len(boxes), dtype=object)
    for index in range(len(boxes)):
        column[index] = two_objects()
    box_column = np.empty(len(boxes), dtype=object)
    box_column[:] = boxes
    batch = {"item_id": np.array([f"i{k}" for k in range(len(boxes))], dtype=object), "image": column}
    batch["product_box"] = box_column
    return Segment(load_config(None, {"segment.backend": "backdrop"}))(batch)


def test_the_box_names_the_product_and_the_rest_is_background():
    out = segment(["10,20,80,100", None, [120, 30, 190, 110], "5,5,4,4", "0,0,9999,x"])
    assert list(out["status"][:3]) == ["ok", "ok", "ok"]
    boxed, plain, other = (out["product_mask"][k] >= 128 for k in range(3))
    assert boxed[30:90, 20:70].mean() > 0.9 and not boxed[:, 100:].any()
    assert plain[30:90, 20:70].mean() > 0.9 and plain[40:100, 130:180].mean() > 0.9  # no box: both
    assert other[40:100, 130:180].mean() > 0.9 and not other[:, :100].any()
    assert out["status"][3] == "error" and "product_box" in out["error"][3]
    assert out["status"][4] == "error" and "x0,y0,x1,y1" in out["error"][4]


def test_parse_box_forms():
    assert parse_box("1, 2, 30, 40") == (1, 2, 30, 40)
    assert parse_box(np.array([1.4, 2, 30, 40.6])) == (1, 2, 30, 41)
    assert parse_box("") is None and parse_box(None) is None and parse_box(float("nan")) is None
    with pytest.raises(ValueError, match="empty or negative"):
        parse_box("-1,0,5,5")
