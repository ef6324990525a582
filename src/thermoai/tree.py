"""Parameter-tree helpers on optree.

A *tree* is any nesting of dicts, lists and tuples (and NamedTuples) whose leaves are tensors. Every
thermoai.bayes algorithm works on trees, so a model's ``dict(model.named_parameters())`` and a plain
tensor are both valid parameters.

Fused arithmetic (``tree_add``, ``tree_scale``, ``tree_lincomb``) goes through ``torch._foreach_*``
kernels: one call for all leaves instead of one Python-level op per leaf, which is what makes updates on
models with many parameter tensors fast.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import optree
import torch
from torch import Tensor

from thermoai.types import TensorTree

NONE_IS_LEAF = False


def leaves(tree: TensorTree) -> list[Tensor]:
    """The leaves of ``tree`` in optree's canonical order."""
    return optree.tree_leaves(tree, none_is_leaf=NONE_IS_LEAF)


def structure(tree: TensorTree) -> optree.PyTreeSpec:
    return optree.tree_structure(tree, none_is_leaf=NONE_IS_LEAF)


def unflatten(spec: optree.PyTreeSpec, leaves_: Sequence[Any]) -> TensorTree:
    return optree.tree_unflatten(spec, list(leaves_))


def tree_size(tree: TensorTree) -> int:
    """Total number of elements over all leaves."""
    return sum(leaf.numel() for leaf in leaves(tree))


def check_same_structure(a: TensorTree, b: TensorTree, name_a: str = "tree", name_b: str = "other") -> None:
    """Raise ``ValueError`` if two trees differ in structure or in any leaf shape."""
    sa, sb = structure(a), structure(b)
    if sa != sb:
        raise ValueError(f"{name_a} and {name_b} have different tree structures: {sa} vs {sb}")
    for i, (x, y) in enumerate(zip(leaves(a), leaves(b))):
        if tuple(x.shape) != tuple(y.shape):
            raise ValueError(f"leaf {i} of {name_a} has shape {tuple(x.shape)} but of {name_b} {tuple(y.shape)}")


def tree_map(fn: Callable[..., Tensor], tree: TensorTree, *rests: TensorTree, inplace: bool = False) -> TensorTree:
    """Map ``fn`` over the leaves of ``tree`` (and matching leaves of ``rests``).

    With ``inplace=True`` the result of each leaf is written into the leaf of ``tree`` (``copy_`` under
    ``no_grad``) and ``tree`` itself is returned, so objects holding it see the new values.
    """
    if not inplace:
        return optree.tree_map(fn, tree, *rests, none_is_leaf=NONE_IS_LEAF)
    spec = structure(tree)
    targets = leaves(tree)
    others = [spec.flatten_up_to(r) for r in rests]
    with torch.no_grad():
        for i, target in enumerate(targets):
            target.copy_(fn(target, *[o[i] for o in others]))
    return tree


def tree_insert_(target: TensorTree, values: TensorTree) -> TensorTree:
    """Copy ``values`` leaf by leaf into ``target`` (in place, fused) and return ``target``."""
    t, v = leaves(target), leaves(values)
    if len(t) != len(v):
        raise ValueError(f"cannot insert a tree of {len(v)} leaves into one of {len(t)}")
    with torch.no_grad():
        if t:
            torch._foreach_copy_(t, v)
    return target


def ravel(tree: TensorTree) -> tuple[Tensor, Callable[[Tensor], TensorTree]]:
    """Flatten a tree into one 1-D tensor; returns ``(flat, unravel)`` with ``unravel(flat) -> tree``.

    ``flat`` has ``tree_size(tree)`` elements (leaves concatenated in canonical order, each row-major);
    it takes the promoted dtype of the leaves. ``unravel`` restores shapes and each leaf's dtype. Leading
    batch dimensions are not allowed; use ``torch.func.vmap`` over ``ravel`` for batched trees.
    """
    spec = structure(tree)
    ls = leaves(tree)
    shapes = [leaf.shape for leaf in ls]
    dtypes = [leaf.dtype for leaf in ls]
    sizes = [leaf.numel() for leaf in ls]
    flat = torch.cat([leaf.reshape(-1) for leaf in ls]) if ls else torch.zeros(0)

    def unravel(vector: Tensor) -> TensorTree:
        if vector.shape[-1] != sum(sizes):
            raise ValueError(f"unravel expected a vector of {sum(sizes)} elements, got shape {tuple(vector.shape)}")
        lead = vector.shape[:-1]
        parts = torch.split(vector, sizes, dim=-1)
        return unflatten(spec, [p.reshape((*lead, *s)).to(d) for p, s, d in zip(parts, shapes, dtypes)])

    return flat, unravel


def tree_ravel(tree: TensorTree) -> Tensor:
    """The 1-D concatenation of all leaves (see :func:`ravel`)."""
    return ravel(tree)[0]


def tree_extract(tree: TensorTree, keep: Callable[[Tensor], bool]) -> TensorTree:
    """Keep the tree's structure, replacing leaves where ``keep(leaf)`` is False by ``None`` (dropped).

    Use with :func:`tree_insert` to do Bayes over a subset of parameters.
    """
    return optree.tree_map(lambda x: x if keep(x) else None, tree, none_is_leaf=NONE_IS_LEAF)


def tree_insert(full: TensorTree, sub: TensorTree, keep: Callable[[Tensor], bool]) -> TensorTree:
    """A new tree equal to ``full`` with the leaves selected by ``keep`` taken, in order, from ``sub``."""
    subs = iter(leaves(sub))
    out = optree.tree_map(lambda x: next(subs) if keep(x) else x, full, none_is_leaf=NONE_IS_LEAF)
    leftover = sum(1 for _ in subs)
    if leftover:
        raise ValueError(f"sub-tree has {leftover} more leaves than the selected part of the full tree")
    return out


