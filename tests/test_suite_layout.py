"""The suite's scheduling (tests/conftest.py): which tests share the session's Ray, which bring a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import conftest

MODULE = """
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("b")


@pytest.fixture(scope="module")
def trained(ray_local, base):
    return base


@pytest.fixture
def later(trained):
    return trained


def test_in_process(base):
    pass


def test_through_two_fixtures(later):
    pass


@pytest.mark.parametrize("n", [1, 2])
def test_direct(ray_local, n):
    pass


class TestShared:
    @pytest.mark.usefixtures("sample_run")
    def test_marked(self):
        pass

    def test_plain(self, tmp_path):
        pass
"""


@pytest.fixture
def module(monkeypatch, tmp_path: Path) -> str:
    path = tmp_path / "test_mixed.py"
    path.write_text(MODULE)
    monkeypatch.setattr(conftest, "REPO", tmp_path)
    conftest._ray_tests.cache_clear()
    yield "test_mixed.py"
    conftest._ray_tests.cache_clear()


def test_ray_tests_are_found_through_fixtures_parameters_and_marks(module: str) -> None:
    ray = {
        "test_through_two_fixtures",
        "test_direct[1]",
        "test_direct[2]",
        "TestShared::test_marked",
    }
    others = {"test_in_process", "TestShared::test_plain"}
    for name in ray:
        assert conftest.uses_ray(f"{module}::{name}"), name
    for name in others:
        assert not conftest.uses_ray(f"{module}::{name}"), name
    assert conftest.uses_ray(module)  # the module as a whole has Ray tests
    assert not conftest.own_cluster(f"{module}::test_direct[1]")


def test_a_marked_module_is_all_in_the_ray_group(module: str, tmp_path: Path) -> None:
    (tmp_path / module).write_text(MODULE + "\npytestmark = [pytestmark, pytest.mark.ray_cluster]\n")
    assert conftest.uses_ray(f"{module}::test_in_process") and conftest.own_cluster(
        f"{module}::test_in_process"
    )


def test_scheduler_scopes(module: str, tmp_path: Path) -> None:
    """Session-Ray tests share one scope, a module's other tests stay whole, own clusters share another."""
    assert conftest.xdist_scope(f"{module}::test_direct[1]") == conftest.RAY_GROUP
    assert conftest.xdist_scope(f"{module}::TestShared::test_marked") == conftest.RAY_GROUP
    assert conftest.xdist_scope(f"{module}::test_in_process") == module
    (tmp_path / module).write_text(MODULE + "\npytestmark = [pytestmark, pytest.mark.ray_cluster]\n")
    conftest._ray_tests.cache_clear()
    assert conftest.xdist_scope(f"{module}::test_in_process") == conftest.OWN_CLUSTER_GROUP
    assert conftest.OWN_CLUSTER_GROUP != conftest.RAY_GROUP


def test_the_real_modules() -> None:
    assert conftest.uses_ray("tests/train/test_finetune.py::test_ray_train_two_workers_and_resume")
    assert conftest.uses_ray("tests/train/test_finetune.py::test_resume_restores_the_saved_lora_exactly")
    assert not conftest.uses_ray("tests/train/test_finetune.py::test_overfit_halves_the_loss")
    assert conftest.own_cluster("tests/jobs/test_multinode.py::test_gpu_yaml_runs_on_gpu_nodes")
    assert not conftest.uses_ray("tests/test_config.py")
