"""One device model: the simulator (thermo.linalg) and the predictor (thermo.cost) run the same plans.

For solve and inv at d in {8, 16, 32}, on an ideal device and on an 8-bit device with 1 % mismatch, the
simulator is run to a requested tolerance; the predictor, given the same Device, tolerance and spectrum,
must report the same device time and energy (equal: the same formulas), and the measured error over
repeated runs must agree with the predicted one within its standard error (5 SE).
"""

import math
import warnings

import numpy as np
import pytest
import torch

from thermoai.thermo import cost, linalg
from thermoai.thermo.device import Device
from thermoai.thermo.planning import Spectrum, plan_inv, plan_solve, quantisation_floor

F64 = torch.float64

DEVICES = {
    "ideal": dict(dac_bits=40, adc_bits=40, readout_noise=0.0, mismatch=0.0, adc_range=64.0),
    "8-bit, 1 % mismatch": dict(dac_bits=8, mismatch=0.01),
}


def spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, dtype=F64, generator=g)
    return M @ M.T / d + 0.5 * torch.eye(d, dtype=F64)


def rates_of(A: torch.Tensor) -> np.ndarray:
    return torch.linalg.eigvalsh(A / A.abs().sum(1).max()).numpy()


def assert_same_cost(rep, pred):
    assert rep.device_time_s == pytest.approx(pred.time_s, rel=1e-12, abs=0)
    assert rep.energy_j == pytest.approx(pred.energy_j, rel=1e-12, abs=0)
    assert pred.settings["samples"] == rep.plan.n_samples
    assert pred.settings["burn_in_s"] == pytest.approx(rep.burn_in_s, rel=1e-12)


def agree_within_se(measured_sq: list, predicted_sq: list, n_se: float = 5.0) -> tuple[float, float]:
    """Mean of (measured^2 - predicted^2) and its standard error over the repetitions (each repetition, one
    matrix and chip, is averaged first: its runs share a programming error); asserts |mean| < n_se SE."""
    measured_sq = np.array([np.mean(m) for m in measured_sq])
    predicted_sq = np.array([np.mean(p) for p in predicted_sq])
    diff = measured_sq - predicted_sq
    m, se = float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size))
    assert abs(m) < n_se * se, (float(measured_sq.mean()), float(predicted_sq.mean()), se)
    return m, se


@pytest.mark.parametrize("device_name", list(DEVICES))
@pytest.mark.parametrize("d", [8, 16, 32])
def test_solve_simulated_and_predicted_agree(d, device_name):
    tol, k, reps = 0.2, 16, 24
    measured, predicted = [], []
    for rep_i in range(reps):
        dev = Device(n_cells=d, seed=rep_i, **DEVICES[device_name])
        A = spd(d, 10 * d + rep_i)
        B = torch.randn(k, d, dtype=F64, generator=torch.Generator().manual_seed(rep_i))
        # diffusion small enough that the cells stay inside the ADC range (else solve warns that readings clip)
        x, rep = linalg.solve(A, B, tol=tol, diffusion=0.02, device=dev, strict=True,
                              generator=torch.Generator().manual_seed(100 + rep_i))
        pred = cost.device_cost("solve", d, tol=tol, device=dev, rates=rates_of(A), rhs=k, diffusion=0.02)
        assert_same_cost(rep, pred)
        x_ref = torch.linalg.solve(A, B.mT).mT
        err2 = ((x - x_ref).norm(dim=1) / x_ref.norm(dim=1)) ** 2
        measured.append(err2.numpy())
        # the run's prediction: the plan's statistical error at this matrix and rhs, plus the programming model
        predicted.append(np.full(k, rep.error_breakdown["statistical"] ** 2 + rep.error_breakdown["quantisation"] ** 2
                                 + rep.error_breakdown["burn_in"] ** 2))
        assert rep.predicted_error <= tol * (1 + 1e-9)
    agree_within_se(measured, predicted)


