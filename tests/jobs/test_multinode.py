"""configs/gpu.yaml on a GPU cluster: a head and two GPU worker nodes with logical GPUs and a custom
resource (``ray.cluster_utils.Cluster``), the catalog job with gpu.yaml's resources and pool sizes (the
backends switched to weight-free ones; the sample images at half scale), a GPU worker node lost in the
middle of a job, and the Serve app's GPU deployments on the same cluster."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from canvas_ray.batch import GenerateRequest, expected_outputs, run_generate
from canvas_ray.config import load_config
from canvas_ray.io.catalog import read_catalog
from canvas_ray.styles import StyleBook
from canvas_ray.testing import gpu_shape_overrides
from tests.conftest import REPO, SAMPLE_CATALOG, sample_copies

pytestmark = pytest.mark.ray_cluster  # starts its own Ray (conftest: the own-cluster xdist group)

GB = 2**30
GPU_NODE = {"num_cpus": 6, "num_gpus": 2, "resources": {"gpu_node": 2}, "memory": 64 * GB}
# gpu.yaml's resources and pool sizes as they are; only the models change (no weights in CI)
WEIGHT_FREE = {
    **gpu_shape_overrides(),
    "output.aspect_ratios": ["1:1"],
    "output.variants": 1,
    "styles.default": ["studio white", "beach summer"],
}


def _config(**extra: Any):
    return load_config(REPO / "configs" / "gpu.yaml", {**WEIGHT_FREE, **extra})


@pytest.fixture(scope="module")
def gpu_cluster():
    """Head (CPUs only, where the driver and task steps run) + two GPU worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 0, "memory": 8 * GB}
    )
    try:
        workers = [cluster.add_node(**GPU_NODE) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def _records(root: Path) -> list[dict[str, Any]]:
    import pyarrow.dataset as pads

    return pads.dataset(root / "manifest", format="parquet", partitioning="hive").to_table().to_pylist()


def _wanted(catalog: Path, config) -> list[str]:
    expected = expected_outputs(read_catalog(str(catalog)).table, config, StyleBook.from_config(config))
    return sorted(o for outputs in expected.values() for o in outputs)


def _pool_actors() -> dict[str, set[str]]:
    """Node ids of every actor each model pool has had (alive or not)."""
    from ray._private import state

    nodes: dict[str, set[str]] = {}
    for info in state.actors().values():
        name = info["ActorClassName"]
        for pool in ("SegmentPool", "CaptionPool", "InpaintPool"):
            if f"MapBatches({pool})" in name:
                nodes.setdefault(pool, set()).add(info["Address"]["NodeID"])
    return nodes


def test_gpu_yaml_runs_on_gpu_nodes(gpu_cluster, tmp_path):
    import ray

    cluster, workers = gpu_cluster
    config = _config()
    # the shape under test is gpu.yaml's: GPU pools, fractional GPUs, an auto-sized inpaint pool
    assert config.inpaint.resources.num_gpus == 1 and config.inpaint.resources.max_concurrency == "auto"
    assert 0 < config.segment.resources.num_gpus < 1 and 0 < config.caption.resources.num_gpus < 1
    catalog = sample_copies(tmp_path / "catalog")  # images at half scale
    summary = run_generate(GenerateRequest(config, str(catalog), str(tmp_path / "out"), progress=False))
    rows = _records(tmp_path / "out")
    assert sorted(r["output_id"] for r in rows) == _wanted(catalog, config)  # one record per output
    assert summary["errors"] == 0 and summary["missing_outputs"] == 0
    assert all(r["status"] in ("ok", "review") and r["product_preserved"] for r in rows)
    gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0}
    assert len(gpu_nodes) == 2
    actors = _pool_actors()
    assert set(actors) == {"SegmentPool", "CaptionPool", "InpaintPool"}
    for pool, nodes in actors.items():
        assert nodes <= gpu_nodes, f"{pool} ran off the GPU nodes: {nodes - gpu_nodes}"


