"""The dense Gaussian posteriors of thermoai.bayes (Laplace dense Fisher/GGN/Hessian, VI dense, EKF dense
Fisher/GGN) drawing their samples through a simulated circuit (``sample(..., sampler=circuit_sampler())``).

Tolerances: for ``n`` independent draws of a d-dimensional Gaussian, ``2 n KL(fitted || true)`` is
asymptotically chi-square with ``k = d + d (d + 1) / 2`` degrees of freedom (mean and covariance fitted), so
the test allows ``KL <= (k + 5 sqrt(2 k)) / (2 n_eff)``. Reads are taken ``interval`` apart on one chain: the
slowest mode correlates as ``rho = exp(-interval / t_slow)`` between reads, and ``n_eff = n (1 - rho) / (1 + rho)``
(the AR(1) variance inflation of a mean; second moments inflate by less).
"""

from __future__ import annotations

import math

import pytest
import torch

import laplace_models as M
from thermoai import tree as T
from thermoai.bayes._common import flat_rows
from thermoai.bayes.ekf import dense_fisher as ekf_fisher
from thermoai.bayes.ekf import dense_ggn as ekf_ggn
from thermoai.bayes.laplace import dense_fisher, dense_ggn, dense_hessian
from thermoai.bayes.vi import dense as vi_dense
from thermoai.thermo.circuits import circuit_sampler
from thermoai.thermo.circuits._common import gaussian_kl
from thermoai.thermo.device import Cost, Device

