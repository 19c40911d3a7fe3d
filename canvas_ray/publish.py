"""Publishing a finished run: ``canvas-ray verify`` (every output's embedded provenance read back and
compared with its manifest row) and ``canvas-ray feed`` (a supplemental merchant feed of the best compliant
output per item). Both stream the manifest bucket by bucket (one bucket holds every output of its items),
so memory stays bounded for any run size.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import posixpath
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import fsspec

from canvas_ray.io.manifest import Manifest
from canvas_ray.io.outputs import join_uri
from canvas_ray.provenance import Provenance, check_provenance, read_provenance

FEED_FORMATS = {"merchant-tsv": "tsv", "merchant-xml": "xml", "shopify-csv": "csv"}
DELIVERED = ("ok", "review", "rejected")  # statuses whose images were written
MAX_ADDITIONAL = 10  # Merchant Center accepts up to 10 additional_image_link values
_VERIFY_COLUMNS = ["output_id", "status", "output_uri", "provenance", "profile"]
_FEED_COLUMNS = ["output_id", "item_id", "status", "output_uri", "compliant", "quality_score", "provenance"]


def _buckets(manifest: Manifest, columns: list[str]):
    pending = manifest.pending_files()
    if pending:
        manifest.compact("publish")
    for bucket in sorted(manifest.bucket_files()):
        yield manifest.read_bucket(bucket, columns)


@dataclass
class VerifyReport:
    checked: int = 0
    verified: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "verified": self.verified,
            "failed": len(self.problems),
            "problems": self.problems[:200],
        }


def verify_output(root: str, storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Read every written output back and compare its XMP and C2PA with the manifest row's record."""
    options = storage_options or {}
    manifest = Manifest(root, options)
    report = VerifyReport()
    rules = _profile_rules()
    for table in _buckets(manifest, _VERIFY_COLUMNS):
        for row in table.to_pylist():
            if row["status"] not in DELIVERED or not row["output_uri"]:
                continue
            report.checked += 1
            uri = join_uri(root, row["output_uri"])
            expected = Provenance.from_json(row["provenance"])
            try:
                fs, path = fsspec.core.url_to_fs(uri, **options)
                with fs.open(path, "rb") as handle:
                    data = handle.read()
            except FileNotFoundError:
                report.problems.append(
                    {"output_id": row["output_id"], "uri": uri, "problems": ["file missing"]}
                )
                continue
            rule = rules.get(row["profile"] or "")
            problems = [] if expected is not None else ["the manifest row records no provenance"]
            problems += check_provenance(
                read_provenance(data), expected, rule.c2pa if rule else "none", rule.iptc if rule else True
            )
            if problems:
                report.problems.append({"output_id": row["output_id"], "uri": uri, "problems": problems})
            else:
                report.verified += 1
    return report


def _profile_rules() -> dict[str, Any]:
    from canvas_ray.config import DEFAULT_PROFILES_FILE
    from canvas_ray.profiles import ProfileBook

    try:
        return {n: p.provenance for n, p in ProfileBook.load(DEFAULT_PROFILES_FILE).profiles.items()}
    except Exception:  # noqa: BLE001 - no profiles file: no channel rules to add
        return {}


# ---- supplemental feeds ----------------------------------------------------------------------------


@dataclass
class FeedReport:
    path: str
    format: str
    items: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "feed": self.path,
            "format": self.format,
            "items": self.items,
            "written": self.written,
            "skipped": dict(self.skipped),
            "skipped_examples": self.skipped_examples[:20],
        }


def public_url(base_url: str, output_uri: str) -> str:
    """``images/ab/x.png`` under ``https://cdn.example.com/canvas/`` (or an S3/GCS object URL prefix)."""
    return base_url.rstrip("/") + "/" + posixpath.normpath(output_uri).lstrip("/")


def _score(row: dict[str, Any]) -> float:
    value = row.get("quality_score")
    return -math.inf if value is None or value != value else float(value)


