"""Curation by engagement (Wilson lower bound), eligibility, per-category top share and de-duplication.

Expected picks are derived by hand from the table below (see the comments next to each row).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from canvas_ray.cli import main
from canvas_ray.train.curate import dhash, hamming, wilson_lower_bound


def pattern(seed: int, size: int = 64) -> np.ndarray:
    """A blocky random picture: distinct seeds give unrelated dHashes."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(30, 200, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(blocks).resize((size, size), Image.Resampling.NEAREST))


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_wilson_lower_bound_known_values() -> None:
    assert wilson_lower_bound(0, 0) == 0.0
    assert wilson_lower_bound(0, 100) == 0.0
    assert wilson_lower_bound(50, 100) == pytest.approx(0.4038, abs=1e-4)  # textbook value at 95 %
    # a small sample with a higher raw rate ranks below a large one with a lower raw rate
    assert wilson_lower_bound(9, 100) < wilson_lower_bound(800, 10_000) < 0.08
    assert wilson_lower_bound(500, 100) == wilson_lower_bound(100, 100)  # capped at impressions


def test_dhash_sees_near_duplicates_only() -> None:
    base = pattern(1)
    brighter = np.clip(base.astype(int) + 20, 0, 255).astype(np.uint8)
    resized = np.asarray(Image.fromarray(brighter).resize((80, 80), Image.Resampling.BILINEAR))
    assert hamming(dhash(base), dhash(resized)) <= 6
    assert min(hamming(dhash(pattern(1)), dhash(pattern(s))) for s in range(2, 12)) > 6


