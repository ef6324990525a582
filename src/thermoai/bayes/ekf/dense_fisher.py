"""Extended Kalman filter with a dense empirical-Fisher precision update.

Online Gaussian posterior ``N(mu, Sigma)`` over the ravelled parameters (``d`` elements). For each batch,
with the per-sample gradients ``G`` (``B x d``) of the log likelihood at ``mu``::

    Sigma_pred = Sigma + transition_cov
    Sigma_new^{-1} = Sigma_pred^{-1} + lr * G^T G / B            (information is *added*)
    mu_new = mu + lr * Sigma_new * mean_i g_i

posteriors 0.1.3 subtracts the Fisher term, so its variance grows with data (and the factorisation fails
for larger ``lr``); here the precision can only grow. Both inverses go through Cholesky factorisations
(``O(d^3)`` per step). The arithmetic is shared with :mod:`~thermoai.bayes.ekf.dense_ggn`
(:mod:`thermoai.bayes.ekf._common`).

On a linear-Gaussian model this is *not* the Kalman filter: the empirical Fisher of sample ``i`` is
``x_i x_i^T r_i^2 / s^4`` (``r_i`` the residual at the current mean), not ``x_i x_i^T / s^2``; early
residuals, inflated while the mean is still at the prior, over-state the information and the mean then
moves too little. Use :mod:`~thermoai.bayes.ekf.dense_ggn` for the exact Kalman filter.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import (
    GaussianSampler, as_dense_psd, check_finite, check_per_sample_flag, detached_copy, flat_rows, sample_with_sampler,
    scalar_like, transform, under_transform, zero_step,
)
from thermoai.bayes.ekf import _common as E
from thermoai.bayes.log_prob import per_sample_grads
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform, check_non_negative

__all__ = ["build", "EKFDenseState", "init", "update", "sample"]


def build(
    log_likelihood: LogProbFn,
    lr: Schedule,
    transition_cov: float | Tensor = 0.0,
    per_sample: bool = False,
    init_cov: float | Tensor = 1.0,
) -> Transform:
    """Dense EKF as a :class:`~thermoai.types.Transform`.

    Args:
        log_likelihood: ``(params, batch) -> (scalar, aux)`` (or per-sample values with ``per_sample``).
        lr: ``>= 0`` or a schedule.
        transition_cov: random-walk covariance per step: number ``c`` (``c I``), ``(d,)`` diagonal or
            ``(d, d)`` PSD matrix.
        per_sample: whether ``log_likelihood`` already returns per-sample values ``(B,)``.
        init_cov: prior covariance: number ``c > 0``, ``(d,)`` positive diagonal or ``(d, d)`` positive
            definite matrix.
    """
    check_non_negative(lr, "lr")
    E.check_dense_hyper(init_cov, transition_cov)
    check_per_sample_flag(per_sample)

    return transform(
        init, update, fixed=dict(log_likelihood=log_likelihood, per_sample=per_sample), lr=lr,
        transition_cov=transition_cov, init_cov=init_cov,
    )


class EKFDenseState(NamedTuple):
    """Dense EKF state.

    Attributes:
        params: posterior mean (tree).
        cov: ``(d, d)`` posterior covariance over ``tree_ravel(params)`` (params' dtype/device).
        log_likelihood: mean per-sample log likelihood of the last batch at the old mean (0-d; NaN first).
        step: number of updates (0-d int64).
    """

    params: TensorTree
    cov: Tensor
    log_likelihood: Tensor
    step: Tensor


def init(params: TensorTree, init_cov: float | Tensor = 1.0) -> EKFDenseState:
    """Fresh state at mean ``params`` (copied) with covariance ``init_cov`` (positive definite)."""
    T.check_floating_leaves(params)
    mean = detached_copy(params)
    flat = T.tree_ravel(mean)
    if isinstance(init_cov, (int, float)):
        check_non_negative(init_cov, "init_cov", strictly=True)
    cov = as_dense_psd(init_cov, flat.numel(), flat, "init_cov")
    if int(torch.linalg.cholesky_ex(cov)[1]) != 0:
        raise ValueError("init_cov must be positive definite (its Cholesky factorisation failed)")
    return EKFDenseState(
        params=mean,
        cov=cov,
        log_likelihood=scalar_like(flat, float("nan")),
        step=zero_step(flat),
    )


def update(
    state: EKFDenseState,
    batch: Any,
    log_likelihood: LogProbFn,
    lr: Schedule,
    transition_cov: float | Tensor = 0.0,
    per_sample: bool = False,
    inplace: bool = False,
) -> tuple[EKFDenseState, Tensor]:
    """One predict-update step; returns ``(state, per-sample log likelihood values (B,))``."""
    step_lr = E.resolve_lr(lr, state.step)
    values, grads = per_sample_grads(log_likelihood, state.params, batch, per_sample_fn=per_sample, name="log_likelihood")
    B = values.shape[0]
    G = flat_rows(grads, B).to(state.cov.dtype)
    check_finite([G], "the per-sample gradients of log_likelihood have NaN or Inf entries; state left unchanged")
    new = E.dense_step(state, G.mT @ G / B, G.mean(0), values.mean(), step_lr, transition_cov, inplace)
    return new, values


def sample(
    state: EKFDenseState, sample_shape: torch.Size | tuple[int, ...] = torch.Size([]), generator: torch.Generator | None = None,
    sampler: GaussianSampler | None = None,
) -> TensorTree | tuple[TensorTree, Any]:
    """Draws ``mu + chol(Sigma) eps``; leaves of shape ``sample_shape + leaf.shape``.

    With ``sampler`` (a :class:`~thermoai.bayes._common.GaussianSampler`, e.g.
    ``thermoai.thermo.circuits.circuit_sampler()``), the draws come from it, given ``mu`` and the precision
    ``Sigma^-1`` (from the Cholesky factor of the filter's covariance), and the result is ``(samples, cost)``."""
    sample_shape = torch.Size(sample_shape)
    mean, unravel = T.ravel(state.params)
    L, info = torch.linalg.cholesky_ex(state.cov)
    if not under_transform(info) and int(info) != 0:  # not checkable under vmap
        raise ValueError("cov is not positive definite; cannot sample")
    if sampler is not None:
        prec = torch.cholesky_inverse(L)
        return sample_with_sampler(sampler, mean, 0.5 * (prec + prec.mT).to(mean.dtype), sample_shape, generator,
                                   unravel)
    eps = torch.randn((*sample_shape, mean.numel()), dtype=state.cov.dtype, device=state.cov.device, generator=generator)
    return unravel(mean + (eps @ L.mT).to(mean.dtype))