F64 = torch.float64
N = 40_000
SHAPE = (N // 4, 4)  # a two-dimensional sample_shape: N draws


def _linear_stream(dim=6, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=F64)
    y = x @ torch.randn(dim, generator=g, dtype=F64) + 0.5 * torch.randn(n, generator=g, dtype=F64)
    return x, y


def _gauss_loglik(params, batch):
    x, y = batch
    r = y - x @ params["w"]
    return (-0.5 * r * r / 0.25).sum(), torch.tensor([])


def _lin_forward(params, batch):
    return (batch[0] @ params["w"])[:, None], torch.tensor([])


def _lin_outer(z, batch):
    return (-0.5 * (batch[1] - z[:, 0]) ** 2 / 0.25).sum()


def _states():
    """``name -> (sample function, state, mean (d,), covariance (d, d), extra sample kwargs)``: each method's
    own Gaussian."""
    params, batch = M.make_problem()
    out = {}
    lap = {
        "laplace_dense_fisher": dense_fisher.build(M.log_posterior, prior_precision=1.0),
        "laplace_dense_ggn": dense_ggn.build(M.forward, M.outer_sum, prior_precision=1.0),
        "laplace_dense_hessian": dense_hessian.build(M.log_posterior, init_prec=10.0, epsilon=1e-3),
    }
    for name, tr in lap.items():
        state, _ = tr.update(tr.init(params), batch)
        temperature = 2.0 if name == "laplace_dense_fisher" else 1.0  # tempered: covariance T prec^-1
        cov = temperature * torch.linalg.inv(state.prec)
        out[name] = (dense_fisher.sample, state, T.tree_ravel(state.params), cov, {"temperature": temperature})
    d = T.tree_size(params)
    g = torch.Generator().manual_seed(3)
    L = torch.tril(0.05 * torch.randn(d, d, generator=g, dtype=F64), -1) + torch.diag(0.2 + 0.3 * torch.rand(d, generator=g, dtype=F64))
    L[1, 1] = -L[1, 1]  # a negative diagonal entry: the same L L^T
    vi = vi_dense.init(params, init_L=L)
    Lq = vi_dense.L_from_flat(vi.L_factor)
    out["vi_dense"] = (vi_dense.sample, vi, T.tree_ravel(vi.params), Lq @ Lq.T, {})
    x, y = _linear_stream()
    p0 = {"w": torch.zeros(x.shape[1], dtype=F64)}
    for name, tr in {"ekf_dense_fisher": ekf_fisher.build(_gauss_loglik, lr=1.0, init_cov=1.0),
                     "ekf_dense_ggn": ekf_ggn.build(_lin_forward, _lin_outer, init_cov=1.0)}.items():
        state = tr.init(p0)
        for i in range(0, x.shape[0], 10):
            state, _ = tr.update(state, (x[i:i + 10], y[i:i + 10]))
        out[name] = (ekf_fisher.sample, state, T.tree_ravel(state.params), state.cov.clone(), {})
    return out


STATES = _states()


def _ideal(d):
    return Device(n_cells=d, dac_bits=30, adc_bits=24, readout_noise=0.0, mismatch=0.0)


def _tolerance(d, n_eff):
    k = d + d * (d + 1) / 2
    return (k + 5 * math.sqrt(2 * k)) / (2 * n_eff)


def _fit(flat):
    return flat.mean(0), torch.cov(flat.T)


def _draw(name, design, device, reads_apart=6.0, seed=0):
    """Draws of ``name``'s posterior through the circuit, reads ``reads_apart`` slowest relaxation times
    apart; returns flat samples (N, d), the tree, the cost, n_eff and the circuit."""
    fn, state, mean, cov, kw = STATES[name]
    probe = circuit_sampler(design, device)
    prec = torch.linalg.inv(cov)
    circuit = probe.circuit(mean, 0.5 * (prec + prec.mT))
    interval = reads_apart * circuit.slowest_relaxation_time
    sampler = circuit_sampler(design, device, interval=interval)
    tree, cost = fn(state, SHAPE, generator=torch.Generator().manual_seed(seed), sampler=sampler, **kw)
    rho = math.exp(-reads_apart)
    return flat_rows(T.tree_map(lambda v: v.reshape(N, *v.shape[2:]), tree), N), tree, cost, N * (1 - rho) / (1 + rho), circuit


@pytest.mark.parametrize("design", ["rc", "active"])
@pytest.mark.parametrize("name", sorted(STATES))
def test_ideal_circuit_draws_match_the_methods_gaussian(name, design):
    fn, state, mean, cov, kw = STATES[name]
    d = mean.numel()
    flat, tree, cost, n_eff, _ = _draw(name, design, _ideal(d))
    # leaves sample_shape + leaf.shape, in the parameters' dtype
    for leaf, p in zip(T.leaves(tree), T.leaves(state.params)):
        assert leaf.shape == torch.Size(SHAPE) + p.shape and leaf.dtype == p.dtype
    m_hat, S_hat = _fit(flat)
    kl = gaussian_kl(m_hat, S_hat, mean, torch.linalg.inv(cov))
    assert kl <= _tolerance(d, n_eff), (name, design, kl, _tolerance(d, n_eff))
    assert isinstance(cost, Cost) and cost.time > 0 and cost.energy > 0
    # without a sampler: the digital draws, unchanged (a tree, not a pair)
    digital = fn(state, (3,), generator=torch.Generator().manual_seed(1), **kw)
    assert not isinstance(digital, tuple) and T.leaves(digital)[0].shape[0] == 3


@pytest.mark.parametrize("name", sorted(STATES))
def test_nonideal_device_error_is_the_circuits_predicted_stationary_law(name):
    """A chip with 8-bit DACs, 2 % mismatch on every array, 15 % too much noise amplitude, readout noise and a 10-bit
    ADC: the draws follow the circuit's predicted stationary law, which is measurably not the posterior."""
    fn, state, mean, cov, kw = STATES[name]
    d = mean.numel()
    chip = Device(n_cells=d, dac_bits=8, mismatch=0.02, noise_scale=1.15, readout_noise=0.02, adc_bits=10, seed=5)
    flat, _, _, n_eff, circuit = _draw(name, "rc", chip, seed=2)
    m_pred, S_pred = circuit.stationary_law(programmed=True, readout=True)
    m_hat, S_hat = _fit(flat)
    tol = _tolerance(d, n_eff)
    P_pred = torch.linalg.inv(S_pred)
    assert gaussian_kl(m_hat, S_hat, m_pred, 0.5 * (P_pred + P_pred.mT)) <= tol
    exact = torch.linalg.inv(cov)
    assert gaussian_kl(m_pred, S_pred, mean, exact) > 10 * tol  # the device error is real...
    assert gaussian_kl(m_hat, S_hat, mean, exact) > 5 * tol  # ...and seen in the draws


def test_draws_are_the_samplers_own_and_the_cost_passes_through():
    fn, state, mean, cov, kw = STATES["laplace_dense_ggn"]
    dev = Device(n_cells=mean.numel())
    sampler = circuit_sampler("active", dev, chains=2)
    tree, cost = fn(state, (5, 2), generator=torch.Generator().manual_seed(4), sampler=sampler)
    own, own_cost = sampler(mean, state.prec, 10, torch.Generator().manual_seed(4))
    assert torch.equal(flat_rows(T.tree_map(lambda v: v.reshape(10, *v.shape[2:]), tree), 10), own)
    assert cost == own_cost
    # one draw: sample_shape ()
    one, _ = fn(state, (), generator=torch.Generator().manual_seed(4), sampler=circuit_sampler("active", dev))
    assert all(a.shape == p.shape for a, p in zip(T.leaves(one), T.leaves(state.params)))


def test_sampler_arguments_are_checked():
    fn, state, mean, cov, kw = STATES["laplace_dense_fisher"]
    d = mean.numel()
    with pytest.raises(ValueError, match="temperature must be positive with a sampler"):
        fn(state, (4,), temperature=0.0, sampler=circuit_sampler())
    with pytest.raises(TypeError, match="sampler must be a callable"):
        fn(state, (4,), sampler=3)
    with pytest.raises(ValueError, match=r"sampler must return samples of shape \(4, %d\)" % d):
        fn(state, (4,), sampler=lambda m, p, n, g: (torch.zeros(n, d + 1), Cost()))
    with pytest.raises(TypeError, match="pair"):
        fn(state, (4,), sampler=lambda m, p, n, g: torch.zeros(n, d))
    with pytest.raises(ValueError, match="NaN"):
        fn(state, (4,), sampler=lambda m, p, n, g: (torch.full((n, d), math.nan), Cost()))
    with pytest.raises(ValueError, match="at least one draw"):
        fn(state, (0,), sampler=circuit_sampler())
    with pytest.raises(ValueError, match="n_cells"):  # a device too small for d
        fn(state, (4,), sampler=circuit_sampler(device=Device(n_cells=d - 1)))
    with pytest.raises(TypeError, match="unexpected keyword"):
        circuit_sampler(temperature=2.0)
    bad = STATES["vi_dense"][1]._replace(L_factor=torch.zeros_like(STATES["vi_dense"][1].L_factor))
    with pytest.raises((ValueError, RuntimeError)):
        vi_dense.sample(bad, (4,), sampler=circuit_sampler())


def test_float32_parameters_get_float32_draws_and_vmap_is_refused():
    params, batch = M.make_problem(torch.float32)
    tr = dense_ggn.build(M.forward, M.outer_sum, prior_precision=1.0)
    state, _ = tr.update(tr.init(params), batch)
    tree, cost = dense_fisher.sample(state, (7,), generator=torch.Generator().manual_seed(0), sampler=circuit_sampler())
    for leaf, p in zip(T.leaves(tree), T.leaves(params)):
        assert leaf.dtype == torch.float32 and leaf.shape == (7, *p.shape)
    assert cost.time > 0 and cost.energy > 0
    stacked = T.tree_map(lambda a: torch.stack([a, a]), state)
    with pytest.raises(ValueError, match="cannot run under torch.func transforms"):
        torch.vmap(lambda s: dense_fisher.sample(s, (4,), sampler=circuit_sampler())[0], randomness="different")(stacked)
