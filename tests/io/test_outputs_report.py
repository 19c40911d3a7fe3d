"""Output naming and layout, the writer stage, manifest parts and compaction, and the review pages."""

from __future__ import annotations

import io
import logging
import posixpath
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from canvas_ray.io.images import decode_image
from canvas_ray.io.manifest import Manifest, compact_manifest, latest_per_output, read_manifest
from canvas_ray.io.outputs import MANIFEST_SCHEMA, OutputLayout, WriteOutputs, safe_name, shard_of
from canvas_ray.report import render_item_pages, write_bucket_pages, write_index
from canvas_ray.rows import object_column

UNSAFE = ["../../etc/passwd", "a/b", "a\\b", "a b", "..", ".", "/abs/path", "é-ü", "a:b", "a_b/", "x" * 200]


def _row(**values) -> dict:
    row = {field.name: None for field in MANIFEST_SCHEMA}
    row.update(values)
    return row


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([_row(**r) for r in rows], schema=MANIFEST_SCHEMA)


def _write_part(root: Path, run: str, name: str, rows: list[dict]) -> Path:
    path = root / "manifest" / "_staging" / run / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(rows), path)
    return path


# --- names and layout -----------------------------------------------------------------------------------


@pytest.mark.parametrize("safe", ["sku-0001", "A.b_c-9", "item.v2"])
def test_safe_name_keeps_safe_ids(safe):
    assert safe_name(safe) == safe


@pytest.mark.parametrize("unsafe", UNSAFE)
def test_safe_name_sanitises(unsafe):
    name = safe_name(unsafe)
    assert "/" not in name and "\\" not in name
    assert ".." not in name
    assert name not in ("", ".", "..")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert len(name) <= 80 + 9


def test_safe_name_never_collides():
    candidates = UNSAFE + ["a_b", "a-b", "a_b-", "A/b", "a//b", "a/b/", "a?b", "a*b"]
    names = [safe_name(c) for c in candidates]
    assert len(set(names)) == len(set(candidates))
    assert safe_name("a/b") != safe_name("a\\b")
    assert safe_name("a/b") != safe_name("a_b")


@pytest.mark.parametrize("item_id", UNSAFE + ["sku-1"])
@pytest.mark.parametrize("style_key", ["studio-white", "../up", "a/b/c"])
def test_image_rel_stays_under_images(item_id, style_key):
    layout = OutputLayout("/out", "jpeg", shard_width=3)
    rel = layout.image_rel(item_id, style_key, "16:9", 2)
    parts = rel.split("/")
    assert parts[0] == "images" and len(parts) == 3
    assert parts[1] == shard_of(item_id, 3)
    assert ".." not in parts
    assert posixpath.normpath(rel) == rel
    assert rel.endswith("__v2.jpg")
    assert layout.uri(rel).startswith("/out/images/")
    thumb = layout.thumb_rel(item_id, "mask")
    assert thumb.startswith("thumbs/") and ".." not in thumb.split("/") and thumb.endswith("_mask.png")


# --- writer ---------------------------------------------------------------------------------------------


def _writer_batch(n_ok: int = 3) -> tuple[dict, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20 + i, 30 + i, 3), dtype=np.uint8) for i in range(n_ok)]
    ids = [f"sku-{i}" for i in range(n_ok)] + ["bad/../item"]
    batch = {
        "output_id": np.array([f"{i}__studio-white__1x1__v0" for i in ids], dtype=object),
        "item_id": np.array(ids, dtype=object),
        "status": np.array(["ok"] * n_ok + ["error"], dtype=object),
        "error": np.array([""] * n_ok + ["decode: not an image"], dtype=object),
        "style": np.array(["studio white"] * (n_ok + 1), dtype=object),
        "style_key": np.array(["studio-white"] * (n_ok + 1), dtype=object),
        "aspect": np.array(["1:1"] * (n_ok + 1), dtype=object),
        "variant": np.zeros(n_ok + 1, dtype=np.int64),
        "seed": np.arange(n_ok + 1, dtype=np.int64),
        "product_preserved": np.array([True] * n_ok + [False]),
        "max_product_diff": np.array([0] * n_ok + [-1], dtype=np.int64),
        "inpaint_s": np.full(n_ok + 1, 0.5),
        "result": object_column(images + [np.zeros((1, 1, 3), np.uint8)]),
    }
    return batch, images


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_write_outputs_images_and_part(tmp_path, fmt):
    batch, images = _writer_batch()
    writer = WriteOutputs(str(tmp_path), "run-1", "fp123", image_format=fmt, quality=100)
    out = writer(batch)
    assert list(out["status"]) == ["ok", "ok", "ok", "error"]
    assert list(out["product_preserved"]) == [True, True, True, False]
    layout = OutputLayout(str(tmp_path), fmt)
    for i, image in enumerate(images):
        path = Path(layout.uri(layout.image_rel(f"sku-{i}", "studio-white", "1:1", 0)))
        assert path.is_file()
        np.testing.assert_array_equal(decode_image(path.read_bytes()), image)  # png / lossless webp exact
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert sum(p.startswith("images/") for p in written) == 3  # nothing for the error row
    assert all(p.startswith(("images/", "manifest/_staging/run-1/")) for p in written)
    assert not any(".tmp-" in p for p in written)
    parts = list((tmp_path / "manifest" / "_staging" / "run-1").glob("*.parquet"))
    assert len(parts) == 1
    table = pq.read_table(parts[0])
    assert table.num_rows == 4
    rows = {r["item_id"]: r for r in table.to_pylist()}
    assert rows["sku-1"]["output_uri"] == layout.image_rel("sku-1", "studio-white", "1:1", 0)
    assert (rows["sku-1"]["width"], rows["sku-1"]["height"]) == (31, 21)
    assert rows["sku-1"]["config_fingerprint"] == "fp123" and rows["sku-1"]["run_id"] == "run-1"
    assert rows["sku-1"]["inpaint_s"] == 0.5 and rows["sku-2"]["seed"] == 2
    assert rows["bad/../item"]["status"] == "error"
    assert rows["bad/../item"]["error"] == "decode: not an image"
    assert rows["bad/../item"]["output_uri"] == ""


