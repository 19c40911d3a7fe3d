"""Every shipped config validates, and the CLI's tiny-models command writes a runnable config."""

from __future__ import annotations

import pytest

from canvas_ray.config import load_config
from tests.conftest import REPO


@pytest.mark.parametrize("name", ["local.yaml", "weightfree.yaml", "tiny.yaml", "gpu.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(REPO / "configs" / name)
    assert config.styles.default
    assert config.fingerprint()


def test_gpu_config_gives_every_model_a_gpu_pool():
    config = load_config(REPO / "configs" / "gpu.yaml")
    for stage in (config.segment, config.caption, config.inpaint):
        assert stage.backend in ("hf", "diffusers") and stage.model
        assert stage.resources.num_gpus > 0 and stage.device == "cuda"


def test_tiny_config_points_at_the_tiny_model_folder():
    config = load_config(REPO / "configs" / "tiny.yaml")
    assert config.inpaint.model == str(REPO / ".tiny-models" / "inpainter")
    assert config.caption.model == str(REPO / ".tiny-models" / "captioner")
