"""Shared fixtures: one local Ray per test module, the sample catalog, tiny models built once per session."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray cluster shared by the tests of one module (2 CPUs, like CI)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


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