def test_write_outputs_retry_rewrites_same_part(tmp_path):
    batch, _ = _writer_batch(2)
    writer = WriteOutputs(str(tmp_path), "run-1", "fp")
    writer({k: v.copy() for k, v in batch.items()})
    writer({k: v.copy() for k, v in batch.items()})
    assert len(list((tmp_path / "manifest" / "_staging" / "run-1").glob("*.parquet"))) == 1
    assert read_manifest(str(tmp_path)).num_rows == 3


def test_write_failure_becomes_error_row(tmp_path):
    batch, _ = _writer_batch(1)
    batch["result"] = object_column([np.zeros((4, 4, 7), np.uint8), np.zeros((1, 1, 3), np.uint8)])
    out = WriteOutputs(str(tmp_path), "run-1", "fp")(batch)
    assert out["status"][0] == "error"
    assert out["error"][0].startswith("write:")


# --- manifest -------------------------------------------------------------------------------------------


def test_latest_per_output_keeps_newest():
    table = _table(
        [
            {"output_id": "o1", "item_id": "b", "status": "error", "finished_at": 300.0},
            {"output_id": "o1", "item_id": "b", "status": "ok", "finished_at": 500.0},
            {"output_id": "o1", "item_id": "b", "status": "error", "finished_at": 100.0},
            {"output_id": "o2", "item_id": "a", "status": "ok", "finished_at": 50.0},
        ]
    )
    latest = latest_per_output(table)
    rows = latest.to_pylist()
    assert len(rows) == 2
    by_id = {r["output_id"]: r for r in rows}
    assert by_id["o1"]["status"] == "ok" and by_id["o1"]["finished_at"] == 500.0
    assert by_id["o2"]["finished_at"] == 50.0
    assert [r["item_id"] for r in rows] == ["a", "b"]  # ordered by item


def test_read_manifest_and_compact(tmp_path):
    assert read_manifest(str(tmp_path)).num_rows == 0
    # the newer row lives in the part that sorts first: newest must win, not last read
    _write_part(
        tmp_path,
        "run-a",
        "p1",
        [
            {
                "output_id": "x",
                "item_id": "x",
                "status": "ok",
                "finished_at": 200.0,
                "output_uri": "images/new.png",
            },
            {"output_id": "y", "item_id": "y", "status": "ok", "finished_at": 10.0},
        ],
    )
    _write_part(
        tmp_path,
        "run-b",
        "p2",
        [
            {"output_id": "x", "item_id": "x", "status": "error", "error": "old", "finished_at": 100.0},
            {"output_id": "z", "item_id": "z", "status": "error", "error": "bad", "finished_at": 20.0},
        ],
    )
    manifest = read_manifest(str(tmp_path))
    by_id = {r["output_id"]: r for r in manifest.to_pylist()}
    assert set(by_id) == {"x", "y", "z"}
    assert by_id["x"]["status"] == "ok" and by_id["x"]["output_uri"] == "images/new.png"
    compacted = compact_manifest(str(tmp_path))
    (bucket_file,) = Manifest(str(tmp_path)).files()
    assert "/manifest/bucket=00000/part-" in bucket_file
    assert not (tmp_path / "manifest" / "_staging").exists()
    assert compacted.num_rows == 3
    on_disk = pq.read_table(bucket_file)
    assert sorted(on_disk.column("output_id").to_pylist()) == ["x", "y", "z"]
    assert read_manifest(str(tmp_path)).to_pylist() == manifest.to_pylist()
    # a later part still overrides the compacted manifest
    _write_part(
        tmp_path, "run-c", "p3", [{"output_id": "z", "item_id": "z", "status": "ok", "finished_at": 900.0}]
    )
    again = {r["output_id"]: r for r in read_manifest(str(tmp_path)).to_pylist()}
    assert again["z"]["status"] == "ok" and again["x"]["status"] == "ok"


