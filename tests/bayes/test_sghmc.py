"""SGHMC: exact moments on the dense 10-D Gaussian, step-for-step torch.optim.SGD at T = 0, momenta."""

import pytest
import torch

from thermoai.bayes.sgmcmc import sghmc


def build(log_posterior, **kw):
    return sghmc.build(log_posterior, **({"lr": 0.01, "alpha": 1.0} | kw))


def with_cov(target, cov):
    return target.__class__(target.mean, cov, torch.linalg.inv(cov), target.eigvals)


def test_gaussian_moments(gaussian_target, sampler_check):
    # 4096 chains at once via vmap, lr 0.2, friction 1 (near critical damping of the slowest mode). The
    # SGHMC step is linear in (x, m) on a Gaussian, so the stationary covariance of the discretised
    # chain, C_h, is exact (Lyapunov equation). The draws must match C_h within 5 ESS-based standard
    # errors, and the true target within 5 standard errors plus the discretisation bias |C_h - cov|.
    target, h, alpha = gaussian_target, 0.2, 1.0
    x, _ = sampler_check.run(build(target.tree_log_prob, lr=h, alpha=alpha), target, 4096, 200, 30, 5)
    c_h = sampler_check.sghmc_stationary(target, h, alpha)[: target.dim, : target.dim]
    sampler_check.moments(x, with_cov(target, c_h)).assert_ok()
    sampler_check.moments(x, target, expected_mean=target.mean, expected_cov=c_h).assert_ok()
    assert (c_h - target.cov).abs().max() < 0.1 * target.cov.abs().max()


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)


def _sgd_vs_sghmc(lr, momentum, dampening, n_steps=50):
    torch.manual_seed(0)
    model = MLP().double()
    data = [(torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)) for _ in range(n_steps)]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def log_posterior(p, batch):
        x, y = batch
        out = torch.func.functional_call(model, p, (x,))
        return -((out - y) ** 2).mean(), torch.tensor([])

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, dampening=dampening)

    def sgd_step(batch):
        opt.zero_grad()
        (-log_posterior(dict(model.named_parameters()), batch)[0]).backward()
        opt.step()

    hyper = sghmc.sgd_hyperparameters(lr, momentum, dampening)
    transform = sghmc.build(log_posterior, temperature=0.0, momenta=0.0, **hyper)
    start = 0
    if dampening > 0:
        # torch's first step sets buf = grad (no dampening): start SGHMC from torch's state after it
        sgd_step(data[0])
        start = 1
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        buffers = {k: opt.state[v]["momentum_buffer"] for k, v in model.named_parameters()}
        state = sghmc.init(params, momenta=sghmc.momenta_from_sgd_buffer(buffers))
    else:
        state = transform.init(params)
    for batch in data[start:]:
        sgd_step(batch)
        state, _ = transform.update(state, batch, inplace=True)
        for k, v in model.named_parameters():
            torch.testing.assert_close(state.params[k], v.detach(), rtol=0, atol=1e-10)
    return state


def test_temperature_zero_equals_torch_sgd_with_momentum():
    _sgd_vs_sghmc(lr=0.05, momentum=0.9, dampening=0.0)


def test_temperature_zero_equals_torch_sgd_with_dampening():
    _sgd_vs_sghmc(lr=0.05, momentum=0.9, dampening=0.5)


def test_sgd_hyperparameters_errors():
    with pytest.raises(ValueError, match="dampening"):
        sghmc.sgd_hyperparameters(0.1, 0.9, 1.0)
    with pytest.raises(ValueError, match="lr"):
        sghmc.sgd_hyperparameters(-0.1)


def test_momenta_initialisation(contract):
    params = contract.tree_params()
    zero = build(contract.quadratic, temperature=0.0).init(params)
    assert all(torch.equal(m, torch.zeros_like(m)) for m in zero.momenta.values())  # T = 0: at rest
    filled = build(contract.quadratic, momenta=0.5).init(params)
    assert all(torch.equal(m, torch.full_like(m, 0.5)) for m in filled.momenta.values())
    # None draws from the stationary law N(0, T sigma^2): check the variance within 5 standard errors
    big = {"w": torch.zeros(200_000, dtype=torch.float64)}
    drawn = build(contract.quadratic, sigma=2.0, temperature=0.25).init(big, generator=torch.Generator().manual_seed(0))
    var = drawn.momenta["w"].var()
    assert abs(var - 1.0) < 5 * (2 / 200_000) ** 0.5
    given = {"w": torch.ones(3, 2), "b": torch.ones(2)}  # float32 given, float64 params: cast, copied
    state = build(contract.quadratic, momenta=given).init(params)
    assert state.momenta["w"].dtype == torch.float64 and state.momenta["w"] is not given["w"]
    with pytest.raises(ValueError, match="momenta"):
        build(contract.quadratic, momenta={"w": torch.ones(3, 2)}).init(params)
    with pytest.raises(ValueError, match="shape"):
        build(contract.quadratic, momenta={"w": torch.ones(2, 3), "b": torch.ones(2)}).init(params)


def test_contract(contract):
    contract.inplace(build)
    contract.dtype(build, torch.float64)
    contract.dtype(build, torch.float32)
    contract.fresh_init(build)
    contract.bad_inputs(build)
    for name in ("alpha", "beta"):
        with pytest.raises(ValueError, match=name):
            build(contract.quadratic, **{name: -1.0})
    with pytest.raises(ValueError, match="sigma"):
        build(contract.quadratic, sigma=0.0)
