"""Figures of the compacted manifest, streamed once in bounded memory: :func:`summarise` (the run's
``summary.json`` counts) and :func:`export` (one consolidated Parquet file).

:class:`Reservoir` (a fixed-size uniform sample of a stream of numbers) gives medians and percentiles of
millions of rows; evaluation (:mod:`canvas_ray.quality.evaluation`) uses it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from canvas_ray.schema import DELIVERED, MANIFEST_SCHEMA, TIMING_COLUMNS, Status, split_error

if TYPE_CHECKING:
    from canvas_ray.io.manifest import Manifest


class Reservoir:
    """A fixed-size uniform sample of a stream of numbers (for medians of millions of rows).

    Holds every value while fewer than ``size`` have been seen (percentiles are then exact), and its
    memory grows with the values held, up to ``size`` floats."""

    def __init__(self, size: int = 100_000, seed: int = 0):
        self.size, self.seen, self.values = size, 0, np.empty(0)
        self.random = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        room = max(0, min(self.size - self.seen, len(values)))
        if self.seen + room > len(self.values):
            grown = np.empty(min(self.size, max(self.seen + room, 2 * len(self.values))))
            grown[: self.seen] = self.values[: self.seen]
            self.values = grown
        self.values[self.seen : self.seen + room] = values[:room]
        rest = values[room:]
        if len(rest):  # algorithm R, vectorised: value t replaces a random slot with chance size / (t + 1)
            positions = self.seen + room + np.arange(len(rest))
            slots = self.random.integers(0, positions + 1)
            chosen = slots < self.size
            self.values[slots[chosen]] = rest[chosen]
        self.seen += len(values)

    def sample(self) -> np.ndarray:
        """The values held: all of them while ``seen <= size``, else a uniform sample of ``size``."""
        return self.values[: min(self.seen, self.size)]

    def median(self) -> float | None:
        count = min(self.seen, self.size)
        return round(float(np.median(self.values[:count])), 4) if count else None


def summarise(manifest: Manifest) -> dict[str, Any]:
    """Counts and figures of the compacted manifest, by streaming its files once."""
    columns = [
        "item_id",
        "status",
        "error",
        "error_stage",
        "product_preserved",
        "expansion_ratio",
        "quality_score",
        *TIMING_COLUMNS,
    ]
    optional = [c for c in ("mask_confidence",) if c in MANIFEST_SCHEMA.names]
    columns += optional + ["profile", "compliant"]
    by_profile: dict[str, dict[str, int]] = {}
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    sums = dict.fromkeys(TIMING_COLUMNS, 0.0)
    sum_counts = dict.fromkeys(TIMING_COLUMNS, 0)
    preserved = 0
    expansion, quality, confidence = Reservoir(), Reservoir(seed=1), Reservoir(seed=2)
    expansion_max: float | None = None
    rows = 0
    for batch in manifest.iter_batches(columns):
        rows += batch.num_rows
        table = pa.Table.from_batches([batch])
        for entry in pc.value_counts(table.column("status")).to_pylist():
            counts[entry["values"]] = counts.get(entry["values"], 0) + entry["counts"]
        ok = table.filter(pc.equal(table.column("status"), "ok"))
        preserved += int(
            pc.sum(pc.cast(pc.fill_null(ok.column("product_preserved"), False), pa.int64())).as_py() or 0
        )
        for column in TIMING_COLUMNS:
            values = ok.column(column).drop_null()
            sums[column] += float(pc.sum(values).as_py() or 0.0)
            sum_counts[column] += len(values)
        values = ok.column("expansion_ratio").drop_null().to_numpy()
        expansion.add(values)
        if len(values):
            expansion_max = max(expansion_max or 0.0, float(values.max()))
        quality.add(ok.column("quality_score").drop_null().to_numpy())
        if optional:
            confidence.add(table.column("mask_confidence").drop_null().to_numpy())
        _count_profiles(table, by_profile)
        bad = table.filter(pc.not_equal(table.column("status"), "ok"))
        for entry in pc.value_counts(bad.column("error_stage")).to_pylist():
            if entry["values"] is not None:
                reasons[entry["values"]] = reasons.get(entry["values"], 0) + entry["counts"]
        legacy = bad.filter(pc.is_null(bad.column("error_stage")))  # rows written before error_stage
        for error in legacy.column("error").to_pylist():
            stage = split_error(error or "")[0] or "unknown"
            reasons[stage] = reasons.get(stage, 0) + 1
    summary: dict[str, Any] = {
        "outputs": rows,
        "ok": counts.get("ok", 0),
        "review": counts.get("review", 0),
        "rejected": counts.get("rejected", 0),
        "errors": rows - counts.get("ok", 0) - counts.get("review", 0) - counts.get("rejected", 0),
        "errors_by_stage": dict(sorted(reasons.items())),
        "expansion_ratio_p50": expansion.median(),
        "expansion_ratio_max": round(expansion_max, 4) if expansion_max is not None else None,
        "quality_score_p50": quality.median(),
        "mask_confidence_p50": confidence.median() if optional else None,
        "product_preserved": preserved,
        "mean_stage_seconds_per_output": {
            c.removesuffix("_s"): round(sums[c] / sum_counts[c], 4) if sum_counts[c] else None
            for c in TIMING_COLUMNS
        },
        "profiles": dict(sorted(by_profile.items())),
    }
    return summary


def _count_profiles(table: pa.Table, by_profile: dict[str, dict[str, int]]) -> None:
    """Per output profile: outputs, statuses, and how many were checked compliant / not compliant."""
    profiled = table.filter(pc.fill_null(pc.not_equal(table.column("profile"), ""), False))
    if not profiled.num_rows:
        return
    compliant = pc.cast(profiled.column("compliant"), pa.string())
    keyed = pa.table(
        {
            "profile": profiled.column("profile"),
            "status": profiled.column("status"),
            "compliant": pc.fill_null(compliant, "unchecked"),
        }
    )
    for row in (
        keyed.group_by(["profile", "status", "compliant"]).aggregate([("status", "count")]).to_pylist()
    ):
        entry = by_profile.setdefault(
            row["profile"],
            {
                "outputs": 0,
                "ok": 0,
                "review": 0,
                "rejected": 0,
                "errors": 0,
                "compliant": 0,
                "not_compliant": 0,
            },
        )
        n = int(row["status_count"])
        entry["outputs"] += n
        status = row["status"] if row["status"] in (*DELIVERED, Status.REJECTED.value) else "errors"
        entry[status] += n
        if row["compliant"] == "true":
            entry["compliant"] += n
        elif row["compliant"] == "false":
            entry["not_compliant"] += n


def export(manifest: Manifest, destination: str, storage_options: dict[str, Any] | None = None) -> int:
    """Write the manifest as one consolidated Parquet file (streamed, bounded memory); returns rows."""
    rows = 0
    with fsspec.open(destination, "wb", **(storage_options or {})) as handle:
        writer = pq.ParquetWriter(handle, MANIFEST_SCHEMA, compression="zstd")
        for batch in manifest.iter_batches(list(MANIFEST_SCHEMA.names)):
            writer.write_batch(batch)
            rows += batch.num_rows
        writer.close()
    return rows
