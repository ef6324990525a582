r"""Predictive uncertainty of S posterior draws (ensemble members, chain samples, Laplace draws), split
into its aleatoric and epistemic parts, per prediction and per sequence; for any logits.

With ``S`` draws of logits :math:`z_s` over ``C`` classes (the vocabulary, for a language model),
:math:`p_s = \mathrm{softmax}(z_s)` and the mean predictive :math:`\bar p = \frac1S \sum_s p_s`::

    total      H[p_bar]                          = -sum_c p_bar_c log p_bar_c
    aleatoric  (1/S) sum_s H[p_s]                (expected entropy: what no more data would remove)
    epistemic  H[p_bar] - (1/S) sum_s H[p_s]     = (1/S) sum_s KL(p_s || p_bar) >= 0

all in nats (Depeweg et al. 2018; the decomposition of the posteriors paper's Llama-3 experiment). The
epistemic part is the mutual information between the prediction and the parameters: zero when every
draw gives the same distribution, whatever that distribution's own entropy.

:class:`EntropySplit` accumulates draws one at a time, so a language model's ``(S, B, L, V)`` logits never
need to exist at once (each ``add`` takes one draw's ``(B, L, V)``; memory is two float64 ``(B, L, V)``
buffers); :func:`entropy_split` is the one-call form for logits already stacked along a sample dimension.
Given the observed ``targets``, both also return ``log p_bar(target)``, the log predictive probability of
the outcome (its negative mean over tokens is the log of the predictive perplexity).

:func:`sequence_mean` turns per-token values ``(B, L)`` into per-sequence values ``(B,)`` (the mean over
the tokens a ``mask`` keeps), e.g. a statement's mean epistemic uncertainty.

:func:`thermoai.bayes.predictive.classification_uncertainty` is the same split for small classifiers in
one shot (all draws in memory); the two agree (tested).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Uncertainty", "EntropySplit", "entropy_split", "sequence_mean", "max_epistemic"]


class Uncertainty(NamedTuple):
    """Per-prediction uncertainties in nats, each of the logits' leading shape ``(...)`` (float64).

    ``log_predictive`` is ``log p_bar(target)`` when targets were given, else ``None``.
    """

    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    log_predictive: Tensor | None = None


class EntropySplit:
    """Streaming total/aleatoric/epistemic split over posterior draws given one at a time.

    Example, for a language model whose ``S`` draws do not fit in memory together::

        acc = EntropySplit(targets=next_tokens)        # targets (B, L) int64, optional
        for params in draws:
            acc.add(logits_of(params))                 # (B, L, V)
        u = acc.result()                               # u.epistemic: (B, L)

    Args:
        targets: optional integer tensor of the logits' leading shape ``(...)`` (class indices); then
            ``result().log_predictive`` holds ``log p_bar(targets)``. Entries < 0 (padding) give 0 there.
        dtype: the dtype of each draw's softmax and entropy. ``torch.float64`` (default): exact to float64
            rounding (agreeing draws give epistemic 0 to 1e-12). ``torch.float32``: about a third of the
            time for a vocabulary-sized ``C``; entropies then carry float32 rounding, about 1e-6 nats
            (agreeing draws give epistemic below ~1e-5 instead of 0). Sums over draws are float64 either way.
    """

    def __init__(self, targets: Tensor | None = None, dtype: torch.dtype = torch.float64):
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.is_complex():
                raise TypeError(f"targets must be an integer tensor of class indices; got {_describe(targets)}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype!r}")
        self.dtype = dtype
        self.targets = targets
        self.n = 0
        self._sum_p: Tensor | None = None  # sum_s p_s, float64 (..., C)
        self._sum_h: Tensor | None = None  # sum_s H[p_s], float64 (...)
        self._shape: tuple[int, ...] | None = None

    def add(self, logits: Tensor) -> "EntropySplit":
        """Add one draw's logits ``(..., C)`` (unnormalised, finite). Returns ``self``."""
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise TypeError(f"logits must be a floating tensor of shape (..., C); got {_describe(logits)}")
        if logits.ndim < 1 or logits.shape[-1] < 1:
            raise ValueError(f"logits must have a class dimension last, shape (..., C); got {tuple(logits.shape)}")
        if self._shape is not None and tuple(logits.shape) != self._shape:
            raise ValueError(
                f"logits of draw {self.n} have shape {tuple(logits.shape)}; earlier draws had {self._shape}"
            )
        if self.targets is not None and tuple(self.targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(
                f"targets must have the logits' leading shape {tuple(logits.shape[:-1])}; got {tuple(self.targets.shape)}"
            )
        log_p = torch.log_softmax(logits.to(self.dtype), dim=-1)
        p = log_p.exp()
        # p log p -> 0 as p -> 0; exp(log_softmax) underflows to exactly 0 there, so the product is 0
        h = -(p * log_p).sum(-1, dtype=torch.float64)
        # a NaN or +-inf logit makes its row's entropy NaN (inf - inf in log_softmax, or 0 * -inf in
        # p log p): checking the (...) entropies finds them without another pass over (..., C)
        if not bool(torch.isfinite(h).all()):
            raise ValueError(f"logits of draw {self.n} have NaN or infinite entries")
        if self._sum_p is None:
            self._sum_p, self._sum_h, self._shape = p.to(torch.float64), h, tuple(logits.shape)
        else:
            self._sum_p.add_(p)
            self._sum_h.add_(h)
        self.n += 1
        return self

    def result(self) -> Uncertainty:
        """The split over the draws added so far (at least one)."""
        if self.n == 0 or self._sum_p is None or self._sum_h is None:
            raise ValueError("EntropySplit.result() needs at least one draw; call add(logits) first")
        mean_p = self._sum_p / self.n
        # 0 log 0 = 0: classes no draw gives any mass contribute nothing
        log_mean = torch.where(mean_p > 0, mean_p.log(), torch.zeros((), dtype=mean_p.dtype))
        total = -(mean_p * log_mean).sum(-1)
        aleatoric = self._sum_h / self.n
        if self.n == 1:  # one draw: no disagreement, exactly (not a rounding-level difference)
            epistemic = torch.zeros_like(total)
        else:  # Jensen: total >= aleatoric exactly; the clamp removes float64 rounding only
            epistemic = (total - aleatoric).clamp_min(0.0)
        log_pred = None
        if self.targets is not None:
            t = self.targets.to(mean_p.device)
            valid = t >= 0
            picked = log_mean.gather(-1, t.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            log_pred = torch.where(valid, picked, torch.zeros((), dtype=picked.dtype))
        return Uncertainty(total, aleatoric, epistemic, log_pred)


def entropy_split(logits: Tensor, dim: int = 0, targets: Tensor | None = None,
                  dtype: torch.dtype = torch.float64) -> Uncertainty:
    """Total/aleatoric/epistemic split of draws stacked along ``dim`` of ``logits``.

    Args:
        logits: ``(S, ..., C)`` (draws along ``dim``, classes last), unnormalised, finite.
        dim: the sample dimension (not the last).
        targets: optional integer tensor of shape ``(...)`` (``logits``' shape without ``dim`` and ``C``).
        dtype: each draw's softmax dtype (see :class:`EntropySplit`).

    Returns:
        :class:`Uncertainty` of shape ``(...)``: ``total = aleatoric + epistemic``, ``epistemic >= 0``.
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a tensor of shape (S, ..., C); got {_describe(logits)}")
    if logits.ndim < 2:
        raise ValueError(f"logits must have a sample and a class dimension, shape (S, ..., C); got {tuple(logits.shape)}")
    if not isinstance(dim, int) or not -logits.ndim <= dim < logits.ndim:
        raise ValueError(f"dim must be an int in [{-logits.ndim}, {logits.ndim}); got {dim!r}")
    if dim % logits.ndim == logits.ndim - 1:
        raise ValueError("dim: the sample dimension cannot be the last (class) dimension")
    acc = EntropySplit(targets, dtype)
    for draw in logits.unbind(dim):
        acc.add(draw)
    return acc.result()


def sequence_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sequence mean of per-token ``values`` ``(B, L)`` over the tokens where ``mask`` ``(B, L)`` is
    true: ``sum_t mask_bt values_bt / sum_t mask_bt``, shape ``(B,)``. Without a mask, the plain mean."""
    if not isinstance(values, Tensor) or values.ndim != 2:
        raise ValueError(f"values must be a (B, L) tensor of per-token values; got {_describe(values)}")
    if mask is None:
        return values.mean(-1)
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(values.shape):
        raise ValueError(f"mask must be a tensor of the values' shape {tuple(values.shape)}; got {_describe(mask)}")
    m = mask.to(values.dtype)
    counts = m.sum(-1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"mask keeps no token of sequences {empty}: their mean is undefined")
    return (values * m).sum(-1) / counts


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def max_epistemic(n_draws: int) -> float:
    """``log S``: the largest possible epistemic uncertainty of ``S`` draws (mutual information bound)."""
    if not isinstance(n_draws, int) or n_draws < 1:
        raise ValueError(f"n_draws must be a positive int; got {n_draws!r}")
    return math.log(n_draws)
