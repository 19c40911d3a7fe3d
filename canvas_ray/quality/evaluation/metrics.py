"""Run metrics from a manifest: counts, rates, distributions, per-group tables, throughput.

Computed in one pass over the manifest in bounded memory (:mod:`.stream`), whatever its size.

Scores and stage times are taken over ok rows (what ships); expansion and attempts over ok and
rejected rows (everything that was generated and measured). ``metrics.json`` is :class:`RunMetrics`.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from canvas_ray.quality.evaluation.stream import (
    Chunk,
    Figure,
    FirstSeenCounter,
    Source,
    Sum,
    chunks,
    floats,
    is_status,
    numbers,
)
from canvas_ray.rows import ERROR, OK, REJECTED, REVIEW
from canvas_ray.schema import SCORE_COLUMNS, TIMING_COLUMNS

LOWER_IS_BETTER = frozenset({"seam_energy", "expansion_ratio"})
STAGE_COLUMNS = TIMING_COLUMNS
GENERATED = (OK, REJECTED)  # rows whose expansion and attempts describe a generated image
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class Distribution:
    """Summary statistics of one column (``None`` everywhere when no row has a value)."""

    n: int
    mean: float | None = None
    min: float | None = None
    p10: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None


@dataclass
class ExpansionStats:
    """Object expansion over the generated (ok and rejected) rows; ratio = grown area / product area."""

    threshold: float
    ratio: Distribution
    px: Distribution
    above_threshold: int
    share_above_threshold: float | None
    attempts: dict[str, int]  # generations used → outputs


@dataclass
class GroupStats:
    """One row of the per-style or per-category table."""

    name: str
    n: int
    ok: int
    ok_rate: float
    preserved_rate: float | None  # preserved / ok
    mean_quality: float | None
    mean_expansion: float | None
    mean_seam: float | None


@dataclass
class ReasonCount:
    """A failure reason (numbers masked so that similar reasons group) and how often it occurred."""

    status: str
    stage: str
    reason: str
    count: int
    example: str


@dataclass
class Throughput:
    outputs_per_second: float | None
    seconds: float | None
    source: str | None  # "summary.json" (the last run) or "finished_at" (span of the manifest's rows)
    stage_mean_s: dict[str, float | None]  # per ok output


@dataclass
class ReferenceMetrics:
    """FID and KID between ok outputs and a reference set; ``reason`` says why they are null."""

    fid: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    generated_images: int = 0
    reference_images: int = 0
    reference: str | None = None
    feature_model: str | None = None
    reason: str | None = "not configured: pass --reference and --feature-model"


@dataclass
class RunMetrics:
    """Everything ``metrics.json`` holds. Rates are shares in [0, 1]; ``None`` when undefined."""

    output: str
    outputs: int
    items: int
    status_counts: dict[str, int]
    ok: int
    rejected: int
    errors: int
    preserved: int
    preservation_rate_ok: float | None
    preservation_rate_all: float | None
    rejection_rate: float | None
    error_rate: float | None
    top_reasons: list[ReasonCount]
    expansion: ExpansionStats
    scores: dict[str, Distribution]
    by_style: list[GroupStats]
    by_category: list[GroupStats]
    throughput: Throughput
    reference: ReferenceMetrics
    config_fingerprints: list[str]
    evaluated_at: float = field(default_factory=time.time)
    # mask trust: `review` rows (mask_confidence below segment.min_confidence) are generated, never ok
    review: int = 0
    review_rate: float | None = None
    mask_confidence: Distribution = field(default_factory=lambda: Distribution(n=0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def distribution(values: Sequence[float]) -> Distribution:
    if not values:
        return Distribution(n=0)
    array = np.asarray(values, dtype=np.float64)
    p10, p50, p90, p99 = (float(v) for v in np.percentile(array, [10, 50, 90, 99]))
    return Distribution(
        n=len(array),
        mean=float(array.mean()),
        min=float(array.min()),
        p10=p10,
        p50=p50,
        p90=p90,
        p99=p99,
        max=float(array.max()),
    )


def figure_distribution(figure: Figure) -> Distribution:
    """:func:`distribution` of a streamed column."""
    if not figure.n:
        return Distribution(n=0)
    p10, p50, p90, p99 = figure.percentiles([10, 50, 90, 99])
    return Distribution(
        n=figure.n,
        mean=figure.sum.mean(),
        min=figure.low,
        p10=p10,
        p50=p50,
        p90=p90,
        p99=p99,
        max=figure.high,
    )


METRIC_COLUMNS = [
    "item_id",
    "status",
    "error",
    "style",
    "category",
    "product_preserved",
    "expansion_ratio",
    "expansion_px",
    "attempts",
    *SCORE_COLUMNS,
    *STAGE_COLUMNS,
    "config_fingerprint",
    "finished_at",
    "mask_confidence",
]


class _Group:
    """One row of a per-group table, accumulated over a stream."""

    def __init__(self) -> None:
        self.n = self.ok = self.preserved = 0
        self.quality, self.expansion, self.seam = Sum(), Sum(), Sum()

    def stats(self, name: str) -> GroupStats:
        return GroupStats(
            name=name,
            n=self.n,
            ok=self.ok,
            ok_rate=self.ok / self.n,
            preserved_rate=share(self.preserved, self.ok),
            mean_quality=self.quality.mean(),
            mean_expansion=self.expansion.mean(),
            mean_seam=self.seam.mean(),
        )


def _add_groups(
    groups: dict[str, _Group], table: pa.Table, column: str, masks: dict[str, np.ndarray]
) -> None:
    """Per value of ``column`` (``(none)`` for null or empty): counts and the sums of the group means."""
    values = pc.cast(table.column(column), pa.string())
    names = pc.if_else(pc.fill_null(pc.equal(values, ""), True), "(none)", values)
    encoded = pc.dictionary_encode(names).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.diff(codes[order], prepend=-1))
    quality, expansion, seam = (floats(table, c) for c in ("quality_score", "expansion_ratio", "seam_energy"))
    dictionary = encoded.dictionary.to_pylist()
    for rows in np.split(order, starts[1:]):
        name = dictionary[codes[rows[0]]]
        ok, generated = masks["ok"][rows], masks["generated"][rows]
        group = groups.setdefault(str(name), _Group())
        group.n += len(rows)
        group.ok += int(ok.sum())
        group.preserved += int(masks["preserved"][rows].sum())
        for target, array, mask in (
            (group.quality, quality, ok),
            (group.expansion, expansion, generated),
            (group.seam, seam, ok),
        ):
            picked = array[rows][mask]
            target.add(picked[np.isfinite(picked)])


def _add_reasons(reasons: FirstSeenCounter, chunk: Chunk, failed: np.ndarray) -> None:
    """Failure reasons (numbers masked so that similar reasons group) of the rows ``failed``."""
    indices = chunk.ranked(np.flatnonzero(failed))  # in order, so the first row of a reason comes first
    table = chunk.table.take(pa.array(indices, pa.int64()))
    seen: dict[tuple[Any, Any], list[int]] = {}  # (status, error) → [count, first position]
    for position, pair in enumerate(
        zip(table.column("status").to_pylist(), table.column("error").to_pylist(), strict=True)
    ):
        entry = seen.setdefault(pair, [0, position])
        entry[0] += 1
    firsts = chunk.orders([indices[first] for _, first in seen.values()])
    for ((status, error), (count, _)), order in zip(seen.items(), firsts, strict=True):
        text = (error or "").strip() or "unknown"
        stage = text.split(":", 1)[0].strip() if ":" in text else "unknown"
        reasons.add((str(status), stage, _NUMBER_RE.sub("#", text)[:200]), count, order, text[:500])


def _top_reasons(reasons: FirstSeenCounter, limit: int = 10) -> list[ReasonCount]:
    return [
        ReasonCount(status=key[0], stage=key[1], reason=key[2], count=count, example=reasons.example(key))
        for key, count in reasons.most_common(limit)
    ]


def compute_metrics(
    manifest: Source,
    output: str,
    summary: dict[str, Any] | None = None,
    expansion_threshold: float = 0.15,
    reference: ReferenceMetrics | None = None,
) -> RunMetrics:
    """Counts, rates, distributions, per-group tables and throughput of one manifest, in one streaming
    pass (``manifest``: a :class:`~canvas_ray.io.manifest.Manifest`, or a table already in memory).

    Scores and stage times are taken over ok rows (what ships); expansion and attempts over ok and
    rejected rows (everything that was generated and measured). Null and NaN values are skipped.
    """
    statuses = FirstSeenCounter()
    reasons = FirstSeenCounter()
    rows = items = preserved = above = 0
    bucket: int | None = None
    bucket_items: set[Any] = set()  # items are counted per manifest bucket (an item is in one)
    attempts: Counter[int] = Counter()
    ratio, px, confidence = Figure(seed=1), Figure(seed=2), Figure(seed=3)
    scores = {column: Figure(seed=10 + n) for n, column in enumerate(SCORE_COLUMNS)}
    stages = {column: Sum() for column in STAGE_COLUMNS}
    finished = Figure(exact=0)
    fingerprints: set[str] = set()
    by_style: dict[str, _Group] = {}
    by_category: dict[str, _Group] = {}
    for chunk in chunks(manifest, METRIC_COLUMNS):
        table = chunk.table
        rows += table.num_rows
        if chunk.bucket != bucket:
            items, bucket, bucket_items = items + len(bucket_items), chunk.bucket, set()
        bucket_items.update(pc.unique(table.column("item_id")).to_pylist())
        status = table.column("status")
        for entry in pc.value_counts(status).to_pylist():
            value = entry["values"]
            found = pc.is_null(status) if value is None else pc.fill_null(pc.equal(status, value), False)
            first = chunk.first(found.to_numpy(zero_copy_only=False).astype(bool))
            statuses.add(str(value), entry["counts"], chunk.orders([first])[0])
        ok, generated = is_status(table, OK), is_status(table, *GENERATED)
        kept = pc.fill_null(table.column("product_preserved"), False).to_numpy(zero_copy_only=False)
        masks = {"ok": ok, "generated": generated, "preserved": ok & kept.astype(bool)}
        preserved += int(masks["preserved"].sum())
        ratios = numbers(table, "expansion_ratio", generated)
        ratio.add(ratios)
        above += int((ratios > expansion_threshold).sum())
        px.add(numbers(table, "expansion_px", generated))
        tried, times = np.unique(numbers(table, "attempts", generated).astype(np.int64), return_counts=True)
        attempts.update({int(k): int(c) for k, c in zip(tried, times, strict=True)})
        for column, figure in scores.items():
            figure.add(numbers(table, column, ok))
        for column, total in stages.items():
            total.add(numbers(table, column, ok))
        finished.add(numbers(table, "finished_at"))
        confidence.add(numbers(table, "mask_confidence"))
        fingerprints.update(str(v) for v in pc.unique(table.column("config_fingerprint")).to_pylist() if v)
        _add_groups(by_style, table, "style", masks)
        _add_groups(by_category, table, "category", masks)
        if not ok.all():
            _add_reasons(reasons, chunk, ~ok)
    items += len(bucket_items)
    counts = dict(statuses.most_common())
    ok_rows, rejected, errors, review = (counts.get(s, 0) for s in (OK, REJECTED, ERROR, REVIEW))
    return RunMetrics(
        output=output,
        outputs=rows,
        items=items,
        status_counts=counts,
        ok=ok_rows,
        rejected=rejected,
        errors=errors,
        preserved=preserved,
        preservation_rate_ok=share(preserved, ok_rows),
        preservation_rate_all=share(preserved, rows),
        rejection_rate=share(rejected, rows),
        error_rate=share(errors, rows),
        top_reasons=_top_reasons(reasons),
        expansion=ExpansionStats(
            threshold=expansion_threshold,
            ratio=figure_distribution(ratio),
            px=figure_distribution(px),
            above_threshold=above,
            share_above_threshold=share(above, ratio.n),
            attempts={str(k): attempts[k] for k in sorted(attempts)},
        ),
        scores={column: figure_distribution(figure) for column, figure in scores.items()},
        by_style=_sorted_groups(by_style),
        by_category=_sorted_groups(by_category),
        throughput=_throughput(
            {c.removesuffix("_s"): s.mean() for c, s in stages.items()}, finished, summary
        ),
        reference=reference or ReferenceMetrics(),
        config_fingerprints=sorted(fingerprints),
        review=review,
        review_rate=share(review, rows),
        mask_confidence=figure_distribution(confidence),
    )


def _sorted_groups(groups: dict[str, _Group]) -> list[GroupStats]:
    return sorted((group.stats(name) for name, group in groups.items()), key=lambda g: (-g.n, g.name))


def _throughput(
    stages: dict[str, float | None], finished: Figure, summary: dict[str, Any] | None
) -> Throughput:
    summary = summary or {}
    rate = as_number(summary.get("outputs_per_second"))
    if rate is not None:
        return Throughput(rate, as_number(summary.get("seconds")), "summary.json", stages)
    span = finished.high - finished.low if finished.n > 1 else 0.0
    if span > 0:  # outputs finished after the first one, over the time they took
        return Throughput((finished.n - 1) / span, span, "finished_at", stages)
    return Throughput(None, None, None, stages)
