"""Provenance in the written files, read back by independent readers: C2PA with c2pa-python's Reader, XMP
with exiftool (Debian's libimage-exiftool-perl, installed by scripts/setup.sh)."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import c2pa
import numpy as np
import pyarrow.parquet as pq
import pytest

from canvas_ray.config import ProvenanceConfig, config_from_dict
from canvas_ray.io.outputs import WriteOutputs
from canvas_ray.provenance import (
    SYNTHETIC,
    TRAINED,
    Provenance,
    ProvenanceContext,
    check_provenance,
    encode_with_provenance,
    read_provenance,
)
from canvas_ray.rows import object_column
from canvas_ray.testing import product_image, signing_certificate

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


@pytest.fixture(scope="module")
def signing(tmp_path_factory) -> ProvenanceConfig:
    key, chain = signing_certificate(tmp_path_factory.mktemp("keys"), name="provenance test signer")
    return ProvenanceConfig(key=str(key), cert=str(chain))


def exiftool(path: Path) -> dict:
    out = subprocess.run(
        ["exiftool", "-j", "-G1", "-XMP:all", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)[0]


def record(kind: str = TRAINED) -> Provenance:
    return Provenance(kind, "sku-1__studio_white__1x1__v0", "f00dfeed12345678", "ab" * 32, "sku-1.jpg", "m")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_c2pa_and_xmp_read_back_by_independent_readers(fmt: str, signing, tmp_path: Path) -> None:
    rec = record()
    data = encode_with_provenance(product_image(120, 90), fmt, 90, rec, signing)
    assert rec.c2pa == "signed" and rec.signer == "provenance test signer"
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(data)

    reader = c2pa.Reader(path)  # c2pa-python reads the file itself
    manifest = reader.get_active_manifest()
    assert reader.get_validation_state() in ("Valid", "Trusted")
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]
    edited = next(a for a in actions["actions"] if a["action"] == "c2pa.edited")
    assert edited["digitalSourceType"] == IPTC + TRAINED
    assert manifest["ingredients"][0]["relationship"] == "parentOf"
    assert manifest["ingredients"][0]["instance_id"] == "sha256:" + "ab" * 32
    ours = next(a for a in manifest["assertions"] if a["label"] == "com.canvas-ray.provenance")["data"]
    assert ours["config_fingerprint"] == "f00dfeed12345678" and ours["models"] == "m"
    assert manifest["signature_info"]["common_name"] == "provenance test signer"
    reader.close()

    tags = exiftool(path)  # exiftool knows nothing of our code
    assert tags["XMP-iptcExt:DigitalSourceType"] == IPTC + TRAINED
    assert tags["XMP-xmp:CreatorTool"].startswith("canvas-ray ")
    assert check_provenance(read_provenance(data), rec) == []


def test_stripped_tag_is_reported(signing, tmp_path: Path) -> None:
    rec = record(SYNTHETIC)
    path = tmp_path / "out.jpg"
    path.write_bytes(encode_with_provenance(product_image(), "jpeg", 90, rec, signing))
    subprocess.run(
        ["exiftool", "-q", "-overwrite_original", "-XMP-iptcExt:DigitalSourceType=", str(path)], check=True
    )
    assert "XMP-iptcExt:DigitalSourceType" not in exiftool(path)
    problems = check_provenance(read_provenance(path.read_bytes()), rec)
    assert "XMP has no IPTC DigitalSourceType" in problems
    assert any("C2PA manifest does not validate" in p and "dataHash.mismatch" in p for p in problems)


def _batch(n: int = 2, profile: str = "") -> dict:
    image = product_image(64, 64)
    return {
        "output_id": np.array([f"item{i}__s__1x1__v0" for i in range(n)], dtype=object),
        "item_id": np.array([f"item{i}" for i in range(n)], dtype=object),
        "status": np.array(["ok"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "style_key": np.array(["s"] * n, dtype=object),
        "aspect": np.array(["1:1"] * n, dtype=object),
        "variant": np.zeros(n, dtype=np.int64),
        "profile": np.array([profile] * n, dtype=object),
        "image_format": np.array(["jpeg"] * n, dtype=object),
        "image_quality": np.array([90] * n, dtype=object),
        "image_uri": np.array([f"/photos/item{i}.png" for i in range(n)], dtype=object),
        "source_sha256": np.array(["cd" * 32] * n, dtype=object),
        "result": object_column([image] * n),
    }


def test_writer_records_provenance_and_missing_key_is_an_error_row(signing, tmp_path: Path) -> None:
    config = config_from_dict({"provenance": signing.model_dump()})
    writer = WriteOutputs(str(tmp_path), "run", "fp", provenance=ProvenanceContext.from_config(config))
    table = writer.rows(_batch())
    assert table.column("status").to_pylist() == ["ok", "ok"]
    stored = Provenance.from_json(table.column("provenance")[0].as_py())
    assert stored is not None and stored.c2pa == "signed" and stored.source_sha256 == "cd" * 32
    assert stored.digital_source_type == SYNTHETIC  # the default inpainter paints no trained pixels
    found = read_provenance((tmp_path / table.column("output_uri")[0].as_py()).read_bytes())
    assert check_provenance(found, stored) == []

    env = {k: os.environ.pop(k) for k in ("CANVAS_RAY_C2PA_KEY", "CANVAS_RAY_C2PA_CERT") if k in os.environ}
    try:
        keyless = WriteOutputs(
            str(tmp_path / "keyless"),
            "run",
            "fp",
            provenance=ProvenanceContext.from_config(config_from_dict({})),
        )
        rows = keyless.rows(_batch(1))
    finally:
        os.environ.update(env)
    assert rows.column("status").to_pylist() == ["error"]
    assert "no C2PA signing key" in rows.column("error")[0].as_py()
    assert not (tmp_path / "keyless" / "images").exists()  # nothing unmarked was delivered

    unsigned = config_from_dict({"provenance": {"c2pa": "unsigned"}})
    rows = WriteOutputs(
        str(tmp_path / "u"), "run", "fp", provenance=ProvenanceContext.from_config(unsigned)
    ).rows(_batch(1))
    assert rows.column("status").to_pylist() == ["ok"]
    assert json.loads(rows.column("provenance")[0].as_py())["c2pa"] == "unsigned"  # the opt-out, recorded
    pq.write_table(rows, tmp_path / "rows.parquet")  # the column is plain manifest data


def test_profile_rule_reads_the_written_file(signing, tmp_path: Path, monkeypatch) -> None:
    """A file that loses its tag (simulated: the encoder drops XMP) is non-compliant, with the reason."""
    import canvas_ray.provenance as provenance

    config = config_from_dict({"provenance": {"c2pa": "unsigned"}})
    context = ProvenanceContext.from_config(config)
    assert context.rules["google-shopping"].iptc
    real = provenance.encode_image
    monkeypatch.setattr(provenance, "encode_image", lambda a, f, q, xmp=None: real(a, f, q))
    batch = _batch(1, "google-shopping")
    batch["compliant"] = np.array([True], dtype=object)
    batch["compliance_issues"] = np.array([""], dtype=object)
    table = WriteOutputs(str(tmp_path), "run", "fp", provenance=context).rows(batch)
    assert table.column("status").to_pylist() == ["rejected"]
    assert table.column("compliant").to_pylist() == [False]
    reason = table.column("error")[0].as_py()
    assert reason.startswith("compliance: google-shopping: provenance (Google Merchant Center")
    assert "no XMP provenance" in reason


def test_signed_bytes_differ_only_in_metadata(signing) -> None:
    from PIL import Image

    image = product_image(80, 60)
    data = encode_with_provenance(image, "png", 95, record(), signing)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), image)
