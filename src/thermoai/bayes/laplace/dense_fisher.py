"""Laplace approximation with a dense empirical-Fisher precision.

Over the ravelled parameter vector (``d`` elements, :func:`thermoai.tree.ravel` order), at the mode
``theta*`` (not moved)::

    prec = prior_precision + init_prec + sum over batches of G^T G,     G[i] = grad l_i(theta*)   (B x d)

``l_i`` is the log posterior on sample ``i`` alone (or the ``i``-th entry with ``per_sample=True``).
``sample`` draws ``theta* + L^{-T} eps`` with ``prec = L L^T`` (one Cholesky factorisation) and reshapes
each leaf to ``sample_shape + leaf.shape``, for leaves of any rank.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import (
    GaussianSampler, check_finite, check_per_sample_flag, detached_copy, flat_rows, sample_with_sampler, transform,
    under_transform, zero_step,
)
from thermoai.bayes.laplace._common import dense_init, not_positive_definite
from thermoai.bayes.log_prob import per_sample_grads
from thermoai.types import LogProbFn, TensorTree, Transform, check_non_negative

__all__ = ["build", "DenseLaplaceState", "init", "update", "sample"]


def build(
    log_posterior: LogProbFn,
    per_sample: bool = False,
    init_prec: float | Tensor = 0.0,
    prior_precision: float | Tensor = 0.0,
) -> Transform:
    """Dense empirical-Fisher Laplace as a :class:`~thermoai.types.Transform`.

    Args:
        log_posterior: ``(params, batch) -> (scalar, aux)``, or per-sample values with ``per_sample=True``.
        per_sample: whether ``log_posterior`` already returns per-sample values ``(B,)``.
        init_prec: starting precision: number ``c`` (``c I``), ``(d,)`` diagonal or ``(d, d)`` PSD matrix.
        prior_precision: prior precision added to the precision (same forms, >= 0 / PSD).
            With the default 0, directions the data do not curve have infinite variance and ``sample``
            raises; :func:`thermoai.bayes.laplace.add_prior_precision` adds a prior to a fitted state.
    """
    check_per_sample_flag(per_sample)

    return transform(
        init, update, fixed=dict(log_posterior=log_posterior), per_sample=per_sample, init_prec=init_prec,
        prior_precision=prior_precision,
    )


class DenseLaplaceState(NamedTuple):
    """Dense Laplace state.

    Attributes:
        params: the mode (tree; not changed by updates).
        prec: ``(d, d)`` precision over ``tree_ravel(params)``, dtype/device of params.
        step: number of updates (0-d int64).
    """

    params: TensorTree
    prec: Tensor
    step: Tensor


def init(params: TensorTree, init_prec: Any = 0.0, prior_precision: Any = 0.0) -> DenseLaplaceState:
    """Fresh state: mode ``params`` (copied), precision ``init_prec + prior_precision`` (params' dtype/device)."""
    T.check_floating_leaves(params)
    mode = detached_copy(params)
    flat = T.tree_ravel(mode)
    return DenseLaplaceState(
        params=mode,
        prec=dense_init(flat, init_prec, prior_precision),
        step=zero_step(flat),
    )


def update(
    state: DenseLaplaceState,
    batch: Any,
    log_posterior: LogProbFn,
    per_sample: bool = False,
    inplace: bool = False,
) -> tuple[DenseLaplaceState, Tensor]:
    """Add ``G^T G`` of the batch to ``prec``; returns ``(state, per-sample values (B,))``."""
    values, grads = per_sample_grads(log_posterior, state.params, batch, per_sample_fn=per_sample, name="log_posterior")
    G = flat_rows(grads, values.shape[0]).to(state.prec.dtype)
    increment = G.mT @ G
    return accumulate(state, increment, inplace, "the per-sample gradients of log_posterior"), values


def accumulate(state: DenseLaplaceState, increment: Tensor, inplace: bool, what: str) -> DenseLaplaceState:
    if increment.shape != state.prec.shape:
        raise ValueError(f"precision increment has shape {tuple(increment.shape)}, state.prec {tuple(state.prec.shape)}")
    check_finite([increment], f"{what} have NaN or Inf entries; state left unchanged")
    if inplace:
        with torch.no_grad():
            state.prec.add_(increment)
            state.step.add_(1)
        return state
    return DenseLaplaceState(state.params, state.prec + increment, state.step + 1)


def sample(
    state: DenseLaplaceState,
    sample_shape: torch.Size | tuple[int, ...] = torch.Size([]),
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    sampler: GaussianSampler | None = None,
) -> TensorTree | tuple[TensorTree, Any]:
    """Draws from ``N(theta*, temperature * prec^{-1})``: leaves ``sample_shape + leaf.shape`` (any rank).

    With ``sampler`` (a :class:`~thermoai.bayes._common.GaussianSampler`, e.g.
    ``thermoai.thermo.circuits.circuit_sampler()``), the draws come from it, given the mode and the
    precision ``prec / temperature`` (no factorisation here), and the result is ``(samples, cost)``."""
    check_non_negative(temperature, "temperature")
    sample_shape = torch.Size(sample_shape)
    mode, unravel = T.ravel(state.params)
    prec = state.prec.to(mode.dtype)
    if sampler is not None:
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be positive with a sampler (precision prec / temperature); got {temperature}")
        return sample_with_sampler(sampler, mode, 0.5 * (prec + prec.mT) / float(temperature), sample_shape,
                                   generator, unravel)
    L, info = torch.linalg.cholesky_ex(0.5 * (prec + prec.mT))
    if not under_transform(info) and int(info) != 0:  # under vmap (many replications) the check is skipped
        raise not_positive_definite(prec)
    eps = torch.randn((*sample_shape, mode.numel()), dtype=mode.dtype, device=mode.device, generator=generator)
    # x = L^{-T} eps has covariance (L L^T)^{-1} = prec^{-1}
    x = torch.linalg.solve_triangular(L.mT, eps.reshape(-1, mode.numel()).mT, upper=True).mT
    x = x.reshape(*sample_shape, mode.numel())
    return unravel(mode + float(temperature) ** 0.5 * x)
