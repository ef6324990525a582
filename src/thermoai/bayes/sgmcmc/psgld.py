r"""Preconditioned SGLD (Li, Chen, Carlson & Carin, 2016), tempered; RMSprop-style diagonal preconditioner.

With ``g = grad log_posterior(theta_t, batch)``, ``eps = lr``, decay :math:`\rho` and regulariser
:math:`\lambda` (``eps_reg``):

.. math::

    v_{t+1} &= \rho\, v_t + (1 - \rho)\, g^2, \qquad
    G = 1 / \left(\lambda + \sqrt{v_{t+1} / (1 - \rho^{t+1})}\right) \\
    \theta_{t+1} &= \theta_t + \epsilon\, G g + \sqrt{2 \epsilon T G}\;\xi, \qquad \xi \sim N(0, I).

The bias correction :math:`1/(1-\rho^{t+1})` (as in Adam) makes the first steps use the gradient scale
seen so far instead of a near-zero ``v`` (which would give huge first steps). Like Li et al. the
:math:`\Gamma(\theta)` drift from the preconditioner's dependence on :math:`\theta` is dropped; its bias
vanishes as :math:`\rho \to 1` (the preconditioner is then nearly constant over the chain's
autocorrelation time). ``freeze_after=n`` stops adapting :math:`v` after ``n`` updates (adapt during
burn-in, then freeze): the chain is then SGLD with a fixed diagonal preconditioner, a time-homogeneous
Markov chain whose only bias is the discretisation. ``T = 0`` is RMSprop-like gradient ascent. Not in
posteriors 0.1.3.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import log_prob
from thermoai.bayes._common import scalar_like, transform, under_transform, zero_step
from thermoai.bayes.sgmcmc import _common as C
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform


def build(
    log_posterior: LogProbFn,
    lr: Schedule,
    decay: float = 0.99,
    eps_reg: float = 1e-5,
    temperature: Schedule = 1.0,
    freeze_after: int | None = None,
) -> Transform:
    """pSGLD transform. ``lr`` > 0 and ``temperature`` >= 0 accept schedules; ``decay`` in [0, 1) is the
    moving-average factor of the squared gradients; ``eps_reg`` > 0 keeps the preconditioner bounded;
    ``freeze_after`` (None: never) the number of updates after which the preconditioner is fixed."""
    _check(decay, eps_reg, freeze_after)
    C.check_positive(lr=lr)
    C.check_hyper(temperature=temperature)
    return transform(
        init, update, fixed=dict(log_posterior=log_posterior), lr=lr, decay=decay, eps_reg=eps_reg,
        temperature=temperature, freeze_after=freeze_after,
    )


class PSGLDState(NamedTuple):
    """``params``; ``square_avg`` (tree like params: moving average of squared gradients, zero at start);
    ``log_posterior`` (0-d, NaN before the first update); ``step`` (0-d int64)."""

    params: TensorTree
    square_avg: TensorTree
    log_posterior: Tensor
    step: Tensor


def init(params: TensorTree) -> PSGLDState:
    """A fresh state at ``params`` (held, not copied)."""
    first = T.check_floating_leaves(params)[0]
    return PSGLDState(
        params, T.tree_map(torch.zeros_like, params), scalar_like(first, float("nan")), zero_step(first)
    )


def update(
    state: PSGLDState,
    batch: Any,
    log_posterior: LogProbFn,
    lr: Schedule,
    decay: float = 0.99,
    eps_reg: float = 1e-5,
    temperature: Schedule = 1.0,
    freeze_after: int | None = None,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[PSGLDState, TensorTree]:
    """One pSGLD step (see module docstring); returns ``(new_state, aux)``."""
    _check(decay, eps_reg, freeze_after)
    eps = C.resolve(lr, state.step, "lr")
    temp = C.resolve(temperature, state.step, "temperature")
    value, grad, aux = log_prob.value_and_grad(log_posterior, state.params, batch)
    g = T.leaves(grad)
    with torch.no_grad():
        v = T.leaves(state.square_avg)
        fused = not under_transform(v[0]) and not under_transform(g[0])
        # bias correction 1 / (1 - decay^(t+1)) from the step counter, kept on device (no host sync)
        adapted = state.step + 1 if freeze_after is None else torch.clamp(state.step + 1, max=freeze_after)
        correction = 1.0 / (1.0 - decay ** adapted.to(v[0].dtype)) if decay > 0 else None
        if freeze_after is not None:
            # keep (1 - w) v + w g^2 with w = 0 once frozen; per-step weights stay tensors on device
            keep = state.step < freeze_after
            w = torch.where(keep, 1.0 - decay, 0.0).to(v[0].dtype)
            new_v = [x * (1.0 - w) + w * gi * gi for x, gi in zip(v, g)]
            v = C.rebuild_list(v, new_v, inplace)
            precond = [1.0 / (eps_reg + torch.sqrt(x * correction if correction is not None else x)) for x in v]
            step_ = [p * gi for p, gi in zip(precond, g)]
            fused = False
        elif fused:
            v = C.scale(v, decay, inplace)
            torch._foreach_addcmul_(v, g, g, value=1.0 - decay)
            denom = torch._foreach_mul(v, correction) if correction is not None else [x.clone() for x in v]
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, eps_reg)
            precond = torch._foreach_reciprocal(denom)
            step_ = torch._foreach_mul(precond, g)
        else:
            v = [x * decay + (1.0 - decay) * gi * gi for x, gi in zip(v, g)] if not inplace else [
                x.mul_(decay).addcmul_(gi, gi, value=1.0 - decay) for x, gi in zip(v, g)
            ]
            precond = [1.0 / (eps_reg + torch.sqrt(x * correction if correction is not None else x)) for x in v]
            step_ = [p * gi for p, gi in zip(precond, g)]
        theta = C.axpy(T.leaves(state.params), eps, step_, inplace)
        if not C.is_zero(temp):
            noise = C.scratch_normal(theta, 1.0, generator) if fused else C.randn_like(theta, generator)
            if fused:
                torch._foreach_sqrt_(precond)
                torch._foreach_mul_(noise, precond)
            else:
                noise = [n * torch.sqrt(p) for n, p in zip(noise, precond)]
            theta = C.axpy(theta, C.sqrt(2.0 * eps * temp), noise, inplace=True)
        out = PSGLDState(
            C.rebuild(state.params, theta, inplace),
            C.rebuild(state.square_avg, v, inplace),
            C.store_scalar(state.log_posterior, value, inplace),
            C.new_step(state.step, inplace),
        )
    return (state if inplace else out), aux


def _check(decay: float, eps_reg: float, freeze_after: int | None = None) -> None:
    if freeze_after is not None and (not isinstance(freeze_after, int) or freeze_after < 1):
        raise ValueError(f"freeze_after must be None or a positive int; got {freeze_after!r}")
    if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be a number in [0, 1); got {decay!r}")
    if not isinstance(eps_reg, (int, float)) or not eps_reg > 0:
        raise ValueError(f"eps_reg must be a positive number; got {eps_reg!r}")
