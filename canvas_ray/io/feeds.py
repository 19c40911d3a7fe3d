"""Merchant product feeds as catalogs: Google Merchant Center (TSV, RSS 2.0 / Atom XML with the ``g:``
namespace) and Shopify product CSV exports, recognised from the file and mapped to catalog columns.

| ours          | Merchant Center                              | Shopify CSV                          |
| ------------- | -------------------------------------------- | ------------------------------------ |
| ``item_id``   | ``id``                                       | ``Handle``                           |
| ``image_uri`` | ``image_link``                               | ``Image Src`` (lowest Image Position)|
| ``title``     | ``title``                                    | ``Title``                            |
| ``description``| ``description``                             | ``Body (HTML)`` (tags stripped)      |
| ``brand``     | ``brand``                                    | ``Vendor``                           |
| ``category``  | ``product_type``, else ``google_product_category`` | ``Type``, else ``Product Category`` |

The feed's extra fields (``link``, ``gtin``, ``additional_image_link``, ``Variant SKU``) are kept as extra
columns of the rows read here (the generation plan uses the main image). A file is read in bounded chunks
like any catalog (XML with ``iterparse``, elements cleared as they are read), so a feed of any size streams.

:func:`check_feed` is run once on the driver before a job starts: a missing required column or a broken XML
document fails there with a message naming the file, line and what is missing.
"""

from __future__ import annotations

import csv
import html
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa

FORMATS = ("merchant-tsv", "merchant-xml", "shopify-csv")
G_NS = "http://base.google.com/ns/1.0"
ATOM_NS = "http://www.w3.org/2005/Atom"
MERCHANT_REQUIRED = ("id", "image_link")
SHOPIFY_REQUIRED = ("Handle", "Image Src")
_TAG_RE = re.compile(r"<[^>]+>")
csv.field_size_limit(16 * 2**20)


class FeedError(ValueError):
    """A feed that cannot be read as a catalog; the message names the file and what is wrong."""


def detect(path: str, head: bytes) -> str | None:
    """The feed format of a file from its name and first bytes, or None (not a feed: a plain catalog)."""
    lower = path.lower()
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if lower.endswith(".xml") or text.startswith((b"<?xml", b"<rss", b"<feed")):
        return "merchant-xml"
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace")
    if lower.endswith((".tsv", ".txt")) or ("\t" in first and "image_link" in first):
        return "merchant-tsv"
    if lower.endswith(".csv"):
        header = next(csv.reader([first]), [])
        if "Handle" in header and ("Image Src" in header or "Title" in header):
            return "shopify-csv"
    return None


def _missing(header: list[str], required: tuple[str, ...]) -> list[str]:
    names = {h.strip() for h in header}
    return [c for c in required if c not in names]


def check_feed(kind: str, handle: Any, name: str) -> None:
    """Raise :class:`FeedError` for a feed that cannot be a catalog (missing columns, broken XML)."""
    if kind == "merchant-xml":
        items = 0
        try:
            for _, element in ET.iterparse(handle, events=("end",)):
                if _local(element.tag) in ("item", "entry"):
                    items += 1
                    element.clear()
        except ET.ParseError as error:
            line, column = error.position
            raise FeedError(
                f"catalog {name}: broken XML at line {line}, column {column}: {error.msg}; fix the feed "
                f"(the {items} items before it were not started either)"
            ) from None
        return
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    header = next(csv.reader(text, delimiter="\t" if kind == "merchant-tsv" else ","), [])
    required = MERCHANT_REQUIRED if kind == "merchant-tsv" else SHOPIFY_REQUIRED
    missing = _missing(header, required)
    if missing:
        raise FeedError(
            f"catalog {name}: {kind} feed has no {', '.join(missing)} column "
            f"(required: {', '.join(required)}; "
            f"found: {', '.join(h for h in header[:20] if h)})"
        )


def iter_feed_chunks(kind: str, handle: Any, chunk_rows: int) -> Iterator[pa.Table]:
    """Catalog rows of a feed, ``chunk_rows`` items at a time (columns as in the module table)."""
    if kind == "merchant-xml":
        rows = _merchant_xml(handle)
    elif kind == "merchant-tsv":
        rows = _merchant_tsv(handle)
    elif kind == "shopify-csv":
        rows = _shopify_csv(handle)
    else:
        raise FeedError(f"unknown feed format {kind!r}; use {', '.join(FORMATS)}")
    yield from row_tables(rows, chunk_rows, _table)


