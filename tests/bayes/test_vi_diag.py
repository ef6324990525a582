"""Diagonal-Gaussian VI: exact answers, sticking the landing, inplace, dtypes and errors."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pytest
import torch

from thermoai.bayes import adam
from thermoai.bayes.log_prob import LogProbError
from thermoai.bayes.vi import diag

F64 = torch.float64


def diag_gaussian(mean: dict, sd: dict):
    """Normalised log density of an independent Gaussian over a tree (leaves of any shape)."""

    def log_prob(p, batch=None):
        total = 0.0
        for k in mean:
            z = (p[k] - mean[k]) / sd[k]
            total = total - 0.5 * (z * z).sum() - torch.log(sd[k]).sum() - 0.5 * z.numel() * math.log(2 * math.pi)
        return total, torch.tensor([])

    return log_prob


def tree_target(dtype=F64):
    g = torch.Generator().manual_seed(1)
    mean = {"w": torch.randn(3, 2, generator=g, dtype=dtype), "b": torch.randn(4, generator=g, dtype=dtype)}
    sd = {"w": 0.5 + torch.rand(3, 2, generator=g, dtype=dtype), "b": 0.5 + torch.rand(4, generator=g, dtype=dtype)}
    return mean, sd


def test_stl_gradient_is_exactly_zero_at_the_target():
    mean, sd = tree_target()
    log_prob = diag_gaussian(mean, sd)
    log_sds = {k: torch.log(v) for k, v in sd.items()}
    g = torch.Generator().manual_seed(0)
    value, (g_mu, g_rho), _ = diag.nelbo_and_grad(mean, log_sds, None, log_prob, 1.0, 7, True, g)
    # every draw: -log p + log q = 0 and the STL gradient vanishes (up to rounding)
    assert abs(float(value)) < 1e-12
    for leaf in list(g_mu.values()) + list(g_rho.values()):
        assert leaf.abs().max() < 1e-12
    # the plain reparameterisation gradient is unbiased but not zero at a single draw
    _, (p_mu, p_rho), _ = diag.nelbo_and_grad(mean, log_sds, None, log_prob, 1.0, 1, False, g)
    assert max(float(x.abs().max()) for x in list(p_mu.values()) + list(p_rho.values())) > 1e-3


def test_gradients_match_autograd_of_the_reparameterised_objective():
    """Closed-form gradients equal torch.autograd on the explicit estimator with the same noise."""
    mean, sd = tree_target()
    log_prob = diag_gaussian(mean, sd)
    mu = {k: v + 0.3 for k, v in mean.items()}
    rho = {k: torch.log(v) - 0.2 for k, v in sd.items()}
    temperature, n = 0.7, 3
    for stl in (True, False):
        g = torch.Generator().manual_seed(5)
        _, (g_mu, g_rho), _ = diag.nelbo_and_grad(mu, rho, None, log_prob, temperature, n, stl, g)
        # optree orders dict keys: draw noise in the same order as the implementation ("b" before "w")
        g = torch.Generator().manual_seed(5)
        eps = {k: torch.randn((n, *mu[k].shape), generator=g, dtype=F64) for k in sorted(mu)}
        m_ = {k: v.clone().requires_grad_() for k, v in mu.items()}
        r_ = {k: v.clone().requires_grad_() for k, v in rho.items()}
        total = 0.0
        for s in range(n):
            theta = {k: m_[k] + r_[k].exp() * eps[k][s] for k in mu}
            qm = {k: (m_[k].detach() if stl else m_[k]) for k in mu}
            qr = {k: (r_[k].detach() if stl else r_[k]) for k in mu}
            log_q = sum(
                (-0.5 * ((theta[k] - qm[k]) / qr[k].exp()) ** 2 - qr[k] - 0.5 * math.log(2 * math.pi)).sum() for k in mu
            )
            total = total + (-log_prob(theta)[0] + temperature * log_q) / n
        total.backward()
        for k in mu:
            torch.testing.assert_close(g_mu[k], m_[k].grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(g_rho[k], r_[k].grad, rtol=1e-10, atol=1e-12)


def test_reaches_best_diagonal_gaussian_of_dense_target(gaussian_target):
    """The KL(q||p)-optimal diagonal Gaussian has the target's mean and precision diag = diag(P)."""
    tg = gaussian_target
    best_sd = tg.precision.diag().rsqrt()
    g = torch.Generator().manual_seed(0)
    transform = diag.build(tg.tree_log_prob, lr=lambda t: 3e-2 * 0.997 ** float(t), n_samples=32)
    state = transform.init(tg.unflatten(torch.zeros(10, dtype=F64)))
    for _ in range(1200):
        state, _ = transform.update(state, None, inplace=True, generator=g)
    mean = tg.flatten(state.params)
    sd = tg.flatten(state.log_sd_diag).exp()
    # What remains is Adam's jitter at the final step size (3e-2 * 0.997^1200 = 8e-4 per step): a few
    # hundredths of a standard deviation over a few correlated steps; 0.05 bounds it (measured over seeds
    # 0-2: at most 0.022 for the mean, 0.010 for the sds).
    assert ((mean - tg.mean) / best_sd).abs().max() < 0.05
    assert ((sd - best_sd) / best_sd).abs().max() < 0.05
    # the marginal sds sqrt(diag(cov)) (the best *forward*-KL diagonal fit) lie outside the tolerance
    assert ((tg.cov.diag().sqrt() - best_sd) / best_sd).abs().max() > 0.15


