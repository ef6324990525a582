"""Diagonal-Fisher EKF: exact one-step update, convergence to the closed-form posterior of a linear-Gaussian
model with a diagonal posterior, inplace, dtypes, errors."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from thermoai.bayes.ekf import diag_fisher
from thermoai.bayes.log_prob import LogProbError

sys.path.insert(0, str(Path(__file__).parent))
import ekf_models as M  # noqa: E402

F64 = torch.float64


def test_one_step_matches_closed_form():
    x, y = M.stream(6, 3, diagonal_design=False, seed=2)
    mu0 = torch.tensor([0.2, -0.1, 0.4], dtype=F64)
    init_sds = {"w": torch.tensor([1.0, 0.5, 2.0], dtype=F64)}
    lr, tsd = 0.8, 0.3
    transform = diag_fisher.build(M.log_likelihood, lr=lr, transition_sd=tsd, init_sds=init_sds)
    state, values = transform.update(transform.init({"w": mu0}), (x, y))
    G = x * ((y - x @ mu0) / M.NOISE_SD**2)[:, None]
    var = 1.0 / (1.0 / (init_sds["w"] ** 2 + tsd**2) + lr * (G**2).mean(0))
    torch.testing.assert_close(state.sd_diag["w"], var.sqrt(), rtol=1e-13, atol=0)
    torch.testing.assert_close(state.params["w"], mu0 + lr * var * G.mean(0), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(state.log_likelihood, values.mean())
    # the variance shrinks with information
    assert (state.sd_diag["w"] ** 2 < init_sds["w"] ** 2 + tsd**2).all()


def test_single_pass_converges_to_exact_diagonal_posterior():
    n, d = 20000, 3
    x, y = M.stream(n, d, diagonal_design=True)
    mean, prec = M.exact_posterior(x, y)
    assert torch.count_nonzero(prec - torch.diag(prec.diag())) == 0  # the exact posterior is diagonal
    transform = diag_fisher.build(M.log_likelihood, lr=1.0, init_sds=1.0)
    state = transform.init({"w": torch.zeros(d, dtype=F64)})
    start = 0
    for size in M.batch_sizes(n):
        state, _ = transform.update(state, (x[start : start + size], y[start : start + size]), inplace=True, lr=float(size))
        start += size
    ekf_prec = state.sd_diag["w"] ** -2
    post_sd = prec.diag().rsqrt()
    # same argument and margins as the dense test (tests/bayes/test_ekf_dense.py)
    assert ((ekf_prec - prec.diag()).abs() / prec.diag()).max() < 0.02
    assert ((state.params["w"] - mean).abs() / post_sd).max() < 1.0


def test_inplace_equals_functional_float64_and_fresh_init():
    M.check_inplace_equals_functional(diag_fisher, lambda s: s.sd_diag["w"], transition_sd=0.1)
    M.check_inplace_equals_functional(
        diag_fisher, lambda s: s.sd_diag["w"], transition_sd={"w": torch.tensor([0.1, 0.0, 0.2], dtype=F64)}
    )


def test_sample_moments_and_shapes():
    params = {"m": torch.arange(6, dtype=F64).reshape(2, 3)}
    sds = {"m": torch.linspace(0.5, 2.0, 6, dtype=F64).reshape(2, 3)}
    state = diag_fisher.init(params, init_sds=sds)
    n = 20000
    draws = diag_fisher.sample(state, (n,), generator=torch.Generator().manual_seed(0))
    assert draws["m"].shape == (n, 2, 3)
    # 5 standard errors
    assert ((draws["m"].mean(0) - params["m"]).abs() < 5 * sds["m"] / math.sqrt(n)).all()
    assert ((draws["m"].std(0) - sds["m"]).abs() < 5 * sds["m"] / math.sqrt(2 * n)).all()


def test_errors_name_the_problem():
    params = {"w": torch.zeros(3, dtype=F64)}
    x, y = M.stream(5, 3, diagonal_design=False)
    with pytest.raises(ValueError, match="lr"):
        diag_fisher.build(M.log_likelihood, lr=-0.1)
    with pytest.raises(ValueError, match="init_sds"):
        diag_fisher.build(M.log_likelihood, lr=1.0, init_sds=0.0)
    with pytest.raises(ValueError, match="init_sds"):
        diag_fisher.init(params, init_sds={"w": torch.tensor([1.0, -1.0, 1.0])})
    with pytest.raises(ValueError, match="transition_sd"):
        diag_fisher.build(M.log_likelihood, lr=1.0, transition_sd=-1.0)
    with pytest.raises(ValueError, match="init_sds|structure|shape"):
        diag_fisher.init(params, init_sds={"w": torch.ones(4)})
    with pytest.raises(LogProbError, match="scalar"):
        diag_fisher.build(lambda p, b: (p["w"], torch.tensor([])), lr=1.0).update(diag_fisher.init(params), (x, y))
    with pytest.raises(LogProbError, match="pair"):
        diag_fisher.build(lambda p, b: M.log_likelihood(p, b)[0], lr=1.0).update(diag_fisher.init(params), (x, y))
    state = diag_fisher.init(params)
    with pytest.raises(ValueError, match="NaN"):
        diag_fisher.build(lambda p, b: (M.log_likelihood(p, b)[0] * float("nan"), torch.tensor([])), lr=1.0).update(
            state, (x, y), inplace=True
        )
    assert torch.equal(state.sd_diag["w"], torch.ones(3, dtype=F64))
