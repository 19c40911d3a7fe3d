"""The Composite stage under both preservation rules: ``preserve_rule`` is recorded per output and reaches
the manifest, ``product_preserved`` holds under each rule's own check, hard-edged products keep the
``opaque`` rule (every product pixel the source's), and a soft edge that cannot be separated is ``review``
with a ``matte: ...`` reason in ``mask_flags``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from benchmarks.matte import SCENES, new_background
from canvas_ray.compose import HARD
from canvas_ray.config import load_config
from canvas_ray.matte import OPAQUE
from canvas_ray.records import OutputRecord
from canvas_ray.rows import object_column
from canvas_ray.schema import MANIFEST_SCHEMA
from canvas_ray.stages.composite import Composite
from tests.conftest import REPO

WEIGHTFREE = REPO / "configs" / "weightfree.yaml"
NAMES = ["hair", "hard", "busy_hair", "glass"]


def _batch() -> dict:
    scenes = [SCENES[name]() for name in NAMES]
    n = len(scenes)
    return {
        "output_id": np.array([f"o-{name}" for name in NAMES], dtype=object),
        "item_id": np.array(NAMES, dtype=object),
        "status": np.array(["ok"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "style": np.array(["studio white"] * n, dtype=object),
        "mask_confidence": np.ones(n),
        "mask_flags": np.array([""] * n, dtype=object),
        "canvas": object_column([s.source for s in scenes]),
        "canvas_mask": object_column([s.mask for s in scenes]),
        "background": object_column([new_background() for _ in scenes]),
    }


def test_preserve_rule_per_output_and_review_for_an_inseparable_matte():
    batch = Composite(load_config(WEIGHTFREE))(_batch())
    assert list(batch["preserve_rule"]) == ["matte", "opaque", "opaque", "matte"]
    assert list(batch["status"]) == ["ok", "ok", "review", "ok"]
    assert batch["product_preserved"].all() and (batch["max_product_diff"] == 0).all()
    assert batch["mask_flags"][2].startswith("matte: old background too busy")
    assert batch["error"][2].startswith("composite: matte: old background too busy")
    assert list(batch["mask_flags"][[0, 1, 3]]) == ["", "", ""]
    for index, name in enumerate(NAMES):
        scene, result = SCENES[name](), batch["result"][index]
        rule_pixels = scene.mask >= (OPAQUE if batch["preserve_rule"][index] == "matte" else HARD)
        assert np.array_equal(result[rule_pixels], scene.source[rule_pixels]), name
    # under the matte, the hair's partial band is not the source's (it carried the old blue sky)
    hair = SCENES["hair"]()
    band = (hair.mask > 40) & (hair.mask < 200)
    blue_shift = batch["result"][0][band][:, 2].astype(int) - hair.source[band][:, 2].astype(int)
    assert blue_shift.mean() < -20


def test_matte_off_keeps_every_output_opaque():
    batch = Composite(load_config(WEIGHTFREE, {"composite.matte": "off"}))(_batch())
    assert list(batch["preserve_rule"]) == ["opaque"] * len(NAMES)
    assert list(batch["status"]) == ["ok"] * len(NAMES)


def test_preserve_rule_reaches_the_manifest():
    batch = Composite(load_config(WEIGHTFREE))(_batch())
    rows = [record.manifest_row() for record in OutputRecord.from_batch(batch)]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    assert table.column("preserve_rule").to_pylist() == ["matte", "opaque", "opaque", "matte"]
    assert table.column("status").to_pylist() == ["ok", "ok", "review", "ok"]
    assert table.column("product_preserved").to_pylist() == [True] * len(NAMES)


def test_composite_matte_config_is_validated():
    import pytest

    with pytest.raises(Exception, match="matte"):
        load_config(WEIGHTFREE, {"composite.matte": "sometimes"})
    assert load_config(WEIGHTFREE).composite.matte == "auto"
