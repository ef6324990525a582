"""Extended Kalman filter with a diagonal empirical-Fisher precision update.

Online Gaussian posterior ``N(mu, diag(sigma^2))`` over the parameters (Ollivier 2019: the EKF on a
static parameter is online natural gradient). For each batch, with per-sample gradients ``g_i`` of the
log likelihood at ``mu`` and ``lr`` (the likelihood's inverse temperature / step size)::

    sigma_pred^2 = sigma^2 + transition_sd^2                   (predict: random-walk parameters)
    1/sigma_new^2 = 1/sigma_pred^2 + lr * mean_i g_i^2         (precision grows with information)
    mu_new = mu + lr * sigma_new^2 * mean_i g_i                (natural-gradient step)

Processing a data set of N points once with batches of size B and ``lr = B`` adds the data set's summed
empirical Fisher to the prior precision ``1 / init_sds^2``; for a linear-Gaussian model this tends to the
exact posterior (the empirical Fisher's mean is the true Fisher). For the exact Kalman filter on a
linear-Gaussian model (a diagonal one when the posterior is diagonal) use
:mod:`~thermoai.bayes.ekf.diag_ggn`, which shares this arithmetic (:mod:`thermoai.bayes.ekf._common`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import (
    check_finite, check_per_sample_flag, detached_copy, sample_diag_normal, scalar_like, transform, zero_step,
)
from thermoai.bayes.ekf import _common as E
from thermoai.bayes.log_prob import per_sample_grads
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform, check_non_negative

__all__ = ["build", "EKFDiagState", "init", "update", "sample"]


def build(
    log_likelihood: LogProbFn,
    lr: Schedule,
    transition_sd: float | TensorTree = 0.0,
    per_sample: bool = False,
    init_sds: float | TensorTree = 1.0,
) -> Transform:
    """Diagonal EKF as a :class:`~thermoai.types.Transform`.

    Args:
        log_likelihood: ``(params, batch) -> (scalar, aux)`` (or per-sample values with ``per_sample``).
        lr: ``>= 0`` or a schedule; multiplies the batch-mean gradient and Fisher.
        transition_sd: ``>= 0`` random-walk sd per step (number or tree like params).
        per_sample: whether ``log_likelihood`` already returns per-sample values ``(B,)``.
        init_sds: prior sd (``> 0``; number or tree).
    """
    check_non_negative(lr, "lr")
    E.check_positive_or_tree(transition_sd, "transition_sd", strictly=False)
    E.check_positive_or_tree(init_sds, "init_sds", strictly=True)
    check_per_sample_flag(per_sample)

    return transform(
        init, update, fixed=dict(log_likelihood=log_likelihood, per_sample=per_sample), lr=lr,
        transition_sd=transition_sd, init_sds=init_sds,
    )


class EKFDiagState(NamedTuple):
    """Diagonal EKF state.

    Attributes:
        params: the posterior mean ``mu`` (tree).
        sd_diag: posterior sds ``sigma`` (tree like params).
        log_likelihood: mean per-sample log likelihood of the last batch at the old mean (0-d; NaN first).
        step: number of updates (0-d int64).
    """

    params: TensorTree
    sd_diag: TensorTree
    log_likelihood: Tensor
    step: Tensor


def init(params: TensorTree, init_sds: float | TensorTree = 1.0) -> EKFDiagState:
    """Fresh state at mean ``params`` (copied) with sds ``init_sds``; dtype/device follow params."""
    E.check_positive_or_tree(init_sds, "init_sds", strictly=True)
    ref = T.check_floating_leaves(params)[0]
    mean = detached_copy(params)
    return EKFDiagState(
        params=mean,
        sd_diag=E.like(mean, init_sds, "init_sds"),
        log_likelihood=scalar_like(ref, float("nan")),
        step=zero_step(ref),
    )


def update(
    state: EKFDiagState,
    batch: Any,
    log_likelihood: LogProbFn,
    lr: Schedule,
    transition_sd: float | TensorTree = 0.0,
    per_sample: bool = False,
    inplace: bool = False,
) -> tuple[EKFDiagState, Tensor]:
    """One predict-update step; returns ``(state, per-sample log likelihood values (B,))``."""
    step_lr = E.resolve_lr(lr, state.step)
    E.check_positive_or_tree(transition_sd, "transition_sd", strictly=False)
    values, grads = per_sample_grads(log_likelihood, state.params, batch, per_sample_fn=per_sample, name="log_likelihood")
    g = T.leaves(grads)
    fisher = [(x * x).mean(0) for x in g]
    check_finite(fisher, "the per-sample gradients of log_likelihood have NaN or Inf entries; state left unchanged")
    new = E.diag_step(state, fisher, [x.mean(0) for x in g], values.mean(), step_lr, transition_sd, inplace)
    return new, values


def sample(
    state: EKFDiagState, sample_shape: torch.Size | tuple[int, ...] = torch.Size([]), generator: torch.Generator | None = None
) -> TensorTree:
    """Draws ``mu + sigma * eps``; leaves of shape ``sample_shape + leaf.shape``."""
    return sample_diag_normal(state.params, state.sd_diag, sample_shape, generator)
