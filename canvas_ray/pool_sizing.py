"""How big each model pool may be on the Ray cluster, and whether the pools fit at all.

**Pool sizes** (:func:`size_pools`). A model pool's ``concurrency`` is its minimum; ``max_concurrency`` an
int or ``"auto"``. ``auto`` is what the cluster holds *now*: per node, the actors of that pool that fit in
what is left after every pool's minimum has been placed (GPUs, CPUs and custom resources alike, node by
node, so an actor needing 1 GPU + 2 CPUs never counts a GPU that sits on a node without 2 free CPUs).
One ``auto`` pool per kind of device gets it all; several share what is left by their minimums'
proportions. Ray Data autoscales each pool between its minimum and maximum; an auto pool starts at its
maximum (no ramp-up). A cluster that gains nodes later is used by pools whose maximum was named (``1..64``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from canvas_ray.config import CanvasConfig, ConfigError, Resources

# CPUs left to the task steps (fetch/decode, prompt, composite, manifest) when sizing CPU pools
TASK_CPU_SHARE = 0.25


@dataclass
class Node:
    node_id: str
    resources: dict[str, float]  # what is still free for placing pools, per resource name

    def fits(self, need: dict[str, float]) -> int:
        """How many actors needing ``need`` fit here."""
        counts = [math.floor(self.resources.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
        return min(counts) if counts else 0

    def take(self, need: dict[str, float], n: int = 1) -> None:
        for key, value in need.items():
            self.resources[key] = self.resources.get(key, 0.0) - value * n


def live_nodes() -> list[Node]:
    """The cluster's alive nodes and their resources (``ray.nodes()``)."""
    import ray

    return [
        Node(str(n["NodeID"]), {k: float(v) for k, v in n.get("Resources", {}).items()})
        for n in ray.nodes()
        if n.get("Alive")
    ]


def actor_needs(res: Resources) -> dict[str, float]:
    need = {"CPU": res.num_cpus, **res.custom}
    if res.num_gpus:
        need["GPU"] = res.num_gpus
    return need


# ---- pool sizes ----


@dataclass(frozen=True)
class PoolSize:
    min: int
    max: int
    initial: int


@dataclass
class Sizing:
    pools: dict[str, PoolSize]
    notes: list[str] = field(default_factory=list)


def _place(nodes: list[Node], need: dict[str, float], count: int) -> int:
    """Place up to ``count`` actors, best fit (the node with the least room that still fits one), so that
    fractional-GPU actors share GPUs; how many fit. This is the tightest packing, so a "does not fit"
    is definite; Ray may spread actors more loosely, leaving some of an auto pool's actors pending."""
    placed = 0
    while placed < count:
        fitting = [n for n in nodes if n.fits(need) >= 1]
        if not fitting:
            break
        # nodes with resources this actor does not use (a custom accelerator tag) are kept for those who do
        min(fitting, key=lambda n: (_unused_kinds(n, need), n.fits(need), n.resources.get("GPU", 0.0))).take(
            need
        )
        placed += 1
    return placed


def _unused_kinds(node: Node, need: dict[str, float]) -> int:
    standard = {"CPU", "GPU", "memory", "object_store_memory"}
    return sum(
        1
        for k, v in node.resources.items()
        if v > 0 and k not in need and k not in standard and not k.startswith("node:")
    )


def size_pools(pools: dict[str, Resources], nodes: list[Node], task_cpus: float | None = None) -> Sizing:
    """Minimum, maximum and initial actors per pool on these nodes (see the module docstring).

    ``task_cpus``: the CPUs the task steps should keep (default: a quarter of the cluster's), never more
    than a quarter. Raises :class:`ConfigError` when the pools' minimums do not fit, naming the pool and
    what to change.
    """
    free = [Node(n.node_id, dict(n.resources)) for n in nodes]
    total_cpu = sum(n.resources.get("CPU", 0.0) for n in nodes)
    # task steps need CPUs too: keep what they ask for (at most a quarter) out of the pools' reach
    share = TASK_CPU_SHARE * total_cpu
    reserve = max(0.25, min(share, task_cpus) if task_cpus is not None else share) if total_cpu else 0.0
    # GPU pools first (the scarce fit), in pipeline order: fractional ones pack onto shared GPUs
    order = sorted(pools, key=lambda name: pools[name].num_gpus == 0)
    for name in order:
        res = pools[name]
        need = actor_needs(res)
        placed = _place(free, need, res.concurrency)
        if placed < res.concurrency:
            raise ConfigError(_does_not_fit(name, res, placed, pools, nodes))
    left_cpu = sum(n.resources.get("CPU", 0.0) for n in free)
    if left_cpu < reserve - 1e-9:
        detail = ", ".join(f"{n} {pools[n].num_cpus:g} CPU x {pools[n].concurrency}" for n in order)
        raise ConfigError(
            f"the model pools hold {total_cpu - left_cpu:g} of the cluster's {total_cpu:g} CPUs ({detail}); "
            f"the task steps (fetch/decode, prompt, composite, write) need at least {reserve:g}: lower "
            f"resources.num_cpus or concurrency of a model stage, or add CPUs"
        )
    sizes: dict[str, PoolSize] = {}
    notes: list[str] = []
    auto = [n for n in order if pools[n].max_concurrency == "auto"]
    # the reserved CPUs are taken out node by node before auto pools grow into the rest
    _hold_cpu_reserve(free, reserve)
    weights = {n: pools[n].concurrency for n in auto}
    for name in order:
        res = pools[name]
        if res.max_concurrency == "auto":
            need = actor_needs(res)
            rivals = [a for a in auto if (pools[a].num_gpus > 0) == (res.num_gpus > 0)]
            share = weights[name] / sum(weights[a] for a in rivals)
            capacity = sum(n.fits(need) for n in free)
            extra = math.floor(capacity * share + 1e-9)
            high = res.concurrency + extra
            sizes[name] = PoolSize(res.concurrency, high, high)
            kind = "GPU" if res.num_gpus else "CPU"
            notes.append(f"{name}: {res.concurrency}..{high} actors (auto: the free {kind}s of the cluster)")
        elif isinstance(res.max_concurrency, int) and res.max_concurrency > res.concurrency:
            sizes[name] = PoolSize(res.concurrency, res.max_concurrency, res.concurrency)
            notes.append(f"{name}: {res.concurrency}..{res.max_concurrency} actors (autoscaling)")
        else:
            sizes[name] = PoolSize(res.concurrency, res.concurrency, res.concurrency)
            notes.append(f"{name}: {res.concurrency} actors")
    return Sizing(sizes, notes)


