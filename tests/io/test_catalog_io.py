"""Catalog reading: JSONL, CSV, Parquet, image folders; validation into error rows; limits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from canvas_ray.io.catalog import read_catalog

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "catalog"


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(path)


def test_sample_jsonl_and_csv_agree():
    jsonl = read_catalog(str(SAMPLE / "catalog.jsonl"))
    csv = read_catalog(str(SAMPLE / "catalog.csv"))
    expected_ids = [
        json.loads(line)["item_id"]
        for line in (SAMPLE / "catalog.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert jsonl.num_rows == len(expected_ids) == 12
    assert jsonl.table.column("item_id").to_pylist() == expected_ids
    assert csv.table.column("item_id").to_pylist() == expected_ids
    assert jsonl.table.column("image_uri").to_pylist() == csv.table.column("image_uri").to_pylist()
    for uri in jsonl.table.column("image_uri").to_pylist():
        assert os.path.isabs(uri)
        assert Path(uri).is_file()
        assert Path(uri).parent == SAMPLE / "images"
    assert set(jsonl.table.column("status").to_pylist()) == {"ok"}
    assert set(csv.table.column("status").to_pylist()) == {"ok"}
    assert jsonl.problems == [] and csv.problems == []
    assert jsonl.table.column("title").to_pylist() == csv.table.column("title").to_pylist()
    for column in ("impressions", "saves", "clicks"):
        assert jsonl.table.column(column).to_pylist() == csv.table.column(column).to_pylist()
        assert jsonl.table.schema.field(column).type == pa.int64()
    rows = {r["item_id"]: r for r in jsonl.table.to_pylist()}
    assert rows["sku-0009"]["impressions"] == 0


def test_parquet_catalog(tmp_path):
    _png(tmp_path / "pics" / "a.png")
    _png(tmp_path / "pics" / "b.png")
    absolute = str(tmp_path / "pics" / "b.png")
    table = pa.table(
        {
            "item_id": ["a", "b"],
            "image_uri": ["pics/a.png", absolute],
            "title": ["Alpha", "Beta"],
            "impressions": [10, None],
            "extra_column": [1.5, 2.5],
        }
    )
    pq.write_table(table, tmp_path / "cat.parquet")
    catalog = read_catalog(str(tmp_path / "cat.parquet"))
    rows = catalog.table.to_pylist()
    assert [r["item_id"] for r in rows] == ["a", "b"]
    assert rows[0]["image_uri"] == str(tmp_path / "pics" / "a.png")
    assert rows[1]["image_uri"] == absolute
    assert rows[0]["title"] == "Alpha" and rows[0]["impressions"] == 10 and rows[1]["impressions"] is None
    assert not rows[0]["description"]  # absent text: empty (null or "")
    assert all(r["status"] == "ok" for r in rows)
    assert "extra_column" not in catalog.table.column_names


def test_folder_of_images(tmp_path):
    _png(tmp_path / "shop" / "red-mug.png")
    _png(tmp_path / "shop" / "blue_cup.png")
    _png(tmp_path / "shop" / "sub" / "lamp.png")
    (tmp_path / "shop" / "notes.txt").write_text("not an image")
    catalog = read_catalog(str(tmp_path / "shop"))
    rows = {r["item_id"]: r for r in catalog.table.to_pylist()}
    assert set(rows) == {"red-mug", "blue_cup", "sub__lamp"}
    assert rows["red-mug"]["image_uri"] == str(tmp_path / "shop" / "red-mug.png")
    assert rows["sub__lamp"]["image_uri"] == str(tmp_path / "shop" / "sub" / "lamp.png")
    assert all(r["status"] == "ok" for r in rows.values())


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        read_catalog(str(tmp_path / "empty"))


def test_duplicate_item_id_becomes_error_row(tmp_path):
    path = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"item_id": "a", "image_uri": "a.png"},
            {"item_id": "b", "image_uri": "b.png"},
            {"item_id": "a", "image_uri": "a2.png"},
            {"item_id": "a", "image_uri": "a3.png"},
        ],
    )
    catalog = read_catalog(path)
    rows = catalog.table.to_pylist()
    assert len(rows) == 4  # nothing dropped
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    for row in rows[2:]:
        assert "duplicate" in row["error"]
        assert "'a'" in row["error"]
    ids = [r["item_id"] for r in rows]
    assert len(set(ids)) == 4  # distinct ids
    assert ids[0] == "a" and ids[2].startswith("a") and ids[2] != "a"
    assert rows[2]["image_uri"] == str(tmp_path / "a2.png")
    assert len(catalog.problems) == 2


def test_missing_item_id_and_image_uri(tmp_path):
    path = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"item_id": "", "image_uri": "x.png"},
            {"item_id": None, "image_uri": "y.png"},
            {"item_id": "ok-1", "image_uri": "z.png"},
            {"item_id": "no-image", "image_uri": ""},
            {"item_id": "null-image", "image_uri": None},
            {"image_uri": "w.png"},
        ],
    )
    catalog = read_catalog(path)
    rows = catalog.table.to_pylist()
    assert len(rows) == 6
    statuses = [r["status"] for r in rows]
    assert statuses == ["error", "error", "ok", "error", "error", "error"]
    for row in (rows[0], rows[1], rows[5]):
        assert "no item_id" in row["error"]
        assert row["item_id"]  # a placeholder id, never empty
    for row in (rows[3], rows[4]):
        assert "no image_uri" in row["error"]
        assert row["image_uri"] == ""
    ids = [r["item_id"] for r in rows]
    assert len(set(ids)) == len(ids)


def test_missing_image_uri_column(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"item_id": "a", "url": "a.png"}])
    with pytest.raises(ValueError, match="image_uri"):
        read_catalog(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "catalog.dat"
    path.write_text("item_id,image_uri\na,a.png\n")
    with pytest.raises(ValueError, match="unknown format"):
        read_catalog(str(path))
    # .txt is a Merchant Center feed's extension (tab-separated): a comma file there says what it lacks
    text = tmp_path / "catalog.txt"
    text.write_text("item_id,image_uri\na,a.png\n")
    with pytest.raises(ValueError, match=r"catalog\.txt: merchant-tsv feed has no id, image_link column"):
        read_catalog(str(text))


def test_bad_json_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"item_id": "a", "image_uri": "a.png"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_catalog(str(path))


@pytest.mark.parametrize("limit", [0, 1, 5, 12, 100])
def test_limit(limit):
    catalog = read_catalog(str(SAMPLE / "catalog.jsonl"), limit=limit)
    assert catalog.num_rows == min(limit, 12)
    ids = catalog.table.column("item_id").to_pylist()
    assert ids == [f"sku-{i:04d}" for i in range(1, min(limit, 12) + 1)]


@pytest.mark.parametrize("real_first", [True, False])
def test_renamed_duplicate_never_takes_a_real_id(tmp_path, real_first):
    rows = [{"item_id": "a", "image_uri": "a.png"}, {"item_id": "a", "image_uri": "b.png"}]
    real = {"item_id": "a#dup1", "image_uri": "c.png"}
    rows = [real, *rows] if real_first else [*rows, real]
    catalog = read_catalog(_jsonl(tmp_path / "c.jsonl", rows))
    out = catalog.table.to_pylist()
    ids = [r["item_id"] for r in out]
    assert len(set(ids)) == 3
    by_uri = {Path(r["image_uri"]).name: r for r in out}
    assert by_uri["c.png"]["item_id"] == "a#dup1" and by_uri["c.png"]["status"] == "ok"
    assert by_uri["a.png"]["status"] == "ok"
    assert by_uri["b.png"]["status"] == "error" and "duplicate" in by_uri["b.png"]["error"]


def test_product_box_column_is_carried(tmp_path):
    """`product_box` reaches the rows as text Segment parses (a list in JSON, a string in CSV)."""
    from canvas_ray.stages.segment import parse_box

    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"item_id": "a", "image_uri": "a.png", "product_box": [1, 2, 30, 40]}\n'
        '{"item_id": "c", "image_uri": "c.png"}\n'
    )
    boxes = read_catalog(str(path)).table.column("product_box").to_pylist()
    assert [parse_box(b) for b in boxes] == [(1, 2, 30, 40), None]
    path = tmp_path / "c.csv"
    path.write_text('item_id,image_uri,product_box\nb,b.png,"5,6,7,8"\nd,d.png,\n')
    boxes = read_catalog(str(path)).table.column("product_box").to_pylist()
    assert [parse_box(b) for b in boxes] == [(5, 6, 7, 8), None]
