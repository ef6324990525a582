r"""Stochastic gradient Hamiltonian Monte Carlo (Chen, Fox & Guestrin, 2014), tempered.

Underdamped Langevin dynamics with mass :math:`\sigma^2`, friction :math:`\alpha` and temperature :math:`T`,

.. math::

    d\theta = \sigma^{-2} m\, dt, \qquad
    dm = \nabla \log p(\theta)\, dt - \alpha \sigma^{-2} m\, dt + \sqrt{2 \alpha T}\, dW,

has stationary density :math:`\propto p(\theta)^{1/T}\, N(m; 0, T\sigma^2 I)`. One step with
``g = grad log_posterior(theta_t, batch)`` and ``eps = lr`` (momentum first, then the position with the
*new* momentum: symplectic Euler)

.. math::

    m_{t+1} = (1 - \epsilon \alpha \sigma^{-2})\, m_t + \epsilon g + \sqrt{\epsilon (2 \alpha T - \epsilon \beta)}\;\xi,
    \qquad \theta_{t+1} = \theta_t + \epsilon \sigma^{-2} m_{t+1}.

``beta`` estimates the per-coordinate variance of the stochastic gradient (that much noise is already in
:math:`\epsilon g` and is not injected again; clamped at zero). At ``T = 0`` no noise is drawn and the
step is exactly ``torch.optim.SGD(lr=eta, momentum=mu, dampening=tau)`` on the loss ``-log_posterior``
with ``lr = 1 - tau``, ``alpha = (1 - mu) / eta``, ``sigma = sqrt((1 - tau) / eta)`` and momenta
``m = -buf`` (torch's momentum buffer); :func:`sgd_hyperparameters` returns that mapping. torch's
very first step sets ``buf = grad`` without dampening, so with ``dampening > 0`` the match starts after
that step (initialise ``momenta`` from :func:`momenta_from_sgd_buffer`).
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
) -> Transform:
    """SGHMC transform. ``lr`` > 0 and ``temperature`` >= 0 accept schedules; ``alpha`` >= 0 friction;
    ``beta`` >= 0 gradient-noise variance; ``sigma`` > 0 momentum scale (mass ``sigma**2``); ``momenta``
    initial momenta: None draws ``N(0, T sigma^2)`` (zero at ``T = 0``), a number fills, a tree is copied."""
    C.check_positive(lr=lr, sigma=sigma)
    C.check_hyper(alpha=alpha, beta=beta, temperature=temperature)
    return transform(
        init, update, fixed=dict(log_posterior=log_posterior), lr=lr, alpha=alpha, beta=beta, sigma=sigma,
        temperature=temperature, momenta=momenta,
    )


class SGHMCState(NamedTuple):
    """``params`` and ``momenta`` (trees of the same structure), ``log_posterior`` (0-d, NaN before the
    first update) and ``step`` (0-d int64), all on the params' dtype/device."""

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
) -> SGHMCState:
    """A fresh state at ``params`` (held, not copied) with momenta as described in :func:`build`."""
    first = T.check_floating_leaves(params)[0]
    step = zero_step(first)
    momenta = C.initial_momenta(params, momenta, sigma, temperature, step, generator)
    return SGHMCState(params, momenta, scalar_like(first, float("nan")), step)


def update(
    state: SGHMCState,
    batch: Any,
    log_posterior: LogProbFn,
    lr: Schedule,
    alpha: float = 0.01,
    beta: float = 0.0,
    sigma: float = 1.0,
    temperature: Schedule = 1.0,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[SGHMCState, TensorTree]:
    """One SGHMC step (see module docstring); returns ``(new_state, aux)``."""
    C.check_hyper(alpha=alpha, beta=beta)
    C.check_positive(sigma=sigma)
    eps = C.resolve(lr, state.step, "lr")
    temp = C.resolve(temperature, state.step, "temperature")
    value, grad, aux = log_prob.value_and_grad(log_posterior, state.params, batch)
    inv_mass = 1.0 / (sigma * sigma)
    with torch.no_grad():
        m = C.scale(T.leaves(state.momenta), 1.0 - eps * alpha * inv_mass, inplace)
        m = C.axpy(m, eps, T.leaves(grad), inplace=True)
        m = C.add_noise(m, C.sqrt(C.clamp0(eps * (2.0 * alpha * temp - eps * beta))), generator, inplace=True)
        theta = C.axpy(T.leaves(state.params), eps * inv_mass, m, inplace)
        out = SGHMCState(
            C.rebuild(state.params, theta, inplace),
            C.rebuild(state.momenta, m, inplace),
            C.store_scalar(state.log_posterior, value, inplace),
            C.new_step(state.step, inplace),
        )
    return (state if inplace else out), aux


def sgd_hyperparameters(lr: float, momentum: float = 0.0, dampening: float = 0.0) -> dict[str, float]:
    """SGHMC hyper-parameters (``lr``, ``alpha``, ``sigma``) that make SGHMC at ``temperature=0`` equal to
    ``torch.optim.SGD(lr, momentum, dampening)`` step for step (see module docstring)."""
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum}")
    if not 0.0 <= dampening < 1.0:
        raise ValueError(f"dampening must be in [0, 1); got {dampening}")
    step = 1.0 - dampening
    return {"lr": step, "alpha": (1.0 - momentum) / lr, "sigma": (step / lr) ** 0.5}


def momenta_from_sgd_buffer(momentum_buffer: TensorTree) -> TensorTree:
    """SGHMC momenta equivalent to torch SGD's ``momentum_buffer`` under :func:`sgd_hyperparameters`
    (``m = -buf``: SGD descends the loss, SGHMC ascends the log posterior)."""
    return T.tree_map(lambda b: -b.detach().clone(), momentum_buffer)