def test_pools_that_do_not_fit_fail_at_start(gpu_cluster, tmp_path):
    from canvas_ray.config import ConfigError

    config = _config(**{"caption.resources.num_gpus": 3})  # no node has 3 GPUs
    with pytest.raises(ConfigError, match=r"caption pool needs 1 actors of .*3 GPU.*no single node"):
        run_generate(GenerateRequest(config, str(SAMPLE_CATALOG / "catalog.jsonl"), str(tmp_path)))
    config = _config(**{"inpaint.resources.concurrency": 5})  # 4 GPUs, one shared by segment + caption
    with pytest.raises(ConfigError, match=r"inpaint pool needs 5 actors .* but only 3 fit"):
        run_generate(GenerateRequest(config, str(SAMPLE_CATALOG / "catalog.jsonl"), str(tmp_path)))
    assert not (tmp_path / "manifest").exists()  # refused before any work


def _inpaint_victim(workers: list[Any], output: Path) -> Any | None:
    """Once an output image exists: a worker node that holds a live inpaint actor, else None."""
    from ray._private import state

    if not (output / "images").exists() or not any((output / "images").rglob("*.png")):
        return None
    alive = {
        info["Address"]["NodeID"]
        for info in state.actors().values()
        if "MapBatches(InpaintPool)" in info["ActorClassName"] and info["State"] == "ALIVE"
    }
    victims = [w for w in workers if w.node_id in alive]
    return victims[-1] if victims else None


def _written(output: Path) -> int:
    return len(list((output / "images").rglob("*.png")))


def _assert_exactly_once(output: Path, wanted: list[str]) -> None:
    rows = _records(output)
    ids = [r["output_id"] for r in rows]
    assert len(ids) == len(set(ids)) and sorted(ids) == wanted  # exactly once each
    assert [r for r in rows if r["status"] == "error"] == []  # nothing failed because of the lost node


def _gpu_nodes_alive() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def test_node_lost_and_replaced_mid_job_recovers_in_the_run(gpu_cluster, tmp_path):
    """gpu.yaml's shape ("1..auto" holds every GPU). The worker node holding inpaint actors is removed once
    the first outputs are written and a replacement joins, as a cluster's autoscaler brings one: the lost
    actors restart there and the same run finishes with exactly one record per output, none an error."""
    cluster, workers = gpu_cluster
    config = _config()
    catalog = sample_copies(tmp_path / "catalog", copies=3)
    output = tmp_path / "out"
    wanted = _wanted(catalog, config)
    result: dict[str, Any] = {}

    def job() -> None:
        try:
            request = GenerateRequest(config, str(catalog), str(output), progress=False)
            result["summary"] = run_generate(request)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            result["error"] = error

    runner = threading.Thread(target=job, daemon=True)
    runner.start()
    victim = None
    while runner.is_alive() and victim is None:
        time.sleep(0.2)
        victim = _inpaint_victim(workers, output)
    assert victim is not None, f"no worker node held inpaint actors while the job ran: {result}"
    written = _written(output)
    cluster.remove_node(victim)  # Cluster.add_node registers signal handlers: the main thread does both
    workers.remove(victim)
    workers.append(cluster.add_node(**GPU_NODE))
    runner.join(timeout=600)
    assert not runner.is_alive(), "the job did not finish within 10 minutes of the replacement joining"
    assert "error" not in result, repr(result.get("error"))
    assert written < len(wanted)  # lost mid-job
    assert result["summary"]["missing_outputs"] == 0 and result["summary"]["errors"] == 0
    _assert_exactly_once(output, wanted)
    cluster.wait_for_nodes()
    assert _gpu_nodes_alive() == 2


