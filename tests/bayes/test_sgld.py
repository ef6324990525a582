"""SGLD: exact moments on the dense 10-D Gaussian, the noise variance with beta, the shared contract."""

import pytest
import torch

from thermoai.bayes.sgmcmc import sgld


def build(log_posterior, **kw):
    return sgld.build(log_posterior, **({"lr": 0.01} | kw))


def test_gaussian_moments(gaussian_target, sampler_check):
    # 4096 chains at once (vmap), lr 0.1. The Euler-Maruyama chain x' = (I - hP)x + sqrt(2h) xi is linear,
    # so its stationary law N(mean, C_h) is known exactly (discrete Lyapunov equation): the sample moments
    # must match C_h within 5 ESS-based standard errors, and C_h differs from the target covariance by
    # the discretisation bias (~ h * lambda_max(P) / 2 = 10% at most), which is also asserted.
    target, h = gaussian_target, 0.1
    x, _ = sampler_check.run(build(target.tree_log_prob, lr=h), target, n_chains=4096, burn_in=200, n_draws=30, thin=8)
    eye = torch.eye(target.dim, dtype=torch.float64)
    c_h = sampler_check.stationary_cov(eye - h * target.precision, 2 * h * eye)
    exact = sampler_check.moments(x, target.__class__(target.mean, c_h, torch.linalg.inv(c_h), target.eigvals))
    exact.assert_ok()
    assert exact.min_ess > 10_000
    # the same draws against the true target: within 5 standard errors plus the known bias
    sampler_check.moments(x, target, expected_mean=target.mean, expected_cov=c_h).assert_ok()
    assert (c_h - target.cov).abs().max() < 0.1 * target.cov.abs().max()


def test_noise_variance_with_beta():
    # With a flat log posterior the step is pure noise of variance lr * (2T - lr * beta): here
    # 0.1 * (4 - 0.1) = 0.39. posteriors 0.1.3's code injects T lr (2 - T lr beta) = 0.36 and its docstring
    # states lr (2 - lr beta) T = 0.38; they are more than 20 and 10 standard errors away with 2M draws.
    flat = lambda p, b: ((p * 0.0).sum(), torch.tensor([]))  # noqa: E731
    transform = sgld.build(flat, lr=0.1, beta=1.0, temperature=2.0)
    state = transform.init(torch.zeros(2_000_000, dtype=torch.float64))
    new, _ = transform.update(state, None, generator=torch.Generator().manual_seed(0))
    var = new.params.var()
    se = 0.39 * (2 / 2_000_000) ** 0.5
    assert abs(var - 0.39) < 5 * se
    assert abs(var - 0.36) > 20 * se and abs(var - 0.38) > 10 * se


def test_temperature_zero_is_gradient_ascent():
    target = lambda p, b: (-0.5 * ((p - 3.0) ** 2).sum(), torch.tensor([]))  # noqa: E731
    transform = sgld.build(target, lr=0.1, temperature=0.0)
    state = transform.init(torch.zeros(4, dtype=torch.float64))
    for k in range(1, 30):
        state, _ = transform.update(state, None)
        assert torch.allclose(state.params, torch.full((4,), 3.0 - 3.0 * 0.9**k, dtype=torch.float64), atol=1e-12)


def test_schedules_evaluated_at_step():
    lrs = []

    def lr(step):
        lrs.append(int(step))
        return 0.1 / (1 + step)

    transform = sgld.build(lambda p, b: (-(p**2).sum(), torch.tensor([])), lr=lr, temperature=lambda s: 0.0 * s)
    state = transform.init(torch.ones(2))
    for _ in range(3):
        state, _ = transform.update(state, None, inplace=True)
    assert lrs == [0, 1, 2]


def test_aux_passthrough():
    def lp(p, batch):
        return -(p**2).sum(), {"pred": p * 2, "batch": batch}

    transform = sgld.build(lp, lr=0.1)
    _, aux = transform.update(transform.init(torch.ones(3)), torch.tensor(5.0))
    assert torch.equal(aux["pred"], torch.full((3,), 2.0)) and aux["batch"] == 5.0


def test_contract(contract):
    contract.inplace(build)
    contract.dtype(build, torch.float64)
    contract.dtype(build, torch.float32)
    contract.fresh_init(build)
    contract.bad_inputs(build)
    with pytest.raises(ValueError, match="beta"):
        build(contract.quadratic, beta=-1.0)
