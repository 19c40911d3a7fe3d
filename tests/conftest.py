"""Shared fixtures: one local Ray for the test session, the sample catalog and one finished run of it, tiny
models built once per session."""

from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# The local test clusters listen on loopback only: Ray token auth off for every cluster this process starts
# or joins. Ray reads the mode once per process (a later change of the variable does not reach the driver,
# only the servers it spawns), so it is set here, before any ray.init, and never toggled by a test; a test
# that wants a token-auth cluster starts that head as a subprocess with its own environment.
os.environ["RAY_AUTH_MODE"] = "disabled"

# Every delivered image carries a signed C2PA manifest (canvas_ray.provenance): the session signs with a
# throw-away key and CA unless the environment names real ones. Set before any Ray worker starts, so the
# workers inherit it.
if not os.environ.get("CANVAS_RAY_C2PA_KEY"):
    import atexit
    import shutil
    import tempfile

    from canvas_ray.testing import signing_certificate

    _SIGNING_DIR = tempfile.mkdtemp(prefix="canvas-ray-c2pa-")
    atexit.register(shutil.rmtree, _SIGNING_DIR, True)
    _key, _chain = signing_certificate(_SIGNING_DIR)
    os.environ["CANVAS_RAY_C2PA_KEY"], os.environ["CANVAS_RAY_C2PA_CERT"] = str(_key), str(_chain)

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CATALOG = REPO / "examples" / "catalog"
ARTIFACTS = REPO / "test-artifacts"


# ---- running the suite on two xdist workers (scripts/test.sh: -n 2 --dist loadscope) ----
# The tests that use the session's local Ray (``ray_local``, ``sample_run``) run on one worker, one after
# another, as in a plain run: that Ray is started once there and handed from test to test. The modules that
# build a cluster of their own (marked ``ray_cluster``: the multi-node, ``ray start`` and jobs-API modules)
# are a second group, which the other worker takes once it is free: a few minutes of two clusters side by
# side. Which tests use Ray is read per test, from its fixture closure within its module (``uses_ray``): a
# module's in-process tests (the LoRA overfit beside the Ray Train run, the profile checks beside a profiles
# job) go to either worker, whole-module, like the modules that use no Ray. A scheduler of our own, since
# xdist's loadgroup cannot rename node ids under pytest 9.
# Measured (2026-12-07, quiet 2-core machine, CPUs 94-95% busy in both runs): one Ray group for both kinds
# put 606 s of tests on one worker and 304 s on the other, "796 passed in 621.51s"; the two groups
# balanced them (524 s and 514 s), "796 passed in 538.44s". Splitting the session's Ray tests themselves
# over both workers (each its own Ray) was measured earlier and gained nothing (1191 s against 1211 s, on a
# loaded machine): each of those tests took about twice as long beside the other.
# Each worker has its own Ray temp dir all the same, so a plain ``ray.init()`` or the CLI in one worker can
# never attach to a cluster the other started, through Ray's current-cluster record.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    _RAY_TMP = os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), f"cr-{_WORKER}")
    os.makedirs(_RAY_TMP, exist_ok=True)
    os.environ["RAY_TMPDIR"] = _RAY_TMP  # before any ray import; inherited by workers and CLI subprocesses
RAY_GROUP = "ray"
OWN_CLUSTER_GROUP = "ray-own-cluster"
RAY_FIXTURES = frozenset({"ray_local", "sample_run"})  # the session's Ray (defined below)
_USES_RAY = re.compile(r"\b(ray_local|sample_run)\b|pytest\.mark\.ray_cluster")


