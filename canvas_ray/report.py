"""Review pages, written streaming so they scale with the manifest.

```
OUTPUT/index.html                   summary, errors and flagged rows (first page), a sample contact
                                    sheet, links to every bucket's item pages
OUTPUT/review/errors/p<N>.html      every row that is not ok (error, rejected, review), 500 per page
OUTPUT/review/b<bucket>/p<N>.html   one section per item (original | mask | each output), 40 per page
```
Item pages are written per manifest bucket when compaction rewrites that bucket (so a run re-renders
only the buckets it touched); the index and error pages are written by streaming the manifest once.
Every user-supplied string is HTML-escaped; links are relative, so the folder can be copied or served.
"""

from __future__ import annotations

import html
import posixpath
from collections import OrderedDict
from typing import Any

import fsspec
import pyarrow as pa

from canvas_ray.io.manifest import Manifest, bucket_dir
from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.schema import DELIVERED

ITEMS_PER_PAGE = 40
ERRORS_PER_PAGE = 500
SAMPLE_OUTPUTS = 24
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} .meta{color:#666;margin-bottom:16px}
.item{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:12px;margin:0 0 14px}
.row{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start}
figure{margin:0;width:200px} figure img{max-width:200px;max-height:200px;border:1px solid #eee;
background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 50%/16px 16px}
figcaption{font-size:12px;color:#555;word-break:break-word}
.ok{color:#137333}.error{color:#b3261e;font-weight:600}.review{color:#a15c00;font-weight:600}
.caption{color:#444;margin:6px 0}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
nav a{margin-right:8px} .stats span{margin-right:16px}
"""
SUMMARY_LABELS = {
    "ok": "ok",
    "review": "review (mask not vouched for)",
    "rejected": "rejected",
    "errors": "errors",
    "product_preserved": "product preserved",
    "outputs_this_run": "outputs this run",
    "seconds": "this run, s",
    "outputs_per_second": "this run, outputs/s",
    "config_fingerprint": "config",
}


def escape(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _page(title: str, body: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    )


def _label(row: dict[str, Any]) -> str:
    target = f"profile {escape(row['profile'])}" if row.get("profile") else escape(row["aspect"])
    return f"{escape(row['style'])} · {target} · v{escape(row['variant'])} · seed {escape(row['seed'])}"


def _compliance(row: dict[str, Any]) -> str:
    """The profile check of one output (empty for plain aspect-ratio outputs)."""
    if not row.get("profile") or row.get("compliant") is None:
        return ""
    verdict = "compliant" if row["compliant"] else "NOT COMPLIANT"
    parts = [f"{escape(row['profile'])}: {verdict}"]
    if row.get("fill_ratio") is not None:
        parts.append(f"fill {row['fill_ratio']:.1%}")
    if row.get("background_purity") is not None:
        parts.append(f"white {row['background_purity']:.2%}")
    if row.get("product_scale") is not None:
        parts.append(f"scale {row['product_scale']:.2f}" + (" (upscaled)" if row.get("upscaled") else ""))
    return "<br><span class='compliance'>" + " · ".join(parts) + "</span>"


def _output_figure(row: dict[str, Any], prefix: str) -> str:
    label = _label(row)
    status = row["status"]
    if status in DELIVERED and row.get("output_uri"):
        check = "product preserved" if row.get("product_preserved") else "PRODUCT CHANGED"
        if row.get("mask_confidence") is not None:
            check += f"<br>mask confidence {row['mask_confidence']:.2f}"
        if row.get("quality_score") is not None:
            check += f"<br>score {row['quality_score']:.2f}"
        if row.get("expansion_ratio") is not None:
            check += f" · expansion {row['expansion_ratio']:.1%}"
        check += _compliance(row)
        note = f"<br>{escape(row.get('error'))}" if status == "review" else ""
        if row.get("expansion_uri"):
            check += f' · <a href="{prefix}{escape(row["expansion_uri"])}">where it grew</a>'
        return (
            f'<figure><a href="{prefix}{escape(row["output_uri"])}"><img loading="lazy" '
            f'src="{prefix}{escape(row["output_uri"])}" alt="{label}"></a>'
            f'<figcaption><span class="{escape(status)}">{escape(status)}</span> · {label}<br>{check}{note}'
            f"<br><details><summary>prompt</summary>{escape(row.get('prompt'))}</details>"
            f"</figcaption></figure>"
        )
    grown = ""
    if row.get("expansion_uri"):  # a rejected output: the pixels the product grew, in red
        uri = f"{prefix}{escape(row['expansion_uri'])}"
        grown = f'<a href="{uri}"><img loading="lazy" class="expansion" src="{uri}" alt="grown: {label}"></a>'
    return (
        f'<figure>{grown}<figcaption><span class="error">{escape(status)}</span> · {label}<br>'
        f"{escape(row.get('error'))}{'<br>red: where the product grew' if grown else ''}"
        f"{_compliance(row)}</figcaption></figure>"
    )


def item_html(item_id: str, rows: list[dict[str, Any]], prefix: str) -> str:
    """One item: original thumbnail | mask | every output, with caption, prompts and status."""
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
    figures += [_output_figure(row, prefix) for row in rows]
    title = f" — {escape(first.get('title'))}" if first.get("title") else ""
    caption = f'<div class="caption">{escape(first.get("caption"))}</div>' if first.get("caption") else ""
    return (
        f'<section class="item" id="{escape(item_id)}"><b>{escape(item_id)}</b>{title}{caption}'
        f'<div class="row">{"".join(figures)}</div></section>'
    )


def render_item_pages(table: pa.Table, title: str, items_per_page: int = ITEMS_PER_PAGE) -> list[str]:
    """Pages (HTML) of a table's items, ``items_per_page`` each; pages sit two folders below the root
    (``review/<group>/p<N>.html``) and link to each other as ``p<N>.html``."""
    items: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for row in table.to_pylist():
        items.setdefault(row["item_id"], []).append(row)
    ids = list(items)
    pages = max(1, -(-len(ids) // items_per_page))
    out = []
    for page in range(1, pages + 1):
        links = " ".join(
            f'<a href="p{p}.html">{"<b>" + str(p) + "</b>" if p == page else p}</a>'
            for p in range(1, pages + 1)
        )
        nav = f"<nav><a href='../../index.html'>index</a> pages: {links}</nav>"
        body = [
            f"<h1>canvas-ray review: {escape(title)}</h1><div class='meta'>{len(ids)} items, "
            f"{table.num_rows} outputs, page {page} of {pages}</div>",
            nav,
        ]
        for item_id in ids[(page - 1) * items_per_page : page * items_per_page]:
            body.append(item_html(item_id, items[item_id], "../../"))
        body.append(nav)
        out.append(_page(f"canvas-ray review: {title}", body))
    return out


def _remove_stale(root: str, options: dict[str, Any], folder: str, keep: int) -> None:
    fs, path = fsspec.core.url_to_fs(join_uri(root, folder), **options)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    if not fs.exists(path):
        return
    for entry in fs.ls(path, detail=False):
        name = posixpath.basename(entry)
        if (
            name.startswith("p")
            and name.endswith(".html")
            and name[1:-5].isdigit()
            and int(name[1:-5]) > keep
        ):
            fs.rm(entry)


def write_bucket_pages(root: str, options: dict[str, Any], bucket: int, table: pa.Table) -> int:
    """The item pages of one manifest bucket (called by compaction with the merged bucket)."""
    folder = f"review/b{bucket:05d}"
    pages = render_item_pages(table, bucket_dir(bucket)) if table.num_rows else []
    for number, text in enumerate(pages, start=1):
        write_bytes(join_uri(root, folder, f"p{number}.html"), text.encode(), options)
    _remove_stale(root, options, folder, len(pages))
    return len(pages)


def _grown_link(row: dict[str, Any], prefix: str) -> str:
    uri = row.get("expansion_uri")
    return f" <a href='{prefix}{escape(uri)}'>where it grew</a>" if uri else ""


def _error_table(rows: list[dict[str, Any]], prefix: str) -> str:
    cells = "".join(
        f"<tr><td><a href='{prefix}review/b{int(r['_bucket']):05d}/p1.html'>{escape(r['item_id'])}</a></td>"
        f"<td>{escape(r['status'])}</td><td>{escape(r['style'])}</td><td>{escape(r['aspect'])}</td>"
        f"<td>{escape(r['error'])}{_grown_link(r, prefix)}</td></tr>"
        for r in rows
    )
    return (
        "<table id='errors'><tr><th>item</th><th>status</th><th>style</th><th>aspect</th><th>reason</th></tr>"
        f"{cells}</table>"
    )


def write_index(manifest: Manifest, summary: dict[str, Any] | None = None) -> list[str]:
    """``index.html`` and the error pages, streaming the manifest once (bounded memory)."""
    from canvas_ray.io.catalog import id_bucket

    root, options = manifest.root, manifest.storage_options
    buckets = manifest.buckets() or 1
    columns = ["item_id", "status", "error", "style", "aspect", "variant", "seed", "output_uri", "prompt"]
    columns += ["product_preserved", "quality_score", "expansion_ratio"]
    from canvas_ray.schema import MANIFEST_SCHEMA

    if "mask_confidence" in MANIFEST_SCHEMA.names:
        columns.append("mask_confidence")
    columns.append("expansion_uri")
    first_errors: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    error_pages = 0
    bad_total = 0
    sample: list[dict[str, Any]] = []
    written = []

    def flush(rows: list[dict[str, Any]], number: int) -> None:
        body = [
            f"<h1>canvas-ray: not ok, page {number}</h1>",
            "<nav><a href='../../index.html'>index</a></nav>",
            _error_table(rows, "../../"),
        ]
        rel = f"review/errors/p{number}.html"
        write_bytes(join_uri(root, rel), _page("canvas-ray: not ok", body).encode(), options)
        written.append(rel)

    for batch in manifest.iter_batches(columns):
        for row in batch.to_pylist():
            if row["status"] == "ok":
                if len(sample) < SAMPLE_OUTPUTS and row.get("output_uri"):
                    sample.append(row)
                continue
            row["_bucket"] = id_bucket(row["item_id"], buckets)
            bad_total += 1
            if len(first_errors) < ERRORS_PER_PAGE:
                first_errors.append(row)
            pending.append(row)
            if len(pending) == ERRORS_PER_PAGE:
                error_pages += 1
                flush(pending, error_pages)
                pending = []
    if pending:
        error_pages += 1
        flush(pending, error_pages)
    _remove_stale(root, options, "review/errors", error_pages)
    body = ["<h1>canvas-ray review</h1>"]
    if summary:
        body.append(
            "<div class='meta'>"
            f"{escape(summary.get('items'))} items, {escape(summary.get('outputs'))} outputs</div>"
            '<div class="stats">'
            + "".join(
                f"<span>{label}: <b>{escape(summary.get(k))}</b></span>"
                for k, label in SUMMARY_LABELS.items()
            )
            + "</div>"
        )
    if first_errors:
        more = " ".join(f"<a href='review/errors/p{p}.html'>{p}</a>" for p in range(1, error_pages + 1))
        body.append(f"<h2>Errors ({bad_total})</h2><nav>all, by page: {more}</nav>")
        body.append(_error_table(first_errors, ""))
    if sample:
        figures = "".join(_output_figure(row, "") for row in sample)
        body.append(f"<h2>Sample</h2><div class='row'>{figures}</div>")
    links = " ".join(f"<a href='review/b{b:05d}/p1.html'>{b}</a>" for b in sorted(manifest.bucket_files()))
    body.append(f"<h2>Every item, by manifest bucket</h2><nav>{links}</nav>")
    write_bytes(join_uri(root, "index.html"), _page("canvas-ray review", body).encode(), options)
    written.append("index.html")
    return written