def choose(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The eligible outputs of one item, best first (``ok``, not non-compliant, provenance recorded), or
    the reason none is."""
    eligible = [
        r
        for r in rows
        if r["status"] == "ok" and r["output_uri"] and r["compliant"] is not False and r["provenance"]
    ]
    if eligible:
        return sorted(eligible, key=lambda r: (-_score(r), r["output_id"])), ""
    statuses = Counter(r["status"] for r in rows)
    if statuses.get("ok"):
        return [], "no compliant ok output"
    return [], "no ok output (" + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) + ")"


def write_feed(
    root: str,
    fmt: str,
    base_url: str,
    out: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> FeedReport:
    """A supplemental feed: one row per item with a compliant output (the best as the lifestyle image,
    the next ones as additional images; Shopify: image rows by position)."""
    if fmt not in FEED_FORMATS:
        raise ValueError(f"unknown feed format {fmt!r}; use {', '.join(FEED_FORMATS)}")
    options = storage_options or {}
    out = out or join_uri(root, "feeds", f"supplemental-{fmt}.{FEED_FORMATS[fmt]}")
    report = FeedReport(out, fmt)
    manifest = Manifest(root, options)
    fs, path = fsspec.core.url_to_fs(out, **options)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w", encoding="utf-8", newline="") as handle:
        writer = _FeedWriter(fmt, handle)
        for table in _buckets(manifest, _FEED_COLUMNS):
            by_item: dict[str, list[dict[str, Any]]] = {}
            for row in table.to_pylist():
                by_item.setdefault(row["item_id"], []).append(row)
            for item_id in sorted(by_item):
                report.items += 1
                chosen, why = choose(by_item[item_id])
                if not chosen:
                    report.skipped[why] += 1
                    report.skipped_examples.append(f"{item_id}: {why}")
                    continue
                writer.item(
                    item_id, [public_url(base_url, r["output_uri"]) for r in chosen[: 1 + MAX_ADDITIONAL]]
                )
                report.written += 1
        writer.close()
    return report


class _FeedWriter:
    def __init__(self, fmt: str, handle: Any):
        self.fmt, self.handle = fmt, handle
        if fmt == "merchant-tsv":
            self.csv = csv.writer(handle, delimiter="\t", lineterminator="\n")
            self.csv.writerow(["id", "lifestyle_image_link", "additional_image_link"])
        elif fmt == "shopify-csv":
            self.csv = csv.writer(handle, lineterminator="\n")
            self.csv.writerow(["Handle", "Image Src", "Image Position", "Image Alt Text"])
        else:
            handle.write(
                '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">\n'
                "<channel>\n<title>canvas-ray supplemental feed</title>\n"
            )

    def item(self, item_id: str, urls: list[str]) -> None:
        if self.fmt == "merchant-tsv":
            self.csv.writerow([item_id, urls[0], ",".join(urls[1:])])
        elif self.fmt == "shopify-csv":
            for position, url in enumerate(urls, start=1):
                self.csv.writerow(
                    [item_id, url, position, "Generated background (AI); product photo unaltered"]
                )
        else:
            parts = [
                f"<item>\n  <g:id>{escape(item_id)}</g:id>\n  <g:lifestyle_image_link>{escape(urls[0])}"
                "</g:lifestyle_image_link>\n"
            ]
            parts += [f"  <g:additional_image_link>{escape(u)}</g:additional_image_link>\n" for u in urls[1:]]
            self.handle.write("".join(parts) + "</item>\n")

    def close(self) -> None:
        if self.fmt == "merchant-xml":
            self.handle.write("</channel>\n</rss>\n")


# ---- command line ----------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    report = verify_output(args.output)
    print(json.dumps(report.as_dict(), indent=2))
    if report.checked == 0:
        print(f"no written outputs under {args.output}", file=sys.stderr)
        return 1
    return 1 if report.problems else 0


def cmd_feed(args: argparse.Namespace) -> int:
    report = write_feed(args.output, args.format, args.base_url, args.out)
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.written else 1


def add_publish_parsers(sub: Any) -> None:
    """``verify`` and ``feed`` subcommands of ``canvas-ray``."""
    ver = sub.add_parser("verify", help="read every output back: report missing or mismatching provenance")
    ver.add_argument("output", help="the run's output root")
    ver.set_defaults(func=cmd_verify)
    feed = sub.add_parser("feed", help="write a supplemental merchant feed of the best compliant outputs")
    feed.add_argument("output", help="the run's output root")
    feed.add_argument("--format", required=True, choices=sorted(FEED_FORMATS))
    feed.add_argument(
        "--base-url", required=True, help="public URL of OUTPUT (https://cdn…/, S3/GCS object URL)"
    )
    feed.add_argument("--out", help="feed file (default OUTPUT/feeds/supplemental-<format>.<ext>)")
    feed.set_defaults(func=cmd_feed)
