"""Tests of thermoai.thermo.ou against independent closed forms (scipy expm / Lyapunov / ODE quadrature)."""

import math

import numpy as np
import pytest
import scipy.linalg as sla
from scipy.integrate import solve_ivp
from scipy.stats import multivariate_normal

import torch

from thermoai.thermo.ou import OUProcess, euler_maruyama, exponential_integrator

F64 = torch.float64


def _nonsym_2d():
    # thermox's test drift: non-symmetric, and with D = 2 I its whitened drift is not normal
    A = torch.tensor([[3.0, 2.5], [2.0, 4.0]], dtype=F64)
    D = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=F64)
    return A, D


def _random_20d(seed=0):
    g = torch.Generator().manual_seed(seed)
    d = 20
    M = torch.randn(d, d, generator=g, dtype=F64)
    K = torch.randn(d, d, generator=g, dtype=F64)
    # SPD symmetric part (so stable) plus a skew part that does not commute with it: non-normal
    A = M @ M.T / d + 0.5 * torch.eye(d, dtype=F64) + (K - K.T) / math.sqrt(d)
    assert torch.linalg.eigvals(A).real.min() > 0.05
    assert (A @ A.T - A.T @ A).abs().max() > 0.5
    G = torch.randn(d, d, generator=g, dtype=F64)
    D = G @ G.T / d + 0.1 * torch.eye(d, dtype=F64)
    b = torch.randn(d, generator=g, dtype=F64)
    return A, D, b


def _reference(A, D, dt):
    """Independent references: scipy's Pade expm and Bartels-Stewart Lyapunov solver."""
    A, D = A.numpy(), D.numpy()
    S = sla.solve_continuous_lyapunov(A, D)
    F = sla.expm(-A * dt)
    return F, S - F @ S @ F.T, S


@pytest.mark.parametrize("case", ["2d", "20d"])
@pytest.mark.parametrize("dt", [1e-3, 0.1, 1.0, 7.5, 60.0])
def test_transition_matches_closed_form(case, dt):
    A, D, b = (*_nonsym_2d(), None) if case == "2d" else _random_20d()
    proc = OUProcess(A, D, b)
    F, Q, S = _reference(A, D, dt)
    Phi, Sigma = proc.transition(dt)
    assert np.abs(Phi.numpy() - F).max() < 1e-10
    assert np.abs(Sigma.numpy() - Q).max() < 1e-10
    assert np.abs(proc.covariance(dt).numpy() - Q).max() < 1e-10
    assert np.abs(proc.stationary_covariance().numpy() - S).max() < 1e-10
    x0 = torch.linspace(-1, 2, A.shape[0], dtype=F64)
    bb = np.zeros(A.shape[0]) if b is None else b.numpy()
    assert np.abs(proc.mean(x0, dt).numpy() - (bb + F @ (x0.numpy() - bb))).max() < 1e-10


def test_small_step_covariance_matches_ode_quadrature():
    # S - F S F^T cancels at small dt, so check small steps against the covariance ODE instead
    A, D = _nonsym_2d()
    An, Dn = A.numpy(), D.numpy()

    def rhs(_, q):
        Q = q.reshape(2, 2)
        return (-An @ Q - Q @ An.T + Dn).ravel()

    proc = OUProcess(A, D)
    for dt in [1e-6, 1e-3, 0.05]:
        sol = solve_ivp(rhs, (0, dt), np.zeros(4), method="DOP853", rtol=1e-13, atol=1e-20)
        Q = sol.y[:, -1].reshape(2, 2)
        err = np.abs(proc.covariance(dt).numpy() - Q).max() / np.abs(Q).max()
        assert err < 1e-10, (dt, err)


