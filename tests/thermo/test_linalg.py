"""Tests of thermoai.thermo.linalg: thermodynamic solve/inv/lyapunov/expm/logdet on the simulated device.

Statistical tests fix their seeds and derive every tolerance from a standard error (4-5 SE, stated at
each assertion).
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.linalg
import torch

from thermoai.thermo import linalg
from thermoai.thermo.device import Device
from thermoai.thermo.linalg._protocol import Moments

F64 = torch.float64


def spd(d: int, seed: int, ridge: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, dtype=F64, generator=g)
    return M @ M.T / d + ridge * torch.eye(d, dtype=F64)


def ideal_device(d: int, **kw) -> Device:
    """No mismatch, no readout noise, (nearly) continuous converters: only the thermal statistics remain."""
    base = dict(n_cells=d, dac_bits=40, adc_bits=40, readout_noise=0.0, mismatch=0.0, adc_range=64.0)
    base.update(kw)
    return Device(**base)


def slope_and_se(T: np.ndarray, sq_err: np.ndarray) -> tuple[float, float]:
    """Weighted least-squares slope of log(rms error) on log(T), and its standard error.

    sq_err (len(T), n_seeds): squared errors of independent runs. The SE of log(rms) at each T is
    sd(e^2) / (2 sqrt(n) mean(e^2)) (delta method)."""
    n = sq_err.shape[1]
    mse = sq_err.mean(1)
    y = 0.5 * np.log(mse)
    s = sq_err.std(1, ddof=1) / (2 * math.sqrt(n) * mse)
    w = 1 / s**2
    x = np.log(T)
    xm = (w * x).sum() / w.sum()
    ym = (w * y).sum() / w.sum()
    sxx = (w * (x - xm) ** 2).sum()
    slope = (w * (x - xm) * (y - ym)).sum() / sxx
    return slope, math.sqrt(1 / sxx)


def test_solve_error_falls_as_one_over_sqrt_time_toward_numpy():
    d, k = 3, 300
    A = spd(d, 0)
    b = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    x_np = np.linalg.solve(A.numpy(), b.numpy())
    dev = ideal_device(d)
    T = np.array([100.0, 200.0, 400.0, 800.0, 1600.0])  # time constants, >> the slowest correlation time
    sq = np.zeros((len(T), k))
    predicted = np.zeros(len(T))
    for i, t in enumerate(T):
        g = torch.Generator().manual_seed(100 + i)
        x, rep = linalg.solve(A, b.expand(k, d), device=dev, diffusion=2.0, burn_in_s=40e-6,
                              averaging_s=float(t) * 1e-6, generator=g)
        sq[i] = ((x.numpy() - x_np) ** 2).sum(1) / (x_np**2).sum()
        predicted[i] = rep.error_breakdown["statistical"]
    slope, se = slope_and_se(T, sq)
    assert abs(slope + 0.5) < 4.5 * se, (slope, se)  # 4.5 standard errors of the fitted slope
    # the reported statistical error is calibrated: mean squared relative error vs its prediction, 5 SE
    for i in range(len(T)):
        m, s = sq[i].mean(), sq[i].std(ddof=1) / math.sqrt(k)
        assert abs(m - predicted[i] ** 2) < 5 * s, (i, m, predicted[i] ** 2, s)  # 5 SE


def test_inv_error_falls_as_one_over_sqrt_time_toward_numpy():
    d, runs = 3, 150
    A = spd(d, 1)
    inv_np = np.linalg.inv(A.numpy())
    dev = ideal_device(d)
    T = np.array([100.0, 200.0, 400.0, 800.0, 1600.0])
    sq = np.zeros((len(T), runs))
    predicted = np.zeros(len(T))
    for i, t in enumerate(T):
        g = torch.Generator().manual_seed(200 + i)
        X, rep = linalg.inv(A, device=dev, burn_in_s=30e-6, averaging_s=float(t) * 1e-6, runs=runs, generator=g)
        assert X.shape == (runs, d, d)
        sq[i] = ((X.numpy() - inv_np) ** 2).sum((1, 2)) / (inv_np**2).sum()
        predicted[i] = rep.error_breakdown["statistical"]
    slope, se = slope_and_se(T, sq)
    assert abs(slope + 0.5) < 4.5 * se, (slope, se)  # 4.5 standard errors
    for i in range(len(T)):
        m, s = sq[i].mean(), sq[i].std(ddof=1) / math.sqrt(runs)
        assert abs(m - predicted[i] ** 2) < 5 * s, (i, m, predicted[i] ** 2, s)  # 5 SE


def _quantisation_errors(bits: int, rounding: str, roundings: int, n_mat: int = 120, d: int = 5):
    """Squared actual and predicted quantisation errors of solve (no noise: thermal floor only)."""
    actual, predicted = [], []
    for j in range(n_mat):
        A = spd(d, 1000 + j, ridge=0.5)
        b = torch.randn(d, dtype=F64, generator=torch.Generator().manual_seed(5000 + j))
        dev = ideal_device(d, dac_bits=bits)
        # long burn-in (bias e^-100), a short average: the thermal floor alone is negligible here
        x, rep = linalg.solve(A, b, tol=0.5, device=dev, burn_in_s=400e-6, averaging_s=2e-6 * roundings,
                              roundings=roundings, rounding=rounding, generator=torch.Generator().manual_seed(j))
        x_np = np.linalg.solve(A.numpy(), b.numpy())
        actual.append(((x.numpy() - x_np) ** 2).sum() / (x_np**2).sum())
        predicted.append(rep.error_breakdown["quantisation"] ** 2)
        assert rep.error_breakdown["statistical"] < 1e-3 * rep.error_breakdown["quantisation"]
    return np.array(actual), np.array(predicted)


def _mean_and_se(x: np.ndarray) -> tuple[float, float]:
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def test_quantisation_changes_solve_by_the_predicted_amount():
    # nearest rounding to 6 bits: mean squared change vs the first-order model (q^2/12 per entry), 5 SE
    a, p = _quantisation_errors(6, "nearest", 1)
    m, se = _mean_and_se(a - p)
    assert abs(m) < 5 * se, (a.mean(), p.mean(), se)
    # two more bits: the step q shrinks by (2^7 - 1) / (2^5 - 1), the squared change by its square (first order);
    # the measured ratio of mean squared changes against the model's, within 5 SE (delta method)
    a8, p8 = _quantisation_errors(8, "nearest", 1)
    m8, se8 = _mean_and_se(a8 - p8)
    assert abs(m8) < 5 * se8, (a8.mean(), p8.mean(), se8)
    (ma, sa), (mb, sb) = _mean_and_se(a), _mean_and_se(a8)
    ratio, se_ratio = ma / mb, ma / mb * math.hypot(sa / ma, sb / mb)
    assert abs(ratio - ((2**7 - 1) / (2**5 - 1)) ** 2) < 5 * se_ratio, (ratio, se_ratio)


def test_randomised_roundings_reduce_quantisation_error_as_predicted():
    a1, _ = _quantisation_errors(6, "nearest", 1, n_mat=60)
    a16, p16 = _quantisation_errors(6, "stochastic", 16, n_mat=60)
    # model: q^2/12 (nearest) against about q^2/6/16 (16 stochastic roundings): 8x smaller squared error
    assert a16.mean() < a1.mean() / 3
    m, se = _mean_and_se(a16 - p16)
    assert abs(m) < 5 * se, (a16.mean(), p16.mean(), se)


def test_solve_nonsymmetric_stable_and_default_device_report():
    A = torch.tensor([[3.0, 2.5], [2.0, 4.0]], dtype=F64)
    b = torch.tensor([1.0, 2.0], dtype=F64)
    # default device: 8-bit DAC and 1 % mismatch, whose programming floor (0.036) is above the default tol 1e-2
    with pytest.warns(linalg.ToleranceWarning, match="mismatch = 0.01"):
        x, rep = linalg.solve(A, b, generator=torch.Generator().manual_seed(0))
    x_np = np.linalg.solve(A.numpy(), b.numpy())
    err = np.linalg.norm(x.numpy() - x_np) / np.linalg.norm(x_np)
    # the error is mostly programming, within 5 predicted SEs
    assert err < 5 * rep.estimated_error
    assert rep.device_time_s > rep.burn_in_s > 0 and rep.energy_j > 0
    assert rep.settings["op"] == "solve" and not rep.settings["symmetric_programming"]
    assert x.dtype == F64 and x.shape == (2,)


def test_burn_in_from_tolerance_uses_condition_number():
    A = torch.diag(torch.tensor([1.0, 0.1], dtype=F64))
    dev = ideal_device(2)
    _, rep = linalg.solve(A, torch.ones(2, dtype=F64), tol=1e-3, device=dev)
    # G = A / 1 (row sums), lambda_min = 0.1 -> kappa = 10; t_burn = kappa ln(2 / tol) time constants
    assert rep.kappa == pytest.approx(10.0)
    assert rep.burn_in_s == pytest.approx(10 * math.log(2e3) * 1e-6)
    _, rep = linalg.inv(A, tol=0.5, device=dev)
    assert rep.burn_in_s == pytest.approx(10 * math.log(4.0) / 2 * 1e-6)
    # averaging for inv: the asymptotic error of a time-averaged x x^T at rates l = (1, 0.1), eps = sqrt(3)/2 tol:
    # T = [sum_kl 2 / (l_k l_l (l_k + l_l)) + sum_k l_k^-3] / (eps^2 sum_k l_k^-2)
    lam = np.array([1.0, 0.1])
    cross = (2 / (np.outer(lam, lam) * (lam[:, None] + lam[None, :]))).sum()
    T = (cross + (lam**-3).sum()) / (0.75 * 0.25 * (lam**-2).sum())
    assert rep.averaging_s == pytest.approx(T * 1e-6)
    assert rep.n_samples == math.ceil(T)


def test_same_seed_same_answer():
    A = spd(3, 2)
    r1 = linalg.inv(A, averaging_s=50e-6, generator=torch.Generator().manual_seed(3))
    r2 = linalg.inv(A, averaging_s=50e-6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1.value, r2.value)


def test_lyapunov_nonsymmetric_matches_scipy():
    A = torch.tensor([[3.0, 2.5], [2.0, 4.0]], dtype=F64)
    C = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=F64)
    X_ref = scipy.linalg.solve_continuous_lyapunov(A.numpy(), C.numpy())
    X, rep = linalg.lyapunov(A, C, device=ideal_device(2), averaging_s=4000e-6, runs=4,
                             generator=torch.Generator().manual_seed(7))
    rel = np.linalg.norm(X.numpy() - X_ref, axis=(1, 2)) / np.linalg.norm(X_ref)
    # batch-means SE (16 batches) is itself uncertain by ~18 %: 5 SE per run
    assert (rel < 5 * rep.error_breakdown["statistical"]).all(), (rel, rep.error_breakdown)
    assert rep.error_breakdown["quantisation"] < 1e-6


def test_expm_autocovariance_matches_scipy():
    A = torch.tensor([[-0.4, 0.1], [0.5, -0.3]], dtype=F64)  # thermox's test matrix
    E, rep = linalg.expm(A, device=ideal_device(2), averaging_s=20000e-6, generator=torch.Generator().manual_seed(1))
    ref = scipy.linalg.expm(A.numpy())
    rel = np.linalg.norm(E.numpy() - ref) / np.linalg.norm(ref)
    assert rel < 5 * rep.error_breakdown["statistical"], (rel, rep.error_breakdown)  # 5 batch-means SE
    assert rep.settings["shift"] > 0


def test_logdet_jarzynski_known_determinant():
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)  # det = 1.75
    ld, rep = linalg.logdet(A, device=ideal_device(2), tol=0.05, runs=3, generator=torch.Generator().manual_seed(0))
    se = rep.error_breakdown["statistical"]
    bias = rep.error_breakdown["burn_in"]  # bound on the bias of an unfinished equilibration
    assert ((ld - math.log(1.75)).abs() < 5 * se + bias).all(), (ld, se)  # 5 SE (delta method) + bias bound
    assert rep.settings["stages"] >= 1 and rep.settings["trajectories"] > 100
    # Jarzynski holds for any protocol: a single abrupt quench is still unbiased in <e^{-W}>, just noisier
    ld1, rep1 = linalg.logdet(A, device=ideal_device(2), stages=1, trajectories=4000,
                              generator=torch.Generator().manual_seed(1))
    assert abs(float(ld1) - math.log(1.75)) < 5 * rep1.error_breakdown["statistical"] + rep1.error_breakdown["burn_in"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: linalg.solve(torch.ones(2, 3), torch.ones(2)), "square"),
        (lambda: linalg.solve(torch.eye(2), torch.ones(3)), "shape"),
        (lambda: linalg.solve(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.ones(2)), "finite"),
        (lambda: linalg.solve(torch.eye(2), torch.tensor([1.0, float("inf")])), "finite"),
        (lambda: linalg.solve(torch.tensor([[1.0, 0.0], [0.0, -1.0]]), torch.ones(2)), "positive real part"),
        (lambda: linalg.inv(torch.tensor([[1.0, 2.0], [2.0, 1.0]])), "positive definite"),
        (lambda: linalg.inv(torch.tensor([[1.0, 0.5], [0.0, 1.0]])), "symmetric"),
        (lambda: linalg.logdet(torch.tensor([[1.0, 2.0], [2.0, 1.0]])), "positive definite"),
        (lambda: linalg.lyapunov(torch.eye(2), -torch.eye(2)), "positive semi-definite"),
        (lambda: linalg.lyapunov(torch.eye(2), torch.eye(3)), "shape"),
        (lambda: linalg.lyapunov(-torch.eye(2), torch.eye(2)), "positive real part"),
        (lambda: linalg.inv(torch.eye(2), tol=1.5), "tol"),
        (lambda: linalg.inv(torch.eye(2), roundings=0), "roundings"),
        (lambda: linalg.inv(torch.eye(2), rounding="up"), "rounding"),
        (lambda: linalg.inv(torch.eye(2), runs=0), "runs"),
        (lambda: linalg.inv(torch.eye(2), averaging_s=-1.0), "averaging_s"),
        (lambda: linalg.inv(torch.eye(4), device=Device(n_cells=2)), "n_cells"),
        (lambda: linalg.expm(torch.eye(2), shift=-5.0), "shift"),
        (lambda: linalg.solve(torch.eye(2), torch.ones(2), diffusion=-1.0), "diffusion"),
        (lambda: linalg.inv(torch.eye(2), device=replace(Device(n_cells=2), noise_scale=0.0)), "noise_scale"),
    ],
)
def test_bad_input_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_input_type_errors():
    with pytest.raises(TypeError, match="A must"):
        linalg.solve("matrix", torch.ones(2))
    with pytest.raises(TypeError, match="real-valued"):
        linalg.inv(torch.eye(2, dtype=torch.complex64))
    with pytest.raises(TypeError, match="device"):
        linalg.inv(torch.eye(2), device="h200")


def test_quantisation_that_breaks_stability_is_reported():
    # an almost singular SPD matrix at 2 DAC bits: the programmed matrix is no longer positive definite
    A = torch.tensor([[1.0, 0.99], [0.99, 1.0]], dtype=F64)
    with pytest.raises(ValueError, match="dac_bits"):
        linalg.inv(A, device=ideal_device(2, dac_bits=2))


def test_lagged_moments_across_chunk_boundaries():
    # the streaming accumulator of x_{k+lag} x_k^T must not depend on how the snapshots are chunked
    x = torch.randn(3, 50, 2, dtype=F64, generator=torch.Generator().manual_seed(0))  # (runs, steps, d)
    lag = 3
    direct = torch.einsum("nsi,nsj->nij", x[:, lag:], x[:, :-lag]) / (50 - lag)
    for cuts in ([50], [7] * 7 + [1], [2, 1, 30, 17], [1] * 50):
        mom = Moments(3, 2, 50, lag=lag)
        pos = 0
        for c in cuts:
            mom(x[:, pos : pos + c])
            pos += c
        assert torch.allclose(mom.mean(), direct, rtol=1e-12, atol=1e-14), cuts
        assert int(mom.counts.sum()) == 50 - lag


def test_float32_in_float32_out():
    A = spd(3, 5).float()
    x, _ = linalg.solve(A, torch.ones(3), tol=0.1, generator=torch.Generator().manual_seed(0))
    X, _ = linalg.inv(A, averaging_s=100e-6, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and X.dtype == torch.float32
