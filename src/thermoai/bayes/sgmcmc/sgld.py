r"""Stochastic gradient Langevin dynamics (Welling & Teh, 2011), tempered.

With ``g = grad log_posterior(theta_t, batch)``, step size ``eps = lr`` and temperature ``T``:

.. math::

    \theta_{t+1} = \theta_t + \epsilon\, g + \sqrt{\epsilon\,(2T - \epsilon\beta)}\;\xi, \qquad \xi \sim N(0, I)

This is the Euler-Maruyama step of :math:`d\theta = \nabla \log p\, dt + \sqrt{2T}\, dW`, whose stationary
density is :math:`p(\theta)^{1/T}`. ``beta`` is an estimate of the per-coordinate variance of the stochastic
gradient ``g``: the step already carries :math:`\epsilon^2 \beta` of gradient noise, so that much less is
injected to keep the total at :math:`2 \epsilon T` (clamped at zero when the gradient noise alone exceeds it).
``T = 0`` is plain gradient ascent (no noise is drawn). With a log posterior averaged over the batch
(mean log-likelihood + log prior / N), ``T = 1/N`` targets the Bayesian posterior.

``lr`` and ``temperature`` accept schedules (callables of the step), evaluated at the start of each update.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import log_prob
from thermoai.bayes._common import scalar_like, transform, zero_step
from thermoai.bayes.sgmcmc import _common as C
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform


def build(log_posterior: LogProbFn, lr: Schedule, beta: float = 0.0, temperature: Schedule = 1.0) -> Transform:
    """SGLD transform. ``log_posterior(params, batch) -> (scalar, aux)``; ``lr`` > 0 (or a schedule);
    ``beta`` >= 0 gradient-noise variance estimate; ``temperature`` >= 0 (or a schedule)."""
    C.check_positive(lr=lr)
    C.check_hyper(beta=beta, temperature=temperature)
    return transform(init, update, fixed=dict(log_posterior=log_posterior), lr=lr, beta=beta, temperature=temperature)


class SGLDState(NamedTuple):
    """``params``: the current sample (tree); ``log_posterior``: its value at the last update (NaN before
    the first), 0-d in the params' dtype; ``step``: 0-d int64 count of updates, on the params' device."""

    params: TensorTree
    log_posterior: Tensor
    step: Tensor


def init(params: TensorTree) -> SGLDState:
    """A fresh state at ``params`` (held, not copied: ``inplace=True`` updates write into them)."""
    first = T.check_floating_leaves(params)[0]
    return SGLDState(params, scalar_like(first, float("nan")), zero_step(first))


def update(
    state: SGLDState,
    batch: Any,
    log_posterior: LogProbFn,
    lr: Schedule,
    beta: float = 0.0,
    temperature: Schedule = 1.0,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[SGLDState, TensorTree]:
    """One SGLD step; returns ``(new_state, aux)``. With ``inplace=True`` the state's tensors are
    overwritten and the same state is returned. ``generator`` None uses the global RNG (vmap-able)."""
    C.check_hyper(beta=beta)
    eps = C.resolve(lr, state.step, "lr")
    temp = C.resolve(temperature, state.step, "temperature")
    value, grad, aux = log_prob.value_and_grad(log_posterior, state.params, batch)
    with torch.no_grad():
        params = T.leaves(state.params)
        new = C.axpy(params, eps, T.leaves(grad), inplace)
        new = C.add_noise(new, C.sqrt(C.clamp0(eps * (2.0 * temp - eps * beta))), generator, inplace=True)
        out = SGLDState(
            C.rebuild(state.params, new, inplace),
            C.store_scalar(state.log_posterior, value, inplace),
            C.new_step(state.step, inplace),
        )
    return (state if inplace else out), aux