def test_batched_times_and_float32():
    A, D, b = _random_20d(1)
    proc = OUProcess(A, D, b)
    ts = torch.tensor([0.0, 0.3, 2.0, 11.0], dtype=F64)
    Phi, Sigma = proc.transition(ts)
    assert Phi.shape == Sigma.shape == (4, 20, 20)
    assert torch.allclose(Phi[0], torch.eye(20, dtype=F64)) and Sigma[0].abs().max() == 0
    for i, t in enumerate(ts.tolist()):
        assert torch.allclose(Phi[i], proc.transition(t)[0], atol=1e-13)
    x0 = torch.randn(3, 20, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert proc.mean(x0, ts).shape == (3, 4, 20)
    p32 = OUProcess(A.float(), D.float(), b.float())
    assert p32.transition(0.5)[1].dtype == torch.float32
    assert torch.allclose(p32.transition(0.5)[1].double(), proc.transition(0.5)[1], atol=1e-5)
    x = p32.sample(x0[0].float(), torch.linspace(0, 5, 50), n=4, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (4, 50, 20) and torch.isfinite(x).all()


def _plain_loop(proc, x0, times, z):
    """Reference sampler: one exact transition per step with the same standard-normal draws."""
    x = x0.clone()
    out = [x]
    for k in range(len(times) - 1):
        Phi, Sigma = proc.transition(float(times[k + 1] - times[k]))
        L = torch.linalg.cholesky(Sigma)
        x = proc.b + (x - proc.b) @ Phi.T + z[k] @ L.T
        out.append(x)
    return torch.stack(out, 1)


@pytest.mark.parametrize("uneven", [False, True])
def test_blocked_sampler_equals_plain_loop(uneven):
    A, D = _nonsym_2d()
    b = torch.tensor([1.0, -2.0], dtype=F64)
    proc = OUProcess(A, D, b)
    T, n = 500, 3
    if uneven:
        times = torch.cumsum(torch.rand(T, dtype=F64, generator=torch.Generator().manual_seed(3)) * 0.2 + 0.01, 0)
    else:
        times = torch.arange(T, dtype=F64) * 0.05
    x0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-3.0, 2.0]], dtype=F64)
    got = proc.sample(x0, times, generator=torch.Generator().manual_seed(7))
    z = torch.randn(T - 1, n, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    ref = _plain_loop(proc, x0, times, z)
    assert got.shape == (n, T, 2)
    assert torch.allclose(got, ref, atol=1e-10, rtol=0)
    # same seed, same result
    assert torch.equal(got, proc.sample(x0, times, generator=torch.Generator().manual_seed(7)))


def test_sampled_transition_covariance_within_standard_error():
    A, D, b = _random_20d(2)
    proc = OUProcess(A, D, b)
    n, dt = 40_000, 0.7
    x0 = torch.linspace(-2, 2, 20, dtype=F64)
    x = proc.sample(x0, torch.tensor([0.0, dt], dtype=F64), n=n, generator=torch.Generator().manual_seed(0))[:, 1]
    Phi, Sigma = proc.transition(dt)
    mu = b + Phi @ (x0 - b)
    # standard errors of the sample mean (sqrt(S_ii / n)) and of each covariance entry
    # (sqrt((S_ii S_jj + S_ij^2) / n)) for Gaussian data; allow 5 standard errors (max over 210 entries)
    se_mean = (Sigma.diagonal() / n).sqrt()
    assert ((x.mean(0) - mu).abs() / se_mean).max() < 5
    C = torch.cov(x.T)
    se_cov = ((Sigma.diagonal()[:, None] * Sigma.diagonal()[None, :] + Sigma**2) / n).sqrt()
    assert ((C - Sigma).abs() / se_cov).max() < 5


def test_uneven_grid_marginals_match_closed_form():
    # many paths over a jittered grid; the law at any time is N(mean(x0, t), covariance(t)) exactly
    A, D = _nonsym_2d()
    b = torch.tensor([0.5, -0.5], dtype=F64)
    proc = OUProcess(A, D, b)
    g = torch.Generator().manual_seed(1)
    times = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(torch.rand(120, dtype=F64, generator=g) * 0.02, 0)])
    x0 = torch.tensor([2.0, 1.0], dtype=F64)
    n = 20_000
    x = proc.sample(x0, times, n=n, generator=torch.Generator().manual_seed(2))
    for k in [10, 60, 120]:
        t = float(times[k] - times[0])
        mu, Sig = proc.mean(x0, t), proc.covariance(t)
        se_mean = (Sig.diagonal() / n).sqrt()
        assert ((x[:, k].mean(0) - mu).abs() / se_mean).max() < 5  # 5 standard errors
        se_cov = ((Sig.diagonal()[:, None] * Sig.diagonal()[None, :] + Sig**2) / n).sqrt()
        assert ((torch.cov(x[:, k].T) - Sig).abs() / se_cov).max() < 5


