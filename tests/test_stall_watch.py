"""A job whose lost pool actors find no place to restart fails with a reason instead of waiting in
silence. The multi-node test (tests/jobs/test_multinode.py) loses a real node; these check the message and
that Ray Data's no-progress guard is the one that ends a stuck plan, with our setting."""

from __future__ import annotations

import contextlib
import time

import pytest

from canvas_ray.watch import JobStalledError, is_stall, no_progress_timeout, stalled


def test_the_message_says_what_waited_and_what_to_do():
    error = stalled(600, {"MapBatches(InpaintPool)": 2}, {"GPU": 0.0, "CPU": 3.0})
    assert isinstance(error, JobStalledError)
    text = str(error)
    assert "ray.stall_timeout_s=600 s" in text and "2 actor(s) of MapBatches(InpaintPool)" in text
    assert "0 GPU and 3 CPU free" in text and "Add a node" in text and "re-run" in text and "resumes" in text
    assert "no actor was lost" in str(stalled(600, {}, {}))
    assert no_progress_timeout(0) == -1.0 and no_progress_timeout(30) == 30.0


def test_ray_datas_guard_ends_a_plan_where_nothing_moves(ray_local):
    import ray.data

    class _Stuck:  # defined here so that Ray pickles it by value
        def __call__(self, batch):
            if int(batch["id"][0]) == 0:
                time.sleep(3600)  # a task that never finishes: no block moves again
            return batch

    plan = ray.data.range(4, override_num_blocks=4).map_batches(_Stuck, concurrency=1, batch_size=1)
    plan.context.execution_no_progress_timeout_s = no_progress_timeout(3)
    started = time.time()
    try:
        with pytest.raises(Exception) as caught:
            plan.take_all()
    finally:
        _kill_stuck_actors()  # the ended plan leaves its sleeping actor holding a CPU of the shared Ray
    assert is_stall(caught.value) and time.time() - started < 120
    assert not is_stall(ValueError("other"))


def _kill_stuck_actors() -> None:
    """Kill this test's ``_Stuck`` pool worker (by pid: no handle is left to ``ray.kill``), so that the
    session's Ray gets its CPU back now rather than being restarted for it (tests/conftest.py)."""
    import os
    import signal

    from ray._private import state

    for actor in state.actors().values():
        if "_Stuck" in actor["ActorClassName"] and actor["State"] == "ALIVE" and actor.get("Pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(actor["Pid"], signal.SIGKILL)
