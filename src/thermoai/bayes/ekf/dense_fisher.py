"""Extended Kalman filter with a dense empirical-Fisher precision update.

Online Gaussian posterior ``N(mu, Sigma)`` over the ravelled parameters (``d`` elements). For each batch,
with the per-sample gradients ``G`` (``B x d``) of the log likelihood at ``mu``::

    Sigma_pred = Sigma + transition_cov
    Sigma_new^{-1} = Sigma_pred^{-1} + lr * G^T G / B            (information is *added*)
    mu_new = mu + lr * Sigma_new * mean_i g_i

posteriors 0.1.3 subtracts the Fisher term, so its variance grows with data (and the factorisation fails
for larger ``lr``); here the precision can only grow. Both inverses go through Cholesky factorisations
(``O(d^3)`` per step).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import (
    as_dense_psd, check_finite, check_per_sample_flag, detached_copy, flat_rows, scalar_like, transform, under_transform,
    zero_step,
)
from thermoai.bayes.log_prob import per_sample_grads
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform, check_non_negative, check_scalar_value, resolve_schedule

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
    if isinstance(init_cov, (int, float)):
        check_non_negative(init_cov, "init_cov", strictly=True)
    if isinstance(transition_cov, (int, float)):
        check_non_negative(transition_cov, "transition_cov")
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
    step_lr = resolve_schedule(lr, state.step, "lr")
    check_scalar_value(step_lr, "lr")
    mean, unravel = T.ravel(state.params)
    d = mean.numel()
    if isinstance(transition_cov, (int, float)):
        # c I: add c to the diagonal instead of building and adding a (d, d) matrix every step
        check_non_negative(transition_cov, "transition_cov")
        cov_pred = state.cov
        if transition_cov:
            cov_pred = state.cov.clone()
            cov_pred.diagonal().add_(float(transition_cov))
    else:
        cov_pred = state.cov + as_dense_psd(transition_cov, d, state.cov, "transition_cov")
    values, grads = per_sample_grads(log_likelihood, state.params, batch, per_sample_fn=per_sample, name="log_likelihood")
    B = values.shape[0]
    G = flat_rows(grads, B).to(state.cov.dtype)
    check_finite([G], "the per-sample gradients of log_likelihood have NaN or Inf entries; state left unchanged")

    prec_pred = _spd_inverse(cov_pred, "the predicted covariance (cov + transition_cov)")
    prec_new = prec_pred + step_lr * (G.mT @ G) / B
    cov_new = _spd_inverse(prec_new, "the updated precision")
    delta = step_lr * (cov_new @ G.mean(0))
    ll = values.mean().detach().to(state.log_likelihood.dtype)
    if inplace:
        with torch.no_grad():
            T.tree_insert_(state.params, unravel(mean + delta.to(mean.dtype)))
            state.cov.copy_(cov_new)
            state.log_likelihood.copy_(ll)
            state.step.add_(1)
        return state, values
    return EKFDenseState(unravel(mean + delta.to(mean.dtype)), cov_new, ll, state.step + 1), values


def sample(
    state: EKFDenseState, sample_shape: torch.Size | tuple[int, ...] = torch.Size([]), generator: torch.Generator | None = None
) -> TensorTree:
    """Draws ``mu + chol(Sigma) eps``; leaves of shape ``sample_shape + leaf.shape``."""
    sample_shape = torch.Size(sample_shape)
    mean, unravel = T.ravel(state.params)
    L, info = torch.linalg.cholesky_ex(state.cov)
    if int(info) != 0:
        raise ValueError("cov is not positive definite; cannot sample")
    eps = torch.randn((*sample_shape, mean.numel()), dtype=state.cov.dtype, device=state.cov.device, generator=generator)
    return unravel(mean + (eps @ L.mT).to(mean.dtype))


def _spd_inverse(m: Tensor, what: str) -> Tensor:
    """Inverse of a symmetric positive-definite matrix via Cholesky; clear error otherwise."""
    L, info = torch.linalg.cholesky_ex(0.5 * (m + m.mT))
    if not under_transform(info) and int(info) != 0:
        raise ValueError(f"{what} is not positive definite; state left unchanged")
    inv = torch.cholesky_inverse(L)
    return 0.5 * (inv + inv.mT)
