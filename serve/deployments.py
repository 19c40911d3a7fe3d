"""The model stages as Serve deployments: one replica per group of :func:`canvas_ray.spec.serve_groups`
(by default segment and caption together, inpaint alone; ``serve.colocate`` picks), dynamic batching per
stage (:class:`Lane`, ``@serve.batch``: requests that reach a stage within ``serve.batch_wait_timeout_s``
are concatenated into one batch, the stage runs once, and the result is split back per request by the
``request_id`` column; the stages of a replica overlap across requests), and a bounded queue per
deployment (``max_queued_requests``: past it callers get ``BackPressureError``, which
the ingress answers with 503)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from ray import serve

from canvas_ray.config import CanvasConfig, ModelStage
from canvas_ray.config_serve import Colocate
from canvas_ray.rows import Batch, concat_batches, each_alone_on_failure, fail_rows, num_rows, take_rows
from canvas_ray.spec import make_stage, model_stages, serve_groups
from canvas_ray.stages.base import StageContext
from serve.metrics import BatchMetrics

REQUEST_COLUMN = "request_id"


def split_by_request(batch: Batch, request_ids: list[str]) -> list[Batch]:
    """One batch per request id, rows in their original order."""
    column = [str(v) for v in batch[REQUEST_COLUMN]]
    return [take_rows(batch, [i for i, v in enumerate(column) if v == rid]) for rid in request_ids]


INGRESS = "Ingress"  # the ingress deployment's name (serve.app.Ingress)


def deployment_name(stages: tuple[str, ...]) -> str:
    """``("segment", "caption")`` -> ``SegmentCaptionDeployment``."""
    return "".join(name.title() for name in stages) + "Deployment"


def stage_homes(colocate: Colocate) -> dict[str, str]:
    """Where each stage of the ``serve.colocate`` groups runs: the name of its model deployment (model
    stages only count in the name: ``SegmentCaptionInpaintDeployment``), or :data:`INGRESS`."""
    homes: dict[str, str] = {}
    for group in serve_groups(colocate):
        models = tuple(name for name in group if name in model_stages())
        homes.update(dict.fromkeys(group, INGRESS if colocate == "ingress" else deployment_name(models)))
    return homes


class Lane:
    """One stage of a :class:`StageGroup` with its own batch queue (``@serve.batch``): the requests that
    reach it within ``serve.batch_wait_timeout_s`` (at most ``serve.max_batch_size``) are one call of the
    stage, run in a thread, and split back per request by ``request_id``. A replica runs its lanes
    concurrently, so the stages of one replica overlap across requests like the actor pools of a batch
    job: inpaint works on one batch while segment works on the next.

    Stages already turn a failing row into an error row (``run_rows``), so a whole call fails only on a
    fault of the stage itself, and then each request is run alone (:func:`each_alone_on_failure`, the
    same rule as for rows), so that one request's fault fails that request's rows only, labelled with the
    stage."""

    def __init__(self, name: str, stage: Any, config: CanvasConfig):
        self.name, self.stage = name, stage
        # the recent calls only: a long-running replica must not grow with its traffic
        self.sizes: deque[int] = deque(maxlen=100_000)
        self.rows: deque[int] = deque(maxlen=100_000)
        self._metrics = BatchMetrics(name)
        batched = serve.batch(  # one queue per lane (a decorated function, not a method of the class)
            max_batch_size=config.serve.max_batch_size,
            batch_wait_timeout_s=config.serve.batch_wait_timeout_s,
        )
        self.run: Any = batched(self._calls)

    async def _calls(self, batches: list[Batch]) -> list[Batch]:
        return await asyncio.to_thread(self._process, batches)

    def _process(self, batches: list[Batch]) -> list[Batch]:
        self.sizes.append(len(batches))
        self._metrics.observe(len(batches))
        return each_alone_on_failure(batches, self._together, self._failed, self.name)

    def _failed(self, batch: Batch, error: Exception) -> Batch:
        return fail_rows(batch, self.name, error)

    def _together(self, batches: list[Batch]) -> list[Batch]:
        """One call of the stage for the requests' rows, split back per request (by ``request_id``)."""
        if len(batches) == 1:
            self.rows.append(num_rows(batches[0]))
            return [self.stage(batches[0])]
        ids = [str(b[REQUEST_COLUMN][0]) for b in batches]
        if len(set(ids)) != len(ids):  # never expected; keeps the split unambiguous anyway
            return [self.stage(b) for b in batches]
        merged = concat_batches(batches)
        self.rows.append(num_rows(merged))
        return split_by_request(self.stage(merged), ids)


