"""The pieces every method family shares: ``transform`` (build -> Transform) and ``under_transform``."""

import pytest
import torch

from thermoai.bayes import _common
from thermoai.bayes import ekf, laplace, sgmcmc, vi
from thermoai.bayes._common import transform, under_transform

F64 = torch.float64


def _record_init(params, scale=1.0, fixed_thing=None):
    return {"params": params, "scale": scale, "fixed_thing": fixed_thing}


def _record_update(state, batch, fixed_thing, lr=0.5, inplace=False, generator=None):
    return {"lr": lr, "inplace": inplace, "fixed_thing": fixed_thing, "generator": generator}, batch


def test_transform_hands_each_function_what_its_signature_names():
    t = transform(_record_init, _record_update, fixed=dict(fixed_thing="f"), lr=0.1, scale=3.0)
    assert t.init("p") == {"params": "p", "scale": 3.0, "fixed_thing": "f"}
    assert t.update(None, "b")[0] == {"lr": 0.1, "inplace": False, "fixed_thing": "f", "generator": None}
    assert t.update(None, "b", True)[0]["inplace"] is True  # inplace is the third positional argument
    # a call's keyword overrides a hyper-parameter for that call only, and passes others through
    g = torch.Generator()
    assert t.update(None, "b", lr=0.2, generator=g)[0] == {"lr": 0.2, "inplace": False, "fixed_thing": "f", "generator": g}
    assert t.update(None, "b")[0]["lr"] == 0.1
    assert t.init("p", scale=5.0)["scale"] == 5.0


def test_transform_refuses_to_override_what_build_fixed():
    t = transform(_record_init, _record_update, fixed=dict(fixed_thing="f"), lr=0.1)
    with pytest.raises(TypeError, match="fixed_thing is fixed"):
        t.update(None, "b", fixed_thing="other")
    with pytest.raises(TypeError, match="fixed_thing is fixed"):
        t.init("p", fixed_thing="other")


def test_transform_refuses_a_hyperparameter_neither_function_takes():
    with pytest.raises(TypeError, match=r"\['momentum'\]"):
        transform(_record_init, _record_update, fixed=dict(fixed_thing="f"), momentum=0.9)


def _quadratic(params, batch=None):
    return -0.5 * (params * params).sum(), torch.tensor([])


def _per_sample_quadratic(params, batch):
    # batch (B, 2): a Gaussian likelihood per row
    return -0.5 * ((batch - params) ** 2).sum(), torch.tensor([])


BUILDS = {
    "sgld": lambda lp: sgmcmc.sgld.build(lp, lr=0.1),
    "sghmc": lambda lp: sgmcmc.sghmc.build(lp, lr=0.1),
    "sgnht": lambda lp: sgmcmc.sgnht.build(lp, lr=0.1),
    "baoa": lambda lp: sgmcmc.baoa.build(lp, lr=0.1),
    "psgld": lambda lp: sgmcmc.psgld.build(lp, lr=0.1),
    "vi.diag": lambda lp: vi.diag.build(lp, lr=0.1),
    "vi.dense": lambda lp: vi.dense.build(lp, lr=0.1),
    "laplace.diag_fisher": lambda lp: laplace.diag_fisher.build(lp),
    "laplace.dense_fisher": lambda lp: laplace.dense_fisher.build(lp),
    "laplace.dense_hessian": lambda lp: laplace.dense_hessian.build(lp),
    "ekf.diag_fisher": lambda lp: ekf.diag_fisher.build(lp, lr=1.0),
    "ekf.dense_fisher": lambda lp: ekf.dense_fisher.build(lp, lr=1.0),
}
FIXED_NAME = {name: ("log_likelihood" if name.startswith("ekf") else "log_posterior") for name in BUILDS}


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_method_keeps_its_log_density_fixed_and_takes_inplace_third(name):
    t = BUILDS[name](_per_sample_quadratic)
    batch = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    state = t.init(torch.zeros(2, dtype=F64))
    with pytest.raises(TypeError, match=f"{FIXED_NAME[name]} is fixed"):
        t.update(state, batch, **{FIXED_NAME[name]: _per_sample_quadratic})
    torch.manual_seed(0)
    new, _ = t.update(state, batch, True)
    assert new is state and int(state.step) == 1


@pytest.mark.parametrize(
    "build, key, value, random",
    [
        (lambda **kw: sgmcmc.sgld.build(_quadratic, **{"lr": 0.1, **kw}), "lr", 0.3, True),
        (lambda **kw: sgmcmc.sghmc.build(_quadratic, **{"lr": 0.1, "temperature": 1.0, **kw}), "temperature", 0.25, True),
        (lambda **kw: vi.diag.build(_quadratic, **{"lr": 0.1, "temperature": 1.0, **kw}), "temperature", 0.5, True),
        (lambda **kw: ekf.diag_fisher.build(_per_sample_quadratic, **{"lr": 1.0, **kw}), "lr", 4.0, False),
    ],
    ids=["sgld-lr", "sghmc-temperature", "vi.diag-temperature", "ekf.diag_fisher-lr"],
)
def test_a_call_keyword_equals_building_with_that_value(build, key, value, random):
    batch = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    params = torch.tensor([0.5, -0.5], dtype=F64)
    base, other = build(), build(**{key: value})

    def step(t, **kw):
        torch.manual_seed(1)  # the same initial state (momenta drawn at the build-time temperature)
        state = base.init(params.clone())
        if random:
            kw["generator"] = torch.Generator().manual_seed(2)
        return t.update(state, batch, **kw)[0].params

    overridden = step(base, **{key: value})
    assert torch.equal(overridden, step(other))
    assert not torch.equal(overridden, step(base))  # the keyword did change the step


def test_under_transform_is_true_only_inside_torch_func():
    x = torch.ones(3)
    assert not under_transform(x)
    seen = []

    def f(y):
        seen.append(under_transform(y))
        return y.sum()

    torch.func.vmap(f)(torch.ones(2, 3))
    torch.func.grad(f)(x)
    assert seen == [True, True]


def test_copy_like_names_the_argument():
    like = {"a": torch.zeros(2, dtype=F64)}
    out = _common.copy_like(like, {"a": torch.ones(2, dtype=torch.float32)}, "momenta")
    assert out["a"].dtype == F64 and torch.equal(out["a"], torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="momenta"):
        _common.copy_like(like, {"b": torch.ones(2)}, "momenta")
    with pytest.raises(TypeError, match="momenta leaves must be tensors"):
        _common.copy_like(like, {"a": 1.0}, "momenta")
