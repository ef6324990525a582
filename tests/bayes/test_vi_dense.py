"""Dense (full-covariance) VI: exact answer, STL zero gradient for mean *and* factor, sampling, errors."""

from __future__ import annotations

import math

import pytest
import torch

from thermoai import tree as T
from thermoai.bayes import adam
from thermoai.bayes.log_prob import LogProbError
from thermoai.bayes.vi import dense

F64 = torch.float64


def normalised(tg):
    """The conftest target with its normalising constant, so that NELBO(q = p) = 0."""
    log_norm = -0.5 * torch.logdet(tg.cov) - 0.5 * tg.dim * math.log(2 * math.pi)

    def log_prob(p, batch=None):
        value, aux = tg.tree_log_prob(p, batch)
        return value + log_norm.to(value.dtype), aux

    return log_prob


def test_stl_gradient_of_mean_and_factor_is_zero_at_the_target(gaussian_target):
    """posteriors 0.1.3 leaves the mean attached in log q: its mean gradient is non-zero here."""
    tg = gaussian_target
    log_prob = normalised(tg)
    mean = tg.unflatten(tg.mean)
    L_flat = dense.L_to_flat(torch.linalg.cholesky(tg.cov))
    g = torch.Generator().manual_seed(0)
    value, (g_mu, g_L), _ = dense.nelbo_and_grad(mean, L_flat, None, log_prob, 1.0, 9, True, g)
    assert abs(float(value)) < 1e-10
    assert max(float(x.abs().max()) for x in T.leaves(g_mu)) < 1e-12
    assert float(g_L.abs().max()) < 1e-12
    # with the mean left attached (the posteriors defect) the mean gradient would be -g = -L^{-T} eps
    _, (p_mu, p_L), _ = dense.nelbo_and_grad(mean, L_flat, None, log_prob, 1.0, 1, False, g)
    assert max(float(x.abs().max()) for x in T.leaves(p_mu)) > 1e-3


