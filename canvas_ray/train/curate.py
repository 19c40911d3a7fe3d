"""Curation: pick the best-engaging catalog images per category for fine-tuning, without duplicates.

Engagement rate. A raw ratio ``(saves + clicks) / impressions`` ranks an item with 3 interactions in 5
impressions above one with 900 in 10,000. We rank by the **Wilson score lower bound** of that ratio at
``confidence`` instead: the rate we can be ``confidence``-sure the item at least reaches. Small samples are
pulled down, large samples keep almost their raw rate, and it is defined for 0 interactions (0.0).
Interactions above impressions (saves and clicks of one view both count) are capped at impressions.

Rules, in order:

1. rows the catalog marked as errors, and rows with ``impressions < min_impressions`` (or missing counts),
   are not eligible (the reason is recorded);
2. each eligible image is fetched and decoded; unreadable images are excluded with the reason;
3. all remaining rows are ranked by (rate desc, item_id asc), deterministic under ties; walking that
   order, a row whose image bytes equal (sha256) a kept row's, or whose 64-bit dHash is within
   ``near_distance`` bits of a kept row's, is dropped as a duplicate of that (higher-ranked) row;
4. per category (empty category = ``uncategorised``), the top ``ceil(top_share * n)`` rows of what is
   left, at least one, are selected.

Outputs under ``output``: ``curated.parquet`` and ``curated.jsonl`` (selected rows with ``engagement``,
``rank``), ``decisions.jsonl`` (every row with its decision and reason), ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from canvas_ray.config import LimitsConfig
from canvas_ray.io.catalog import read_catalog
from canvas_ray.io.images import decode_image
from canvas_ray.rows import describe
from canvas_ray.stages.decode import read_bytes

UNCATEGORISED = "uncategorised"


@dataclass(frozen=True)
class CurateOptions:
    top_share: float = 0.5
    min_impressions: int = 100
    confidence: float = 0.95
    near_distance: int = 6

    def __post_init__(self) -> None:
        if not 0 < self.top_share <= 1:
            raise ValueError(f"top_share must be in (0, 1], got {self.top_share}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.min_impressions < 0 or not 0 <= self.near_distance <= 64:
            raise ValueError("min_impressions must be >= 0 and near_distance in 0..64")


def wilson_lower_bound(successes: int, trials: int, confidence: float = 0.95) -> float:
    """Lower end of the Wilson score interval of ``successes / trials`` (0.0 when ``trials`` is 0)."""
    if trials <= 0:
        return 0.0
    k = min(max(successes, 0), trials)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / trials
    z2 = z * z
    centre = p + z2 / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - spread) / (1 + z2 / trials))


def dhash(image: np.ndarray, size: int = 8) -> int:
    """64-bit difference hash: grey, resized to (size+1) x size, one bit per horizontal gradient sign."""
    grey = Image.fromarray(np.ascontiguousarray(image[..., :3])).convert("L")
    small = np.asarray(grey.resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def curate(
    catalog: str,
    output: str | Path,
    options: CurateOptions | None = None,
    limits: LimitsConfig | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the rules above; write the outputs; return the report (also in ``report.json``)."""
    options = options or CurateOptions()
    limits = limits or LimitsConfig()
    table = read_catalog(catalog, storage_options).table
    rows = table.to_pylist()
    decisions: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    for row in rows:
        impressions = row.get("impressions")
        interactions = (row.get("saves") or 0) + (row.get("clicks") or 0)
        rate = wilson_lower_bound(interactions, impressions or 0, options.confidence)
        record = {**row, "category": row.get("category") or UNCATEGORISED, "engagement": rate}
        record["raw_rate"] = interactions / impressions if impressions else 0.0
        if row["status"] != "ok":
            record.update(decision="excluded", reason=row["error"])
        elif impressions is None or impressions < options.min_impressions:
            record.update(
                decision="ineligible",
                reason=f"impressions {impressions} < min_impressions {options.min_impressions}",
            )
        else:
            try:
                data = read_bytes(row["image_uri"], limits, storage_options)
                image = decode_image(
                    data, max_bytes=limits.max_image_bytes, max_pixels=limits.max_pixels, min_side=8
                )
                record["sha256"] = hashlib.sha256(data).hexdigest()
                record["dhash"] = dhash(image)
                candidates.append(record)
                continue
            except Exception as error:  # noqa: BLE001 - a bad image is an excluded row, not a crash
                record.update(decision="excluded", reason=f"image: {describe(error)}")
        decisions.append(record)

    candidates.sort(key=lambda r: (-r["engagement"], r["item_id"]))
    kept: list[dict[str, Any]] = []
    by_sha: dict[str, str] = {}
    for record in candidates:
        if record["sha256"] in by_sha:
            record.update(decision="duplicate", reason=f"exact duplicate of {by_sha[record['sha256']]}")
        else:
            near = next(
                (k for k in kept if hamming(k["dhash"], record["dhash"]) <= options.near_distance), None
            )
            if near is not None:
                distance = hamming(near["dhash"], record["dhash"])
                record.update(
                    decision="duplicate", reason=f"near duplicate of {near['item_id']} (dhash {distance})"
                )
            else:
                by_sha[record["sha256"]] = record["item_id"]
                kept.append(record)
                continue
        decisions.append(record)

    per_category: dict[str, list[dict[str, Any]]] = {}
    for record in kept:  # still in (rate desc, item_id) order
        per_category.setdefault(record["category"], []).append(record)
    selected: list[dict[str, Any]] = []
    for category, members in per_category.items():
        quota = max(1, math.ceil(options.top_share * len(members) - 1e-9))
        for rank, record in enumerate(members, start=1):
            record["rank"] = rank
            if rank <= quota:
                record.update(decision="selected", reason="")
                selected.append(record)
            else:
                record.update(
                    decision="not_top", reason=f"rank {rank} of {len(members)} in {category}; quota {quota}"
                )
            decisions.append(record)
    selected.sort(key=lambda r: (r["category"], r["rank"]))
    return _write_outputs(Path(output), catalog, options, rows, decisions, selected)


