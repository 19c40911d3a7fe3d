"""`canvas-ray evaluate`: exact metrics on a synthetic run, FID/KID, the report in headless chromium, CLI."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from canvas_ray.cli import main
from canvas_ray.io.manifest import Manifest, read_manifest
from canvas_ray.io.outputs import MANIFEST_SCHEMA, OutputLayout
from canvas_ray.quality.evaluate import (
    PLOTS,
    EvaluateRequest,
    EvaluationError,
    compute_metrics,
    evaluate_run,
    frechet_distance,
    kernel_inception_distance,
    reference_metrics,
    relative_prefix,
    render_report,
    trace_sqrt_product,
)
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(
    (CHROMEDRIVER is None or shutil.which(CHROMIUM) is None) and not os.environ.get("CI"),
    reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
)

# output_id: item, style, category, status, preserved, expansion, attempts, quality, seam
SYNTHETIC = [
    ("o1", "a", "studio white", "shoes", "ok", True, 0.01, 1, 0.9, 0.1),
    ("o2", "a", "beach summer", "shoes", "ok", True, 0.03, 1, 0.6, 0.3),
    ("o3", "b", "studio white", "bags", "ok", True, 0.05, 2, 0.8, 0.2),
    ("o4", "b", "beach summer", "bags", "ok", False, 0.02, 1, 0.4, 0.5),
    ("o5", "c", "studio white", "shoes", "rejected", False, 0.31, 3, None, None),
    ("o6", "d", "beach summer", "bags", "error", False, None, None, None, None),
]
ERRORS = {
    "o5": "expansion: product grew 31.0% > 15.0% after 3 attempts",
    "o6": "decode: not an image: <script>alert(1)</script>",
}


def _png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_run(root: Path, summary: dict | None = None, rows: list[dict] | None = None) -> list[dict]:
    """A finished run's folder: real images, thumbnails, the manifest, and optionally summary.json."""
    layout = OutputLayout(str(root))
    if rows is None:
        rows = []
        for number, (
            oid,
            item,
            style,
            category,
            status,
            preserved,
            exp,
            attempts,
            quality,
            seam,
        ) in enumerate(SYNTHETIC):
            row = {field.name: None for field in MANIFEST_SCHEMA}
            row.update(
                output_id=oid,
                item_id=item,
                status=status,
                error=ERRORS.get(oid, ""),
                style=style,
                style_key=style.replace(" ", "-"),
                aspect="1:1",
                variant=0,
                category=category,
                product_preserved=preserved,
                expansion_ratio=exp,
                expansion_px=None if exp is None else int(exp * 1000),
                attempts=attempts,
                candidates=None if attempts is None else 2,
                quality_score=quality,
                seam_energy=seam,
                color_harmony=None if quality is None else 0.5,
                exposure=None if quality is None else 0.8,
                inpaint_s=None if status != "ok" else 1.0 + number,
                write_s=None if status != "ok" else 0.1,
                config_fingerprint="cfg123",
                finished_at=100.0 + number,
            )
            if status == "ok":
                row["output_uri"] = layout.image_rel(item, row["style_key"], "1:1", 0)
                (root / row["output_uri"]).parent.mkdir(parents=True, exist_ok=True)
                (root / row["output_uri"]).write_bytes(_png((40 * number, 200 - 30 * number, 90)))
            if status == "rejected":
                row["thumb_uri"] = layout.thumb_rel(item, "image")
                (root / row["thumb_uri"]).parent.mkdir(parents=True, exist_ok=True)
                (root / row["thumb_uri"]).write_bytes(_png((200, 50, 50), (32, 32), "JPEG"))
            rows.append(row)
    (root / "manifest").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), root / "manifest" / "manifest.parquet")
    if summary is not None:
        (root / "summary.json").write_text(json.dumps(summary))
    return rows


