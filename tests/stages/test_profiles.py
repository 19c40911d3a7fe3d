"""Output profiles: every shipped profile on the sample catalog, compliance checks, exact product pixels
under scaling, the too-small-source error, ids and resume, and per-profile counts in the summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import yaml
from PIL import Image

from canvas_ray.compose import HARD, Placement, place_product
from canvas_ray.config import REPO_ROOT, ConfigError, load_config
from canvas_ray.pipeline import LocalPipeline, items_batch
from canvas_ray.profiles import ProfileBook, check_compliance
from canvas_ray.rows import take_rows
from canvas_ray.stages.base import StageContext
from canvas_ray.stages.prompt import Prompt, output_id

SAMPLE = REPO_ROOT / "examples" / "catalog"
WEIGHTFREE = REPO_ROOT / "configs" / "weightfree.yaml"
SHIPPED = ProfileBook.load(REPO_ROOT / "configs" / "profiles.yaml")
ALL_ITEMS = [f"sku-{i:04d}" for i in range(1, 13)]


def image_uri(item: str) -> str:
    return str(next((SAMPLE / "images").glob(f"{item}.*")))


def config(**overrides):
    return load_config(WEIGHTFREE, {"styles.default": ["studio white"], **overrides})


def run(items: list[dict], **overrides) -> dict:
    return LocalPipeline(config(**overrides), keep_intermediate=True).run_batch(items_batch(items))


@pytest.fixture(scope="module")
def segmented() -> dict:
    """The 12 sample items fetched, decoded, segmented and captioned once (segmentation is the slow part)."""
    stages = LocalPipeline(config()).stages
    batch = items_batch([{"item_id": i, "image_uri": image_uri(i)} for i in ALL_ITEMS])
    for name in ("fetch", "decode", "segment", "caption"):
        batch = stages[name](batch)
    return batch


def generate(segmented: dict, items: list[str], profile: str, **overrides) -> dict:
    """Prompt → Inpaint → Composite for some segmented items, asking for ``profile`` ("a|b")."""
    rows = [ALL_ITEMS.index(i) for i in items]
    batch = take_rows(segmented, rows)
    batch["profile"] = np.array([profile] * len(rows), dtype=object)
    stages = LocalPipeline(config(**overrides), keep_intermediate=True).stages
    for name in ("prompt", "inpaint", "composite"):
        batch = stages[name](batch)
    return batch


def test_shipped_profiles_have_the_channel_rules():
    names = set(SHIPPED.names())
    assert {
        "amazon-main",
        "amazon-lifestyle",
        "google-shopping",
        "pinterest-standard",
        "instagram-square",
        "instagram-portrait",
        "stories",
    } <= names
    main = SHIPPED.get("amazon-main")
    assert (main.background, main.shadow, main.min_fill) == ("pure_white", False, 0.85)
    assert max(main.smallest) >= 1000 and max(main.size) <= 10_000
    assert SHIPPED.get("pinterest-standard").size == (1000, 1500)
    assert SHIPPED.get("pinterest-standard").aspect == "2:3"
    assert SHIPPED.get("instagram-square").aspect == "1:1"
    assert SHIPPED.get("instagram-portrait").aspect == "4:5"
    assert SHIPPED.get("stories").size == (1080, 1920)
    assert min(SHIPPED.get("google-shopping").smallest) >= 250
    with pytest.raises(ValueError, match="unknown profile 'ebay'"):
        SHIPPED.get("ebay")


def test_config_validates_profile_names():
    assert config(**{"output.profiles": ["amazon-main"]}).output.profiles == ["amazon-main"]
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        config(**{"output.profiles": ["nope"]})
    with pytest.raises(ConfigError, match="bad profile name"):
        config(**{"output.profiles": ["../x"]})


def _expected_product(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """The product as it must appear, rebuilt independently: source crop resampled by the placement."""
    where = Placement.from_json(row["placement"])
    return place_product(row["image"], row["product_mask"], where, fill_color=(0, 0, 0))


def _check_output(out: dict, index: int, profile_name: str) -> None:
    profile = SHIPPED.get(profile_name)
    result, mask = out["result"][index], out["canvas_mask"][index]
    hard = mask >= HARD
    assert out["status"][index] in ("ok", "review"), out["error"][index]  # review: the mask gate
    assert out["compliant"][index] is True and out["compliance_issues"][index] == ""
    height, width = result.shape[:2]
    min_w, min_h = profile.smallest
    assert min_w <= width <= profile.size[0] and min_h <= height <= profile.size[1]
    assert abs(width / height - profile.size[0] / profile.size[1]) < 0.01
    # product preserved bit for bit against the same resampled product that was pasted
    assert out["product_preserved"][index] and out["max_product_diff"][index] == 0
    assert np.array_equal(result[hard], out["canvas"][index][hard])
    assert out["upscaled"][index] == (out["product_scale"][index] > 1)
    ys, xs = np.nonzero(hard)
    fill = max((xs.max() - xs.min() + 1) / width, (ys.max() - ys.min() + 1) / height)
    assert fill == pytest.approx(out["fill_ratio"][index], abs=1e-3)
    if profile_name == "amazon-main":
        assert np.all(result[~hard] == 255), "background must be exactly RGB 255 outside the product"
        assert out["background_purity"][index] == 1.0
        assert fill >= 0.85
        assert max(width, height) >= 1000


def _rebuilt_product_matches(out: dict, index: int, segmented: dict) -> None:
    """Independent rebuild of the pasted product from the decoded source, its mask and the placement."""
    source = ALL_ITEMS.index(str(out["item_id"][index]))
    row = {
        "placement": out["placement"][index],
        "image": segmented["image"][source],
        "product_mask": segmented["product_mask"][source],
    }
    assert Placement.from_json(row["placement"]).scale == pytest.approx(out["product_scale"][index])
    canvas, canvas_mask = _expected_product(row)
    hard = canvas_mask >= HARD
    assert np.array_equal(hard, out["canvas_mask"][index] >= HARD)
    assert np.array_equal(out["result"][index][hard], canvas[hard])


def test_amazon_main_on_every_sample_item(segmented):
    out = generate(segmented, ALL_ITEMS, "amazon-main")
    assert len(out["status"]) == len(ALL_ITEMS)
    for index in range(len(ALL_ITEMS)):
        _check_output(out, index, "amazon-main")
        _rebuilt_product_matches(out, index, segmented)


def test_every_profile_on_sample_items_keeps_the_product_exact(segmented):
    names = SHIPPED.names()
    out = generate(segmented, ["sku-0003", "sku-0012"], "|".join(names))  # widest, smallest product
    assert len(out["status"]) == 2 * len(names)
    for index in range(len(out["status"])):
        _check_output(out, index, str(out["profile"][index]))
        _rebuilt_product_matches(out, index, segmented)
    assert set(out["profile"]) == set(names)
    google = [i for i, p in enumerate(out["profile"]) if p == "google-shopping"]
    assert all(out["product_scale"][i] == 1.0 for i in google)  # never enlarged: native pixels


def test_small_source_gets_a_clear_error(tmp_path):
    small = tmp_path / "small.png"
    Image.open(image_uri("sku-0002")).convert("RGB").resize((300, 300)).save(small)
    out = run([{"item_id": "small", "image_uri": str(small), "profile": "amazon-main|instagram-square"}])
    by_profile = {str(p): i for i, p in enumerate(out["profile"])}
    main = by_profile["amazon-main"]
    assert out["status"][main] == "error"
    assert "profile: source 300x300 px is too small for profile amazon-main" in out["error"][main]
    assert out["status"][by_profile["instagram-square"]] in ("ok", "review")  # 256 px minimum: upscaled
    assert out["upscaled"][by_profile["instagram-square"]] is True


def _profiles_file(tmp_path: Path, **changes: dict) -> Path:
    data = yaml.safe_load((REPO_ROOT / "configs" / "profiles.yaml").read_text())
    for name, change in changes.items():
        data["profiles"][name].update(change)
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_upscaling_refused_unless_allowed_and_non_compliant_is_rejected(tmp_path, segmented):
    path = _profiles_file(
        tmp_path,
        **{
            "amazon-main": {"allow_upscale": False},
            "instagram-square": {"placement": "floor", "floor_margin": 0.0, "min_margin": 0.02},
        },
    )
    out = generate(
        segmented, ["sku-0001"], "amazon-main|instagram-square", **{"output.profiles_file": str(path)}
    )
    by_profile = {str(p): i for i, p in enumerate(out["profile"])}
    main = out["error"][by_profile["amazon-main"]]
    assert out["status"][by_profile["amazon-main"]] == "error"
    assert "source too small for profile amazon-main" in main and "does not allow upscaling" in main
    square = by_profile["instagram-square"]
    assert out["status"][square] == "rejected"  # touches the bottom edge: margin 0 < 2%
    assert out["error"][square].startswith("compliance: instagram-square: margin 0.0% below 2%")
    assert out["compliant"][square] is False


def test_compliance_check_catches_a_grey_pixel():
    profile = SHIPPED.get("amazon-main")
    image = np.full((1000, 1000, 3), 255, np.uint8)
    mask = np.zeros((1000, 1000), np.uint8)
    mask[50:950, 100:900] = 255
    image[50:950, 100:900] = 40
    assert check_compliance(image, mask, profile).compliant
    image[10, 10] = (254, 255, 255)
    check = check_compliance(image, mask, profile)
    assert not check.compliant and "not RGB 255" in check.issues[0]
    small = check_compliance(image[:900, :900], mask[:900, :900], profile)
    assert any("resolution 900x900 below 1000x1000" in issue for issue in small.issues)


def test_output_ids_keep_plain_aspects_and_name_profiles():
    prompt = Prompt(config(**{"output.aspect_ratios": ["1:1"]}), StageContext(fingerprint="-"))
    plain = {"item_id": np.array(["a"], dtype=object), "style": np.array([""], dtype=object)}
    assert prompt.output_ids(plain, 0) == ["a__studio-white__1x1__v0"]
    assert output_id("a", "studio-white", "1:1", 0) == "a__studio-white__1x1__v0"
    both = {**plain, "profile": np.array(["amazon-main|stories"], dtype=object)}
    assert prompt.output_ids(both, 0) == ["a__studio-white__amazon-main__v0", "a__studio-white__stories__v0"]
    with_aspect = {**both, "aspect_ratios": np.array(["4:5"], dtype=object)}
    assert prompt.output_ids(with_aspect, 0)[0] == "a__studio-white__4x5__v0"


def test_catalog_job_with_profiles_summary_and_resume(ray_local, tmp_path):
    from canvas_ray.batch import GenerateRequest, run_generate

    catalog = tmp_path / "catalog.jsonl"
    rows = [{"item_id": i, "image_uri": image_uri(i)} for i in ("sku-0002", "sku-0005")]
    rows.append({"item_id": "sku-0011", "image_uri": image_uri("sku-0011"), "profile": "stories"})
    catalog.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = config(**{"output.profiles": ["amazon-main", "instagram-portrait"]})
    output = tmp_path / "out"
    summary = run_generate(GenerateRequest(cfg, str(catalog), str(output), progress=False))
    # ok, or review where the weight-free mask gate cannot vouch for the mask: compliance checked either way
    assert summary["outputs_expected"] == 5 and summary["ok"] + summary["review"] == 5
    main_counts = summary["profiles"]["amazon-main"]
    assert main_counts["outputs"] == main_counts["compliant"] == 2
    assert main_counts["ok"] + main_counts["review"] == 2
    assert main_counts["errors"] == main_counts["rejected"] == main_counts["not_compliant"] == 0
    assert summary["profiles"]["stories"]["compliant"] == 1
    table = pads.dataset(str(output / "manifest"), format="parquet").to_table().to_pylist()
    by_id = {r["output_id"]: r for r in table}
    main = by_id["sku-0002__studio-white__amazon-main__v0"]
    assert main["compliant"] and main["background_purity"] == 1.0 and main["fill_ratio"] >= 0.85
    assert main["output_uri"].endswith("__amazon-main__v0.png") and main["width"] >= 1000
    image = Image.open(io.BytesIO((output / main["output_uri"]).read_bytes()))
    assert image.format == "PNG" and min(image.size) >= 1000  # lossless: the checked pixels, delivered
    pixels = np.asarray(image.convert("RGB"))
    assert (pixels[0] == 255).all() and (pixels[-1] == 255).all()  # pure white edges (fill 90%, centred)
    assert "profile amazon-main" in (output / "index.html").read_text() or any(
        "amazon-main" in p.read_text() for p in (output / "review").rglob("*.html")
    )
    again = run_generate(GenerateRequest(cfg, str(catalog), str(output), progress=False))
    assert again["outputs_this_run"] == 0 and again["ok"] + again["review"] == 5