def extract_requires_grad(tree: TensorTree) -> TensorTree:
    """The trainable leaves (``requires_grad=True``) of ``tree``, detached, in the same structure."""
    return optree.tree_map(
        lambda x: x.detach() if x.requires_grad else None, tree, none_is_leaf=NONE_IS_LEAF
    )


def extract_requires_grad_and_func(
    tree: TensorTree, func: Callable[..., Any]
) -> tuple[TensorTree, Callable[..., Any]]:
    """Split ``tree`` into its trainable part and a function of that part alone.

    Returns ``(sub, sub_func)`` where ``sub_func(sub, *args) == func(full_with_sub_inserted, *args)``. The
    frozen leaves are captured (detached) in ``sub_func``. Typical use: Bayes over the last layer only.
    """
    mask = [leaf.requires_grad for leaf in leaves(tree)]
    if not any(mask):
        raise ValueError("no leaf of the tree requires grad: nothing to extract")
    spec = structure(tree)
    frozen = [leaf.detach() for leaf in leaves(tree)]
    sub = extract_requires_grad(tree)

    def sub_func(sub_params: TensorTree, *args: Any, **kwargs: Any) -> Any:
        it = iter(leaves(sub_params))
        merged = [next(it) if m else f for m, f in zip(mask, frozen)]
        return func(unflatten(spec, merged), *args, **kwargs)

    return sub, sub_func


# ---------------------------------------------------------------------------------------------- fused ops

def tree_zeros_like(tree: TensorTree) -> TensorTree:
    return tree_map(torch.zeros_like, tree)


def tree_randn_like(tree: TensorTree, generator: torch.Generator | None = None) -> TensorTree:
    """Standard normal noise with each leaf's shape, dtype and device (from ``generator`` if given)."""
    if generator is None:
        return tree_map(torch.randn_like, tree)
    return tree_map(
        lambda x: torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator), tree
    )


def _result(spec_tree: TensorTree, out: list[Tensor]) -> TensorTree:
    return unflatten(structure(spec_tree), out)


def tree_add(a: TensorTree, b: TensorTree, alpha: float | Tensor = 1.0, inplace: bool = False) -> TensorTree:
    """``a + alpha * b`` leaf by leaf, one fused kernel launch per call; in place into ``a`` if asked."""
    la, lb = leaves(a), leaves(b)
    if not la:
        return a
    if isinstance(alpha, Tensor) and alpha.numel() == 1 and not torch._C._functorch.is_batchedtensor(alpha):
        alpha = alpha.item()
    if isinstance(alpha, Tensor):
        scaled = [alpha * x for x in lb]
        if inplace:
            with torch.no_grad():
                torch._foreach_add_(la, scaled)
            return a
        return _result(a, [x + y for x, y in zip(la, scaled)])
    if inplace:
        with torch.no_grad():
            torch._foreach_add_(la, lb, alpha=alpha)
        return a
    return _result(a, list(torch._foreach_add(la, lb, alpha=alpha)))


def tree_scale(a: TensorTree, scale: float, inplace: bool = False) -> TensorTree:
    """``scale * a`` leaf by leaf (fused)."""
    la = leaves(a)
    if not la:
        return a
    if inplace:
        with torch.no_grad():
            torch._foreach_mul_(la, scale)
        return a
    return _result(a, list(torch._foreach_mul(la, scale)))


def tree_lincomb(terms: Sequence[tuple[float, TensorTree]]) -> TensorTree:
    """``sum_k c_k * tree_k`` for constant coefficients, fused over leaves."""
    (c0, t0), *rest = terms
    acc = list(torch._foreach_mul(leaves(t0), c0))
    for c, t in rest:
        torch._foreach_add_(acc, leaves(t), alpha=c)
    return _result(t0, acc)


def tree_vdot(a: TensorTree, b: TensorTree) -> Tensor:
    """``sum over leaves of <a_leaf, b_leaf>`` as a 0-d tensor."""
    return sum((x * y).sum() for x, y in zip(leaves(a), leaves(b)))


def tree_all_finite(tree: TensorTree) -> bool:
    """True when every element of every leaf is finite (one host sync).

    Fast path: the sum of all leaf sums is NaN/Inf whenever any entry is, so one reduction per leaf
    decides the common all-finite case; only a non-finite total (which an overflow could also give) pays
    for the exact element-wise test.
    """
    ls = leaves(tree)
    if not ls:
        return True
    total = torch.stack([x.sum().to(torch.float64) for x in ls]).sum()
    if bool(torch.isfinite(total)):
        return True
    return bool(torch.stack([torch.isfinite(x).all() for x in ls]).all())


def check_floating_leaves(tree: TensorTree, name: str = "params") -> list[Tensor]:
    """The leaves of ``tree``; ``ValueError`` if it has none, ``TypeError`` naming the leaf if one is not a
    floating-point tensor (the parameters of every thermoai.bayes method must be)."""
    ls = leaves(tree)
    if not ls:
        raise ValueError(f"{name} must be a tensor or a tree with at least one tensor leaf; got {tree!r}")
    for i, leaf in enumerate(ls):
        if not isinstance(leaf, Tensor):
            raise TypeError(f"{name}: every leaf must be a torch.Tensor; leaf {i} is a {type(leaf).__name__}")
        if not leaf.is_floating_point():
            raise TypeError(f"{name}: every leaf must have a floating dtype; leaf {i} has {leaf.dtype}")
    return ls