def test_metrics_match_hand_computed_values(tmp_path):
    write_run(tmp_path, summary={"outputs_per_second": 2.5, "seconds": 2.4})
    result = evaluate_run(EvaluateRequest(str(tmp_path)))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert result.metrics.to_dict() == metrics
    assert metrics["outputs"] == 6 and metrics["items"] == 4
    assert metrics["status_counts"] == {"ok": 4, "rejected": 1, "error": 1}
    assert metrics["preserved"] == 3
    assert metrics["preservation_rate_ok"] == pytest.approx(3 / 4)
    assert metrics["preservation_rate_all"] == pytest.approx(3 / 6)
    assert metrics["rejection_rate"] == pytest.approx(1 / 6)
    assert metrics["error_rate"] == pytest.approx(1 / 6)
    # expansion over the generated rows (ok + rejected): 0.01 0.02 0.03 0.05 0.31
    expansion = metrics["expansion"]
    assert expansion["ratio"]["n"] == 5
    assert expansion["ratio"]["p50"] == pytest.approx(0.03)
    assert expansion["ratio"]["max"] == pytest.approx(0.31)
    assert expansion["ratio"]["mean"] == pytest.approx(0.42 / 5)
    assert expansion["above_threshold"] == 1 and expansion["share_above_threshold"] == pytest.approx(0.2)
    assert expansion["attempts"] == {"1": 3, "2": 1, "3": 1}
    # scores over ok rows; the CLIP score was never configured
    quality = metrics["scores"]["quality_score"]
    assert (
        quality["n"] == 4 and quality["mean"] == pytest.approx(0.675) and quality["p50"] == pytest.approx(0.7)
    )
    assert metrics["scores"]["clip_score"] == {
        "n": 0,
        "mean": None,
        "min": None,
        "p10": None,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
    }
    styles = {g["name"]: g for g in metrics["by_style"]}
    assert {name: (g["n"], g["ok"]) for name, g in styles.items()} == {
        "studio white": (3, 2),
        "beach summer": (3, 2),
    }
    white, beach = styles["studio white"], styles["beach summer"]
    assert white["ok_rate"] == pytest.approx(2 / 3) and white["preserved_rate"] == pytest.approx(1.0)
    assert white["mean_quality"] == pytest.approx(0.85) and white["mean_seam"] == pytest.approx(0.15)
    assert white["mean_expansion"] == pytest.approx(0.37 / 3)
    assert beach["preserved_rate"] == pytest.approx(0.5) and beach["mean_quality"] == pytest.approx(0.5)
    assert beach["mean_expansion"] == pytest.approx(0.025)
    categories = {g["name"]: g["n"] for g in metrics["by_category"]}
    assert categories == {"bags": 3, "shoes": 3}
    # throughput from summary.json; stage means over ok rows (inpaint 1, 2, 3, 4 s)
    throughput = metrics["throughput"]
    assert throughput["source"] == "summary.json" and throughput["outputs_per_second"] == 2.5
    assert throughput["stage_mean_s"]["inpaint"] == pytest.approx(2.5)
    assert throughput["stage_mean_s"]["segment"] is None
    reasons = {(r["status"], r["stage"]): r for r in metrics["top_reasons"]}
    assert set(reasons) == {("rejected", "expansion"), ("error", "decode")}
    assert reasons["rejected", "expansion"]["reason"] == "expansion: product grew #% > #% after # attempts"
    assert metrics["reference"]["fid"] is None and "not configured" in metrics["reference"]["reason"]
    assert metrics["config_fingerprints"] == ["cfg123"]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(
        [*PLOTS, "metrics.json", "report.html"]
    )
    for name in PLOTS:
        assert Image.open(tmp_path / "eval" / name).size[0] > 300


