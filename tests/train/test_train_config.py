"""The fine-tuning schema is derived from the main one: same base, same rules, same errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from canvas_ray.config import ConfigError, config_from_dict
from canvas_ray.train.config import finetune_config_from_dict


def test_resolution_rule_is_the_inpaint_rule() -> None:
    with pytest.raises(
        ConfigError, match="resolution: Value error, resolution must be a multiple of 8, got 100"
    ):
        finetune_config_from_dict({"base_model": "x", "resolution": 100})
    with pytest.raises(
        ConfigError, match="inpaint.resolution: Value error, resolution must be a multiple of 8"
    ):
        config_from_dict({"inpaint": {"resolution": 100}})
    assert finetune_config_from_dict({"base_model": "x", "resolution": 40}).resolution == 40  # its own range


def test_data_prep_models_follow_the_stage_rules() -> None:
    with pytest.raises(ConfigError, match="data.segment_backend"):
        finetune_config_from_dict({"base_model": "x", "data": {"segment_backend": "nope"}})
    with pytest.raises(ConfigError, match="data.device: Value error, device must be auto, cpu, mps, cuda"):
        finetune_config_from_dict({"base_model": "x", "data": {"device": "gpu"}})
    with pytest.raises(ConfigError, match="segment.device: Value error, device must be auto, cpu, mps, cuda"):
        config_from_dict({"segment": {"device": "gpu"}})
    assert (
        finetune_config_from_dict({"base_model": "x", "data": {"device": "cuda:1"}}).data.device == "cuda:1"
    )


def test_paths_resolve_like_the_main_config(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    config = finetune_config_from_dict(
        {"base_model": "base", "data": {"segment_model": "./seg", "caption_model": "org/captioner"}},
        base=tmp_path,
    )
    assert config.base_model == str(tmp_path / "base")
    assert config.data.segment_model == str(tmp_path / "seg")  # './' always counts as relative
    assert config.data.caption_model == "org/captioner"  # a hub id stays one
    main = config_from_dict({"inpaint": {"backend": "diffusers", "model": "base"}}, base=tmp_path)
    assert main.inpaint.model == config.base_model