def _hold_cpu_reserve(free: list[Node], reserve: float) -> None:
    """Take the task steps' CPUs from the nodes with the most CPUs left per free GPU (CPU nodes first)."""

    def spare(node: Node) -> float:
        gpus = node.resources.get("GPU", 0.0)
        return node.resources.get("CPU", 0.0) / gpus if gpus > 1e-9 else float("inf")

    for node in sorted(free, key=spare, reverse=True):
        if reserve <= 0:
            return
        take = min(reserve, node.resources.get("CPU", 0.0))
        node.resources["CPU"] = node.resources.get("CPU", 0.0) - take
        reserve -= take


def _does_not_fit(
    name: str, res: Resources, placed: int, pools: dict[str, Resources], nodes: list[Node]
) -> str:
    need = actor_needs(res)
    total = {k: sum(n.resources.get(k, 0.0) for n in nodes) for k in need}
    best = max((n.fits(need) for n in nodes), default=0)
    wanted = ", ".join(f"{v:g} {k}" for k, v in need.items())
    have = ", ".join(f"{v:g} {k}" for k, v in total.items())
    others = ", ".join(
        f"{n} {pools[n].concurrency} x ({', '.join(f'{v:g} {k}' for k, v in actor_needs(pools[n]).items())})"
        for n in pools
        if n != name
    )
    hint = (
        "the cluster has no GPUs: attach to a GPU cluster (--address / RAY_ADDRESS) or use a CPU config "
        "such as configs/local.yaml"
        if need.get("GPU") and not total.get("GPU")
        else "no single node has that much: lower this pool's num_cpus/num_gpus per actor"
        if best == 0
        else f"lower {name}.resources.concurrency to {placed} (or use a range like '1..auto'), "
        "or lower the other pools' minimums"
        if placed >= 1
        else "the other pools' minimums leave it no room: lower them (or their num_cpus/num_gpus per actor), "
        "or add a node"
    )
    return (
        f"the {name} pool needs {res.concurrency} actors of ({wanted}) but only {placed} fit on the cluster "
        f"({len(nodes)} node(s) with {have} in all; other pools: {others or 'none'}): {hint}"
    )


def pool_resources(config: CanvasConfig) -> dict[str, Resources]:
    from canvas_ray.spec import PIPELINE, stage_resources

    return {s.name: stage_resources(s, config) for s in PIPELINE if s.kind == "pool"}


def task_cpus(config: CanvasConfig) -> float:
    """CPUs the task steps use at their configured parallelism (what the pools must leave them)."""
    from canvas_ray.spec import PIPELINE, stage_resources

    return sum(
        stage_resources(s, config).num_cpus * stage_resources(s, config).concurrency
        for s in PIPELINE
        if s.kind == "task"
    )


def plan_pools(config: CanvasConfig) -> Sizing:
    """:func:`size_pools` for this config on the cluster Ray is attached to."""
    return size_pools(pool_resources(config), live_nodes(), task_cpus(config))


def describe(sizing: Sizing, pools: dict[str, Resources]) -> str:
    """One line per pool for the log / ``canvas-ray cluster plan``."""
    lines = []
    for name, size in sizing.pools.items():
        res = pools[name]
        per = f"{res.num_gpus:g} GPU + {res.num_cpus:g} CPU" if res.num_gpus else f"{res.num_cpus:g} CPU"
        actors = f"{size.min}..{size.max} actors (start {size.initial})"
        lines.append(f"{name:<8} {actors} x ({per}), batch {res.batch_size}")
    return "\n".join(lines)