def test_curate_picks_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "catalog" / "images"
    images.mkdir(parents=True)
    files = {f"p{seed}.png": png(pattern(seed)) for seed in range(1, 9)}
    files["p1-copy.png"] = files["p1.png"]  # exact duplicate bytes
    near = np.clip(pattern(5).astype(int) + 20, 0, 255).astype(np.uint8)
    files["p5-near.png"] = png(np.asarray(Image.fromarray(near).resize((80, 80), Image.Resampling.BILINEAR)))
    files["broken.png"] = b"\x89PNG\r\n\x1a\n not really a png"
    for name, data in files.items():
        (images / name).write_bytes(data)

    def row(item_id: str, category: str, image: str, impressions: int | None, saves: int, clicks: int):
        return {
            "item_id": item_id,
            "image_uri": f"images/{image}",
            "title": item_id,
            "category": category,
            "impressions": impressions,
            "saves": saves,
            "clicks": clicks,
        }

    rows = [
        # shoes: eligible and unique = high, tie-a, tie-b, low → quota ceil(0.5 * 4) = 2
        row("shoe-high", "shoes", "p1.png", 1000, 150, 150),  # rank 1 → selected
        row("shoe-tie-b", "shoes", "p2.png", 1000, 100, 100),  # same rate as tie-a, loses on item_id
        row("shoe-tie-a", "shoes", "p3.png", 1000, 120, 80),  # rank 2 → selected
        row("shoe-low", "shoes", "p4.png", 1000, 10, 0),  # rank 4 → not_top
        row("shoe-copy", "shoes", "p1-copy.png", 1000, 20, 0),  # same bytes as shoe-high → duplicate
        row("shoe-few", "shoes", "p6.png", 50, 40, 10),  # 50 impressions < 100 → ineligible
        row("shoe-zero", "shoes", "p7.png", 0, 0, 0),  # zero impressions → ineligible
        row("shoe-none", "shoes", "p7.png", None, 0, 0),  # no counts → ineligible
        # bags: near duplicate pair, the higher-ranked (bag-near, 0.12) is kept, bag-orig (0.10) dropped
        row("bag-orig", "bags", "p5.png", 5000, 300, 200),
        row("bag-near", "bags", "p5-near.png", 5000, 300, 300),  # rank 1 → selected
        row("bag-big", "bags", "p8.png", 10_000, 500, 300),  # 0.08 raw, LB 0.0749 → rank 2 → selected
        row(
            "bag-small", "bags", "p6.png", 100, 5, 4
        ),  # p6 is also shoe-few's, never hashed (ineligible)  # 0.09 raw but LB 0.048 → rank 3 → not_top
        row("bag-broken", "bags", "broken.png", 5000, 2000, 2000),  # corrupt → excluded with reason
        row("bag-missing", "bags", "nope.png", 5000, 2000, 2000),  # missing file → excluded
    ]
    catalog = tmp_path / "catalog" / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curated"

    code = main(["curate", "--catalog", str(catalog), "--output", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["selected"] == 4

    report = json.loads((out / "report.json").read_text())
    assert sorted(report["selected"]) == ["bag-big", "bag-near", "shoe-high", "shoe-tie-a"]
    decisions = {d["item_id"]: d for d in map(json.loads, (out / "decisions.jsonl").read_text().splitlines())}
    expected = {
        "shoe-high": "selected",
        "shoe-tie-a": "selected",
        "shoe-tie-b": "not_top",
        "shoe-low": "not_top",
        "shoe-copy": "duplicate",
        "shoe-few": "ineligible",
        "shoe-zero": "ineligible",
        "shoe-none": "ineligible",
        "bag-orig": "duplicate",
        "bag-near": "selected",
        "bag-big": "selected",
        "bag-small": "not_top",
        "bag-broken": "excluded",
        "bag-missing": "excluded",
    }
    assert {k: v["decision"] for k, v in decisions.items()} == expected
    assert decisions["shoe-copy"]["reason"] == "exact duplicate of shoe-high"
    assert decisions["bag-orig"]["reason"].startswith("near duplicate of bag-near")
    assert "impressions 50 < min_impressions 100" in decisions["shoe-few"]["reason"]
    assert decisions["bag-broken"]["reason"].startswith("image:")
    assert (
        "not found" in decisions["bag-missing"]["reason"]
        or "No such file" in decisions["bag-missing"]["reason"]
    )
    assert report["counts"] == {
        "rows": 14,
        "selected": 4,
        "not_top": 3,
        "duplicate": 2,
        "ineligible": 3,
        "excluded": 2,
    }
    assert report["categories"]["shoes"] == {"rows": 8, "eligible": 5, "duplicates": 1, "selected": 2}
    assert report["thresholds"]["min_impressions"] == 100

    table = pq.read_table(out / "curated.parquet")
    assert table.column("item_id").to_pylist() == ["bag-near", "bag-big", "shoe-high", "shoe-tie-a"]
    assert table.column("rank").to_pylist() == [1, 2, 1, 2]
    jsonl = [json.loads(line) for line in (out / "curated.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in jsonl] == table.column("item_id").to_pylist()
    assert Path(jsonl[0]["image_uri"]).is_file()  # absolute: the curated catalog can be read anywhere
    markdown = (out / "report.md").read_text()
    assert "| shoes | 8 | 5 | 1 | 2 |" in markdown and "bag-broken" in markdown

    # min impressions 2000: shoes (1000) and bag-small (100) drop out; bags left bag-near, bag-orig (its
    # near duplicate) and bag-big → 2 unique, quota ceil(0.5 * 2) = 1 → bag-near
    strict = tmp_path / "strict"
    assert (
        main(["curate", "--catalog", str(catalog), "--output", str(strict), "--min-impressions", "2000"]) == 0
    )
    assert sorted(json.loads((strict / "report.json").read_text())["selected"]) == ["bag-near"]


def test_curate_sample_catalog(tmp_path: Path) -> None:
    from canvas_ray.train.curate import CurateOptions, curate

    report = curate(
        str(Path(__file__).resolve().parents[2] / "examples" / "catalog" / "catalog.csv"), tmp_path
    )
    assert report["counts"]["rows"] == 12
    assert report["counts"]["selected"] >= 1
    with pytest.raises(ValueError):
        CurateOptions(top_share=0)
