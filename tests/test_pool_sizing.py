"""Pool sizing on a cluster's nodes and attaching to a cluster (canvas_ray/cluster.py), without Ray
running: node inventories as ``ray.nodes()`` reports them, real sockets for addresses."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from canvas_ray.cluster import (
    ClusterUnreachableError,
    Node,
    answers,
    choose_address,
    size_pools,
    task_cpus,
)
from canvas_ray.config import ConfigError, Resources, load_config
from tests.conftest import REPO


def _gpu_nodes(n: int, gpus: int, cpus: int) -> list[Node]:
    head = Node("head", {"CPU": 8.0})
    return [head] + [Node(f"gpu{i}", {"CPU": float(cpus), "GPU": float(gpus)}) for i in range(n)]


def _gpu_yaml_pools() -> dict[str, Resources]:
    config = load_config(REPO / "configs" / "gpu.yaml", {"provenance.c2pa": "unsigned"})
    return {name: getattr(config, name).resources for name in ("segment", "caption", "inpaint")}


@pytest.mark.parametrize(("nodes", "gpus"), [(1, 8), (8, 8), (16, 4)])
def test_gpu_yaml_fills_8_or_64_gpus(nodes: int, gpus: int) -> None:
    """gpu.yaml unchanged: segment + caption share one GPU, the inpainter gets every other GPU."""
    config = load_config(REPO / "configs" / "gpu.yaml", {"provenance.c2pa": "unsigned"})
    sizing = size_pools(_gpu_yaml_pools(), _gpu_nodes(nodes, gpus, cpus=96), task_cpus(config))
    total = nodes * gpus
    assert sizing.pools["segment"].max == sizing.pools["caption"].max == 1
    inpaint = sizing.pools["inpaint"]
    assert inpaint.min == 1 and inpaint.max == inpaint.initial == total - 1


def test_auto_counts_cpus_node_by_node() -> None:
    """A GPU on a node without the 2 CPUs an inpaint actor also needs is not counted."""
    pools = {"inpaint": Resources(num_gpus=1, num_cpus=2, concurrency=1, max_concurrency="auto")}
    nodes = [
        Node("head", {"CPU": 8.0}),
        Node("a", {"CPU": 4.0, "GPU": 4.0}),
        Node("b", {"CPU": 8.0, "GPU": 2.0}),
    ]
    assert size_pools(pools, nodes).pools["inpaint"].max == 2 + 2


def test_custom_resources_pin_a_pool() -> None:
    pools = {
        "inpaint": Resources(num_gpus=1, num_cpus=1, concurrency="1..auto", custom={"big_gpu": 1}),
        "caption": Resources(num_gpus=1, num_cpus=1, concurrency=1),
    }
    nodes = [
        Node("head", {"CPU": 8.0}),
        Node("a100", {"CPU": 16.0, "GPU": 4.0, "big_gpu": 4.0}),
        Node("t4", {"CPU": 16.0, "GPU": 4.0}),
    ]
    sizing = size_pools(pools, nodes)
    assert sizing.pools["inpaint"].max == 4  # only the a100 node's GPUs
    assert sizing.pools["caption"].max == 1


def test_two_auto_gpu_pools_share_by_their_minimums() -> None:
    pools = {
        "caption": Resources(num_gpus=1, num_cpus=1, concurrency="1..auto"),
        "inpaint": Resources(num_gpus=1, num_cpus=1, concurrency="3..auto"),
    }
    sizing = size_pools(pools, _gpu_nodes(2, 8, cpus=32))  # 16 GPUs, 4 held by the minimums
    assert sizing.pools["caption"].max == 1 + 3 and sizing.pools["inpaint"].max == 3 + 9


def test_pools_that_do_not_fit_say_what_to_change() -> None:
    pools = _gpu_yaml_pools()
    pools["inpaint"] = pools["inpaint"].model_copy(update={"concurrency": 8})
    with pytest.raises(ConfigError, match=r"inpaint pool needs 8 actors .* only 7 fit.*lower inpaint"):
        size_pools(pools, _gpu_nodes(1, 8, cpus=96))
    pools = {"caption": Resources(num_gpus=2, num_cpus=1, concurrency=1)}
    with pytest.raises(ConfigError, match="no single node has that much"):
        size_pools(pools, _gpu_nodes(4, 1, cpus=8))  # 4 GPUs in all, never 2 on one node
    pools = {"segment": Resources(num_cpus=2, concurrency=4)}
    with pytest.raises(ConfigError, match="task steps .* need at least"):
        size_pools(pools, [Node("laptop", {"CPU": 8.0})])  # all 8 CPUs held by the pool
    # no room at all for a pool of 1: the advice is not "lower it to 1" but what does make room
    pools = _gpu_yaml_pools()
    with pytest.raises(ConfigError, match=r"only 0 fit.*leave it no room") as refused:
        size_pools(pools, [Node("one", {"CPU": 3.0, "GPU": 4.0})])
    assert "concurrency to 1" not in str(refused.value)


def test_concurrency_forms() -> None:
    assert Resources(concurrency="2..8").max_concurrency == 8
    assert Resources(concurrency=[2, 8]).concurrency == 2
    assert Resources(concurrency="auto").max_concurrency == "auto"
    assert Resources(concurrency="1..auto").concurrency == 1
    assert not Resources(concurrency=3).autoscales and Resources(concurrency="1..2").autoscales
    for bad in ("8..2", "many", "1..2..3", [1]):
        with pytest.raises(ValueError):
            Resources(concurrency=bad)


def _dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # closed again: nothing listens there


def test_a_named_cluster_that_does_not_answer_is_an_error_within_the_timeout(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = _dead_address()
    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError, match=rf"{address} \(from --address\) does not answer"):
        choose_address(address, None, timeout=1.5)
    assert time.monotonic() - started < 10
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(ClusterUnreachableError, match="from RAY_ADDRESS"):
        choose_address(None, None, timeout=0.5)


def test_a_stale_local_record_starts_a_local_instance_and_says_so(monkeypatch, tmp_path, caplog) -> None:
    """A head that ended without shutdown left its address behind: reported, never waited on."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    address = _dead_address()
    (tmp_path / "ray" / "ray_current_cluster").write_text(address)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="canvas_ray.cluster"):
        chosen = choose_address(None, None, timeout=30)
    assert time.monotonic() - started < 10
    assert chosen.address is None and chosen.source == "local"
    assert address in caplog.text and "does not answer" in caplog.text


