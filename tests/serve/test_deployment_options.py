"""The Serve graph comes from the pipeline spec: model stages with nothing between them share a replica,
which asks for their resources together."""

from __future__ import annotations

from canvas_ray.config import load_config
from canvas_ray.spec import PIPELINE, chained_model_stages
from serve.deployments import deployment_name, deployment_options
from tests.conftest import REPO


def test_consecutive_pool_steps_form_one_group():
    groups = chained_model_stages()
    assert groups == (("segment", "caption"), ("inpaint",))
    # every pool step of the spec is served exactly once, in order
    pools = [s.stages[0] for s in PIPELINE if s.kind == "pool"]
    assert [name for group in groups for name in group] == pools
    assert [deployment_name(g) for g in groups] == ["SegmentCaptionDeployment", "InpaintDeployment"]


def test_a_shared_replica_asks_for_both_stages_resources():
    config = load_config(
        REPO / "configs" / "gpu.yaml",
        {
            "segment.resources.memory_mb": 1000,
            "caption.resources.memory_mb": 3000,
            "segment.resources.custom": {"gpu_node": 0.25},
            "caption.resources.custom": {"gpu_node": 0.75},
            "inpaint.resources.concurrency": "2..4",
        },
    )
    options = deployment_options(("segment", "caption"), config)
    actor = options["ray_actor_options"]
    seg, cap = config.segment.resources, config.caption.resources
    assert options["name"] == "SegmentCaptionDeployment"
    assert actor["num_gpus"] == seg.num_gpus + cap.num_gpus == 1.0  # gpu.yaml: 0.25 + 0.75, one GPU
    assert actor["num_cpus"] == seg.num_cpus + cap.num_cpus
    assert actor["memory"] == 4000 * 2**20 and actor["resources"] == {"gpu_node": 1.0}
    assert options["num_replicas"] == max(seg.concurrency, cap.concurrency)
    inpaint = deployment_options(("inpaint",), config)
    assert inpaint["name"] == "InpaintDeployment" and inpaint["ray_actor_options"]["num_gpus"] == 1
    assert inpaint["autoscaling_config"]["min_replicas"] == 2
    assert inpaint["autoscaling_config"]["max_replicas"] == 4
