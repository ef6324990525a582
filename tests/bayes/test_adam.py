"""The functional Adam used by VI: equality with torch.optim.AdamW, inplace, schedules, errors."""

from __future__ import annotations

import pytest
import torch

from thermoai.bayes import adam

F64 = torch.float64


def grad_fn(p):
    return {"w": torch.sin(p["w"]) + p["w"], "b": p["b"] ** 3}


def start():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 4, generator=g, dtype=F64), "b": torch.randn(5, generator=g, dtype=F64)}


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
def test_matches_torch_adamw(weight_decay, maximize):
    params = start()
    torch_params = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    reference = torch.optim.AdamW(
        list(torch_params.values()), lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay, maximize=maximize
    )
    opt = adam.adam(lr=0.05, b1=0.8, b2=0.99, eps=1e-6, weight_decay=weight_decay, maximize=maximize)
    state = opt.init(params)
    for _ in range(20):
        params, state = opt.update(grad_fn(params), state, params)
        reference.zero_grad()
        for k, p in torch_params.items():
            p.grad = grad_fn({kk: vv.detach() for kk, vv in torch_params.items()})[k]
        reference.step()
    for k in params:
        torch.testing.assert_close(params[k], torch_params[k].detach(), rtol=1e-12, atol=1e-12)
        assert params[k].dtype == F64
    assert int(state.count) == 20


def test_inplace_equals_functional_and_writes_through():
    opt = adam.adam(lr=lambda t: 0.1 / (1 + float(t)))
    p1, p2 = start(), start()
    s1, s2 = opt.init(p1), opt.init(p2)
    for _ in range(5):
        p1, s1 = opt.update(grad_fn(p1), s1, p1)
        out_p, out_s = opt.update(grad_fn(p2), s2, p2, inplace=True)
        assert out_p is p2 and out_s is s2
    for k in p1:
        assert torch.equal(p1[k], p2[k])
        assert torch.equal(s1.mu[k], s2.mu[k]) and torch.equal(s1.nu[k], s2.nu[k])
    assert int(s1.count) == int(s2.count) == 5


def test_schedule_sees_the_count_and_zero_lr_does_not_move():
    seen = []
    opt = adam.adam(lr=lambda t: seen.append(int(t)) or 0.0)
    params = start()
    state = opt.init(params)
    new, state = opt.update(grad_fn(params), state, params)
    new, state = opt.update(grad_fn(new), state, new)
    assert seen == [0, 1]
    assert all(torch.equal(new[k], params[k]) for k in params)


def test_fresh_init_is_fresh():
    opt = adam.adam(1e-2)
    params = start()
    state = opt.init(params)
    params, state = opt.update(grad_fn(params), state, params, inplace=True)
    again = opt.init(params)
    assert int(again.count) == 0 and all(float(v.abs().max()) == 0 for v in again.mu.values())


def test_errors():
    with pytest.raises(ValueError, match="lr"):
        adam.adam(lr=-1.0)
    with pytest.raises(ValueError, match="b1"):
        adam.adam(b1=1.0)
    with pytest.raises(ValueError, match="b2"):
        adam.adam(b2=-0.1)
    with pytest.raises(ValueError, match="eps"):
        adam.adam(eps=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        adam.adam(weight_decay=-1.0)
    opt = adam.adam(lr=lambda t: -1.0)
    params = start()
    with pytest.raises(ValueError, match="lr"):
        opt.update(grad_fn(params), opt.init(params), params)
    opt = adam.adam(1e-2)
    with pytest.raises(ValueError, match="structure"):
        opt.update({"w": params["w"]}, opt.init(params), params)


@pytest.mark.parametrize("maximize", [False, True])
def test_vmapped_update_equals_member_updates(maximize):
    """Inside vmap (ensembles) the per-leaf path runs; it must equal the fused path member by member."""
    opt = adam.adam(lr=0.05, weight_decay=0.01, maximize=maximize)
    members = [start(), {k: v + 1.0 for k, v in start().items()}]
    stacked = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    state = torch.func.vmap(opt.init)(stacked)

    def step(p, s):
        return opt.update(grad_fn(p), s, p)

    for _ in range(3):
        stacked, state = torch.func.vmap(step)(stacked, state)
    for i, m in enumerate(members):
        s = opt.init(m)
        for _ in range(3):
            m, s = opt.update(grad_fn(m), s, m)
        for k in m:
            torch.testing.assert_close(stacked[k][i], m[k], rtol=1e-12, atol=1e-12)
