"""GaussianPosteriorCircuit.from_precision and circuit_sampler (thermoai.thermo.circuits): any N(m, P^-1)
programmed with its precision, with the model circuit's non-idealities and costs."""

from __future__ import annotations

import math

import pytest
import torch

from thermoai.thermo.circuits import CircuitSampler, GaussianPosteriorCircuit, circuit_sampler
from thermoai.thermo.device import Cost, Device

F64 = torch.float64


def _model(d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    prior_cov = A @ A.T / d + 0.5 * torch.eye(d, dtype=F64)
    H = torch.randn(d + 2, d, generator=g, dtype=F64)
    y = torch.randn(d + 2, generator=g, dtype=F64)
    return torch.randn(d, generator=g, dtype=F64), prior_cov, y, 0.8, H


@pytest.mark.parametrize("design", ["rc", "active"])
def test_from_precision_is_the_model_circuit_programmed_with_the_same_precision(design):
    """Same precision, same chip, same readout scale: the same programmed couplings and noise, hence the same
    stationary law (mean shifted from the sources to the host offset) and programming cost of P's arrays."""
    mu, Sp, y, Sl, H = _model()
    chip = Device(n_cells=5, dac_bits=6, mismatch=0.03, noise_scale=1.1, seed=2)
    model = GaussianPosteriorCircuit(mu, Sp, y, Sl, H=H, design=design, device=chip)
    P, m = model.posterior_precision, model.posterior_mean
    fp = GaussianPosteriorCircuit.from_precision(m, P, design=design, device=chip, scale=model.scale)
    assert torch.equal(fp.posterior_precision, P) and torch.equal(fp.posterior_mean, m)
    assert torch.equal(fp._build()["A"], model._build()["A"]) and torch.equal(fp._build()["D"], model._build()["D"])
    assert torch.equal(fp._build()["b"], torch.zeros(5, dtype=F64))  # the mean is the host's offset
    m1, S1 = model.stationary_law()
    m2, S2 = fp.stationary_law()
    torch.testing.assert_close(S2, S1, rtol=1e-12, atol=1e-14)
    # the model's mean error comes from its quantised sources; from_precision has none
    assert float((m2 - m).abs().max()) == 0.0
    assert fp.programming_cost == model.programming_cost
    assert fp.default_burn_in() > fp.slowest_relaxation_time  # from the mean (a point): t0 = T_slow


def test_default_scale_fits_the_widest_marginal_into_the_adc():
    g = torch.Generator().manual_seed(1)
    B = torch.randn(6, 6, generator=g, dtype=F64)
    P = B @ B.T + 0.1 * torch.eye(6, dtype=F64)
    dev = Device(n_cells=6)
    c = GaussianPosteriorCircuit.from_precision(torch.zeros(6, dtype=F64), P, device=dev)
    sd = torch.linalg.inv(P).diagonal().sqrt()
    assert c.scale == pytest.approx(4.5 * float(sd.max()) / dev.adc_range, rel=1e-10)
    s, cost, info = c.sample(2000, torch.Generator().manual_seed(0), interval=5e-6, info=True)
    assert info["start"] == "mean" and info["clipped_fraction"] < 1e-3
    assert cost.time > 0 and cost.energy > 0


def test_circuit_sampler_routes_keywords_and_samples_the_circuit():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    P = torch.tensor([[2.0, -0.5, 0.0], [-0.5, 1.5, -0.3], [0.0, -0.3, 1.0]], dtype=F64)
    dev = Device(n_cells=3)
    sm = circuit_sampler("active", dev, rate_bound="spectral", chains=4, interval=3e-6)
    assert isinstance(sm, CircuitSampler) and sm.circuit_kwargs == {"rate_bound": "spectral"}
    assert sm.sample_kwargs == {"chains": 4, "interval": 3e-6}
    x, cost = sm(mean, P, 40, torch.Generator().manual_seed(3))
    y, cost2 = sm.circuit(mean, P).sample(40, torch.Generator().manual_seed(3), chains=4, interval=3e-6)
    assert torch.equal(x, y) and cost == cost2 and isinstance(cost, Cost)
    # ideal chip, independent chains relaxed for 10 time constants (variance deficit e^-20): z-scores
    ideal = Device(n_cells=3, dac_bits=30, adc_bits=24, readout_noise=0.0, mismatch=0.0)
    n = 20000
    x, _ = circuit_sampler("rc", ideal, chains=n, burn_in=1e-5)(mean, P, n, torch.Generator().manual_seed(0))  # 10 tau
    S = torch.linalg.inv(P)
    z_mean = (x.mean(0) - mean) / (S.diagonal() / n).sqrt()
    Sh = torch.cov(x.T)
    se = ((S.diagonal()[:, None] * S.diagonal()[None, :] + S * S) / n).sqrt()  # sd of a sample covariance
    assert float(z_mean.abs().max()) < 4.5 and float(((Sh - S) / se).abs().max()) < 4.5


def test_bad_input_names_the_argument():
    P = torch.eye(3, dtype=F64)
    m = torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match="precision must be symmetric"):
        GaussianPosteriorCircuit.from_precision(m, P + torch.triu(torch.ones(3, 3, dtype=F64), 1))
    with pytest.raises(ValueError, match="precision must be positive definite"):
        GaussianPosteriorCircuit.from_precision(m, -P)
    with pytest.raises(ValueError, match="precision must have shape"):
        GaussianPosteriorCircuit.from_precision(m, torch.eye(4, dtype=F64))
    with pytest.raises(ValueError, match="mean must have finite entries"):
        GaussianPosteriorCircuit.from_precision(torch.tensor([0.0, math.nan, 0.0]), P)
    with pytest.raises(ValueError, match="n_cells = 2"):
        GaussianPosteriorCircuit.from_precision(m, P, device=Device(n_cells=2))
    with pytest.raises(ValueError, match="design must be one of"):
        GaussianPosteriorCircuit.from_precision(m, P, design="lc")
    c = GaussianPosteriorCircuit.from_precision(m, P)
    assert not c.has_prior
    with pytest.raises(ValueError, match="start='prior' needs a prior"):
        c.sample(3, start="prior")
    with pytest.raises(ValueError, match="from_precision"):
        c.thermodynamics()
    with pytest.raises(ValueError, match="design must be one of"):
        circuit_sampler("lc")
    with pytest.raises(TypeError, match="device must be"):
        circuit_sampler(device="chip")
