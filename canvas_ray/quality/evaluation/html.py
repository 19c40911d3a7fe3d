"""``report.html``: cards, plots, per-style/category tables, contact sheets and the issues table.

Output images are linked relatively, never copied, so the eval folder can be moved or served as is.
The rows it shows (best and worst outputs, the first failures) are picked in one streaming pass.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from canvas_ray.quality.evaluation.metrics import (
    LOWER_IS_BETTER,
    GroupStats,
    RunMetrics,
    as_number,
    share,
)
from canvas_ray.quality.evaluation.plots import PLOTS
from canvas_ray.quality.evaluation.stream import Smallest, Source, candidates, chunks, floats, is_status
from canvas_ray.report import CSS, escape
from canvas_ray.rows import OK

_EVAL_CSS = """
h2{font-size:16px;margin:24px 0 8px} .cards{display:flex;gap:10px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:10px 14px;min-width:120px}
.card .value{font-size:22px;font-weight:600} .card .label{color:#666;font-size:12px}
.card.good .value{color:#137333} .card.warn .value{color:#b06000} .card.bad .value{color:#b3261e}
.plots img{max-width:100%;background:#fff;border:1px solid #e3e3e3;border-radius:8px;margin:0 0 10px}
.plots{display:flex;gap:10px;flex-wrap:wrap;align-items:flex-start}
.sheet{display:flex;gap:10px;flex-wrap:wrap} td.num{text-align:right;font-variant-numeric:tabular-nums}
td img{max-width:64px;max-height:64px} .note{color:#666}
.rejected{color:#b06000;font-weight:600}
"""


def fmt(value: float | None, kind: str = "num") -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "rate":
        return f"{value:.3g}/s"
    return f"{value:.3f}"


def _src(prefix: str, uri: str) -> str:
    return escape(quote(prefix + uri, safe="/:"))


def _card(label: str, value: str, tone: str = "") -> str:
    return (
        f'<div class="card {tone}"><div class="value">{escape(value)}</div>'
        f'<div class="label">{escape(label)}</div></div>'
    )


def _tone(rate: float | None, good: float, bad: float) -> str:
    """good/warn/bad colour of a rate; ``good < bad`` means lower is better."""
    if rate is None:
        return ""
    if good < bad:
        return "good" if rate <= good else "bad" if rate >= bad else "warn"
    return "good" if rate >= good else "bad" if rate <= bad else "warn"


def _cards(metrics: RunMetrics) -> str:
    throughput = metrics.throughput
    rate = fmt(throughput.outputs_per_second, "rate")
    cards = [
        _card("outputs", f"{metrics.outputs} ({metrics.items} items)"),
        _card("ok", str(metrics.ok), _tone(share(metrics.ok, metrics.outputs), 0.98, 0.8)),
        _card(
            "product preserved (of ok)",
            fmt(metrics.preservation_rate_ok, "pct"),
            _tone(metrics.preservation_rate_ok, 1.0, 0.999),
        ),
        _card("rejected", fmt(metrics.rejection_rate, "pct"), _tone(metrics.rejection_rate, 0.02, 0.1)),
        _card("errors", fmt(metrics.error_rate, "pct"), _tone(metrics.error_rate, 0.0, 0.05)),
        _card("mask review", fmt(metrics.review_rate, "pct"), _tone(metrics.review_rate, 0.05, 0.2)),
        _card("median expansion", fmt(metrics.expansion.ratio.p50, "pct")),
        _card("median quality", fmt(metrics.scores["quality_score"].p50)),
        _card(f"throughput ({throughput.source or 'unknown'})", rate),
    ]
    reference = metrics.reference
    if reference.fid is not None:
        cards.append(
            _card(
                f"FID ({reference.generated_images} vs {reference.reference_images} images)",
                f"{reference.fid:.3f}",
            )
        )
        cards.append(_card("KID", f"{reference.kid:.4f} ± {reference.kid_std:.4f}"))
    return f'<div class="cards">{"".join(cards)}</div>'


def _group_table(title: str, groups: list[GroupStats], table_id: str) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "name",
            "outputs",
            "ok",
            "ok rate",
            "preserved",
            "mean quality",
            "mean expansion",
            "mean seam",
        )
    )
    body = "".join(
        f"<tr><td>{escape(g.name)}</td><td class='num'>{g.n}</td><td class='num'>{g.ok}</td>"
        f"<td class='num'>{fmt(g.ok_rate, 'pct')}</td><td class='num'>{fmt(g.preserved_rate, 'pct')}</td>"
        f"<td class='num'>{fmt(g.mean_quality)}</td><td class='num'>{fmt(g.mean_expansion, 'pct')}</td>"
        f"<td class='num'>{fmt(g.mean_seam)}</td></tr>"
        for g in groups
    )
    return f"<h2>{escape(title)}</h2><table id='{table_id}'><tr>{head}</tr>{body}</table>"


def _scores_table(metrics: RunMetrics) -> str:
    rows = [("expansion_ratio", metrics.expansion.ratio), *metrics.scores.items()]
    body = "".join(
        f"<tr><td>{escape(name)}{' ↓' if name in LOWER_IS_BETTER else ''}</td><td class='num'>{d.n}</td>"
        + "".join(f"<td class='num'>{fmt(v)}</td>" for v in (d.mean, d.p10, d.p50, d.p90, d.max))
        + "</tr>"
        for name, d in rows
    )
    head = "".join(
        f"<th>{h}</th>" for h in ("figure (↓ lower is better)", "n", "mean", "p10", "p50", "p90", "max")
    )
    return f"<table id='distributions'><tr>{head}</tr>{body}</table>"


def _figure_html(row: dict[str, Any], prefix: str) -> str:
    scores = " · ".join(
        f"{label} {fmt(as_number(row.get(column)))}"
        for label, column in (("quality", "quality_score"), ("clip", "clip_score"), ("seam", "seam_energy"))
        if as_number(row.get(column)) is not None
    )
    expansion = as_number(row.get("expansion_ratio"))
    details = f"{escape(row['item_id'])} · {escape(row.get('style'))} · {escape(row.get('aspect'))}"
    return (
        f'<figure><a href="{_src(prefix, row["output_uri"])}"><img src="{_src(prefix, row["output_uri"])}" '
        f'alt="{escape(row["output_id"])}"></a><figcaption><b>{escape(scores)}</b>'
        f"{'' if expansion is None else f' · expansion {expansion:.1%}'}<br>{details}</figcaption></figure>"
    )


REPORT_COLUMNS = [
    "status",
    "output_id",
    "item_id",
    "output_uri",
    "thumb_uri",
    "style",
    "aspect",
    "error",
    "quality_score",
    "clip_score",
    "seam_energy",
    "expansion_ratio",
]
ISSUES_LISTED = 500


class _Shown:
    """The rows the report shows, picked in one streaming pass: the ``top`` best and worst ok outputs by
    quality score (ties by output id, then row order), and the first failed rows."""

    def __init__(self, top: int, limit: int = ISSUES_LISTED):
        self.top, self.scored, self.failed = top, 0, 0
        self.best, self.worst = Smallest(top), Smallest(top, largest=True)
        self.issues = Smallest(limit)

    def add(self, manifest: Source) -> _Shown:
        for chunk in chunks(manifest, REPORT_COLUMNS):
            table = chunk.table
            ok = is_status(table, OK)
            quality = floats(table, "quality_score")
            uri = pc.fill_null(pc.not_equal(table.column("output_uri"), ""), False).to_numpy(
                zero_copy_only=False
            )
            scored = np.flatnonzero(ok & uri.astype(bool) & np.isfinite(quality))
            self.scored += len(scored)
            for target, largest in ((self.best, True), (self.worst, False)):
                picked = scored[candidates(quality[scored], self.top, largest)]
                rows = table.take(pa.array(picked, pa.int64())).to_pylist()
                for row, order in zip(rows, chunk.orders(picked), strict=True):
                    target.add((-float(row["quality_score"]), str(row["output_id"]), *order), row)
            failed = np.flatnonzero(~ok)
            self.failed += len(failed)
            first = chunk.ranked(failed)[: self.issues.k]
            rows = table.take(pa.array(first, pa.int64())).to_pylist()
            for row, order in zip(rows, chunk.orders(first), strict=True):
                self.issues.add(order, row)
        return self

    def worst_rows(self) -> list[dict[str, Any]]:
        """As ``scored[top:][::-1][:top]`` of all scored rows sorted best first."""
        return self.worst.result()[: max(0, min(self.top, self.scored - self.top))]


def _contact_sheets(shown: _Shown, prefix: str) -> str:
    if not shown.scored:
        return "<h2>Best and worst outputs</h2><p class='note'>No ok output has a quality score.</p>"
    best = shown.best.result()
    worst = shown.worst_rows()
    sections = [f"<h2>Best {len(best)} by quality score</h2><div class='sheet' id='best'>"]
    sections += [_figure_html(r, prefix) for r in best]
    sections.append("</div>")
    if worst:
        sections.append(f"<h2>Worst {len(worst)} by quality score</h2><div class='sheet' id='worst'>")
        sections += [_figure_html(r, prefix) for r in worst]
        sections.append("</div>")
    return "".join(sections)


def _thumb(row: dict[str, Any], prefix: str) -> str:
    uri = row.get("thumb_uri")
    return f'<img src="{_src(prefix, uri)}" alt="original {escape(row["item_id"])}">' if uri else ""


def _issues(shown: _Shown, metrics: RunMetrics, prefix: str) -> str:
    failed, limit = shown.issues.result(), shown.issues.k
    if not failed:
        return "<h2>Rejected and errors</h2><p class='note'>None: every output is ok.</p>"
    reasons = "".join(
        f"<tr><td class='{escape(r.status)}'>{escape(r.status)}</td><td>{escape(r.stage)}</td>"
        f"<td>{escape(r.reason)}</td>"
        f"<td class='num'>{r.count}</td></tr>"
        for r in metrics.top_reasons
    )
    listed = "".join(
        f"<tr><td class='{escape(r['status'])}'>{escape(r['status'])}</td>"
        f"<td>{_thumb(r, prefix)}</td>"
        f"<td>{escape(r['item_id'])}</td><td>{escape(r.get('style'))}</td><td>{escape(r.get('aspect'))}</td>"
        f"<td class='num'>{fmt(as_number(r.get('expansion_ratio')), 'pct')}</td>"
        f"<td>{escape(r.get('error'))}</td></tr>"
        for r in failed[:limit]
    )
    more = (
        f"<p class='note'>… and {shown.failed - limit} more (see the manifest).</p>"
        if shown.failed > limit
        else ""
    )
    return (
        f"<h2>Rejected and errors ({shown.failed})</h2><h3>Top reasons</h3>"
        f"<table id='reasons'><tr><th>status</th><th>stage</th><th>reason</th><th>count</th></tr>"
        f"{reasons}</table><h3>Every row</h3>"
        f"<table id='issues'><tr><th>status</th><th>original</th><th>item</th><th>style</th><th>aspect</th>"
        f"<th>expansion</th><th>reason</th></tr>{listed}</table>{more}"
    )


def render_report(manifest: Source, metrics: RunMetrics, prefix: str, top: int = 12) -> str:
    """``report.html``: cards, plots (``PLOTS`` beside it), tables, best/worst contact sheets, failures.

    ``manifest``: a :class:`~canvas_ray.io.manifest.Manifest` (streamed) or a table. ``prefix`` is the
    relative path from the report's folder to the output root (e.g. ``"../"``).
    """
    shown = _Shown(top).add(manifest)
    reference = metrics.reference
    reference_line = (
        f"FID {reference.fid:.3f}, KID {reference.kid:.4f} ± {reference.kid_std:.4f} "
        f"({reference.generated_images} outputs vs {reference.reference_images} reference images, "
        f"features from {reference.feature_model})"
        if reference.fid is not None and reference.kid is not None and reference.kid_std is not None
        else f"FID / KID: {reference.reason}"
    )
    expansion = metrics.expansion
    attempts = ", ".join(f"{k}: {v}" for k, v in expansion.attempts.items()) or "—"
    fingerprints = ", ".join(metrics.config_fingerprints) or "—"
    evaluated = time.strftime("%Y-%m-%d %H:%M", time.localtime(metrics.evaluated_at))
    plots = "".join(f'<img src="{escape(name)}" alt="{escape(name[:-4])} plot">' for name in PLOTS)
    body = [
        "<h1>canvas-ray evaluation</h1>",
        f"<div class='meta'>{escape(metrics.output)} · config {escape(fingerprints)} · "
        f"evaluated {escape(evaluated)}</div>",
        _cards(metrics),
        f"<p class='note'>Expansion above the {expansion.threshold:.0%} threshold: "
        f"{expansion.above_threshold} of {expansion.ratio.n} generated "
        f"({fmt(expansion.share_above_threshold, 'pct')}). Attempts → outputs: {escape(attempts)}. "
        f"{escape(reference_line)}.</p>",
        f"<h2>Distributions</h2><div class='plots' id='plots'>{plots}</div>",
        _scores_table(metrics),
        _group_table("By style", metrics.by_style, "by-style"),
        _group_table("By category", metrics.by_category, "by-category"),
        _contact_sheets(shown, prefix),
        _issues(shown, metrics, prefix),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>canvas-ray evaluation</title>"
        f"<style>{CSS}{_EVAL_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
