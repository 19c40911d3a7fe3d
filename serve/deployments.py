"""The model stages as Serve deployments: one stage instance per replica, dynamic batching
(``@serve.batch``: requests that arrive within ``serve.batch_wait_timeout_s`` are concatenated into one
batch, the stage runs once, and the result is split back per request by the ``request_id`` column), and
a bounded queue per deployment (``max_queued_requests``: past it callers get ``BackPressureError``, which
the ingress answers with 503)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ray import serve

from canvas_ray.config import CanvasConfig, ModelStage
from canvas_ray.spec import make_stage
from canvas_ray.stages.base import (
    Batch,
    StageContext,
    concat_batches,
    each_alone_on_failure,
    fail_rows,
    num_rows,
    take_rows,
)
from serve.metrics import BatchMetrics

REQUEST_COLUMN = "request_id"


def split_by_request(batch: Batch, request_ids: list[str]) -> list[Batch]:
    """One batch per request id, rows in their original order."""
    column = [str(v) for v in batch[REQUEST_COLUMN]]
    return [take_rows(batch, [i for i, v in enumerate(column) if v == rid]) for rid in request_ids]


class StageServer:
    """Shared body of the model deployments: one stage instance, batched calls, observed batch sizes.

    A batch of requests runs as one stage call; stages already turn a failing row into an error row
    (``run_rows``), so a whole call fails only on a fault of the stage itself, and then each request is
    run alone (:func:`~canvas_ray.stages.base.each_alone_on_failure`, the same rule as for rows), so
    that one request's fault fails that request's rows only."""

    name = ""

    def __init__(self, config: CanvasConfig):
        self.config = config
        self.stage = make_stage(self.name, config, StageContext())  # type: ignore[arg-type]
        batched: Any = self.run  # @serve.batch takes constants; the config's values are set here
        batched.set_max_batch_size(config.serve.max_batch_size)
        batched.set_batch_wait_timeout_s(config.serve.batch_wait_timeout_s)
        # the recent calls only: a long-running replica must not grow with its traffic
        self._sizes: deque[int] = deque(maxlen=100_000)
        self._rows: deque[int] = deque(maxlen=100_000)
        self._metrics = BatchMetrics(self.name)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def run(self, batches: list[Batch]) -> list[Batch]:
        return await asyncio.to_thread(self._process, batches)

    def _process(self, batches: list[Batch]) -> list[Batch]:
        self._sizes.append(len(batches))
        self._metrics.observe(len(batches))
        return each_alone_on_failure(
            batches, self._together, lambda batch, error: fail_rows(batch, self.name, error), self.name
        )

    def _together(self, batches: list[Batch]) -> list[Batch]:
        """One stage call for the requests' rows, split back per request (by ``request_id``)."""
        if len(batches) == 1:
            self._rows.append(num_rows(batches[0]))
            return [self.stage(batches[0])]
        ids = [str(b[REQUEST_COLUMN][0]) for b in batches]
        if len(set(ids)) != len(ids):  # never expected; keeps the split unambiguous anyway
            return [self.stage(b) for b in batches]
        merged = concat_batches(batches)
        self._rows.append(num_rows(merged))
        return split_by_request(self.stage(merged), ids)

    def batch_sizes(self) -> list[int]:
        """Requests per stage call, in order (for tests and tuning)."""
        return list(self._sizes)

    def batch_rows(self) -> list[int]:
        """Rows per stage call (a request may carry several rows after Prompt)."""
        return list(self._rows)

    def ping(self) -> bool:
        return True


@serve.deployment
class SegmentDeployment(StageServer):
    name = "segment"


@serve.deployment
class CaptionDeployment(StageServer):
    name = "caption"


@serve.deployment
class InpaintDeployment(StageServer):
    name = "inpaint"


DEPLOYMENTS: dict[str, Any] = {  # `@serve.deployment` turns the classes into Deployments
    "segment": SegmentDeployment,
    "caption": CaptionDeployment,
    "inpaint": InpaintDeployment,
}


def deployment_options(name: str, config: CanvasConfig) -> dict[str, Any]:
    """Replicas, Ray resources and queue bounds of one model deployment, from the stage's config.

    A range (``concurrency: "1..8"``) autoscales between its ends; ``auto`` as the maximum is sized from
    the cluster Serve runs on, node by node (:func:`canvas_ray.cluster.size_pools`), so that no replica
    waits for a GPU on a node without the CPUs it also needs."""
    stage: ModelStage = getattr(config, name)
    res = stage.resources
    actor: dict[str, Any] = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
    if res.memory_mb:
        actor["memory"] = res.memory_mb * 2**20
    if res.custom:
        actor["resources"] = dict(res.custom)
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        # Enough requests in flight per replica for a full batch to form.
        "max_ongoing_requests": max(2 * config.serve.max_batch_size, 8),
        # a bounded queue per model deployment: past it callers get BackPressureError (503), not a wait
        "max_queued_requests": config.serve.model_max_queued,
    }
    high = res.max_concurrency
    if high == "auto":
        from canvas_ray.cluster import plan_pools

        high = plan_pools(config).pools[name].max
    if isinstance(high, int) and high > res.concurrency:
        options["autoscaling_config"] = {
            "min_replicas": res.concurrency,
            "initial_replicas": res.concurrency,
            "max_replicas": high,
            "target_ongoing_requests": config.serve.max_batch_size,
        }
    else:
        options["num_replicas"] = res.concurrency
    return options
