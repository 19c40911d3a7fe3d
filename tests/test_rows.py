"""The row types at the bottom: one typed OutputRecord per finished row, and what derives from it."""

from __future__ import annotations

import numpy as np
import pytest

from canvas_ray.io.images import decode_image, delivery_quality, encode_image
from canvas_ray.io.outputs import WriteOutputs, manifest_table
from canvas_ray.pipeline import GeneratedImage
from canvas_ray.records import OutputRecord
from canvas_ray.rows import DELIVERED, object_column
from canvas_ray.schema import MANIFEST_SCHEMA, Status
from serve.responses import image_out, output_error


def _finished() -> dict[str, np.ndarray]:
    """Three finished rows: ok, review (delivered) and a quality rejection."""
    image = (np.arange(16 * 20 * 3) % 251).astype(np.uint8).reshape(16, 20, 3)
    return {
        "output_id": np.array(["a__1x1__v0", "a__1x1__v1", "b__1x1__v0"], dtype=object),
        "item_id": np.array(["a", "a", "b"], dtype=object),
        "status": np.array(["ok", "review", "rejected"], dtype=object),
        "error": np.array(
            ["", "segment: mask confidence 0.40 < 0.60", "quality: the product grew"], dtype=object
        ),
        "style": np.array(["studio white"] * 3, dtype=object),
        "style_key": np.array(["studio-white"] * 3, dtype=object),
        "aspect": np.array(["1:1"] * 3, dtype=object),
        "variant": np.array([0, 1, 0]),
        "seed": np.array([11, 12, 13]),
        "prompt": np.array(["a mug on white"] * 3, dtype=object),
        "caption": np.array(["a mug", "a mug", None], dtype=object),
        "result": object_column([image, image, image]),
        "product_preserved": np.array([True, True, True]),
        "max_product_diff": np.array([0, 0, 0]),
        "mask_confidence": np.array([0.93, 0.41, np.nan]),
        "expansion_ratio": np.array([0.01, np.nan, 0.3]),
        "expansion_px": np.array([3, -1, 90]),
        "attempts": np.array([1, 1, 2]),
        "segment_s": np.array([0.5, 0.5, 0.25]),
        "inpaint_s": object_column([1.0, None, 2.0]),  # a column some rows never got (concatenated blocks)
    }


def test_delivered_is_ok_or_review_and_said_once() -> None:
    assert (Status.OK.value, Status.REVIEW.value) == DELIVERED
    from canvas_ray.io.manifest import DONE_STATUSES
    from serve import responses

    assert DONE_STATUSES is DELIVERED and responses.DELIVERED is DELIVERED


def test_record_from_a_finished_row() -> None:
    ok, review, rejected = OutputRecord.from_batch(_finished())
    assert (ok.status, ok.delivered, ok.review) == ("ok", True, False)
    assert review.delivered and review.review and review.error_stage == "segment"
    assert not rejected.delivered and rejected.image is None and rejected.error_reason == "the product grew"
    assert ok.image is not None and (ok.width, ok.height) == (20, 16)
    assert (ok.variant, ok.seed, ok.caption, rejected.caption) == (0, 11, "a mug", "")
    assert ok.quality["expansion_px"] == 3 and isinstance(ok.quality["expansion_px"], int)
    assert review.quality["expansion_px"] is None  # not measured (-1)
    assert review.quality["expansion_ratio"] is None  # not measured (NaN)
    assert ok.quality["quality_score"] is None  # a column the row never had
    assert ok.mask_confidence == pytest.approx(0.93) and rejected.mask_confidence is None
    assert ok.timings == {"segment_s": 0.5, "inpaint_s": 1.0} and review.timings == {"segment_s": 0.5}
    assert GeneratedImage is OutputRecord  # the in-process result is the record


def test_whole_batch_records_equal_row_by_row_records() -> None:
    """``from_batch`` converts each column once: the same records as ``from_row`` of each row, down to the
    types of the cells (plain ints, floats, bools, None for NaN)."""
    batch = _finished()
    batch["finished_at"] = np.array([1.5, 2.5, np.nan], np.float32)
    whole = OutputRecord.from_batch(batch)
    for index, record in enumerate(whole):
        one = OutputRecord.from_row(batch, index)
        assert [(k, type(v), v) for k, v in record.columns.items()] == [
            (k, type(v), v) for k, v in one.columns.items()
        ]
        assert record.image is one.image and record.quality == one.quality and record.timings == one.timings
        assert (record.status, record.mask_confidence, record.width) == (
            one.status,
            one.mask_confidence,
            one.width,
        )
    assert type(whole[0].columns["variant"]) is int and whole[2].columns["finished_at"] is None


def test_manifest_and_serve_items_derive_from_the_record() -> None:
    records = OutputRecord.from_batch(_finished())
    table = manifest_table(records, "run-1", "fp")
    assert table.schema == MANIFEST_SCHEMA
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "review", "rejected"]
    assert [r["product_preserved"] for r in rows] == [True, True, False]  # only delivered outputs vouch
    assert rows[2]["caption"] is None and rows[2]["error_stage"] == "quality"  # nulls stay nulls
    assert rows[1]["expansion_px"] == -1 and rows[1]["inpaint_s"] is None  # the manifest keeps the raw figure
    assert {r["run_id"] for r in rows} == {"run-1"} and rows[0]["output_uri"] == ""
    item = image_out(records[1], b"png", "image/png", None)
    assert (item.status, item.variant, item.width, item.caption) == ("review", 1, 20, "a mug")
    assert item.quality.mask_review is True and item.quality.expansion_px is None  # type: ignore[attr-defined]
    error = output_error(records[2])
    assert (error.status, error.error_stage) == ("rejected", "quality")
    assert error.error_reason == "the product grew"


def test_writer_rows_follow_the_record(tmp_path) -> None:
    batch = _finished()
    out = WriteOutputs(str(tmp_path), "run-1", "fp", image_format="webp", quality=80, write_part=False)
    rows = out.rows(batch).to_pylist()
    assert [bool(r["output_uri"]) for r in rows] == [True, True, False]
    data = (tmp_path / rows[0]["output_uri"]).read_bytes()
    # the encode rule: a plain output in WebP is written lossless whatever output.quality says
    np.testing.assert_array_equal(decode_image(data), batch["result"][0])
    assert rows[0]["write_s"] > 0 and rows[2]["write_s"] == 0


def test_the_encode_rule() -> None:
    assert delivery_quality("webp", 80) == 100 and delivery_quality("WEBP", 95) == 100
    assert delivery_quality("jpeg", 80) == 80 and delivery_quality("png", 95) == 95
    image = (np.arange(16 * 20 * 3) % 251).astype(np.uint8).reshape(16, 20, 3)
    data = encode_image(image, "webp", delivery_quality("webp", 50))
    np.testing.assert_array_equal(decode_image(data), image)
