"""The review contact sheet: ``OUTPUT/index.html`` (+ ``review/page-N.html``), static and paginated.

One row per item: original thumbnail | mask | every output, with caption, prompts and status; a table
of errors with their reasons on the first page. Links are relative, so the folder can be copied or
served as is.
"""

from __future__ import annotations

import html
import json
from collections import OrderedDict
from typing import Any

import pyarrow as pa

from canvas_ray.io.outputs import OutputLayout, write_bytes

ITEMS_PER_PAGE = 40
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} .meta{color:#666;margin-bottom:16px}
.item{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:12px;margin:0 0 14px}
.row{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0;width:200px} figure img{max-width:200px;max-height:200px;border:1px solid #eee;
background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 50%/16px 16px}
figcaption{font-size:12px;color:#555;word-break:break-word}
.ok{color:#137333}.error{color:#b3261e;font-weight:600} .caption{color:#444;margin:6px 0}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
nav a{margin-right:8px} .stats span{margin-right:16px}
"""


def escape(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _page_name(page: int) -> str:
    return "index.html" if page == 1 else f"review/page-{page}.html"


def _item_html(item_id: str, rows: list[dict[str, Any]], prefix: str) -> str:
    first = rows[0]
    figures = []
    if first.get("thumb_uri"):
        figures.append(
            f'<figure><img src="{prefix}{escape(first["thumb_uri"])}" alt="original {escape(item_id)}">'
            f"<figcaption>original</figcaption></figure>"
        )
    if first.get("mask_uri"):
        figures.append(
            f'<figure><img src="{prefix}{escape(first["mask_uri"])}" alt="mask {escape(item_id)}">'
            f"<figcaption>product mask ({(first.get('mask_area') or 0):.1%})</figcaption></figure>"
        )
    for row in rows:
        label = (
            f"{escape(row['style'])} · {escape(row['aspect'])} · v{escape(row['variant'])}"
            f" · seed {escape(row['seed'])}"
        )
        if row["status"] == "ok":
            check = "product preserved" if row["product_preserved"] else "PRODUCT CHANGED"
            if row.get("quality_score") is not None:
                check += f"<br>score {row['quality_score']:.2f}"
            if row.get("expansion_ratio") is not None:
                check += f" · expansion {row['expansion_ratio']:.1%}"
            figures.append(
                f'<figure><a href="{prefix}{escape(row["output_uri"])}"><img loading="lazy" '
                f'src="{prefix}{escape(row["output_uri"])}" alt="{label}"></a>'
                f'<figcaption><span class="ok">ok</span> · {label}<br>{check}'
                f"<br><details><summary>prompt</summary>{escape(row['prompt'])}</details>"
                f"</figcaption></figure>"
            )
        else:
            figures.append(
                f'<figure><figcaption><span class="error">{escape(row["status"])}</span> · {label}<br>'
                f"{escape(row['error'])}</figcaption></figure>"
            )
    title = f" — {escape(first.get('title'))}" if first.get("title") else ""
    caption = f'<div class="caption">{escape(first.get("caption"))}</div>' if first.get("caption") else ""
    return (
        f'<section class="item" id="{escape(item_id)}"><b>{escape(item_id)}</b>{title}{caption}'
        f'<div class="row">{"".join(figures)}</div></section>'
    )


def render_pages(
    manifest: pa.Table, summary: dict[str, Any] | None = None, items_per_page: int = ITEMS_PER_PAGE
) -> dict[str, str]:
    """Relative path → HTML for every page."""
    items: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for row in manifest.to_pylist():
        items.setdefault(row["item_id"], []).append(row)
    ids = list(items)
    pages = max(1, -(-len(ids) // items_per_page))
    errors = [r for r in manifest.to_pylist() if r["status"] != "ok"]
    out = {}
    for page in range(1, pages + 1):
        prefix = "" if page == 1 else "../"
        links = " ".join(
            f'<a href="{prefix}{_page_name(p)}">{"<b>" + str(p) + "</b>" if p == page else p}</a>'
            for p in range(1, pages + 1)
        )
        nav = f"<nav>pages: {links}</nav>" if pages > 1 else ""
        body = [
            f"<h1>canvas-ray review</h1><div class='meta'>{len(ids)} items, {manifest.num_rows} outputs, "
            f"page {page} of {pages}</div>"
        ]
        if summary and page == 1:
            labels = {
                "ok": "ok",
                "errors": "errors",
                "product_preserved": "product preserved",
                "outputs_this_run": "outputs this run",
                "seconds": "this run, s",
                "outputs_per_second": "this run, outputs/s",
                "config_fingerprint": "config",
            }
            body.append(
                '<div class="stats">'
                + "".join(
                    f"<span>{label}: <b>{escape(summary.get(k))}</b></span>" for k, label in labels.items()
                )
                + "</div>"
            )
        if errors and page == 1:
            rows = "".join(
                f"<tr><td>{escape(r['item_id'])}</td><td>{escape(r['style'])}</td><td>{escape(r['aspect'])}</td>"
                f"<td>{escape(r['error'])}</td></tr>"
                for r in errors[:500]
            )
            body.append(
                f"<h2>Errors ({len(errors)})</h2><table id='errors'><tr><th>item</th><th>style</th>"
                f"<th>aspect</th><th>reason</th></tr>{rows}</table>"
            )
        body.append(nav)
        for item_id in ids[(page - 1) * items_per_page : page * items_per_page]:
            body.append(_item_html(item_id, items[item_id], prefix))
        body.append(nav)
        out[_page_name(page)] = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>canvas-ray review</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
        )
    return out


def write_review_pages(
    manifest: pa.Table,
    root: str,
    storage_options: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> list[str]:
    layout = OutputLayout(root)
    written = []
    for rel, text in render_pages(manifest, summary).items():
        write_bytes(layout.uri(rel), text.encode(), dict(storage_options or {}))
        written.append(rel)
    return written


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