def test_gradients_match_autograd_of_the_reparameterised_objective(gaussian_target):
    tg = gaussian_target
    log_prob = normalised(tg)
    d, n, temperature = tg.dim, 3, 0.6
    mu0 = tg.mean + 0.2
    L0 = torch.linalg.cholesky(0.7 * tg.cov) + 0.05 * torch.tril(torch.ones(d, d, dtype=F64), -1)
    for stl in (True, False):
        _, (g_mu, g_L), _ = dense.nelbo_and_grad(
            tg.unflatten(mu0), dense.L_to_flat(L0), None, log_prob, temperature, n, stl, torch.Generator().manual_seed(2)
        )
        eps = torch.randn((n, d), dtype=F64, generator=torch.Generator().manual_seed(2))
        mu = mu0.clone().requires_grad_()
        Lf = dense.L_to_flat(L0).clone().requires_grad_()
        L = dense.L_from_flat(Lf)
        theta = mu + eps @ L.T
        q_mu, q_L = (mu.detach(), L.detach()) if stl else (mu, L)
        q = torch.distributions.MultivariateNormal(q_mu, scale_tril=q_L, validate_args=False)
        log_p = torch.stack([log_prob(tg.unflatten(t))[0] for t in theta])
        (-log_p + temperature * q.log_prob(theta)).mean().backward()
        torch.testing.assert_close(tg.flatten(g_mu), mu.grad, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(g_L, Lf.grad, rtol=1e-9, atol=1e-11)


def test_reaches_the_dense_target_exactly(gaussian_target):
    """The family contains the target; with STL the gradient noise vanishes there, so Adam lands on it."""
    tg = gaussian_target
    g = torch.Generator().manual_seed(0)
    transform = dense.build(normalised(tg), optimizer=adam.adam(lr=1e-2), n_samples=1, init_L=1.0)  # at the target's scale
    state = transform.init(tg.unflatten(torch.zeros(10, dtype=F64)))
    for _ in range(1500):
        state, _ = transform.update(state, None, inplace=True, generator=g)
    L = dense.L_from_flat(state.L_factor)
    torch.testing.assert_close(tg.flatten(state.params), tg.mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(L @ L.T, tg.cov, rtol=0, atol=1e-6)
    assert abs(float(state.nelbo)) < 1e-8


def test_inplace_and_functional_updates_agree(gaussian_target):
    tg = gaussian_target
    transform = dense.build(normalised(tg), lr=0.05, n_samples=3, temperature=0.5)
    start = tg.unflatten(torch.zeros(10, dtype=F64))
    s1, s2 = transform.init(start), transform.init(start)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(4):
        s1, _ = transform.update(s1, None, generator=g1)
        out, _ = transform.update(s2, None, inplace=True, generator=g2)
        assert out is s2
    assert torch.equal(s1.L_factor, s2.L_factor) and torch.equal(s1.nelbo, s2.nelbo)
    assert all(torch.equal(a, b) for a, b in zip(T.leaves(s1.params), T.leaves(s2.params)))
    assert int(s1.step) == int(s2.step) == 4
    assert all(float(x.abs().max()) == 0 for x in T.leaves(start))


def test_scalar_init_follows_params_dtype_and_fresh_init_starts_at_zero(gaussian_target):
    tg = gaussian_target
    for dtype in (torch.float32, F64):
        state = dense.init(tg.unflatten(tg.mean.to(dtype)), adam.adam(1e-2), init_L=2.0)
        assert state.L_factor.dtype == dtype and state.nelbo.dtype == dtype
        assert state.L_factor.device == tg.mean.device
        torch.testing.assert_close(dense.L_from_flat(state.L_factor), 2.0 * torch.eye(10, dtype=dtype))
    transform = dense.build(normalised(tg), lr=1e-2)
    state = transform.init(tg.unflatten(tg.mean))
    for _ in range(3):
        state, _ = transform.update(state, None, inplace=True)
    assert int(transform.init(tg.unflatten(tg.mean)).step) == 0


def test_sample_has_leaf_shapes_and_the_covariance(gaussian_target):
    tg = gaussian_target
    L = torch.linalg.cholesky(tg.cov)
    state = dense.init(tg.unflatten(tg.mean), adam.adam(1e-2), init_L=L)
    n = 20000
    draws = dense.sample(state, (n,), generator=torch.Generator().manual_seed(0))
    assert draws["a"].shape == (n, 4) and draws["b"].shape == (n, 2, 3)
    flat = tg.flatten(draws)
    sd = tg.cov.diag().sqrt()
    # 5 standard errors; SE of a covariance entry is sqrt((C_ii C_jj + C_ij^2) / n)
    assert ((flat.mean(0) - tg.mean).abs() < 5 * sd / math.sqrt(n)).all()
    se_cov = ((torch.outer(tg.cov.diag(), tg.cov.diag()) + tg.cov**2) / n).sqrt()
    assert ((torch.cov(flat.T) - tg.cov).abs() < 5 * se_cov).all()


def test_L_flat_round_trip():
    L = torch.tril(torch.randn(5, 5, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(dense.L_from_flat(dense.L_to_flat(L)), L)
    with pytest.raises(ValueError, match="d\\(d\\+1\\)/2"):
        dense.L_from_flat(torch.zeros(4))


def test_errors_name_the_problem(gaussian_target):
    tg = gaussian_target
    good = normalised(tg)
    params = tg.unflatten(tg.mean)
    with pytest.raises(ValueError, match="lower triangular"):
        dense.init(params, adam.adam(1e-2), init_L=torch.ones(10, 10, dtype=F64))
    with pytest.raises(ValueError, match="non-zero diagonal"):
        dense.init(params, adam.adam(1e-2), init_L=torch.diag(torch.arange(10.0)))
    with pytest.raises(ValueError, match="init_L"):
        dense.build(good, lr=1e-2, init_L=0.0)
    with pytest.raises(ValueError, match="\\(10, 10\\)"):
        dense.init(params, adam.adam(1e-2), init_L=torch.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        dense.init(params, adam.adam(1e-2), init_L=torch.full((10, 10), float("nan")).tril())
    with pytest.raises(ValueError, match="temperature"):
        dense.build(good, lr=1e-2, temperature=-1.0)
    with pytest.raises(ValueError, match="lr"):
        dense.build(good, lr=-1e-2)
    with pytest.raises(LogProbError, match="scalar"):
        dense.build(lambda p, b: (p["a"], torch.tensor([])), lr=1e-2).update(dense.init(params), None)
    with pytest.raises(LogProbError, match="pair"):
        dense.build(lambda p, b: good(p, b)[0], lr=1e-2).update(dense.init(params), None)
    with pytest.raises(ValueError, match="NaN"):
        dense.build(lambda p, b: (good(p, b)[0] * float("nan"), torch.tensor([])), lr=1e-2, n_samples=2).update(
            dense.init(params), None
        )


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])],
)
def test_states_follow_params_device_and_dtype(device):
    """Every tensor of every state (including scalar-initialised dense matrices) lives on the params' device."""
    from thermoai.bayes import ekf, laplace, vi

    device = torch.device(device)
    params = {"w": torch.randn(2, 3, dtype=F64, device=device), "b": torch.randn(2, dtype=F64, device=device)}

    def log_prob(p, batch):
        return -0.5 * sum((v * v).sum() for v in p.values()), torch.tensor([], device=device)

    batch = torch.zeros(4, 1, device=device)
    transforms = [
        vi.diag.build(log_prob, lr=1e-2),
        vi.dense.build(log_prob, lr=1e-2, init_L=0.5),
        laplace.diag_fisher.build(log_prob, prior_precision=1.0),
        laplace.dense_fisher.build(log_prob, init_prec=1.0),
        laplace.dense_hessian.build(log_prob, init_prec=1.0, epsilon=1e-3),
        ekf.diag_fisher.build(log_prob, lr=0.1),
        ekf.dense_fisher.build(log_prob, lr=0.1, init_cov=2.0),
    ]
    for transform in transforms:
        state, _ = transform.update(transform.init(params), batch)
        for leaf in T.leaves(state):
            assert leaf.device.type == device.type, type(state).__name__
            if leaf.is_floating_point():
                assert leaf.dtype == F64, type(state).__name__


def test_raw_factor_round_trip_and_its_chain_rule_match_autograd():
    """The optimiser's factor (log diagonal, unit-triangular C = diag(L)^-1 L): L_from_raw inverts
    raw_from_L, and the gradient handed to the optimiser is autograd's through L_from_raw."""
    d = 6
    g = torch.Generator().manual_seed(3)
    L = torch.tril(torch.randn(d, d, generator=g, dtype=F64), -1) + torch.diag(torch.rand(d, generator=g, dtype=F64) + 0.1)
    L_flat = dense.L_to_flat(L)
    raw = dense.raw_from_L(L_flat)
    torch.testing.assert_close(dense.L_from_raw(raw), L_flat, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(torch.diagonal(dense.L_from_flat(raw)), torch.log(torch.diagonal(L)), rtol=1e-14, atol=0)
    torch.testing.assert_close(dense.L_from_flat(raw)[3, 1], L[3, 1] / L[3, 3], rtol=1e-14, atol=0)
    W = torch.randn(d, d, generator=g, dtype=F64)

    def f(flat):  # any smooth function of L
        M = dense.L_from_flat(flat)
        return (W * M).sum() + (M @ M.T).square().sum()

    r = raw.clone().requires_grad_()
    f(dense.L_from_raw(r)).backward()
    Lf = L_flat.clone().requires_grad_()
    f(Lf).backward()
    torch.testing.assert_close(dense._raw_grad(Lf.grad, L_flat), r.grad, rtol=1e-12, atol=1e-12)


def test_the_diagonal_stays_positive_under_large_steps(gaussian_target):
    """Adam with lr = 0.5 from a factor of 0.01 I: optimised directly, L_ii would cross zero
    (log|L_ii| and L^-T blow up); as exp(s_i) it cannot, and every NELBO stays finite."""
    tg = gaussian_target
    transform = dense.build(normalised(tg), optimizer=adam.adam(lr=0.5), init_L=0.01)
    state = transform.init(tg.unflatten(torch.zeros(10, dtype=F64)))
    g = torch.Generator().manual_seed(1)
    lowest = math.inf
    for _ in range(200):
        state, _ = transform.update(state, None, inplace=True, generator=g)
        lowest = min(lowest, float(torch.diagonal(dense.L_from_flat(state.L_factor)).min()))
        assert math.isfinite(float(state.nelbo))
    assert lowest > 0


def test_a_negative_diagonal_in_init_L_is_the_same_covariance_with_a_positive_one():
    L = torch.tensor([[-2.0, 0.0], [0.5, 1.5]], dtype=F64)
    state = dense.init({"w": torch.zeros(2, dtype=F64)}, init_L=L)
    L0 = dense.L_from_flat(state.L_factor)
    assert bool((torch.diagonal(L0) > 0).all())
    torch.testing.assert_close(L0 @ L0.T, L @ L.T, rtol=1e-15, atol=0)
    scalar = dense.init({"w": torch.zeros(2, dtype=F64)}, init_L=-0.3)
    torch.testing.assert_close(dense.L_from_flat(scalar.L_factor), 0.3 * torch.eye(2, dtype=F64))
