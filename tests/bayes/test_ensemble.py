"""Ensembles: vmapped members equal separate runs; deep ensemble = K torch SGD runs; the unbiased
ensemble's final states are posterior samples; init/update errors."""

import pytest
import torch

from thermoai.bayes import ensemble
from thermoai.bayes.sgmcmc import baoa, psgld, sghmc, sgld, sgnht


def quadratic(p, batch=None):
    return -0.5 * sum(((v - 1.0) ** 2).sum() for v in p.values()), {"norm": sum((v**2).sum() for v in p.values())}


def member_params(k, dtype=torch.float64):
    gen = torch.Generator().manual_seed(k)
    return {"w": torch.randn(3, 2, dtype=dtype, generator=gen), "b": torch.randn(2, dtype=dtype, generator=gen)}


def test_members_equal_separate_runs_at_zero_temperature():
    # deterministic members (T = 0): the vmapped ensemble must equal K separate fused runs. Schedules
    # for lr and temperature exercise the batched-step path (one value per member inside vmap).
    transform = sghmc.build(quadratic, lr=lambda s: 0.1 / (1 + 0.1 * s), alpha=0.5, temperature=lambda s: 0.0 * s)
    ens = ensemble.build(transform, 3)
    state = ens.init([member_params(k) for k in range(3)])
    singles = [transform.init(member_params(k)) for k in range(3)]
    for _ in range(10):
        state, aux = ens.update(state, None)
        singles = [transform.update(s, None)[0] for s in singles]
    assert aux["norm"].shape == (3,)
    for k in range(3):
        member = ensemble.member(state, k)
        for name in ("w", "b"):
            torch.testing.assert_close(member.params[name], singles[k].params[name], rtol=0, atol=1e-12)
        assert int(member.step) == 10


def test_deep_ensemble_equals_torch_sgd_runs():
    # deep_ensemble is SGHMC at T = 0: with the SGD mapping each member is torch.optim.SGD with momentum
    lr, momentum, k_members = 0.05, 0.9, 3
    hyper = sghmc.sgd_hyperparameters(lr, momentum)
    ens = ensemble.deep_ensemble(quadratic, n_members=k_members, **hyper)
    state = ens.init(member_params)
    for _ in range(20):
        state, _ = ens.update(state, None, inplace=True)
    for k in range(k_members):
        p = {n: v.clone().requires_grad_(True) for n, v in member_params(k).items()}
        opt = torch.optim.SGD(p.values(), lr=lr, momentum=momentum)
        for _ in range(20):
            opt.zero_grad()
            (-quadratic(p)[0]).backward()
            opt.step()
        for name in p:
            torch.testing.assert_close(state.params[name][k], p[name].detach(), rtol=0, atol=1e-10)


def test_unbiased_ensemble_final_states_are_posterior_samples(gaussian_target, sampler_check):
    # The posteriors paper's ensemble: each member is SGHMC at T = 1/N on the batch-averaged log posterior
    # log p / N; the final states of K independent chains are K draws from (nearly) p. With 4096 members
    # the K final states are independent, so the standard errors use ESS = K; the tolerance adds the exact
    # discretisation bias of the chain (Lyapunov equation for the linear SGHMC step).
    target, n_data, h, alpha, k_members = gaussian_target, 4, 0.5, 1.0, 4096
    log_posterior = lambda p, b: tuple(  # noqa: E731
        v / n_data if i == 0 else v for i, v in enumerate(target.tree_log_prob(p, b))
    )
    ens = ensemble.unbiased_ensemble(log_posterior, lr=h, num_data=n_data, n_members=k_members, alpha=alpha)
    torch.manual_seed(0)
    x0 = target.mean + 2.0 * torch.randn(k_members, target.dim, dtype=torch.float64)
    state = ens.init(target.unflatten(x0), stacked=True)
    for _ in range(300):
        state, _ = ens.update(state, None, inplace=True)
    final = target.flatten(state.params)  # (K, d)
    c_h = sampler_check.sghmc_stationary(target, h, alpha, grad_scale=1 / n_data, temperature=1 / n_data)
    c_h = c_h[: target.dim, : target.dim]
    mean, cov = final.mean(0), torch.cov(final.T)
    mean_se = torch.sqrt(torch.diagonal(target.cov) / k_members)
    sd = torch.sqrt(torch.diagonal(target.cov))
    cov_se = torch.sqrt((target.cov**2 + torch.outer(sd**2, sd**2)) / k_members)  # Gaussian: var of S_ij
    assert ((mean - target.mean).abs() < 5 * mean_se).all()
    assert ((cov - target.cov).abs() < 5 * cov_se + (c_h - target.cov).abs()).all()
    # a deep ensemble from the same starts collapses onto the mode instead
    deep = ensemble.deep_ensemble(log_posterior, lr=h, n_members=k_members, alpha=alpha)
    d_state = deep.init(target.unflatten(x0), stacked=True)
    for _ in range(300):
        d_state, _ = deep.update(d_state, None, inplace=True)
    assert torch.cov(target.flatten(d_state.params).T).diagonal().max() < 1e-3


