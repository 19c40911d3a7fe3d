"""What a request's finished rows say back to the caller: an HTTP error when no output was delivered
(422 for an input we cannot use, 500 for a failure of ours), and the ``Server-Timing`` header (where the
request's time went inside the ingress, model hand-offs included)."""

from __future__ import annotations

import time

import numpy as np

from canvas_ray.rows import Batch
from canvas_ray.schema import DELIVERED, split_error
from canvas_ray.spec import StageName, input_error_stages, runs_per_item, timing_columns
from serve.errors import ApiError

# Error stages whose rows mean "this input cannot be used" (422) rather than a failure of ours (500): the
# pipeline spec's input-error policy (StageSpec.input_errors).
INPUT_STAGES = input_error_stages()


def raise_for_input(batch: Batch) -> None:
    """422 when every row failed because of the input; 500 when it failed in generation."""
    statuses = list(batch["status"])
    if any(s in DELIVERED for s in statuses):
        return
    reason = str(batch["error"][0]) if statuses else "no output"
    stage = split_error(reason)[0] or ""
    if stage in INPUT_STAGES:
        code = {"prompt": "invalid_request", "profile": "invalid_request", "compliance": "not_compliant"}
        raise ApiError(422, code.get(stage, "invalid_image"), reason)
    raise ApiError(500, "generation_failed", reason)


def inside_seconds(batch: Batch, stage: StageName) -> float:
    """Seconds this request's rows spent inside ``stage`` (its ``*_s`` columns, shared per row; a stage
    that runs before Prompt's expansion counts once per item, not once per output it was copied to)."""
    columns = [np.asarray(batch[c], dtype=np.float64) for c in timing_columns(stage) if c in batch]
    if columns and runs_per_item(stage) and "item_id" in batch:
        _, first = np.unique(np.asarray(batch["item_id"]).astype(str), return_index=True)
        columns = [column[first] for column in columns]
    return float(sum(np.nansum(c) for c in columns))


def server_timing(spent: dict[str, float], started: float) -> str:
    """A ``Server-Timing`` header (milliseconds): where the request's time went inside the ingress
    (waiting for a slot, parse, each stage, encode) and its total there. A model stage's entry is its round
    trip to the deployment; ``<stage>.inside`` is the part spent inside the stage, so the difference is
    the hand-off (pickling, the object store, batching waits). The client's latency minus ``total`` is
    the HTTP proxy and the network."""
    parts = [f"{name};dur={1000 * seconds:.2f}" for name, seconds in spent.items()]
    return ", ".join([*parts, f"total;dur={1000 * (time.perf_counter() - started):.2f}"])


def parse_server_timing(header: str) -> dict[str, float]:
    """``"parse;dur=1.20, segment;dur=30.5"`` → ``{"parse": 1.2, "segment": 30.5}`` (milliseconds): the
    reader of :func:`server_timing` (for clients, tests and benchmarks)."""
    out = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                out[name] = float(value)
    return out
