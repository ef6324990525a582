"""Laplace approximation with a dense generalised Gauss-Newton (GGN) precision.

With ``z_i`` the ``C`` outputs of sample ``i``, ``J_i = dz_i/dtheta`` (``C x d`` over the ravelled
parameters) and ``H_i = -d^2 outer / dz_i^2``::

    prec = prior_precision + init_prec + sum over batches of sum_i J_i^T H_i J_i

The per-sample Jacobians are vmapped (``B x C x d``); the output Hessian is only formed per sample
(``B x C x C``, from ``C`` Hessian-vector products; the outer log likelihood must be a sum or mean of
per-sample terms). ``forward`` must treat samples independently.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from thermoai.bayes import curvature
from thermoai.bayes._common import transform
from thermoai.bayes.laplace.dense_fisher import DenseLaplaceState, accumulate, init, sample
from thermoai.types import ForwardFn, TensorTree, Transform

__all__ = ["build", "DenseLaplaceState", "init", "update", "sample"]


def build(
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    init_prec: float | Tensor = 0.0,
    prior_precision: float | Tensor = 0.0,
) -> Transform:
    """Dense GGN Laplace as a :class:`~thermoai.types.Transform`.

    Args:
        forward: ``forward(params, batch) -> (z, aux)``, ``z`` of shape ``(B, *out)``.
        outer_log_likelihood: ``outer_log_likelihood(z, batch) -> scalar`` (no aux).
        init_prec: starting precision: number, ``(d,)`` diagonal or ``(d, d)`` PSD matrix.
        prior_precision: prior precision added to the precision (same forms).
            With the default 0, directions the data do not curve have infinite variance and ``sample``
            raises; :func:`thermoai.bayes.laplace.add_prior_precision` adds a prior to a fitted state.
    """

    return transform(
        init, update, fixed=dict(forward=forward, outer_log_likelihood=outer_log_likelihood),
        init_prec=init_prec, prior_precision=prior_precision,
    )


def update(
    state: DenseLaplaceState,
    batch: Any,
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    inplace: bool = False,
) -> tuple[DenseLaplaceState, Any]:
    """Add ``sum_i J_i^T H_i J_i`` of the batch to ``prec``; returns ``(state, aux of forward)``."""
    increment, aux = dense_ggn(forward, outer_log_likelihood, state.params, batch)
    return accumulate(state, increment.to(state.prec.dtype), inplace, "the GGN entries"), aux


def dense_ggn(
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    params: TensorTree,
    batch: Any,
) -> tuple[Tensor, Any]:
    """``sum_i J_i^T H_i J_i`` as a ``(d, d)`` matrix and the ``aux`` of ``forward``
    (:func:`thermoai.bayes.curvature.dense`, shared with :mod:`thermoai.bayes.ekf.dense_ggn`)."""
    out = curvature.dense(forward, outer_log_likelihood, params, batch)
    return out.ggn, out.aux
