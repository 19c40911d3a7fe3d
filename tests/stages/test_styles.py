"""Style presets, free-text styles, prompts, broken style files and the weight-free backdrop renderer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from canvas_ray.backdrops import render_backdrop
from canvas_ray.config import DEFAULT_STYLES_FILE, ConfigError, load_config
from canvas_ray.styles import MAX_STYLE_TEXT, Backdrop, StyleBook, build_prompt, hex_to_rgb, style_key

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "configs" / "local.yaml"
KINDS = ("solid", "gradient", "sweep")


@pytest.fixture(scope="module")
def book() -> StyleBook:
    return StyleBook.from_config(load_config(LOCAL))


def test_presets_loaded(book):
    names = book.names()
    assert len(names) >= 12
    for name in ("studio white", "marble countertop", "halloween"):
        assert name in names
    raw = yaml.safe_load(DEFAULT_STYLES_FILE.read_text())
    assert set(names) == set(raw["styles"])
    assert book.presets["halloween"].prompt == raw["styles"]["halloween"]["prompt"]
    assert book.default_negative == raw["default_negative_prompt"]


@pytest.mark.parametrize("requested", ["studio white", "STUDIO WHITE", "  Studio   White ", "sTuDiO wHiTe"])
def test_resolve_preset_case_insensitive(book, requested):
    style = book.resolve(requested)
    assert style.preset is True
    assert style.name == "studio white"
    assert style.key == "studio-white"
    assert style.prompt == book.presets["studio white"].prompt
    assert style.negative_prompt == book.presets["studio white"].negative_prompt


def test_preset_without_negative_uses_default(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump({"default_negative_prompt": "no cats", "styles": {"plain": {"prompt": "a wall"}}})
    )
    style = StyleBook.from_files([path]).resolve("Plain")
    assert style.negative_prompt == "no cats"
    assert style.backdrop == Backdrop()


def test_free_text_style(book):
    text = "on a navy velvet cloth"
    style = book.resolve(text)
    assert style.preset is False
    assert style.key.startswith("custom-")
    assert style.key == book.resolve(text).key  # deterministic
    assert style.key == book.resolve("  on a navy   velvet cloth ").key  # whitespace-normalised
    assert style.key != book.resolve("on a navy velvet blanket").key
    assert "#22335a" in style.backdrop.colors
    assert style.prompt.startswith(text)
    assert style.negative_prompt == book.default_negative
    # key is filesystem-safe
    assert all(c.isalnum() or c == "-" for c in style.key)


def test_free_text_colour_and_texture_words(book):
    style = book.resolve("a red and gold marble slab")
    assert style.backdrop.colors[:2] == ["#c8413b", "#c9a34a"]
    assert style.backdrop.texture == "marble"
    # no colour words: a light colour derived from the text, plus a darker partner
    plain = book.resolve("somewhere calm")
    assert len(plain.backdrop.colors) == 2
    first, second = (hex_to_rgb(c) for c in plain.backdrop.colors)
    assert min(first) >= 200
    assert all(b <= a for a, b in zip(first, second, strict=True))


def test_bad_style_text(book):
    for empty in ("", "   ", "\n\t"):
        with pytest.raises(ValueError, match="empty"):
            book.resolve(empty)
    with pytest.raises(ValueError, match=str(MAX_STYLE_TEXT)):
        book.resolve("x" * (MAX_STYLE_TEXT + 1))
    assert book.resolve("y" * MAX_STYLE_TEXT).preset is False


def test_style_key():
    assert style_key("Flat-lay Wood!") == "flat-lay-wood"
    assert style_key("!!!") == "style"
    assert len(style_key("a" * 100)) == 40


def test_build_prompt(book):
    style = book.resolve("marble countertop")
    words = [f"w{i}" for i in range(30)]
    prompt = build_prompt(style, " ".join(words), max_words=20)
    assert prompt.startswith(" ".join(words[:20]) + ", ")
    assert "w20" not in prompt.split(", ")[0].split()
    assert prompt.endswith(style.prompt)
    short = build_prompt(style, "amber glass perfume bottle.", max_words=20)
    assert short == f"amber glass perfume bottle, {style.prompt}"
    assert build_prompt(style, "   ") == style.prompt


# --- broken style files ---------------------------------------------------------------------------------


def _broken(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(DEFAULT_STYLES_FILE.read_text())
    edit(data)
    path = tmp_path / "styles.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_hex_colour(tmp_path):
    path = _broken(tmp_path, lambda d: d["styles"]["halloween"]["backdrop"].update(colors=["#ff00zz"]))
    with pytest.raises(ConfigError) as info:
        StyleBook.from_files([path])
    message = str(info.value)
    assert "'halloween'" in message and "backdrop.colors" in message and str(path) in message


def test_bad_floor_colour(tmp_path):
    path = _broken(tmp_path, lambda d: d["styles"]["studio white"]["backdrop"].update(floor="white"))
    with pytest.raises(ConfigError, match=r"'studio white'.*backdrop\.floor"):
        StyleBook.from_files([path])


def test_unknown_style_field(tmp_path):
    path = _broken(tmp_path, lambda d: d["styles"]["marble countertop"].update(promt="typo"))
    with pytest.raises(ConfigError, match=r"'marble countertop'.*promt"):
        StyleBook.from_files([path])


def test_unknown_backdrop_kind(tmp_path):
    path = _broken(tmp_path, lambda d: d["styles"]["halloween"]["backdrop"].update(kind="spiral"))
    with pytest.raises(ConfigError, match=r"'halloween'.*backdrop\.kind"):
        StyleBook.from_files([path])


def test_missing_styles_mapping(tmp_path):
    path = tmp_path / "styles.yaml"
    path.write_text(yaml.safe_dump({"presets": {"a": {"prompt": "b"}}}))
    with pytest.raises(ConfigError, match="styles:"):
        StyleBook.from_files([path])
    with pytest.raises(ConfigError, match="not found"):
        StyleBook.from_files([tmp_path / "missing.yaml"])


def test_extra_files_add_presets(tmp_path):
    shutil.copy(DEFAULT_STYLES_FILE, tmp_path / "styles.yaml")
    (tmp_path / "more.yaml").write_text(
        yaml.safe_dump({"styles": {"Brand Blue": {"prompt": "blue seamless"}}})
    )
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump({"styles": {"file": "styles.yaml", "extra_files": ["more.yaml"]}}))
    book = StyleBook.from_config(load_config(config_path))
    assert "Brand Blue" in book.names() and "studio white" in book.names()
    assert book.resolve("brand blue").preset is True


# --- backdrop renderer ----------------------------------------------------------------------------------


def test_render_every_preset_and_kind(book):
    size = (40, 30)  # width, height
    for name in book.names():
        for kind in KINDS:
            backdrop = book.presets[name].backdrop.model_copy(update={"kind": kind})
            image = render_backdrop(backdrop, size, seed=11)
            assert image.shape == (30, 40, 3), (name, kind)
            assert image.dtype == np.uint8
            np.testing.assert_array_equal(image, render_backdrop(backdrop, size, seed=11))
            assert not np.array_equal(image, render_backdrop(backdrop, size, seed=12)), (name, kind)


@pytest.mark.parametrize("horizon", [None, 0.1, 0.5, 0.99])
def test_render_sweep_horizon_and_free_text(book, horizon):
    style = book.resolve("on a navy velvet cloth")
    image = render_backdrop(style.backdrop, (64, 96), seed=3, horizon=horizon)
    assert image.shape == (96, 64, 3) and image.dtype == np.uint8


def test_solid_backdrop_colour():
    backdrop = Backdrop(kind="solid", colors=["#336699"], light="top", texture="none")
    image = render_backdrop(backdrop, (50, 40), seed=1).astype(float)
    target = np.array(hex_to_rgb("#336699"), float)
    # tint (+-2.5%) and light gain (about 0.88 .. 1.06) keep it close to the colour
    mean = image.reshape(-1, 3).mean(axis=0)
    assert (np.abs(mean - target) < 0.15 * target + 3).all()


def test_style_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "styles.yaml"
    path.write_text("styles:\n  spooky: a haunted house at night\n")
    with pytest.raises(ConfigError, match=r"'spooky'.*mapping"):
        StyleBook.from_files([path])