def _fixture_names(call: ast.expr | None) -> set[str]:
    """Fixture names in ``pytest.mark.usefixtures("a", "b")`` (an expression), else none."""
    if (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "usefixtures"
    ):
        return {a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return set()


@functools.cache
def _ray_tests(path: str) -> tuple[bool, frozenset[str]] | None:
    """For the test module at ``path`` (relative to the repo): whether it is marked ``ray_cluster`` (its
    own cluster: all its tests go to the own-cluster group), and the names of its test functions whose
    fixture closure reaches the session's Ray (``RAY_FIXTURES``), through the module's own fixtures,
    parameters, ``usefixtures`` and autouse fixtures. ``None`` for a file that is not a Python module."""
    file = REPO / path
    if file.suffix != ".py" or not file.is_file():
        return None
    source = file.read_text()
    if not _USES_RAY.search(source):
        return False, frozenset()
    tree = ast.parse(source)
    needs: dict[str, set[str]] = {}  # function name -> fixture names it asks for
    fixtures: set[str] = set()
    autouse: set[str] = set()
    common: set[str] = set()  # module-wide usefixtures
    marked = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            for value in values:
                common |= _fixture_names(value)
                marked |= "ray_cluster" in ast.unparse(value)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            needs[node.name] = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
            for decorator in node.decorator_list:
                text = ast.unparse(decorator)
                needs[node.name] |= _fixture_names(decorator)
                if "fixture" in text and "usefixtures" not in text:
                    fixtures.add(node.name)
                    if "autouse=True" in text:
                        autouse.add(node.name)

    @functools.cache
    def reaches_ray(name: str) -> bool:
        return name in RAY_FIXTURES or (
            name in fixtures and any(reaches_ray(n) for n in needs[name] - {name})
        )

    ray_tests = frozenset(
        name
        for name, asked in needs.items()
        if name.startswith("test") and any(reaches_ray(n) for n in asked | common | autouse)
    )
    return marked, ray_tests


def uses_ray(nodeid: str) -> bool:
    """Whether the test ``nodeid`` (``path::[Class::]test[param]``, or a bare module path: any of its tests)
    uses a Ray cluster: its module is marked ``ray_cluster``, or it asks, directly or through its module's
    fixtures, for the session's Ray (``ray_local``, ``sample_run``)."""
    path, _, rest = nodeid.partition("::")
    found = _ray_tests(path)
    if found is None:
        return False
    marked, ray_tests = found
    if marked or not rest:
        return marked or bool(ray_tests)
    return rest.split("::")[-1].split("[", 1)[0] in ray_tests


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class RayGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return RayGroupScheduling(config, log)


def xdist_scope(nodeid: str) -> str:
    """The unit the scheduler hands to one worker: the modules with a cluster of their own, together; the
    other tests that use the session's Ray, together; any other module whole (its Ray tests apart)."""
    if own_cluster(nodeid):
        return OWN_CLUSTER_GROUP
    return RAY_GROUP if uses_ray(nodeid) else nodeid.split("::", 1)[0]


def own_cluster(nodeid: str) -> bool:
    """Whether the test's module is marked ``ray_cluster`` (it starts or joins a cluster of its own)."""
    found = _ray_tests(nodeid.split("::", 1)[0])
    return bool(found and found[0])


# The real-model tests (IS-Net on the CPU, about 100 s of one core) run beside a Ray group, at the lowest
# CPU priority (nice 19; Ray's own workers run at 15), in its idle time. Only as root, where the worker can
# raise its priority again for its next test.
_NICE_REAL_MODELS = 19


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _WORKER and os.geteuid() == 0:
        wanted = _NICE_REAL_MODELS if item.get_closest_marker("real_models") else 0
        if os.getpriority(os.PRIO_PROCESS, 0) != wanted:
            os.setpriority(os.PRIO_PROCESS, 0, wanted)


def pytest_collection_modifyitems(items):
    """The modules with a cluster of their own run after all the others (a stable sort: file order within
    each part). Each of them shuts the session's Ray down first, so, run in between, each cost a restart
    of it (about 5 s, and Ray Data's own actors again). A whole run (scripts/test.sh without arguments sets
    CANVAS_RAY_REQUIRE_REAL_MODELS) must hold the real-model tests: never silently without them."""
    items.sort(key=lambda item: own_cluster(item.nodeid))
    if os.environ.get("CANVAS_RAY_REQUIRE_REAL_MODELS") == "1" and not any(
        item.get_closest_marker("real_models") for item in items
    ):
        raise pytest.UsageError("no real_models test was collected: the real-model tests went missing")


@pytest.fixture(autouse=True)
def _grouped_with_the_ray_tests(request):
    """A test that reaches the session's Ray at run time must be one that ``uses_ray`` puts in the Ray
    group (read statically, before any worker runs it): otherwise it would run beside the Ray group."""
    reached = RAY_FIXTURES & set(request.fixturenames)
    if reached and not uses_ray(request.node.nodeid):
        pytest.fail(
            f"{request.node.nodeid} uses {sorted(reached)} but tests/conftest.py's uses_ray missed it"
        )


# The session's local Ray: its GCS address while it runs (see ``ray_local``).
_SHARED_RAY: dict[str, str] = {}


def _shared_ray_running() -> bool:
    import ray

    return (
        ray.is_initialized()
        and bool(_SHARED_RAY)
        and ray.get_runtime_context().gcs_address == _SHARED_RAY.get("gcs_address")
    )


def _shutdown_shared_ray() -> None:
    import ray

    if _shared_ray_running():
        ray.shutdown()
    _SHARED_RAY.clear()


def _ensure_shared_ray() -> None:
    import ray

    if not _shared_ray_running():
        if ray.is_initialized():
            ray.shutdown()  # a cluster some other fixture left attached: not ours to reuse
        context = ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        _SHARED_RAY["gcs_address"] = context.address_info["gcs_address"]


@pytest.fixture(scope="session")
def _ray_session():
    """Ends the session's local Ray (if one is running) when the session ends."""
    yield
    _shutdown_shared_ray()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """A real local Ray cluster (2 CPUs, like CI), one for the whole session: the first module that asks
    starts it and the next ones reuse it (a start costs seconds on 2 cores).

    Isolation: a module that builds its own cluster (tests/jobs/test_multinode.py's ``Cluster``, the
    ``ray start`` heads of tests/jobs/test_cluster.py and tests/serve/test_jobs_*.py) shuts the current
    one down first (``ray.shutdown()`` in its fixture), and the next module that asks for ``ray_local``
    starts a fresh one. After each module the cluster must have all its CPUs free again (Ray Data's pools
    and Serve's replicas are gone); if not within a few seconds, it is restarted rather than handed on
    with something still holding resources."""
    import time

    import ray

    _ensure_shared_ray()
    yield ray
    if not _shared_ray_running():
        return  # the module attached elsewhere (or shut it down): the next one starts afresh
    deadline = time.monotonic() + 15
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.25)
    if ray.available_resources().get("CPU", 0) < 2:
        _shutdown_shared_ray()  # something of this module still holds CPUs: the next module gets a new Ray


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from canvas_ray.models.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core runner OpenMP
    threads spinning at barriers cost far more than they save (a 64 px denoising call went from ~1 s to
    ~10 s). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sample_run(_ray_session, tmp_path_factory) -> dict:
    """One finished batch run of the whole sample catalog (configs/weightfree.yaml, on the session's local
    Ray; the images at half scale, :func:`sample_copies`), shared by the tests that only read its outputs:
    ``{"root", "config", "summary", "catalog"}``. Readers never write under ``root`` (copy it first)."""
    from canvas_ray.batch import GenerateRequest, run_generate
    from canvas_ray.config import load_config

    _ensure_shared_ray()
    root = tmp_path_factory.mktemp("sample-run")
    config = load_config(REPO / "configs" / "weightfree.yaml")
    catalog = str(sample_copies(tmp_path_factory.mktemp("sample-catalog")))
    summary = run_generate(GenerateRequest(config, catalog, str(root), progress=False))
    return {"root": root, "config": config, "summary": summary, "catalog": catalog}


