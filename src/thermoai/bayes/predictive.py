"""Posterior-predictive summaries: sample forwards, classifier uncertainty split, linearised predictive.

Classifiers. With ``S`` posterior draws of logits and ``p_s = softmax(logits_s)``::

    mean predictive      p_bar = (1/S) sum_s p_s
    total uncertainty    H[p_bar]                      (entropy of the mean, nats)
    aleatoric            (1/S) sum_s H[p_s]            (expected entropy)
    epistemic            H[p_bar] - (1/S) sum_s H[p_s] (mutual information between label and parameters, >= 0)

(Depeweg et al. 2018; the split used in posteriors' Llama-3 experiment.)

Linearised predictive (MacKay 1992; Immer et al. 2021): the network is replaced by its first-order
expansion at the mean, ``f(theta) ~ f(mu) + J (theta - mu)``, so for ``theta ~ N(mu, Sigma)`` each sample's
output is Gaussian, ``N(f_i(mu), J_i Sigma J_i^T)`` (``C x C``). :func:`linearized_forward_diag` and
:func:`linearized_forward_dense` return that mean and the Cholesky factor of the covariance, like
``posteriors.linearized_forward_diag``; :func:`sample_linearized` draws outputs from it.

Language models: :func:`entropy_split` and :class:`EntropySplit` (from :mod:`thermoai.bayes.uncertainty`,
re-exported here) make the same split on any logits, one draw at a time, with ``log p_bar(target)``;
:func:`sequence_mean` averages per-token values over a sequence.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import vmap

from thermoai import tree as T
from thermoai.bayes._common import per_sample_jacobians
# the streamed entropy split for large-vocabulary logits lives in bayes.uncertainty; reachable from here too
from thermoai.bayes.uncertainty import EntropySplit, Uncertainty, entropy_split, sequence_mean
from thermoai.types import TensorTree

__all__ = [
    "sample_forward",
    "EntropySplit",
    "Uncertainty",
    "entropy_split",
    "sequence_mean",
    "ClassificationUncertainty",
    "classification_uncertainty",
    "log_predictive_probs",
    "LinearizedOutput",
    "linearized_forward_diag",
    "linearized_forward_dense",
    "sample_linearized",
]


def sample_forward(
    forward: Callable[[TensorTree, Any], Any], param_samples: TensorTree, batch: Any, chunk_size: int | None = None
) -> Any:
    """``forward`` at each of ``S`` parameter draws (leaves with a leading ``S``), vmapped.

    ``forward(params, batch)`` may return a tensor or ``(outputs, aux)``; the result has the same form
    with a leading ``S`` dimension on every tensor.
    """
    leaves = T.leaves(param_samples)
    if not leaves:
        raise ValueError("param_samples is an empty tree")
    S = leaves[0].shape[0] if leaves[0].ndim else None
    if S is None or any(x.ndim == 0 or x.shape[0] != S for x in leaves):
        raise ValueError("param_samples must have the same leading sample dimension on every leaf")
    with torch.no_grad():
        return vmap(lambda p: forward(p, batch), chunk_size=chunk_size, randomness="different")(param_samples)


class ClassificationUncertainty(NamedTuple):
    """Predictive summaries per input (shapes: ``(..., C)`` for probs, ``(...)`` for the entropies, nats)."""

    mean_probs: Tensor
    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor


def log_predictive_probs(logits: Tensor, dim: int = 0) -> Tensor:
    """``log p_bar`` with ``p_bar`` the mean of ``softmax(logits)`` over the sample dimension ``dim``
    (log-sum-exp, stable for very confident members)."""
    _check_logits(logits, dim)
    log_p = torch.log_softmax(logits, dim=-1)
    return torch.logsumexp(log_p, dim=dim) - math.log(logits.shape[dim])


def classification_uncertainty(logits: Tensor, dim: int = 0) -> ClassificationUncertainty:
    """Split the predictive entropy of ``S`` posterior draws of logits into aleatoric and epistemic parts.

    Args:
        logits: ``(S, ..., C)`` (sample dimension ``dim``, classes last), unnormalised.
    Returns:
        :class:`ClassificationUncertainty` with ``total = aleatoric + epistemic`` and ``epistemic >= 0``.
    """
    _check_logits(logits, dim)
    log_p = torch.log_softmax(logits, dim=-1)
    log_mean = torch.logsumexp(log_p, dim=dim) - math.log(logits.shape[dim])
    mean_probs = log_mean.exp()
    total = -(mean_probs * log_mean).sum(-1)
    member_entropy = -(log_p.exp() * log_p).sum(-1)  # exp(log p) * log p -> 0 when p -> 0
    aleatoric = member_entropy.mean(dim=dim)
    # Jensen: epistemic >= 0; clamp rounding only
    epistemic = (total - aleatoric).clamp_min(0.0)
    return ClassificationUncertainty(mean_probs, total, aleatoric, epistemic)


class LinearizedOutput(NamedTuple):
    """Linearised predictive: per-sample output mean ``(B, C)``, Cholesky factor ``(B, C, C)`` of
    ``J_i Sigma J_i^T``, and the forward's ``aux``."""

    mean: Tensor
    chol: Tensor
    aux: Any


