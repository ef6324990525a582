"""Laplace approximation with the dense Hessian of the negative log posterior.

Over the ravelled parameters at the mode ``theta*`` (not moved)::

    prec = prior_precision + init_prec + sum over batches of ( rescale * (-hess log p(theta*; batch)) + epsilon I )

``rescale`` converts a batch-averaged log posterior to the data-set scale (e.g. ``rescale = N``);
``epsilon`` is a jitter per update (as in posteriors). The Hessian is forward-over-reverse
(``torch.func.hessian``) on the ravelled vector. Unlike the Fisher/GGN variants it need not be PSD away
from a mode; ``sample`` then raises a clear error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import transform
from thermoai.bayes.laplace.dense_fisher import DenseLaplaceState, accumulate, init, sample
from thermoai.bayes.log_prob import checked
from thermoai.types import LogProbFn, Transform, check_non_negative

__all__ = ["build", "DenseLaplaceState", "init", "update", "sample"]


def build(
    log_posterior: LogProbFn,
    init_prec: float | Tensor = 0.0,
    epsilon: float = 0.0,
    rescale: float = 1.0,
    prior_precision: float | Tensor = 0.0,
) -> Transform:
    """Dense-Hessian Laplace as a :class:`~thermoai.types.Transform`.

    Args:
        log_posterior: ``(params, batch) -> (scalar, aux)``.
        init_prec: starting precision: number, ``(d,)`` diagonal or ``(d, d)`` PSD matrix.
        epsilon: ``>= 0`` added to the diagonal at every update.
        rescale: ``>= 0`` factor on the Hessian.
        prior_precision: prior precision added to the precision (same forms as ``init_prec``).
            With the default 0, directions the data do not curve have infinite variance and ``sample``
            raises; :func:`thermoai.bayes.laplace.add_prior_precision` adds a prior to a fitted state.
    """
    check_non_negative(epsilon, "epsilon")
    check_non_negative(rescale, "rescale")

    return transform(
        init, update, fixed=dict(log_posterior=log_posterior), init_prec=init_prec, epsilon=epsilon,
        rescale=rescale, prior_precision=prior_precision,
    )


def update(
    state: DenseLaplaceState,
    batch: Any,
    log_posterior: LogProbFn,
    epsilon: float = 0.0,
    rescale: float = 1.0,
    inplace: bool = False,
) -> tuple[DenseLaplaceState, Any]:
    """Add ``rescale * (-Hessian) + epsilon I`` of the batch to ``prec``; returns ``(state, aux)``."""
    check_non_negative(epsilon, "epsilon")
    check_non_negative(rescale, "rescale")
    f = checked(log_posterior, "log_posterior")
    mode, unravel = T.ravel(state.params)

    def neg(flat: Tensor) -> tuple[Tensor, Any]:
        value, aux = f(unravel(flat), batch)
        return -value, aux

    with torch.no_grad():
        hess, aux = torch.func.jacfwd(torch.func.jacrev(neg, has_aux=True), has_aux=True)(mode)
    d = mode.numel()
    increment = float(rescale) * hess.to(state.prec.dtype)
    if epsilon:
        increment = increment + float(epsilon) * torch.eye(d, dtype=state.prec.dtype, device=state.prec.device)
    return accumulate(state, increment, inplace, "the Hessian of log_posterior"), aux