def test_a_live_address_is_chosen(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert answers(address, 1.0)
        chosen = choose_address(None, address, timeout=1.0)
    assert chosen.address == address and chosen.source == "ray.address in the config"
    assert choose_address("local", address).address is None  # "local" always starts one


# ---- check_resources: what `generate` asks before any work, on the nodes Ray reports -----------------


def _on_nodes(monkeypatch: pytest.MonkeyPatch, nodes: list[Node]) -> None:
    """The attached cluster's nodes, as ``ray.nodes()`` would report them: ``live_nodes`` where
    ``plan_pools`` (what check_resources asks) looks it up."""
    import sys

    from canvas_ray.cluster import plan_pools

    monkeypatch.setattr(sys.modules[plan_pools.__module__], "live_nodes", lambda: nodes)


def _check(config_file: str, **overrides):
    from canvas_ray.batch import check_resources

    return check_resources(
        load_config(REPO / "configs" / config_file, {"provenance.c2pa": "unsigned", **overrides})
    )


def test_check_resources_refuses_gpu_pools_without_the_gpus(monkeypatch) -> None:
    # gpu.yaml: segment + caption share one GPU, inpaint needs a whole one: a 1-GPU node leaves it none
    _on_nodes(monkeypatch, [Node("head", {"CPU": 8.0}), Node("gpu0", {"CPU": 96.0, "GPU": 1.0})])
    with pytest.raises(ConfigError, match=r"inpaint pool needs 1 actors of \(2 CPU, 1 GPU\) but only 0 fit"):
        _check("gpu.yaml")
    # enough GPUs, but the GPU node lacks the CPUs each GPU actor also asks for (counted node by node)
    _on_nodes(monkeypatch, [Node("head", {"CPU": 8.0}), Node("gpu0", {"CPU": 3.0, "GPU": 4.0})])
    with pytest.raises(ConfigError, match=r"pool needs 1 actors of \(2 CPU, 0\.\d+ GPU\) but only 0 fit"):
        _check("gpu.yaml")
    # the same config fits once the GPU node has the CPUs
    _on_nodes(monkeypatch, [Node("head", {"CPU": 8.0}), Node("gpu0", {"CPU": 16.0, "GPU": 4.0})])
    sizing = _check("gpu.yaml")
    assert sizing.pools["inpaint"].min == 1 and sizing.pools["inpaint"].max == 3


def test_check_resources_refuses_cpu_pools_that_leave_no_cpu(monkeypatch) -> None:
    _on_nodes(monkeypatch, [Node("laptop", {"CPU": 2.0})])
    assert _check("weightfree.yaml").pools["segment"].max >= 1  # the shipped CPU config fits 2 cores
    with pytest.raises(ConfigError, match=r"caption pool needs 1 actors of \(0\.25 CPU\) but only 0 fit"):
        _check("weightfree.yaml", **{"segment.resources.num_cpus": 2})  # the pools do not fit at all
    with pytest.raises(ConfigError, match=r"task steps .* need at least"):
        _check("weightfree.yaml", **{"segment.resources.num_cpus": 1.5})  # they fit, the tasks do not


def test_local_yaml_keeps_both_cores_of_a_2_core_machine_on_the_segmenter(monkeypatch) -> None:
    """The README's job (configs/local.yaml) fits a 2-CPU machine with two IS-Net actors of one thread."""
    from canvas_ray.batch_plan import check_resources
    from canvas_ray.stages.segment_onnx import session_threads

    config = load_config(REPO / "configs" / "local.yaml")
    _on_nodes(monkeypatch, [Node("laptop", {"CPU": 2.0})])
    sizing = check_resources(config)
    assert sizing.pools["segment"].min == sizing.pools["segment"].max == 2
    assert session_threads(config.segment) == 1


def test_check_resources_on_a_live_local_ray(ray_local) -> None:
    """The same refusal against the nodes a real (2-CPU) Ray reports, then the shipped config fitting."""
    from canvas_ray.batch import check_resources

    with pytest.raises(ConfigError, match=r"task steps .* need at least"):
        check_resources(
            load_config(REPO / "configs" / "weightfree.yaml", {"segment.resources.num_cpus": 1.5})
        )
    assert check_resources(load_config(REPO / "configs" / "weightfree.yaml")).pools["inpaint"].min >= 1
