"""The read allowlist (canvas_ray/io/uris.py) and the Fetch stage that enforces it for jobs submitted over
HTTP; the plain CLI (no allowlist) keeps reading whatever its user names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from canvas_ray.config import CanvasConfig
from canvas_ray.io.uris import origin_of, resolve_allowed
from canvas_ray.stages.decode import Fetch

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog" / "images" / "sku-0002.jpg"


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "in.jpg").write_bytes(SAMPLE.read_bytes())
    (outside / "out.jpg").write_bytes(SAMPLE.read_bytes())
    (allowed / "link.jpg").symlink_to(outside / "out.jpg")
    (allowed / "dir").symlink_to(outside)
    return allowed, outside


def test_resolve_allowed(tmp_path):
    allowed, outside = _layout(tmp_path)
    prefixes = [str(allowed) + "/"]
    assert resolve_allowed(str(allowed / "in.jpg"), prefixes) == str((allowed / "in.jpg").resolve())
    assert resolve_allowed(f"file://{allowed}/in.jpg", prefixes) == str((allowed / "in.jpg").resolve())
    for uri in (
        str(allowed / "link.jpg"),
        str(allowed / "dir" / "out.jpg"),
        str(outside / "out.jpg"),
        f"{allowed}/../outside/out.jpg",
        f"{allowed}/%2e%2e/outside/out.jpg",
        f"{allowed}/in.jpg::http://127.0.0.1:1/",
        f"{allowed}/in.jpg\n",
        "in.jpg",
        str(allowed),
        "http://127.0.0.1:1/in.jpg",
    ):
        assert resolve_allowed(uri, prefixes) is None, uri
    assert resolve_allowed("S3://bucket/a.png", ["s3://bucket/"]) == "S3://bucket/a.png"
    assert resolve_allowed("s3://bucket-evil/a.png", ["s3://bucket/"]) is None


def test_origin_of():
    assert origin_of("https://Hooks.Example.com/x") == "https://hooks.example.com:443"
    assert origin_of("http://[::1]:8000/") == "http://[::1]:8000"
    for url in ("http://h:99999/", "http://h/a\nb", "ftp://h/", "http://u@h/", " http://h/", "h:80"):
        assert origin_of(url) is None, url


def test_fetch_refuses_rows_outside_the_allowlist_and_the_cli_reads_anything(tmp_path):
    allowed, outside = _layout(tmp_path)
    uris = [str(allowed / "in.jpg"), str(allowed / "link.jpg"), str(outside / "out.jpg")]
    batch = {"item_id": np.array(["a", "b", "c"], dtype=object), "image_uri": np.array(uris, dtype=object)}
    config = CanvasConfig.model_validate({"limits": {"allowed_read_prefixes": [str(allowed) + "/"]}})
    fetched = Fetch(config)({k: v.copy() for k, v in batch.items()})
    assert list(fetched["status"]) == ["ok", "error", "error"]
    assert all("not under an allowed prefix" in str(e) for e in fetched["error"][1:])
    assert len(fetched["image_bytes"][0]) == SAMPLE.stat().st_size
    plain = Fetch(CanvasConfig())({k: v.copy() for k, v in batch.items()})  # the CLI: no allowlist
    assert list(plain["status"]) == ["ok", "ok", "ok"]
