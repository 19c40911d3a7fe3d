"""The Serve graph comes from the pipeline spec and ``serve.colocate``: model stages with nothing between
them share a replica (``chained``), each has its own (``split``), one replica runs segment..inpaint
(``models``) or the ingress holds them (``ingress``); a replica asks for its stages' resources together."""

from __future__ import annotations

import pytest

from canvas_ray.config import ConfigError, load_config
from canvas_ray.spec import COLOCATE, PIPELINE, in_process_stages, serve_groups
from serve.deployments import deployment_name, deployment_options, ingress_options
from tests.conftest import REPO


def test_consecutive_pool_steps_form_one_group():
    groups = serve_groups("chained")
    assert groups == (("segment", "caption"), ("inpaint",))
    # every pool step of the spec is served exactly once, in order
    pools = [s.stages[0] for s in PIPELINE if s.kind == "pool"]
    assert [name for group in groups for name in group] == pools
    assert [deployment_name(g) for g in groups] == ["SegmentCaptionDeployment", "InpaintDeployment"]


@pytest.mark.parametrize("colocate", COLOCATE)
def test_every_colocation_serves_each_model_stage_once_in_spec_order(colocate):
    groups = serve_groups(colocate)
    pools = [s.stages[0] for s in PIPELINE if s.kind == "pool"]
    served = [name for group in groups for name in group]
    assert [name for name in served if name in pools] == pools
    order = in_process_stages()
    assert served == sorted(served, key=order.index)  # in pipeline order, each once
    for group in groups:  # a group is a contiguous run of the stages an in-process driver runs
        start = order.index(group[0])
        assert tuple(order[start : start + len(group)]) == group
    hand_offs = {"split": 3, "chained": 2, "models": 1, "ingress": 1}[colocate]
    assert len(groups) == hand_offs


def test_one_group_spans_segment_to_inpaint_with_the_cheap_stage_between():
    assert serve_groups("models") == serve_groups("ingress") == (("segment", "caption", "prompt", "inpaint"),)
    assert serve_groups("split") == (("segment",), ("caption",), ("inpaint",))
    with pytest.raises(ValueError, match="serve.colocate"):
        serve_groups("everywhere")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="colocate"):
        load_config(REPO / "configs" / "tiny.yaml", {"serve.colocate": "everywhere"})


def test_the_ingress_holding_the_models_asks_for_them_on_top_of_its_own():
    config = load_config(REPO / "configs" / "local.yaml", {"serve.colocate": "ingress"})
    group = serve_groups("ingress")[0]
    options = ingress_options(config, group)
    res = {name: getattr(config, name).resources for name in ("segment", "caption", "inpaint", "composite")}
    actor = options["ray_actor_options"]
    assert actor["num_cpus"] == pytest.approx(sum(r.num_cpus for r in res.values()))
    # each replica holds every model: as many as the scarcest model has copies (local.yaml: 2 IS-Net, 1 each
    # of the others), so one replica of 1.2 CPU, which fits the 2-CPU machine local.yaml is written for
    assert options["num_replicas"] == 1 and actor["num_cpus"] <= 2
    assert "name" not in options and options["max_ongoing_requests"] == 128
    models = deployment_options(group, config)
    assert models["name"] == "SegmentCaptionInpaintDeployment"
    own = res["composite"].num_cpus
    assert models["ray_actor_options"]["num_cpus"] == pytest.approx(actor["num_cpus"] - own)
    plain = ingress_options(config)
    assert plain["ray_actor_options"] == {"num_cpus": res["composite"].num_cpus}
    assert plain["num_replicas"] == res["composite"].concurrency


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