@pytest.mark.parametrize("device_name", list(DEVICES))
@pytest.mark.parametrize("d", [8, 16, 32])
def test_inv_simulated_and_predicted_agree(d, device_name):
    tol, runs, reps = 0.25, 6, 20
    measured, predicted, planned = [], [], []
    for rep_i in range(reps):
        dev = Device(n_cells=d, seed=rep_i, **DEVICES[device_name])
        A = spd(d, 20 * d + rep_i)
        X, rep = linalg.inv(A, tol=tol, device=dev, runs=runs, strict=True,
                            generator=torch.Generator().manual_seed(200 + rep_i))
        pred = cost.device_cost("inv", d, tol=tol, device=dev, rates=rates_of(A), runs=runs)
        assert_same_cost(rep, pred)
        ref = torch.linalg.inv(A)
        measured.append((((X - ref).norm(dim=(1, 2)) / ref.norm()) ** 2).numpy())
        predicted.append(np.full(runs, rep.estimated_error**2))
        planned.append(np.full(runs, rep.plan.total_error**2 + rep.error_breakdown["quantisation"] ** 2))
    agree_within_se(measured, predicted)
    # the plan's asymptotic statistical error (made before the run) agrees too
    agree_within_se(measured, planned)


def test_the_plan_reaches_tol_on_an_ideal_device():
    # with no programming error, the predicted error of the plan is the tolerance's budget, not a bound far below
    d, tol = 16, 0.1
    dev = Device(n_cells=d, **DEVICES["ideal"])
    spec = Spectrum.of_matrix(spd(d, 3) / spd(d, 3).abs().sum(1).max())
    p = plan_inv(dev, spec, tol)
    assert p.predicted_error["statistical"] == pytest.approx(tol * math.sqrt(3) / 2, rel=0.01)
    assert p.predicted_error["burn_in"] < 0.01 * tol
    # solve: long enough that rounding the run up to whole snapshots does not matter (a small signal range)
    s = plan_solve(Device(n_cells=d, **{**DEVICES["ideal"], "adc_range": 0.5}), spec, tol, diffusion=0.02)
    assert s.n_samples > 100
    assert s.predicted_error["statistical"] == pytest.approx(tol * math.sqrt(3) / 2, rel=0.01)


def test_tolerance_below_the_programming_floor_is_not_met_silently():
    # the case a user met: a 200 x 200 solve at tol 1e-2 on the default (8-bit, 1 % mismatch) device
    d = 200
    A = spd(d, 0)
    b = torch.randn(d, dtype=F64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(linalg.ToleranceWarning, match=r"floor of 0\.0\d+.*DAC rounding at dac_bits = 8"):
        x, rep = linalg.solve(A, b, tol=1e-2, generator=torch.Generator().manual_seed(2))
    err = float((x - torch.linalg.solve(A, b)).norm() / torch.linalg.solve(A, b).norm())
    assert err > 1e-2 and rep.estimated_error > 1e-2
    with pytest.raises(ValueError, match="below the floor"):
        linalg.solve(A, b, tol=1e-2, strict=True)
    with pytest.raises(ValueError, match="mismatch = 0.2"):
        linalg.inv(spd(8, 1), tol=0.05, device=Device(n_cells=8, dac_bits=16, mismatch=0.2), strict=True)
    # the predictor says the same: its floor, from the spectrum alone, is of the simulator's order
    pred = cost.device_cost("solve", d, tol=1e-2, device=Device(n_cells=d), rates=rates_of(A))
    assert not pred.meets_tol
    assert 0.5 < pred.predicted_error["quantisation"] / rep.error_breakdown["quantisation"] < 2
    # and the simulator's time for that solve is the predictor's (serial programming of d^2 values dominates)
    assert rep.device_time_s == pytest.approx(pred.time_s, rel=1e-12)
    assert pred.breakdown["programming"] > 0.9 * pred.time_s
    # a tolerance above the floor passes without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linalg.solve(A, b, tol=0.2, generator=torch.Generator().manual_seed(2))


def test_quantisation_floor_follows_dac_bits():
    spec = Spectrum.uniform(1024, 100.0)
    floors = [quantisation_floor(Device.projected_chip(1024, dac_bits=b), spec) for b in (8, 10, 12)]
    # no mismatch on the chip: the floor is the rounding step, which halves per bit
    assert floors[0] / floors[1] == pytest.approx((2**9 - 1) / (2**7 - 1), rel=1e-9)
    assert floors[1] / floors[2] == pytest.approx((2**11 - 1) / (2**9 - 1), rel=1e-9)


def test_report_names_both_condition_numbers():
    A = torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=F64)) + 0.3
    _, rep = linalg.inv(A, tol=0.3, device=Device(n_cells=3, **DEVICES["ideal"]))
    s = torch.linalg.svdvals(A)
    assert rep.kappa_2 == pytest.approx(float(s.max() / s.min()))
    G = A / A.abs().sum(1).max()
    assert rep.kappa == pytest.approx(1 / float(torch.linalg.eigvalsh(G).min()))
    assert rep.kappa >= rep.kappa_2
