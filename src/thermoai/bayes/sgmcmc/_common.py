"""Building blocks shared by the SGMCMC transforms (private).

The updates are written on *lists of leaves*: with plain tensors they go through one fused
``torch._foreach_*`` kernel per term; under ``torch.func.vmap`` (ensembles, many chains) the foreach
kernels have no batching rule, so the same arithmetic runs leaf by leaf. Coefficients are Python floats on
the hot path (no host sync); a schedule evaluated to a tensor is turned into a float once per step, or
kept as a tensor when it is batched (one value per ensemble member).
"""

from __future__ import annotations

import math
import threading
from typing import Any, Sequence

import torch
from torch import Tensor

from thermoai import philox
from thermoai import tree as T
from thermoai.bayes._common import copy_like, under_transform
from thermoai.types import Schedule, TensorTree, check_non_negative, check_scalar_value, resolve_schedule

Coef = float | Tensor


def check_hyper(**values: Schedule) -> None:
    """Validate constant hyper-parameters (``name=value``): finite and non-negative."""
    for name, value in values.items():
        check_non_negative(value, name)


def check_positive(**values: Schedule) -> None:
    for name, value in values.items():
        check_non_negative(value, name, strictly=True)


def resolve(value: Schedule, step: Tensor, name: str) -> Coef:
    """Evaluate a constant or schedule at ``step``; a float, or a tensor only when batched (vmap)."""
    if not callable(value) and not isinstance(value, Tensor):
        return float(value)
    out = resolve_schedule(value, step, name)
    if isinstance(out, Tensor):
        if out.numel() != 1:
            raise ValueError(f"{name} schedule must return a scalar; got shape {tuple(out.shape)}")
        if under_transform(out):
            # one value per vmapped member; coefficient arithmetic in float64 like the Python-float path
            # (a 0-d coefficient does not promote the parameters' dtype)
            return out.reshape(()).to(torch.float64)
        out = float(out)
    if not isinstance(out, (int, float)):
        raise TypeError(f"{name} schedule must return a number or a 0-d tensor; got {type(out).__name__}")
    check_scalar_value(out, name)
    return float(out)


def sqrt(x: Coef) -> Coef:
    return math.sqrt(x) if isinstance(x, float) else torch.sqrt(x)


def exp(x: Coef) -> Coef:
    return math.exp(x) if isinstance(x, float) else torch.exp(x)


def clamp0(x: Coef) -> Coef:
    return max(x, 0.0) if isinstance(x, float) else torch.clamp(x, min=0.0)


def is_zero(x: Coef) -> bool:
    """True only for a Python zero (a batched coefficient is never skipped: that would need a sync)."""
    return isinstance(x, float) and x == 0.0


def axpy(target: list[Tensor], coef: Coef, other: Sequence[Tensor], inplace: bool) -> list[Tensor]:
    """``target + coef * other`` leaf by leaf; into ``target`` when ``inplace``, else into new tensors."""
    if isinstance(coef, float) and not under_transform(target[0]) and not under_transform(other[0]):
        if inplace:
            torch._foreach_add_(target, list(other), alpha=coef)
            return target
        return list(torch._foreach_add(target, list(other), alpha=coef))
    if inplace:
        for t, o in zip(target, other):
            t.add_(o * coef)
        return target
    return [t + o * coef for t, o in zip(target, other)]


def scale(target: list[Tensor], coef: Coef, inplace: bool) -> list[Tensor]:
    """``coef * target`` leaf by leaf (a plain 0-d tensor ``coef`` stays on device: no sync)."""
    if not under_transform(target[0]) and (isinstance(coef, float) or not under_transform(coef)):
        if inplace:
            torch._foreach_mul_(target, coef)
            return target
        return list(torch._foreach_mul(target, coef))
    if inplace:
        for t in target:
            t.mul_(coef)
        return target
    return [t * coef for t in target]


def randn_like(ls: Sequence[Tensor], generator: torch.Generator | None) -> list[Tensor]:
    """Standard normal noise for each leaf (its shape, dtype and device)."""
    if generator is None:
        return [torch.randn_like(x) for x in ls]
    return [torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator) for x in ls]


_WORKSPACE = threading.local()
_CPU = torch.device("cpu")


def scratch_normal(ls: Sequence[Tensor], std: float, generator: torch.Generator | None) -> list[Tensor]:
    """``N(0, std^2 I)`` noise for every leaf, drawn by *one* call over the whole tree into a reused buffer.

    float32 leaves on the CPU are filled by :mod:`thermoai.philox` (Philox4x32-10 and Box-Muller in one
    compiled pass, about a third of the time of torch's ``normal_``), keyed by one 63-bit draw from
    ``generator`` (torch's default generator when ``None``), so seeding or restoring the generator
    reproduces the noise; other leaves, or a machine where the kernel cannot be built, use torch's
    ``normal_`` with ``generator`` (the same law, another stream). What the buffer saves besides: one
    draw for the whole tree instead of one per leaf, the scale folded into the draw, and no fresh
    allocation per step (a new multi-megabyte tensor each step costs an ``mmap``, page faults and
    zeroing on a CPU). The returned tensors are views of a per-thread scratch buffer
    (one per dtype and device, grown to the largest tree seen): they are valid until the next call and
    must be consumed at once, never stored in a state. Leaves of several dtypes/devices get one buffer
    each. Under ``vmap`` use :func:`randn_like` (functorch's per-member randomness).
    """
    out: list[Tensor | None] = [None] * len(ls)
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, x in enumerate(ls):
        groups.setdefault((x.dtype, x.device), []).append(i)
    buffers = getattr(_WORKSPACE, "buffers", None)
    if buffers is None:
        buffers = _WORKSPACE.buffers = {}
    for key, idx in groups.items():
        total = sum(ls[i].numel() for i in idx)
        buf = buffers.get(key)
        if buf is None or buf.numel() < total:
            buf = buffers[key] = torch.empty(total, dtype=key[0], device=key[1])
        flat = buf[:total]
        if key == (torch.float32, _CPU) and philox.available():
            philox.normal_(flat, std, philox.draw_key(generator))
        else:
            flat.normal_(0.0, std, generator=generator)
        offset = 0
        for i in idx:
            n = ls[i].numel()
            out[i] = flat[offset : offset + n].view(ls[i].shape)
            offset += n
    return out  # type: ignore[return-value]


