"""Merchant feeds in (Merchant Center TSV and RSS XML, Shopify CSV, written from the public format docs),
images over http from a real server on 127.0.0.1, bad feeds, and the three-command flow: generate from a
feed → verify → supplemental feed out."""

from __future__ import annotations

import csv
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from canvas_ray.config import LimitsConfig
from canvas_ray.io import http
from canvas_ray.io.catalog import list_catalog, read_catalog
from canvas_ray.io.feeds import FeedError
from canvas_ray.stages.decode import Fetch

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "examples" / "catalog" / "images"
SKUS = ["sku-0002", "sku-0003", "sku-0005"]


class _Images(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}
    active = 0
    peak = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        path = self.path
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            count = self.hits[path]
            type(self).active += 1
            type(self).peak = max(type(self).peak, type(self).active)
        busy = True
        try:
            if path.startswith("/img/"):
                time.sleep(0.05)  # overlapping downloads, so the per-host bound is exercised
                data = (IMAGES / path.removeprefix("/img/").split("?")[0]).read_bytes()
                # counted busy until the body goes out: a client holds its slot at least that long, while
                # this thread may reach its `finally` only after the client has its body and asked again
                with self.lock:
                    type(self).active -= 1
                    busy = False
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            elif path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/huge.jpg":  # says 200 MB: refused before the body is read
                self.send_response(200)
                self.send_header("Content-Length", str(200 * 2**20))
                self.end_headers()
                self.wfile.write(b"\xff\xd8" + b"\0" * 1024)
            elif path == "/flaky.jpg" and count == 1:
                self.send_error(503)
            elif path == "/flaky.jpg":
                data = (IMAGES / "sku-0002.jpg").read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self.send_error(404)
        finally:
            if busy:
                with self.lock:
                    type(self).active -= 1


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def merchant_tsv(folder: Path, base: str, extra: str = "") -> Path:
    # Merchant Center "TSV" feed: a header row of attribute names, one product per line (support.google.com
    # /merchants/answer/7052112 lists the attributes; additional_image_link takes comma-separated URLs)
    header = [
        "id",
        "title",
        "description",
        "link",
        "image_link",
        "additional_image_link",
        "availability",
        "price",
        "brand",
        "gtin",
        "google_product_category",
        "product_type",
    ]
    rows = [
        [
            sku,
            f"Product {sku}",
            f"Description of {sku}",
            f"https://shop.example.com/{sku}",
            f"{base}/img/{sku}.jpg",
            f"{base}/img/{SKUS[0]}.jpg",
            "in_stock",
            "19.99 EUR",
            "Hearthstone",
            "4006381333931",
            "Home & Garden > Kitchen & Dining",
            "Kitchen > Mugs",
        ]
        for sku in SKUS
    ]
    path = folder / "merchant.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n" + extra)
    return path


def merchant_xml(folder: Path, base: str, skus: list[str], extra_items: str = "") -> Path:
    # Merchant Center RSS 2.0 feed with the g: namespace (support.google.com/merchants/answer/160589)
    items = "".join(
        f"""  <item>
    <g:id>{sku}</g:id>
    <title>Product {sku} &amp; more</title>
    <link>https://shop.example.com/{sku}</link>
    <description>Description of {sku}</description>
    <g:image_link>{base}/img/{sku}.jpg</g:image_link>
    <g:additional_image_link>{base}/img/{SKUS[0]}.jpg</g:additional_image_link>
    <g:availability>in_stock</g:availability>
    <g:price>19.99 EUR</g:price>
    <g:brand>Hearthstone</g:brand>
    <g:gtin>4006381333931</g:gtin>
    <g:product_type>Kitchen &gt; Mugs</g:product_type>
  </item>
"""
        for sku in skus
    )
    path = folder / "merchant.xml"
    path.write_text(
        '<?xml version="1.0"?>\n<rss xmlns:g="http://base.google.com/ns/1.0" version="2.0">\n<channel>\n'
        f"<title>Example shop</title>\n<link>https://shop.example.com</link>\n{items}{extra_items}"
        "</channel>\n</rss>\n"
    )
    return path


