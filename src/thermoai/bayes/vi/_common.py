"""Pieces shared by diagonal and dense VI: argument checks, the next state, noise and per-draw gradients."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.func import vmap

from thermoai import tree as T
from thermoai.bayes import adam as adam_mod
from thermoai.bayes._common import single, under_transform
from thermoai.bayes.log_prob import value_and_grad
from thermoai.types import LogProbFn, Schedule, TensorTree, check_non_negative, resolve_schedule


def resolve_optimizer(
    optimizer: adam_mod.Optimizer | None, lr: Schedule | None, default_lr: float | None = None
) -> adam_mod.Optimizer:
    """The optimiser to use: ``optimizer``, or ``adam(lr)`` when only ``lr`` is given."""
    if optimizer is not None and lr is not None:
        raise ValueError("give either optimizer or lr, not both (lr is shorthand for optimizer=adam(lr=lr))")
    if optimizer is None:
        if lr is None:
            if default_lr is None:
                raise TypeError(
                    "VI needs an optimizer (e.g. thermoai.bayes.adam.adam(lr=1e-2)) or an lr; got neither"
                )
            lr = default_lr
        return adam_mod.adam(lr=lr)
    # torchopt's GradientTransformation also has init/update, but its update returns increments, not new
    # parameters: accept only thermoai's Optimizer (build your own as Optimizer(init, update))
    if not isinstance(optimizer, adam_mod.Optimizer):
        raise TypeError(
            "optimizer must be a thermoai.bayes.adam.Optimizer such as thermoai.bayes.adam.adam(lr=...); "
            f"got {type(optimizer).__module__}.{type(optimizer).__name__} (torch.optim and torchopt "
            "optimizers are not supported)"
        )
    return optimizer


INIT_SD_SCALE = 0.1


def default_init_sd(params: TensorTree) -> float | Tensor:
    """The initial standard deviation used when none is given: ``0.1 * RMS`` of the initial parameters
    (one number for the whole tree), or 0.1 when they are all zero.

    An sd of 1 (posteriors' default) is larger than the weights of any usual network (He-initialised
    layers have an RMS of ``sqrt(2 / fan_in)``, 0.05-0.2), so the first draws from ``q`` are noise and the
    mean learns nothing: on digits VI then stays at chance. A tenth of the parameters' own scale keeps
    the draws near the mean at the start; the optimiser grows the sds from there to the posterior's.
    Under ``vmap`` (an ensemble of VI states) the value is a 0-d tensor per member.
    """
    ls = T.leaves(params)
    n = sum(x.numel() for x in ls)
    if n == 0:
        return INIT_SD_SCALE
    rms = torch.sqrt(sum((x.detach() ** 2).sum() for x in ls) / n)
    if under_transform(rms):
        return torch.where(rms > 0, INIT_SD_SCALE * rms, torch.full_like(rms, INIT_SD_SCALE))
    rms_f = float(rms)
    return INIT_SD_SCALE * rms_f if rms_f > 0 and math.isfinite(rms_f) else INIT_SD_SCALE


def check_temperature(temperature: Schedule | float | Tensor) -> None:
    """A constant (or a schedule's value) must be finite and >= 0; anything else must be a schedule."""
    if isinstance(temperature, (int, float, Tensor)):
        check_non_negative(temperature, "temperature")
    elif not callable(temperature):
        raise TypeError(f"temperature must be a number or a schedule; got {type(temperature).__name__}")


def check_n_samples(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}")


def nelbo_step(
    state: Any, second: Any, nelbo_and_grad: Callable[..., tuple[Tensor, Any, Any]], batch: Any,
    log_posterior: LogProbFn, optimizer: adam_mod.Optimizer, temperature: Schedule, n_samples: int, stl: bool,
    inplace: bool, generator: torch.Generator | None,
) -> tuple[Any, Any]:
    """One optimiser step on the NELBO for a VI state whose covariance parameter ``second`` is optimised as
    stored (fields ``params``, ``second``, ``opt_state``, ``nelbo``, ``step`` in that order; ``vi.diag``'s
    log-sds; ``vi.dense`` maps its factor to an unconstrained one and has its own step); returns ``(state, aux)``.

    ``nelbo_and_grad(mean, second, batch, log_posterior, T, n_samples, stl, generator)`` is the family's
    estimate. In place, the optimiser writes ``params``/``second``/``opt_state`` into ``state``'s tensors;
    only ``nelbo`` and ``step`` remain.
    """
    temp = resolve_schedule(temperature, state.step, "temperature")
    check_temperature(temp)
    value, grads, aux = nelbo_and_grad(state.params, second, batch, log_posterior, temp, n_samples, stl, generator)
    (params, new_second), opt_state = optimizer.update(grads, state.opt_state, (state.params, second), inplace=inplace)
    if inplace:
        state.nelbo.copy_(value)
        state.step.add_(1)
        return state, aux
    return type(state)(params, new_second, opt_state, value.detach(), state.step + 1), aux


def standard_normal_like(tree: TensorTree, n: int, generator: torch.Generator | None) -> TensorTree:
    """``N(0, I)`` noise with leaves of shape ``(n, *leaf.shape)``, dtype/device of each leaf."""
    return T.tree_map(
        lambda x: torch.randn((n, *x.shape), dtype=x.dtype, device=x.device, generator=generator), tree
    )


def draws_value_and_grad(
    log_posterior: LogProbFn, thetas: TensorTree, batch: Any
) -> tuple[Tensor, TensorTree, Any]:
    """``log p`` ``(S,)`` and its gradient (leaves ``(S, *shape)``) at ``S`` stacked draws.

    One draw calls the function directly; several are vmapped. ``aux`` is that of the first draw. NaN or
    infinite values/gradients raise ``ValueError`` (via :func:`thermoai.bayes.log_prob.value_and_grad`).
    """
    n = T.leaves(thetas)[0].shape[0]
    if n == 1:
        theta = T.tree_map(lambda x: x[0], thetas)
        value, grad, aux = value_and_grad(log_posterior, theta, batch)
        return value.reshape(1), single(grad), aux

    def one(theta: TensorTree) -> tuple[Tensor, TensorTree, Any]:
        return value_and_grad(log_posterior, theta, batch, check_finite=False)

    values, grads, auxs = vmap(one, randomness="different")(thetas)
    # one host sync for values and gradients together; the error path tells them apart
    if not under_transform(values) and not T.tree_all_finite((values, grads)):
        if not T.tree_all_finite(values):
            raise ValueError(
                "log_posterior returned a non-finite value (NaN or Inf) at a draw from q; state left unchanged"
            )
        raise ValueError("the gradient of log_posterior has NaN or Inf entries at a draw from q; state left unchanged")
    aux = T.tree_map(lambda x: x[0], auxs)
    return values, grads, aux
