"""Pieces shared by the Laplace approximations: checks, precision initialisation, output Hessians."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.func import grad, jacrev, jvp, vmap

from thermoai import tree as T
from thermoai.types import TensorTree, check_non_negative


def check_per_sample_flag(per_sample: Any) -> None:
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be True or False; got {per_sample!r}")


def forward_outputs(forward: Callable[..., Any], params: TensorTree, batch: Any) -> tuple[Tensor, Any]:
    """``(z, aux) = forward(params, batch)`` with ``z`` checked to be a ``(B, *out)`` tensor (GGN variants)."""
    out = forward(params, batch)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"forward must return a pair (z, aux); got {type(out).__name__}")
    z, aux = out
    if not isinstance(z, Tensor) or z.ndim < 1:
        raise ValueError("forward must return outputs z of shape (batch, *out)")
    return z, aux


def per_sample_jacobians(
    forward: Callable[..., Any], params: TensorTree, batch: Any, chunk_size: int | None = None
) -> tuple[Tensor, Any, TensorTree]:
    """``(z, aux, jac)``: the outputs ``z`` ``(B, *out)`` and ``aux`` of ``forward(params, batch)``, and the
    Jacobian of each sample's flattened outputs (the sample run as a batch of one), leaves
    ``(B, C, *leaf.shape)`` with ``C = prod(out)``; vmapped over samples, ``chunk_size`` at a time."""
    with torch.no_grad():
        z, aux = forward_outputs(forward, params, batch)

        def one(sample: Any) -> TensorTree:
            return jacrev(lambda p: forward(p, single(sample))[0].reshape(-1))(params)

        jac = vmap(one, chunk_size=chunk_size)(batch)
    return z, aux, jac


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


def as_dense_psd(value: Any, d: int, like: Tensor, name: str) -> Tensor:
    """A number, ``(d,)`` vector or ``(d, d)`` PSD matrix as a ``(d, d)`` matrix; clear errors otherwise."""
    if isinstance(value, (int, float)) or (isinstance(value, Tensor) and value.numel() == 1 and value.ndim <= 1 and d != 1):
        check_non_negative(value, name)
        return float(value) * torch.eye(d, dtype=like.dtype, device=like.device)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a number, a ({d},) vector or a ({d}, {d}) matrix; got {type(value).__name__}")
    v = value.detach().to(dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} has NaN or infinite entries")
    if v.shape == (d,):
        if bool((v < 0).any()):
            raise ValueError(f"{name} (a diagonal) must be non-negative; found {float(v.min())}")
        return torch.diag(v)
    if v.shape != (d, d):
        raise ValueError(f"{name} must be a number, a ({d},) vector or a ({d}, {d}) matrix; got shape {tuple(v.shape)}")
    check_psd(v, name)
    return v.clone()


def check_psd(m: Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``m`` is symmetric positive semi-definite (up to rounding)."""
    scale = float(m.abs().max()) if m.numel() else 0.0
    tol = 1e3 * torch.finfo(m.dtype).eps * max(scale, 1.0) * m.shape[-1]
    if float((m - m.mT).abs().max()) > tol:
        raise ValueError(f"{name} must be symmetric; max |M - M^T| = {float((m - m.mT).abs().max()):.3g}")
    lowest = float(torch.linalg.eigvalsh(0.5 * (m + m.mT)).min())
    if lowest < -tol:
        raise ValueError(f"{name} must be positive semi-definite; its smallest eigenvalue is {lowest:.3g}")


def single(sample: Any) -> Any:
    """One sample of a batch as a batch of size one (leading dimension kept)."""
    return T.tree_map(lambda x: x.unsqueeze(0), sample)


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


def under_transform(x: Tensor) -> bool:
    """True inside ``vmap``/``grad`` (e.g. an ensemble of states), where a host-side check is impossible."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def check_finite(tensors: list[Tensor], message: str) -> None:
    """Raise ``ValueError(message)`` if any entry is NaN/Inf; skipped under vmap (an ensemble checks the
    stacked result itself)."""
    if not tensors or any(under_transform(x) for x in tensors):
        return
    if not T.tree_all_finite(tensors):
        raise ValueError(message)
