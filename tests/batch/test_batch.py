"""The catalog job on a real local Ray: end to end, bad inputs, resume, a killed actor."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from canvas_ray.batch import GenerateRequest, expected_outputs, run_generate
from canvas_ray.config import load_config
from canvas_ray.io.catalog import read_catalog
from canvas_ray.io.manifest import Manifest, read_manifest
from canvas_ray.styles import StyleBook
from tests.conftest import REPO, SAMPLE_CATALOG, sample_copies

LOCAL = REPO / "configs" / "weightfree.yaml"


def _config(**overrides):
    return load_config(LOCAL, overrides)


def _manifest(root: Path):
    """The compacted manifest as every reader sees it: the bucket files (pyarrow.dataset)."""
    import pyarrow.dataset as pads

    assert not (root / "manifest" / "_staging").exists()  # nothing left uncompacted
    return pads.dataset(root / "manifest", format="parquet", partitioning="hive").to_table().to_pylist()


def _check_outputs(root: Path, rows: list[dict]) -> None:
    """Every delivered (ok / review) row's image exists, decodes, and its recorded size and product check
    hold."""
    for row in rows:
        if row["status"] not in ("ok", "review"):
            continue
        image = np.asarray(Image.open(root / row["output_uri"]))
        assert image.shape[:2] == (row["height"], row["width"])
        assert row["product_preserved"] is True and row["max_product_diff"] == 0
        assert row["product_pixels"] > 0


def test_sample_catalog_one_row_per_output(sample_run):
    root, config, summary = sample_run["root"], sample_run["config"], sample_run["summary"]
    rows = _manifest(root)
    catalog = read_catalog(sample_run["catalog"])
    expected = expected_outputs(catalog.table, config, StyleBook.from_config(config))
    wanted = sorted(o for outputs in expected.values() for o in outputs)
    assert sorted(r["output_id"] for r in rows) == wanted  # exactly one row per requested output
    # the weight-free segmenter cannot vouch for the busy scenes: those outputs are `review`, never `ok`
    assert all(r["status"] in ("ok", "review") for r in rows), [r["error"] for r in rows if r["error"]]
    review = [r for r in rows if r["status"] == "review"]
    assert all(r["error"].startswith("segment: mask confidence") for r in review)
    assert all(r["mask_confidence"] is not None for r in rows)
    assert summary["ok"] + summary["review"] == len(wanted) and summary["errors"] == 0
    assert summary["review"] == len(review) and summary["product_preserved"] == summary["ok"]
    written = json.loads((root / "summary.json").read_text())
    assert written["ok"] + written["review"] == len(wanted)


def test_sample_catalog_outputs_and_scores(sample_run):
    root = sample_run["root"]
    rows = _manifest(root)
    _check_outputs(root, rows)
    # every output carries its score figures; expansion is not measured on studio backdrops (cannot grow)
    for row in rows:
        assert row["expansion_ratio"] is None
        assert 0 < row["quality_score"] <= 1 and row["attempts"] == 1 and row["candidates"] == 1
        assert row["seam_energy"] is not None and row["clip_score"] is None
    # the catalog's own style column wins over the config's defaults
    styled = {r["item_id"]: r["style"] for r in rows if r["item_id"] in ("sku-0008", "sku-0012")}
    assert styled == {"sku-0008": "luxury dark", "sku-0012": "marble countertop"}


def test_sample_catalog_review_pages(sample_run):
    root = sample_run["root"]
    rows = _manifest(root)
    page = (root / "index.html").read_text()
    items = "".join(p.read_text() for p in (root / "review").glob("b*/p*.html"))
    assert "review/b00000/p1.html" in page and all(r["output_uri"] in items for r in rows)
    # the thumbnails sink wrote each item's photo and mask, and Prompt carried their paths to every output
    delivered = [r for r in rows if r["status"] in ("ok", "review")]
    assert delivered and all(r["thumb_uri"] and r["mask_uri"] for r in delivered)
    assert all((root / r["thumb_uri"]).is_file() and (root / r["mask_uri"]).is_file() for r in delivered)
    assert all(r["thumb_uri"] in items for r in delivered)


def test_sample_catalog_rerun_is_byte_identical(ray_local, sample_run, tmp_path):
    """Determinism: the same config re-run from scratch gives byte-identical images."""
    root = sample_run["root"]
    again = tmp_path / "again"
    run_generate(
        GenerateRequest(sample_run["config"], sample_run["catalog"], str(again), limit=3, progress=False)
    )
    rows = _manifest(again)
    assert len(rows) > 0
    for row in rows:
        assert (again / row["output_uri"]).read_bytes() == (root / row["output_uri"]).read_bytes()


def _png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _product(height=120, width=100) -> np.ndarray:
    image = np.full((height, width, 3), 238, np.uint8)
    image[height // 4 : height * 3 // 4, width // 3 : width * 2 // 3] = (30, 90, 160)
    return image


def _write_mixed_catalog(folder: Path) -> list[dict]:
    images = folder / "images"
    images.mkdir(parents=True)
    good = _png(_product())
    files = {
        "good.png": good,
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "truncated.png": good[: len(good) // 2],
        "empty.png": b"",
        "text.jpg": b"this is not an image at all",
        "tiny.png": _png(np.zeros((4, 4, 3), np.uint8)),
        "huge.png": _png(np.zeros((9000, 9000), np.uint8), mode="1"),
        "cmyk.jpg": _png(_product(), mode="CMYK", fmt="JPEG"),
        "grey16.png": _png((_product()[..., 0].astype(np.uint16) * 200), fmt="PNG"),
        "blank.png": _png(np.full((80, 80, 3), 200, np.uint8)),
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    rows = [{"item_id": Path(name).stem, "image_uri": f"images/{name}", "title": name} for name in files]
    rows += [
        {"item_id": "missing", "image_uri": "images/does-not-exist.png"},
        {"item_id": "good", "image_uri": "images/good.png"},  # duplicate id
        {"item_id": "", "image_uri": "images/good.png"},  # missing id
        {"item_id": "no-uri", "image_uri": ""},
    ]
    (folder / "catalog.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return rows


def test_bad_inputs_become_error_rows(ray_local, tmp_path):
    rows = _write_mixed_catalog(tmp_path / "catalog")
    config = _config(
        **{
            "limits.max_pixels": 50_000_000,
            "output.aspect_ratios": ["1:1", "3:4"],
            "styles.default": ["studio white"],
            "output.variants": 2,
        }
    )
    config.limits.max_pixels = 20_000_000
    summary = run_generate(
        GenerateRequest(
            config, str(tmp_path / "catalog" / "catalog.jsonl"), str(tmp_path / "out"), progress=False
        )
    )
    manifest = _manifest(tmp_path / "out")
    per_item: dict[str, list[dict]] = {}
    for row in manifest:
        per_item.setdefault(row["item_id"], []).append(row)
    assert len(per_item) == len(rows)  # nothing dropped, duplicates and missing ids kept apart
    assert all(len(outputs) == 4 for outputs in per_item.values())  # 1 style x 2 aspects x 2 variants
    assert len({r["output_id"] for r in manifest}) == len(manifest) == 4 * len(rows)

    def reason(item: str) -> str:
        errors = {r["error"] for r in per_item[item]}
        assert len(errors) == 1 and all(r["status"] == "error" for r in per_item[item]), per_item[item]
        return errors.pop()

    assert "not an image" in reason("corrupt") or "corrupt" in reason("corrupt")
    assert "truncated" in reason("truncated")
    assert "empty" in reason("empty")
    assert "not an image" in reason("text")
    assert "at least" in reason("tiny")
    assert "MP" in reason("huge") and reason("huge").startswith("decode:")
    assert "file not found" in reason("missing")
    assert "duplicate item_id" in reason("good#dup1")
    assert "no item_id" in reason(f"row-{12:07d}")
    assert "no image_uri" in reason("no-uri")
    assert reason("blank").startswith("segment: no product found")
    for item in ("good", "cmyk", "grey16"):  # odd modes decode and work
        assert all(r["status"] == "ok" and r["product_preserved"] for r in per_item[item]), per_item[item]
    assert summary["errors"] == sum(r["status"] == "error" for r in manifest)
    _check_outputs(tmp_path / "out", manifest)
    assert "Errors (" in (tmp_path / "out" / "index.html").read_text()


def test_resume_skips_finished_items_and_writes_no_duplicates(ray_local, tmp_path):
    config = _config(**{"output.aspect_ratios": ["1:1"], "styles.default": ["studio white", "halloween"]})
    catalog = str(sample_copies(tmp_path / "catalog"))  # the sample items at half scale
    first = run_generate(GenerateRequest(config, catalog, str(tmp_path), limit=4, progress=False))
    assert first["items_processed"] == 4 and first["ok"] + first["review"] == first["outputs_expected"]
    before = {r["output_id"]: r for r in _manifest(tmp_path)}

    # forget two items (as if the job died before writing them) and tear a manifest part
    (manifest_path,) = Manifest(str(tmp_path)).files()
    table = pq.read_table(manifest_path)
    keep = [
        i
        for i, item in enumerate(table.column("item_id").to_pylist())
        if item not in ("sku-0002", "sku-0003")
    ]
    pq.write_table(table.take(keep), manifest_path)
    parts = tmp_path / "manifest" / "_staging" / "crashed-run"
    parts.mkdir(parents=True)
    (parts / "torn.parquet").write_bytes(b"PAR1 torn write")

    second = run_generate(GenerateRequest(config, catalog, str(tmp_path), limit=6, progress=False))
    assert second["items_skipped_done"] == 2  # finished items are not recomputed
    assert second["items_processed"] == 4  # the two forgotten + two new ones
    table6 = read_catalog(catalog, limit=6).table
    expected = expected_outputs(table6, config, StyleBook.from_config(config))
    redone = ("sku-0002", "sku-0003", "sku-0005", "sku-0006")
    assert second["outputs_this_run"] == sum(len(expected[item]) for item in redone)
    after = _manifest(tmp_path)
    ids = [r["output_id"] for r in after]
    assert sorted(ids) == sorted(o for outputs in expected.values() for o in outputs)
    assert len(ids) == len(set(ids)) == second["outputs_expected"]
    for row in after:  # rows of untouched items are the very same records
        if row["item_id"] not in redone:
            assert row["run_id"] == before[row["output_id"]]["run_id"]
    assert not (tmp_path / "manifest" / "_staging").exists()

    third = run_generate(
        GenerateRequest(config, catalog, str(tmp_path), limit=6, overwrite=True, progress=False)
    )
    assert third["items_skipped_done"] == 0 and third["items_processed"] == 6
    assert len(_manifest(tmp_path)) == len(ids)


def test_killed_model_actor_loses_nothing(ray_local, tmp_path):
    """SIGKILL a model actor's process mid-job: Ray restarts it and retries; every output recorded once."""
    import os
    import signal

    import ray

    catalog = sample_copies(tmp_path / "catalog", copies=3)  # 36 items at half scale
    config = _config(
        **{
            "output.aspect_ratios": ["1:1"],
            "segment.resources.batch_size": 2,
            "caption.resources.batch_size": 2,
            "inpaint.resources.batch_size": 4,
            "composite.resources.batch_size": 4,
            "ray.block_rows": 4,  # many small blocks and parts: progress (and the kill) comes mid-job
            "output.manifest_part_rows": 4,
        }
    )
    out = tmp_path / "out"
    killed: dict[str, int] = {}
    done = threading.Event()

    def kill_a_model_actor() -> None:
        """Once the first outputs are written: SIGKILL a live pool worker, the inpainter's when alive (the
        last model stage, so the one with work still queued). Polled, not tied to the progress line."""
        while not done.wait(0.1):
            written = len(list((out / "images").rglob("*.png"))) if (out / "images").exists() else 0
            if not written:
                continue
            live = [
                (actor_id, info)
                for actor_id, info in ray._private.state.actors().items()
                # every actor in the plan is a model stage's pool worker (cheap stages are tasks)
                if "MapWorker" in info.get("ActorClassName", "")
                and info.get("State") == "ALIVE"
                and info.get("Pid")
            ]
            live.sort(key=lambda kv: "InpaintPool" not in kv[1]["ActorClassName"])
            if live:
                os.kill(int(live[0][1]["Pid"]), signal.SIGKILL)
                killed.update(actor=live[0][0], written=written)
                return

    killer = threading.Thread(target=kill_a_model_actor, daemon=True)
    killer.start()
    try:
        summary = run_generate(GenerateRequest(config, str(catalog), str(out), progress=False))
    finally:
        done.set()
        killer.join(timeout=30)
    assert killed, "no model actor was found to kill"
    assert killed["written"] < summary["outputs_expected"]  # killed mid-job
    manifest = _manifest(out)
    ids = [r["output_id"] for r in manifest]
    assert len(ids) == len(set(ids)) == summary["outputs_expected"]
    assert all(r["status"] in ("ok", "review") for r in manifest), {r["error"] for r in manifest}


