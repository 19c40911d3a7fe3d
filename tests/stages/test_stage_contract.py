"""The stage contract, checked for every stage and every registered backend (in the spirit of diffusers'
``PipelineTesterMixin``): each stage passes error rows through untouched, drops and duplicates no row,
turns good rows into good rows (``ok``), produces the columns it declares, and gives a row the same result
alone as inside a larger batch.

The cases come from the pipeline spec (every in-process stage) and the backend registries (every backend
of a model stage), so a new backend is under the contract the moment it is registered; one that needs more
than its name (a model file, options) adds its setup to :data:`SETUP`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from canvas_ray.config import load_config
from canvas_ray.registry import OWNERS, registry_for
from canvas_ray.rows import object_column, take_rows
from canvas_ray.spec import in_process_stages, make_stage
from canvas_ray.stages.base import StageContext
from canvas_ray.styles import StyleBook
from canvas_ray.testing import png_bytes, product_image
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WEIGHTFREE = REPO / "configs" / "weightfree.yaml"
BASE = {
    "output.aspect_ratios": ["1:1", "4:5"],
    "styles.default": ["studio white", "marble countertop"],
    "inpaint.resolution": 64,
    "inpaint.steps": 2,
}


def _cases() -> list[tuple[str, str]]:
    """Every in-process stage; a model stage once per registered backend."""
    cases = []
    for stage in in_process_stages():
        if stage in OWNERS:
            cases += [(stage, name) for name in registry_for(stage).names()]
        else:
            cases.append((stage, "default"))
    return cases


CASES = _cases()
# What a backend needs besides ``<stage>.backend`` and ``device: cpu``. ``model`` names a key of the
# ``models`` fixture; ``rgba`` feeds photos with a transparent background (cut-outs).
SETUP: dict[tuple[str, str], dict[str, Any]] = {
    # no fallback: a photo without usable transparency would be an error row, so `ok` rows prove that
    # the alpha channel made the mask
    ("segment", "alpha"): {"rgba": True, "overrides": {"segment.fallback": "none"}},
    ("segment", "onnx"): {"model": "onnx", "overrides": {"segment.options": {"input_size": 32}}},
    ("segment", "hf"): {"model": "segmenter"},
    ("caption", "hf"): {"model": "captioner", "overrides": {"caption.max_new_tokens": 4}},
    ("inpaint", "diffusers"): {"model": "inpainter"},
    ("inpaint", "timed"): {"overrides": {"inpaint.options": {"seconds_per_image": 0.01}}},
}


def test_the_cases_cover_every_registered_backend() -> None:
    """The registries are where the cases come from; a setup for a backend nobody registers is stale."""
    assert {kind for kind, _ in CASES} == set(in_process_stages())
    for kind in OWNERS:
        assert {name for stage, name in CASES if stage == kind} == set(registry_for(kind).names())
    assert set(SETUP) <= set(CASES), set(SETUP) - set(CASES)


def _dark_is_product_onnx(path: Path) -> Path:
    """A tiny ONNX "segmenter" with IS-Net's I/O: product where the image is dark."""
    import torch

    class Dark(torch.nn.Module):
        def forward(self, x):
            return (0.5 - x.mean(dim=1, keepdim=True)).clamp(0, 1)

    torch.onnx.export(
        Dark(),
        (torch.zeros(1, 3, 32, 32),),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "b"}, "output": {0: "b"}},
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, Path]:
    return {**tiny_models, "onnx": _dark_is_product_onnx(tmp_path_factory.mktemp("onnx") / "dark.onnx")}


def _config(stage: str, backend: str, models: dict[str, Path]):
    overrides: dict[str, Any] = dict(BASE)
    setup = SETUP.get((stage, backend), {})
    if backend != "default":
        overrides[f"{stage}.backend"] = backend
        overrides[f"{stage}.device"] = "cpu"
    if "model" in setup:
        overrides[f"{stage}.model"] = str(models[setup["model"]])
    overrides.update(setup.get("overrides", {}))
    return load_config(WEIGHTFREE, overrides)


def _cut_out(image: np.ndarray) -> np.ndarray:
    """The photo as a cut-out: opaque where the product box is, transparent elsewhere."""
    alpha = np.where((image < 200).any(axis=2), 255, 0).astype(np.uint8)
    return np.dstack([image, alpha])


