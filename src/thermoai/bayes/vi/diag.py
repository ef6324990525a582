"""Variational inference with a diagonal Gaussian (mean-field), reparameterised ELBO.

Family ``q(theta) = N(mu, diag(sigma^2))`` with ``sigma = exp(rho)`` per parameter element; ``mu`` and
``rho`` are trees shaped like the parameters. With ``log p`` the user's (batch-averaged) log posterior and
``T`` the temperature, the objective to minimise is

    NELBO(mu, rho) = -E_q[log p(theta)] + T * E_q[log q(theta)],     theta = mu + sigma * eps, eps ~ N(0, I)

estimated with ``n_samples`` draws. Its minimiser is the KL projection of ``p^{1/T}`` onto the family.

Gradients are written in closed form around ``g = grad log p(theta)`` (one backward pass of the user's
function per draw)::

    path = -g + T * dlogq/dtheta = -g - T * eps / sigma
    STL:    d/dmu = path,   d/drho = path * sigma * eps
    plain:  d/dmu = -g,     d/drho = -g * sigma * eps - T
            (the plain gradient adds the score terms T*eps/sigma and T*(eps^2 - 1), which cancel parts
            of the path term)

"Sticking the landing" (``stl=True``, Roeder et al. 2017) drops the score-function part of
``grad log q`` -- i.e. treats *both* ``mu`` and ``sigma`` inside ``log q`` as constants -- so that at
``q = p^{1/T}`` the gradient is exactly zero for every draw. With ``stl=False`` the gradient is the plain
reparameterisation gradient: ``d/dmu = -g`` and ``d/drho = -g sigma eps - T``.

Reference: Blundell et al. 2015 (Bayes by Backprop), Roeder, Wu & Duvenaud 2017 (STL).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import adam as adam_mod
from thermoai.bayes._common import copy_like, detached_copy, sample_diag_normal, scalar_like, transform, zero_step
from thermoai.bayes.vi._common import (
    check_n_samples,
    check_temperature,
    default_init_sd,
    draws_value_and_grad,
    nelbo_step,
    resolve_optimizer,
    standard_normal_like,
)
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform

__all__ = ["build", "VIDiagState", "init", "update", "nelbo", "sample"]


def build(
    log_posterior: LogProbFn,
    optimizer: adam_mod.Optimizer | None = None,
    temperature: Schedule = 1.0,
    n_samples: int = 1,
    stl: bool = True,
    init_log_sds: float | TensorTree | None = None,
    lr: Schedule | None = None,
) -> Transform:
    """Diagonal-Gaussian VI as a :class:`~thermoai.types.Transform`.

    Args:
        log_posterior: ``log_posterior(params, batch) -> (scalar, aux)``.
        optimizer: a functional optimiser from :mod:`thermoai.bayes.adam` (minimises the NELBO). Give
            either this or ``lr`` (then ``adam(lr=lr)`` is used).
        temperature: ``T >= 0`` or a schedule of the step; 0 gives (noisy) optimisation of the mean.
        n_samples: draws per NELBO estimate (> 0; more than one are vmapped).
        stl: sticking-the-landing gradients (see module docstring).
        init_log_sds: initial ``log sigma`` (a number or a tree like params); None (default): the sd is a
            tenth of the initial parameters' RMS (:func:`thermoai.bayes.vi._common.default_init_sd`).
        lr: shorthand for ``optimizer=adam(lr=lr)``.
    """
    optimizer = resolve_optimizer(optimizer, lr)
    check_temperature(temperature)
    check_n_samples(n_samples)
    _check_log_sds(init_log_sds)

    return transform(
        init, update, fixed=dict(log_posterior=log_posterior, optimizer=optimizer), temperature=temperature,
        n_samples=n_samples, stl=stl, init_log_sds=init_log_sds,
    )


class VIDiagState(NamedTuple):
    """State of diagonal VI.

    Attributes:
        params: the variational mean ``mu`` (tree like the parameters).
        log_sd_diag: ``rho = log sigma`` (tree like the parameters).
        opt_state: the optimiser's state over ``(params, log_sd_diag)``.
        nelbo: the NELBO estimate of the last update (0-d tensor, NaN before the first).
        step: number of updates done (0-d int64 tensor).
    """

    params: TensorTree
    log_sd_diag: TensorTree
    opt_state: Any
    nelbo: Tensor
    step: Tensor


def init(
    params: TensorTree, optimizer: adam_mod.Optimizer | None = None, init_log_sds: float | TensorTree | None = None
) -> VIDiagState:
    """A fresh state at mean ``params`` (copied) and ``log sigma = init_log_sds``; dtype/device follow params."""
    optimizer = resolve_optimizer(optimizer, None, default_lr=1e-3)
    _check_log_sds(init_log_sds)
    ref = T.check_floating_leaves(params)[0]
    mean = detached_copy(params)
    if init_log_sds is None:
        sd0 = default_init_sd(mean)
        init_log_sds = math.log(sd0) if isinstance(sd0, float) else T.tree_map(lambda x: torch.zeros_like(x) + torch.log(sd0).to(x.dtype), mean)
    if isinstance(init_log_sds, (int, float)):
        log_sds = T.tree_map(lambda x: torch.full_like(x, float(init_log_sds)), mean)
    else:
        log_sds = copy_like(mean, init_log_sds, "init_log_sds")
    opt_state = optimizer.init((mean, log_sds))
    return VIDiagState(
        params=mean,
        log_sd_diag=log_sds,
        opt_state=opt_state,
        nelbo=scalar_like(ref, math.nan),
        step=zero_step(ref),
    )


def update(
    state: VIDiagState,
    batch: Any,
    log_posterior: LogProbFn,
    optimizer: adam_mod.Optimizer,
    temperature: Schedule = 1.0,
    n_samples: int = 1,
    stl: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[VIDiagState, Any]:
    """One optimiser step on the NELBO; returns ``(state, aux)`` (``aux`` of the first draw).

    With ``inplace=True`` the tensors of ``state`` are overwritten and the same object is returned.
    """
    return nelbo_step(
        state, state.log_sd_diag, nelbo_and_grad, batch, log_posterior, optimizer, temperature, n_samples, stl,
        inplace, generator,
    )


def nelbo_and_grad(
    mean: TensorTree,
    log_sd_diag: TensorTree,
    batch: Any,
    log_posterior: LogProbFn,
    temperature: float | Tensor = 1.0,
    n_samples: int = 1,
    stl: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, tuple[TensorTree, TensorTree], Any]:
    """NELBO estimate and its gradient ``(d/dmu, d/d log sigma)`` (closed form, see module docstring)."""
    T.check_same_structure(mean, log_sd_diag, "params", "log_sd_diag")
    check_n_samples(n_samples)
    sds = T.tree_map(torch.exp, log_sd_diag)
    eps = standard_normal_like(mean, n_samples, generator)  # leaves (S, *shape)
    mean_l, sd_l, eps_l = T.leaves(mean), T.leaves(sds), T.leaves(eps)
    thetas = T.unflatten(T.structure(mean), [m + s * e for m, s, e in zip(mean_l, sd_l, eps_l)])
    log_p, g, aux = draws_value_and_grad(log_posterior, thetas, batch)  # (S,), leaves (S, *shape)
    g_l = T.leaves(g)

    # log q(theta_s) = sum -eps^2/2 - log sigma - log(2 pi)/2
    d = sum(m.numel() for m in mean_l)
    log_q = -0.5 * sum((e * e).reshape(n_samples, -1).sum(-1) for e in eps_l) - sum(
        r.sum() for r in T.leaves(log_sd_diag)
    ) - 0.5 * d * math.log(2 * math.pi)
    value = (-log_p + temperature * log_q).mean()

    inv_s = 1.0 / n_samples
    grad_mu, grad_rho = [], []
    for s, e, gl in zip(sd_l, eps_l, g_l):
        if stl:
            # path derivative only: -g + T * dlogq/dtheta = -g - T eps / sigma
            path = -gl - (temperature / s) * e
            grad_mu.append(path.sum(0) * inv_s)
            grad_rho.append((path * e).sum(0) * (s * inv_s))
        else:
            grad_mu.append(-gl.sum(0) * inv_s)
            grad_rho.append(-(gl * e).sum(0) * (s * inv_s) - temperature)
    spec = T.structure(mean)
    return value, (T.unflatten(spec, grad_mu), T.unflatten(spec, grad_rho)), aux


def nelbo(
    mean: TensorTree,
    sd_diag: TensorTree,
    batch: Any,
    log_posterior: LogProbFn,
    temperature: float = 1.0,
    n_samples: int = 1,
    stl: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Any]:
    """Monte Carlo NELBO ``-E_q[log p] + T E_q[log q]`` at ``q = N(mean, diag(sd_diag^2))``; ``(value, aux)``.

    ``stl`` does not change the value (only gradients); it is accepted for posteriors compatibility.
    """
    for leaf in T.leaves(sd_diag):
        if bool((leaf <= 0).any()):
            raise ValueError("nelbo: sd_diag must be positive everywhere")
    log_sds = T.tree_map(torch.log, sd_diag)
    value, _, aux = nelbo_and_grad(mean, log_sds, batch, log_posterior, temperature, n_samples, stl, generator)
    return value, aux


def sample(
    state: VIDiagState, sample_shape: torch.Size | tuple[int, ...] = torch.Size([]), generator: torch.Generator | None = None
) -> TensorTree:
    """Draws from ``q``: a tree whose leaves have shape ``sample_shape + leaf.shape``."""
    return sample_diag_normal(state.params, T.tree_map(torch.exp, state.log_sd_diag), sample_shape, generator)


def _check_log_sds(init_log_sds: Any) -> None:
    if init_log_sds is None:
        return
    if isinstance(init_log_sds, (int, float)):
        if not math.isfinite(init_log_sds):
            raise ValueError(f"init_log_sds must be finite; got {init_log_sds}")
        return
    for leaf in T.leaves(init_log_sds):
        if not isinstance(leaf, Tensor):
            raise TypeError(f"init_log_sds must be a number or a tree of tensors; found {type(leaf).__name__}")
        if not bool(torch.isfinite(leaf).all()):
            raise ValueError("init_log_sds has NaN or infinite entries")
