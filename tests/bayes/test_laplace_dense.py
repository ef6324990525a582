"""Dense Laplace (empirical Fisher, GGN, Hessian): brute-force precisions, sampling on 2-D leaves, errors."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from thermoai import tree as T
from thermoai.bayes.laplace import add_prior_precision, dense_fisher, dense_ggn, dense_hessian
from thermoai.bayes.log_prob import LogProbError

sys.path.insert(0, str(Path(__file__).parent))
import laplace_models as M  # noqa: E402

F64 = torch.float64
D = M.HIDDEN * M.D_IN + M.HIDDEN + M.C * M.HIDDEN


def test_dense_fisher_equals_brute_force_and_accepts_prior_forms():
    params, batch = M.make_problem()
    G = M.brute_per_sample_grads(params, batch)
    prior_vec = torch.linspace(0.5, 1.5, D, dtype=F64)
    transform = dense_fisher.build(M.log_posterior, init_prec=0.25, prior_precision=prior_vec)
    state = transform.init(params)
    for part in M.split(batch, [4, 4, 4]):
        state, _ = transform.update(state, part)
    expected = G.T @ G + 0.25 * torch.eye(D, dtype=F64) + torch.diag(prior_vec)
    torch.testing.assert_close(state.prec, expected, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(state.params[k], params[k]) for k in params)
    per = dense_fisher.build(M.per_sample_log_posterior, per_sample=True, prior_precision=torch.diag(prior_vec))
    s2, _ = per.update(per.init(params, init_prec=0.25), batch)
    torch.testing.assert_close(s2.prec, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("outer", [M.outer_sum, M.outer_mean])
def test_dense_ggn_equals_brute_force(outer):
    params, batch = M.make_problem()
    expected = M.brute_ggn(params, batch, outer)
    transform = dense_ggn.build(M.forward, outer, prior_precision=1.0)
    state, _ = transform.update(transform.init(params), batch)
    torch.testing.assert_close(state.prec, expected + torch.eye(D, dtype=F64), rtol=1e-10, atol=1e-12)
    if outer is M.outer_sum:
        acc = transform.init(params)
        for part in M.split(batch, [3, 9]):
            acc, _ = transform.update(acc, part)
        torch.testing.assert_close(acc.prec, state.prec, rtol=1e-10, atol=1e-12)


def test_dense_hessian_equals_brute_force_with_rescale_and_epsilon():
    params, batch = M.make_problem()
    expected = 3.0 * M.brute_hessian(params, batch) + 0.1 * torch.eye(D, dtype=F64)
    transform = dense_hessian.build(M.log_posterior, epsilon=0.1, rescale=3.0)
    state, aux = transform.update(transform.init(params), batch)
    torch.testing.assert_close(state.prec, expected, rtol=1e-10, atol=1e-12)
    assert aux.shape == (M.B, M.C)  # the log posterior's aux (the logits) comes back
    # per-call overrides, as in posteriors
    s2, _ = transform.update(transform.init(params), batch, rescale=1.0, epsilon=0.0)
    torch.testing.assert_close(s2.prec, M.brute_hessian(params, batch), rtol=1e-10, atol=1e-12)


def test_sample_works_on_two_dimensional_leaves_with_the_right_covariance():
    """posteriors 0.1.3 reshapes every leaf to sample_shape + leaf.shape[-1:] and crashes on 2-D leaves."""
    params, batch = M.make_problem()
    transform = dense_ggn.build(M.forward, M.outer_sum, prior_precision=1.0)
    state, _ = transform.update(transform.init(params), batch)
    n = 40000
    draws = dense_fisher.sample(state, (n,), generator=torch.Generator().manual_seed(0))
    assert draws["w1"].shape == (n, M.HIDDEN, M.D_IN) and draws["w2"].shape == (n, M.C, M.HIDDEN)
    flat = torch.vmap(T.tree_ravel)(draws)
    cov = torch.linalg.inv(state.prec)
    sd = cov.diag().sqrt()
    # 5 standard errors: SE(mean_i) = sd_i / sqrt(n); SE(cov_ij) = sqrt((C_ii C_jj + C_ij^2) / n)
    assert ((flat.mean(0) - T.tree_ravel(params)).abs() < 5 * sd / math.sqrt(n)).all()
    se = ((torch.outer(cov.diag(), cov.diag()) + cov**2) / n).sqrt()
    assert ((torch.cov(flat.T) - cov).abs() < 5 * se).all()
    cold = dense_fisher.sample(state, (n,), temperature=0.25, generator=torch.Generator().manual_seed(1))
    cold_sd = torch.vmap(T.tree_ravel)(cold).std(0)
    assert ((cold_sd - 0.5 * sd).abs() < 5 * 0.5 * sd / math.sqrt(2 * n)).all()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_scalar_initialised_precision_follows_params_dtype(dtype):
    params, batch = M.make_problem(dtype)
    for transform in (
        dense_fisher.build(M.log_posterior, init_prec=10.0),
        dense_ggn.build(M.forward, M.outer_sum, init_prec=10.0),
        dense_hessian.build(M.log_posterior, init_prec=10.0, epsilon=1e-3),
    ):
        state = transform.init(params)
        assert state.prec.dtype == dtype and state.prec.device == params["w1"].device
        s1, _ = transform.update(state, batch)
        s2 = transform.init(params)
        out, _ = transform.update(s2, batch, inplace=True)
        assert out is s2 and torch.equal(s1.prec, s2.prec) and s1.prec.dtype == dtype
        assert int(s2.step) == 1 and int(transform.init(params).step) == 0
        assert dense_fisher.sample(s1, (2,))["w1"].dtype == dtype


def test_errors_name_the_problem():
    params, batch = M.make_problem()
    not_psd = torch.diag(torch.linspace(-1.0, 1.0, D, dtype=F64))
    with pytest.raises(ValueError, match="init_prec must be positive semi-definite"):
        dense_fisher.init(params, init_prec=not_psd)
    asym = torch.eye(D, dtype=F64)
    asym[0, 1] = 1.0
    with pytest.raises(ValueError, match="symmetric"):
        dense_fisher.init(params, init_prec=asym)
    with pytest.raises(ValueError, match="prior_precision"):
        dense_ggn.init(params, prior_precision=-2.0)
    with pytest.raises(ValueError, match="prior_precision.*shape"):
        dense_ggn.init(params, prior_precision=torch.ones(D + 1))
    with pytest.raises(ValueError, match="epsilon"):
        dense_hessian.build(M.log_posterior, epsilon=-1.0)
    with pytest.raises(ValueError, match="rescale"):
        dense_hessian.build(M.log_posterior, rescale=-1.0)
    with pytest.raises(ValueError, match="positive definite"):
        dense_fisher.sample(dense_fisher.init(params), (2,))
    with pytest.raises(LogProbError, match="scalar"):
        dense_hessian.build(lambda p, b: (p["b1"], torch.tensor([]))).update(dense_hessian.init(params), batch)
    with pytest.raises(LogProbError, match="pair"):
        dense_fisher.build(lambda p, b: M.log_posterior(p, b)[0]).update(dense_fisher.init(params), batch)
    state = dense_fisher.init(params)
    with pytest.raises(ValueError, match="NaN"):
        dense_fisher.build(lambda p, b: (M.log_posterior(p, b)[0] * float("nan"), torch.tensor([]))).update(
            state, batch, inplace=True
        )
    assert float(state.prec.abs().max()) == 0


def log_likelihood(params, batch):
    return M.outer_sum(M.forward(params, batch)[0], batch), torch.tensor([])


@pytest.mark.parametrize("variant", ["fisher", "ggn"])
def test_no_prior_error_counts_the_flat_directions_and_names_the_fix(variant):
    """prior_precision = 0 (the default) and a parameter direction the data do not touch (input 0 always
    zero: the 3 weights w1[:, 0]): sample reports at least those 3 flat directions and both fixes; the
    prior added to the fitted state equals a fit with that prior and makes sample work."""
    params, (x, y) = M.make_problem()
    x = x.clone()
    x[:, 0] = 0.0
    builders = {
        "fisher": lambda prior: dense_fisher.build(log_likelihood, prior_precision=prior),
        "ggn": lambda prior: dense_ggn.build(M.forward, M.outer_sum, prior_precision=prior),
    }
    fit = builders[variant]
    state, _ = fit(0.0).update(fit(0.0).init(params), (x, y))
    with pytest.raises(ValueError, match=r"not positive definite: .* of 24 eigen-directions.*prior_precision > 0.*add_prior_precision") as err:
        dense_fisher.sample(state, (2,))
    n_flat = int(str(err.value).split("definite: ")[1].split(" of")[0])
    assert n_flat >= 3
    fixed = add_prior_precision(state, 0.5)
    with_prior, _ = fit(0.5).update(fit(0.5).init(params), (x, y))
    torch.testing.assert_close(fixed.prec, with_prior.prec, rtol=1e-12, atol=1e-12)
    assert float(torch.linalg.eigvalsh(state.prec).min()) < 1e-9  # the original state is untouched
    assert dense_fisher.sample(fixed, (3,))["w1"].shape == (3, *params["w1"].shape)
    vec = add_prior_precision(state, torch.full((D,), 0.5, dtype=F64))
    mat = add_prior_precision(state, 0.5 * torch.eye(D, dtype=F64))
    torch.testing.assert_close(vec.prec, fixed.prec)
    torch.testing.assert_close(mat.prec, fixed.prec)
    with pytest.raises(ValueError, match="prior_precision"):
        add_prior_precision(state, torch.ones(D + 1, dtype=F64))
