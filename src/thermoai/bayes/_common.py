"""Pieces shared by the method families of thermoai.bayes (sgmcmc, vi, laplace, ekf, predictive).

- :func:`transform`: how every method's ``build`` turns its module-level ``init``/``update`` into a
  :class:`~thermoai.types.Transform`;
- :func:`under_transform`: whether a tensor is inside a ``torch.func`` transform;
- fresh-state pieces (:func:`detached_copy`, :func:`copy_like`, :func:`scalar_like`, :func:`zero_step`);
- :func:`sample_diag_normal`: draws of a diagonal Gaussian over a tree;
- :class:`GaussianSampler`, :func:`sample_with_sampler`: dense Gaussian draws through an external sampling
  backend (a simulated thermodynamic circuit, :func:`thermoai.thermo.circuits.circuit_sampler`), with its cost;
- checks (:func:`check_finite`, :func:`check_per_sample_flag`, :func:`as_dense_psd`, :func:`check_psd`);
- per-sample evaluation of a forward function (:func:`single`, :func:`forward_outputs`,
  :func:`per_sample_jacobians`, :func:`flat_rows`).

Helpers used by one family only stay in that family's ``_common`` module.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from thermoai import tree as T
from thermoai.types import TensorTree, Transform, check_non_negative


def transform(init: Callable[..., Any], update: Callable[..., Any], fixed: Mapping[str, Any], **hyper: Any) -> Transform:
    """``Transform(init, update)`` of a method module's unbound ``init(params, ...)`` and
    ``update(state, batch, ..., inplace=False, ...)``.

    Each of the two receives the entries of ``fixed`` (what a state is tied to: the user's log density, the
    optimiser) and of ``hyper`` (the build-time hyper-parameters) that its signature names. The bound
    ``init(params, **kw)`` and ``update(state, batch, inplace=False, **kw)`` take keywords that override a
    hyper-parameter for one call (``update(state, batch, lr=0.1)``) or pass others (``generator=``);
    overriding an entry of ``fixed`` raises ``TypeError``.
    """
    init_kw = _named_by(init, fixed, hyper)
    update_kw = _named_by(update, fixed, hyper)
    unused = (set(fixed) | set(hyper)) - set(init_kw) - set(update_kw)
    if unused:
        raise TypeError(f"transform: {sorted(unused)} named by neither {init.__qualname__} nor {update.__qualname__}")

    def bound_init(params: TensorTree, **kwargs: Any) -> Any:
        return init(params, **_merge(init_kw, kwargs, fixed))

    def bound_update(state: Any, batch: Any, inplace: bool = False, **kwargs: Any) -> tuple[Any, TensorTree]:
        return update(state, batch, inplace=inplace, **_merge(update_kw, kwargs, fixed))

    bound_init.__doc__, bound_update.__doc__ = init.__doc__, update.__doc__
    return Transform(bound_init, bound_update)


def _named_by(fn: Callable[..., Any], fixed: Mapping[str, Any], hyper: Mapping[str, Any]) -> dict[str, Any]:
    names = inspect.signature(fn).parameters
    return {key: value for key, value in {**fixed, **hyper}.items() if key in names}


def _merge(bound: dict[str, Any], overrides: dict[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    if not overrides:
        return bound
    clash = sorted(fixed.keys() & overrides.keys())
    if clash:
        raise TypeError(f"{clash[0]} is fixed when the transform is built; call build again to change it")
    return {**bound, **overrides}


def under_transform(x: Tensor) -> bool:
    """True for a tensor inside a ``torch.func`` transform (``vmap``, ``grad``: an ensemble of states, many
    chains), where a host-side check (``float``, ``bool``) is impossible and ``torch._foreach_*`` kernels
    have no batching rule."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def check_finite(tensors: list[Tensor], message: str) -> None:
    """Raise ``ValueError(message)`` if any entry is NaN/Inf; skipped under vmap (an ensemble checks the
    stacked result itself)."""
    if not tensors or any(under_transform(x) for x in tensors):
        return
    if not T.tree_all_finite(tensors):
        raise ValueError(message)


def detached_copy(tree: TensorTree) -> TensorTree:
    """Detached copies of the leaves: a state that owns its tensors (VI, Laplace and EKF copy the params)."""
    return T.tree_map(lambda x: x.detach().clone(), tree)


