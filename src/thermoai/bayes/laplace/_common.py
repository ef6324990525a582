"""Pieces shared by the Laplace approximations: precision initialisation and output Hessians.

Helpers also used by other families (checks, per-sample Jacobians) are in :mod:`thermoai.bayes._common`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from thermoai import tree as T
from thermoai.bayes._common import as_dense_psd
from thermoai.types import TensorTree, check_non_negative


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


def output_hessian_blocks(
    outer_log_likelihood: Callable[[Tensor, Any], Tensor], z: Tensor, batch: Any
) -> Tensor:
    """Per-sample blocks ``H_i = -d^2 outer / dz_i^2`` of the output Hessian, shape ``(B, C, C)``.

    ``z`` has shape ``(B, *out)`` with ``C = prod(out)``. The outer log likelihood is assumed to have no
    cross-sample terms (a sum or mean of per-sample terms: the batch Hessian is block diagonal), so ``C``
    Hessian-vector products with the one-hot tangent ``e_c`` in every sample give all blocks at once: the
    full ``(BC) x (BC)`` matrix is never formed.
    """
    B = z.shape[0]
    C = z[0].numel()

    def neg_outer(zz: Tensor) -> Tensor:
        value = outer_log_likelihood(zz, batch)
        if isinstance(value, tuple):
            raise TypeError("outer_log_likelihood must return a scalar tensor (no aux)")
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"outer_log_likelihood must return a scalar (summed over the batch); got {shape}")
        return -value.reshape(())

    g = grad(neg_outer)
    eye = torch.eye(C, dtype=z.dtype, device=z.device)
    tangents = eye[:, None, :].expand(C, B, C).reshape(C, *z.shape)

    def hvp(v: Tensor) -> Tensor:
        return jvp(g, (z,), (v,))[1]

    with torch.no_grad():
        cols = vmap(hvp)(tangents)  # (C, B, *out): column c of every block
    return cols.reshape(C, B, C).permute(1, 2, 0).contiguous()
