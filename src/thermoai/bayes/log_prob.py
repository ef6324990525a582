"""Evaluating user log densities safely: value, gradient, per-sample values and clear errors.

Every thermoai.bayes method calls the user's ``log_posterior(params, batch) -> (scalar, aux)`` through
:func:`value_and_grad`, which turns the usual mistakes into messages that name them:

- the function returns a bare tensor instead of ``(value, aux)``;
- the value is not a scalar (a per-sample vector where a batch mean was meant);
- ``aux`` is not a tensor tree;
- the value or the gradient is NaN or infinite (the step would silently poison the state).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from thermoai import tree as T
from thermoai.bayes._common import single, under_transform
from thermoai.types import LogProbFn, TensorTree


class LogProbError(ValueError):
    """The user's log density broke one of thermoai's conventions."""


def checked(log_prob: LogProbFn, name: str = "log_posterior", scalar: bool = True) -> Callable[..., tuple[Tensor, Any]]:
    """Wrap ``log_prob`` so that its output is validated (see module docstring)."""

    def wrapped(params: TensorTree, batch: Any) -> tuple[Tensor, Any]:
        out = log_prob(params, batch)
        if not isinstance(out, tuple) or len(out) != 2:
            raise LogProbError(
                f"{name} must return a pair (value, aux); got {type(out).__name__}. "
                "Return (value, torch.tensor([])) when there is no auxiliary output."
            )
        value, aux = out
        if not isinstance(value, Tensor):
            raise LogProbError(f"{name} must return a tensor value; got {type(value).__name__}")
        if scalar and value.numel() != 1:
            raise LogProbError(
                f"{name} must return a scalar value (e.g. the batch mean); got shape {tuple(value.shape)}"
            )
        for leaf in T.leaves(aux):
            if not isinstance(leaf, Tensor):
                raise LogProbError(f"{name}'s aux must be a tree of tensors; found a leaf of type {type(leaf).__name__}")
        return value.reshape(()) if scalar else value, aux

    return wrapped


def value_and_grad(
    log_prob: LogProbFn, params: TensorTree, batch: Any, name: str = "log_posterior", check_finite: bool = True
) -> tuple[Tensor, TensorTree, Any]:
    """``(value, grad, aux)`` of ``log_prob`` at ``params`` via ``torch.func``, validated.

    ``grad`` has the structure of ``params``. With ``check_finite`` a NaN/Inf value or gradient raises a
    ``ValueError`` before any state is touched (one host sync per call when all is finite; skipped inside
    ``vmap``/``grad`` transforms, where the value cannot be read).
    """
    f = checked(log_prob, name)

    def g(p: TensorTree) -> tuple[Tensor, tuple[Tensor, Any]]:
        value, aux = f(p, batch)
        return value, (value.detach(), aux)

    with torch.no_grad():
        # with has_aux, grad_and_value returns (grad, (output, aux of g)) and g already returns the value in its aux
        grads, (_, (value, aux)) = grad_and_value(g, has_aux=True)(params)
    if check_finite and not under_transform(value) and not T.tree_all_finite((value, grads)):
        # value and gradient share the one sync above; only the error path tells them apart
        if not bool(torch.isfinite(value)):
            raise ValueError(f"{name} returned a non-finite value ({float(value)}); state left unchanged")
        raise ValueError(f"the gradient of {name} has NaN or Inf entries; state left unchanged")
    return value, grads, aux


def per_sample(log_prob: LogProbFn, name: str = "log_likelihood") -> Callable[[TensorTree, Any], tuple[Tensor, Any]]:
    """Turn a batch log density into one returning a vector of per-sample values.

    Each sample is passed as a batch of size 1 (leading dimension kept), vmapped over the batch's leading
    dimension: ``per_sample(f)(params, batch)[0]`` has shape ``(batch_size,)``.
    """
    f = checked(log_prob, name)

    def one(params: TensorTree, sample: Any) -> tuple[Tensor, Any]:
        return f(params, single(sample))

    return vmap(one, in_dims=(None, 0))


def per_sample_grads(
    log_prob: LogProbFn, params: TensorTree, batch: Any, per_sample_fn: bool = False, name: str = "log_likelihood"
) -> tuple[Tensor, TensorTree]:
    """Per-sample values ``(B,)`` and gradients (each leaf ``(B, *leaf.shape)``) of a log density.

    With ``per_sample_fn=False`` the user function is applied to each sample as a batch of one; with True
    it must already return a vector of per-sample values and is differentiated row by row.
    """
    if not per_sample_fn:
        f = checked(log_prob, name)

        def one(p: TensorTree, sample: Any) -> Tensor:
            return f(p, single(sample))[0]

        with torch.no_grad():
            grads, values = vmap(grad_and_value(one, has_aux=False), in_dims=(None, 0))(params, batch)
        return values, grads

    f = checked(log_prob, name, scalar=False)
    with torch.no_grad():
        values = f(params, batch)[0]
        jac = torch.func.jacrev(lambda p: f(p, batch)[0])(params)
    return values, jac


def model_to_function(model: torch.nn.Module) -> Callable[..., Any]:
    """A pure function ``f(params, *args, **kwargs) = model(*args, **kwargs)`` with ``params`` a dict of
    the model's named parameters (and buffers, if given); see ``torch.func.functional_call``."""

    def f(params: dict[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(model, params, args, kwargs)

    return f
