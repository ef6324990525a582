"""SGNHT: moments on the dense 10-D Gaussian (with the thermostat's settled friction), xi=0 honoured."""

import pytest
import torch

from thermoai.bayes.sgmcmc import sgnht


def build(log_posterior, **kw):
    return sgnht.build(log_posterior, **({"lr": 0.01, "alpha": 1.0} | kw))


def settled_friction(target, sampler_check, h, alpha):
    """The friction f at which SGHMC's discrete chain (noise 2 alpha h) has mean stationary momentum
    variance exactly T = 1: SGNHT's thermostat xi settles there, since E[xi_{t+1} - xi_t] = 0 requires
    mean(m^2) = T. Bisection on f; returns (f, stationary position covariance)."""
    lo, hi = 0.01, 5.0
    for _ in range(60):
        f = 0.5 * (lo + hi)
        cov = sampler_check.sghmc_stationary(target, h, alpha, friction=f)
        if torch.diagonal(cov[target.dim :, target.dim :]).mean() > 1.0:
            lo = f
        else:
            hi = f
    return f, cov[: target.dim, : target.dim]


def test_gaussian_moments(gaussian_target, sampler_check):
    # 4096 chains via vmap, lr 0.1, alpha 1. The thermostat drives the *discrete* momentum variance to T,
    # which Euler SGHMC overshoots by ~alpha h / 2, so positions run ~5% cold: an O(h) bias that we
    # predict by the SGHMC chain whose friction makes the momentum variance exactly T (fluctuations of xi,
    # variance ~ T/d, are neglected). Draws must match that prediction within 5 ESS-based standard
    # errors, and the target within 5 standard errors plus the predicted bias.
    target, h, alpha = gaussian_target, 0.1, 1.0
    f, c_h = settled_friction(target, sampler_check, h, alpha)
    assert 1.0 < f < 1.1
    x, state = sampler_check.run(build(target.tree_log_prob, lr=h, alpha=alpha), target, 4096, 300, 30, 8)
    sampler_check.moments(x, target.__class__(target.mean, c_h, torch.linalg.inv(c_h), target.eigvals)).assert_ok()
    sampler_check.moments(x, target, expected_mean=target.mean, expected_cov=c_h).assert_ok()
    # the thermostats settle around f (standard error over 4096 chains, generous: xi sd ~ sqrt(T/d))
    assert abs(state.xi.mean() - f) < 5 * state.xi.std() / 4096**0.5 + 0.02


def test_xi_zero_is_honoured(contract):
    # posteriors 0.1.3 initialises xi with `xi or alpha`, so xi=0.0 silently becomes alpha
    state = build(contract.quadratic, xi=0.0, alpha=0.7).init(contract.tree_params())
    assert float(state.xi) == 0.0
    assert float(build(contract.quadratic, alpha=0.7).init(contract.tree_params()).xi) == pytest.approx(0.7)
    # and it is used: at T = 0, xi = 0, the first momentum step has no friction at all
    lp = lambda p, b: (-0.5 * (p**2).sum(), torch.tensor([]))  # noqa: E731
    t = sgnht.build(lp, lr=0.1, alpha=5.0, xi=0.0, temperature=0.0, momenta=1.0)
    new, _ = t.update(t.init(torch.ones(3, dtype=torch.float64)), None)
    torch.testing.assert_close(new.momenta, torch.full((3,), 1.0 - 0.1, dtype=torch.float64))


def test_thermostat_update_equation():
    # xi_{t+1} = xi_t + h (mean(m_{t+1}^2) / sigma^2 - T) with the new momentum (Ding et al., Alg. 1)
    lp = lambda p, b: (-0.5 * sum((v**2).sum() for v in p.values()), torch.tensor([]))  # noqa: E731
    h, sigma, xi0 = 0.1, 2.0, 0.3
    t = sgnht.build(lp, lr=h, alpha=1.0, sigma=sigma, xi=xi0, temperature=0.0, momenta=2.0)
    params = {"a": torch.tensor([1.0, 2.0], dtype=torch.float64), "b": torch.tensor([[3.0]], dtype=torch.float64)}
    new, _ = t.update(t.init(params), None)
    m = torch.cat([new.momenta["a"], new.momenta["b"].flatten()])
    expected_m = 2.0 * (1 - h * xi0 / sigma**2) - h * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(m, expected_m)
    torch.testing.assert_close(new.xi, xi0 + h * (m**2).mean() / sigma**2)


def test_contract(contract):
    contract.inplace(build)
    contract.dtype(build, torch.float64)
    contract.dtype(build, torch.float32)
    contract.fresh_init(build)
    contract.bad_inputs(build)
    with pytest.raises(ValueError, match="xi"):
        build(contract.quadratic, xi=-1.0)
