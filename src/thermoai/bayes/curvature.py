r"""Generalised Gauss-Newton (GGN) curvature of a model split as ``outer(forward(theta))``; shared by
:mod:`thermoai.bayes.laplace` (``diag_ggn``, ``dense_ggn``) and :mod:`thermoai.bayes.ekf` (``diag_ggn``,
``dense_ggn``).

The log likelihood of a batch is ``outer_log_likelihood(z, batch)`` with ``z = forward(theta, batch)``
of shape ``(B, *out)`` (``C = prod(out)`` outputs per sample). With ``J_i = dz_i / dtheta`` (``C x d``
over the ravelled parameters), the output gradient ``r_i = d outer / dz_i`` (``C``) and the per-sample
output Hessian ``H_i = -d^2 outer / dz_i^2`` (``C x C``):

.. math::

    \ell = \mathrm{outer}(z), \qquad
    \nabla_\theta \ell = \sum_i J_i^\top r_i, \qquad
    G = \sum_i J_i^\top H_i J_i .

``G`` is the Hessian of ``-ell`` with the second derivative of ``forward`` dropped; it is positive
semi-definite whenever every ``H_i`` is (any log-concave likelihood of the outputs: Gaussian, categorical,
Bernoulli). For a Gaussian likelihood of a linear model it *is* the Hessian, which makes the GGN EKF
the Kalman filter. The outer log likelihood must be a sum (or mean) of per-sample terms, so that the batch
output Hessian is block diagonal: the ``B x C x C`` blocks come from ``C`` Hessian-vector products and
the ``(B C) x (B C)`` matrix is never formed. ``forward`` must treat samples independently (a sample run
as a batch of one gives the same output row).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import grad_and_value, jvp, vjp, vmap

from thermoai import tree as T
from thermoai.bayes._common import flat_rows, forward_outputs, per_sample_jacobians, single
from thermoai.types import ForwardFn, TensorTree

OuterFn = Callable[[Tensor, Any], Tensor]

__all__ = ["GGN", "output_derivatives", "output_hessian_blocks", "dense", "diag"]


class GGN(NamedTuple):
    """Value, gradient and GGN of the log likelihood at ``params`` for one batch.

    Attributes:
        value: ``outer_log_likelihood(z, batch)`` (0-d).
        grad: its gradient with respect to the parameters (a tree like ``params``).
        ggn: ``sum_i J_i^T H_i J_i``: a ``(d, d)`` matrix over ``tree_ravel(params)`` (:func:`dense`) or
            its diagonal as a tree like ``params`` (:func:`diag`).
        aux: the ``aux`` returned by ``forward``.
    """

    value: Tensor
    grad: TensorTree
    ggn: Tensor | TensorTree
    aux: Any


def _neg_outer(outer_log_likelihood: OuterFn, batch: Any) -> Callable[[Tensor], Tensor]:
    def neg(zz: Tensor) -> Tensor:
        value = outer_log_likelihood(zz, batch)
        if isinstance(value, tuple):
            raise TypeError("outer_log_likelihood must return a scalar tensor (no aux)")
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"outer_log_likelihood must return a scalar (summed over the batch); got {shape}")
        return -value.reshape(())

    return neg


def output_derivatives(outer_log_likelihood: OuterFn, z: Tensor, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(value, r, H)``: the outer log likelihood at ``z`` (0-d), its gradient ``r`` (shape of ``z``) and
    the per-sample blocks ``H_i = -d^2 outer / dz_i^2`` (``(B, C, C)``)."""
    neg = _neg_outer(outer_log_likelihood, batch)
    with torch.no_grad():
        neg_r, neg_value = grad_and_value(neg)(z)
    return -neg_value, -neg_r, output_hessian_blocks(outer_log_likelihood, z, batch)


