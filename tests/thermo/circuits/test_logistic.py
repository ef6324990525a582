"""LogisticPosteriorCircuit on scikit-learn's breast-cancer data against an HMC reference written for the tests:
marginals, predictive metrics, tempering from miscalibrated noise, the hardware sigmoid's potential,
minibatch bias, the integrator's bias, costs and bad input."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from thermoai.thermo.circuits import LogisticPosteriorCircuit
from thermoai.thermo.device import Device

sys.path.insert(0, str(Path(__file__).parent))
import logistic_reference as R  # noqa: E402

F64 = torch.float64
CHAINS, READS = 128, 24


def ideal(d: int, **kw) -> Device:
    base = dict(n_cells=d, dac_bits=32, adc_bits=32, readout_noise=0.0, mismatch=0.0)
    base.update(kw)
    return Device(**base)


def run(circuit: LogisticPosteriorCircuit, chains: int = CHAINS, reads: int = READS, seed: int = 0):
    """Burn-in of three prior time constants from the prior, then reads half a prior time constant apart."""
    L, tau = circuit.stiffness, circuit.time_constant
    x, cost, info = circuit.sample(chains * reads, torch.Generator().manual_seed(seed), chains=chains,
                                   burn_in=3 * L * tau, interval=0.5 * L * tau, info=True)
    return x.reshape(chains, reads, -1), cost, info


def z_scores(samples, ref):
    mc, sem_c, sdc, sesd_c = R.chain_summary(samples)
    mr, sem_r, sdr, sesd_r = R.chain_summary(ref)
    return (mc - mr) / torch.sqrt(sem_c**2 + sem_r**2), (sdc - sdr) / torch.sqrt(sesd_c**2 + sesd_r**2)


def agree(z: torch.Tensor) -> bool:
    # each |z| < 5, and the root mean square of the 30 z-scores below 1.5 (chi^2_30 > 67.5 has p ~ 1e-4):
    # a shared bias of a third of a standard error in every coordinate would fail the second
    return float(z.abs().max()) < 5 and float(z.pow(2).mean().sqrt()) < 1.5


@pytest.fixture(scope="module")
def full_batch(cancer):
    X, y, _, _ = cancer
    c = LogisticPosteriorCircuit(X, y, device=ideal(30), step_fraction=1.0)
    return c, *run(c)


def test_marginals_match_the_reference_posterior(full_batch, reference):
    c, s, cost, info = full_batch
    zm, zs = z_scores(s, reference[1.0])
    assert agree(zm), zm
    assert agree(zs), zs
    # burn-in and each interval in whole steps of at most c.step time constants
    L, h = c.stiffness, c.step
    assert info["steps"] == math.ceil(3 * L / h) + READS * math.ceil(0.5 * L / h) and info["switches"] == 0
    # the integrator's stated bias is far below the Monte Carlo error it is compared with
    _, _, sd, se_sd = R.chain_summary(s)
    assert bool((c.discretisation_bias() / (2 * sd) < 0.1 * se_sd).all())


def test_predictive_accuracy_nll_ece_equal_the_reference(full_batch, reference, cancer):
    _, s, _, _ = full_batch
    _, _, Xt, yt = cancer
    pc, se_c = R.predictive(s, Xt)
    pr, se_r = R.predictive(reference[1.0], Xt)
    se = torch.sqrt(se_c**2 + se_r**2)
    mc, mr = R.metrics(pc, yt), R.metrics(pr, yt)
    assert mr["accuracy"] > 0.9
    # accuracy: the two disagree only on rows whose probability is within noise of 1/2
    differ = (pc > 0.5) != (pr > 0.5)
    assert bool(((pr[differ] - 0.5).abs() < 5 * se[differ]).all())
    # NLL: delta method, d nll / d p_i = (-y/p + (1-y)/(1-p)) / m
    w = -yt / pr + (1 - yt) / (1 - pr)
    se_nll = float(torch.sqrt(((w * se) ** 2).sum())) / yt.shape[0]
    assert abs(mc["nll"] - mr["nll"]) < 5 * se_nll
    # ECE: moves by at most mean |dp| while no row changes bin, and by at most 2/m per row that does
    conf = torch.maximum(pr, 1 - pr)
    edges = torch.linspace(0.5, 1.0, 11, dtype=F64)
    near_edge = ((conf[:, None] - edges[None, :]).abs() < 5 * se[:, None]).any(1)
    bound = float((5 * se).mean()) + 2 * int(near_edge.sum()) / yt.shape[0]
    assert abs(mc["ece"] - mr["ece"]) < bound


def test_miscalibrated_noise_samples_the_tempered_posterior(cancer, reference):
    X, y, _, _ = cancer
    c = LogisticPosteriorCircuit(X, y, device=ideal(30, noise_scale=math.sqrt(2)), step_fraction=1.0)
    assert c.temperature_factor == pytest.approx(2.0)
    s, _, _ = run(c, seed=1)
    zm, zs = z_scores(s, reference[2.0])
    assert agree(zm) and agree(zs), (zm, zs)
    # ... which is not the posterior: p^(1/2) is wider
    _, zs1 = z_scores(s, reference[1.0])
    assert float(zs1.mean()) > 5


def test_hardware_sigmoid_is_the_gradient_of_the_hardware_potential(cancer):
    X, y, _, _ = cancer
    X, y = X[:60, :5], y[:60]
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(7, 5, dtype=F64, generator=g)
    for kw in (dict(), dict(sigmoid_gain_error=-0.1), dict(sigmoid_offset=0.3),
               dict(sigmoid_saturation=1.5), dict(sigmoid_gain_error=0.2 * torch.rand(60, dtype=F64, generator=g),
                                                  sigmoid_offset=0.1, sigmoid_saturation=2.0)):
        c = LogisticPosteriorCircuit(X, y, prior_cov=torch.linspace(0.5, 2.0, 5), device=ideal(5), **kw)
        th = theta.clone().requires_grad_(True)
        grad, = torch.autograd.grad(c.hardware_log_prob(th).sum(), th)
        # drift = (1/L) Sigma_pi grad ln p_hw: a Langevin equation with mobility Sigma_pi / L
        assert torch.allclose(c.drift(theta), grad @ c.prior_cov / c.stiffness, atol=1e-9)
        z = theta @ X.T
        gain = 1 + (kw.get("sigmoid_gain_error", 0.0))
        zc = z.clamp(-kw.get("sigmoid_saturation", math.inf), kw.get("sigmoid_saturation", math.inf))
        assert torch.allclose(c.sigmoid(z), torch.sigmoid(gain * zc + kw.get("sigmoid_offset", 0.0)))
    ideal_c = LogisticPosteriorCircuit(X, y, device=ideal(5))
    assert torch.allclose(ideal_c.hardware_log_prob(theta), ideal_c.log_prob(theta))
    # the ideal log posterior, from its definition
    z = theta @ X.T
    lp = -0.5 * (theta**2).sum(-1) + (y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(torch.sigmoid(-z))).sum(-1)
    assert torch.allclose(ideal_c.log_prob(theta), lp)


def test_minibatches_bring_a_measured_bias_that_grows_with_the_switch_interval(cancer, reference):
    X, y, _, _ = cancer
    ratios = {}
    for switch in (1, 100):
        c = LogisticPosteriorCircuit(X, y, device=ideal(30), step_fraction=1.0, array_rows=100,
                                     switch_interval=switch * 1e-6, batch_order="random")
        s, cost, info = run(c, chains=64, reads=20, seed=2)
        # variance ratio to the reference averaged over the 30 coordinates; its standard error from the spread
        # of the per-chain values (chains are independent, coordinates within a chain are not)
        ref = reference[1.0].reshape(-1, 30)
        mean_r, var_r = ref.mean(0), ref.var(0)
        per_chain = (((s - mean_r) ** 2).mean(1) / var_r).mean(1)  # (chains,)
        ratio = float(per_chain.mean())
        se = float(per_chain.std()) / math.sqrt(per_chain.shape[0])
        ratios[switch] = (ratio, se)
        run_tc = 3 * c.stiffness + 20 * 0.5 * c.stiffness  # time constants of dynamics per chain
        assert info["switches"] == math.ceil(run_tc / switch)
        # every switch rewrites both crossbars and the labels of a 100-row batch
        per = 2 * 100 * 30 + 100
        reprogram = c.device.program_cost(per).time
        assert cost.time == pytest.approx(info["dynamics"].time + info["programming"].time)
        assert info["dynamics"].time == pytest.approx(64 * (run_tc * 1e-6 + info["switches"] * reprogram))
    fast, slow = ratios[1], ratios[100]
    assert abs(fast[0] - 1) < 5 * fast[1]  # switching every time constant: no visible bias
    assert slow[0] - 1 > 5 * slow[1]  # every 100 time constants: the spread is inflated
    assert slow[0] - fast[0] > 5 * math.hypot(slow[1], fast[1])


def test_euler_bias_is_the_stated_one_on_a_gaussian():
    # no data (X = 0): the target is the prior N(0, 1) and the drift is linear with rate 1; Euler-Maruyama at
    # step h has stationary variance 2 / (2 - h) exactly, 1 + h/2 to first order (discretisation_bias)
    X, y = torch.zeros(4, 2, dtype=F64), torch.tensor([0.0, 1.0, 0.0, 1.0])
    c = LogisticPosteriorCircuit(X, y, device=ideal(2), step_fraction=0.2)
    assert c.stiffness == 1.0 and c.step == pytest.approx(0.2)
    assert torch.allclose(c.discretisation_bias(), torch.full((2,), 0.1, dtype=F64))
    x, _ = c.sample(40_000, torch.Generator().manual_seed(3), chains=400, burn_in=20e-6, interval=1e-6)
    v = x.var(0)
    # reads one time constant apart correlate as e^-1, their squares as e^-2: the variance of the sample
    # variance is (2 v^2 / N) (1 + r) / (1 - r) with r = e^-2
    r = math.exp(-2)
    se = (2 / 1.8) * math.sqrt(2 / x.shape[0] * (1 + r) / (1 - r))
    assert bool(((v - 2 / 1.8).abs() < 5 * se).all())
    assert bool((v - 1 > 0.05).all())  # visible against the truth, 1


def test_exponential_integrator_agrees_with_euler():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(40, 3, dtype=F64, generator=g)
    y = (torch.rand(40, dtype=F64, generator=g) < torch.sigmoid(X @ torch.tensor([1.0, -1.0, 0.5], dtype=F64))).double()
    sums = {}
    for integ in ("euler", "exponential"):
        c = LogisticPosteriorCircuit(X, y, prior_cov=0.5, device=ideal(3), integrator=integ, step_fraction=0.25)
        s, _, _ = run(c, chains=200, reads=20, seed=5)
        sums[integ] = R.chain_summary(s)
    (m1, se1, sd1, ses1), (m2, se2, sd2, ses2) = sums["euler"], sums["exponential"]
    assert float(((m1 - m2) / torch.sqrt(se1**2 + se2**2)).abs().max()) < 5
    assert float(((sd1 - sd2) / torch.sqrt(ses1**2 + ses2**2)).abs().max()) < 5


def test_cost_of_a_full_batch_run():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(12, 3, dtype=F64, generator=g)
    y = (torch.rand(12, dtype=F64, generator=g) < 0.5).double()
    dev = Device(n_cells=4)
    c = LogisticPosteriorCircuit(X, y, device=dev)
    x, cost, info = c.sample(6, torch.Generator().manual_seed(0), chains=2, burn_in=20e-6, interval=4e-6, info=True)
    assert x.shape == (6, 3)
    n_values = 2 * 9 + 3 + 1 + 2 * 12 * 3 + 12
    prog = dev.program_cost(n_values)
    assert info["programming"].time == pytest.approx(prog.time) and info["programming"].energy == pytest.approx(prog.energy)
    on = 20e-6 + 3 * 4e-6
    base = dev.operating_cost(2, 3, on, 2 * 3 * 3)
    extra = 2 * (12 * dev.power_per_cell + 2 * 12 * 3 * dev.power_per_coupling) * on
    assert cost.time == pytest.approx(prog.time + base.time)
    assert cost.energy == pytest.approx(prog.energy + base.energy + extra)


def test_bad_input_names_the_argument():
    X = torch.randn(5, 2, dtype=F64)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    dev = ideal(2)
    with pytest.raises(ValueError, match=r"y must contain only the labels 0 and 1; got \[2.0\]"):
        LogisticPosteriorCircuit(X, torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0]), device=dev)
    with pytest.raises(ValueError, match=r"y must contain only the labels 0 and 1; got \[-1.0\]"):
        LogisticPosteriorCircuit(X, -y, device=dev)
    with pytest.raises(ValueError, match="X must have finite entries; got NaN"):
        LogisticPosteriorCircuit(torch.tensor([[float("nan"), 0.0]] * 5), y, device=dev)
    with pytest.raises(ValueError, match="y must have finite entries; got Inf"):
        LogisticPosteriorCircuit(X, torch.tensor([0.0, 1.0, float("inf"), 0.0, 1.0]), device=dev)
    with pytest.raises(ValueError, match=r"y must have shape \(5,\) to match X"):
        LogisticPosteriorCircuit(X, y[:4], device=dev)
    with pytest.raises(ValueError, match=r"prior_mean must have shape \(2,\)"):
        LogisticPosteriorCircuit(X, y, prior_mean=torch.zeros(3), device=dev)
    with pytest.raises(ValueError, match="prior_cov must be positive definite"):
        LogisticPosteriorCircuit(X, y, prior_cov=torch.tensor([[1.0, 2.0], [2.0, 1.0]]), device=dev)
    with pytest.raises(ValueError, match="device has n_cells = 1, fewer than the d = 2 nodes"):
        LogisticPosteriorCircuit(X, y, device=ideal(1))
    with pytest.raises(ValueError, match=r"array_rows must be an integer in \[1, n = 5\]"):
        LogisticPosteriorCircuit(X, y, device=dev, array_rows=6)
    with pytest.raises(ValueError, match="step_fraction must be"):
        LogisticPosteriorCircuit(X, y, device=dev, step_fraction=3.0)
    with pytest.raises(ValueError, match="sigmoid_saturation must be a positive"):
        LogisticPosteriorCircuit(X, y, device=dev, sigmoid_saturation=0.0)
    with pytest.raises(ValueError, match="sigmoid_gain_error must be > -1"):
        LogisticPosteriorCircuit(X, y, device=dev, sigmoid_gain_error=-1.0)
    with pytest.raises(ValueError, match=r"sigmoid_offset must have shape \(5,\)"):
        LogisticPosteriorCircuit(X, y, device=dev, sigmoid_offset=torch.zeros(3))
    with pytest.raises(ValueError, match="X must have shape"):
        LogisticPosteriorCircuit(torch.randn(5), y, device=dev)
    with pytest.raises(TypeError, match="X must be"):
        LogisticPosteriorCircuit("data", y, device=dev)
    c = LogisticPosteriorCircuit(X, y, device=dev)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        c.sample(0)
    with pytest.raises(ValueError, match="start must be 'prior' or a"):
        c.sample(3, start="map")
