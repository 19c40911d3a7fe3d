"""A lost node must not hang a job without a word.

Ray Data restarts the actors of a lost node forever (``max_restarts=-1``) and the tasks bound to them wait
for the restart. With a pool that holds every GPU (``"1..auto"``) and no autoscaler to bring a node, there
is nowhere to restart them. Ray Data's own no-progress guard (``execution_no_progress_timeout_s``: no
block moved through any operator for that long) ends such an execution; :func:`no_progress_timeout` sets
it from ``ray.stall_timeout_s`` and :func:`stalled` turns its error into :class:`JobStalledError`, which
says which pools lost actors, what the cluster has free, and that a re-run resumes (everything written so
far stays in the manifest).
"""

from __future__ import annotations

from typing import Any


class JobStalledError(RuntimeError):
    """No block moved for ``ray.stall_timeout_s``: typically pool actors lost with their node and no
    place to restart them."""


def no_progress_timeout(stall_timeout_s: float) -> float:
    """``ray.stall_timeout_s`` (0: wait for ever) as Ray Data's ``execution_no_progress_timeout_s``."""
    return float(stall_timeout_s) if stall_timeout_s > 0 else -1.0


def is_stall(error: BaseException) -> bool:
    from ray.data.exceptions import ExecutionTimeoutError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # Ray may wrap it
        if isinstance(current, ExecutionTimeoutError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def restarting_pool_actors() -> dict[str, int]:
    """Pool name (``MapBatches(InpaintPool)``) -> its actors waiting to restart, from the GCS actor table."""
    from ray._private import state

    waiting: dict[str, int] = {}
    for info in state.actors().values():
        name = str(info.get("ActorClassName", ""))
        if info.get("State") == "RESTARTING" and "MapBatches(" in name:
            pool = name[name.index("MapBatches(") :].split(")")[0] + ")"
            waiting[pool] = waiting.get(pool, 0) + 1
    return waiting


def stalled(timeout_s: float, waiting: dict[str, int], free: dict[str, float]) -> JobStalledError:
    """The error a user reads: what waited, what the cluster has, what to do."""
    room = f"{free.get('GPU', 0):g} GPU and {free.get('CPU', 0):g} CPU free"
    if waiting:
        pools = ", ".join(f"{n} actor(s) of {name}" for name, n in sorted(waiting.items()))
        cause = (
            f"{pools} lost with their node found no place to restart (cluster: {room}). Add a node with "
            f"the resources that pool asks for (or let an autoscaler), then re-run"
        )
    else:
        cause = (
            f"no actor was lost; a stage may be stuck or waiting for capacity (cluster: {room}). Check "
            f"the Ray dashboard, raise ray.stall_timeout_s for very slow models, then re-run"
        )
    return JobStalledError(
        f"no block moved for ray.stall_timeout_s={timeout_s:g} s: {cause}. Outputs written so far are kept; "
        f"a re-run with the same command resumes from them."
    )


def explain(timeout_s: float) -> JobStalledError:
    """:func:`stalled` with what the live cluster says (best effort: the message must not fail)."""
    import ray

    try:
        waiting = restarting_pool_actors()
    except Exception:  # noqa: BLE001 - only for the message
        waiting = {}
    free: dict[str, Any]
    try:
        free = ray.available_resources()
    except Exception:  # noqa: BLE001
        free = {}
    return stalled(timeout_s, waiting, free)
