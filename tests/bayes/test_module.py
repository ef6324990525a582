"""nn.Module helpers: functional call over a parameter tree, Bayes over a subset (last layer)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import thermoai.bayes as bayes
from thermoai import tree as T
from thermoai.bayes import laplace, module, vi


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_package_exports_every_subpackage():
    for name in ("sgmcmc", "vi", "laplace", "ekf", "ensemble", "diagnostics", "predictive", "module", "adam"):
        assert hasattr(bayes, name), name


def test_functional_matches_module_and_does_not_touch_it():
    model = small_model()
    x, _ = data()
    params, forward = module.functional(model)
    torch.testing.assert_close(forward(params, x), model(x))
    shifted = {k: v + 1.0 for k, v in params.items()}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = forward(shifted, x)
    assert not torch.allclose(out, model(x))
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())


def test_last_layer_subset_gradients_and_forward():
    model = small_model()
    x, y = data()
    names = module.last_layer(model)
    assert names == ["2.weight", "2.bias"]
    sub, forward = module.subset(model, names)
    assert set(sub) == {"2.weight", "2.bias"}
    torch.testing.assert_close(forward(sub, x), model(x))
    # the function depends on the subset only through sub: its gradient equals autograd on the module
    loss = lambda s: nn.functional.cross_entropy(forward(s, x), y)  # noqa: E731
    grads = torch.func.grad(loss)(sub)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    for k in sub:
        torch.testing.assert_close(grads[k], dict(model.named_parameters())[k].grad)
    # prefix and predicate forms select the same
    assert set(module.subset(model, "2.")[0]) == set(sub)
    assert set(module.subset(model, lambda n: n.startswith("2."))[0]) == set(sub)


def test_trainable_uses_requires_grad_flags():
    model = small_model()
    x, _ = data()
    for p in model[0].parameters():
        p.requires_grad_(False)
    sub, forward = module.trainable(model)
    assert set(sub) == {"2.weight", "2.bias"}
    torch.testing.assert_close(forward(sub, x), model(x))


def test_last_layer_vi_and_laplace_change_only_the_subset():
    model = small_model()
    x, y = data()
    sub, forward = module.subset(model, module.last_layer(model))

    def log_posterior(p, batch):
        xx, yy = batch
        logits = forward(p, xx)
        prior = sum(-0.5 * (v**2).sum() for v in p.values()) / 100
        return -nn.functional.cross_entropy(logits, yy) + prior, logits.detach()

    transform = vi.diag.build(log_posterior, lr=1e-2, temperature=1 / 100)
    state = transform.init(sub)
    for _ in range(5):
        state, logits = transform.update(state, (x, y))
    assert logits.shape == (16, 3)
    assert set(state.params) == set(sub)
    lap = laplace.diag_ggn.build(
        lambda p, batch: (forward(p, batch[0]), torch.tensor([])),
        lambda z, batch: -nn.functional.cross_entropy(z, batch[1], reduction="sum"),
        prior_precision=1.0,
    )
    lstate, _ = lap.update(lap.init(sub), (x, y))
    assert all((v >= 1.0).all() for v in lstate.prec_diag.values())
    # write the variational mean back into the module
    first_layer = model[0].weight.detach().clone()
    module.load(model, state.params)
    torch.testing.assert_close(model[2].weight.detach(), state.params["2.weight"])
    assert torch.equal(model[0].weight.detach(), first_layer)


def test_errors():
    model = small_model()
    with pytest.raises(TypeError, match="nn.Module"):
        module.functional(lambda x: x)
    with pytest.raises(ValueError, match="not parameter names"):
        module.subset(model, ["nope.weight"])
    with pytest.raises(ValueError, match="no parameter"):
        module.subset(model, "layers.99.")
    with pytest.raises(ValueError, match="shape"):
        module.load(model, {"2.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match="not parameter names"):
        module.load(model, {"x": torch.zeros(5)})
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        module.trainable(model)


def test_methods_run_as_vmapped_ensembles():
    """States are NamedTuples of tensors: thermoai.bayes.ensemble vmaps K members in one call. The
    deterministic methods give exactly what each member gives alone; VI runs and moves every member."""
    from thermoai.bayes import ekf, ensemble

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def log_lik(p, batch):
        xx, yy = batch
        return -0.5 * ((yy - xx @ p["w"]) ** 2).sum(), torch.tensor([])

    starts = [{"w": torch.randn(3, generator=g, dtype=torch.float64)} for _ in range(3)]
    deterministic = {
        "laplace.diag_fisher": laplace.diag_fisher.build(log_lik, prior_precision=1.0),
        "laplace.dense_fisher": laplace.dense_fisher.build(log_lik, prior_precision=1.0),
        "ekf.diag_fisher": ekf.diag_fisher.build(log_lik, lr=0.5),
        "ekf.dense_fisher": ekf.dense_fisher.build(log_lik, lr=0.5),
    }
    for name, transform in deterministic.items():
        ens = ensemble.build(transform, 3)
        state, _ = ens.update(ens.init(starts), (x, y))
        for k, start in enumerate(starts):
            alone, _ = transform.update(transform.init(start), (x, y))
            for a, b in zip(T.leaves(ensemble.member(state, k)), T.leaves(alone)):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    for transform in (vi.diag.build(log_lik, lr=0.1), vi.dense.build(log_lik, lr=0.1, n_samples=2)):
        ens = ensemble.build(transform, 3)
        state = ens.init(starts)
        for _ in range(3):
            state, _ = ens.update(state, (x, y), inplace=True)
        assert state.step.tolist() == [3, 3, 3]
        assert all(not torch.equal(state.params["w"][k], starts[k]["w"]) for k in range(3))
