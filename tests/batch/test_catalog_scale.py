"""Catalog scale on a real local Ray: many catalog files, duplicates across files, the bucketed manifest
read by common tools, exactly one record per output at 20k items, resume keeping `review` rows."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from canvas_ray.batch import GenerateRequest, run_generate
from canvas_ray.config import load_config
from canvas_ray.io.manifest import Manifest, buckets_for, read_manifest
from canvas_ray.progress import ProgressLine
from tests.conftest import REPO, SAMPLE_CATALOG, sample_copies

WEIGHTFREE = REPO / "configs" / "weightfree.yaml"
ONE_OUTPUT = {"output.aspect_ratios": ["1:1"], "styles.default": ["studio white"]}
# 20k items: three manifest buckets and two full runs in about a minute; benchmarks/catalog_scale.py
# measures 100k and 1M (CANVAS_RAY_SCALE_TEST_ITEMS raises this test to any size)
SCALE_ITEMS = int(os.environ.get("CANVAS_RAY_SCALE_TEST_ITEMS", "20000"))


def _config(**overrides):
    return load_config(WEIGHTFREE, {**ONE_OUTPUT, **overrides})


def _bucket_rows(root: Path) -> pa.Table:
    return pads.dataset(root / "manifest", format="parquet", partitioning="hive").to_table()


def test_many_catalog_files_and_duplicates_across_files(ray_local, tmp_path):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    image = str(SAMPLE_CATALOG / "images" / "sku-0001.jpg")
    pq.write_table(
        pa.table({"item_id": ["a", "b"], "image_uri": [image, "missing.png"]}), catalog / "0.parquet"
    )
    pq.write_table(
        pa.table({"item_id": ["c", "a"], "image_uri": ["missing.png", image]}), catalog / "1.parquet"
    )
    (catalog / "2.jsonl").write_text(json.dumps({"item_id": "d", "image_uri": "missing.png"}) + "\n")
    summary = run_generate(GenerateRequest(_config(), str(catalog), str(tmp_path / "out"), progress=False))
    rows = {r["item_id"]: r for r in read_manifest(str(tmp_path / "out")).to_pylist()}
    assert set(rows) == {"a", "a#dup1", "b", "c", "d"}  # nothing dropped, the duplicate kept apart
    assert rows["a"]["status"] in ("ok", "review")  # the first occurrence (file 0) is the item
    assert rows["a#dup1"]["status"] == "error"
    assert rows["a#dup1"]["error"] == "catalog: duplicate item_id 'a' (first at row 0)"
    assert rows["b"]["error"].startswith("fetch: file not found")
    assert rows["b"]["image_uri"] == str(catalog / "missing.png")  # relative to its catalog file
    assert summary["catalog_problems"] == 1 and summary["outputs_expected"] == summary["outputs"] == 5


def test_catalog_scale_one_record_each_and_after_resume(ray_local, tmp_path):
    """The cheap path (every image missing) at catalog scale: each requested output has exactly one row,
    the manifest is bucketed Parquet that pyarrow.dataset and DuckDB read as one table, and a resume (which
    retries error rows) supersedes rows instead of duplicating them."""
    import duckdb

    n = SCALE_ITEMS
    ids = [f"sku-{i:07d}" for i in range(n)]
    catalog = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"item_id": ids, "image_uri": [f"img/{i}.png" for i in ids]}), catalog)
    out = tmp_path / "out"
    config = _config(
        **{"ray.block_rows": 1024, "output.manifest_part_rows": 4096, "output.manifest_bucket_rows": 8192}
    )
    first = run_generate(GenerateRequest(config, str(catalog), str(out), progress=False))
    assert first["outputs_expected"] == first["outputs"] == first["errors"] == n
    second = run_generate(GenerateRequest(config, str(catalog), str(out), progress=False))
    assert second["outputs_this_run"] == n  # error rows are tried again ...
    for summary in (first, second):
        assert summary["missing_outputs"] == 0
    table = _bucket_rows(out)  # ... and replace, never duplicate, their old rows
    assert table.num_rows == n
    assert pa.compute.count_distinct(table.column("output_id")).as_py() == n
    assert set(table.column("run_id").to_pylist()) == {second["run_id"]}
    glob = str(out / "manifest" / "bucket=*" / "*.parquet")
    total, distinct = duckdb.sql(
        f"select count(*), count(distinct output_id) from read_parquet('{glob}', hive_partitioning=true)"
    ).fetchall()[0]
    assert total == distinct == n
    manifest = Manifest(str(out))
    assert manifest.buckets() == buckets_for(n, 8192) > 1
    assert len(manifest.bucket_files()) == manifest.buckets()
    assert all(len(files) == 1 for files in manifest.bucket_files().values())
    assert json.loads((out / "summary.json").read_text())["errors"] == n
    assert "Errors (" in (out / "index.html").read_text()
    assert len(list((out / "review" / "errors").glob("p*.html"))) == -(-n // 500)


def test_resume_keeps_review_rows_and_a_changed_segmenter_redoes_them(ray_local, tmp_path):
    catalog = str(sample_copies(tmp_path / "catalog"))  # the sample items at half scale
    config = _config()
    # the first four items include the busy mug scene, which the weight-free segmenter cannot vouch for
    first = run_generate(GenerateRequest(config, catalog, str(tmp_path), limit=4, progress=False))
    assert first["review"] >= 1
    before = {r["output_id"]: r["run_id"] for r in read_manifest(str(tmp_path)).to_pylist()}
    again = run_generate(GenerateRequest(config, catalog, str(tmp_path), limit=4, progress=False))
    assert again["items_processed"] == 0 and again["review"] == first["review"]
    assert {r["output_id"]: r["run_id"] for r in read_manifest(str(tmp_path)).to_pylist()} == before
    changed = _config(**{"segment.min_confidence": 0.05})
    third = run_generate(GenerateRequest(changed, catalog, str(tmp_path), limit=4, progress=False))
    assert third["items_processed"] == 4 and third["outputs"] == len(before)
    assert third["review"] < first["review"]
    rows = read_manifest(str(tmp_path)).to_pylist()
    assert {r["run_id"] for r in rows} == {third["run_id"]}


def test_progress_is_one_compact_line_without_a_terminal(capsys):
    progress = ProgressLine(total=200, enabled=True, terminal=False)
    progress.update({"ok": 10, "review": 0, "rejected": 0, "error": 0})
    progress.update({"ok": 20, "review": 0, "rejected": 0, "error": 0})  # within the interval: silent
    progress.close({"ok": 150, "review": 10, "rejected": 0, "error": 40})
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[-1].startswith("outputs 200/200 (100.0%)  ok 150 review 10 rejected 0 error 40")


@pytest.mark.parametrize("layout", ["glob", "folder"])
def test_catalog_listing(tmp_path, layout):
    from canvas_ray.io.catalog import list_catalog

    for name in ("b.csv", "a.parquet"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "x.png").write_bytes(b"")
    uri = str(tmp_path / "*.*") if layout == "glob" else str(tmp_path)
    listing = list_catalog(uri)
    assert [Path(f).name for f in listing.files] == ["a.parquet", "b.csv"] and listing.images is None


def test_compaction_on_ray_merges_parts_per_bucket_and_heals(ray_local, tmp_path):
    """The Ray path of compaction (large pending parts): rows land in their buckets, newest row wins,
    a bucket holding two files (a crash between write and delete) is merged back into one."""
    from canvas_ray.io.catalog import id_bucket
    from canvas_ray.io.manifest import MANIFEST_SCHEMA, bucket_dir

    manifest = Manifest(str(tmp_path))
    buckets = manifest.ensure(40, rows_per_bucket=10)
    assert buckets == 4

    def part(run: str, rows: list[dict]) -> None:
        full = [{**dict.fromkeys(MANIFEST_SCHEMA.names), **row} for row in rows]
        path = tmp_path / "manifest" / "_staging" / run / f"{len(list(tmp_path.rglob('*.parquet')))}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(full, schema=MANIFEST_SCHEMA), path)

    for i in range(40):
        part("r1", [{"output_id": f"o{i}", "item_id": f"i{i}", "status": "error", "finished_at": 1.0}])
    part("r2", [{"output_id": "o3", "item_id": "i3", "status": "ok", "finished_at": 2.0}])
    crowded = id_bucket("i7", buckets)
    (tmp_path / "manifest" / bucket_dir(crowded)).mkdir(parents=True)
    stale = {**dict.fromkeys(MANIFEST_SCHEMA.names), "output_id": "o7", "item_id": "i7", "status": "ok"}
    stale["finished_at"] = 0.5
    pq.write_table(
        pa.Table.from_pylist([stale], schema=MANIFEST_SCHEMA),
        tmp_path / "manifest" / bucket_dir(crowded) / "part-old.parquet",
    )
    manifest._compact_ray(manifest.pending_files(), [], buckets, "run-x", None)
    files = manifest.bucket_files()
    assert len(files[crowded]) == 1  # the old file was merged and removed
    rows = {r["output_id"]: r for r in manifest.read().to_pylist()}
    assert len(rows) == 40 and rows["o3"]["status"] == "ok" and rows["o7"]["status"] == "error"
    for bucket, paths in files.items():
        for row in pq.read_table(paths[0]).to_pylist():
            assert id_bucket(row["item_id"], buckets) == bucket


def test_killed_driver_loses_nothing_and_duplicates_nothing(ray_local, tmp_path):
    """SIGKILL the whole job (driver and the local Ray it started) once it has flushed manifest parts;
    the next run folds the dead run's parts into the manifest, makes only the missing outputs, and every
    requested output ends with exactly one row."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    catalog = sample_copies(tmp_path / "catalog")  # the 12 sample items at half scale
    settings = yaml.safe_load(WEIGHTFREE.read_text())
    settings["styles"]["file"] = str(REPO / "configs" / "styles.yaml")
    settings["output"].update(aspect_ratios=["1:1"], manifest_part_rows=2)
    settings["ray"] = {"block_rows": 2}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "canvas_ray.cli", "generate", "--config", str(config_file)]
    command += ["--catalog", str(catalog), "--output", str(out)]
    tag = {"CANVAS_RAY_TEST_JOB": tmp_path.name}  # marks the job's processes, Ray's workers included
    job = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **tag},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staging = out / "manifest" / "_staging"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and len(list(staging.rglob("*.parquet"))) < 3:
            assert job.poll() is None, "the job finished before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the job's own process group: its driver and its Ray
        job.wait(timeout=60)
        # Ray's workers outlive the group by a moment, and one of them may still flush a part: the dead
        # run is over (and `flushed` is what it recorded) only when every process it started has exited
        survivors = _kill_tagged(tag)
    print(f"killed job: {survivors} of its processes outlived its process group")
    flushed = len(pq.read_table(staging).column("output_id")) if staging.exists() else 0
    config = load_config(config_file)
    summary = run_generate(GenerateRequest(config, str(catalog), str(out), progress=False))
    expected = summary["outputs_expected"]
    assert 0 < flushed < expected
    assert summary["outputs_this_run"] == expected - flushed  # only what the dead run did not record
    table = _bucket_rows(out)
    assert table.num_rows == expected
    assert pa.compute.count_distinct(table.column("output_id")).as_py() == table.num_rows
    assert not staging.exists()


def _kill_tagged(tag: dict[str, str]) -> int:
    """SIGKILL every process whose environment carries ``tag`` and wait until they are gone; returns how many
    there were."""
    import psutil

    ((key, value),) = tag.items()
    tagged = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(key) == value:
                process.kill()
                tagged.append(process)
    _, alive = psutil.wait_procs(tagged, timeout=60)
    assert not alive, f"processes of the killed job still running: {alive}"
    return len(tagged)


def test_block_rows_keep_small_catalogs_pipelined():
    from canvas_ray.batch import plan_block_rows

    config = _config()  # block_rows 256, smallest model batch 4
    assert plan_block_rows(config, 12) == 4  # 3 blocks: the model pools overlap
    assert plan_block_rows(config, 1600) == 100
    assert plan_block_rows(config, 1_000_000) == 256