@pytest.mark.parametrize("method", ["factor", "dyadic"])
def test_irregular_grid_methods_are_exact(method):
    # without noise a path is the closed-form mean; with noise the law at the last time is the closed form
    A, D = _nonsym_2d()
    b = torch.tensor([1.0, -2.0], dtype=F64)
    g = torch.Generator().manual_seed(3)
    times = torch.cumsum(torch.rand(400, dtype=F64, generator=g) * 0.2 + 0.01, 0)
    x0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-3.0, 2.0]], dtype=F64)
    quiet = OUProcess(A, torch.zeros(2, 2, dtype=F64), b).sample(x0, times, method=method)
    assert (quiet - OUProcess(A, D, b).mean(x0, times - times[0])).abs().max() < 1e-11
    n, k = 20_000, 40
    x = OUProcess(A, D, b).sample(x0[1], times[:k], n=n, generator=torch.Generator().manual_seed(2), method=method)
    proc = OUProcess(A, D, b)
    t = float(times[k - 1] - times[0])
    mu, Sig = proc.mean(x0[1], t), proc.covariance(t)
    assert ((x[:, -1].mean(0) - mu).abs() / (Sig.diagonal() / n).sqrt()).max() < 5  # 5 standard errors
    se_cov = ((Sig.diagonal()[:, None] * Sig.diagonal()[None, :] + Sig**2) / n).sqrt()
    assert ((torch.cov(x[:, -1].T) - Sig).abs() / se_cov).max() < 5


def test_diagonal_method_for_symmetric_whitened_drift():
    # symmetric A with D = c I: independent scalar OU coordinates in the eigenbasis W = L U
    A = torch.tensor([[3.0, 2, 1], [2, 4, 2], [1, 2, 5]], dtype=F64)
    b = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    proc = OUProcess(A, 2.0, b)
    lam, W = proc._whitened_eigh()
    g = torch.Generator().manual_seed(3)
    times = torch.cumsum(torch.rand(200, dtype=F64, generator=g) * 0.2 + 0.01, 0)
    for dt in (0.013, 0.7):  # the construction has the exact transition law
        Phi, Sigma = proc.transition(dt)
        a, s2 = torch.exp(-lam * dt), -torch.expm1(-2 * lam * dt) / (2 * lam)
        assert torch.allclose(W @ torch.diag(a) @ torch.linalg.inv(W), Phi, atol=1e-13)
        assert torch.allclose(W @ torch.diag(s2) @ W.T, Sigma, atol=1e-13)
    x0 = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]], dtype=F64)
    got = proc.sample(x0, times, generator=torch.Generator().manual_seed(5), method="diagonal")
    # plain loop with the same draws
    z = torch.randn(199, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    v = torch.linalg.solve(W, (x0 - b).T).T
    ref = [x0]
    for k in range(199):
        dt = times[k + 1] - times[k]
        v = v * torch.exp(-lam * dt) + z[k] * torch.sqrt(-torch.expm1(-2 * lam * dt) / (2 * lam))
        ref.append(b + v @ W.T)
    assert torch.allclose(got, torch.stack(ref, 1), atol=1e-11, rtol=0)
    # auto picks it on a grid where every step differs; a non-normal whitened drift cannot use it
    assert torch.equal(proc.sample(x0, times, generator=torch.Generator().manual_seed(5)), got)
    with pytest.raises(ValueError, match="diagonal"):
        OUProcess(*_nonsym_2d()).sample(torch.zeros(2, dtype=F64), times, method="diagonal")


def test_stationary_start_and_long_run_moments():
    A, D = _nonsym_2d()
    proc = OUProcess(A, D, torch.tensor([1.0, 2.0], dtype=F64))
    n = 20_000
    x = proc.sample(None, torch.tensor([0.0, 0.1, 3.0], dtype=F64), n=n, generator=torch.Generator().manual_seed(4))
    S = proc.stationary_covariance()
    se_cov = ((S.diagonal()[:, None] * S.diagonal()[None, :] + S**2) / n).sqrt()
    for k in range(3):  # stationary at every time; 5 standard errors
        assert ((torch.cov(x[:, k].T) - S).abs() / se_cov).max() < 5


def test_log_prob_matches_direct_gaussian():
    A, D, b = _random_20d(3)
    A, D, b = A[:5, :5] + 0.5 * torch.eye(5, dtype=F64), D[:5, :5], b[:5]
    proc = OUProcess(A, D, b)
    grids = (torch.tensor([0.0, 0.2, 0.5, 0.7, 1.9, 2.0], dtype=F64), torch.linspace(0, 2, 6, dtype=F64))
    for times in grids:  # irregular and uniform
        path = proc.sample(torch.zeros(5, dtype=F64), times, n=2, generator=torch.Generator().manual_seed(0))
        got = proc.log_prob(path, times)
        for i in range(2):
            ref = 0.0
            for k in range(len(times) - 1):
                F, Q, _ = _reference(A, D, float(times[k + 1] - times[k]))
                mean = b.numpy() + F @ (path[i, k].numpy() - b.numpy())
                ref += multivariate_normal(mean, Q).logpdf(path[i, k + 1].numpy())
            assert abs(float(got[i]) - ref) < 1e-8 * max(1.0, abs(ref))
        assert proc.log_prob(path[0], times).shape == ()


def test_log_prob_gradients():
    A, D = _nonsym_2d()
    b = torch.tensor([0.3, -0.1], dtype=F64)
    times = torch.tensor([0.0, 0.4, 0.5, 1.3], dtype=F64)
    path = OUProcess(A, D, b).sample(torch.ones(2, dtype=F64), times, n=2, generator=torch.Generator().manual_seed(0))

    def f(A_, D_, b_):
        return OUProcess(A_, 0.5 * (D_ + D_.T), b_).log_prob(path, times).sum()

    inputs = tuple(t.clone().requires_grad_(True) for t in (A, D, b))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)


