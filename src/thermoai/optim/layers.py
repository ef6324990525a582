r"""Per-layer Kronecker factors of K-FAC: what each supported module contributes to ``A`` and ``G``.

For a layer ``s = W a_bar`` (``W``: (d_out, d_in + 1) with the bias as last column, ``a_bar = [a; 1]``) and
per-example output gradients ``g = d l_n / d s`` (``l_n`` the loss of example n), K-FAC approximates the
layer's Fisher block by ``A kron G`` (Martens & Grosse 2015, arXiv 1503.05671) with

    A = E[a_bar a_bar^T]   (d_in + 1, d_in + 1),        G = E[g g^T]   (d_out, d_out).

Layers whose weight is shared over ``R`` positions (tokens of a sequence, pixels of a convolution, nodes of
a graph) have inputs ``a_{n,r}`` and output gradients ``g_{n,r}``; the two approximations of Eschenhagen
et al. (NeurIPS 2023, arXiv 2311.00636) are

* **expand** (the sharing axis folded into the batch)::

      A = 1/(N R) sum_{n,r} a_bar_{n,r} a_bar_{n,r}^T,      G = 1/N sum_{n,r} g_{n,r} g_{n,r}^T

* **reduce** (inputs averaged and output gradients summed over the axis before the outer products)::

      A = 1/N sum_n abar_n abar_n^T,  abar_n = mean_r a_bar_{n,r};   G = 1/N sum_n gs_n gs_n^T,  gs_n = sum_r g_{n,r}

With ``R = 1`` both are the plain factors. Convolutions (Grosse & Martens 2016, arXiv 1602.01407) use the
unfolded input patches as ``a`` (``R`` = output pixels). Embeddings have one-hot inputs, so ``A`` is the
diagonal of token frequencies (kept as a vector) and there is no bias; they always use expand (the reduce
factor of averaged one-hot vectors would be a dense ``num_embeddings^2`` matrix).

Every helper returns *sums* and the count to divide them by, so several forward calls before one
optimiser step (micro-batches) add up: ``A = sum_A / rows``, ``G = sum_G / examples``. The per-example
gradient is ``g = loss_scale * grad_output``: ``loss_scale = N`` for a loss averaged over the N examples of
the forward call (``loss_reduction="mean"``), 1 for a summed loss.

Orientation: every helper presents the layer's gradient as the matrix ``M`` (d_out, d_in [+ 1]) with
``M = E[g a_bar^T]``, so that the preconditioned gradient is ``U = G^-1 M A^-1``; for an embedding
(weight (num_embeddings, dim)) ``M`` is the transposed weight gradient.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LayerHelper", "LinearHelper", "Conv2dHelper", "EmbeddingHelper", "helper_for", "SHARING_MODES"]

SHARING_MODES = ("expand", "reduce")


def _augmented_gram(a: Tensor, bias: bool) -> Tensor:
    """``sum_rows [a; 1][a; 1]^T`` (d + 1, d + 1) without materialising the column of ones, or ``a^T a``."""
    gram = a.mT @ a
    if not bias:
        return gram
    d = a.shape[1]
    out = a.new_empty(d + 1, d + 1)
    out[:d, :d] = gram
    s = a.sum(0)
    out[:d, d] = s
    out[d, :d] = s
    out[d, d] = a.shape[0]
    return out


class LayerHelper:
    """What K-FAC needs from one module: its parameters, its factor statistics and its gradient matrix.

    Subclasses implement :meth:`a_rows` (the input rows ``a``, (rows, d_in)) and :meth:`g_rows` (the output
    gradient rows, (rows', d_out)) for a sharing mode; this base turns them into sums and counts.
    """

    kind = "layer"
    a_diagonal = False  # True: A is kept as its diagonal (a vector)

    def __init__(self, module: nn.Module):
        self.module = module
        bias = getattr(module, "bias", None)
        self.has_bias = bias is not None and bias.requires_grad

    # --- shapes ------------------------------------------------------------------------------------

    @property
    def d_in(self) -> int:
        """Size of A (input features, plus one for the bias)."""
        raise NotImplementedError

    @property
    def d_out(self) -> int:
        """Size of G (output features)."""
        raise NotImplementedError

    def parameters(self) -> Iterator[nn.Parameter]:
        yield self.module.weight
        if self.has_bias:
            yield self.module.bias

    # --- statistics --------------------------------------------------------------------------------

    def a_rows(self, x: Tensor, sharing: str) -> tuple[Tensor, int]:
        """Input rows (rows, d_in without the bias) and the number of examples N in ``x``."""
        raise NotImplementedError

    def g_rows(self, grad_output: Tensor, sharing: str) -> Tensor:
        """Output-gradient rows (rows, d_out) of one forward call."""
        raise NotImplementedError

    def a_sum(self, x: Tensor, sharing: str) -> tuple[Tensor, int, int]:
        """``(sum_rows a_bar a_bar^T, rows, N)``: the sum to divide by ``rows`` for A, and the examples."""
        a, n = self.a_rows(x.detach(), sharing)
        return _augmented_gram(a, self.has_bias), a.shape[0], n

    def g_sum(self, grad_output: Tensor, sharing: str, loss_scale: float) -> Tensor:
        """``sum_rows g g^T`` with ``g = loss_scale * grad_output`` rows (divide by N for G)."""
        g = self.g_rows(grad_output.detach(), sharing)
        return (g.mT @ g) * (loss_scale * loss_scale)

    # --- gradients ---------------------------------------------------------------------------------

    def grad_matrix(self) -> Tensor | None:
        """The gradient as ``M`` (d_out, d_in), bias last; None if the weight has no gradient."""
        w = self.module.weight
        if w.grad is None:
            return None
        M = w.grad.reshape(w.shape[0], -1)
        if self.has_bias:
            b = self.module.bias.grad
            b = torch.zeros_like(self.module.bias) if b is None else b
            M = torch.cat([M, b[:, None]], 1)
        return M

    def set_grad(self, U: Tensor) -> None:
        """Write the preconditioned gradient ``U`` (d_out, d_in) back into ``.grad``."""
        w = self.module.weight
        k = w[0].numel()
        w.grad.copy_(U[:, :k].reshape(w.shape))
        if self.has_bias:
            if self.module.bias.grad is None:
                self.module.bias.grad = U[:, k].clone()
            else:
                self.module.bias.grad.copy_(U[:, k])


class LinearHelper(LayerHelper):
    """``nn.Linear`` on inputs (N, d_in) or (N, R..., d_in): the axes between the first and the last are
    the sharing axis (tokens, nodes)."""

    kind = "Linear"

    @property
    def d_in(self) -> int:
        return self.module.in_features + int(self.has_bias)

    @property
    def d_out(self) -> int:
        return self.module.out_features

    def a_rows(self, x: Tensor, sharing: str) -> tuple[Tensor, int]:
        d = x.shape[-1]
        if x.dim() == 1:
            return x.reshape(1, d), 1
        n = x.shape[0]
        if sharing == "reduce" and x.dim() > 2:
            return x.reshape(n, -1, d).mean(1), n
        return x.reshape(-1, d), n

    def g_rows(self, grad_output: Tensor, sharing: str) -> Tensor:
        go = grad_output
        d = go.shape[-1]
        if go.dim() == 1:
            return go.reshape(1, d)
        if sharing == "reduce" and go.dim() > 2:
            return go.reshape(go.shape[0], -1, d).sum(1)
        return go.reshape(-1, d)


class Conv2dHelper(LayerHelper):
    """``nn.Conv2d`` (groups = 1): ``a`` are the unfolded input patches (C_in kh kw), one row per output
    pixel (expand) or their mean over the output pixels (reduce); any ``padding_mode`` and string padding
    (the input is padded as the module pads it, then unfolded without padding)."""

    kind = "Conv2d"

    @property
    def d_in(self) -> int:
        m = self.module
        return m.in_channels * m.kernel_size[0] * m.kernel_size[1] + int(self.has_bias)

    @property
    def d_out(self) -> int:
        return self.module.out_channels

    def _patches(self, x: Tensor) -> Tensor:
        m = self.module
        if x.dim() == 3:
            x = x[None]
        pad = m._reversed_padding_repeated_twice
        if any(pad):
            x = F.pad(x, pad, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
        return F.unfold(x, m.kernel_size, dilation=m.dilation, padding=0, stride=m.stride)  # (N, C kh kw, L)

    def a_rows(self, x: Tensor, sharing: str) -> tuple[Tensor, int]:
        p = self._patches(x)
        n = p.shape[0]
        if sharing == "reduce":
            return p.mean(2), n
        return p.transpose(1, 2).reshape(-1, p.shape[1]), n

    def g_rows(self, grad_output: Tensor, sharing: str) -> Tensor:
        go = grad_output if grad_output.dim() == 4 else grad_output[None]
        if sharing == "reduce":
            return go.sum((2, 3))
        return go.permute(0, 2, 3, 1).reshape(-1, go.shape[1])


class EmbeddingHelper(LayerHelper):
    """``nn.Embedding`` (dense gradients): ``A = diag(token frequencies)`` (a vector), no bias; always the
    expand approximation. The gradient matrix is the transposed weight gradient (dim, num_embeddings)."""

    kind = "Embedding"
    a_diagonal = True

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.has_bias = False

    @property
    def d_in(self) -> int:
        return self.module.num_embeddings

    @property
    def d_out(self) -> int:
        return self.module.embedding_dim

    def a_sum(self, x: Tensor, sharing: str) -> tuple[Tensor, int, int]:
        idx = x.detach().reshape(-1)
        counts = torch.bincount(idx, minlength=self.module.num_embeddings).to(self.module.weight.dtype)
        return counts, idx.numel(), (x.shape[0] if x.dim() > 1 else 1)

    def g_rows(self, grad_output: Tensor, sharing: str) -> Tensor:
        return grad_output.reshape(-1, grad_output.shape[-1])

    def grad_matrix(self) -> Tensor | None:
        g = self.module.weight.grad
        return None if g is None else g.mT

    def set_grad(self, U: Tensor) -> None:
        self.module.weight.grad.copy_(U.mT)


def helper_for(module: nn.Module) -> tuple[LayerHelper | None, str | None]:
    """The helper for a module K-FAC can precondition, or ``(None, reason)`` if it cannot."""
    if isinstance(module, nn.Linear):
        return LinearHelper(module), None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return None, f"Conv2d with groups={module.groups} (only groups=1)"
        return Conv2dHelper(module), None
    if isinstance(module, nn.Embedding):
        if module.sparse:
            return None, "Embedding with sparse=True (sparse gradients)"
        return EmbeddingHelper(module), None
    return None, f"{type(module).__name__}: no K-FAC factors for this layer type"
