"""GaussianPosteriorCircuit: exact posterior, element values, sampling accuracy of both designs, the
fluctuation-dissipation trap, passive limits, non-idealities against the device model, costs, bad input."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from thermoai.thermo.circuits import GaussianPosteriorCircuit
from thermoai.thermo.circuits._common import gaussian_kl
from thermoai.thermo.device import BOLTZMANN, Device

sys.path.insert(0, str(Path(__file__).parent))
from circuit_helpers import expected_fit_kl, fit, random_cov  # noqa: E402

F64 = torch.float64


def ideal(d: int, **kw) -> Device:
    """A device whose converters are exact to ~1e-9 and which has no mismatch or readout noise."""
    base = dict(n_cells=d, dac_bits=32, adc_bits=32, adc_range=8.0, readout_noise=0.0, mismatch=0.0)
    base.update(kw)
    return Device(**base)


def problem(d: int, seed: int, with_H: bool):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, dtype=F64, generator=g)
    Sp = random_cov(d, g)
    if with_H:
        m = d + 3
        H = torch.randn(m, d, dtype=F64, generator=g) / math.sqrt(d)
        Sl = random_cov(m, g)
        y = H @ torch.randn(d, dtype=F64, generator=g) + torch.randn(m, dtype=F64, generator=g)
        return mu, Sp, y, Sl, H
    return mu, Sp, torch.randn(d, dtype=F64, generator=g), random_cov(d, g), None


# --- exact posterior ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_H", [False, True])
def test_posterior_is_the_closed_form(with_H):
    mu, Sp, y, Sl, H = problem(6, 0, with_H)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, H=H, device=ideal(6))
    Hm = torch.eye(6, dtype=F64) if H is None else H
    # Woodbury form, independent of the precision form the circuit uses
    K = Hm @ Sp @ Hm.T + Sl
    gain = Sp @ Hm.T @ torch.linalg.inv(K)
    assert torch.allclose(c.posterior_mean, mu + gain @ (y - Hm @ mu), atol=1e-12)
    assert torch.allclose(c.posterior_cov, Sp - gain @ Hm @ Sp, atol=1e-12)
    assert torch.allclose(c.posterior_precision @ c.posterior_cov, torch.eye(6, dtype=F64), atol=1e-10)


def test_scalar_and_diagonal_covariances():
    c = GaussianPosteriorCircuit(torch.zeros(3, dtype=F64), 2.0, torch.tensor([1.0, 2.0, 3.0]), torch.ones(3),
                                 device=ideal(3))
    # independent coordinates: m = Sp / (Sp + Sl) y = 2/3 y, variance 2/3
    assert torch.allclose(c.posterior_mean, torch.tensor([2 / 3, 4 / 3, 2.0], dtype=F64))
    assert torch.allclose(c.posterior_cov, (2 / 3) * torch.eye(3, dtype=F64))
    assert c.realisation["passive"]


# --- element values -------------------------------------------------------------------------------


def test_rc_elements_realise_the_posterior():
    mu, Sp, y, Sl, _ = problem(5, 1, False)
    dev = ideal(5, capacitance=1e-12, time_constant=1e-9)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, design="rc", device=dev)
    e = c.elements
    C, G, i = e["capacitance_matrix_F"], e["conductance_matrix_S"], e["source_current_A"]
    P, V0, tau = c.posterior_precision, e["volts_per_unit"], e["time_constant_s"]
    assert torch.allclose(C, e["unit_capacitance_F"] * P)
    assert float(torch.diagonal(C).max()) == pytest.approx(1e-12)
    # every mode relaxes at 1/tau: C^-1 G = I / tau
    assert torch.allclose(torch.linalg.solve(C, G) * tau, torch.eye(5, dtype=F64), atol=1e-10)
    # DC operating point: v = G^-1 i volts = V0 (m - mu_pi)
    assert torch.allclose(mu + torch.linalg.solve(G, i) / V0, c.posterior_mean, atol=1e-10)
    # equilibrium covariance k T_n C^-1 in volts^2 is V0^2 P^-1
    assert torch.allclose(BOLTZMANN * e["noise_temperature_K"] * torch.linalg.inv(C) / V0**2, c.posterior_cov,
                          rtol=1e-9)
    # branch decomposition: ground elements are the row sums, branches the negated off-diagonal entries
    assert torch.allclose(e["ground_capacitance_F"] + (-e["branch_capacitance_F"]).sum(1), torch.diagonal(C))
    assert e["temperature_K"] == 300.0


def test_active_elements_realise_the_posterior():
    mu, Sp, y, Sl, _ = problem(5, 2, False)
    dev = ideal(5, capacitance=1e-12, time_constant=1e-9)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, design="active", device=dev)
    e = c.elements
    C0, G, i = e["node_capacitance_F"], e["coupling_conductance_matrix_S"], e["source_current_A"]
    V0, tau = e["volts_per_unit"], e["time_constant_s"]
    rates = torch.linalg.eigvalsh(G / C0)
    assert float(rates.max()) <= 1 / tau * (1 + 1e-12)  # Gershgorin scaling: nothing faster than the cell
    assert c.slowest_relaxation_time == pytest.approx(1 / float(rates.min()), rel=1e-9)
    assert torch.allclose(mu + torch.linalg.solve(G, i) / V0, c.posterior_mean, atol=1e-10)
    # node noise currents of intensity q: C0 dv = ... + dxi, so A S + S A = q / C0^2 I with A = G / C0
    A, q = G / C0, e["noise_current_intensity_A2s"]
    lam, U = torch.linalg.eigh(A)
    S = U @ torch.diag(q / C0**2 / (2 * lam)) @ U.T
    assert torch.allclose(S / V0**2, c.posterior_cov, rtol=1e-9)


def test_active_rate_bounds():
    mu, Sp, y, Sl, _ = problem(16, 14, False)
    g = GaussianPosteriorCircuit(mu, Sp, y, Sl, design="active", device=ideal(16))
    s = GaussianPosteriorCircuit(mu, Sp, y, Sl, design="active", device=ideal(16), rate_bound="spectral")
    lam = torch.linalg.eigvalsh(s.posterior_precision)
    for c, top in ((g, float(s.posterior_precision.abs().sum(1).max())), (s, float(lam.max()))):
        G = c.elements["coupling_conductance_matrix_S"] / c.elements["node_capacitance_F"]
        assert float(torch.linalg.eigvalsh(G).max()) * c.time_constant == pytest.approx(float(lam.max()) / top)
        assert c.slowest_relaxation_time == pytest.approx(c.time_constant * top / float(lam.min()))
    assert s.slowest_relaxation_time < g.slowest_relaxation_time  # Gershgorin overestimates lambda_max
    with pytest.raises(ValueError, match="rate_bound must be"):
        GaussianPosteriorCircuit(mu, Sp, y, Sl, design="active", device=ideal(16), rate_bound="exact")


def test_passive_realisation_and_what_the_design_does_otherwise():
    d = 6
    # an M-matrix precision (a path-graph Laplacian plus ground): realisable by a passive RC network
    Lap = 2 * torch.eye(d, dtype=F64) - torch.diag(torch.ones(d - 1, dtype=F64), 1) - torch.diag(
        torch.ones(d - 1, dtype=F64), -1)
    Lap[0, 0] = Lap[-1, -1] = 1.0
    Sl = torch.linalg.inv(Lap + 0.5 * torch.eye(d, dtype=F64))
    c = GaussianPosteriorCircuit(torch.zeros(d), 1.0, torch.ones(d), Sl, device=ideal(d), allow_active=False)
    assert c.realisation == {"passive": True, "positive_off_diagonal": 0, "negative_ground": 0, "active_elements": 0}
    e = c.elements
    tol = 1e-12 * float(e["capacitance_matrix_F"].abs().max())  # round-off of inverting Sl
    assert bool((e["branch_capacitance_F"] >= -tol).all()) and bool((e["ground_capacitance_F"] >= -tol).all())
    # a dense random precision has positive off-diagonal entries: active elements, or an error on request
    mu, Sp, y, Sl2, _ = problem(d, 3, False)
    c2 = GaussianPosteriorCircuit(mu, Sp, y, Sl2, device=ideal(d))
    r = c2.realisation
    P = c2.posterior_precision
    assert not r["passive"] and r["positive_off_diagonal"] == int((torch.triu(P, 1) > 0).sum()) > 0
    with pytest.raises(ValueError, match="passive"):
        GaussianPosteriorCircuit(mu, Sp, y, Sl2, device=ideal(d), allow_active=False)
    with pytest.raises(ValueError, match="johnson"):
        GaussianPosteriorCircuit(mu, Sp, y, Sl2, device=ideal(d), noise="johnson")


# --- sampling accuracy ----------------------------------------------------------------------------


@pytest.mark.parametrize("design", ["rc", "active"])
@pytest.mark.parametrize("d,with_H", [(4, False), (4, True), (64, False), (256, False), (256, True)])
def test_samples_match_the_posterior(design, d, with_H):
    mu, Sp, y, Sl, H = problem(d, 10 + d, with_H)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, H=H, design=design, device=ideal(d))
    N = 20_000
    # reads five slowest relaxation times apart are independent to e^-5; burn-in leaves KL <= 1e-8
    x, cost = c.sample(N, torch.Generator().manual_seed(d), chains=1000, interval=5 * c.slowest_relaxation_time,
                       burn_in=c.default_burn_in(eps=1e-8))
    assert x.shape == (N, d) and x.dtype == F64 and cost.time > 0 and cost.energy > 0
    m, S = fit(x)
    kl = gaussian_kl(m, S, c.posterior_mean, c.posterior_precision)
    mean, sd = expected_fit_kl(d, N)
    assert abs(kl - mean) < 5 * sd, (kl, mean, sd)


def test_rc_relaxes_every_mode_at_one_time_constant_and_active_at_the_spectrum():
    mu, Sp, y, Sl, _ = problem(8, 4, False)
    for design in ("rc", "active"):
        c = GaussianPosteriorCircuit(mu, Sp, y, Sl, design=design, device=ideal(8))
        ts = torch.tensor([0.3, 1.0, 2.5, 6.0]) * c.slowest_relaxation_time
        # the fast closed forms equal the general matrix-exponential law of the (ideal) programmed chip
        assert torch.allclose(c.kl(ts), c.kl(ts, programmed=True), rtol=1e-6)
        kl0 = float(c.kl([0.0])[0])
        assert kl0 == pytest.approx(c.thermodynamics()["quench_dissipation_kT"])
        # the contraction bound KL(t) <= e^{-2t / T_slow} KL(0) holds, and time_to_kl inverts KL(t)
        assert bool((c.kl(ts) <= torch.exp(-2 * ts / c.slowest_relaxation_time) * kl0 * (1 + 1e-9)).all())
        t = c.time_to_kl(0.01)
        assert float(c.kl([t])[0]) <= 0.01 < float(c.kl([0.999 * t])[0])
    rc = GaussianPosteriorCircuit(mu, Sp, y, Sl, design="rc", device=ideal(8))
    assert rc.slowest_relaxation_time == rc.time_constant


def test_law_at_time_t_matches_simulated_chains():
    # 40,000 chains read once after 1.5 time constants: their mean and covariance are those of kl()'s law
    mu, Sp, y, Sl, _ = problem(3, 5, False)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, device=ideal(3))
    t = 1.5 * c.time_constant
    x, _ = c.sample(40_000, torch.Generator().manual_seed(0), chains=40_000, burn_in=t - c.device.sampling_interval)
    # the one read is taken one sampling interval after the burn-in, i.e. at time t
    m_t = c.posterior_mean + math.exp(-1.5) * (mu - c.posterior_mean)
    S_t = c.posterior_cov + math.exp(-3.0) * (Sp - c.posterior_cov)
    z = (x.mean(0) - m_t) / torch.sqrt(torch.diagonal(S_t) / x.shape[0])
    assert float(z.abs().max()) < 5
    mean, sd = expected_fit_kl(3, x.shape[0])
    m, S = fit(x)
    assert abs(gaussian_kl(m, S, m_t, torch.linalg.inv(S_t)) - mean) < 5 * sd


# --- the fluctuation-dissipation trap -------------------------------------------------------------


def test_johnson_noise_only_active_design_samples_kT_over_C():
    d = 6
    mu, Sp, y, Sl, _ = problem(d, 6, False)
    dev = ideal(d, capacitance=1e-15)  # kT/C = 4.1e-6 V^2: a 2 mV rms, well above the ADC step
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, design="active", device=dev, noise="johnson")
    N = 20_000
    x, _ = c.sample(N, torch.Generator().manual_seed(1), chains=500, interval=5 * c.slowest_relaxation_time,
                    burn_in=40 * c.slowest_relaxation_time)
    kT_over_C = BOLTZMANN * 300.0 / 1e-15  # volts^2 on every node, independent of P
    target = kT_over_C / c.volts_per_unit**2 * torch.eye(d, dtype=F64)
    m, S = fit(x)
    mean, sd = expected_fit_kl(d, N)
    assert abs(gaussian_kl(m, S, c.posterior_mean, torch.linalg.inv(target)) - mean) < 5 * sd
    assert torch.allclose(c.stationary_law(programmed=False, readout=False)[1], target, rtol=1e-12)
    # ... and not the posterior: the same samples are far from it
    assert gaussian_kl(m, S, c.posterior_mean, c.posterior_precision) > 10
    # the injected-noise design on the same device does sample the posterior
    c2 = GaussianPosteriorCircuit(mu, Sp, y, Sl, design="active", device=dev)
    mean2, cov2 = c2.stationary_law(programmed=True, readout=False)
    assert gaussian_kl(mean2, cov2, c.posterior_mean, c.posterior_precision) < 1e-6


def test_johnson_noise_only_rc_design_keeps_the_shape_at_the_physical_temperature():
    d = 4
    Sl = torch.linalg.inv(torch.tensor([[2.0, -0.5, 0, 0], [-0.5, 2.0, -0.5, 0], [0, -0.5, 2.0, -0.5],
                                        [0, 0, -0.5, 2.0]], dtype=F64))
    dev = ideal(d, capacitance=1e-16)
    c = GaussianPosteriorCircuit(torch.zeros(d), 1.0, torch.ones(d), Sl, device=dev, noise="johnson")
    ratio = c.temperature / c.noise_temperature
    assert ratio == pytest.approx(BOLTZMANN * 300 / (1e-16 / float(torch.diagonal(c.posterior_precision).max())
                                                      * c.volts_per_unit**2))
    _, S = c.stationary_law(programmed=True, readout=False)
    assert torch.allclose(S, ratio * c.posterior_cov, rtol=1e-6)


# --- non-idealities against the device model ------------------------------------------------------


def _bootstrap_kl(mean, cov, P_post, m_post, N, reps, g):
    L = torch.linalg.cholesky(cov)
    vals = []
    for _ in range(reps):
        x = mean + torch.randn(N, mean.shape[0], dtype=F64, generator=g) @ L.T
        m, S = fit(x)
        vals.append(gaussian_kl(m, S, m_post, P_post))
    v = torch.tensor(vals)
    return float(v.mean()), float(v.std())


@pytest.mark.parametrize("design", ["rc", "active"])
def test_error_from_mismatch_dac_and_adc_is_what_the_device_model_predicts(design):
    d, N = 8, 8000
    mu, Sp, y, Sl, _ = problem(d, 7, False)
    g = torch.Generator().manual_seed(3)
    predicted = {}
    for label, kw in {"mismatch 0.04": dict(mismatch=0.04), "mismatch 0.1": dict(mismatch=0.1),
                      "dac 5 bits": dict(dac_bits=5), "adc 6 bits + readout noise": dict(adc_bits=6,
                                                                                         readout_noise=0.3)}.items():
        c = GaussianPosteriorCircuit(mu, Sp, y, Sl, design=design, device=ideal(d, **kw))
        x, _ = c.sample(N, torch.Generator().manual_seed(11), chains=400, interval=6 * c.slowest_relaxation_time,
                        burn_in=c.default_burn_in(eps=1e-8))
        m, S = fit(x)
        measured = gaussian_kl(m, S, c.posterior_mean, c.posterior_precision)
        law = c.stationary_law(programmed=True, readout=True)
        predicted[label] = gaussian_kl(*law[:1], law[1], c.posterior_mean, c.posterior_precision)
        # the sampling distribution of the fitted KL under the predicted law (parametric bootstrap)
        boot_mean, boot_sd = _bootstrap_kl(*law, c.posterior_precision, c.posterior_mean, N, 40, g)
        assert abs(measured - boot_mean) < 5 * boot_sd, (label, measured, boot_mean, boot_sd)
        assert predicted[label] > 3 * expected_fit_kl(d, N)[0]  # the error is visible above sampling noise
    # first order in the mismatch: the chip's fixed pattern scaled by 2.5 gives 2.5^2 the KL
    assert predicted["mismatch 0.1"] / predicted["mismatch 0.04"] == pytest.approx(6.25, rel=0.15)


def test_noise_miscalibration_tempers_the_posterior():
    mu, Sp, y, Sl, _ = problem(5, 8, False)
    for design in ("rc", "active"):
        c = GaussianPosteriorCircuit(mu, Sp, y, Sl, design=design, device=ideal(5, noise_scale=math.sqrt(2)))
        mean, cov = c.stationary_law(programmed=True, readout=False)
        assert torch.allclose(mean, c.posterior_mean, atol=1e-8)
        assert torch.allclose(cov, 2 * c.posterior_cov, rtol=1e-6)  # p^(1/T) with T = noise_scale^2


# --- costs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("design", ["rc", "active"])
def test_cost_is_programming_plus_operating_cost(design):
    d = 5
    mu, Sp, y, Sl, _ = problem(d, 9, False)
    dev = Device(n_cells=8)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, design=design, device=dev)
    x, cost, info = c.sample(30, torch.Generator().manual_seed(0), chains=3, interval=2e-6, burn_in=1e-5,
                             info=True)
    n_values = 2 * d * d + d + 1 if design == "rc" else d * d + 2 * d
    prog = dev.program_cost(n_values)
    assert info["programming"].time == pytest.approx(prog.time)
    assert info["programming"].energy == pytest.approx(prog.energy)
    assert info["reads_per_chain"] == 10 and info["chains"] == 3
    dyn = dev.operating_cost(3, d, 1e-5 + 10 * 2e-6, 30 * d)
    assert cost.time == pytest.approx(prog.time + dyn.time)
    assert cost.energy == pytest.approx(prog.energy + dyn.energy)
    assert 0 <= info["clipped_fraction"] < 0.01


def test_thermodynamic_quantities():
    mu, Sp, y, Sl, _ = problem(4, 12, False)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, device=ideal(4))
    th = c.thermodynamics()
    # -T dS = kT/2 ln det(I + Sp Sl^-1); dU = kT/2 r^T (Sp + Sl)^-1 r; quench W_diss = kT KL(prior||posterior)
    assert th["entropy_kT"] == pytest.approx(0.5 * float(torch.logdet(torch.eye(4, dtype=F64) + Sp @ torch.linalg.inv(Sl))))
    r = y - mu
    assert th["energy_kT"] == pytest.approx(0.5 * float(r @ torch.linalg.solve(Sp + Sl, r)))
    # dF = -ln p(y) - 1/2 ln det(2 pi Sl): the free-energy change is the negative log evidence up to a constant
    K = Sp + Sl
    log_evidence = float(torch.distributions.MultivariateNormal(mu, K).log_prob(y))
    assert th["free_energy_kT"] == pytest.approx(-log_evidence - 0.5 * float(torch.logdet(2 * math.pi * Sl)))
    # W_diss = <W> - dF with <W> the likelihood energy averaged over the prior
    mean_work = 0.5 * (float(torch.trace(torch.linalg.solve(Sl, Sp))) + float(r @ torch.linalg.solve(Sl, r)))
    assert th["quench_dissipation_kT"] == pytest.approx(mean_work - th["free_energy_kT"])


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_names_the_argument():
    d = 3
    mu, Sp, y, Sl = torch.zeros(d), torch.eye(d), torch.ones(d), torch.eye(d)
    dev = ideal(d)
    bad_cov = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="prior_cov must be positive definite"):
        GaussianPosteriorCircuit(mu, bad_cov, y, Sl, device=dev)
    with pytest.raises(ValueError, match="likelihood_cov must be symmetric"):
        GaussianPosteriorCircuit(mu, Sp, y, torch.tensor([[1.0, 0.5, 0], [0, 1.0, 0], [0, 0, 1.0]]), device=dev)
    with pytest.raises(ValueError, match="prior_cov as a scalar must be positive"):
        GaussianPosteriorCircuit(mu, -1.0, y, Sl, device=dev)
    with pytest.raises(ValueError, match="y must have finite entries; got NaN"):
        GaussianPosteriorCircuit(mu, Sp, torch.tensor([1.0, float("nan"), 0.0]), Sl, device=dev)
    with pytest.raises(ValueError, match="H must have finite entries; got Inf"):
        GaussianPosteriorCircuit(mu, Sp, torch.ones(2), torch.eye(2), H=torch.tensor([[1.0, 0, float("inf")],
                                                                                     [0, 1.0, 0]]), device=dev)
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        GaussianPosteriorCircuit(mu, Sp, torch.ones(4), Sl, device=dev)
    with pytest.raises(ValueError, match=r"H must have shape \(2, 3\)"):
        GaussianPosteriorCircuit(mu, Sp, torch.ones(2), torch.eye(2), H=torch.ones(3, 3), device=dev)
    with pytest.raises(ValueError, match=r"likelihood_cov must be a scalar, a \(2,\) diagonal"):
        GaussianPosteriorCircuit(mu, Sp, torch.ones(2), torch.eye(3), H=torch.ones(2, 3), device=dev)
    with pytest.raises(ValueError, match="device has n_cells = 2, fewer than the d = 3"):
        GaussianPosteriorCircuit(mu, Sp, y, Sl, device=ideal(2))
    with pytest.raises(TypeError, match="device must be"):
        GaussianPosteriorCircuit(mu, Sp, y, Sl, device="chip")
    with pytest.raises(TypeError, match="prior_mean must be"):
        GaussianPosteriorCircuit("zeros", Sp, y, Sl, device=dev)
    with pytest.raises(ValueError, match="design must be one of"):
        GaussianPosteriorCircuit(mu, Sp, y, Sl, design="lc", device=dev)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl, device=dev)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        c.sample(0)
    with pytest.raises(ValueError, match="interval must be at least"):
        c.sample(4, interval=1e-9)
    with pytest.raises(ValueError, match="start must be 'prior' or a"):
        c.sample(4, start="posterior")
    with pytest.raises(ValueError, match=r"start must have shape \(3,\)"):
        c.sample(4, start=torch.zeros(2))


def test_default_device_and_seeded_reproducibility():
    mu, Sp, y, Sl, _ = problem(4, 13, False)
    c = GaussianPosteriorCircuit(mu, Sp, y, Sl)
    assert c.device.n_cells == 4
    a, _ = c.sample(50, torch.Generator().manual_seed(5))
    b, _ = c.sample(50, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # another chip (seed) has another mismatch pattern, hence another stationary law
    c2 = GaussianPosteriorCircuit(mu, Sp, y, Sl, device=dataclasses.replace(c.device, seed=1))
    assert not torch.allclose(c.stationary_law()[0], c2.stationary_law()[0])