def test_maximum_likelihood_gradient_vanishes_at_truth_on_average():
    # E[grad log p] = 0 at the true parameters: check the mean score over many paths is within 5 SE of 0
    A, D = _nonsym_2d()
    b = torch.tensor([0.2, 0.1], dtype=F64)
    times = torch.linspace(0, 3, 16, dtype=F64)
    paths = OUProcess(A, D, b).sample(None, times, n=4000, generator=torch.Generator().manual_seed(5))
    scores = []
    for group in paths.reshape(40, 100, 16, 2):  # 40 independent group sums of 100 scores each
        Ar, Dr, br = (t.clone().requires_grad_(True) for t in (A, D, b))
        lp = OUProcess(Ar, Dr, br).log_prob(group, times).sum()
        scores.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(lp, (Ar, Dr, br))]))
    scores = torch.stack(scores)
    m, se = scores.mean(0), scores.std(0) / math.sqrt(scores.shape[0])
    assert ((m.abs() / se) < 5).all()


# --- integrators ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("a_dt", [0.1, 0.5, 1.0])
def test_euler_maruyama_stationary_variance_bias(a_dt):
    a, Dv = 2.0, 3.0
    dt = a_dt / a
    n = 100_000
    g = torch.Generator().manual_seed(0)
    # start at the true stationary law; the chain's variance then moves to its own fixed point as
    # (1 - a dt)^(2k): after ceil(6 / (a dt)) steps the remainder is below 1e-5 of the bias
    steps = int(math.ceil(6 / a_dt))
    x0 = torch.randn(n, 1, dtype=F64, generator=g) * math.sqrt(Dv / (2 * a))
    times = torch.arange(steps + 1, dtype=F64) * dt
    x = euler_maruyama(lambda t, x: -a * x, Dv, x0, times, generator=g)[:, -1, 0]
    predicted = Dv / (2 * a) * 2 / (2 - a * dt)
    v = float(x.var())
    se = predicted * math.sqrt(2 / (n - 1))  # standard error of a Gaussian sample variance
    assert abs(v - predicted) < 5 * se
    assert abs(v - Dv / (2 * a)) > 5 * se  # the bias is detectable at this sample size