def test_inplace_and_generator_reproducible():
    transform = sgld.build(quadratic, lr=0.05)
    ens = ensemble.build(transform, 4)
    a = ens.init([member_params(k) for k in range(4)])
    b = ens.init([member_params(k) for k in range(4)])
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(3):
        a, _ = ens.update(a, None, inplace=False, generator=ga)
        b2, _ = ens.update(b, None, inplace=True, generator=gb)
        assert b2 is b
    for x, y in zip(a.params.values(), b.params.values()):
        assert torch.equal(x, y)
    # members got different noise
    assert not torch.equal(a.params["b"][0] - member_params(0)["b"], a.params["b"][1] - member_params(1)["b"])
    assert a.step.tolist() == [3, 3, 3, 3]


def test_init_forms_dtype_and_fresh_state():
    transform = sghmc.build(quadratic, lr=0.1)
    ens = ensemble.build(transform, 2)
    from_list = ens.init([member_params(0), member_params(1)])
    from_fn = ens.init(member_params)
    stacked = ensemble.stack([member_params(0), member_params(1)])
    from_stacked = ens.init(stacked, stacked=True)
    for s in (from_list, from_fn, from_stacked):
        assert s.params["w"].shape == (2, 3, 2) and s.params["w"].dtype == torch.float64
        assert s.step.tolist() == [0, 0] and s.step.dtype == torch.int64
        assert s.log_posterior.dtype == torch.float64 and torch.isnan(s.log_posterior).all()
    ens.update(from_list, None, inplace=True)
    again = ens.init(member_params)
    assert again.step.tolist() == [0, 0]
    # members own their storage (no expanded views): in-place writes to one member stay there
    again.step[0] += 5
    assert again.step.tolist() == [5, 0]
    assert len(ensemble.members(from_list)) == 2


def test_batch_per_member():
    def lp(p, batch):
        return -0.5 * ((p - batch) ** 2).sum(), torch.tensor([])

    ens = ensemble.build(sgld.build(lp, lr=0.5, temperature=0.0), 2, batch_per_member=True)
    state = ens.init([torch.zeros(3), torch.zeros(3)])
    targets = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    for _ in range(40):
        state, _ = ens.update(state, targets)
    torch.testing.assert_close(state.params, targets)


def test_errors():
    transform = sgld.build(quadratic, lr=0.1)
    with pytest.raises(ValueError, match="n_members"):
        ensemble.build(transform, 0)
    ens = ensemble.build(transform, 2)
    with pytest.raises(ValueError, match="2 parameter trees"):
        ens.init([member_params(0)])
    with pytest.raises(ValueError, match="structure|shape"):
        ens.init([member_params(0), {"w": torch.zeros(3, 2, dtype=torch.float64)}])
    with pytest.raises(ValueError, match="leading dimension"):
        ens.init(member_params(0), stacked=True)
    with pytest.raises(TypeError, match="list of n_members"):
        ens.init(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="leading dimension"):
        ens.update(ensemble.build(transform, 3).init(member_params), None)
    with pytest.raises(ValueError, match="num_data"):
        ensemble.unbiased_ensemble(quadratic, lr=0.1, num_data=0, n_members=2)

    def nan_member(p, batch):  # member 1 starts at a point where the gradient is NaN
        return -(torch.sqrt(p.abs()) * 0 + p**2).sum(), torch.tensor([])

    bad = ensemble.build(sgld.build(nan_member, lr=0.1, temperature=0.0), 2)
    state = bad.init([torch.ones(2), torch.tensor([0.0, 1.0])])
    before = state.params.clone()
    with pytest.raises(ValueError, match="NaN"):
        bad.update(state, None, inplace=True)
    assert torch.equal(state.params, before)  # the in-place update did not write the bad step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", [sgld, sghmc, sgnht, baoa, psgld])
def test_states_follow_params_on_cuda(method):
    # posteriors 0.1.3 defect 6: scalars created with the default dtype on the CPU
    p = {k: v.cuda() for k, v in member_params(0).items()}
    transform = method.build(quadratic, lr=0.01)
    for state in (transform.init(p), transform.update(transform.init(p), None)[0]):
        for leaf in state:
            for x in (leaf.values() if isinstance(leaf, dict) else [leaf]):
                assert x.is_cuda and (x.dtype == torch.float64 or x.dtype == torch.int64)
    ens = ensemble.build(transform, 2)
    state, _ = ens.update(ens.init([p, p]), None, inplace=True)
    assert state.step.is_cuda and state.params["w"].shape == (2, 3, 2)
