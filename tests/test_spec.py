"""The pipeline spec is what runs: every step's stages and sinks are classes the drivers build from it,
the batch plan's task functions and pool classes are generated from it, and the in-process drivers run
its stages without the sinks, in model-batch chunks."""

from __future__ import annotations

import numpy as np
import pytest

from canvas_ray.batch_plan import POOLS, TASKS, RunContext
from canvas_ray.config import load_config
from canvas_ray.pipeline import InProcess, items_batch
from canvas_ray.spec import (
    PIPELINE,
    SINKS,
    in_process_stages,
    input_error_stages,
    make_stage,
    model_batch,
    stage_resources,
)
from canvas_ray.stages.base import StageContext
from canvas_ray.styles import StyleBook
from canvas_ray.testing import png_bytes, product_image
from tests.conftest import REPO

CONFIG = REPO / "configs" / "weightfree.yaml"


def test_every_step_has_its_driver_code_generated_from_the_spec():
    for spec in PIPELINE:
        if spec.kind == "pool":
            assert POOLS[spec.name].stage_name == spec.name and spec.chunked and len(spec.stages) == 1
        else:
            assert TASKS[spec.name].__name__ == spec.name and not spec.chunked
    assert set(TASKS) | set(POOLS) == {s.name for s in PIPELINE}
    assert {name for s in PIPELINE for name in s.sinks} == set(SINKS)


def test_in_process_drivers_run_the_stages_without_the_sinks_in_model_chunks():
    config = load_config(CONFIG, {"segment.resources.batch_size": 3, "inpaint.resources.batch_size": 5})
    names = in_process_stages()
    assert not set(names) & set(SINKS) and names[0] == "fetch" and names[-1] == "composite"
    assert in_process_stages("caption") == ("fetch", "decode", "segment", "caption")
    assert model_batch("segment", config) == 3 and model_batch("inpaint", config) == 5
    assert model_batch("prompt", config) is None and model_batch("fetch", config) is None
    runner = InProcess(config, StageContext(), until="caption")
    assert list(runner.stages) == ["fetch", "decode", "segment", "caption"]


def test_the_input_error_policy_is_the_specs():
    assert set(input_error_stages()) == {"fetch", "decode", "segment", "prompt", "profile", "compliance"}
    assert "inpaint" not in input_error_stages() and "caption" not in input_error_stages()


@pytest.mark.parametrize("sink", SINKS)
def test_a_sink_needs_an_output_root(sink):
    config = load_config(CONFIG)
    with pytest.raises(ValueError, match="output root"):
        make_stage(sink, config, StageContext())


def test_a_task_step_runs_its_stages_and_sinks(tmp_path):
    """thumbnails_and_prompt, run as the plan's task runs it: the sink writes each item's thumbnails, and
    Prompt expands the item into its outputs, each carrying the thumbnails' paths."""
    config = load_config(CONFIG, {"output.aspect_ratios": ["1:1", "4:5"]})
    styles = StyleBook.from_config(config)
    items = [
        {"item_id": f"sku-{i}", "image_bytes": png_bytes(product_image(120, 96, seed=i)), "title": "A mug"}
        for i in range(2)
    ]
    batch = InProcess(config, StageContext(styles=styles), until="caption")(items_batch(items))
    run = RunContext(config, styles, "fp", "run-1", str(tmp_path), {})
    out = TASKS["thumbnails_and_prompt"](batch, run)
    expected = 2 * len(config.styles.default) * 2
    assert len(out["output_id"]) == expected
    for item in ("sku-0", "sku-1"):
        rows = [i for i in range(expected) if out["item_id"][i] == item]
        thumbs = {out["thumb_uri"][i] for i in rows} | {out["mask_uri"][i] for i in rows}
        assert len(thumbs) == 2 and all((tmp_path / t).is_file() for t in thumbs)


def test_prompt_honours_a_rows_own_prompt_and_carries_the_request_id():
    """What Serve used to patch in after Prompt is now row data every driver passes the same way."""
    config = load_config(CONFIG)
    context = StageContext(styles=StyleBook.from_config(config))
    items = [
        {
            "item_id": "a",
            "image_bytes": png_bytes(product_image(seed=1)),
            "prompt": "  a  red  mug ",
            "request_id": "r1",
        },
        {"item_id": "b", "image_bytes": png_bytes(product_image(seed=2)), "prompt": "", "request_id": "r2"},
    ]
    batch = InProcess(config, context, until="caption")(items_batch(items))
    out = make_stage("prompt", config, context)(batch)
    for i, item in enumerate(out["item_id"]):
        assert out["request_id"][i] == {"a": "r1", "b": "r2"}[item]
        if item == "a":
            assert out["prompt"][i] == "a red mug"
        else:
            assert out["prompt"][i] and out["prompt"][i] != "a red mug"  # built from the style, as always
    assert stage_resources(PIPELINE[0], config).batch_size == config.ray.block_rows
    assert isinstance(out["seed"], np.ndarray)
