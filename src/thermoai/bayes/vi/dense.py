"""Variational inference with a full-covariance Gaussian, reparameterised ELBO.

Family ``q(theta) = N(mu, L L^T)`` over the ravelled parameter vector (``d`` elements), ``L`` lower
triangular with a positive diagonal, stored flat (its ``d(d+1)/2`` lower-triangle entries, row-major,
as :func:`L_to_flat` writes them). Draws ``theta = mu + L eps``.

The optimiser works on an unconstrained factor, ``L = diag(exp(s)) C`` with ``C`` unit lower triangular
(:func:`raw_from_L`): ``s_i = log L_ii`` keeps the diagonal positive, and an optimiser step of size ``lr``
on ``C_ij = L_ij / L_ii`` changes row ``i`` *relative* to its scale. Optimised directly, ``L``'s entries
move by about ``lr`` per Adam step whatever their scale: on the README model (``d = 2410``, initial
diagonal ~0.008, ``lr = 1e-3``) the off-diagonal entries reached the diagonal's size within ten steps,
``L^{-T}`` (a triangular solve whose entries grow like ``(1 + (L_ij/L_ii)^2)^{d/2}``) overflowed, NaN. Objective (``T`` the temperature):

    NELBO(mu, L) = -E_q[log p(theta)] + T * E_q[log q(theta)]
    log q(theta) = -|eps|^2 / 2 - sum_i log|L_ii| - (d/2) log(2 pi)

With ``g = grad log p(theta)`` and ``dlogq/dtheta = -L^{-T} eps``, the gradients used are::

    path  = -g - T L^{-T} eps
    STL:    d/dmu = path,   d/dL = tril(path eps^T)
    plain:  d/dmu = -g,     d/dL = tril(-g eps^T) - T diag(1 / L_ii)

Sticking the landing (``stl=True``, Roeder et al. 2017) treats *both* ``mu`` and ``L`` inside ``log q``
as constants, so at ``q = p^{1/T}`` the gradient of both is zero for every draw. (posteriors 0.1.3
detaches only ``L``; its mean gradient is non-zero there.) No Cholesky factorisation happens per step:
one triangular solve, ``O(d^2)`` per draw.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import adam as adam_mod
from thermoai.bayes._common import detached_copy, flat_rows, scalar_like, transform, under_transform, zero_step
from thermoai.bayes._common import GaussianSampler, sample_with_sampler
from thermoai.bayes.vi._common import (
    check_n_samples,
    check_temperature,
    default_init_sd,
    draws_value_and_grad,
    resolve_optimizer,
)
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform, resolve_schedule

__all__ = [
    "build", "VIDenseState", "init", "update", "nelbo", "sample", "L_from_flat", "L_to_flat", "raw_from_L", "L_from_raw",
]


def build(
    log_posterior: LogProbFn,
    optimizer: adam_mod.Optimizer | None = None,
    temperature: Schedule = 1.0,
    n_samples: int = 1,
    stl: bool = True,
    init_L: float | Tensor | None = None,
    lr: Schedule | None = None,
) -> Transform:
    """Full-covariance Gaussian VI as a :class:`~thermoai.types.Transform`.

    Args:
        log_posterior: ``log_posterior(params, batch) -> (scalar, aux)``.
        optimizer: functional optimiser from :mod:`thermoai.bayes.adam`; or give ``lr`` instead.
        temperature: ``T >= 0`` or a schedule.
        n_samples: draws per NELBO estimate.
        stl: sticking-the-landing gradients.
        init_L: initial Cholesky factor: a number ``c`` (``L = |c| I``), a ``(d, d)`` lower-triangular
            tensor or its flat ``(d(d+1)/2,)`` form. Its diagonal must be non-zero (``L L^T`` positive
            definite); columns with a negative diagonal entry are negated (the same ``L L^T``). None (default): ``c`` a tenth of the initial parameters' RMS
            (:func:`thermoai.bayes.vi._common.default_init_sd`).
        lr: shorthand for ``optimizer=adam(lr=lr)``.
    """
    optimizer = resolve_optimizer(optimizer, lr)
    check_temperature(temperature)
    check_n_samples(n_samples)
    if isinstance(init_L, (int, float)):
        _check_scalar_L(init_L)

    return transform(
        init, update, fixed=dict(log_posterior=log_posterior, optimizer=optimizer), temperature=temperature,
        n_samples=n_samples, stl=stl, init_L=init_L,
    )


class VIDenseState(NamedTuple):
    """State of dense VI.

    Attributes:
        params: the variational mean ``mu`` (tree like the parameters).
        L_factor: flat lower triangle of ``L`` (``(d(d+1)/2,)``, positive diagonal), ``cov = L L^T`` over
            ``tree_ravel(params)``.
        opt_state: the optimiser's state over ``(params, raw_from_L(L_factor))`` (module docstring).
        nelbo: last NELBO estimate (0-d; NaN before the first update).
        step: number of updates (0-d int64).
    """

    params: TensorTree
    L_factor: Tensor
    opt_state: Any
    nelbo: Tensor
    step: Tensor


_TRI: dict[tuple[int, torch.device], tuple[Tensor, Tensor, Tensor]] = {}


def _triangle(d: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, linear, index)`` of the flat lower triangle of a ``(d, d)`` matrix: ``rows`` and the
    positions ``linear = rows * d + cols`` in the ravelled matrix, both ``(d(d+1)/2,)`` row-major; ``index``
    ``(d, d)`` the position + 1 of each entry in the flat vector (0 above the diagonal). Cached for one size at a time: on the README model (``d = 2410``) building them took
    more than a third of a step."""
    key = (d, torch.device(device))
    if key not in _TRI:
        rows, cols = torch.tril_indices(d, d, device=device)
        index = torch.zeros((d, d), dtype=torch.long, device=device)
        index[rows, cols] = torch.arange(1, rows.numel() + 1, device=device)
        _TRI.clear()
        _TRI[key] = (rows, rows * d + cols, index)
    return _TRI[key]