def release_scratch() -> None:
    """Free this thread's noise buffers (they are re-made on the next draw)."""
    _WORKSPACE.buffers = {}


def add_noise(target: list[Tensor], std: Coef, generator: torch.Generator | None, inplace: bool) -> list[Tensor]:
    """``target + std * N(0, I)``; a Python ``std == 0`` draws nothing (exact optimisation at T = 0).

    Outside ``vmap``, in place, float32 CPU leaves get the noise added by :func:`thermoai.philox.add_normal_`
    in the same pass that draws it (leaf ``i``: stream ``(key, i)``, one key per call drawn from
    ``generator``); other leaves get one scaled draw into a scratch buffer (:func:`scratch_normal`), added
    with one fused kernel."""
    if is_zero(std):
        return target
    if isinstance(std, float) and not under_transform(target[0]):
        if inplace and philox.available():
            fast = [philox.eligible(t) for t in target]
            rest = [t for t, ok in zip(target, fast) if not ok]
            key = philox.draw_key(generator)
            for i, (t, ok) in enumerate(zip(target, fast)):
                if ok:
                    philox.add_normal_(t, std, key, offset=i)
            if rest:
                axpy(rest, 1.0, scratch_normal(rest, std, generator), True)
            return target
        return axpy(target, 1.0, scratch_normal(target, std, generator), inplace)
    return axpy(target, std, randn_like(target, generator), inplace)


def mean_square(ls: Sequence[Tensor]) -> Tensor:
    """``mean over all elements of all leaves of x**2`` as a 0-d tensor (no host sync)."""
    n = sum(x.numel() for x in ls)
    if not under_transform(ls[0]):
        norms = torch._foreach_norm(list(ls))
        return torch.stack(norms).square().sum() / n
    return sum((x * x).sum() for x in ls) / n


def new_step(step: Tensor, inplace: bool) -> Tensor:
    return step.add_(1) if inplace else step + 1


def store_scalar(old: Tensor, value: Tensor, inplace: bool) -> Tensor:
    """The state's 0-d record (e.g. log posterior), written into ``old`` when ``inplace``."""
    value = value.detach().to(old.dtype)
    if inplace:
        old.copy_(value)
        return old
    return value


def initial_momenta(
    params: TensorTree, momenta: Any, sigma: float, temperature: Schedule, step: Tensor,
    generator: torch.Generator | None,
) -> TensorTree:
    """Momenta of a fresh SGHMC-family state: ``None`` draws ``N(0, T sigma^2 I)`` with ``T`` the
    temperature at ``step`` (zero at ``T = 0``: the stationary momentum law); otherwise :func:`momenta_like`."""
    std = sigma * sqrt(resolve(temperature, step, "temperature")) if momenta is None else 0.0
    return momenta_like(params, momenta, float(std), generator)


def momenta_like(
    params: TensorTree, momenta: Any, std: float, generator: torch.Generator | None, name: str = "momenta"
) -> TensorTree:
    """Initial momenta: ``None`` -> ``std * N(0, I)``; a number -> filled; a tree -> validated copy."""
    ls = T.leaves(params)
    spec = T.structure(params)
    if momenta is None:
        if std == 0.0:
            return T.unflatten(spec, [torch.zeros_like(x) for x in ls])
        return T.unflatten(spec, [n * std for n in randn_like(ls, generator)])
    scalar_params = isinstance(params, Tensor) and params.dim() == 0
    if isinstance(momenta, (int, float)) or (isinstance(momenta, Tensor) and momenta.dim() == 0 and not scalar_params):
        fill = float(momenta)
        if math.isnan(fill) or math.isinf(fill):
            raise ValueError(f"{name} must be finite; got {fill}")
        return T.unflatten(spec, [torch.full_like(x, fill) for x in ls])
    return copy_like(params, momenta, name)


def rebuild(like: TensorTree, ls: list[Tensor], inplace: bool) -> TensorTree:
    """The tree with leaves ``ls`` (``like`` itself when the leaves were updated in place)."""
    return like if inplace else T.unflatten(T.structure(like), ls)


def rebuild_list(target: list[Tensor], values: list[Tensor], inplace: bool) -> list[Tensor]:
    """``values`` written into ``target`` when ``inplace`` (returning ``target``), else ``values``."""
    if not inplace:
        return values
    for t, v in zip(target, values):
        t.copy_(v)
    return target
