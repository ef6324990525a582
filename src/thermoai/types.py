"""Shared types of thermoai: parameter trees, transforms and schedules.

Every algorithm in :mod:`thermoai.bayes` is ``build(log_posterior, **hyper) -> Transform``, where
``Transform`` is the pair of pure functions ``init(params) -> state`` and
``update(state, batch, inplace=False) -> (state, aux)``.

Hyper-parameters such as ``lr`` and ``temperature`` accept a :data:`Schedule`: either a number or a
callable of the step counter (a 0-d integer tensor) that returns a number. Schedules are evaluated at the
*start* of each update with the state's ``step``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Protocol, Union

import torch
from torch import Tensor

TensorTree = Any
"""Any nesting of dicts, lists and tuples (optree pytrees) whose leaves are tensors."""

Schedule = Union[float, int, Tensor, Callable[[Tensor], Union[float, Tensor]]]
"""A constant or a function of the step (0-d integer tensor) returning the value at that step."""

LogProbFn = Callable[[TensorTree, Any], tuple[Tensor, TensorTree]]
"""``log_prob(params, batch) -> (scalar, aux)``; ``aux`` is any tensor tree (``torch.tensor([])`` if none)."""

ForwardFn = Callable[[TensorTree, Any], tuple[Tensor, TensorTree]]
"""``forward(params, batch) -> (outputs, aux)``, outputs un-reduced over the batch."""


class InitFn(Protocol):
    def __call__(self, params: TensorTree, *args: Any, **kwargs: Any) -> Any: ...


class UpdateFn(Protocol):
    def __call__(self, state: Any, batch: Any, inplace: bool = False, **kwargs: Any) -> tuple[Any, TensorTree]: ...


class Transform(NamedTuple):
    """The pair of pure functions every thermoai.bayes method returns from ``build``."""

    init: InitFn
    update: UpdateFn


def resolve_schedule(value: Schedule, step: Tensor | int, name: str = "value") -> float | Tensor:
    """Evaluate a :data:`Schedule` at ``step``.

    Returns the constant itself, or ``value(step)`` for a callable. Raises ``TypeError`` for anything else.
    """
    if callable(value):
        return value(step if isinstance(step, Tensor) else torch.tensor(step))
    if isinstance(value, (int, float, Tensor)):
        return value
    raise TypeError(f"{name} must be a number, a 0-d tensor or a callable of the step; got {type(value).__name__}")


def check_non_negative(value: Schedule, name: str, strictly: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` if a constant hyper-parameter is negative (or zero when
    ``strictly``), NaN or infinite. Callables are checked when evaluated, see :func:`check_scalar_value`."""
    if callable(value):
        return
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar; got a tensor of shape {tuple(value.shape)}")
        value = float(value)
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a schedule (callable of the step); got {type(value).__name__}")
    check_scalar_value(value, name, strictly)


def check_scalar_value(value: float | Tensor, name: str, strictly: bool = False) -> None:
    """Raise ``ValueError`` if a resolved hyper-parameter value is NaN, infinite or negative."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or torch._C._functorch.is_batchedtensor(value):
            return  # a batched or per-leaf value inside vmap: cannot be inspected without a sync per member
        value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if value < 0 or (strictly and value == 0):
        bound = "positive" if strictly else "non-negative"
        raise ValueError(f"{name} must be {bound}; got {value}")