def test_temperature_scales_the_optimum():
    """For p ∝ N(m, s^2) the optimum of -E log p + T E log q is N(m, T s^2)."""
    mean, sd = tree_target()
    log_prob = diag_gaussian(mean, sd)
    T = 0.25
    # start at the tempered optimum: the STL gradient is zero there for every draw
    log_sds = {k: torch.log(v * math.sqrt(T)) for k, v in sd.items()}
    _, (g_mu, g_rho), _ = diag.nelbo_and_grad(mean, log_sds, None, log_prob, T, 5, True, torch.Generator().manual_seed(0))
    assert max(float(x.abs().max()) for x in list(g_mu.values()) + list(g_rho.values())) < 1e-12


def test_inplace_and_functional_updates_agree_and_keep_float64():
    mean, sd = tree_target()
    log_prob = diag_gaussian(mean, sd)
    transform = diag.build(log_prob, optimizer=adam.adam(lr=0.05), n_samples=2)
    start = {k: torch.zeros_like(v) for k, v in mean.items()}
    s1 = transform.init(start)
    s2 = transform.init(start)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        s1, _ = transform.update(s1, None, inplace=False, generator=g1)
        out, _ = transform.update(s2, None, inplace=True, generator=g2)
        assert out is s2
    for k in mean:
        assert torch.equal(s1.params[k], s2.params[k])
        assert torch.equal(s1.log_sd_diag[k], s2.log_sd_diag[k])
        assert s1.params[k].dtype == F64 and s1.log_sd_diag[k].dtype == F64
    assert torch.equal(s1.nelbo, s2.nelbo) and s1.nelbo.dtype == F64
    assert int(s1.step) == int(s2.step) == 5
    # the functional update leaves its input untouched and the start tree is never written
    assert all(torch.equal(v, torch.zeros_like(v)) for v in start.values())


def test_float32_stays_float32():
    mean, sd = tree_target(torch.float32)
    transform = diag.build(diag_gaussian(mean, sd), lr=1e-2)
    state, _ = transform.update(transform.init({k: torch.zeros_like(v) for k, v in mean.items()}), None)
    assert all(v.dtype == torch.float32 for v in list(state.params.values()) + list(state.log_sd_diag.values()))
    assert state.nelbo.dtype == torch.float32


def test_fresh_init_does_not_inherit_step():
    mean, sd = tree_target()
    transform = diag.build(diag_gaussian(mean, sd), lr=1e-2)
    state = transform.init(mean)
    for _ in range(3):
        state, _ = transform.update(state, None, inplace=True)
    assert int(state.step) == 3 and int(state.opt_state.count) == 3
    fresh = transform.init(mean)
    assert int(fresh.step) == 0 and int(fresh.opt_state.count) == 0
    assert math.isnan(float(fresh.nelbo))


def test_temperature_schedule_is_evaluated_at_the_step():
    mean, sd = tree_target()
    seen = []

    def temperature(step):
        seen.append(int(step))
        return 1.0

    transform = diag.build(diag_gaussian(mean, sd), lr=1e-2, temperature=temperature)
    state = transform.init(mean)
    for _ in range(3):
        state, _ = transform.update(state, None)
    assert seen == [0, 1, 2]


