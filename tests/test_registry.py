"""One backend registry per stage kind: config validates names against it, a new backend is one class."""

from __future__ import annotations

import numpy as np
import pytest

from canvas_ray.config import ConfigError, config_from_dict
from canvas_ray.registry import OWNERS, Registry, registry_for
from canvas_ray.rows import Status
from canvas_ray.schema import split_error


@pytest.mark.parametrize("kind", sorted(OWNERS))
def test_config_rejects_unknown_backends_listing_the_registered_ones(kind):
    names = registry_for(kind).names()
    assert names, f"no {kind} backend registered"
    with pytest.raises(ConfigError) as error:
        config_from_dict({kind: {"backend": "nope"}})
    assert f"{kind}.backend 'nope' unknown" in str(error.value)
    assert all(repr(name) in str(error.value) for name in names)


@pytest.mark.parametrize(
    ("kind", "name"), [(kind, name) for kind in sorted(OWNERS) for name in registry_for(kind).names()]
)
def test_every_registered_backend_is_a_valid_config_choice(kind, name):
    """What the registry holds is what config accepts, and each name maps to its own class."""
    assert config_from_dict({kind: {"backend": name}}).model_dump()[kind]["backend"] == name
    registry = registry_for(kind)
    assert registry.get(name) is registry.get(registry.check(name))
    others = [registry.get(other) for other in registry.names() if other != name]
    assert registry.get(name) not in others


def test_the_owners_hold_the_model_stages_of_the_spec():
    """Every model stage of the pipeline spec has a registry, and nothing else has one."""
    from canvas_ray.spec import model_stages

    assert set(OWNERS) == set(model_stages())


def test_a_new_backend_is_one_registered_class():
    from canvas_ray.stages.segment import BACKENDS, Segment

    @BACKENDS.register("test-everything-is-product-but-a-border")
    class Frame:
        def __init__(self, spec):
            self.spec = spec

        def product_masks(self, images):
            masks = []
            for image in images:
                mask = np.zeros(image.shape[:2], np.float32)
                mask[2:-2, 2:-2] = 1.0
                masks.append(mask)
            return masks

    try:
        config = config_from_dict({"segment": {"backend": "test-everything-is-product-but-a-border"}})
        batch = {"image": np.empty(1, dtype=object), "status": np.array(["ok"], dtype=object)}
        batch["image"][0] = np.zeros((20, 20, 3), np.uint8)
        out = Segment(config)(batch)
        assert out["status"][0] == "ok" and out["product_mask"][0][10, 10] >= 128
    finally:
        BACKENDS._entries.pop("test-everything-is-product-but-a-border")


def test_registry_refuses_a_second_class_under_one_name():
    registry: Registry[object] = Registry("thing")
    registry.register("a")(int)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(str)


def test_training_config_uses_the_same_registries(tmp_path):
    from canvas_ray.train.config import DataSection

    assert DataSection(segment_backend="onnx").segment_backend == "onnx"
    with pytest.raises(ValueError, match="caption.backend 'nope' unknown"):
        DataSection(caption_backend="nope")


def test_status_values_and_error_split():
    assert [s.value for s in Status] == ["ok", "error", "rejected", "review"]
    assert split_error("decode: not an image: truncated") == ("decode", "not an image: truncated")
    assert split_error("") == (None, None)
    assert split_error("weird text without stage") == (None, "weird text without stage")