def _catalog_rows(folder: Path, rgba: bool = False) -> dict[str, np.ndarray]:
    """Three items: two good photos (as files) and one that already failed upstream."""
    uris = []
    for seed in (1, 2):
        path = folder / f"p{seed}.png"
        image = product_image(128, 112, seed=seed)  # big enough for a confident mask (0.96)
        path.write_bytes(png_bytes(_cut_out(image) if rgba else image))
        uris.append(str(path))
    uris.append(str(folder / "missing.png"))
    return {
        "item_id": np.array(["a", "b", "bad"], dtype=object),
        "image_uri": np.array(uris, dtype=object),
        "title": np.array(["mug", "lamp", "x"], dtype=object),
        "style": np.array(["", "", ""], dtype=object),
        "status": np.array(["ok", "ok", "error"], dtype=object),
        "error": np.array(["", "", "catalog: planted upstream error"], dtype=object),
    }


def _input_of(stage: str, tmp_path: Path, rgba: bool = False) -> tuple[dict[str, np.ndarray], StyleBook]:
    """The batch that reaches ``stage``: the upstream stages run with weight-free backends."""
    config = load_config(WEIGHTFREE, BASE)
    styles = StyleBook.from_config(config)
    batch = _catalog_rows(tmp_path, rgba)
    for name in in_process_stages():
        if name == stage:
            break
        batch = make_stage(name, config, StageContext(styles=styles))(batch)
    return batch, styles


def _copy(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (object_column(list(v)) if v.dtype == object else v.copy()) for k, v in batch.items()}


def _same(a: Any, b: Any, column: str, tolerance: float) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if column in ("background", "result") and a.dtype == np.uint8:
            return int(np.abs(a.astype(int) - b.astype(int)).max()) <= 2  # batched float kernels
        return bool(np.array_equal(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return (a != a and b != b) or abs(a - b) <= tolerance * max(1.0, abs(a))
    return bool(a == b)


@pytest.mark.parametrize(("stage", "backend"), CASES, ids=[f"{s}-{b}" for s, b in CASES])
def test_stage_contract(stage, backend, models, tmp_path):
    batch, styles = _input_of(stage, tmp_path, rgba=SETUP.get((stage, backend), {}).get("rgba", False))
    # what reaches the stage: the good items still good, the planted error still an error
    reaching = {(item, status) for item, status in zip(batch["item_id"], batch["status"], strict=True)}
    assert reaching == {("a", "ok"), ("b", "ok"), ("bad", "error")}, list(batch["error"])
    config = _config(stage, backend, models)
    runner = make_stage(stage, config, StageContext(styles=styles))
    out = runner(_copy(batch))
    # 1. the declared columns are produced
    assert set(type(runner).produces) <= set(out), set(type(runner).produces) - set(out)
    ids_in = list(batch["item_id"])
    ids_out = list(out["item_id"])
    if stage == "prompt":  # the one expanding stage: exactly the requested outputs, errors expanded too
        expected = [o for i in range(len(ids_in)) for o in runner.output_ids(batch, i)]
        assert sorted(out["output_id"]) == sorted(expected) and len(set(expected)) == len(expected)
    else:  # 2. one row in, one row out, same order
        assert ids_out == ids_in
    # 3. error rows pass through untouched; 4. good rows stay good
    for i, item in enumerate(ids_out):
        if item == "bad":
            assert out["status"][i] == "error" and out["error"][i] == "catalog: planted upstream error"
        else:
            assert out["status"][i] == "ok", (item, out["status"][i], out["error"][i])
            assert not out["error"][i], (item, out["error"][i])
    if (stage, backend) == ("segment", "alpha"):  # the mask is the cut-out's own alpha channel
        for i, item in enumerate(ids_out):
            if item != "bad":
                image = batch["image"][i]
                assert image.shape[2] == 4
                assert np.array_equal(out["product_mask"][i] >= 128, image[..., 3] >= 128)
    # 5. a row alone gives what it gives inside the larger batch
    produced = [c for c in type(runner).produces if not c.endswith("_s")]
    # batched float kernels (the diffusion model) may move a pixel by one or two levels, and its scores
    tolerance = 1e-3 if backend == "diffusers" else 1e-6
    for index in range(len(ids_in)):
        alone = make_stage(stage, config, StageContext(styles=styles))(take_rows(_copy(batch), [index]))
        rows = (
            [j for j, item in enumerate(ids_out) if item == ids_in[index]] if stage == "prompt" else [index]
        )
        assert len(alone["item_id"]) == len(rows)
        for k, j in enumerate(rows):
            for column in ("status", "error", *produced):
                assert _same(alone[column][k], out[column][j], column, tolerance), (
                    stage,
                    backend,
                    column,
                    index,
                )