def row_tables(
    rows: Iterable[dict[str, Any]], chunk_rows: int, to_table: Callable[[list[dict[str, Any]]], pa.Table]
) -> Iterator[pa.Table]:
    """Rows as tables of ``chunk_rows`` rows each (the last one shorter), made by ``to_table``."""
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= chunk_rows:
            yield to_table(chunk)
            chunk = []
    if chunk:
        yield to_table(chunk)


def _table(rows: list[dict[str, str]]) -> pa.Table:
    keys = dict.fromkeys(k for row in rows for k in row)
    return pa.table({k: pa.array([row.get(k, "") for row in rows], pa.string()) for k in keys})


def _merchant_row(fields: dict[str, str]) -> dict[str, str]:
    def get(name: str) -> str:
        return (fields.get(name) or "").strip()

    return {
        "item_id": get("id"),
        "image_uri": get("image_link"),
        "title": get("title"),
        "description": get("description"),
        "brand": get("brand"),
        "category": get("product_type") or get("google_product_category"),
        "link": get("link"),
        "gtin": get("gtin"),
        "additional_image_link": get("additional_image_link"),
    }


def _merchant_tsv(handle: Any) -> Iterator[dict[str, str]]:
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text, delimiter="\t", quoting=csv.QUOTE_NONE)
    if reader.fieldnames is not None:
        reader.fieldnames = [f.strip() for f in reader.fieldnames]
    for fields in reader:
        yield _merchant_row({k: v for k, v in fields.items() if k})


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _merchant_xml(handle: Any) -> Iterator[dict[str, str]]:
    """RSS 2.0 ``<item>`` or Atom ``<entry>`` elements; ``g:`` fields win over plain ``title``/``link``."""
    for _, element in ET.iterparse(handle, events=("end",)):
        if _local(element.tag) not in ("item", "entry"):
            continue
        fields: dict[str, str] = {}
        plain: dict[str, str] = {}
        for child in element:
            name, value = _local(child.tag), (child.text or "").strip()
            if name == "link" and not value:
                value = child.get("href", "")  # Atom links are attributes
            if child.tag.startswith(f"{{{G_NS}}}"):
                if name == "additional_image_link" and fields.get(name):
                    value = fields[name] + "," + value  # repeated element → one comma-separated field
                fields[name] = value
            else:
                plain.setdefault("summary" if name == "content" else name, value)
        for name in ("title", "description", "link"):
            fields.setdefault(
                name, plain.get(name, "") or (plain.get("summary", "") if name == "description" else "")
            )
        element.clear()
        yield _merchant_row(fields)


def _shopify_csv(handle: Any) -> Iterator[dict[str, str]]:
    """One item per ``Handle``: the product row gives title/vendor/type, the lowest ``Image Position`` the
    image (an export lists a product's variant and image rows one after another)."""
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
    current: dict[str, str] | None = None
    best = (1 << 30, "")
    for fields in csv.DictReader(text):
        handle_name = (fields.get("Handle") or "").strip()
        if current is None or handle_name != current["item_id"]:
            if current is not None:
                current["image_uri"] = best[1]
                yield current
            body = html.unescape(_TAG_RE.sub(" ", fields.get("Body (HTML)") or ""))
            current = {
                "item_id": handle_name,
                "image_uri": "",
                "title": (fields.get("Title") or "").strip(),
                "description": " ".join(body.split()),
                "brand": (fields.get("Vendor") or "").strip(),
                "category": (fields.get("Type") or fields.get("Product Category") or "").strip(),
                "sku": (fields.get("Variant SKU") or "").strip(),
            }
            best = (1 << 30, "")
        image = (fields.get("Image Src") or "").strip()
        if image:
            position_text = (fields.get("Image Position") or "").strip()
            position = int(position_text) if position_text.isdigit() else (1 << 29)
            if position < best[0]:
                best = (position, image)
    if current is not None:
        current["image_uri"] = best[1]
        yield current


def sniff(path: str, handle: Any) -> str | None:
    """:func:`detect` on an open binary file, which is left at its start."""
    head = handle.read(4096)
    handle.seek(0)
    return detect(path, head)


def check_file(fs: Any, path: str, name: str, expected: str | None = None) -> str | None:
    """The feed format of a catalog file (None: not a feed), checked with :func:`check_feed`; with
    ``expected`` (``--catalog-format``) a file recognised otherwise is an error saying what it looks like."""
    with fs.open(path, "rb") as handle:
        kind = sniff(path, handle)
        if expected and kind != expected:
            raise FeedError(
                f"catalog {name}: --catalog-format {expected}, "
                f"but the file reads as {kind or 'a plain catalog'}"
            )
        if kind:
            check_feed(kind, handle, name)
    return kind
