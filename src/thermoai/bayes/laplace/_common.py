"""Pieces shared by the Laplace approximations: precision initialisation, the prior added after a fit, and the
error a precision with no prior gives at ``sample``.

Helpers also used by other families are in :mod:`thermoai.bayes._common`; the GGN curvature (shared with
the EKFs) in :mod:`thermoai.bayes.curvature`.
"""

from __future__ import annotations

from typing import Any

import optree
import torch
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes._common import as_dense_psd, under_transform
from thermoai.types import TensorTree, check_non_negative

FIX = (
    "pass prior_precision > 0 to build/init (the inverse variance of a Gaussian prior on the parameters: "
    "1.0 for N(0, 1)), or add it to the fitted state without refitting: "
    "state = thermoai.bayes.laplace.add_prior_precision(state, 1.0)"
)


def diag_init(params: TensorTree, init_prec_diag: Any, prior_precision: Any) -> TensorTree:
    """``init_prec_diag + prior_precision`` as a tree like ``params`` (each a number or a matching tree)."""
    out = T.tree_map(lambda x: torch.zeros_like(x, memory_format=torch.contiguous_format), params)
    for value, name in ((init_prec_diag, "init_prec_diag"), (prior_precision, "prior_precision")):
        if isinstance(value, (int, float, Tensor)) and not (isinstance(value, Tensor) and value.numel() > 1):
            check_non_negative(value, name)
            if float(value) != 0.0:
                out = T.tree_map(lambda x: x + float(value), out)
            continue
        try:
            T.check_same_structure(params, value, "params", name)
        except ValueError as err:
            raise ValueError(f"{name} must be a non-negative number or a tree like params: {err}") from None
        for leaf in T.leaves(value):
            if not bool(torch.isfinite(leaf).all()) or bool((leaf < 0).any()):
                raise ValueError(f"{name} must be finite and non-negative everywhere")
        out = T.tree_map(lambda x, v: x + v.to(dtype=x.dtype, device=x.device), out, value)
    return out


def dense_init(flat: Tensor, init_prec: Any, prior_precision: Any) -> Tensor:
    """``init_prec + prior_precision`` as a ``(d, d)`` matrix in ``flat``'s dtype/device.

    Each may be a number ``c`` (``c I``), a ``(d,)`` vector (diagonal) or a ``(d, d)`` symmetric positive
    semi-definite matrix.
    """
    d = flat.numel()
    out = torch.zeros((d, d), dtype=flat.dtype, device=flat.device)
    for value, name in ((init_prec, "init_prec"), (prior_precision, "prior_precision")):
        out = out + as_dense_psd(value, d, flat, name)
    return out


def add_prior_precision(state: Any, prior_precision: Any) -> Any:
    """The Laplace state with ``prior_precision`` added to its precision (a new state; ``state`` is untouched).

    Every Laplace precision is ``prior_precision + init_prec + curvature``, so a fit with
    ``prior_precision = 0`` (the default) is completed afterwards by adding the prior: a number ``c``
    (``c I``), for a diagonal state a tree like ``params``, for a dense one a ``(d,)`` vector or a
    ``(d, d)`` PSD matrix. Works on every Laplace state (``prec_diag`` or ``prec``).
    """
    if hasattr(state, "prec_diag"):
        prior = diag_init(state.params, 0.0, prior_precision)
        new = T.tree_map(lambda p, q: p + q.to(p.dtype), state.prec_diag, prior)
        return state._replace(prec_diag=new)
    if hasattr(state, "prec"):
        prior = dense_init(T.tree_ravel(state.params).to(state.prec.dtype), 0.0, prior_precision)
        return state._replace(prec=state.prec + prior.to(state.prec.device))
    raise TypeError(f"add_prior_precision needs a Laplace state (with prec_diag or prec); got {type(state).__name__}")


def check_diag_positive(prec_diag: TensorTree) -> None:
    """``ValueError`` naming ``prior_precision`` (and the leaves and count) if any diagonal precision is <= 0:
    that direction has infinite variance. Skipped under ``vmap`` (not inspectable)."""
    bad = []
    paths, leaves, _ = optree.tree_flatten_with_path(prec_diag, none_is_leaf=T.NONE_IS_LEAF)
    for path, leaf in zip(paths, leaves):
        if under_transform(leaf):
            return
        n = int((leaf <= 0).sum())
        if n:
            name = ".".join(str(k) for k in path) or "params"
            bad.append(f"{name}: {n} of {leaf.numel()}")
    if bad:
        raise ValueError(
            "prec_diag has zero or negative entries, directions of infinite variance (no data curvature and no "
            f"prior there) ({'; '.join(bad)}); {FIX}"
        )


def not_positive_definite(prec: Tensor) -> ValueError:
    """The error for a dense ``prec`` whose Cholesky factorisation failed: how many directions have (near)
    zero or negative precision, and the fix (:data:`FIX`)."""
    sym = 0.5 * (prec + prec.mT)
    eig = torch.linalg.eigvalsh(sym.double())
    top = float(eig.abs().max()) if eig.numel() else 0.0
    n_bad = int((eig <= 1e-7 * max(top, 1e-300)).sum())
    return ValueError(
        f"prec is not positive definite: {n_bad} of {eig.numel()} eigen-directions have zero or negative "
        f"precision (smallest eigenvalue {float(eig.min()):.3g}, largest {top:.3g}), so their variance is not "
        f"finite (no data curvature and no prior there); {FIX}"
    )