def shopify_csv(folder: Path, base: str) -> Path:
    # Shopify product CSV (help.shopify.com/en/manual/products/import-export/using-csv): one row per
    # variant/image, the product's fields on its first row only, images ordered by Image Position
    header = [
        "Handle",
        "Title",
        "Body (HTML)",
        "Vendor",
        "Product Category",
        "Type",
        "Tags",
        "Published",
        "Option1 Name",
        "Option1 Value",
        "Variant SKU",
        "Variant Price",
        "Image Src",
        "Image Position",
        "Image Alt Text",
        "Status",
    ]
    rows = [
        [
            "sage-mug",
            "Sage Mug",
            "<p>Hand-glazed <b>stoneware</b></p>",
            "Hearthstone",
            "Home & Garden > Kitchen & Dining",
            "Mugs",
            "mug",
            "TRUE",
            "Size",
            "12 oz",
            "HS-MUG-12",
            "18.00",
            f"{base}/img/sku-0003.jpg",
            "2",
            "side",
            "active",
        ],
        [
            "sage-mug",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "16 oz",
            "HS-MUG-16",
            "20.00",
            f"{base}/img/sku-0002.jpg",
            "1",
            "front",
            "",
        ],
        [
            "amber-perfume",
            "Ambre Nuit",
            "<p>Amber &amp; vanilla</p>",
            "Maison Lumière",
            "",
            "Fragrance",
            "",
            "TRUE",
            "Title",
            "Default Title",
            "ML-AN-50",
            "95.00",
            f"{base}/img/sku-0005.jpg",
            "1",
            "",
            "active",
        ],
    ]
    path = folder / "products_export.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


def test_feeds_are_recognised_and_mapped(server: str, tmp_path: Path) -> None:
    tsv = read_catalog(str(merchant_tsv(tmp_path, server))).table.to_pylist()
    assert [r["item_id"] for r in tsv] == SKUS
    assert tsv[0]["image_uri"] == f"{server}/img/sku-0002.jpg"
    assert tsv[0]["brand"] == "Hearthstone" and tsv[0]["category"] == "Kitchen > Mugs"
    assert tsv[0]["status"] == "ok"

    xml = read_catalog(str(merchant_xml(tmp_path, server, SKUS))).table.to_pylist()
    assert [r["item_id"] for r in xml] == SKUS
    assert (
        xml[1]["title"] == "Product sku-0003 & more" and xml[1]["image_uri"] == f"{server}/img/sku-0003.jpg"
    )

    shop = read_catalog(str(shopify_csv(tmp_path, server))).table.to_pylist()
    assert [r["item_id"] for r in shop] == ["sage-mug", "amber-perfume"]
    assert shop[0]["image_uri"] == f"{server}/img/sku-0002.jpg"  # Image Position 1, not the first row
    assert shop[0]["title"] == "Sage Mug" and shop[0]["description"] == "Hand-glazed stoneware"
    assert shop[1]["brand"] == "Maison Lumière" and shop[1]["category"] == "Fragrance"


def test_bad_feeds_give_clear_messages_and_rows(server: str, tmp_path: Path) -> None:
    (tmp_path / "nocol.tsv").write_text("id\ttitle\tlink\nA\tB\tC\n")
    with pytest.raises(FeedError, match=r"merchant-tsv feed has no image_link column"):
        list_catalog(str(tmp_path / "nocol.tsv"))
    broken = merchant_xml(tmp_path, server, SKUS[:1], "  <item><g:id>x</g:id><g:image_link>y</item>\n")
    with pytest.raises(FeedError, match=r"broken XML at line \d+, column \d+: mismatched tag"):
        list_catalog(str(broken))
    # a row without an image link stays a row, with the reason
    rows = read_catalog(str(merchant_tsv(tmp_path, server, extra="sku-9\tNo image\n"))).table.to_pylist()
    assert rows[-1]["status"] == "error" and "has no image_uri" in rows[-1]["error"]