def test_exponential_integrator_exact_for_linear_drift_and_predicted_bias():
    a, c, Dv, dt = 2.0, 1.0, 3.0, 0.5
    n = 100_000
    times = torch.arange(31, dtype=F64) * dt
    g = torch.Generator().manual_seed(1)
    x = exponential_integrator(torch.tensor([[a]], dtype=F64), None, Dv, torch.zeros(1, dtype=F64), times, n=n, generator=g)[:, -1, 0]
    truth = Dv / (2 * a)
    se = truth * math.sqrt(2 / (n - 1))
    assert abs(float(x.var()) - truth) < 5 * se  # 5 standard errors; EM at a dt = 1 would be twice the truth
    # frozen nonlinearity f(x) = -c x: predicted stationary variance of the scheme
    x = exponential_integrator(
        torch.tensor([[a]], dtype=F64), lambda t, x: -c * x, Dv, torch.zeros(1, dtype=F64), times, n=n, generator=g
    )[:, -1, 0]
    e = math.exp(-a * dt)
    gain = e - c * (1 - e) / a
    predicted = Dv * (1 - e * e) / (2 * a) / (1 - gain**2)
    se = predicted * math.sqrt(2 / (n - 1))
    assert abs(float(x.var()) - predicted) < 5 * se
    assert abs(predicted - Dv / (2 * (a + c))) > 5 * se  # distinguishable from the true law


def test_euler_maruyama_matches_its_exact_discrete_law():
    # for a linear drift EM is a Gaussian AR(1): mean (I - A dt)^k (x0 - b) + b and covariance
    # C_{k+1} = (I - A dt) C_k (I - A dt)^T + D dt; check the sampled law against it (5 SE)
    A, D = _nonsym_2d()
    b = torch.tensor([1.0, -1.0], dtype=F64)
    dt, steps, n = 0.05, 40, 20_000
    times = torch.arange(steps + 1, dtype=F64) * dt
    x0 = torch.tensor([2.0, 0.0], dtype=F64)
    em = euler_maruyama(lambda t, x: -(x - b) @ A.T, D, x0, times, n=n, generator=torch.Generator().manual_seed(0))
    G = torch.eye(2, dtype=F64) - A * dt
    mu, C = x0 - b, torch.zeros(2, 2, dtype=F64)
    for _ in range(steps):
        mu, C = G @ mu, G @ C @ G.T + D * dt
    mu = mu + b
    se_mean = (C.diagonal() / n).sqrt()
    assert ((em[:, -1].mean(0) - mu).abs() / se_mean).max() < 5
    se_cov = ((C.diagonal()[:, None] * C.diagonal()[None, :] + C**2) / n).sqrt()
    assert ((torch.cov(em[:, -1].T) - C).abs() / se_cov).max() < 5
    # and the discrete law differs from the exact one by the predicted O(dt) bias
    exact = OUProcess(A, D, b).covariance(float(times[-1]))
    assert (C - exact).abs().max() > 5 * se_cov.max()


