r"""BAOA splitting of underdamped Langevin dynamics (Leimkuhler & Matthews, 2015, p. 271), tempered.

The same dynamics and stationary density as SGHMC (:mod:`thermoai.bayes.sgmcmc.sghmc`), integrated with
one gradient per step: a full kick (B, using the gradient at the current position, i.e. the two half
kicks of BAOAB merged across steps), half a drift (A), an exact Ornstein-Uhlenbeck solve of the friction
and noise (O) and another half drift (A). With :math:`\gamma = \alpha \sigma^{-2}` and ``eps = lr``:

.. math::

    m &\leftarrow m + \epsilon g, \qquad
    \theta \leftarrow \theta + \tfrac{\epsilon}{2} \sigma^{-2} m, \\
    m &\leftarrow e^{-\gamma\epsilon} m + \sigma \sqrt{T (1 - e^{-2\gamma\epsilon})}\;\xi, \qquad
    \theta \leftarrow \theta + \tfrac{\epsilon}{2} \sigma^{-2} m.

The O step samples the momentum's conditional exactly, which keeps the configurational bias of order
:math:`\epsilon^2` (against :math:`\epsilon` for SGHMC's Euler step). At ``T = 0`` no noise is drawn.
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


def build(
    log_posterior: LogProbFn,
    lr: Schedule,
    alpha: float = 0.01,
    sigma: float = 1.0,
    temperature: Schedule = 1.0,
    momenta: TensorTree | float | None = None,
) -> Transform:
    """BAOA transform; arguments as :func:`thermoai.bayes.sgmcmc.sghmc.build` (no ``beta``)."""
    C.check_positive(lr=lr, sigma=sigma)
    C.check_hyper(alpha=alpha, temperature=temperature)
    return transform(
        init, update, fixed=dict(log_posterior=log_posterior), lr=lr, alpha=alpha, sigma=sigma,
        temperature=temperature, momenta=momenta,
    )


class BAOAState(NamedTuple):
    """``params``, ``momenta`` (trees), ``log_posterior`` (0-d, NaN before the first update), ``step``."""

    params: TensorTree
    momenta: TensorTree
    log_posterior: Tensor
    step: Tensor


def init(
    params: TensorTree,
    momenta: TensorTree | float | None = None,
    sigma: float = 1.0,
    temperature: Schedule = 1.0,
    generator: torch.Generator | None = None,
) -> BAOAState:
    """A fresh state at ``params`` (held, not copied); momenta as in SGHMC."""
    first = T.check_floating_leaves(params)[0]
    step = zero_step(first)
    momenta = C.initial_momenta(params, momenta, sigma, temperature, step, generator)
    return BAOAState(params, momenta, scalar_like(first, float("nan")), step)


def update(
    state: BAOAState,
    batch: Any,
    log_posterior: LogProbFn,
    lr: Schedule,
    alpha: float = 0.01,
    sigma: float = 1.0,
    temperature: Schedule = 1.0,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[BAOAState, TensorTree]:
    """One BAOA step (see module docstring); returns ``(new_state, aux)``."""
    C.check_hyper(alpha=alpha)
    C.check_positive(sigma=sigma)
    eps = C.resolve(lr, state.step, "lr")
    temp = C.resolve(temperature, state.step, "temperature")
    value, grad, aux = log_prob.value_and_grad(log_posterior, state.params, batch)
    inv_mass = 1.0 / (sigma * sigma)
    decay = C.exp(-alpha * inv_mass * eps)
    with torch.no_grad():
        m = C.axpy(T.leaves(state.momenta), eps, T.leaves(grad), inplace)
        theta = C.axpy(T.leaves(state.params), 0.5 * eps * inv_mass, m, inplace)
        m = C.scale(m, decay, inplace=True)
        m = C.add_noise(m, sigma * C.sqrt(C.clamp0(temp * (1.0 - decay * decay))), generator, inplace=True)
        theta = C.axpy(theta, 0.5 * eps * inv_mass, m, inplace=True)
        out = BAOAState(
            C.rebuild(state.params, theta, inplace),
            C.rebuild(state.momenta, m, inplace),
            C.store_scalar(state.log_posterior, value, inplace),
            C.new_step(state.step, inplace),
        )
    return (state if inplace else out), aux
