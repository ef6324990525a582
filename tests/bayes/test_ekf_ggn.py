"""GGN EKFs: exactly the Kalman filter on a linear-Gaussian model (float64, 1e-10), the curvature shared with
Laplace, brute-force checks on a non-linear classifier, and what the empirical-Fisher EKF does instead."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.func import jacrev

from thermoai import tree as T
from thermoai.bayes import ensemble
from thermoai.bayes.ekf import dense_fisher, dense_ggn, diag_ggn
from thermoai.bayes.laplace import dense_ggn as laplace_dense_ggn
from thermoai.bayes.laplace import diag_ggn as laplace_diag_ggn

sys.path.insert(0, str(Path(__file__).parent))
import laplace_models as LM  # noqa: E402

F64 = torch.float64
NOISE_SD = 0.7


def linear_forward(params, batch):
    x, _ = batch
    return (x @ params["w"])[:, None], torch.tensor([])  # (B, 1)


def gaussian_outer(z, batch):
    """Summed Gaussian log likelihood (constants dropped) of the targets given outputs ``(B, 1)``."""
    return (-0.5 * (batch[1] - z[:, 0]) ** 2 / NOISE_SD**2).sum()


def linear_log_likelihood(params, batch):
    return gaussian_outer(linear_forward(params, batch)[0], batch), torch.tensor([])


def linear_data(n, d, seed=0, diagonal_design=False):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(d, generator=g, dtype=F64)
    if diagonal_design:
        x = torch.zeros(n, d, dtype=F64)
        x[torch.arange(n), torch.randint(0, d, (n,), generator=g)] = 0.5 + torch.rand(n, generator=g, dtype=F64)
    else:
        x = torch.randn(n, d, generator=g, dtype=F64)
    return x, x @ theta + NOISE_SD * torch.randn(n, generator=g, dtype=F64)


def kalman_filter(mu, cov, batches, transition_cov):
    """The textbook covariance-form Kalman filter for ``y = X theta + N(0, s^2 I)``, random-walk ``theta``."""
    for x, y in batches:
        cov = cov + transition_cov
        S = x @ cov @ x.T + NOISE_SD**2 * torch.eye(x.shape[0], dtype=F64)
        K = torch.linalg.solve(S, x @ cov).T  # cov X^T S^{-1} (S symmetric)
        mu = mu + K @ (y - x @ mu)
        cov = (torch.eye(cov.shape[0], dtype=F64) - K @ x) @ cov
    return mu, 0.5 * (cov + cov.T)


def batches_of(x, y, sizes):
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out


@pytest.mark.parametrize("with_transition", [False, True])
def test_dense_ggn_ekf_is_the_kalman_filter(with_transition):
    d = 4
    x, y = linear_data(60, d, seed=1)
    batches = batches_of(x, y, [1, 2, 7, 10, 10, 30])
    mu0 = torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=F64)
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(5), dtype=F64)
    cov0 = a @ a.T / d + 0.5 * torch.eye(d, dtype=F64)
    q = torch.diag(torch.tensor([0.01, 0.02, 0.0, 0.03], dtype=F64)) if with_transition else torch.zeros(d, d, dtype=F64)
    transform = dense_ggn.build(linear_forward, gaussian_outer, lr=1.0, transition_cov=q if with_transition else 0.0,
                                init_cov=cov0)
    state = transform.init({"w": mu0})
    mu, cov = mu0, cov0
    for batch in batches:
        state, _ = transform.update(state, batch)
        mu, cov = kalman_filter(mu, cov, [batch], q)
        torch.testing.assert_close(state.params["w"], mu, rtol=0, atol=1e-10)
        torch.testing.assert_close(state.cov, cov, rtol=0, atol=1e-10)
    if not with_transition:
        # one pass without a random walk is the exact posterior of the whole data set
        prec = torch.linalg.inv(cov0) + x.T @ x / NOISE_SD**2
        mean = torch.linalg.solve(prec, torch.linalg.solve(cov0, mu0) + x.T @ y / NOISE_SD**2)
        torch.testing.assert_close(state.params["w"], mean, rtol=0, atol=1e-10)
        torch.testing.assert_close(state.cov, torch.linalg.inv(prec), rtol=0, atol=1e-10)
    # the recorded log likelihood is the summed outer log likelihood of the last batch at the old mean
    assert state.log_likelihood.dtype == F64 and int(state.step) == len(batches)


def test_diag_ggn_ekf_is_the_kalman_filter_when_each_sample_sees_one_coordinate():
    d = 3
    x, y = linear_data(80, d, seed=2, diagonal_design=True)
    batches = batches_of(x, y, [1, 3, 6, 20, 50])
    sds = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    tsd = torch.tensor([0.1, 0.0, 0.2], dtype=F64)
    transform = diag_ggn.build(linear_forward, gaussian_outer, transition_sd={"w": tsd}, init_sds={"w": sds})
    state = transform.init({"w": torch.zeros(d, dtype=F64)})
    mu, cov = torch.zeros(d, dtype=F64), torch.diag(sds**2)
    for batch in batches:
        state, _ = transform.update(state, batch)
        mu, cov = kalman_filter(mu, cov, [batch], torch.diag(tsd**2))
        assert torch.count_nonzero(cov - torch.diag(cov.diag())) == 0  # the Kalman covariance stays diagonal
        torch.testing.assert_close(state.params["w"], mu, rtol=0, atol=1e-10)
        torch.testing.assert_close(state.sd_diag["w"] ** 2, cov.diag(), rtol=0, atol=1e-10)


def test_empirical_fisher_ekf_is_not_the_kalman_filter():
    """The issue's case: 400 points in batches of 10. The GGN EKF ends at the exact posterior; the
    empirical-Fisher EKF (lr = batch size: batch means) weights each sample by its squared residual at the
    current mean, x x^T r^2 / s^4 instead of x x^T / s^2: early residuals, inflated while the mean is still
    at the prior, over-state the information, and the mean then moves too little."""
    d, n = 3, 400
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=F64)
    theta = 3.0 * torch.randn(d, generator=g, dtype=F64)
    y = x @ theta + NOISE_SD * torch.randn(n, generator=g, dtype=F64)
    batches = batches_of(x, y, [10] * 40)
    prior = torch.eye(d, dtype=F64) * 10.0
    prec = torch.linalg.inv(prior) + x.T @ x / NOISE_SD**2
    mean = torch.linalg.solve(prec, x.T @ y / NOISE_SD**2)
    post_sd = torch.linalg.inv(prec).diag().sqrt()

    ggn = dense_ggn.build(linear_forward, gaussian_outer, init_cov=prior)
    fisher = dense_fisher.build(linear_log_likelihood, lr=10.0, init_cov=prior)
    s_ggn, s_fisher = ggn.init({"w": torch.zeros(d, dtype=F64)}), fisher.init({"w": torch.zeros(d, dtype=F64)})
    for batch in batches:
        s_ggn, _ = ggn.update(s_ggn, batch, inplace=True)
        s_fisher, _ = fisher.update(s_fisher, batch, inplace=True)
    torch.testing.assert_close(s_ggn.params["w"], mean, rtol=0, atol=1e-10)
    err_fisher = ((s_fisher.params["w"] - mean).abs() / post_sd).max()
    prec_ratio = (torch.linalg.inv(s_fisher.cov).diag() / prec.diag()).max()
    # measured: the Fisher mean ends 94 posterior sds off with a 97-fold over-stated precision
    assert err_fisher > 10.0 and prec_ratio > 2.0, (float(err_fisher), float(prec_ratio))


def test_ekf_and_laplace_share_the_ggn():
    """One EKF step from covariance P0^{-1} gives precision P0 + GGN: the Laplace precision with init_prec
    P0; the diagonal EKF gives the diagonal Laplace precision. Checked against the brute-force GGN of a
    non-linear classifier (full Jacobian, full output Hessian)."""
    params, batch = LM.make_problem()
    d = T.tree_size(params)
    p0 = 2.0 * torch.eye(d, dtype=F64)
    brute = LM.brute_ggn(params, batch, LM.outer_sum)
    ekf_state, _ = dense_ggn.build(LM.forward, LM.outer_sum, init_cov=torch.linalg.inv(p0)).update(
        dense_ggn.init(params, init_cov=torch.linalg.inv(p0)), batch
    )
    lap_state, _ = laplace_dense_ggn.build(LM.forward, LM.outer_sum, init_prec=p0).update(
        laplace_dense_ggn.init(params, init_prec=p0), batch
    )
    torch.testing.assert_close(lap_state.prec, p0 + brute, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.linalg.inv(ekf_state.cov), lap_state.prec, rtol=1e-9, atol=1e-10)

    diag_state, _ = diag_ggn.build(LM.forward, LM.outer_sum, init_sds=0.5).update(diag_ggn.init(params, init_sds=0.5), batch)
    lap_diag, _ = laplace_diag_ggn.build(LM.forward, LM.outer_sum, init_prec_diag=4.0).update(
        laplace_diag_ggn.init(params, init_prec_diag=4.0), batch
    )
    flat_prec = T.tree_ravel(T.tree_map(lambda s: s**-2, diag_state.sd_diag))
    torch.testing.assert_close(flat_prec, T.tree_ravel(lap_diag.prec_diag), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(flat_prec, 4.0 + brute.diag(), rtol=1e-10, atol=1e-12)


def test_nonlinear_step_matches_brute_force():
    """mu_new = mu + lr Sigma_new J^T r with r the output gradient, on the classifier (C = 3 outputs)."""
    params, batch = LM.make_problem()
    flat, unravel = T.ravel(params)
    lr, cov0 = 0.5, 0.3
    grad = jacrev(lambda f: LM.outer_sum(LM.forward(unravel(f), batch)[0], batch))(flat)
    prec = torch.eye(flat.numel(), dtype=F64) / cov0 + lr * LM.brute_ggn(params, batch, LM.outer_sum)
    cov = torch.linalg.inv(prec)
    state, _ = dense_ggn.build(LM.forward, LM.outer_sum, lr=lr, init_cov=cov0).update(dense_ggn.init(params, init_cov=cov0), batch)
    torch.testing.assert_close(T.tree_ravel(state.params), flat + lr * cov @ grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.cov, cov, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.log_likelihood, LM.outer_sum(LM.forward(params, batch)[0], batch))
    # the diagonal variant: the same gradient, the diagonal of the same GGN
    dstate, _ = diag_ggn.build(LM.forward, LM.outer_sum, lr=lr, init_sds=cov0**0.5).update(diag_ggn.init(params, init_sds=cov0**0.5), batch)
    var = 1.0 / (1.0 / cov0 + lr * LM.brute_ggn(params, batch, LM.outer_sum).diag())
    torch.testing.assert_close(T.tree_ravel(dstate.params), flat + lr * var * grad, rtol=1e-10, atol=1e-12)
    # the output Hessian of a non-Gaussian likelihood depends on the mean: a logistic GGN is not constant
    assert not torch.allclose(LM.brute_ggn(params, batch, LM.outer_sum),
                              LM.brute_ggn(T.tree_map(lambda v: 2 * v, params), batch, LM.outer_sum))


@pytest.mark.parametrize("module, cov", [(dense_ggn, lambda s: s.cov), (diag_ggn, lambda s: s.sd_diag["w"])])
def test_inplace_vmap_and_dtypes(module, cov):
    x, y = linear_data(40, 3, seed=3)
    transform = module.build(linear_forward, gaussian_outer, lr=lambda t: 1.0 / (1 + float(t)))
    s1, s2 = transform.init({"w": torch.zeros(3, dtype=F64)}), transform.init({"w": torch.zeros(3, dtype=F64)})
    for b in batches_of(x, y, [10] * 4):
        s1, _ = transform.update(s1, b)
        assert transform.update(s2, b, inplace=True)[0] is s2
    assert torch.equal(cov(s1), cov(s2)) and torch.equal(s1.params["w"], s2.params["w"]) and int(s2.step) == 4
    assert cov(transform.init({"w": torch.zeros(3)})).dtype == torch.float32
    # vmapped over replications with their own data (what thermoai.bayes.sbc runs): equals a loop
    reps = ensemble.build(module.build(linear_forward, gaussian_outer), 3, batch_per_member=True)
    xs = torch.stack([linear_data(10, 3, seed=s)[0] for s in range(3)])
    ys = torch.stack([linear_data(10, 3, seed=s)[1] for s in range(3)])
    stacked, _ = reps.update(reps.init([{"w": torch.zeros(3, dtype=F64)}] * 3), (xs, ys))
    for k in range(3):
        one, _ = transform.update(transform.init({"w": torch.zeros(3, dtype=F64)}), (xs[k], ys[k]), lr=1.0)
        torch.testing.assert_close(stacked.params["w"][k], one.params["w"], rtol=1e-12, atol=1e-14)


def test_errors_name_the_problem():
    params = {"w": torch.zeros(3, dtype=F64)}
    batch = linear_data(5, 3)
    with pytest.raises(ValueError, match="lr"):
        dense_ggn.build(linear_forward, gaussian_outer, lr=-1.0)
    with pytest.raises(ValueError, match="init_sds"):
        diag_ggn.build(linear_forward, gaussian_outer, init_sds=0.0)
    with pytest.raises(ValueError, match="transition_cov"):
        dense_ggn.build(linear_forward, gaussian_outer, transition_cov=-0.1)
    for module in (dense_ggn, diag_ggn):
        with pytest.raises(ValueError, match="summed over the batch"):
            module.build(linear_forward, lambda z, b: -0.5 * (b[1] - z[:, 0]) ** 2).update(module.init(params), batch)
        with pytest.raises(TypeError, match="no aux"):
            module.build(linear_forward, lambda z, b: (gaussian_outer(z, b), None)).update(module.init(params), batch)
        with pytest.raises(ValueError, match="pair"):
            module.build(lambda p, b: linear_forward(p, b)[0], gaussian_outer).update(module.init(params), batch)
    state = dense_ggn.init(params)
    with pytest.raises(ValueError, match="NaN"):
        dense_ggn.build(linear_forward, lambda z, b: gaussian_outer(z, b) * float("nan")).update(state, batch, inplace=True)
    assert torch.equal(state.cov, torch.eye(3, dtype=F64))
