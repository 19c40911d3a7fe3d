"""The service's own metrics, next to Serve's built-in ones.

Recorded with ``ray.serve.metrics`` (so Ray's Prometheus endpoint exports them from every replica, with
Serve's own ``ray_serve_*`` series) and mirrored in a small per-replica snapshot served at ``/v1/stats``:

| metric (Prometheus name)               | what                                                    |
| -------------------------------------- | ------------------------------------------------------- |
| ``ray_canvas_requests_total{code}``    | generate requests by HTTP status code                   |
| ``ray_canvas_admission{state}``        | requests running / waiting in the ingress (queue depth) |
| ``ray_canvas_shed_total``              | requests refused with 503 because the queue was full    |
| ``ray_canvas_stage_seconds{stage}``    | per-stage latency (histogram)                           |
| ``ray_canvas_batch_size{stage}``       | requests per model call (``@serve.batch``)              |
| ``ray_canvas_mask_review_total``       | outputs flagged ``review`` (mask confidence too low)    |

Scrape: start Ray with ``--metrics-export-port=8080`` and point Prometheus at every node's
``http://<node>:8080/metrics`` (or Ray's service-discovery file); see README "Online service".
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Any

from ray.serve import metrics

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
WINDOW = 2048  # recent samples kept per series for the snapshot's percentiles (bounded memory)


def _percentile(values: deque[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 4)


class ServiceMetrics:
    """Counters and histograms of one ingress replica."""

    def __init__(self) -> None:
        self._requests = metrics.Counter(
            "canvas_requests_total", "generate requests by status code", tag_keys=("code",)
        )
        self._admission = metrics.Gauge("canvas_admission", "ingress requests by state", tag_keys=("state",))
        self._shed = metrics.Counter("canvas_shed_total", "requests refused because the queue was full")
        self._stage = metrics.Histogram(
            "canvas_stage_seconds", "latency per pipeline stage", LATENCY_BUCKETS, tag_keys=("stage",)
        )
        self._review = metrics.Counter("canvas_mask_review_total", "outputs flagged review (mask)")
        self.codes: Counter[int] = Counter()
        self.stage_seconds: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))
        self.reviews = 0
        self.shed = 0

    def request(self, code: int) -> None:
        self.codes[code] += 1
        self._requests.inc(tags={"code": str(code)})
        if code == 503:
            self.shed += 1
            self._shed.inc()

    def admission(self, running: int, waiting: int) -> None:
        self._admission.set(running, tags={"state": "running"})
        self._admission.set(waiting, tags={"state": "waiting"})

    def stage(self, name: str, seconds: float) -> None:
        self.stage_seconds[name].append(seconds)
        self._stage.observe(seconds, tags={"stage": name})

    def review(self, count: int) -> None:
        if count:
            self.reviews += count
            self._review.inc(count)

    def snapshot(self, running: int, waiting: int) -> dict[str, Any]:
        return {
            "requests_by_code": {str(code): count for code, count in sorted(self.codes.items())},
            "running": running,
            "waiting": waiting,
            "shed": self.shed,
            "mask_review_outputs": self.reviews,
            "stage_seconds": {
                name: {"p50": _percentile(values, 0.5), "p95": _percentile(values, 0.95), "n": len(values)}
                for name, values in sorted(self.stage_seconds.items())
            },
        }


class BatchMetrics:
    """Requests per model call of one deployment replica."""

    def __init__(self, stage: str):
        self.stage = stage
        self._sizes = metrics.Histogram(
            "canvas_batch_size", "requests per model call", BATCH_BUCKETS, tag_keys=("stage",)
        )

    def observe(self, size: int) -> None:
        self._sizes.observe(size, tags={"stage": self.stage})