def sample_copies(folder: Path, copies: int = 1, *, scale: float = 0.5) -> Path:
    """The sample catalog as ``folder/catalog.jsonl``, ``copies`` times (ids ``<item>-c<copy>`` when more
    than one), image paths absolute. ``scale`` < 1 shrinks every image (same items, formats and alpha) into
    ``folder/images``: outputs are made at the source's scale, so a test of the job machinery (kills, lost
    nodes, resume) does about a quarter of the pixel work at 0.5 (the weight-free sample job's CPU time in
    one process: 25.7 s at full size, 9.4 s at half, the same ok/review split)."""
    import json

    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (SAMPLE_CATALOG / "catalog.jsonl").read_text().splitlines()]
    paths = []
    for row in rows:
        source = SAMPLE_CATALOG / row["image_uri"]
        path = source
        if scale != 1.0:
            path = images / source.name
            if not path.exists():
                with Image.open(source) as image:
                    size = (max(16, round(image.width * scale)), max(16, round(image.height * scale)))
                    image.resize(size, Image.Resampling.LANCZOS).save(path, quality=95)
        paths.append(path)
    lines = []
    for copy in range(copies):
        suffix = f"-c{copy}" if copies > 1 else ""
        for row, path in zip(rows, paths, strict=True):
            lines.append(json.dumps(dict(row, item_id=row["item_id"] + suffix, image_uri=str(path))))
    catalog = folder / "catalog.jsonl"
    catalog.write_text("\n".join(lines) + "\n")
    return catalog
