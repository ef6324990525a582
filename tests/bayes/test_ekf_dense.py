"""Dense-Fisher EKF: precision grows (the posteriors sign defect), exact one-step update, convergence to the
closed-form posterior of a linear-Gaussian model, inplace, dtypes, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from thermoai.bayes.ekf import dense_fisher
from thermoai.bayes.log_prob import LogProbError

sys.path.insert(0, str(Path(__file__).parent))
import ekf_models as M  # noqa: E402

F64 = torch.float64


def gaussian_log_lik(target):
    def log_lik(params, batch):
        return -0.5 * ((params - target) ** 2).sum(), torch.tensor([])

    return log_lik


def test_one_step_adds_information_where_posteriors_fails():
    """posteriors 0.1.3: 1-D, lr = 0.5, |g| = 2 -> precision 1 - 0.5*4 < 0 and a Cholesky error."""
    transform = dense_fisher.build(gaussian_log_lik(torch.tensor([2.0], dtype=F64)), lr=0.5, init_cov=1.0)
    state, _ = transform.update(transform.init(torch.zeros(1, dtype=F64)), torch.zeros(1, 1))
    # 1/var = 1 + 0.5 * 2^2 = 3; mean = 0 + 0.5 * (1/3) * 2
    torch.testing.assert_close(state.cov, torch.tensor([[1.0 / 3.0]], dtype=F64), rtol=1e-14, atol=0)
    torch.testing.assert_close(state.params, torch.tensor([1.0 / 3.0], dtype=F64), rtol=1e-14, atol=0)


def test_one_step_matches_closed_form():
    x, y = M.stream(7, 3, diagonal_design=False, seed=3)
    init_cov = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=F64)
    transition = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    mu0 = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    lr = 0.7
    transform = dense_fisher.build(M.log_likelihood, lr=lr, transition_cov=transition, init_cov=init_cov)
    state, values = transform.update(transform.init({"w": mu0}), (x, y))
    G = (x * ((y - x @ mu0) / M.NOISE_SD**2)[:, None])  # per-sample gradients (B, d)
    prec = torch.linalg.inv(init_cov + torch.diag(transition)) + lr * G.T @ G / 7
    cov = torch.linalg.inv(prec)
    torch.testing.assert_close(state.cov, cov, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(state.params["w"], mu0 + lr * cov @ G.mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(state.log_likelihood, values.mean())
    assert values.shape == (7,)


def test_single_pass_converges_to_exact_linear_gaussian_posterior():
    n, d = 20000, 3
    x, y = M.stream(n, d, diagonal_design=False)
    mean, prec = M.exact_posterior(x, y)
    transform = dense_fisher.build(M.log_likelihood, lr=1.0, init_cov=1.0)
    state = transform.init({"w": torch.zeros(d, dtype=F64)})
    start = 0
    for size in M.batch_sizes(n):
        # lr = batch size: the update uses batch means, so each batch adds its summed Fisher
        state, _ = transform.update(state, (x[start : start + size], y[start : start + size]), inplace=True, lr=float(size))
        start += size
    assert start == n
    ekf_prec = torch.linalg.inv(state.cov)
    post_sd = torch.linalg.inv(prec).diag().sqrt()
    # The empirical Fisher exceeds the true one by x x^T (x^T delta)^2 / s^4, delta the running error of the
    # mean: ~ d / n_seen per sample once converged (d log n / n relative, 1.5e-3 here) plus the transient
    # while delta is prior-sized. Measured over 5 seeds: precision within 0.4-0.7 %, mean within 0.08-0.38
    # posterior sds; the bounds below leave a factor ~3 and would fail for any error in the update.
    assert ((ekf_prec - prec).abs().max() / prec.abs().max()) < 0.02
    assert ((state.params["w"] - mean).abs() / post_sd).max() < 1.0
    # a wrong-sign EKF would end with less precision than the prior; the exact one is ~ 1 + n / s^2
    assert ekf_prec.diag().min() > 0.9 * n / M.NOISE_SD**2


def test_inplace_equals_functional_float64_and_fresh_init():
    M.check_inplace_equals_functional(dense_fisher, lambda s: s.cov, transition_cov=0.01)
    M.check_inplace_equals_functional(
        dense_fisher, lambda s: s.cov, transition_cov=torch.tensor([0.01, 0.0, 0.02], dtype=F64)
    )


def test_sample_moments_and_leaf_shapes():
    cov = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.5, 2.0, 0.3, 0.0], [0.0, 0.3, 1.0, 0.1], [0.0, 0.0, 0.1, 0.5]], dtype=F64)
    params = {"m": torch.arange(4, dtype=F64).reshape(2, 2)}
    state = dense_fisher.init(params, init_cov=cov)
    n = 20000
    draws = dense_fisher.sample(state, (n,), generator=torch.Generator().manual_seed(0))
    assert draws["m"].shape == (n, 2, 2)
    flat = draws["m"].reshape(n, 4)
    se = ((torch.outer(cov.diag(), cov.diag()) + cov**2) / n).sqrt()  # SE of a covariance entry
    assert ((torch.cov(flat.T) - cov).abs() < 5 * se).all()
    assert ((flat.mean(0) - torch.arange(4.0, dtype=F64)).abs() < 5 * (cov.diag() / n).sqrt()).all()


def test_errors_name_the_problem():
    params = {"w": torch.zeros(3, dtype=F64)}
    x, y = M.stream(5, 3, diagonal_design=False)
    with pytest.raises(ValueError, match="lr"):
        dense_fisher.build(M.log_likelihood, lr=-1.0)
    with pytest.raises(ValueError, match="lr"):
        dense_fisher.build(M.log_likelihood, lr=lambda t: -1.0).update(dense_fisher.init(params), (x, y))
    with pytest.raises(ValueError, match="init_cov"):
        dense_fisher.init(params, init_cov=0.0)
    with pytest.raises(ValueError, match="init_cov must be positive semi-definite"):
        dense_fisher.init(params, init_cov=torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=F64)))
    with pytest.raises(ValueError, match="init_cov must be positive definite"):
        dense_fisher.init(params, init_cov=torch.diag(torch.tensor([1.0, 0.0, 1.0], dtype=F64)))
    with pytest.raises(ValueError, match="transition_cov"):
        dense_fisher.build(M.log_likelihood, lr=1.0, transition_cov=-0.1)
    with pytest.raises(ValueError, match="transition_cov.*shape"):
        dense_fisher.build(M.log_likelihood, lr=1.0, transition_cov=torch.ones(2)).update(dense_fisher.init(params), (x, y))
    with pytest.raises(LogProbError, match="scalar"):
        dense_fisher.build(lambda p, b: (p["w"], torch.tensor([])), lr=1.0).update(dense_fisher.init(params), (x, y))
    with pytest.raises(LogProbError, match="pair"):
        dense_fisher.build(lambda p, b: M.log_likelihood(p, b)[0], lr=1.0).update(dense_fisher.init(params), (x, y))
    state = dense_fisher.init(params)
    with pytest.raises(ValueError, match="NaN"):
        dense_fisher.build(lambda p, b: (M.log_likelihood(p, b)[0] * float("nan"), torch.tensor([])), lr=1.0).update(
            state, (x, y), inplace=True
        )
    assert torch.equal(state.cov, torch.eye(3, dtype=F64))  # left unchanged