def test_throughput_from_finished_at_and_old_manifests(tmp_path):
    rows = write_run(tmp_path)
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    throughput = compute_metrics(table, str(tmp_path)).throughput
    assert throughput.source == "finished_at"  # 6 outputs finished at 100..105 s: 5 more in 5 s
    assert throughput.outputs_per_second == pytest.approx(1.0)
    # a manifest from before the quality columns: all null (and a NaN) → empty figures, no crash
    old = [
        {
            **row,
            **dict.fromkeys(("expansion_ratio", "expansion_px", "attempts", "quality_score", "seam_energy")),
        }
        for row in rows
    ]
    old[0]["exposure"] = float("nan")
    table = pa.Table.from_pylist(old, schema=MANIFEST_SCHEMA)
    metrics = compute_metrics(table, str(tmp_path), expansion_threshold=0.2)
    assert metrics.expansion.ratio.n == 0 and metrics.expansion.share_above_threshold is None
    assert metrics.scores["quality_score"].mean is None and metrics.scores["exposure"].n == 3
    assert metrics.preservation_rate_ok == pytest.approx(0.75)
    page = render_report(table, metrics, "../")
    assert "No ok output has a quality score" in page and page.count('<img src="') == 4 + 1  # plots + thumb


def test_report_escapes_user_text(tmp_path):
    rows = write_run(tmp_path)
    rows[0]["item_id"] = rows[0]["style"] = '"><img src=x onerror=alert(1)>'
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    page = render_report(table, compute_metrics(table, str(tmp_path)), "../")
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&quot;&gt;&lt;img src=x" in page


def test_remote_output_through_fsspec(tmp_path):
    """A non-local output root (fsspec's memory filesystem standing in for s3://): files land there."""
    import fsspec

    write_run(tmp_path, summary={"outputs_per_second": 1.5})
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path), "/remote-run", recursive=True)
    try:
        result = evaluate_run(EvaluateRequest("memory://remote-run"))
        assert result.report_uri == "memory://remote-run/eval/report.html"
        assert result.metrics.ok == 4 and result.metrics.throughput.outputs_per_second == 1.5
        assert sorted(fs.ls("/remote-run/eval", detail=False)) == sorted(
            f"/remote-run/eval/{name}" for name in [*PLOTS, "metrics.json", "report.html"]
        )
        page = fs.cat("/remote-run/eval/report.html").decode()
        assert 'src="../images/' in page
    finally:
        fs.rm("/remote-run", recursive=True)


def test_relative_prefix(tmp_path):
    assert relative_prefix(str(tmp_path), str(tmp_path / "eval")) == "../"
    assert relative_prefix(str(tmp_path / "run"), str(tmp_path / "reports" / "r1")) == "../../run/"
    assert relative_prefix("s3://bucket/run", str(tmp_path)) == "s3://bucket/run/"