class StageGroup:
    """The stages of one group of :func:`canvas_ray.spec.serve_groups` (segment and caption together,
    inpaint alone by default), run in turn on each request's batch, each stage a :class:`Lane` with its
    own dynamic batching: the body of a model deployment's replica (:data:`ModelDeployment`), or held by
    the ingress itself (``serve.colocate: ingress``, no hand-off)."""

    def __init__(self, config: CanvasConfig, stages: tuple[str, ...], context: StageContext | None = None):
        self.names = tuple(stages)
        self.name = "+".join(self.names)
        context = context or StageContext()
        self.lanes = {n: Lane(n, make_stage(n, config, context), config) for n in self.names}  # type: ignore[arg-type]

    async def run(self, batch: Batch) -> Batch:
        for lane in self.lanes.values():
            batch = await lane.run(batch)
        return batch

    def batch_sizes(self, stage: str | None = None) -> list[int]:
        """Requests per call of ``stage`` (default: the group's first), in order (for tests and tuning)."""
        return list(self.lanes[stage or self.names[0]].sizes)

    def batch_rows(self, stage: str | None = None) -> list[int]:
        """Rows per call of ``stage`` (a request may carry several rows after Prompt)."""
        return list(self.lanes[stage or self.names[0]].rows)

    def ping(self) -> bool:
        return True


# one replica of a group of model stages (a Serve deployment of StageGroup)
ModelDeployment: Any = serve.deployment(name="ModelDeployment")(StageGroup)


def deployment_options(stages: tuple[str, ...], config: CanvasConfig, fewest: bool = False) -> dict[str, Any]:
    """Name, replicas, Ray resources and queue bounds of the deployment serving ``stages``, from their
    config sections. A replica holds every stage of its group, so it asks for their resources together
    (GPU fractions add up: gpu.yaml's segment 0.25 + caption 0.75 make one GPU); it runs as many replicas
    as the largest minimum asks (``fewest``: the smallest, for replicas that hold every model), and
    autoscales up to the smallest maximum (a range or ``auto``, sized from the cluster node by node by
    :func:`canvas_ray.cluster.size_pools`)."""
    stages = tuple(name for name in stages if name in model_stages())  # a cheap stage between asks nothing
    sections: list[ModelStage] = [getattr(config, name) for name in stages]
    actor: dict[str, Any] = {
        "num_cpus": sum(s.resources.num_cpus for s in sections),
        "num_gpus": sum(s.resources.num_gpus for s in sections),
    }
    memory = sum(s.resources.memory_mb or 0 for s in sections)
    if memory:
        actor["memory"] = memory * 2**20
    custom: dict[str, float] = {}
    for section in sections:
        for key, value in (section.resources.custom or {}).items():
            custom[key] = custom.get(key, 0) + value
    if custom:
        actor["resources"] = custom
    options: dict[str, Any] = {
        "name": deployment_name(stages),
        "ray_actor_options": actor,
        # Enough requests in flight per replica for a full batch to form.
        "max_ongoing_requests": max(2 * config.serve.max_batch_size, 8),
        # a bounded queue per model deployment: past it callers get BackPressureError (503), not a wait
        "max_queued_requests": config.serve.model_max_queued,
    }
    low = (min if fewest else max)(s.resources.concurrency for s in sections)
    highs: list[int] = []
    for name, section in zip(stages, sections, strict=True):
        high = section.resources.max_concurrency
        if high == "auto":
            from canvas_ray.cluster import plan_pools

            high = plan_pools(config).pools[name].max
        highs.append(high if isinstance(high, int) else section.resources.concurrency)
    high = min(highs)
    if high > low:
        options["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": config.serve.max_batch_size,
        }
    else:
        options["num_replicas"] = low
    return options


def ingress_options(config: CanvasConfig, group: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Replicas and Ray resources of the ingress: its own (``composite.resources``), or with ``group``
    (``serve.colocate: ingress``) replicas that also hold that group's models, asking for their resources
    on top of its own, as many as the config holds copies of its scarcest model."""
    own = config.composite.resources
    if group is None:
        options: dict[str, Any] = {
            "num_replicas": own.concurrency,
            "ray_actor_options": {"num_cpus": own.num_cpus},
        }
    else:
        options = deployment_options(group, config, fewest=True)
        del options["name"], options["max_queued_requests"]  # its own admission bounds what waits
        options["ray_actor_options"]["num_cpus"] += own.num_cpus
    options["max_ongoing_requests"] = 128  # admission (serve.max_inflight / max_queued) bounds the work
    return options
