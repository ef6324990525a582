"""``torch.nn.Module`` helpers: a model as a pure function of a parameter tree, and Bayes over a subset.

thermoai.bayes methods work on parameter trees and pure functions. For a module::

    params, forward = functional(model)             # dict name -> tensor, forward(params, *args) = model(*args)
    sub, forward = subset(model, last_layer(model)) # only the last layer's parameters are random
    sub, forward = trainable(model)                 # the parameters with requires_grad=True

``forward`` never mutates the module: it runs ``torch.func.functional_call``; the parameters not in the
tree (frozen ones, buffers) are taken from the module, detached. :func:`load` writes a tree back into the
module (e.g. a posterior mean), in place.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from thermoai import tree as T
from thermoai.bayes.log_prob import model_to_function

__all__ = ["functional", "subset", "trainable", "last_layer", "load"]


def functional(model: nn.Module) -> tuple[dict[str, Tensor], Callable[..., Any]]:
    """All parameters as a dict of detached copies and ``forward(params, *args, **kwargs) = model(*args)``."""
    _check_module(model)
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    if not params:
        raise ValueError(f"{type(model).__name__} has no parameters")
    return params, model_to_function(model)


def trainable(model: nn.Module) -> tuple[dict[str, Tensor], Callable[..., Any]]:
    """The parameters with ``requires_grad=True`` (detached copies) and a function of those alone.

    ``forward(sub, *args)`` runs the model with the frozen parameters as they are in the module now.
    """
    _check_module(model)
    full = dict(model.named_parameters())
    sub, func = T.extract_requires_grad_and_func(full, model_to_function(model))
    # dict leaves are in sorted-key order both with and without the frozen (None) entries, so the
    # compact dict feeds ``func`` in the same order
    return {k: v.clone() for k, v in sub.items() if v is not None}, func


def subset(
    model: nn.Module, include: Callable[[str], bool] | Iterable[str] | str
) -> tuple[dict[str, Tensor], Callable[..., Any]]:
    """A chosen subset of the parameters (detached copies) and a pure function of that subset alone.

    Args:
        include: a predicate on the parameter name, a collection of names, or a name prefix (e.g.
            ``"model.layers.29."`` for the last decoder layer of a 30-layer language model).

    Returns ``(sub, forward)`` with ``forward(sub, *args, **kwargs) = model(*args, **kwargs)`` where the
    other parameters are the module's current values, detached (no gradient flows into them).
    """
    _check_module(model)
    names = [name for name, _ in model.named_parameters()]
    if isinstance(include, str):
        prefix = include
        keep = lambda name: name.startswith(prefix)  # noqa: E731
    elif callable(include):
        keep = include
    else:
        wanted = set(include)
        unknown = sorted(wanted - set(names))
        if unknown:
            raise ValueError(f"subset: {unknown} are not parameter names of {type(model).__name__}")
        keep = wanted.__contains__
    chosen = [n for n in names if keep(n)]
    if not chosen:
        raise ValueError(f"subset: no parameter of {type(model).__name__} matches {include!r}")
    # a tree whose requires_grad flags mark the subset, so the split is tree.extract_requires_grad_and_func
    flagged = {name: p.detach().requires_grad_(name in chosen) for name, p in model.named_parameters()}
    sub, func = T.extract_requires_grad_and_func(flagged, model_to_function(model))
    return {k: v.detach().clone() for k, v in sub.items() if v is not None}, func


def last_layer(model: nn.Module) -> list[str]:
    """Names of the parameters of the last sub-module (registration order) that owns parameters.

    For ``nn.Sequential(..., nn.Linear(h, c))`` that is ``[".. .weight", ".. .bias"]`` of the final linear
    layer. Parameters shared with an earlier module (tied weights) are reported under their first name.
    """
    _check_module(model)
    first_name = {id(p): n for n, p in model.named_parameters()}
    last: list[str] = []
    for _, module in model.named_modules():
        own = [first_name[id(p)] for _, p in module.named_parameters(recurse=False) if id(p) in first_name]
        if own:
            last = own
    if not last:
        raise ValueError(f"{type(model).__name__} has no parameters")
    return last


def load(model: nn.Module, params: dict[str, Tensor]) -> nn.Module:
    """Copy ``params`` (a dict name -> tensor, e.g. a posterior mean or a draw) into ``model`` in place."""
    _check_module(model)
    current = dict(model.named_parameters())
    unknown = sorted(set(params) - set(current))
    if unknown:
        raise ValueError(f"load: {unknown} are not parameter names of {type(model).__name__}")
    for name, value in params.items():
        if tuple(value.shape) != tuple(current[name].shape):
            raise ValueError(
                f"load: {name} has shape {tuple(current[name].shape)} in the model but {tuple(value.shape)} in params"
            )
    with torch.no_grad():
        for name, value in params.items():
            current[name].copy_(value)
    return model


def _check_module(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module; got {type(model).__name__}")