@pytest.mark.parametrize("fmt", ["csv", "folder"])
def test_other_catalog_formats(ray_local, tmp_path, fmt):
    config = _config(**{"output.aspect_ratios": ["1:1"], "styles.default": ["botanical"]})
    source = str(SAMPLE_CATALOG / "catalog.csv") if fmt == "csv" else str(SAMPLE_CATALOG / "images")
    summary = run_generate(GenerateRequest(config, source, str(tmp_path), limit=4, progress=False))
    manifest = _manifest(tmp_path)
    assert summary["items"] == 4 and len(manifest) == summary["outputs_expected"]
    assert all(r["status"] in ("ok", "review") for r in manifest)
    if fmt == "folder":
        assert {r["item_id"] for r in manifest} == {"sku-0001", "sku-0002", "sku-0003", "sku-0004"}
    assert read_manifest(str(tmp_path)).num_rows == len(manifest)


def test_sample_catalog_with_tiny_neural_models(ray_local, tmp_path, tiny_models):
    """The same plan with the neural backends: captioner and diffusers inpainter in their actor pools.
    That they, and not the weight-free backends, made the outputs: every caption and every background
    differs from what the weight-free captioner and studio inpainter make of the same rows."""
    from canvas_ray.pipeline import LocalPipeline

    neural = {
        "caption.model": str(tiny_models["captioner"]),
        "inpaint.model": str(tiny_models["inpainter"]),
        "inpaint.steps": 2,
        "output.aspect_ratios": ["1:1", "9:16"],
        "styles.default": ["beach summer"],
    }
    config = load_config(REPO / "configs" / "tiny.yaml", neural)
    assert config.caption.backend == "hf" and config.inpaint.backend == "diffusers"
    summary = run_generate(
        GenerateRequest(config, str(SAMPLE_CATALOG / "catalog.jsonl"), str(tmp_path), limit=4, progress=False)
    )
    rows = _manifest(tmp_path)
    assert len(rows) == summary["outputs_expected"] == 4 * 2
    assert all(r["status"] in ("ok", "review") for r in rows), [r["error"] for r in rows]
    assert all(r["caption"].startswith("Product:") and "Background:" in r["caption"] for r in rows)
    assert all(r["inpaint_s"] > 0 for r in rows)
    _check_outputs(tmp_path, rows)
    # the weight-free backends on the same rows, in this process
    weightfree = load_config(
        REPO / "configs" / "tiny.yaml", {**neural, "caption.backend": "metadata", "inpaint.backend": "studio"}
    )
    items = read_catalog(str(SAMPLE_CATALOG / "catalog.jsonl"), limit=4).table.to_pylist()
    reference = {r.output_id: r for r in LocalPipeline(weightfree).generate(items)}
    assert set(reference) == {r["output_id"] for r in rows}
    for row in rows:
        other = reference[row["output_id"]]
        assert row["caption"] != other.caption, row["caption"]
        image = np.asarray(Image.open(tmp_path / row["output_uri"]).convert("RGB")).astype(int)
        assert image.shape == other.image.shape
        assert np.abs(image - other.image.astype(int)).mean() > 3, row["output_id"]  # not a studio backdrop