def test_node_lost_without_room_finishes_or_stops_with_a_reason(gpu_cluster, tmp_path):
    """Every GPU held by a fixed-size pool and no node to replace the lost one. Ray Data usually moves the
    lost actors' blocks to the survivors and finishes; when the lost actors' tasks wait for a restart that
    cannot happen, the job must not wait in silence: after ``ray.stall_timeout_s`` it fails with
    JobStalledError naming the pool and what to do. Either way, once a node is back, a re-run leaves
    exactly one record per output and no error (the test prints which case held)."""
    from canvas_ray.watch import JobStalledError

    cluster, workers = gpu_cluster
    config = _config(**{"inpaint.resources.concurrency": 3, "ray.stall_timeout_s": 45})
    catalog = sample_copies(tmp_path / "catalog", copies=3)
    output = tmp_path / "out"
    wanted = _wanted(catalog, config)
    removed: dict[str, Any] = {}
    finished = threading.Event()

    def remove_inpaint_node() -> None:
        while not finished.wait(0.2):
            victim = _inpaint_victim(workers, output)
            if victim is not None:
                removed.update(node=victim, written=_written(output))
                cluster.remove_node(victim)
                return

    watcher = threading.Thread(target=remove_inpaint_node, daemon=True)
    watcher.start()
    started = time.time()
    outcome = "finished in the run"
    try:
        summary = run_generate(GenerateRequest(config, str(catalog), str(output), progress=False))
        assert summary["missing_outputs"] == 0 and summary["errors"] == 0
    except JobStalledError as error:
        outcome = "stopped with a reason, finished by the re-run"
        assert "stall_timeout_s=45 s" in str(error) and "resumes" in str(error)
        assert json.loads((output / "progress.json").read_text())["state"] == "stalled"
    finally:
        finished.set()
        watcher.join(timeout=60)
    seconds = time.time() - started
    print(f"node lost after {removed.get('written')} of {len(wanted)} outputs: {outcome} ({seconds:.0f} s)")
    assert removed and removed["written"] < len(wanted)  # lost mid-job
    workers.remove(removed["node"])
    workers.append(cluster.add_node(**GPU_NODE))
    cluster.wait_for_nodes()
    summary = run_generate(GenerateRequest(config, str(catalog), str(output), progress=False))
    assert summary["missing_outputs"] == 0 and summary["errors"] == 0
    _assert_exactly_once(output, wanted)
    assert _gpu_nodes_alive() == 2


def test_serve_app_with_gpu_deployments(gpu_cluster):
    """The online app on the same cluster: gpu.yaml's model deployments (fractional GPUs) on GPU nodes."""
    import httpx
    from ray import serve

    from serve.app import build_app

    # the model deployments as in gpu.yaml; the ingress replicas (composite.resources) sized for this
    # 16-CPU test cluster instead of gpu.yaml's 32 batch composite tasks
    config = _config(
        **{"serve.port": _free_port(), "serve.host": "127.0.0.1", "composite.resources.concurrency": 2}
    )
    serve.start(http_options={"host": "127.0.0.1", "port": config.serve.port})
    try:
        serve.run(build_app(config), name="canvas", route_prefix="/", blocking=False)
        from ray._private import state

        gpu_nodes = {n["NodeID"] for n in __import__("ray").nodes() if n["Resources"].get("GPU", 0) > 0}
        replicas: dict[str, set[str]] = {}
        for info in state.actors().values():
            for name in ("SegmentCaptionDeployment", "InpaintDeployment"):
                if name in info["ActorClassName"] and info["State"] == "ALIVE":
                    replicas.setdefault(name, set()).add(info["Address"]["NodeID"])
        assert set(replicas) == {"SegmentCaptionDeployment", "InpaintDeployment"}
        assert all(nodes <= gpu_nodes for nodes in replicas.values()), replicas
        image = (SAMPLE_CATALOG / "images" / "sku-0002.jpg").read_bytes()
        response = httpx.post(
            f"http://127.0.0.1:{config.serve.port}/v1/backgrounds",
            files=[("style", (None, "studio white")), ("aspect_ratios", (None, "1:1")),
                   ("image", ("mug.jpg", image, "image/jpeg"))],
            timeout=120,
        )
        assert response.status_code == 200, response.text[:500]
        body = response.json()
        assert body["errors"] == [] and len(body["images"]) == 1
        assert body["images"][0]["status"] in ("ok", "review") and body["images"][0]["product_preserved"]
    finally:
        serve.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
