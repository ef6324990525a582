"""BAOA: on a Gaussian its positions are exactly stationary for the target; moments, contract."""

import math

import torch

from thermoai.bayes.sgmcmc import baoa


def build(log_posterior, **kw):
    return baoa.build(log_posterior, **({"lr": 0.01, "alpha": 1.0} | kw))


def baoa_stationary(target, sampler_check, h, alpha):
    """Exact stationary covariance of (x, m) for one BAOA step (sigma = T = 1), by composing its linear
    sub-steps B, A, O, A on the Gaussian target."""
    d, p, eye = target.dim, target.precision, torch.eye(target.dim, dtype=torch.float64)
    zero = torch.zeros(d, d, dtype=torch.float64)
    blocks = sampler_check.blocks
    kick = blocks(eye, zero, -h * p, eye)
    drift = blocks(eye, 0.5 * h * eye, zero, eye)
    c = math.exp(-alpha * h)
    friction = blocks(eye, zero, zero, c * eye)
    noise = torch.cat([zero, math.sqrt(1 - c * c) * eye], 0)
    transition = drift @ friction @ drift @ kick
    return sampler_check.stationary_cov(transition, drift @ noise @ noise.T @ drift.T)


def test_gaussian_moments(gaussian_target, sampler_check):
    # 4096 chains via vmap, lr 0.3, friction 1. For a Gaussian target the BAOA (= BAOAB) position marginal
    # is exactly the target at any stable step size (Leimkuhler & Matthews): the exact discrete stationary
    # covariance equals the target covariance, checked first, so the draws must match the target within
    # 5 ESS-based standard errors with no bias allowance.
    target, h, alpha = gaussian_target, 0.3, 1.0
    c_h = baoa_stationary(target, sampler_check, h, alpha)[: target.dim, : target.dim]
    torch.testing.assert_close(c_h, target.cov, rtol=0, atol=1e-10)
    x, _ = sampler_check.run(build(target.tree_log_prob, lr=h, alpha=alpha), target, 4096, 150, 30, 4)
    result = sampler_check.moments(x, target)
    result.assert_ok()
    assert result.min_ess > 10_000


def test_temperature_zero_is_deterministic_damped_dynamics():
    lp = lambda p, b: (-0.5 * (p**2).sum(), torch.tensor([]))  # noqa: E731
    transform = baoa.build(lp, lr=0.1, alpha=0.5, temperature=0.0)
    state = transform.init(torch.tensor([1.0, -2.0], dtype=torch.float64))
    assert torch.equal(state.momenta, torch.zeros(2, dtype=torch.float64))
    for _ in range(400):
        state, _ = transform.update(state, None)
    assert state.params.abs().max() < 1e-3  # converges to the mode, no noise drawn


def test_contract(contract):
    contract.inplace(build)
    contract.dtype(build, torch.float64)
    contract.dtype(build, torch.float32)
    contract.fresh_init(build)
    contract.bad_inputs(build)