# --- bad input -----------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    A, D = _nonsym_2d()
    with pytest.raises(ValueError, match="positive real part"):
        OUProcess(torch.tensor([[1.0, 0.0], [0.0, -0.5]], dtype=F64), D)
    with pytest.raises(ValueError, match="positive real part"):
        OUProcess(torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64), D)  # eigenvalues +-i: not stable
    with pytest.raises(ValueError, match="positive real part"):
        OUProcess(torch.zeros(2, 2, dtype=F64), D)
    with pytest.raises(ValueError, match="positive semi-definite"):
        OUProcess(A, torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="symmetric"):
        OUProcess(A, torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="A must have finite entries; got NaN"):
        OUProcess(torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=F64), D)
    with pytest.raises(ValueError, match="D must have finite entries; got Inf"):
        OUProcess(A, torch.tensor([[float("inf"), 0.0], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="b must have finite entries"):
        OUProcess(A, D, torch.tensor([0.0, float("nan")], dtype=F64))
    with pytest.raises(ValueError, match="square"):
        OUProcess(torch.ones(2, 3, dtype=F64), D)
    with pytest.raises(ValueError, match=r"D must have shape \(2, 2\)"):
        OUProcess(A, torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        OUProcess(A, D, torch.zeros(3, dtype=F64))
    with pytest.raises(TypeError, match="float32 or float64"):
        OUProcess(A.half(), D)
    with pytest.raises(TypeError, match="real-valued"):
        OUProcess(A, torch.eye(2, dtype=torch.complex128))

    proc = OUProcess(A, D)
    x0 = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="strictly increasing"):
        proc.sample(x0, torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=F64))
    with pytest.raises(ValueError, match="strictly increasing"):
        proc.log_prob(torch.zeros(3, 2, dtype=F64), torch.tensor([0.0, 2.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="times must be a 1-D"):
        proc.sample(x0, torch.zeros(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="times must have finite"):
        proc.sample(x0, torch.tensor([0.0, float("nan")], dtype=F64))
    with pytest.raises(ValueError, match="last dimension d = 2"):
        proc.sample(torch.zeros(3, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="x0 must have finite"):
        proc.sample(torch.tensor([0.0, float("nan")], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="does not match"):
        proc.sample(torch.zeros(4, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), n=3)
    with pytest.raises(ValueError, match="method must be"):
        proc.sample(x0, torch.tensor([0.0, 1.0, 3.0], dtype=F64), method="fast")
    with pytest.raises(ValueError, match="n is required"):
        proc.sample(None, torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        proc.sample(x0, torch.tensor([0.0, 1.0], dtype=F64), n=0)
    with pytest.raises(ValueError, match="time points"):
        proc.log_prob(torch.zeros(4, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="non-negative"):
        proc.covariance(-1.0)
    singular = OUProcess(A, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64) * 0)
    with pytest.raises(ValueError, match="positive-definite"):
        singular.log_prob(torch.zeros(2, 2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="drift"):
        euler_maruyama(lambda t, x: x[:, :1], 1.0, x0, torch.tensor([0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="positive real part"):
        exponential_integrator(-A, None, D, x0, torch.tensor([0.0, 1.0], dtype=F64))


def test_singular_diffusion_still_samples():
    # PSD but singular D (noise on one coordinate only): sampling uses a PSD square root
    A, _ = _nonsym_2d()
    D = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    proc = OUProcess(A, D)
    x = proc.sample(torch.zeros(2, dtype=F64), torch.tensor([0.0, 1e-9, 1.0], dtype=F64), n=5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    S = sla.solve_continuous_lyapunov(A.numpy(), D.numpy())
    assert np.abs(proc.stationary_covariance().numpy() - S).max() < 1e-12


def test_mutating_the_inputs_after_construction_changes_nothing():
    # the process owns copies: in-place changes to the caller's arrays (or to what .A/.D/.b return) must not
    # reach transitions, sampling or the stationary law, whatever was cached before the change
    g = torch.Generator().manual_seed(0)
    M = torch.randn(4, 4, dtype=F64, generator=g)
    A = M @ M.T + 4 * torch.eye(4, dtype=F64)
    D = 2 * torch.eye(4, dtype=F64)
    b = torch.randn(4, dtype=F64, generator=g)
    proc = OUProcess(A, D, b)
    times = torch.linspace(0, 2, 9, dtype=F64)
    x0 = torch.zeros(3, 4, dtype=F64)
    before = (proc.transition(0.25), proc.stationary_covariance(), proc.mean(x0, 0.5),
              proc.sample(x0, times, generator=torch.Generator().manual_seed(1)))
    A.mul_(100)
    D.mul_(3)
    b.add_(5)
    proc.A.mul_(7)
    proc.b.add_(1)
    after = (proc.transition(0.25), proc.stationary_covariance(), proc.mean(x0, 0.5),
             proc.sample(x0, times, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(before[0][0], after[0][0]) and torch.equal(before[0][1], after[0][1])
    for x, y in zip(before[1:], after[1:]):
        assert torch.equal(x, y)
    # and a fresh process on the changed arrays is a different process
    assert not torch.equal(OUProcess(A, D, b).transition(0.25)[0], after[0][0])


def test_transition_cache_keeps_to_its_byte_budget():
    from thermoai.thermo.ou import _TransitionCache

    A = torch.eye(3, dtype=F64) * 2
    proc = OUProcess(A, 2.0)
    proc._cache = _TransitionCache(budget_bytes=3 * 3 * 3 * 8 * 2)  # room for two step lengths
    proc.sample(torch.zeros(3, dtype=F64), torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0], dtype=F64), method="factor")
    assert proc._cache.bytes <= proc._cache.budget_bytes
    ref = OUProcess(A, 2.0).transition(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))
    got = proc.transition(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64))
    assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