def test_torn_part_is_skipped_with_warning(tmp_path, caplog):
    _write_part(
        tmp_path, "run-a", "good", [{"output_id": "g", "item_id": "g", "status": "ok", "finished_at": 1.0}]
    )
    torn = _write_part(
        tmp_path, "run-a", "torn", [{"output_id": "t", "item_id": "t", "status": "ok", "finished_at": 2.0}]
    )
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="canvas_ray.io.manifest"):
        manifest = read_manifest(str(tmp_path))
    assert manifest.column("output_id").to_pylist() == ["g"]
    assert any(
        "torn" in record.getMessage() and "skipping" in record.getMessage() for record in caplog.records
    )
    compacted = compact_manifest(str(tmp_path))
    assert compacted.column("output_id").to_pylist() == ["g"]


def test_part_with_fewer_columns_is_read(tmp_path):
    path = tmp_path / "_parts" / "old" / "p.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(
        pa.table({"output_id": ["o"], "item_id": ["i"], "status": ["ok"], "finished_at": [1.0]}), path
    )
    manifest = read_manifest(str(tmp_path))
    assert manifest.num_rows == 1
    assert manifest.schema.names == MANIFEST_SCHEMA.names
    assert manifest.column("prompt").to_pylist() == [None]


def test_write_staging_part_is_the_part_compaction_reads(tmp_path):
    """The one manifest-part writer: named by the hash of its output ids under _staging/<run>/, the
    same file when a retried task writes the same rows, nothing for an empty table; compaction folds it."""
    from canvas_ray.io.manifest import part_name, write_staging_part

    table = _table(
        [{"output_id": f"o{i}", "item_id": f"i{i}", "status": "ok", "finished_at": 1.0} for i in range(3)]
    )
    uri = write_staging_part(table, str(tmp_path), "run-1")
    assert uri == f"{tmp_path}/manifest/_staging/run-1/{part_name(['o2', 'o0', 'o1'])}"
    assert write_staging_part(table, str(tmp_path), "run-1") == uri  # a retry rewrites the same part
    assert write_staging_part(table.slice(0, 0), str(tmp_path), "run-1") is None
    assert [p.name for p in (tmp_path / "manifest" / "_staging" / "run-1").iterdir()] == [Path(uri).name]
    assert pq.read_table(uri).equals(table)
    compacted = compact_manifest(str(tmp_path))
    assert compacted.column("output_id").to_pylist() == ["o0", "o1", "o2"]
    assert not (tmp_path / "manifest" / "_staging").exists()


def test_scan_streams_what_read_returns(tmp_path):
    """Manifest.scan: batches of at most batch_rows rows, bucket by bucket, newest row per output, with a
    compacted bucket streamed, a crowded bucket (two files) and pending staging rows merged, a torn
    pending part skipped: the same rows as read()."""
    from canvas_ray.io.catalog import id_bucket
    from canvas_ray.io.manifest import bucket_dir

    manifest = Manifest(str(tmp_path))
    buckets = manifest.ensure(400, rows_per_bucket=100)
    rows = [
        {
            "output_id": f"o{i:03d}",
            "item_id": f"i{i // 2:03d}",
            "status": "ok",
            "quality_score": i / 400,
            "finished_at": 1.0,
        }
        for i in range(400)
    ]
    _write_part(tmp_path, "r1", "all", rows)
    manifest.compact("r1")
    # a crowded bucket (a crash between a bucket's new file and the old file's removal)
    crowded = id_bucket("i007", buckets)
    stale = [{"output_id": "o014", "item_id": "i007", "status": "error", "finished_at": 0.5}]
    pq.write_table(_table(stale), tmp_path / "manifest" / bucket_dir(crowded) / "part-old.parquet")
    # pending rows of a later run: a newer row for o001, a new output; and a torn part
    _write_part(
        tmp_path,
        "r2",
        "p",
        [
            {"output_id": "o001", "item_id": "i000", "status": "error", "finished_at": 2.0},
            {"output_id": "o999", "item_id": "i999", "status": "ok", "finished_at": 2.0},
        ],
    )
    torn = _write_part(tmp_path, "r2", "torn", [{"output_id": "t", "item_id": "t", "status": "ok"}])
    torn.write_bytes(torn.read_bytes()[:40])
    columns = ["output_id", "status", "quality_score"]
    batches = list(manifest.scan(columns, batch_rows=16))
    assert len(batches) > buckets and all(0 < t.num_rows <= 16 for _, t in batches)
    assert all(t.column_names == columns for _, t in batches)
    seen = [b for b, _ in batches]
    assert seen == sorted(seen) and set(seen) == set(range(buckets))
    for bucket, table in batches:
        ids = table.column("output_id").to_pylist()
        assert {id_bucket(f"i{int(o[1:]) // 2:03d}" if o != "o999" else "i999", buckets) for o in ids} == {
            bucket
        }
    scanned = pa.concat_tables(t for _, t in batches).sort_by("output_id")
    expected = manifest.read().select(columns).sort_by("output_id")
    assert scanned.equals(expected) and scanned.num_rows == 401
    statuses = dict(zip(scanned["output_id"].to_pylist(), scanned["status"].to_pylist(), strict=True))
    assert statuses["o001"] == "error" and statuses["o014"] == "ok" and statuses["o999"] == "ok"


