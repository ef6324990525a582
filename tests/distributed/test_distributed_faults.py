"""Faults on 2 CPU processes: a rank that dies, a rank that stops answering (a rank started with
another configuration: ``test_distributed_kfac.py``, in the K-FAC launch).

Each launch is bounded (the launcher kills what is left after its timeout and the test then fails), so a
hang shows up as a failure, never as a stuck suite.
"""

from __future__ import annotations

import re

import dist_workers as W
from dist_launch import describe, launch

WORKERS = str(W.__file__)


def stamp(text: str, name: str) -> float:
    """The wall-clock time a rank wrote as ``THERMOAI_<name>_AT <time>`` (dist_workers)."""
    found = re.findall(rf"THERMOAI_{name}_AT ([0-9.]+)", text)
    assert found, f"no THERMOAI_{name}_AT line in:\n{text[-2000:]}"
    return float(found[-1])


def test_a_rank_that_dies_mid_run_stops_the_others_with_a_clear_error(tmp_path):
    timeout = 20  # the process group's; a dead peer is noticed at once, well within it
    results = launch([WORKERS, "death", str(tmp_path)], 2, tmp_path, timeout_s=60,
                     env={"THERMOAI_TEST_PG_TIMEOUT": str(timeout)})
    survivor, dead = results
    assert dead.returncode == 17, describe(results)
    assert survivor.returncode not in (0, None), describe(results)  # it stopped by itself, with an error
    assert stamp(survivor.stderr, "RAISED") - stamp(dead.stderr, "EVENT") < 5, describe(results)
    assert survivor.elapsed_s < dead.elapsed_s + timeout, describe(results)
    assert "DistributedError" in survivor.stderr, describe(results)
    assert "all-reduce of the K-FAC factor counts at step 5 failed on rank 0 of 2" in survivor.stderr
    assert "Another rank has stopped" in survivor.stderr


def test_a_rank_that_stops_answering_times_out_the_others(tmp_path):
    timeout = 3
    results = launch([WORKERS, "hang", str(tmp_path)], 2, tmp_path, timeout_s=60,
                     env={"THERMOAI_TEST_PG_TIMEOUT": str(timeout)})
    survivor, sleeper = results
    assert survivor.returncode not in (0, None), describe(results)
    assert "DistributedError" in survivor.stderr and "at step 5" in survivor.stderr, describe(results)
    # it gave up after the timeout (counted from its own arrival at the collective, a little after the
    # other rank fell asleep), while the other rank was still asleep (timeout + 4 s)
    waited = stamp(survivor.stderr, "RAISED") - stamp(sleeper.stderr, "EVENT")
    assert timeout - 0.5 < waited < timeout + 3.5, describe(results)
    assert survivor.returncode is not None  # and then it exited by itself (the launcher did not kill it)
