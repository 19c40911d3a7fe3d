"""Config schema: defaults, the shipped local config, strict keys, value checks, overrides, fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from canvas_ray.config import (
    DEFAULT_STYLES_FILE,
    CanvasConfig,
    ConfigError,
    config_from_dict,
    load_config,
    parse_aspect,
)

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "configs" / "local.yaml"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_load():
    config = load_config()
    assert isinstance(config, CanvasConfig)
    assert config.source == "<defaults>"
    assert config.segment.backend == "backdrop"
    assert config.inpaint.backend == "studio"
    assert config.inpaint.resolution % 8 == 0
    assert config.output.aspect_ratios == ["1:1"]
    assert Path(config.styles.file) == DEFAULT_STYLES_FILE
    assert Path(config.styles.file).is_file()


def test_local_yaml_loads_with_its_values():
    raw = yaml.safe_load(LOCAL.read_text())
    config = load_config(LOCAL)
    assert config.source == str(LOCAL)
    assert config.segment.backend == raw["segment"]["backend"]
    assert config.output.aspect_ratios == raw["output"]["aspect_ratios"]
    assert config.styles.default == raw["styles"]["default"]
    assert config.segment.resources.num_cpus == raw["segment"]["resources"]["num_cpus"]
    # the relative styles file resolves next to local.yaml
    assert Path(config.styles.file) == (LOCAL.parent / raw["styles"]["file"]).resolve()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"inpaint": {"stepz": 5}}, "inpaint.stepz"),
        ({"segment": {"resources": {"gpus": 1}}}, "segment.resources.gpus"),
        ({"output": {"formatt": "png"}}, "output.formatt"),
    ],
)
def test_unknown_keys_fail_naming_the_dotted_key(tmp_path, data, key):
    path = _write(tmp_path / "c.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert key in message
    assert "unknown key" in message


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"inpaint": {"steps": 0}}, "inpaint.steps"),
        ({"inpaint": {"resolution": 100}}, "inpaint.resolution"),
        ({"output": {"aspect_ratios": ["3:0"]}}, "output.aspect_ratios"),
        ({"output": {"aspect_ratios": ["banana"]}}, "output.aspect_ratios"),
        ({"output": {"aspect_ratios": ["1:1", "1:1"]}}, "output.aspect_ratios"),
        ({"segment": {"device": "gpu7"}}, "segment.device"),
        ({"inpaint": {"dtype": "int8"}}, "inpaint.dtype"),
        ({"composite": {"fill": 0}}, "composite.fill"),
        ({"serve": {"port": 70000}}, "serve.port"),
    ],
)
def test_bad_values_fail_naming_the_key(tmp_path, data, key):
    path = _write(tmp_path / "c.yaml", data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_resolution_multiple_of_8_message(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_config(_write(tmp_path / "c.yaml", {"inpaint": {"resolution": 100}}))
    assert (
        load_config(_write(tmp_path / "d.yaml", {"inpaint": {"resolution": 104}})).inpaint.resolution == 104
    )


@pytest.mark.parametrize("good", ["cpu", "cuda", "cuda:1", "mps", "auto"])
def test_good_devices(good):
    assert load_config(overrides={"caption.device": good}).caption.device == good


def test_parse_aspect():
    assert parse_aspect("2:3") == pytest.approx(2 / 3)
    assert parse_aspect("16x9") == pytest.approx(16 / 9)
    assert parse_aspect("4/5") == pytest.approx(0.8)
    for bad in ("3:0", "0:3", "banana", "1:10", ""):
        with pytest.raises(ValueError):
            parse_aspect(bad)


def test_dotted_overrides():
    config = load_config(
        LOCAL, overrides={"inpaint.steps": 7, "output.variants": 3, "segment.resources.concurrency": 2}
    )
    assert config.inpaint.steps == 7
    assert config.output.variants == 3
    assert config.segment.resources.concurrency == 2
    # untouched siblings keep the file's values
    assert (
        config.segment.resources.num_cpus
        == yaml.safe_load(LOCAL.read_text())["segment"]["resources"]["num_cpus"]
    )


def test_bad_overrides_fail():
    with pytest.raises(ConfigError, match=r"inpaint\.stepz"):
        load_config(overrides={"inpaint.stepz": 3})
    with pytest.raises(ConfigError, match="inpaint.steps"):
        load_config(overrides={"inpaint.steps": -1})
    with pytest.raises(ConfigError, match="not a section"):
        load_config(LOCAL, overrides={"output.variants.x": 1})


def test_relative_styles_file_resolves_against_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    folder.mkdir()
    shutil.copy(DEFAULT_STYLES_FILE, folder / "mystyles.yaml")
    path = _write(folder / "c.yaml", {"styles": {"file": "mystyles.yaml"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert Path(config.styles.file) == (folder / "mystyles.yaml").resolve()
    assert Path(config.styles.file).is_file()


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("segment: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_fit_scale_needs_long_side():
    with pytest.raises(ConfigError, match="output.long_side"):
        load_config(overrides={"composite.scale": "fit"})
    config = load_config(overrides={"composite.scale": "fit", "output.long_side": 1024})
    assert config.output.long_side == 1024


# --- fingerprint --------------------------------------------------------------------------------------


@pytest.fixture
def own_styles(tmp_path) -> Path:
    """A config next to a private copy of the styles file, so the test may edit the presets."""
    shutil.copy(DEFAULT_STYLES_FILE, tmp_path / "styles.yaml")
    raw = yaml.safe_load(LOCAL.read_text())
    raw["styles"]["file"] = "styles.yaml"
    return _write(tmp_path / "config.yaml", raw)


def test_fingerprint_stable_across_loads(own_styles):
    first = load_config(own_styles).fingerprint()
    assert first == load_config(own_styles).fingerprint()
    assert load_config(LOCAL).fingerprint() == load_config(LOCAL).fingerprint()
    assert isinstance(first, str) and len(first) == 16


@pytest.mark.parametrize(
    "overrides",
    [
        {"inpaint.steps": 31},
        {"output.aspect_ratios": ["1:1", "2:3"]},
        {"inpaint.guidance_scale": 5.0},
        {"composite.fill": 0.7},
        {"segment.threshold": 0.4},
    ],
)
def test_fingerprint_changes_with_pixel_settings(own_styles, overrides):
    base = load_config(own_styles).fingerprint()
    assert load_config(own_styles, overrides=overrides).fingerprint() != base


@pytest.mark.parametrize(
    "overrides",
    [
        {"segment.resources.concurrency": 3},
        {"inpaint.resources.batch_size": 2},
        {"composite.resources.num_cpus": 1.5},
        {"serve.port": 9123},
        {"serve.max_batch_size": 3},
        {"ray.io_concurrency": 9},
        {"inpaint.device": "cpu"},
    ],
)
def test_fingerprint_ignores_resources_and_serving(own_styles, overrides):
    base = load_config(own_styles).fingerprint()
    assert load_config(own_styles, overrides=overrides).fingerprint() == base


def test_fingerprint_changes_with_style_preset_prompt(own_styles):
    before = load_config(own_styles).fingerprint()
    styles_path = own_styles.parent / "styles.yaml"
    data = yaml.safe_load(styles_path.read_text())
    data["styles"]["studio white"]["prompt"] = data["styles"]["studio white"]["prompt"] + ", slightly warmer"
    styles_path.write_text(yaml.safe_dump(data))
    after = load_config(own_styles).fingerprint()
    assert after != before


def test_equal_aspect_ratios_are_one_canonical_ratio():
    config = config_from_dict({"output": {"aspect_ratios": ["16x9", " 4 / 5 "]}})
    assert config.output.aspect_ratios == ["16:9", "4:5"]
    with pytest.raises(ConfigError, match="output.aspect_ratios"):
        config_from_dict({"output": {"aspect_ratios": ["16:9", "16x9"]}})


def test_fingerprint_ignores_where_the_styles_file_lives(tmp_path):
    from canvas_ray.config import DEFAULT_STYLES_FILE

    copies = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "styles.yaml").write_bytes(DEFAULT_STYLES_FILE.read_bytes())
        copies.append(config_from_dict({"styles": {"file": str(folder / "styles.yaml")}}).fingerprint())
    assert copies[0] == copies[1]
