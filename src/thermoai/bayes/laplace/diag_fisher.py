"""Laplace approximation with a diagonal empirical-Fisher precision.

At a mode ``theta*`` (the parameters are not moved), the posterior is approximated by
``N(theta*, diag(prec)^{-1})`` with

    prec = prior_precision + init_prec_diag + sum over batches, sum over samples i of (grad l_i(theta*))^2

where ``l_i`` is the user's log posterior evaluated on sample ``i`` alone (a batch of one) -- or, with
``per_sample=True``, the ``i``-th entry of the vector the user's function returns. Calling ``update`` on
successive mini-batches accumulates the sum (it is not averaged: the scale of the user's function sets
the scale of the precision). Per-sample gradients come from one vmapped backward pass.

``prior_precision`` (a number or a tree like params) is added once, at ``init``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import (
    check_finite, check_per_sample_flag, detached_copy, sample_diag_normal, transform, under_transform, zero_step,
)
from thermoai.bayes.laplace._common import check_diag_positive, diag_init
from thermoai.bayes.log_prob import per_sample_grads
from thermoai.types import LogProbFn, TensorTree, Transform, check_non_negative

__all__ = ["build", "DiagLaplaceState", "init", "update", "sample"]


def build(
    log_posterior: LogProbFn,
    per_sample: bool = False,
    init_prec_diag: float | TensorTree = 0.0,
    prior_precision: float | TensorTree = 0.0,
) -> Transform:
    """Diagonal empirical-Fisher Laplace as a :class:`~thermoai.types.Transform`.

    Args:
        log_posterior: ``log_posterior(params, batch) -> (scalar, aux)``, or with ``per_sample=True`` a
            function returning ``(values of shape (B,), aux)``.
        per_sample: whether ``log_posterior`` already returns per-sample values.
        init_prec_diag: starting precision (number or tree like params, >= 0).
        prior_precision: prior precision added to the precision (number or tree, >= 0).
            With the default 0, directions the data do not curve have infinite variance and ``sample``
            raises; :func:`thermoai.bayes.laplace.add_prior_precision` adds a prior to a fitted state.
    """
    check_per_sample_flag(per_sample)

    return transform(
        init, update, fixed=dict(log_posterior=log_posterior), per_sample=per_sample,
        init_prec_diag=init_prec_diag, prior_precision=prior_precision,
    )


class DiagLaplaceState(NamedTuple):
    """Diagonal Laplace state.

    Attributes:
        params: the mode (tree; not changed by updates).
        prec_diag: the diagonal precision (tree like params).
        step: number of updates (0-d int64).
    """

    params: TensorTree
    prec_diag: TensorTree
    step: Tensor


def init(params: TensorTree, init_prec_diag: Any = 0.0, prior_precision: Any = 0.0) -> DiagLaplaceState:
    """Fresh state: mode ``params`` (detached copy), precision ``init_prec_diag + prior_precision``."""
    ref = T.check_floating_leaves(params)[0]
    mode = detached_copy(params)
    return DiagLaplaceState(
        params=mode,
        prec_diag=diag_init(mode, init_prec_diag, prior_precision),
        step=zero_step(ref),
    )


def update(
    state: DiagLaplaceState,
    batch: Any,
    log_posterior: LogProbFn,
    per_sample: bool = False,
    inplace: bool = False,
) -> tuple[DiagLaplaceState, Tensor]:
    """Add the batch's squared per-sample gradients to ``prec_diag``.

    Returns ``(state, values)`` where ``values`` ``(B,)`` are the per-sample log posterior values (the
    ``aux`` slot).
    """
    check_per_sample_flag(per_sample)
    values, grads = per_sample_grads(log_posterior, state.params, batch, per_sample_fn=per_sample, name="log_posterior")
    # per-sample gradients are fresh buffers: square in place (no second B x P buffer) unless vmap
    # returned an expanded view (a leaf whose gradient does not depend on the sample)
    increment = [(x.mul_(x) if x.is_contiguous() else x * x).sum(0) for x in T.leaves(grads)]
    check_finite(increment, "the per-sample gradients of log_posterior have NaN or Inf entries; state left unchanged")
    return _accumulate(state, increment, inplace), values


def _accumulate(state: DiagLaplaceState, increment: list[Tensor], inplace: bool) -> DiagLaplaceState:
    prec = T.leaves(state.prec_diag)
    if len(prec) != len(increment):
        raise ValueError("the gradient tree does not match the state's precision tree")
    if inplace:
        with torch.no_grad():
            torch._foreach_add_(prec, increment)
            state.step.add_(1)
        return state
    if any(under_transform(x) for x in prec + increment):  # vmap: foreach kernels have no batching rule
        summed = [a + b for a, b in zip(prec, increment)]
    else:
        summed = list(torch._foreach_add(prec, increment))
    new = T.unflatten(T.structure(state.prec_diag), summed)
    return DiagLaplaceState(state.params, new, state.step + 1)


def sample(
    state: DiagLaplaceState,
    sample_shape: torch.Size | tuple[int, ...] = torch.Size([]),
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> TensorTree:
    """Draws ``theta* + sqrt(temperature) * eps / sqrt(prec)``: leaves of shape ``sample_shape + leaf.shape``.

    ``temperature`` tempers the approximation after the fact (cold posteriors: ``T < 1``). A zero
    precision anywhere is an error (infinite variance) that names the fix: a ``prior_precision`` at build,
    or :func:`thermoai.bayes.laplace.add_prior_precision` on the fitted state.
    """
    check_non_negative(temperature, "temperature")
    check_diag_positive(state.prec_diag)
    scale = float(temperature) ** 0.5
    sd = T.tree_map(lambda p: scale * torch.rsqrt(p), state.prec_diag)
    return sample_diag_normal(state.params, sd, sample_shape, generator)
