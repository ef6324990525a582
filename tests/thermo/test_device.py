"""Tests of thermoai.thermo.device: error models of programming and reading, dynamics, cost accounting."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from thermoai.thermo.device import BOLTZMANN, Cost, Device, quantise
from thermoai.thermo.ou import OUProcess

F64 = torch.float64


def _stable(d, g):
    M = torch.randn(d, d, generator=g, dtype=F64)
    K = torch.randn(d, d, generator=g, dtype=F64)
    return M @ M.T / d + torch.eye(d, dtype=F64) + 0.5 * (K - K.T) / math.sqrt(d)


def test_quantiser_error_is_uniform_with_predicted_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, dtype=F64, generator=g)
    for bits in (4, 8):
        q = 3.0 / (2 ** (bits - 1) - 1)
        e = quantise(x, bits, 3.0) - x
        inside = x.abs() < 3.0
        assert e[inside].abs().max() <= q / 2 + 1e-15
        v, n = float(e[inside].var()), int(inside.sum())
        # uniform error: variance q^2/12, and the sample variance has SE q^2/12 * sqrt(0.8/n)
        # (fourth moment of a uniform: 9/5 sigma^4); 5 standard errors
        assert abs(v - q * q / 12) < 5 * (q * q / 12) * math.sqrt(0.8 / n)
    assert quantise(torch.tensor([10.0, -10.0], dtype=F64), 8, 3.0).tolist() == [3.0, -3.0]  # clipped


def test_stochastic_rounding_is_unbiased():
    x = torch.full((100_000,), 0.3, dtype=F64)
    r = quantise(x, 3, 1.0, rounding="stochastic", generator=torch.Generator().manual_seed(1))  # step 1/3
    f = 0.9 - math.floor(0.9)  # 0.3 / (1/3) = 0.9 steps: up with probability 0.9
    sd = (1 / 3) * math.sqrt(f * (1 - f))
    assert abs(float(r.mean()) - 0.3) < 5 * sd / math.sqrt(x.numel())  # 5 standard errors
    assert set(torch.unique(r).tolist()) <= {0.0, 1 / 3}


@pytest.mark.parametrize("bits", [6, 10])
def test_quantisation_changes_inverse_by_predicted_amount(bits):
    # Inversion on the device reads S_q solving A_q S + S A_q^T = 2 I. To first order
    # dS = L^{-1}(-dA S - S dA^T) with independent entry errors of variance q^2/12, so
    # E|dS|_F^2 = q^2/12 sum_ij |L^{-1}(E_ij S + S E_ji)|_F^2 (L^{-1} by scipy's Lyapunov solver).
    dev = Device(n_cells=4, dac_bits=bits, mismatch=0.0)
    g = torch.Generator().manual_seed(bits)
    d, trials = 4, 150
    ratios = []
    for _ in range(trials):
        A = _stable(d, g)
        Aq, _ = dev.program(A)
        q = dev.dac_step(float(A.abs().max()))
        An = A.numpy()
        S = sla.solve_continuous_lyapunov(An, 2 * np.eye(d))
        pred = 0.0
        for i in range(d):
            for j in range(d):
                E = np.zeros((d, d))
                E[i, j] = 1.0
                pred += np.sum(sla.solve_continuous_lyapunov(An, -(E @ S + S @ E.T)) ** 2)
        pred *= q * q / 12
        Sq = OUProcess(Aq, 2.0).stationary_covariance().numpy()
        ratios.append(np.sum((Sq - S) ** 2) / pred)
    ratios = np.array(ratios)
    # mean of the observed / predicted ratio is 1 within 5 standard errors
    assert abs(ratios.mean() - 1) < 5 * ratios.std(ddof=1) / math.sqrt(trials)


def test_mismatch_spread_and_fixed_chip_pattern():
    dev = Device(n_cells=64, mismatch=0.05, dac_bits=16)
    A = torch.full((64, 64), 2.0, dtype=F64)
    A[0, 1] = 2.0 - 1e-9  # not symmetric: one independent coupling per entry
    Ap, cost = dev.program(A)
    rel = (Ap / 2.0 - 1).flatten()
    n = rel.numel()
    # std of the relative spread: 5 standard errors of a sample std (sd / sqrt(2n))
    assert abs(float(rel.std()) - 0.05) < 5 * 0.05 / math.sqrt(2 * n)
    assert abs(float(rel.mean())) < 5 * 0.05 / math.sqrt(n)
    # same chip: same pattern each time, also for a sub-block (per cell pair); a new generator: a new chip
    assert torch.equal(Ap, dev.program(A)[0])
    assert torch.equal(dev.program(A[:8, :8])[0], Ap[:8, :8])
    assert torch.equal(Ap, dev.program(A, generator=torch.Generator().manual_seed(9))[0])  # drives rounding only
    assert not torch.equal(Ap, dataclasses.replace(dev, seed=1).program(A)[0])
    # a symmetric matrix: one coupling per cell pair, so it stays symmetric, with the upper triangle's pattern
    As = torch.full((64, 64), 2.0, dtype=F64)
    Asp = dev.program(As)[0]
    assert torch.equal(Asp, Asp.T) and torch.equal(torch.triu(Asp), torch.triu(Ap))
    # zeros stay zero (a switched-off coupling)
    assert (dev.program(torch.zeros(3, 3, dtype=F64))[0] == 0).all()
    assert cost == Cost(64 * 64 * dev.program_time_per_value, 64 * 64 * dev.program_energy_per_value)


def test_read_noise_and_adc_model():
    dev = Device(n_cells=4, adc_bits=8, adc_range=2.0, readout_noise=0.01)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(50_000, 4, dtype=F64, generator=g) - 0.5) * 3.0  # within range
    y, cost = dev.read(x, generator=g)
    e = (y - x).flatten()
    q = dev.adc_step
    pred = q * q / 12 + 0.01**2
    # variance of (uniform + Gaussian) error; SE of a sample variance ~ pred * sqrt(2 / n); 5 SE
    assert abs(float(e.var()) - pred) < 5 * pred * math.sqrt(2 / e.numel())
    assert cost.time == pytest.approx(50_000 * dev.sampling_interval)
    assert cost.energy == pytest.approx(200_000 * dev.adc_energy_per_conversion)
    big, _ = dev.read(torch.tensor([[5.0, -5.0, 0.0, 0.0]], dtype=F64), generator=g)
    assert big[0, 0] == 2.0 and big[0, 1] == -2.0


def test_run_relaxes_in_units_of_the_time_constant_and_reaches_the_programmed_law():
    dev = Device(n_cells=2, time_constant=2e-6, sampling_interval=1e-6, mismatch=0.0, dac_bits=12,
                 adc_bits=16, adc_range=8.0, readout_noise=0.0)
    A = torch.tensor([[2.0, 0.7], [0.3, 1.5]], dtype=F64)
    b = torch.tensor([0.5, -0.5], dtype=F64)
    Ap, _ = dev.program(A)
    bp, _ = dev.program(b)
    n = 20_000
    x0 = torch.tensor([3.0, 3.0], dtype=F64)
    samples, cost = dev.run(Ap, bp, duration=10e-6, x0=x0, n=n, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (n, 10, 2)
    times = dev.sample_times(10e-6)
    proc = OUProcess(Ap, 2.0 + 2 * dev.thermal_variance, bp)
    for k in (0, 3, 9):
        s = float(times[k]) / dev.time_constant  # device units: A is in 1 / time_constant
        mu, Sig = proc.mean(x0, s), proc.covariance(s)
        Sig = Sig + torch.eye(2, dtype=F64) * dev.adc_step**2 / 12  # ADC rounding adds q^2/12
        se = (Sig.diagonal() / n).sqrt()
        assert ((samples[:, k].mean(0) - mu).abs() / se).max() < 5  # 5 standard errors
        se_cov = ((Sig.diagonal()[:, None] * Sig.diagonal()[None, :] + Sig**2) / n).sqrt()
        assert ((torch.cov(samples[:, k].T) - Sig).abs() / se_cov).max() < 5
    # cost: n runs of 10 us each, 2 cells on, 10 snapshots of 2 conversions per run
    assert cost.time == pytest.approx(n * 10e-6)
    assert cost.energy == pytest.approx(n * (2 * dev.power_per_cell * 10e-6 + 20 * dev.adc_energy_per_conversion))


def test_run_with_burn_in_samples_the_stationary_inverse():
    dev = Device(n_cells=3, adc_bits=14, readout_noise=0.0, mismatch=0.0, dac_bits=12)
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.5]], dtype=F64)
    Ap, _ = dev.program(A)
    n = 20_000
    samples, cost = dev.run(Ap, None, duration=1e-6, burn_in=30e-6, n=n, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (n, 1, 3)
    # D = 2 I (plus the 4e-12 thermal floor) makes the stationary covariance Ap^{-1}; ADC adds q^2/12
    assert torch.allclose(OUProcess(Ap, 2.0).stationary_covariance(), torch.linalg.inv(Ap), atol=1e-12)
    S = torch.linalg.inv(Ap) + torch.eye(3, dtype=F64) * dev.adc_step**2 / 12
    se_cov = ((S.diagonal()[:, None] * S.diagonal()[None, :] + S**2) / n).sqrt()
    assert ((torch.cov(samples[:, 0].T) - S).abs() / se_cov).max() < 5  # 5 standard errors
    assert cost.time == pytest.approx(n * 31e-6)


def test_thermal_floor_and_cost_arithmetic():
    dev = Device()
    assert dev.thermal_variance == pytest.approx(BOLTZMANN * 300 / 1e-9)
    a, b = Cost(1.0, 2.0), Cost(3.0, 5.0)
    assert a + b == Cost(4.0, 7.0)
    assert Cost.parallel(a, b) == Cost(3.0, 7.0)
    assert 2 * a == Cost(2.0, 4.0) and sum([a, b]) == Cost(4.0, 7.0)
    assert b.power == pytest.approx(5 / 3)


def test_device_bad_inputs():
    with pytest.raises(ValueError, match="time_constant must be finite and non-negative"):
        Device(time_constant=-1.0)
    with pytest.raises(ValueError, match="sampling_interval must be positive"):
        Device(sampling_interval=0.0)
    with pytest.raises(ValueError, match="dac_bits must be >= 2"):
        Device(dac_bits=1)
    with pytest.raises(TypeError, match="n_cells must be an integer"):
        Device(n_cells=2.5)
    with pytest.raises(ValueError, match="mismatch must be finite"):
        Device(mismatch=float("nan"))
    dev = Device(n_cells=2)
    with pytest.raises(ValueError, match="at most n_cells = 2"):
        dev.program(torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        dev.program(torch.tensor([1.0, float("inf")], dtype=F64))
    with pytest.raises(ValueError, match="n_cells = 2"):
        dev.read(torch.zeros(5, 3, dtype=F64))
    with pytest.raises(ValueError, match="at least one sampling_interval"):
        dev.run(torch.eye(2, dtype=F64), duration=1e-9)
    with pytest.raises(ValueError, match="positive real part"):
        dev.run(-torch.eye(2, dtype=F64), duration=1e-5)
    with pytest.raises(ValueError, match="burn_in"):
        dev.run(torch.eye(2, dtype=F64), duration=1e-5, burn_in=-1.0)
    with pytest.raises(ValueError, match="rounding"):
        dev.program(torch.eye(2, dtype=F64), rounding="up")


def test_stream_hands_over_chunks_that_continue_each_run(monkeypatch):
    import thermoai.thermo.device as device_module

    dev = Device(n_cells=2, mismatch=0.0, readout_noise=0.0, adc_bits=16, adc_range=8.0)
    A = torch.tensor([[2.0, 0.7], [0.3, 1.5]], dtype=F64)
    n, steps = 4000, 20
    b = torch.tensor([[1.0, -1.0], [-0.5, 0.5]], dtype=F64).repeat(n // 2, 1)  # one fixed point per run
    monkeypatch.setattr(device_module, "_CHUNK_STATES", 7 * n * 2)  # chunks of 7 snapshots
    chunks = []
    cost = dev.stream(A, b, duration=steps * 1e-6, n=n, burn_in=15e-6, generator=torch.Generator().manual_seed(4),
                      consume=chunks.append)
    assert [c.shape for c in chunks] == [(n, 7, 2), (n, 7, 2), (n, 6, 2)]
    y = torch.cat(chunks, 1) - b[:, None, :]  # each run around its own fixed point
    proc = dev.process(A)
    S = proc.stationary_covariance() + torch.eye(2, dtype=F64) * dev.adc_step**2 / 12  # ADC rounding adds q^2/12
    Phi, _ = proc.transition(dev.sampling_interval / dev.time_constant)
    se = (S.diagonal() / n).sqrt()
    # burn-in of 15 time constants leaves a bias below 1e-7: stationary around b at every snapshot (5 SE)
    assert (y.mean(0).abs() / se).max() < 5
    # across the chunk boundary (snapshots 6 -> 7) the state carries over: Cov(y_7, y_6) = Phi S (5 SE)
    cross = y[:, 7].T @ y[:, 6] / n
    se_cross = ((S.diagonal()[:, None] * S.diagonal()[None, :] + (Phi @ S) ** 2) / n).sqrt()
    assert ((cross - Phi @ proc.stationary_covariance()).abs() / se_cross).max() < 5
    # the same cost model as run: n runs of (burn-in + duration), 2 cells on, one conversion per cell and snapshot
    assert cost == dev.operating_cost(n, 2, 15e-6 + steps * 1e-6, n * steps * 2)
    assert cost.time == pytest.approx(n * 35e-6)
    with pytest.raises(ValueError, match="b must be finite with shape"):
        dev.stream(A, torch.zeros(3, 2, dtype=F64), duration=1e-5, n=2, consume=chunks.append)