def copy_like(like: TensorTree, value: TensorTree, name: str) -> TensorTree:
    """``value``, a tree of the structure of ``like`` (checked), copied to the dtype and device of ``like``'s
    leaves; ``TypeError`` naming ``name`` for a leaf that is not a tensor."""
    for v in T.leaves(value):  # before the structure check, which reads each leaf's shape
        if not isinstance(v, Tensor):
            raise TypeError(f"{name} leaves must be tensors; got {type(v).__name__}")
    T.check_same_structure(like, value, "params", name)
    out = [v.detach().to(dtype=x.dtype, device=x.device).clone() for x, v in zip(T.leaves(like), T.leaves(value))]
    return T.unflatten(T.structure(like), out)


def scalar_like(leaf: Tensor, value: float) -> Tensor:
    """A fresh 0-d tensor with the parameters' floating dtype and device (NaN: no objective value yet)."""
    return torch.full((), value, dtype=leaf.dtype, device=leaf.device)


def zero_step(leaf: Tensor) -> Tensor:
    """A fresh step counter (never shared between states: see research note, defect 4)."""
    return torch.zeros((), dtype=torch.int64, device=leaf.device)


def sample_diag_normal(
    mean: TensorTree, sd: TensorTree, sample_shape: torch.Size | tuple[int, ...], generator: torch.Generator | None
) -> TensorTree:
    """Draws ``mean + sd * eps``, ``eps ~ N(0, I)`` drawn leaf by leaf: leaves ``sample_shape + leaf.shape``."""
    sample_shape = torch.Size(sample_shape)

    def draw(m: Tensor, s: Tensor) -> Tensor:
        return m + s * torch.randn(sample_shape + m.shape, dtype=m.dtype, device=m.device, generator=generator)

    return T.tree_map(draw, mean, sd)


class GaussianSampler(Protocol):
    """A sampling backend for a dense Gaussian ``N(mean, precision^-1)``:
    ``sampler(mean (d,), precision (d, d), n, generator) -> (samples (n, d), cost)``. ``cost`` is whatever
    the backend accounts (a :class:`thermoai.thermo.device.Cost` of device time and energy for
    :func:`thermoai.thermo.circuits.circuit_sampler`); bayes passes it through untouched."""

    def __call__(self, mean: Tensor, precision: Tensor, n: int,
                 generator: torch.Generator | None) -> tuple[Tensor, Any]: ...


def sample_with_sampler(
    sampler: GaussianSampler,
    mean: Tensor,
    precision: Tensor,
    sample_shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None,
    unravel: Callable[[Tensor], TensorTree],
) -> tuple[TensorTree, Any]:
    """``(tree, cost)``: ``prod(sample_shape)`` draws of ``N(mean, precision^-1)`` (``mean`` (d,) ravelled,
    ``precision`` (d, d)) from ``sampler``, returned as a tree with leaves ``sample_shape + leaf.shape`` in
    the dtype and device of ``mean``, and the sampler's cost. The mean and precision are handed over
    detached; the sampler's draws are checked for shape (n, d) and finite entries."""
    if not callable(sampler):
        raise TypeError(f"sampler must be a callable (mean, precision, n, generator) -> (samples, cost); "
                        f"got {type(sampler).__name__}")
    if under_transform(mean) or under_transform(precision):
        raise ValueError("sample with a sampler cannot run under torch.func transforms (vmap/grad): the "
                         "backend samples on the host")
    sample_shape = torch.Size(sample_shape)
    d = mean.numel()
    n = math.prod(sample_shape)
    if n < 1:
        raise ValueError(f"sample_shape must hold at least one draw with a sampler; got {tuple(sample_shape)}")
    out = sampler(mean.detach(), precision.detach(), n, generator)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"sampler must return a pair (samples, cost); got {type(out).__name__}")
    draws, cost = out
    if not isinstance(draws, Tensor) or tuple(draws.shape) != (n, d):
        got = tuple(draws.shape) if isinstance(draws, Tensor) else type(draws).__name__
        raise ValueError(f"sampler must return samples of shape ({n}, {d}); got {got}")
    if not bool(torch.isfinite(draws).all()):
        raise ValueError("sampler returned NaN or infinite samples")
    draws = draws.to(dtype=mean.dtype, device=mean.device).reshape(*sample_shape, d)
    return unravel(draws), cost


def check_per_sample_flag(per_sample: Any) -> None:
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be True or False; got {per_sample!r}")


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


def flat_rows(tree: TensorTree, n: int) -> Tensor:
    """Leaves with a leading dimension ``n`` concatenated into an ``(n, d)`` matrix (ravel order)."""
    return torch.cat([x.reshape(n, -1) for x in T.leaves(tree)], dim=1)


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
