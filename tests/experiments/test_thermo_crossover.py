"""The thermo_crossover experiment writes its table, numbers and plot, and its numbers hang together."""

import json

import pytest

from thermoai.experiments import EXPERIMENTS, thermo_crossover
from thermoai.thermo import cost


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("thermo_crossover")
    return out, thermo_crossover.run(out, quick=True)


def test_registered():
    assert EXPERIMENTS["thermo_crossover"] == "thermoai.experiments.thermo_crossover"


def test_writes_markdown_json_png(result):
    out, res = result
    md = (out / "thermo_crossover.md").read_text()
    assert "| d | digital time (s)" in md and "16384" in md and "Crossover" in md
    data = json.loads((out / "thermo_crossover.json").read_text())
    assert data["dims"] == [2**k for k in range(6, 15)]
    png = (out / "thermo_crossover.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_numbers_match_the_cost_model(result):
    _, res = result
    row = res["series"]["solve_chip"][6]  # d = 4096
    c = cost.compare("solve", 4096, res["kappa"], res["tol"])
    assert row["d"] == 4096 and row["time_ratio"] == pytest.approx(c.time_ratio)
    # the reported crossover is where the ratio first stays above 1
    d_x = res["crossover_d"]["solve_chip"]["time"]
    ratios = {r["d"]: r["time_ratio"] for r in res["series"]["solve_chip"]}
    assert d_x is not None and all(ratios[d] > 1 for d in ratios if d >= d_x)
    assert d_x == 64 or ratios[d_x // 2] <= 1


def test_averaging_time_model_matches_the_simulator(result):
    _, res = result
    v = res["validation"]
    # run for the model's predicted time, the measured rms error is the requested one: 5 standard errors
    assert abs(v["measured_rms_relative_error"] - v["statistical_target"]) < 5 * v["measured_rms_standard_error"]
