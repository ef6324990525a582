"""Laplace approximation with a diagonal generalised Gauss-Newton (GGN) precision.

The model is split as ``log p(y | theta) = outer_log_likelihood(forward(theta, x), batch)``. With
``z_i`` the output of sample ``i`` (``C`` numbers), ``J_i = dz_i / dtheta`` and
``H_i = -d^2 outer / dz_i^2`` (``C x C``)::

    prec = prior_precision + init_prec_diag + sum over batches of diag( sum_i J_i^T H_i J_i )

computed without the ``(B C) x (B C)`` batch output Hessian or the full Jacobian:

1. the per-sample blocks ``H_i`` come from ``C`` Hessian-vector products of the outer log likelihood
   (it must be a sum or mean of per-sample terms, which every usual loss is);
2. ``H_i = U_i diag(lambda_i) U_i^T`` (``C x C`` eigendecomposition), so
   ``diag(J_i^T H_i J_i) = sum_k lambda_ik (J_i^T u_ik)^2``;
3. ``J_i^T u_ik`` is one vector-Jacobian product, vmapped over samples, looped over ``k``: memory is
   ``O(B P)`` for ``P`` parameters, not ``O(B C P)``.

``forward(params, batch) -> (z, aux)`` must treat samples independently (a sample run as a batch of one
gives the same output row), e.g. no batch-norm in training mode.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import curvature
from thermoai.bayes._common import check_finite, transform
from thermoai.bayes.laplace.diag_fisher import DiagLaplaceState, _accumulate, init, sample
from thermoai.types import ForwardFn, TensorTree, Transform

__all__ = ["build", "DiagLaplaceState", "init", "update", "sample"]


def build(
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    init_prec_diag: float | TensorTree = 0.0,
    prior_precision: float | TensorTree = 0.0,
) -> Transform:
    """Diagonal GGN Laplace as a :class:`~thermoai.types.Transform`.

    Args:
        forward: ``forward(params, batch) -> (z, aux)`` with ``z`` of shape ``(B, *out)``, un-reduced.
        outer_log_likelihood: ``outer_log_likelihood(z, batch) -> scalar`` (summed over the batch; no aux).
        init_prec_diag: starting precision (number or tree, >= 0).
        prior_precision: prior precision added to the precision (number or tree, >= 0).
            With the default 0, directions the data do not curve have infinite variance and ``sample``
            raises; :func:`thermoai.bayes.laplace.add_prior_precision` adds a prior to a fitted state.
    """

    return transform(
        init, update, fixed=dict(forward=forward, outer_log_likelihood=outer_log_likelihood),
        init_prec_diag=init_prec_diag, prior_precision=prior_precision,
    )


def update(
    state: DiagLaplaceState,
    batch: Any,
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    inplace: bool = False,
) -> tuple[DiagLaplaceState, Any]:
    """Add ``diag(sum_i J_i^T H_i J_i)`` of the batch to ``prec_diag``; returns ``(state, aux of forward)``."""
    increment, aux = diag_ggn(forward, outer_log_likelihood, state.params, batch)
    check_finite(
        T.leaves(increment), "the GGN diagonal has NaN or Inf entries (check forward / outer_log_likelihood); state left unchanged"
    )
    return _accumulate(state, T.leaves(increment), inplace), aux


def diag_ggn(
    forward: ForwardFn,
    outer_log_likelihood: Callable[[Tensor, Any], Tensor],
    params: TensorTree,
    batch: Any,
) -> tuple[TensorTree, Any]:
    """``diag(sum_i J_i^T H_i J_i)`` as a tree like ``params`` and the ``aux`` of ``forward``
    (:func:`thermoai.bayes.curvature.diag`, shared with :mod:`thermoai.bayes.ekf.diag_ggn`)."""
    out = curvature.diag(forward, outer_log_likelihood, params, batch, with_grad=False)
    return out.ggn, out.aux
