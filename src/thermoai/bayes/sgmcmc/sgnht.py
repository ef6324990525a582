r"""Stochastic gradient Nosé-Hoover thermostat (Ding et al., 2014), tempered.

SGHMC whose friction :math:`\xi` is a dynamic thermostat that drives the kinetic temperature
:math:`\sigma^{-2}\,\mathrm{mean}(m^2)` to :math:`T`; it absorbs unknown gradient noise. One step with
``g = grad log_posterior(theta_t, batch)``, ``eps = lr`` and ``d`` the total number of parameters:

.. math::

    m_{t+1} &= (1 - \epsilon \sigma^{-2} \xi_t)\, m_t + \epsilon g + \sqrt{\epsilon (2 \alpha T - \epsilon\beta)}\;\eta \\
    \theta_{t+1} &= \theta_t + \epsilon \sigma^{-2} m_{t+1} \\
    \xi_{t+1} &= \xi_t + \epsilon \left(\sigma^{-2}\, \tfrac{1}{d} \textstyle\sum m_{t+1}^2 - T\right)

(:math:`\eta \sim N(0, I)`). With exact gradients the stationary density is
:math:`\propto p(\theta)^{1/T}\, N(m; 0, T\sigma^2 I)` with :math:`\xi` Gaussian around :math:`\alpha`
(Ding et al., Thm. 1, rescaled to temperature ``T``). Both
position and thermostat use the new momentum, as in Ding et al.'s Algorithm 1. The initial thermostat is
``xi`` when given (``xi=0.0`` is honoured), else ``alpha``.
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
    beta: float = 0.0,
    sigma: float = 1.0,
    temperature: Schedule = 1.0,
    momenta: TensorTree | float | None = None,
    xi: float | None = None,
) -> Transform:
    """SGNHT transform; arguments as :func:`thermoai.bayes.sgmcmc.sghmc.build`, plus ``xi`` the initial
    thermostat (None -> ``alpha``)."""
    C.check_positive(lr=lr, sigma=sigma)
    C.check_hyper(alpha=alpha, beta=beta, temperature=temperature)
    if xi is not None:
        C.check_hyper(xi=xi)
    return transform(
        init, update, fixed=dict(log_posterior=log_posterior), lr=lr, alpha=alpha, beta=beta, sigma=sigma,
        temperature=temperature, momenta=momenta, xi=xi,
    )


class SGNHTState(NamedTuple):
    """``params``, ``momenta`` (trees), ``xi`` (0-d thermostat), ``log_posterior`` (0-d, NaN before the
    first update), ``step`` (0-d int64); dtype/device of the params."""

    params: TensorTree
    momenta: TensorTree
    xi: Tensor
    log_posterior: Tensor
    step: Tensor


def init(
    params: TensorTree,
    momenta: TensorTree | float | None = None,
    xi: float | None = None,
    sigma: float = 1.0,
    temperature: Schedule = 1.0,
    alpha: float = 0.01,
    generator: torch.Generator | None = None,
) -> SGNHTState:
    """A fresh state at ``params`` (held, not copied). ``xi=None`` starts the thermostat at ``alpha``."""
    first = T.check_floating_leaves(params)[0]
    step = zero_step(first)
    momenta = C.initial_momenta(params, momenta, sigma, temperature, step, generator)
    xi0 = alpha if xi is None else xi
    return SGNHTState(params, momenta, scalar_like(first, float(xi0)), scalar_like(first, float("nan")), step)


def update(
    state: SGNHTState,
    batch: Any,
    log_posterior: LogProbFn,
    lr: Schedule,
    alpha: float = 0.01,
    beta: float = 0.0,
    sigma: float = 1.0,
    temperature: Schedule = 1.0,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[SGNHTState, TensorTree]:
    """One SGNHT step (see module docstring); returns ``(new_state, aux)``."""
    C.check_hyper(alpha=alpha, beta=beta)
    C.check_positive(sigma=sigma)
    eps = C.resolve(lr, state.step, "lr")
    temp = C.resolve(temperature, state.step, "temperature")
    value, grad, aux = log_prob.value_and_grad(log_posterior, state.params, batch)
    inv_mass = 1.0 / (sigma * sigma)
    with torch.no_grad():
        m = C.scale(T.leaves(state.momenta), 1.0 - (eps * inv_mass) * state.xi, inplace)
        m = C.axpy(m, eps, T.leaves(grad), inplace=True)
        m = C.add_noise(m, C.sqrt(C.clamp0(eps * (2.0 * alpha * temp - eps * beta))), generator, inplace=True)
        theta = C.axpy(T.leaves(state.params), eps * inv_mass, m, inplace)
        xi = state.xi + eps * (inv_mass * C.mean_square(m) - temp)
        out = SGNHTState(
            C.rebuild(state.params, theta, inplace),
            C.rebuild(state.momenta, m, inplace),
            C.store_scalar(state.xi, xi, inplace),
            C.store_scalar(state.log_posterior, value, inplace),
            C.new_step(state.step, inplace),
        )
    return (state if inplace else out), aux
