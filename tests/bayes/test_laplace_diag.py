"""Diagonal Laplace (empirical Fisher and GGN): precisions equal brute-force sums; sampling; errors."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from thermoai import tree as T
from thermoai.bayes.laplace import add_prior_precision, diag_fisher, diag_ggn
from thermoai.bayes.log_prob import LogProbError

sys.path.insert(0, str(Path(__file__).parent))
import laplace_models as M  # noqa: E402

F64 = torch.float64


def test_diag_fisher_equals_brute_force_sum_over_minibatches():
    params, batch = M.make_problem()
    G = M.brute_per_sample_grads(params, batch)
    expected = (G**2).sum(0) + 0.5  # + prior_precision
    transform = diag_fisher.build(M.log_posterior, prior_precision=0.5)
    state = transform.init(params)
    for part in M.split(batch, [5, 4, 3]):
        state, values = transform.update(state, part)
    torch.testing.assert_close(T.tree_ravel(state.prec_diag), expected, rtol=1e-10, atol=1e-12)
    assert int(state.step) == 3
    # the mode is never moved
    assert all(torch.equal(state.params[k], params[k]) for k in params)
    # per-sample function path gives the same precision in one go
    per = diag_fisher.build(M.per_sample_log_posterior, per_sample=True, prior_precision=0.5)
    s2, values = per.update(per.init(params), batch)
    torch.testing.assert_close(T.tree_ravel(s2.prec_diag), expected, rtol=1e-10, atol=1e-12)
    assert values.shape == (M.B,)


@pytest.mark.parametrize("outer", [M.outer_sum, M.outer_mean])
def test_diag_ggn_equals_brute_force(outer):
    params, batch = M.make_problem()
    expected = torch.diag(M.brute_ggn(params, batch, outer))
    transform = diag_ggn.build(M.forward, outer)
    state = transform.init(params)
    for part in M.split(batch, [7, 5]):
        state, _ = transform.update(state, part)
    # summed over mini-batches for a summed outer; for a mean outer each batch carries its own 1/b
    if outer is M.outer_sum:
        torch.testing.assert_close(T.tree_ravel(state.prec_diag), expected, rtol=1e-10, atol=1e-12)
    full, _ = transform.update(transform.init(params), batch)
    torch.testing.assert_close(T.tree_ravel(full.prec_diag), expected, rtol=1e-10, atol=1e-12)


def test_leaf_whose_gradient_does_not_depend_on_the_sample():
    """vmap returns such per-sample gradients as expanded views: they must not be squared in place."""
    params, batch = M.make_problem()
    params = dict(params, extra=torch.tensor([0.5, -1.0], dtype=F64))

    def log_posterior(p, b):
        value, aux = M.log_posterior({k: p[k] for k in ("w1", "b1", "w2")}, b)
        return value - 0.5 * (p["extra"] ** 2).sum(), aux

    state, _ = diag_fisher.build(log_posterior).update(diag_fisher.init(params), batch)
    torch.testing.assert_close(state.prec_diag["extra"], M.B * params["extra"] ** 2)


def test_prior_precision_tree_and_init_add():
    params, batch = M.make_problem()
    prior = {k: torch.full_like(v, 2.0) for k, v in params.items()}
    state = diag_ggn.build(M.forward, M.outer_sum, init_prec_diag=1.0, prior_precision=prior).init(params)
    assert all(torch.equal(state.prec_diag[k], torch.full_like(params[k], 3.0)) for k in params)


def test_inplace_equals_functional_and_dtypes_follow_params():
    for dtype in (torch.float32, F64):
        params, batch = M.make_problem(dtype)
        transform = diag_fisher.build(M.log_posterior, prior_precision=1.0)
        s1, s2 = transform.init(params), transform.init(params)
        for part in M.split(batch, [6, 6]):
            s1, _ = transform.update(s1, part)
            out, _ = transform.update(s2, part, inplace=True)
            assert out is s2
        assert all(torch.equal(s1.prec_diag[k], s2.prec_diag[k]) for k in params)
        assert all(v.dtype == dtype for v in s1.prec_diag.values())
        assert int(s1.step) == int(s2.step) == 2
        assert int(transform.init(params).step) == 0


def test_sample_scale_shapes_and_temperature():
    params, _ = M.make_problem()
    prec = {k: torch.linspace(1.0, 4.0, v.numel(), dtype=F64).reshape(v.shape) for k, v in params.items()}
    state = diag_fisher.DiagLaplaceState(params, prec, torch.tensor(0))
    n = 20000
    for temperature in (1.0, 0.25):
        draws = diag_fisher.sample(state, (n,), temperature=temperature, generator=torch.Generator().manual_seed(0))
        for k in params:
            assert draws[k].shape == (n, *params[k].shape)
            sd = (temperature / prec[k]).sqrt()
            # 5 standard errors for the mean (sd/sqrt(n)) and the sd (sd/sqrt(2n))
            assert ((draws[k].mean(0) - params[k]).abs() < 5 * sd / math.sqrt(n)).all()
            assert ((draws[k].std(0) - sd).abs() < 5 * sd / math.sqrt(2 * n)).all()


def test_errors_name_the_problem():
    params, batch = M.make_problem()
    with pytest.raises(ValueError, match="prior_precision"):
        diag_fisher.build(M.log_posterior, prior_precision=-1.0).init(params)
    with pytest.raises(ValueError, match="prior_precision"):
        diag_fisher.init(params, prior_precision={"w1": torch.ones(3, 4)})
    with pytest.raises(ValueError, match="prior_precision"):
        diag_fisher.init(params, prior_precision={k: -torch.ones_like(v) for k, v in params.items()})
    with pytest.raises(ValueError, match="init_prec_diag"):
        diag_fisher.init(params, init_prec_diag=float("nan"))
    with pytest.raises(TypeError, match="per_sample"):
        diag_fisher.build(M.log_posterior, per_sample="yes")
    with pytest.raises(LogProbError, match="scalar"):
        diag_fisher.build(lambda p, b: (p["b1"], torch.tensor([]))).update(diag_fisher.init(params), batch)
    with pytest.raises(LogProbError, match="pair"):
        diag_fisher.build(lambda p, b: M.log_posterior(p, b)[0]).update(diag_fisher.init(params), batch)

    def nan_lp(p, b):
        value, aux = M.log_posterior(p, b)
        return value + (p["w2"] - p["w2"].detach()).abs().sqrt().sum(), aux

    state = diag_fisher.init(params)
    with pytest.raises(ValueError, match="NaN"):
        diag_fisher.build(nan_lp).update(state, batch, inplace=True)
    assert all(float(v.abs().max()) == 0 for v in state.prec_diag.values())  # left unchanged
    with pytest.raises(ValueError, match="prior_precision"):
        diag_fisher.sample(diag_fisher.init(params), (3,))
    with pytest.raises(ValueError, match="scalar"):
        diag_ggn.build(M.forward, lambda z, b: -(z**2).sum(-1)).update(diag_ggn.init(params), batch)
    with pytest.raises(TypeError, match="no aux"):
        diag_ggn.build(M.forward, lambda z, b: (M.outer_sum(z, b), torch.tensor([]))).update(diag_ggn.init(params), batch)
    with pytest.raises(ValueError, match="pair"):
        diag_ggn.build(lambda p, b: M.forward(p, b)[0], M.outer_sum).update(diag_ggn.init(params), batch)


def log_likelihood(params, batch):
    return M.outer_sum(M.forward(params, batch)[0], batch), torch.tensor([])


@pytest.mark.parametrize("variant", ["fisher", "ggn"])
def test_no_prior_error_names_prior_precision_and_the_fitted_state_fix(variant):
    """With the default prior_precision = 0, a parameter the data do not touch (here w1[:, 0], input 0 is
    always zero) has zero precision: sample says which leaf, how many entries, and the two fixes; adding
    the prior to the fitted state gives exactly the precision a fit with that prior gives."""
    params, (x, y) = M.make_problem()
    x = x.clone()
    x[:, 0] = 0.0
    if variant == "fisher":  # the likelihood alone (M.log_posterior's per-sample prior would touch w1[:, 0])
        fit = lambda prior: diag_fisher.build(log_likelihood, prior_precision=prior)  # noqa: E731
    else:
        fit = lambda prior: diag_ggn.build(M.forward, M.outer_sum, prior_precision=prior)  # noqa: E731
    state, _ = fit(0.0).update(fit(0.0).init(params), (x, y))
    with pytest.raises(ValueError, match=r"w1: 3 of 12.*prior_precision > 0.*add_prior_precision\(state, 1.0\)"):
        diag_fisher.sample(state, (2,))
    fixed = add_prior_precision(state, 0.5)
    with_prior, _ = fit(0.5).update(fit(0.5).init(params), (x, y))
    for k in params:
        torch.testing.assert_close(fixed.prec_diag[k], with_prior.prec_diag[k], rtol=1e-12, atol=0)
        assert float(state.prec_diag[k].min()) >= 0  # the original state is untouched
    assert float(state.prec_diag["w1"][:, 0].abs().max()) == 0
    draws = diag_fisher.sample(fixed, (4000,), generator=torch.Generator().manual_seed(0))
    # the untouched direction has the prior's variance 1/0.5: sd sqrt(2), standard error of the sd ~ sd/sqrt(2n)
    sd = draws["w1"][:, :, 0].std(0)
    assert float((sd - 2**0.5).abs().max()) < 5 * 2**0.5 / math.sqrt(2 * 4000)
    tree_prior = {k: torch.full_like(v, 0.5) for k, v in params.items()}
    torch.testing.assert_close(add_prior_precision(state, tree_prior).prec_diag["w1"], fixed.prec_diag["w1"])
    with pytest.raises(ValueError, match="prior_precision"):
        add_prior_precision(state, -1.0)
    with pytest.raises(TypeError, match="Laplace state"):
        add_prior_precision(params, 1.0)