def L_from_flat(L_flat: Tensor) -> Tensor:
    """The ``(d, d)`` lower-triangular matrix from its flat ``(d(d+1)/2,)`` lower triangle (row-major)."""
    k = L_flat.shape[-1]
    d = int(round((math.sqrt(8 * k + 1) - 1) / 2))
    if d * (d + 1) // 2 != k:
        raise ValueError(f"L_flat must have d(d+1)/2 elements for some d; got {k}")
    # gather from [0, L_flat] (index 0 above the diagonal): no in-place write, so it also works under vmap
    index = _triangle(d, L_flat.device)[2]
    padded = torch.cat([torch.zeros_like(L_flat[..., :1]), L_flat], dim=-1)
    return padded[..., index]


def L_to_flat(L: Tensor) -> Tensor:
    """The flat lower triangle (row-major) of a ``(d, d)`` matrix; inverse of :func:`L_from_flat`."""
    d = L.shape[-1]
    return L.reshape(*L.shape[:-2], d * d)[..., _triangle(d, L.device)[1]]


_ROWS: dict[tuple[int, torch.device], tuple[Tensor, Tensor, Tensor]] = {}


def _rows(L_flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For a flat lower triangle of ``k = d(d+1)/2`` entries: the row of each entry ``(k,)``, the
    positions of the diagonal ``(d,)`` (row ``i``'s at ``i(i+3)/2``) and the diagonal mask ``(k,)``
    (cached per size and device: the README model's ``d = 2410`` has 2.9 M entries)."""
    k = L_flat.shape[-1]
    key = (k, L_flat.device)
    if key not in _ROWS:
        d = int(round((math.sqrt(8 * k + 1) - 1) / 2))
        i = torch.arange(d, device=L_flat.device)
        row = torch.repeat_interleave(i, i + 1)
        diag = i * (i + 3) // 2
        mask = torch.zeros(k, dtype=torch.bool, device=L_flat.device)
        mask[diag] = True
        _ROWS.clear()  # one size at a time is the usual case; do not hoard memory
        _ROWS[key] = (row, diag, mask)
    return _ROWS[key]


def raw_from_L(L_flat: Tensor) -> Tensor:
    """The optimiser's unconstrained factor of a flat ``L`` (positive diagonal): ``L = diag(exp(s)) C`` with
    ``C`` unit lower triangular; flat like ``L``, ``s_i`` on the diagonal and ``C_ij = L_ij / L_ii`` below it.
    Inverse of :func:`L_from_raw`."""
    row, diag, mask = _rows(L_flat)
    sd = L_flat[..., diag]
    return torch.where(mask, torch.log(torch.where(mask, L_flat, torch.ones_like(L_flat))), L_flat / sd[..., row])


def L_from_raw(raw: Tensor) -> Tensor:
    """The flat ``L = diag(exp(s)) C`` from the unconstrained factor of :func:`raw_from_L`."""
    row, diag, mask = _rows(raw)
    sd_row = torch.exp(raw[..., diag])[..., row]
    return torch.where(mask, sd_row, raw * sd_row)


def _raw_grad(g_L: Tensor, L_flat: Tensor) -> Tensor:
    """Chain rule from ``dN/dL`` (flat) to the raw factor: ``dN/dC_ij = L_ii dN/dL_ij`` (``j < i``) and
    ``dN/ds_i = sum_j L_ij dN/dL_ij`` (the whole row ``i`` of ``L`` scales with ``exp(s_i)``)."""
    row, diag, mask = _rows(L_flat)
    d = diag.shape[0]
    row_sums = torch.zeros((*g_L.shape[:-1], d), dtype=g_L.dtype, device=g_L.device).index_add(-1, row, g_L * L_flat)
    return torch.where(mask, row_sums[..., row], g_L * L_flat[..., diag][..., row])


def init(params: TensorTree, optimizer: adam_mod.Optimizer | None = None, init_L: float | Tensor | None = None) -> VIDenseState:
    """A fresh state at mean ``params`` (copied) with factor ``init_L``; dtype/device follow params."""
    optimizer = resolve_optimizer(optimizer, None, default_lr=1e-3)
    T.check_floating_leaves(params)
    mean = detached_copy(params)
    flat = T.tree_ravel(mean)
    d = flat.numel()
    if init_L is None:
        init_L = default_init_sd(mean)
        if isinstance(init_L, Tensor):  # under vmap: one scale per member
            init_L = init_L.to(flat.dtype) * torch.eye(d, dtype=flat.dtype, device=flat.device)
    if isinstance(init_L, (int, float)):
        _check_scalar_L(init_L)
        L = abs(float(init_L)) * torch.eye(d, dtype=flat.dtype, device=flat.device)
    elif isinstance(init_L, Tensor):
        L = init_L.detach().to(dtype=flat.dtype, device=flat.device)
        if L.ndim == 1:
            if L.numel() != d * (d + 1) // 2:
                raise ValueError(f"init_L (flat) must have d(d+1)/2 = {d * (d + 1) // 2} elements; got {L.numel()}")
            L = L_from_flat(L)
        if tuple(L.shape) != (d, d):
            raise ValueError(f"init_L must be a ({d}, {d}) lower-triangular matrix; got shape {tuple(L.shape)}")
        if not under_transform(L):  # (a per-member factor under vmap cannot be inspected)
            if not bool(torch.isfinite(L).all()):
                raise ValueError("init_L has NaN or infinite entries")
            if bool((torch.triu(L, 1) != 0).any()):
                raise ValueError("init_L must be lower triangular (a Cholesky factor); it has entries above the diagonal")
            if bool((torch.diagonal(L) == 0).any()):
                raise ValueError("init_L must have a non-zero diagonal (L L^T positive definite); found a zero")
    else:
        raise TypeError(f"init_L must be a number or a tensor; got {type(init_L).__name__}")
    # L D, D = diag(sign L_ii), has the same L L^T and a positive diagonal (the log-diagonal parameterisation)
    L = L * torch.where(torch.diagonal(L, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(L.dtype).unsqueeze(-2)
    L_flat = L_to_flat(L).clone()
    return VIDenseState(
        params=mean,
        L_factor=L_flat,
        opt_state=optimizer.init((mean, raw_from_L(L_flat))),
        nelbo=scalar_like(flat, math.nan),
        step=zero_step(flat),
    )


def update(
    state: VIDenseState,
    batch: Any,
    log_posterior: LogProbFn,
    optimizer: adam_mod.Optimizer,
    temperature: Schedule = 1.0,
    n_samples: int = 1,
    stl: bool = True,
    inplace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[VIDenseState, Any]:
    """One optimiser step on the NELBO over ``(mu, raw)`` (log diagonal, module docstring); returns
    ``(state, aux)`` (``aux`` of the first draw)."""
    temp = resolve_schedule(temperature, state.step, "temperature")
    check_temperature(temp)
    value, (g_mu, g_L), aux = nelbo_and_grad(
        state.params, state.L_factor, batch, log_posterior, temp, n_samples, stl, generator
    )
    raw = raw_from_L(state.L_factor)
    (params, new_raw), opt_state = optimizer.update(
        (g_mu, _raw_grad(g_L, state.L_factor)), state.opt_state, (state.params, raw), inplace=inplace
    )
    L_flat = L_from_raw(new_raw)
    if inplace:
        state.L_factor.copy_(L_flat)
        state.nelbo.copy_(value)
        state.step.add_(1)
        return state, aux
    return VIDenseState(params, L_flat, opt_state, value.detach(), state.step + 1), aux


def nelbo_and_grad(
    mean: TensorTree,
    L_flat: Tensor,
    batch: Any,
    log_posterior: LogProbFn,
    temperature: float | Tensor = 1.0,
    n_samples: int = 1,
    stl: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, tuple[TensorTree, Tensor], Any]:
    """NELBO estimate and its gradient ``(d/dmu tree, d/dL_flat)`` (closed form, module docstring)."""
    check_n_samples(n_samples)
    mu, unravel = T.ravel(mean)
    d = mu.numel()
    if L_flat.ndim != 1 or L_flat.numel() != d * (d + 1) // 2:
        raise ValueError(f"L_factor must be flat with d(d+1)/2 = {d * (d + 1) // 2} elements; got shape {tuple(L_flat.shape)}")
    L = L_from_flat(L_flat)
    eps = torch.randn((n_samples, d), dtype=mu.dtype, device=mu.device, generator=generator)
    thetas = mu + eps @ L.mT  # (S, d)
    log_p, g_tree, aux = draws_value_and_grad(log_posterior, unravel(thetas), batch)
    g = flat_rows(g_tree, n_samples).to(mu.dtype)  # (S, d)

    diag = torch.diagonal(L)
    log_q = -0.5 * (eps * eps).sum(-1) - torch.log(diag.abs()).sum() - 0.5 * d * math.log(2 * math.pi)
    value = (-log_p + temperature * log_q).mean()

    if stl:
        # L^{-T} eps for every draw: solve L^T X = eps^T
        score_theta = torch.linalg.solve_triangular(L.mT, eps.mT, upper=True).mT  # (S, d)
        path = -g - temperature * score_theta
        grad_mu = path.mean(0)
        grad_L = L_to_flat(path.mT @ eps / n_samples)
    else:
        grad_mu = -g.mean(0)
        gL = -(g.mT @ eps) / n_samples
        gL = gL - temperature * torch.diag_embed(1.0 / diag)
        grad_L = L_to_flat(gL)
    return value, (unravel(grad_mu), grad_L), aux


def nelbo(
    mean: TensorTree,
    L_factor: Tensor,
    batch: Any,
    log_posterior: LogProbFn,
    temperature: float = 1.0,
    n_samples: int = 1,
    stl: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Any]:
    """Monte Carlo NELBO at ``q = N(mean, L L^T)`` (``L_factor`` flat); returns ``(value, aux)``."""
    value, _, aux = nelbo_and_grad(mean, L_factor, batch, log_posterior, temperature, n_samples, stl, generator)
    return value, aux


def sample(
    state: VIDenseState, sample_shape: torch.Size | tuple[int, ...] = torch.Size([]), generator: torch.Generator | None = None,
    sampler: GaussianSampler | None = None,
) -> TensorTree | tuple[TensorTree, Any]:
    """Draws from ``q``: a tree whose leaves have shape ``sample_shape + leaf.shape``.

    With ``sampler`` (a :class:`~thermoai.bayes._common.GaussianSampler`, e.g.
    ``thermoai.thermo.circuits.circuit_sampler()``), the draws come from it, given ``mu`` and the precision
    ``(L L^T)^-1 = L^-T L^-1`` (from the factor by triangular inversion), and the result is ``(samples, cost)``."""
    sample_shape = torch.Size(sample_shape)
    mu, unravel = T.ravel(state.params)
    L = L_from_flat(state.L_factor)
    if sampler is not None:
        prec = torch.cholesky_inverse(L)
        return sample_with_sampler(sampler, mu, 0.5 * (prec + prec.mT), sample_shape, generator, unravel)
    eps = torch.randn((*sample_shape, mu.numel()), dtype=mu.dtype, device=mu.device, generator=generator)
    return unravel(mu + eps @ L.mT)


def _check_scalar_L(init_L: float) -> None:
    if not math.isfinite(init_L) or init_L == 0:
        raise ValueError(f"init_L must be a finite non-zero number (L L^T positive definite); got {init_L}")