# --- review pages ---------------------------------------------------------------------------------------


def _review_manifest(n_items: int) -> pa.Table:
    rows = []
    for i in range(n_items):
        item = f"item-{i:03d}"
        rows.append(
            {
                "output_id": f"{item}__s__1x1__v0",
                "item_id": item,
                "status": "ok",
                "style": "studio white",
                "aspect": "1:1",
                "variant": 0,
                "seed": i,
                "output_uri": f"images/aa/{item}.png",
                "product_preserved": True,
                "caption": f"caption of {item}",
                "prompt": "p",
                "finished_at": float(i),
            }
        )
    rows[0]["caption"] = "<script>alert('x')</script> & more"
    rows.append(
        {
            "output_id": "item-001__s__2x3__v0",
            "item_id": "item-001",
            "status": "error",
            "style": "studio white",
            "aspect": "2:3",
            "variant": 0,
            "seed": 1,
            "error": "inpaint: <b>out of memory</b>",
            "finished_at": 1.0,
        }
    )
    return _table(rows)


def test_item_pages_paginate():
    pages = render_item_pages(_review_manifest(95), "bucket=00000", items_per_page=40)
    assert len(pages) == 3
    assert [page.count('class="item"') for page in pages] == [40, 40, 15]
    for i in (0, 39, 40, 79, 80, 94):  # every item exactly once across pages
        assert sum(page.count(f'id="item-{i:03d}"') for page in pages) == 1
    assert 'id="item-040"' in pages[1]
    # pages live in review/<bucket>/: links between them are siblings, images two folders up
    assert 'href="p2.html"' in pages[0] and 'href="p3.html"' in pages[0]
    assert "href='../../index.html'" in pages[1]
    assert 'src="../../images/aa/item-040.png"' in pages[1]
    assert "page 3 of 3" in pages[2]


def test_item_pages_escape_user_text():
    (page,) = render_item_pages(_review_manifest(3), "<b>")
    assert "<script>" not in page and "<b>out of memory</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "&lt;b&gt;out of memory&lt;/b&gt;" in page


def test_bucket_pages_replace_stale_ones(tmp_path):
    assert write_bucket_pages(str(tmp_path), {}, 7, _review_manifest(95)) == 3
    assert sorted(p.name for p in (tmp_path / "review" / "b00007").iterdir()) == [
        "p1.html",
        "p2.html",
        "p3.html",
    ]
    assert write_bucket_pages(str(tmp_path), {}, 7, _review_manifest(45)) == 2
    assert sorted(p.name for p in (tmp_path / "review" / "b00007").iterdir()) == ["p1.html", "p2.html"]


def test_index_lists_errors_summary_and_buckets(tmp_path):
    table = _review_manifest(3)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    part = tmp_path / "manifest" / "_staging" / "r" / "p.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(buffer.getvalue())
    manifest = Manifest(str(tmp_path))
    manifest.compact(
        "r", review_pages=lambda bucket, rows: write_bucket_pages(str(tmp_path), {}, bucket, rows)
    )
    written = write_index(manifest, {"ok": 3, "errors": 1, "config_fingerprint": "<fp>"})
    assert sorted(written) == ["index.html", "review/errors/p1.html"]
    index = (tmp_path / "index.html").read_text()
    assert index.startswith("<!doctype html>") and "&lt;fp&gt;" in index
    assert "Errors (1)" in index and "<b>out of memory</b>" not in index
    errors = index[index.index("id='errors'") :]
    errors = errors[: errors.index("</table>")]
    assert "item-001" in errors and "inpaint: &lt;b&gt;out of memory" in errors
    assert "review/b00000/p1.html" in index and (tmp_path / "review" / "b00000" / "p1.html").is_file()
    assert "item-002" in (tmp_path / "review" / "b00000" / "p1.html").read_text()
