r"""The predict-update arithmetic shared by the EKFs (private).

Every EKF here is the same information-form Kalman step on a Gaussian ``N(mu, Sigma)`` over the
parameters; the variants differ only in the *information* ``F`` and the *score* ``s`` they feed it:

.. math::

    \Sigma_{pred} = \Sigma + Q, \qquad
    \Sigma_{new}^{-1} = \Sigma_{pred}^{-1} + \mathrm{lr}\, F, \qquad
    \mu_{new} = \mu + \mathrm{lr}\, \Sigma_{new}\, s.

``diag_fisher``/``dense_fisher``: ``F`` the batch-mean empirical Fisher at ``mu``, ``s`` the batch-mean
gradient; ``diag_ggn``/``dense_ggn``: ``F`` the summed GGN, ``s`` the summed gradient
(:mod:`thermoai.bayes.curvature`). The diagonal variants keep only ``diag(F)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import as_dense_psd, check_finite, copy_like, under_transform
from thermoai.types import Schedule, TensorTree, check_non_negative, check_scalar_value, resolve_schedule


def resolve_lr(lr: Schedule, step: Tensor) -> float | Tensor:
    value = resolve_schedule(lr, step, "lr")
    check_scalar_value(value, "lr")
    return value


# ------------------------------------------------------------------------------------------ dense


def predicted_cov(cov: Tensor, transition_cov: float | Tensor) -> Tensor:
    """``cov + transition_cov`` (number ``c``: ``c I`` added to the diagonal, no ``(d, d)`` matrix built)."""
    if isinstance(transition_cov, (int, float)):
        check_non_negative(transition_cov, "transition_cov")
        if not transition_cov:
            return cov
        out = cov.clone()
        out.diagonal().add_(float(transition_cov))
        return out
    return cov + as_dense_psd(transition_cov, cov.shape[-1], cov, "transition_cov")


def spd_inverse(m: Tensor, what: str) -> Tensor:
    """Inverse of a symmetric positive-definite matrix via Cholesky; clear error otherwise."""
    L, info = torch.linalg.cholesky_ex(0.5 * (m + m.mT))
    if not under_transform(info) and int(info) != 0:
        raise ValueError(f"{what} is not positive definite; state left unchanged")
    inv = torch.cholesky_inverse(L)
    return 0.5 * (inv + inv.mT)


def dense_step(
    state: Any,
    information: Tensor,
    score: Tensor,
    log_likelihood: Tensor,
    lr: float | Tensor,
    transition_cov: float | Tensor,
    inplace: bool,
) -> Any:
    """One information-form step on an :class:`~thermoai.bayes.ekf.dense_fisher.EKFDenseState`.

    ``information`` ``(d, d)`` and ``score`` ``(d,)`` over ``tree_ravel(state.params)``; ``log_likelihood``
    (0-d) is recorded. Returns the new state (``state`` itself, overwritten, when ``inplace``).
    """
    check_finite([information, score], "the curvature or gradient has NaN or Inf entries; state left unchanged")
    mean, unravel = T.ravel(state.params)
    cov_pred = predicted_cov(state.cov, transition_cov)
    prec_new = spd_inverse(cov_pred, "the predicted covariance (cov + transition_cov)") + lr * information.to(state.cov.dtype)
    cov_new = spd_inverse(prec_new, "the updated precision")
    new_mean = unravel(mean + (lr * (cov_new @ score.to(cov_new.dtype))).to(mean.dtype))
    ll = log_likelihood.detach().to(state.log_likelihood.dtype)
    if inplace:
        with torch.no_grad():
            T.tree_insert_(state.params, new_mean)
            state.cov.copy_(cov_new)
            state.log_likelihood.copy_(ll)
            state.step.add_(1)
        return state
    return type(state)(new_mean, cov_new, ll, state.step + 1)


# ------------------------------------------------------------------------------------------ diagonal


def diag_step(
    state: Any,
    information: list[Tensor],
    score: list[Tensor],
    log_likelihood: Tensor,
    lr: float | Tensor,
    transition_sd: float | TensorTree,
    inplace: bool,
) -> Any:
    """One step on an :class:`~thermoai.bayes.ekf.diag_fisher.EKFDiagState` with the diagonal information
    and the score given leaf by leaf (lists in the order of ``T.leaves(state.params)``)."""
    check_finite(information + score, "the curvature or gradient has NaN or Inf entries; state left unchanged")
    check_positive_or_tree(transition_sd, "transition_sd", strictly=False)
    sd = T.leaves(state.sd_diag)
    if is_scalar(transition_sd):
        var_pred = [s * s + float(transition_sd) ** 2 for s in sd]
    else:
        tsd = T.leaves(like(state.params, transition_sd, "transition_sd"))
        var_pred = [s * s + t * t for s, t in zip(sd, tsd)]
    var_new = [1.0 / (1.0 / v + lr * f) for v, f in zip(var_pred, information)]
    delta = [lr * v * m for v, m in zip(var_new, score)]
    ll = log_likelihood.detach().to(state.log_likelihood.dtype)
    if inplace:
        with torch.no_grad():
            torch._foreach_add_(T.leaves(state.params), delta)
            torch._foreach_copy_(sd, torch._foreach_sqrt(var_new))
            state.log_likelihood.copy_(ll)
            state.step.add_(1)
        return state
    spec = T.structure(state.params)
    new_mean = T.unflatten(spec, [m + dm for m, dm in zip(T.leaves(state.params), delta)])
    new_sd = T.unflatten(T.structure(state.sd_diag), [torch.sqrt(v) for v in var_new])
    return type(state)(new_mean, new_sd, ll, state.step + 1)


def is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1)


def like(params: TensorTree, value: float | TensorTree, name: str) -> TensorTree:
    """``value`` (a number or a tree like ``params``) as a tree of tensors like ``params``."""
    if is_scalar(value):
        return T.tree_map(lambda x: torch.full_like(x, float(value)), params)
    return copy_like(params, value, name)


def check_positive_or_tree(value: Any, name: str, strictly: bool) -> None:
    if is_scalar(value):
        check_non_negative(value, name, strictly=strictly)
        return
    for leaf in T.leaves(value):
        if not isinstance(leaf, Tensor):
            raise TypeError(f"{name} must be a number or a tree of tensors; found {type(leaf).__name__}")
        bad = (leaf <= 0) if strictly else (leaf < 0)
        if not bool(torch.isfinite(leaf).all()) or bool(bad.any()):
            raise ValueError(f"{name} must be finite and {'positive' if strictly else 'non-negative'} everywhere")


def check_dense_hyper(init_cov: Any, transition_cov: Any) -> None:
    if isinstance(init_cov, (int, float)):
        check_non_negative(init_cov, "init_cov", strictly=True)
    if isinstance(transition_cov, (int, float)):
        check_non_negative(transition_cov, "transition_cov")

