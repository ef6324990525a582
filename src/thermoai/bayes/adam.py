"""A small functional Adam for parameter trees (used by :mod:`thermoai.bayes.vi`).

Adam (Kingma & Ba, 2015) on a tree of parameters ``theta`` with gradient ``g`` of the loss to *minimise*
(or to maximise when ``maximize=True``), step counter ``t = count + 1``::

    m <- b1 m + (1 - b1) g
    v <- b2 v + (1 - b2) g^2
    theta <- theta - lr(t-1) * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)  [- lr * weight_decay * theta]

``weight_decay`` is decoupled (AdamW, Loshchilov & Hutter 2019). ``lr`` is a number or a schedule
(callable of the step count, a 0-d integer tensor).

The optimiser is a pair of pure functions, like optax / torchopt, so that it lives inside a NamedTuple
state::

    opt = adam(lr=1e-2)
    opt_state = opt.init(params)
    params, opt_state = opt.update(grads, opt_state, params, inplace=False)

Unlike torchopt, ``update`` returns the *new parameters* (not an increment) so that the whole step is a
handful of fused ``torch._foreach_*`` kernels, and works in place when asked.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import under_transform
from thermoai.types import Schedule, TensorTree, check_non_negative, check_scalar_value, resolve_schedule


class AdamState(NamedTuple):
    """First and second moment estimates (trees like the parameters) and the step count (0-d int64)."""

    mu: TensorTree
    nu: TensorTree
    count: Tensor


class Optimizer(NamedTuple):
    """``init(params) -> opt_state``; ``update(grads, opt_state, params, inplace=False) -> (params, opt_state)``."""

    init: Callable[[TensorTree], Any]
    update: Callable[..., tuple[TensorTree, Any]]


def adam(
    lr: Schedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> Optimizer:
    """Functional Adam(W); see the module docstring for the equations.

    Args:
        lr: step size (>= 0) or a schedule ``lr(count)``.
        b1, b2: moment decay rates in ``[0, 1)``.
        eps: added to the root of the second moment (> 0).
        weight_decay: decoupled weight decay (>= 0).
        maximize: ascend instead of descend.
    """
    check_non_negative(lr, "lr")
    for name, b in (("b1", b1), ("b2", b2)):
        if not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1); got {b!r}")
    check_non_negative(eps, "eps", strictly=True)
    check_non_negative(weight_decay, "weight_decay")

    def init(params: TensorTree) -> AdamState:
        ls = T.leaves(params)
        device = ls[0].device if ls else None
        return AdamState(
            mu=T.tree_zeros_like(params),
            nu=T.tree_zeros_like(params),
            count=torch.zeros((), dtype=torch.int64, device=device),
        )

    def update(
        grads: TensorTree, state: AdamState, params: TensorTree, inplace: bool = False
    ) -> tuple[TensorTree, AdamState]:
        step_lr = resolve_schedule(lr, state.count, "lr")
        check_scalar_value(step_lr, "lr")
        g = T.leaves(grads)
        p = T.leaves(params)
        m = T.leaves(state.mu)
        v = T.leaves(state.nu)
        if not (len(g) == len(p) == len(m) == len(v)):
            raise ValueError(
                f"adam.update: grads ({len(g)} leaves), params ({len(p)}) and state ({len(m)}) differ in structure"
            )
        if not p:
            return params, state
        if any(under_transform(x) for x in p + g + m + v):
            # inside vmap (an ensemble of VI states): foreach kernels have no batching rule
            return _update_per_leaf(g, state, params, step_lr, inplace)
        if maximize:
            g = torch._foreach_neg(g)
        t = state.count + 1
        # bias corrections as tensors: no host sync per step
        tf = t.to(p[0].dtype if p[0].is_floating_point() else torch.get_default_dtype())
        bc1 = 1.0 - b1**tf
        bc2_sqrt = torch.sqrt(1.0 - b2**tf)
        if inplace:
            with torch.no_grad():
                torch._foreach_lerp_(m, g, 1.0 - b1)
                torch._foreach_mul_(v, b2)
                torch._foreach_addcmul_(v, g, g, value=1.0 - b2)
                new_m, new_v = m, v
        else:
            new_m = list(torch._foreach_lerp(m, g, 1.0 - b1))
            new_v = list(torch._foreach_mul(v, b2))
            torch._foreach_addcmul_(new_v, g, g, value=1.0 - b2)
        denom = torch._foreach_sqrt(new_v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        step = torch._foreach_div(new_m, denom)
        torch._foreach_mul_(step, -step_lr / bc1)
        if weight_decay:
            torch._foreach_add_(step, torch._foreach_mul(p, -step_lr * weight_decay))
        if inplace:
            with torch.no_grad():
                torch._foreach_add_(p, step)
                state.count.add_(1)
            return params, state
        new_p = T.unflatten(T.structure(params), list(torch._foreach_add(p, step)))
        new_state = AdamState(
            mu=T.unflatten(T.structure(state.mu), new_m),
            nu=T.unflatten(T.structure(state.nu), new_v),
            count=state.count + 1,
        )
        return new_p, new_state

    def _update_per_leaf(
        g: list[Tensor], state: AdamState, params: TensorTree, step_lr: float | Tensor, inplace: bool
    ) -> tuple[TensorTree, AdamState]:
        if inplace:
            raise ValueError("adam.update(inplace=True) is not supported inside vmap; use inplace=False")
        t = state.count + 1
        p = T.leaves(params)
        ref = p[0]
        tf = t.to(ref.dtype)
        bc1, bc2_sqrt = 1.0 - b1**tf, torch.sqrt(1.0 - b2**tf)
        sign = -1.0 if maximize else 1.0
        new_m = [b1 * mi + (1.0 - b1) * sign * gi for mi, gi in zip(T.leaves(state.mu), g)]
        new_v = [b2 * vi + (1.0 - b2) * gi * gi for vi, gi in zip(T.leaves(state.nu), g)]
        new_p = [
            pi - step_lr * (mi / bc1) / (torch.sqrt(vi) / bc2_sqrt + eps) - step_lr * weight_decay * pi
            for pi, mi, vi in zip(p, new_m, new_v)
        ]
        return T.unflatten(T.structure(params), new_p), AdamState(
            mu=T.unflatten(T.structure(state.mu), new_m), nu=T.unflatten(T.structure(state.nu), new_v), count=t
        )

    return Optimizer(init, update)