def output_hessian_blocks(outer_log_likelihood: OuterFn, z: Tensor, batch: Any) -> Tensor:
    """Per-sample blocks ``H_i = -d^2 outer / dz_i^2`` of the output Hessian, shape ``(B, C, C)``.

    ``C`` Hessian-vector products with the one-hot tangent ``e_c`` in every sample give column ``c`` of
    every block at once (block-diagonal batch Hessian; see the module docstring).
    """
    B, C = z.shape[0], z[0].numel()
    g = torch.func.grad(_neg_outer(outer_log_likelihood, batch))
    eye = torch.eye(C, dtype=z.dtype, device=z.device)
    tangents = eye[:, None, :].expand(C, B, C).reshape(C, *z.shape)

    def hvp(v: Tensor) -> Tensor:
        return jvp(g, (z,), (v,))[1]

    with torch.no_grad():
        cols = vmap(hvp)(tangents)  # (C, B, *out): column c of every block
    return cols.reshape(C, B, C).permute(1, 2, 0).contiguous()


def dense(forward: ForwardFn, outer_log_likelihood: OuterFn, params: TensorTree, batch: Any) -> GGN:
    """:class:`GGN` with the full ``(d, d)`` matrix ``sum_i J_i^T H_i J_i``.

    The per-sample Jacobians are vmapped (``B x C x d`` held at once).
    """
    z, aux, jac = per_sample_jacobians(forward, params, batch)  # jac leaves (B, C, *shape)
    value, r, H = output_derivatives(outer_log_likelihood, z, batch)
    with torch.no_grad():
        B, C = z.shape[0], H.shape[-1]
        J = flat_rows(jac, B * C).reshape(B, C, -1)
        HJ = torch.matmul(H.to(J.dtype), J)  # (B, C, d)
        ggn = J.reshape(B * C, -1).mT @ HJ.reshape(B * C, -1)  # one GEMM over all samples and outputs
        grad_flat = torch.einsum("bcd,bc->d", J, r.reshape(B, C).to(J.dtype))
    _, unravel = T.ravel(params)
    return GGN(value, unravel(grad_flat), ggn, aux)


def diag(
    forward: ForwardFn, outer_log_likelihood: OuterFn, params: TensorTree, batch: Any, with_grad: bool = True
) -> GGN:
    """:class:`GGN` with the diagonal of ``sum_i J_i^T H_i J_i`` as a tree like ``params``.

    Neither the Jacobian nor the ``(d, d)`` matrix is formed: with ``H_i = U_i diag(lambda_i) U_i^T``,
    ``diag(J_i^T H_i J_i) = sum_k lambda_ik (J_i^T u_ik)^2``, one vector-Jacobian product per output
    ``k``, vmapped over samples (memory ``O(B d)``); with ``with_grad`` one more product with ``r_i``
    gives the gradient (else ``grad`` is None: Laplace needs only the curvature).
    """
    with torch.no_grad():
        z, aux = forward_outputs(forward, params, batch)
    value, r, H = output_derivatives(outer_log_likelihood, z, batch)
    with torch.no_grad():
        lam, U = torch.linalg.eigh(H)  # ascending eigenvalues, orthonormal columns
        B, C = z.shape[0], H.shape[-1]

        def one(sample: Any, lam_i: Tensor, U_i: Tensor, r_i: Tensor) -> tuple[TensorTree, TensorTree]:
            def f(p: TensorTree) -> Tensor:
                return forward(p, single(sample))[0].reshape(-1)

            _, pullback = vjp(f, params)
            acc: list[Tensor] | None = None
            for k in range(C):
                (gk,) = pullback(U_i[:, k])
                terms = [lam_i[k] * (x * x) for x in T.leaves(gk)]
                acc = terms if acc is None else [a + t for a, t in zip(acc, terms)]
            g_i = pullback(r_i)[0] if with_grad else torch.zeros(())
            return T.unflatten(T.structure(params), acc), g_i

        per_diag, per_grad = vmap(one)(batch, lam, U, r.reshape(B, C))
        summed = lambda x: x.sum(0)  # noqa: E731
    return GGN(value, T.tree_map(summed, per_grad) if with_grad else None, T.tree_map(summed, per_diag), aux)
