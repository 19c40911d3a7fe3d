"""The benchmark scripts import, and their arithmetic holds (they run for real in docs/performance.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from benchmarks import common, engine, gpu
from canvas_ray.config import REPO_ROOT
from canvas_ray.schema import MANIFEST_SCHEMA


def test_flop_per_image_matches_the_sd15_estimate() -> None:
    flops = gpu.flop_per_image()  # 512x512, 25 steps, CFG
    unet = 339e9 * 2 * 2 * 25
    assert 35e12 <= flops <= 40e12
    assert flops == pytest.approx(unet + 2 * (gpu.VAE_DECODE_GMACS_512 + gpu.VAE_ENCODE_GMACS_512) * 1e9)
    no_cfg = gpu.flop_per_image(guidance=False)
    assert flops - no_cfg == pytest.approx(unet / 2)  # guidance doubles the UNet work only
    assert gpu.flop_per_image(1024, 1024) == pytest.approx(4 * flops)  # area scaling
    assert gpu.flop_per_image(strength=0.6) < flops  # fewer denoising steps run
    with pytest.raises(ValueError):
        gpu.flop_per_image(steps=0)


def test_fraction_of_peak_and_device_table() -> None:
    flops = gpu.flop_per_image()
    # 989 TFLOPS / 37.5 TFLOP per image: the ceiling is ~26 images/s on an H100 SXM
    assert gpu.fraction_of_peak(989e12 / flops, flops, 989.0) == pytest.approx(1.0)
    assert gpu.fraction_of_peak(1.0, flops, None) is None
    assert gpu.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops_for("NVIDIA H200") == 989.0
    assert gpu.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_tflops_for("NVIDIA L4") == 121.0
    assert gpu.peak_tflops_for("NVIDIA L40S") == 362.0
    assert gpu.peak_tflops_for("Some Other Card") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU skip path")
def test_gpu_benchmark_skips_cleanly_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu.main([]) == 0
    assert capsys.readouterr().out.strip() == gpu.SKIP_MESSAGE


def test_gpu_ladder_applies_sticky_settings_last() -> None:
    steps = gpu.ladder([1, 4, 8], compile_unet=True)
    assert steps[0].dtype == "float32" and steps[0].attention == "math" and steps[0].batch == 1
    first_cl = next(i for i, s in enumerate(steps) if s.channels_last)
    assert all(s.channels_last for s in steps[first_cl:])  # channels_last is not undone
    first_compiled = next(i for i, s in enumerate(steps) if s.compile)
    assert all(s.compile for s in steps[first_compiled:]) and {s.batch for s in steps} == {1, 4, 8}
    assert not any(s.compile for s in gpu.ladder([1], compile_unet=False))


def test_engine_stage_busy_counts_item_stages_once_per_item() -> None:
    rows = []
    for item in ("a", "b"):
        for variant in range(3):  # Prompt copies the item's stage times onto each of its outputs
            rows.append(
                {
                    "output_id": f"{item}{variant}",
                    "item_id": item,
                    "status": "ok",
                    "segment_s": 2.0,
                    "inpaint_s": 1.0,
                    "write_s": 0.5,
                }
            )
    busy = engine.stage_busy(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
    assert busy["segment_s"] == 4.0 and busy["inpaint_s"] == 6.0 and busy["write_s"] == 3.0
    assert busy["fetch_s"] == 0.0


def test_engine_actor_override_keeps_the_pool_reservation() -> None:
    config = engine.configure(str(REPO_ROOT / "configs" / "weightfree.yaml"), 3)
    base = engine.configure(str(REPO_ROOT / "configs" / "weightfree.yaml"), None)
    for name in engine.POOLS:
        res, orig = getattr(config, name).resources, getattr(base, name).resources
        assert res.concurrency == 3
        assert res.num_cpus * 3 == pytest.approx(orig.num_cpus * orig.concurrency, abs=1e-3)


def test_synthetic_catalog_gives_every_item_its_own_image(tmp_path: Path) -> None:
    catalog = common.synthetic_catalog(tmp_path, 15)
    rows = [json.loads(line) for line in catalog.read_text().splitlines()]
    assert len(rows) == len({r["item_id"] for r in rows}) == 15
    assert all((tmp_path / r["image_uri"]).is_file() for r in rows)
    assert common.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)


def test_memory_quarter_peaks() -> None:
    from benchmarks.memory import quarter_peaks

    series = [[0.0, 1.0], [1.0, 5.0], [2.0, 3.0], [3.0, 4.0], [4.0, 2.0]]
    assert quarter_peaks(series) == [1.0, 5.0, 3.0, 4.0]
    assert quarter_peaks([]) == []


def test_heldout_scenes_are_deterministic_and_split_by_seed() -> None:
    """The second scene generator: same seed, same pixels and truth; tune and test seeds differ; the truth is
    the drawn coverage (the watch's strap above and below its dial is product)."""
    from benchmarks.heldout_scenes import PRODUCTS, heldout_scenes, render

    first, again = render(0, "brick", "blinds", 80000), render(0, "brick", "blinds", 80000)
    assert first.kind == "parts-both-sides" and first.mask.shape == first.image.shape[:2]
    assert (first.image == again.image).all() and (first.mask == again.mask).all()
    rows = first.mask.any(axis=1).nonzero()[0]
    assert rows.min() < 0.1 * first.mask.shape[0] and rows.max() > 0.9 * first.mask.shape[0]
    tune = next(heldout_scenes(1, "tune"))
    test = next(heldout_scenes(1, "test"))
    assert tune.name != test.name and len(PRODUCTS) >= 10


def test_heldout_multi_scenes_hold_two_separate_objects() -> None:
    """Scenes of two separate salient objects (which one is the product?): deterministic per seed, split
    by seed, and the truth is two objects apart (the left and right halves both hold product)."""
    import cv2
    import numpy as np

    from benchmarks.heldout_scenes import heldout_multi

    first, again = next(heldout_multi(1, "test")), next(heldout_multi(1, "test"))
    assert (first.image == again.image).all() and first.kind in ("two-products", "passer-by")
    assert next(heldout_multi(1, "tune")).name != first.name
    for scene in heldout_multi(3, "test"):
        columns = scene.mask.any(axis=0).nonzero()[0]
        assert np.diff(columns).max() > 10, scene.name  # a gap between the two objects
        assert cv2.connectedComponents(scene.mask.astype(np.uint8))[0] - 1 >= 2