def _write_outputs(
    out: Path,
    catalog: str,
    options: CurateOptions,
    rows: list[dict[str, Any]],
    decisions: list[dict[str, Any]],
    selected: list[dict[str, Any]],
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    columns = [c for c in rows[0] if c not in ("status", "error")] if rows else ["item_id", "image_uri"]
    curated = [
        {**{c: r.get(c) for c in columns}, "engagement": r["engagement"], "rank": r["rank"]} for r in selected
    ]
    schema = pa.schema(
        [(c, pa.int64() if c in ("impressions", "saves", "clicks") else pa.string()) for c in columns]
        + [("engagement", pa.float64()), ("rank", pa.int64())]
    )
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(curated, schema=schema), buffer)
    _write_atomic(out / "curated.parquet", buffer.getvalue())
    _write_atomic(out / "curated.jsonl", "".join(json.dumps(r) + "\n" for r in curated).encode())
    keys = ("item_id", "category", "impressions", "saves", "clicks", "engagement", "decision", "reason")
    ordered = sorted(decisions, key=lambda r: r["item_id"])
    lines = "".join(json.dumps({k: r.get(k) for k in keys}) + "\n" for r in ordered)
    _write_atomic(out / "decisions.jsonl", lines.encode())

    counts: dict[str, int] = {}
    for r in decisions:
        counts[r["decision"]] = counts.get(r["decision"], 0) + 1
    categories: dict[str, dict[str, int]] = {}
    for r in decisions:
        cat = categories.setdefault(r["category"], {"rows": 0, "eligible": 0, "duplicates": 0, "selected": 0})
        cat["rows"] += 1
        cat["eligible"] += r["decision"] in ("selected", "not_top", "duplicate")
        cat["duplicates"] += r["decision"] == "duplicate"
        cat["selected"] += r["decision"] == "selected"
    report = {
        "catalog": catalog,
        "rate": "wilson lower bound of (saves + clicks) / impressions",
        "thresholds": {
            "top_share": options.top_share,
            "min_impressions": options.min_impressions,
            "confidence": options.confidence,
            "near_duplicate_max_dhash_distance": options.near_distance,
        },
        "counts": {"rows": len(rows), **{k: counts.get(k, 0) for k in _DECISIONS}},
        "categories": dict(sorted(categories.items())),
        "selected": [r["item_id"] for r in selected],
        "excluded": {r["item_id"]: r["reason"] for r in ordered if r["decision"] != "selected"},
    }
    _write_atomic(out / "report.json", json.dumps(report, indent=2).encode())
    _write_atomic(out / "report.md", _markdown(report).encode())
    return report


_DECISIONS = ("selected", "not_top", "duplicate", "ineligible", "excluded")


def _markdown(report: dict[str, Any]) -> str:
    t = report["thresholds"]
    lines = [
        "# Curation report",
        "",
        f"Catalog: `{report['catalog']}`",
        "",
        f"Rate: {report['rate']} at confidence {t['confidence']}; min impressions {t['min_impressions']}; "
        f"top share {t['top_share']} per category; near duplicates at dHash distance <= "
        f"{t['near_duplicate_max_dhash_distance']}.",
        "",
        "| " + " | ".join(report["counts"]) + " |",
        "|" + "---|" * len(report["counts"]),
        "| " + " | ".join(str(v) for v in report["counts"].values()) + " |",
        "",
        "| category | rows | eligible | duplicates | selected |",
        "|---|---|---|---|---|",
    ]
    for name, c in report["categories"].items():
        lines.append(f"| {name} | {c['rows']} | {c['eligible']} | {c['duplicates']} | {c['selected']} |")
    if report["excluded"]:
        lines += ["", "## Not selected", ""]
        lines += [f"- `{item}`: {reason}" for item, reason in report["excluded"].items()]
    return "\n".join(lines) + "\n"
