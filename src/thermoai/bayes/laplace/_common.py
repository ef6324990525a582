"""Pieces shared by the Laplace approximations: precision initialisation.

Helpers also used by other families are in :mod:`thermoai.bayes._common`; the GGN curvature (shared with
the EKFs) in :mod:`thermoai.bayes.curvature`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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