def test_fid_kid_identical_and_shifted():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 8))
    other = rng.normal(size=(300, 8))
    shifted = other + 1.0
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(features, shifted) == pytest.approx(8.0, rel=0.15)  # |Δμ|² = 8
    assert frechet_distance(features, other) < 0.5
    kid_same, _ = kernel_inception_distance(features, features, subsets=10)
    kid_other, _ = kernel_inception_distance(features, other, subsets=10)
    kid_shifted, std = kernel_inception_distance(features, shifted, subsets=20, subset_size=100)
    assert abs(kid_same) < 0.1 and abs(kid_other) < 0.1
    assert kid_shifted > 2.0 and std < kid_shifted
    # tr sqrt(A·B) of diagonal covariances, and of a singular (rank-deficient) pair
    a, b = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 0.0])
    assert trace_sqrt_product(a, b) == pytest.approx(2.0 + 2.0 + 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(features[:1], features)


def test_reference_metrics_with_tiny_clip(tmp_path):
    from canvas_ray.models.tiny import build_tiny_clip

    run = tmp_path / "run"
    write_run(run)
    clip = build_tiny_clip(tmp_path / "clip")
    reference = tmp_path / "reference"
    reference.mkdir()
    for number in range(5):
        (reference / f"ref-{number}.png").write_bytes(_png((250 - 40 * number, 30 * number, 200)))
    (reference / "broken.png").write_bytes(b"not an image")
    result = evaluate_run(
        EvaluateRequest(str(run), reference=str(reference), feature_model=str(clip), device="cpu")
    )
    ref = result.metrics.reference
    assert ref.reason is None and ref.generated_images == 4 and ref.reference_images == 5
    assert ref.fid is not None and ref.fid > 0 and ref.kid is not None
    # the outputs against themselves: the same features, so FID ≈ 0
    manifest = read_manifest(str(run))
    same = reference_metrics(manifest, str(run), str(run / "images"), str(clip), device="cpu")
    assert same.reference_images == 4 and same.fid == pytest.approx(0.0, abs=1e-4)
    assert ref.fid > 100 * same.fid
    report = (run / "eval" / "report.html").read_text()
    assert "FID" in report and "4 outputs vs 5 reference images" in report
    # a feature model that does not load is reported, not a silent omission
    failed = reference_metrics(manifest, str(run), str(reference), str(tmp_path / "nope"))
    assert failed.fid is None and failed.reason is not None and failed.reason.startswith("failed:")


@needs_chromium
def test_report_renders_in_chromium(tmp_path, artifacts):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    write_run(tmp_path, summary={"outputs_per_second": 2.5, "seconds": 2.4})
    result = evaluate_run(EvaluateRequest(str(tmp_path), top=2))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,2600")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(Path(result.report_uri).as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: all(img.get_property("complete") for img in d.find_elements(By.TAG_NAME, "img"))
        )
        images = driver.find_elements(By.TAG_NAME, "img")
        broken = [img.get_attribute("src") for img in images if not img.get_property("naturalWidth")]
        assert not broken
        assert len(driver.find_elements(By.CSS_SELECTOR, "#plots img")) == len(PLOTS)
        # best 2 (0.9, 0.8) and worst 2 (0.4, 0.6) ok outputs, and the rejected row's original
        assert len(driver.find_elements(By.CSS_SELECTOR, "#best img")) == 2
        worst = driver.find_elements(By.CSS_SELECTOR, "#worst figcaption")
        assert [c.text.split(" · ")[0] for c in worst] == ["quality 0.400", "quality 0.600"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#issues img")) == 1
        assert len(images) == len(PLOTS) + 4 + 1
        assert "<script>alert(1)</script>" in driver.find_element(By.ID, "issues").text
        cards = driver.find_element(By.CLASS_NAME, "cards").text
        assert "75.0%" in cards and "2.5/s" in cards
        target = artifacts / "evaluate-report.png"
        driver.save_screenshot(str(target))
        assert target.stat().st_size > 10_000
    finally:
        driver.quit()


def test_cli_evaluate(tmp_path, capsys):
    write_run(tmp_path / "run")
    out = tmp_path / "elsewhere"
    assert main(["evaluate", str(tmp_path / "run"), "--out", str(out), "--expansion-threshold", "0.04"]) == 0
    printed = capsys.readouterr().out
    assert "outputs 6 (items 4)  ok 4  rejected 1  errors 1" in printed
    assert f"report  {out}/report.html" in printed and "FID/KID: not configured" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["expansion"]["above_threshold"] == 2 and metrics["expansion"]["threshold"] == 0.04
    assert "../run/images/" in (out / "report.html").read_text()
    assert main(["evaluate", str(tmp_path / "run"), "--reference", str(tmp_path)]) == 2
    assert "go together" in capsys.readouterr().err


def test_job_entry_point_without_manifest(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", str(empty)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert f"no manifest under {empty}/manifest: run canvas-ray generate first" in done.stderr
    with pytest.raises(EvaluationError, match="run canvas-ray generate first"):
        evaluate_run(EvaluateRequest(str(tmp_path / "missing")))


def _bucketed_run(root: Path, n: int = 1200) -> Manifest:
    """A manifest of ``n`` outputs over several buckets: compacted buckets, some rows still pending, ties in
    quality and in reason counts, NaN and null figures, several styles, categories and fingerprints."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        status = ("ok", "ok", "ok", "rejected", "error", "review")[i % 6]
        row = {field.name: None for field in MANIFEST_SCHEMA}
        row.update(
            output_id=f"o{i:05d}",
            item_id=f"item{(i * 7919) % (n // 3):05d}",
            status=status,
            error={"rejected": f"expansion: grew {i % 40}% > 15%", "error": "decode: bad 7 bytes"}.get(
                status, ""
            ),
            style=("studio", "beach", None)[i % 3],
            category=("shoes", "bags", "", "hats")[i % 4],
            aspect="1:1",
            product_preserved=bool(i % 5),
            expansion_ratio=float(rng.random() * 0.4) if status in ("ok", "rejected") else None,
            expansion_px=int(rng.integers(0, 500)),
            attempts=int(rng.integers(1, 4)),
            quality_score=float(rng.choice([0.25, 0.5, rng.random()])) if status == "ok" else None,
            seam_energy=float(rng.random()),
            exposure=float("nan") if i % 11 == 0 else float(rng.random()),
            mask_confidence=float(rng.random()),
            inpaint_s=float(rng.random()),
            config_fingerprint=f"cfg{i % 2}",
            finished_at=1000.0 + i * 0.25,
            output_uri=f"images/{i}.png" if status in ("ok", "review") else "",
            thumb_uri=f"thumbs/{i}.jpg",
        )
        rows.append(row)
    manifest = Manifest(str(root))
    manifest.ensure(n, rows_per_bucket=n // 4)
    staging = root / "manifest" / "_staging"
    for start in range(0, n - 100, 150):
        (staging / "r1").mkdir(parents=True, exist_ok=True)
        chunk = rows[start : min(start + 150, n - 100)]
        pq.write_table(
            pa.Table.from_pylist(chunk, schema=MANIFEST_SCHEMA), staging / "r1" / f"{start}.parquet"
        )
    manifest.compact("r1")
    pending = rows[n - 100 :] + [
        {**r, "status": "ok", "error": "", "quality_score": 0.99, "finished_at": 9e3} for r in rows[:30]
    ]
    (staging / "r2").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(pending, schema=MANIFEST_SCHEMA), staging / "r2" / "p.parquet")
    return manifest


def test_evaluation_streams_in_bounded_batches(tmp_path, monkeypatch):
    """Evaluation streams the manifest in batches of at most BATCH_ROWS rows (so memory does not grow with
    rows), and gives what it gives for the same rows in memory: metrics, plots and report, to the byte."""
    from canvas_ray.quality.evaluate import render_plots
    from canvas_ray.quality.evaluation import stream

    manifest = _bucketed_run(tmp_path)
    table = read_manifest(str(tmp_path))  # newest row per output, pending rows included
    assert manifest.buckets() == 4 and manifest.pending_files() and table.num_rows == 1200
    sizes: list[int] = []
    scan = Manifest.scan

    def counted(self, columns, batch_rows):
        for bucket, part in scan(self, columns, batch_rows):
            sizes.append(part.num_rows)
            yield bucket, part

    monkeypatch.setattr(Manifest, "scan", counted)
    monkeypatch.setattr(stream, "BATCH_ROWS", 64)
    streamed = compute_metrics(manifest, str(tmp_path), expansion_threshold=0.2)
    assert len(sizes) > 1200 // 64 and max(sizes) <= 64 and sum(sizes) == 1200
    in_memory = compute_metrics(table, str(tmp_path), expansion_threshold=0.2)
    expected = in_memory.to_dict()
    assert streamed.to_dict() | {"evaluated_at": 0} == expected | {"evaluated_at": 0}
    # the in-memory table in one batch gives the same figures (sums are correctly rounded: no order effect)
    monkeypatch.setattr(stream, "BATCH_ROWS", 1_000_000)
    assert compute_metrics(table, str(tmp_path), expansion_threshold=0.2).to_dict() | {
        "evaluated_at": 0
    } == expected | {"evaluated_at": 0}
    # known values: counts, items, percentiles of the rows
    statuses = table.column("status").to_pylist()
    assert streamed.items == len(set(table.column("item_id").to_pylist())) == 400
    assert streamed.status_counts == {"ok": 615, "rejected": 195, "error": 195, "review": 195}
    assert [statuses.count(s) for s in ("ok", "rejected", "error", "review")] == [615, 195, 195, 195]
    assert list(streamed.status_counts) == list(in_memory.status_counts)  # ties: first seen, as before
    assert [g.name for g in streamed.by_category] == [g.name for g in in_memory.by_category]
    quality = [q for q, s in zip(table["quality_score"].to_pylist(), statuses, strict=True) if s == "ok"]
    assert streamed.scores["quality_score"].p50 == pytest.approx(float(np.percentile(quality, 50)))
    assert streamed.scores["quality_score"].mean == pytest.approx(float(np.mean(quality)), rel=1e-12)
    monkeypatch.setattr(stream, "BATCH_ROWS", 64)
    sizes.clear()
    assert render_plots(manifest, streamed) == render_plots(table, in_memory)
    assert render_report(manifest, streamed, "../", top=5) == render_report(table, in_memory, "../", top=5)
    assert sizes and max(sizes) <= 64


def test_streamed_sums_ignore_order_and_chunking():
    from canvas_ray.quality.evaluation.stream import Figure, Sum

    values = np.random.default_rng(3).normal(size=5000) * 1e3
    whole, pieces = Sum(), Sum()
    whole.add(values)
    for part in np.array_split(values[::-1], 37):
        pieces.add(part)
    assert whole.mean() == pieces.mean() == math.fsum(values) / len(values)
    sampled = Figure(exact=1000)
    sampled.add(values)
    assert sampled.n == 5000 and len(sampled.reservoir.sample()) == 1000  # bounded, percentiles sampled
    assert sampled.low == values.min() and sampled.high == values.max()


def test_evaluate_a_real_generate(tmp_path):
    """The same stage classes as the batch job, in one process (no Ray), on one sample item."""
    from canvas_ray.config import load_config
    from canvas_ray.io.catalog import read_catalog
    from canvas_ray.io.manifest import compact_manifest
    from canvas_ray.io.outputs import WriteOutputs
    from canvas_ray.pipeline import LocalPipeline, items_batch

    config = load_config(REPO / "configs" / "weightfree.yaml")
    items = read_catalog(str(REPO / "examples" / "catalog" / "catalog.jsonl"), limit=1).table.to_pylist()
    WriteOutputs(str(tmp_path), "run-1", config.fingerprint())(
        LocalPipeline(config).run_batch(items_batch(items))
    )
    manifest = compact_manifest(str(tmp_path))
    metrics = evaluate_run(EvaluateRequest(str(tmp_path), top=3)).metrics
    statuses = manifest.column("status").to_pylist()
    assert metrics.outputs == len(statuses) > 0 and metrics.ok == statuses.count("ok") > 0
    kept = manifest.column("product_preserved").to_pylist()
    # `preserved` counts the ok outputs whose product was preserved (preservation_rate_ok = preserved / ok)
    assert metrics.preserved == sum(1 for s, p in zip(statuses, kept, strict=True) if s == "ok" and p)
    assert metrics.throughput.stage_mean_s["inpaint"] is not None
    page = (tmp_path / "eval" / "report.html").read_text()
    shown = [uri for uri in manifest.column("output_uri").to_pylist() if f"../{uri}" in page]
    assert len(shown) == min(6, metrics.scores["quality_score"].n)


def test_evaluate_the_shared_batch_run(sample_run, tmp_path):
    """Evaluation of a finished batch run (the bucketed manifest Ray Data wrote), read only: the report
    goes elsewhere."""
    import pyarrow.dataset as pads

    root = sample_run["root"]
    manifest = pads.dataset(root / "manifest", format="parquet", partitioning="hive").to_table()
    metrics = evaluate_run(EvaluateRequest(str(root), out=str(tmp_path / "eval"), top=3)).metrics
    statuses = manifest.column("status").to_pylist()
    assert metrics.outputs == len(statuses) == sample_run["summary"]["outputs_expected"]
    assert metrics.ok == statuses.count("ok") == sample_run["summary"]["ok"] > 0
    kept = manifest.column("product_preserved").to_pylist()
    # `preserved` counts the ok outputs whose product was preserved (preservation_rate_ok = preserved / ok)
    assert metrics.preserved == sum(1 for s, p in zip(statuses, kept, strict=True) if s == "ok" and p)
    assert (tmp_path / "eval" / "report.html").is_file() and not (root / "eval").exists()
