"""Run metrics from a manifest: counts, rates, distributions, per-group tables, throughput.

Scores and stage times are taken over ok rows (what ships); expansion and attempts over ok and
rejected rows (everything that was generated and measured). ``metrics.json`` is :class:`RunMetrics`.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from canvas_ray.schema import SCORE_COLUMNS, TIMING_COLUMNS
from canvas_ray.stages.base import ERROR, OK, REJECTED, REVIEW

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


def manifest_rows(manifest: pa.Table) -> list[dict[str, Any]]:
    """The manifest as dicts, without the columns evaluation never reads (prompts, captions: the bulk)."""
    skip = {"prompt", "negative_prompt", "caption", "title", "image_uri", "mask_uri", "placement"}
    return manifest.select([name for name in manifest.column_names if name not in skip]).to_pylist()


def as_number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def values_of(rows: Iterable[dict[str, Any]], column: str) -> list[float]:
    return [v for v in (as_number(row.get(column)) for row in rows) if v is not None]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


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


def _reasons(rows: list[dict[str, Any]], limit: int = 10) -> list[ReasonCount]:
    counts: Counter[tuple[str, str, str]] = Counter()
    examples: dict[tuple[str, str, str], str] = {}
    for row in rows:
        text = (row.get("error") or "").strip() or "unknown"
        stage = text.split(":", 1)[0].strip() if ":" in text else "unknown"
        key = (str(row["status"]), stage, _NUMBER_RE.sub("#", text)[:200])
        counts[key] += 1
        examples.setdefault(key, text[:500])
    return [
        ReasonCount(status=key[0], stage=key[1], reason=key[2], count=count, example=examples[key])
        for key, count in counts.most_common(limit)
    ]


def _groups(rows: list[dict[str, Any]], column: str) -> list[GroupStats]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get(column) or "(none)"), []).append(row)
    table = []
    for name, members in groups.items():
        ok = [r for r in members if r["status"] == OK]
        table.append(
            GroupStats(
                name=name,
                n=len(members),
                ok=len(ok),
                ok_rate=len(ok) / len(members),
                preserved_rate=share(sum(r.get("product_preserved") is True for r in ok), len(ok)),
                mean_quality=_mean(values_of(ok, "quality_score")),
                mean_expansion=_mean(
                    values_of((r for r in members if r["status"] in GENERATED), "expansion_ratio")
                ),
                mean_seam=_mean(values_of(ok, "seam_energy")),
            )
        )
    return sorted(table, key=lambda g: (-g.n, g.name))


def _throughput(rows: list[dict[str, Any]], summary: dict[str, Any] | None) -> Throughput:
    ok = [r for r in rows if r["status"] == OK]
    stages = {column.removesuffix("_s"): _mean(values_of(ok, column)) for column in STAGE_COLUMNS}
    summary = summary or {}
    rate = as_number(summary.get("outputs_per_second"))
    if rate is not None:
        return Throughput(rate, as_number(summary.get("seconds")), "summary.json", stages)
    finished = sorted(values_of(rows, "finished_at"))
    span = finished[-1] - finished[0] if len(finished) > 1 else 0.0
    if span > 0:  # outputs finished after the first one, over the time they took
        return Throughput((len(finished) - 1) / span, span, "finished_at", stages)
    return Throughput(None, None, None, stages)


def compute_metrics(
    manifest: pa.Table,
    output: str,
    summary: dict[str, Any] | None = None,
    expansion_threshold: float = 0.15,
    reference: ReferenceMetrics | None = None,
) -> RunMetrics:
    """Counts, rates, distributions, per-group tables and throughput of one manifest.

    Scores and stage times are taken over ok rows (what ships); expansion and attempts over ok and
    rejected rows (everything that was generated and measured). Null and NaN values are skipped.
    """
    rows = manifest_rows(manifest)
    statuses = Counter(str(r["status"]) for r in rows)
    ok = [r for r in rows if r["status"] == OK]
    generated = [r for r in rows if r["status"] in GENERATED]
    preserved = sum(r.get("product_preserved") is True for r in ok)
    ratios = values_of(generated, "expansion_ratio")
    above = sum(v > expansion_threshold for v in ratios)
    attempts = Counter(int(v) for v in values_of(generated, "attempts"))
    return RunMetrics(
        output=output,
        outputs=len(rows),
        items=len({r["item_id"] for r in rows}),
        status_counts=dict(statuses.most_common()),
        ok=len(ok),
        rejected=statuses[REJECTED],
        errors=statuses[ERROR],
        preserved=preserved,
        preservation_rate_ok=share(preserved, len(ok)),
        preservation_rate_all=share(preserved, len(rows)),
        rejection_rate=share(statuses[REJECTED], len(rows)),
        error_rate=share(statuses[ERROR], len(rows)),
        top_reasons=_reasons([r for r in rows if r["status"] != OK]),
        expansion=ExpansionStats(
            threshold=expansion_threshold,
            ratio=distribution(ratios),
            px=distribution(values_of(generated, "expansion_px")),
            above_threshold=above,
            share_above_threshold=share(above, len(ratios)),
            attempts={str(k): attempts[k] for k in sorted(attempts)},
        ),
        scores={column: distribution(values_of(ok, column)) for column in SCORE_COLUMNS},
        by_style=_groups(rows, "style"),
        by_category=_groups(rows, "category"),
        throughput=_throughput(rows, summary),
        reference=reference or ReferenceMetrics(),
        config_fingerprints=sorted(
            {str(r["config_fingerprint"]) for r in rows if r.get("config_fingerprint")}
        ),
        review=statuses[REVIEW],
        review_rate=share(statuses[REVIEW], len(rows)),
        mask_confidence=distribution(values_of(rows, "mask_confidence")),
    )
