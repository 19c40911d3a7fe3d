"""Editing a styles file (canvas_ray.style_files, behind `canvas-ray styles add`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from canvas_ray.config import ConfigError
from canvas_ray.style_files import add_lora_style
from canvas_ray.styles import StyleBook


def test_a_new_preset_is_appended_keeping_comments(tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"x")
    styles = tmp_path / "styles.yaml"
    styles.write_text("# house styles\nstyles:\n  plain:\n    prompt: a plain studio\n")
    preset = add_lora_style(styles, "Trained Look", lora, "a wooden table", weight=0.7)
    assert styles.read_text().startswith("# house styles\n")  # appended as text
    assert preset == {
        "prompt": "a wooden table",
        "lora": str(lora.resolve()),
        "lora_weight": 0.7,
        "description": "fine-tuned LoRA style Trained Look",
    }
    book = StyleBook.from_files([styles])
    assert book.presets["Trained Look"].lora == str(lora.resolve()) and "plain" in book.presets


def test_an_existing_preset_is_updated_in_place(tmp_path: Path) -> None:
    lora = tmp_path / "lora"
    lora.mkdir()
    styles = tmp_path / "nested" / "styles.yaml"  # created, with its folder
    add_lora_style(styles, "look", lora, "p1", description="first")
    add_lora_style(styles, "LOOK", lora, "p2", weight=0.5, negative_prompt="text")
    data = yaml.safe_load(styles.read_text())["styles"]
    assert list(data) == ["look"]
    assert data["look"] == {
        "prompt": "p2",
        "description": "first",
        "lora": str(lora.resolve()),
        "lora_weight": 0.5,
        "negative_prompt": "text",
    }


def test_refusals_leave_the_file_as_it_was(tmp_path: Path) -> None:
    styles = tmp_path / "styles.yaml"
    styles.write_text("styles: {}\n")
    with pytest.raises(ConfigError, match="does not exist"):
        add_lora_style(styles, "x", tmp_path / "nope", "p")
    lora = tmp_path / "lora.safetensors"
    lora.write_bytes(b"x")
    with pytest.raises(ConfigError):
        add_lora_style(styles, "x", lora, "")  # an empty prompt is no valid preset
    assert styles.read_text() == "styles: {}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors", "styles.yaml"]  # no temp left
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        add_lora_style(tmp_path / "list.yaml", "x", lora, "p")