def test_sample_moments_and_shapes():
    mean, sd = tree_target()
    state = diag.init(mean, adam.adam(1e-2), init_log_sds={k: torch.log(v) for k, v in sd.items()})
    n = 20000
    draws = diag.sample(state, (n,), generator=torch.Generator().manual_seed(0))
    for k in mean:
        assert draws[k].shape == (n, *mean[k].shape) and draws[k].dtype == F64
        # 5 standard errors: mean SE = sd/sqrt(n); sd SE ~ sd/sqrt(2n)
        assert ((draws[k].mean(0) - mean[k]).abs() < 5 * sd[k] / math.sqrt(n)).all()
        assert ((draws[k].std(0) - sd[k]).abs() < 5 * sd[k] / math.sqrt(2 * n)).all()


def test_nelbo_is_lowest_at_the_target():
    mean, sd = tree_target()
    log_prob = diag_gaussian(mean, sd)
    g = torch.Generator().manual_seed(0)
    at, _ = diag.nelbo(mean, sd, None, log_prob, n_samples=50, generator=g)
    off, _ = diag.nelbo({k: v + 1 for k, v in mean.items()}, sd, None, log_prob, n_samples=50, generator=g)
    assert abs(float(at)) < 1e-10 and float(off) > 1.0


# ----------------------------------------------------------------------------------------------- errors

def test_errors_name_the_problem():
    mean, sd = tree_target()
    good = diag_gaussian(mean, sd)

    def vector(p, b):
        return p["w"].reshape(-1), torch.tensor([])

    def no_aux(p, b):
        return good(p, b)[0]

    def nan_grad(p, b):
        # finite value (0) but a NaN gradient: d sqrt|x| / dx at x = 0
        return (p["w"] - p["w"].detach()).abs().sqrt().sum() + p["b"].sum() * 0, torch.tensor([])

    with pytest.raises(LogProbError, match="scalar"):
        diag.build(vector, lr=1e-2).update(diag.init(mean), None)
    with pytest.raises(LogProbError, match="pair"):
        diag.build(no_aux, lr=1e-2).update(diag.init(mean), None)
    with pytest.raises(ValueError, match="gradient of log_posterior has NaN"):
        diag.build(nan_grad, lr=1e-2).update(diag.init(mean), None)
    with pytest.raises(ValueError, match="lr"):
        diag.build(good, lr=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        diag.build(good, lr=1e-2, temperature=-0.5)
    with pytest.raises(ValueError, match="temperature"):
        diag.build(good, lr=1e-2, temperature=lambda t: -1.0).update(diag.init(mean), None)
    with pytest.raises(ValueError, match="n_samples"):
        diag.build(good, lr=1e-2, n_samples=0)
    with pytest.raises(ValueError, match="either optimizer or lr"):
        diag.build(good, optimizer=adam.adam(1e-2), lr=1e-2)
    with pytest.raises(TypeError, match="optimizer"):
        diag.build(good)
    with pytest.raises(TypeError, match="thermoai.bayes.adam.Optimizer"):
        diag.build(good, optimizer=torch.optim.SGD)

    class GradientTransformation(NamedTuple):  # torchopt's shape: init/update returning increments
        init: Any
        update: Any

    with pytest.raises(TypeError, match="torchopt"):
        diag.build(good, optimizer=GradientTransformation(lambda p: None, lambda u, s, p=None: (u, s)))
    with pytest.raises(ValueError, match="init_log_sds"):
        diag.build(good, lr=1e-2, init_log_sds=float("nan"))
    with pytest.raises(ValueError, match="structure|shape"):
        diag.init(mean, adam.adam(1e-2), init_log_sds={"w": torch.zeros(3, 2, dtype=F64)})
    with pytest.raises(ValueError, match="shape"):
        diag.init(mean, adam.adam(1e-2), init_log_sds={"w": torch.zeros(2, 3, dtype=F64), "b": torch.zeros(4, dtype=F64)})
    with pytest.raises(TypeError, match="floating"):
        diag.init({"w": torch.zeros(3, dtype=torch.int64)})
