"""The Ray cluster a job runs on: attaching to it (explicit, bounded, never silent). What its nodes hold,
how big each model pool may be on it and whether the pools fit at all is :mod:`canvas_ray.pool_sizing`
(its names stay importable from here).

**Attaching.** ``--address`` / the config's ``ray.address`` / ``RAY_ADDRESS`` name a cluster; without
them Ray's convention holds: a live local cluster (``ray start`` records its address in
``<tmp>/ray/ray_current_cluster``) is used, else a local instance is started. Every address is probed
over TCP before ``ray.init`` within ``timeout`` seconds: a named cluster that does not answer is an error
that names it; a stale local record (a head that ended without ``ray stop``/``shutdown``) is reported and
a fresh local instance started, instead of ``ray.init`` waiting on it for ever.

"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

from canvas_ray.config import ConfigError
from canvas_ray.logs import get_logger
from canvas_ray.pool_sizing import (
    TASK_CPU_SHARE,
    Node,
    PoolSize,
    Sizing,
    actor_needs,
    describe,
    live_nodes,
    plan_pools,
    pool_resources,
    size_pools,
    task_cpus,
)

__all__ = [
    "ATTACH_TIMEOUT_S",
    "TASK_CPU_SHARE",
    "Attachment",
    "ClusterUnreachableError",
    "Node",
    "PoolSize",
    "Sizing",
    "actor_needs",
    "answers",
    "attach",
    "choose_address",
    "describe",
    "live_nodes",
    "plan_pools",
    "pool_resources",
    "quiet_ray_data",
    "recorded_local_cluster",
    "size_pools",
    "task_cpus",
]

log = get_logger(__name__)

ATTACH_TIMEOUT_S = 30.0


class ClusterUnreachableError(ConfigError):
    """A named Ray cluster that does not answer."""


# ---- attaching ----


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def answers(address: str, timeout: float = ATTACH_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections at ``address`` (host:port, ``ray://``) within ``timeout``."""
    target = _host_port(address)
    if target is None:
        return False
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(target, timeout=max(0.2, min(2.0, left))):
                return True
        except OSError:
            if left <= 0.5:
                return False
            time.sleep(0.5)


def recorded_local_cluster() -> str | None:
    """The address ``ray start`` recorded for this machine's current local cluster, if any."""
    from ray._private.utils import read_ray_address

    try:
        return read_ray_address() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Attachment:
    address: str | None  # None: a local instance started by this process
    source: str  # what chose it: --address, ray.address, RAY_ADDRESS, local record, local


def choose_address(
    explicit: str | None, configured: str | None, timeout: float = ATTACH_TIMEOUT_S
) -> Attachment:
    """Which cluster to attach to, checked within ``timeout`` s; raises :class:`ClusterUnreachableError`."""
    for value, source in (
        (explicit, "--address"),
        (configured, "ray.address in the config"),
        (os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"),
    ):
        if not value:
            continue
        if value == "local":
            return Attachment(None, source)
        if value == "auto":
            break
        if not answers(value, timeout):
            raise ClusterUnreachableError(
                f"the Ray cluster at {value} (from {source}) does not answer after {timeout:g} s: start it "
                f"(`ray start --head` on that machine), fix the address, or pass --address local to run "
                f"on a local instance"
            )
        return Attachment(value, source)
    recorded = recorded_local_cluster()
    if recorded:
        if answers(recorded, min(timeout, 5.0)):
            return Attachment(recorded, "the local cluster recorded by `ray start`")
        log.warning(
            "a local Ray cluster was recorded at %s but does not answer (it ended without `ray stop`); "
            "starting a new local instance instead. To use that cluster, start it again; to silence this, "
            "delete %s",
            recorded,
            _record_file(),
        )
    return Attachment(None, "local")


def _record_file() -> str:
    from ray._private.utils import get_ray_address_file

    return str(get_ray_address_file(None))


def attach(
    explicit: str | None = None,
    configured: str | None = None,
    *,
    timeout: float = ATTACH_TIMEOUT_S,
    verbose: bool | None = None,
) -> Attachment | None:
    """``ray.init`` on the chosen cluster (a no-op when Ray is already initialised), logging which.

    Ray's own INFO/WARNING lines stay out of the terminal unless ``verbose`` (or ``CANVAS_RAY_RAY_LOGS=1``);
    they still go to the session's log files."""
    import ray

    if ray.is_initialized():
        return None
    verbose = os.environ.get("CANVAS_RAY_RAY_LOGS", "0") == "1" if verbose is None else verbose
    chosen = choose_address(explicit, configured, timeout)
    level = logging.INFO if verbose else logging.ERROR
    ray.init(
        address=chosen.address or "local",
        ignore_reinit_error=True,
        log_to_driver=True,
        logging_level=level,
        include_dashboard=False if chosen.address is None else None,
    )
    quiet_ray_data(verbose)
    total = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    where = f"attached to the Ray cluster at {chosen.address}" if chosen.address else "started a local Ray"
    log.info(
        "%s (%s): %d node(s), %g CPUs, %g GPUs",
        where,
        chosen.source,
        nodes,
        total.get("CPU", 0),
        total.get("GPU", 0),
    )
    return chosen


def quiet_ray_data(verbose: bool = False) -> None:
    """Ray Data's console lines (execution plans, tips, timings) only when asked for; its log file keeps
    them all."""
    import ray.data  # noqa: F401 - configures Ray Data's loggers

    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.data", "ray.serve"):
        for handler in logging.getLogger(name).handlers:
            if not type(handler).__name__.endswith("FileHandler"):  # the console; files keep everything
                handler.setLevel(level)