def linearized_forward_diag(
    forward: Callable[[TensorTree, Any], tuple[Tensor, Any]],
    params: TensorTree,
    batch: Any,
    sd_diag: TensorTree,
    jitter: float = 0.0,
    chunk_size: int | None = None,
) -> LinearizedOutput:
    """Linearised predictive for ``theta ~ N(params, diag(sd_diag^2))``.

    ``forward(params, batch) -> (z, aux)`` with ``z`` of shape ``(B, *out)`` (flattened to ``C``); it must
    treat samples independently. ``jitter`` is added to the covariance's diagonal before factorising
    (needed when ``C`` exceeds the rank of ``J_i``). ``chunk_size`` bounds the vmapped per-sample
    Jacobians held at once.
    """
    T.check_same_structure(params, sd_diag, "params", "sd_diag")
    z, aux, jac = per_sample_jacobians(forward, params, batch, chunk_size)
    B, C = z.shape[0], z[0].numel()
    cov = torch.zeros((B, C, C), dtype=z.dtype, device=z.device)
    for j, s in zip(T.leaves(jac), T.leaves(sd_diag)):
        js = (j * s.to(j.dtype)).reshape(B, C, -1)
        cov = cov + js @ js.mT
    return LinearizedOutput(z.reshape(B, C), _chol(cov, jitter), aux)


def linearized_forward_dense(
    forward: Callable[[TensorTree, Any], tuple[Tensor, Any]],
    params: TensorTree,
    batch: Any,
    cov: Tensor,
    jitter: float = 0.0,
    chunk_size: int | None = None,
) -> LinearizedOutput:
    """Linearised predictive for ``theta ~ N(params, cov)``, ``cov`` ``(d, d)`` over ``tree_ravel(params)``
    (e.g. ``laplace`` states: ``cov = inverse(state.prec)``; ``ekf.dense_fisher``: ``state.cov``)."""
    d = T.tree_size(params)
    if not isinstance(cov, Tensor) or tuple(cov.shape) != (d, d):
        raise ValueError(f"cov must be a ({d}, {d}) tensor over the ravelled params; got {getattr(cov, 'shape', type(cov))}")
    z, aux, jac = per_sample_jacobians(forward, params, batch, chunk_size)
    B, C = z.shape[0], z[0].numel()
    J = torch.cat([x.reshape(B, C, -1) for x in T.leaves(jac)], dim=-1)
    out_cov = J @ cov.to(J.dtype) @ J.mT
    return LinearizedOutput(z.reshape(B, C), _chol(out_cov, jitter), aux)


def sample_linearized(
    mean: Tensor, chol: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """``n_samples`` draws ``mean + chol eps`` of the linearised outputs: shape ``(n_samples, B, C)``."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be positive; got {n_samples}")
    eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device, generator=generator)
    return mean + (chol @ eps.unsqueeze(-1)).squeeze(-1)


def _chol(cov: Tensor, jitter: float) -> Tensor:
    if jitter < 0:
        raise ValueError(f"jitter must be non-negative; got {jitter}")
    C = cov.shape[-1]
    sym = 0.5 * (cov + cov.mT)
    if jitter:
        sym = sym + jitter * torch.eye(C, dtype=cov.dtype, device=cov.device)
    L, info = torch.linalg.cholesky_ex(sym)
    if bool((info != 0).any()):
        raise ValueError(
            "the linearised output covariance J Sigma J^T is singular for some inputs; pass jitter > 0"
        )
    return L


def _check_logits(logits: Tensor, dim: int) -> None:
    if not isinstance(logits, Tensor) or logits.ndim < 2:
        raise ValueError("logits must be a tensor of shape (S, ..., C) with at least 2 dimensions")
    if dim % logits.ndim == logits.ndim - 1:
        raise ValueError("the sample dimension cannot be the last (class) dimension")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits have NaN or infinite entries")
