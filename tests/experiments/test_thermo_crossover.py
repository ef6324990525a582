"""The thermo_crossover experiment writes its table, numbers and plot, and its numbers hang together."""

import json

import pytest

from thermoai.experiments import EXPERIMENTS, thermo_crossover
from thermoai.thermo import cost
from thermoai.thermo.device import Device


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
    c = cost.compare("solve", 4096, res["kappa"], res["tol"], device=Device.projected_chip(4096))
    assert row["d"] == 4096 and row["time_ratio"] == pytest.approx(c.time_ratio)
    # the reported crossover is where the ratio first stays above 1
    d_x = res["crossover_d"]["solve_chip"]["time"]
    ratios = {r["d"]: r["time_ratio"] for r in res["series"]["solve_chip"]}
    assert d_x is not None and all(ratios[d] > 1 for d in ratios if d >= d_x)
    assert d_x == 64 or ratios[d_x // 2] <= 1


def test_the_simulator_confirms_the_prediction(result):
    _, res = result
    v = res["validation"]
    # one model: the simulated run's device time and energy are the predicted ones
    assert v["simulated_time_s"] == pytest.approx(v["predicted_time_s"], rel=1e-12)
    assert v["simulated_energy_j"] == pytest.approx(v["predicted_energy_j"], rel=1e-12)
    # run to tol, the measured rms error is the predicted one: 5 standard errors
    assert abs(v["measured_rms_relative_error"] - v["predicted_error"]) < 5 * v["measured_rms_standard_error"]


def test_precision_columns(result):
    _, res = result
    for row in res["series"]["solve_chip"]:
        assert not row["meets_tol"] and row["programming_floor"] > res["tol"]  # 8-bit DACs cannot reach 1 %
        assert row["dac_bits_needed"] is not None and row["dac_bits_needed"] > 8
