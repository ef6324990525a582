"""Extended Kalman filter with a diagonal empirical-Fisher precision update.

Online Gaussian posterior ``N(mu, diag(sigma^2))`` over the parameters (Ollivier 2019: the EKF on a
static parameter is online natural gradient). For each batch, with per-sample gradients ``g_i`` of the
log likelihood at ``mu`` and ``lr`` (the likelihood's inverse temperature / step size)::

    sigma_pred^2 = sigma^2 + transition_sd^2                   (predict: random-walk parameters)
    1/sigma_new^2 = 1/sigma_pred^2 + lr * mean_i g_i^2         (precision grows with information)
    mu_new = mu + lr * sigma_new^2 * mean_i g_i                (natural-gradient step)

Processing a data set of N points once with batches of size B and ``lr = B`` adds the data set's summed
empirical Fisher to the prior precision ``1 / init_sds^2``; for a linear-Gaussian model this tends to the
exact posterior (the empirical Fisher's mean is the true Fisher).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import (
    check_finite, check_per_sample_flag, copy_like, detached_copy, sample_diag_normal, scalar_like, transform, zero_step,
)
from thermoai.bayes.log_prob import per_sample_grads
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform, check_non_negative, check_scalar_value, resolve_schedule

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
    _check_positive_or_tree(transition_sd, "transition_sd", strictly=False)
    _check_positive_or_tree(init_sds, "init_sds", strictly=True)
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
    _check_positive_or_tree(init_sds, "init_sds", strictly=True)
    ref = T.check_floating_leaves(params)[0]
    mean = detached_copy(params)
    return EKFDiagState(
        params=mean,
        sd_diag=_like(mean, init_sds, "init_sds"),
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
    step_lr = resolve_schedule(lr, state.step, "lr")
    check_scalar_value(step_lr, "lr")
    _check_positive_or_tree(transition_sd, "transition_sd", strictly=False)
    values, grads = per_sample_grads(log_likelihood, state.params, batch, per_sample_fn=per_sample, name="log_likelihood")
    g = T.leaves(grads)
    mean_g = [x.mean(0) for x in g]
    fisher = [(x * x).mean(0) for x in g]
    check_finite(fisher, "the per-sample gradients of log_likelihood have NaN or Inf entries; state left unchanged")

    sd = T.leaves(state.sd_diag)
    if _is_scalar(transition_sd):
        var_pred = [s * s + float(transition_sd) ** 2 for s in sd]
    else:
        tsd = T.leaves(_like(state.params, transition_sd, "transition_sd"))
        var_pred = [s * s + t * t for s, t in zip(sd, tsd)]
    var_new = [1.0 / (1.0 / v + step_lr * f) for v, f in zip(var_pred, fisher)]
    delta = [step_lr * v * m for v, m in zip(var_new, mean_g)]
    ll = values.mean().detach()
    if inplace:
        with torch.no_grad():
            torch._foreach_add_(T.leaves(state.params), delta)
            torch._foreach_copy_(sd, torch._foreach_sqrt(var_new))
            state.log_likelihood.copy_(ll)
            state.step.add_(1)
        return state, values
    spec = T.structure(state.params)
    new_mean = T.unflatten(spec, [m + dm for m, dm in zip(T.leaves(state.params), delta)])
    new_sd = T.unflatten(T.structure(state.sd_diag), [torch.sqrt(v) for v in var_new])
    return EKFDiagState(new_mean, new_sd, ll.to(state.log_likelihood.dtype), state.step + 1), values


def sample(
    state: EKFDiagState, sample_shape: torch.Size | tuple[int, ...] = torch.Size([]), generator: torch.Generator | None = None
) -> TensorTree:
    """Draws ``mu + sigma * eps``; leaves of shape ``sample_shape + leaf.shape``."""
    return sample_diag_normal(state.params, state.sd_diag, sample_shape, generator)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1)


def _like(params: TensorTree, value: float | TensorTree, name: str) -> TensorTree:
    """``value`` (a number or a tree like ``params``) as a tree of tensors like ``params``."""
    if _is_scalar(value):
        return T.tree_map(lambda x: torch.full_like(x, float(value)), params)
    return copy_like(params, value, name)


def _check_positive_or_tree(value: Any, name: str, strictly: bool) -> None:
    if _is_scalar(value):
        check_non_negative(value, name, strictly=strictly)
        return
    for leaf in T.leaves(value):
        if not isinstance(leaf, Tensor):
            raise TypeError(f"{name} must be a number or a tree of tensors; found {type(leaf).__name__}")
        bad = (leaf <= 0) if strictly else (leaf < 0)
        if not bool(torch.isfinite(leaf).all()) or bool(bad.any()):
            raise ValueError(f"{name} must be finite and {'positive' if strictly else 'non-negative'} everywhere")