def test_http_fetch_failures_are_error_rows(server: str) -> None:
    from canvas_ray.config import config_from_dict

    config = config_from_dict({"limits": {"fetch_timeout_s": 5, "fetch_retries": 2, "fetch_per_host": 2}})
    uris = [
        f"{server}/missing.jpg",
        f"{server}/loop",
        f"{server}/huge.jpg",
        f"{server}/flaky.jpg",
        f"{server}/img/sku-0002.jpg",
    ]
    batch = {"item_id": [f"i{k}" for k in range(len(uris))], "image_uri": uris}
    import numpy as np

    out = Fetch(config)({k: np.array(v, dtype=object) for k, v in batch.items()})
    errors = list(out["error"])
    assert "HTTP 404" in errors[0]
    assert "redirect loop" in errors[1]
    assert "200.0 MiB; the limit is 40.0 MiB" in errors[2]
    assert errors[3] == "" and len(out["image_bytes"][3]) > 1000  # 503 once, then retried
    assert _Images.hits["/flaky.jpg"] == 2 and _Images.hits["/missing.jpg"] == 1  # 4xx is not retried
    assert errors[4] == "" and out["image_bytes"][4] == (IMAGES / "sku-0002.jpg").read_bytes()


def test_per_host_bound(server: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    limits = LimitsConfig(fetch_per_host=2)
    _Images.peak = 0
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: http.fetch_url(f"{server}/img/sku-0002.jpg?{i}", limits), range(12)))
    assert _Images.peak == 2  # eight threads asked at once; two were let through at a time


def test_feed_in_generate_verify_feed_out(ray_local, server: str, tmp_path: Path) -> None:
    """One small job from a Merchant Center XML feed (one link is a 404): outputs signed and read back,
    ``verify`` clean, XMP read by exiftool, a supplemental feed with one row per item that has an output."""
    from canvas_ray.batch import GenerateRequest, run_generate
    from canvas_ray.cli import main
    from canvas_ray.config import load_config
    from canvas_ray.publish import verify_output, write_feed

    extra = f"  <item><g:id>gone</g:id><g:image_link>{server}/nope.jpg</g:image_link></item>\n"
    feed = merchant_xml(tmp_path, server, SKUS, extra)
    config = load_config(
        REPO / "configs" / "weightfree.yaml",
        {"output.aspect_ratios": ["1:1"], "styles.default": ["studio white"], "provenance.c2pa": "sign"},
    )
    out = tmp_path / "out"
    summary = run_generate(GenerateRequest(config, str(feed), str(out), progress=False))
    rows = pq.read_table(out / "manifest").to_pylist()
    by_item = {r["item_id"]: r for r in rows}
    assert set(by_item) == {*SKUS, "gone"} and summary["errors"] == 1
    assert by_item["gone"]["status"] == "error" and "HTTP 404" in by_item["gone"]["error"]
    delivered = [r for r in rows if r["status"] in ("ok", "review")]
    assert len(delivered) == 3
    for row in delivered:
        record = json.loads(row["provenance"])
        assert record["c2pa"] == "signed" and record["digital_source_type"] == "compositeSynthetic"
        assert record["source_sha256"] and record["signer"] == "canvas-ray test signer"

    report = verify_output(str(out))
    assert (report.checked, report.verified, report.problems) == (3, 3, [])
    first = out / delivered[0]["output_uri"]
    tags = json.loads(
        subprocess.run(
            ["exiftool", "-j", "-XMP:all", str(first)], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert tags["DigitalSourceType"].endswith("/compositeSynthetic")
    # strip the tag from one file: verify reports it
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-XMP:all=", str(first)], check=True)
    report = verify_output(str(out))
    assert report.verified == 2 and len(report.problems) == 1
    assert any("no XMP provenance" in p for p in report.problems[0]["problems"])
    assert main(["verify", str(out)]) == 1

    feed_report = write_feed(str(out), "merchant-tsv", "https://cdn.example.com/canvas/")
    lines = Path(feed_report.path).read_text().splitlines()
    assert lines[0] == "id\tlifestyle_image_link\tadditional_image_link"
    ok_items = sorted(r["item_id"] for r in rows if r["status"] == "ok")
    assert sorted(line.split("\t")[0] for line in lines[1:]) == ok_items
    assert all(line.split("\t")[1].startswith("https://cdn.example.com/canvas/images/") for line in lines[1:])
    assert feed_report.skipped.get("no ok output (error 1)") == 1
    assert (
        main(["feed", str(out), "--format", "shopify-csv", "--base-url", "https://cdn.example.com/c/"]) == 0
    )
    assert (out / "feeds" / "supplemental-shopify-csv.csv").read_text().startswith("Handle,Image Src")
