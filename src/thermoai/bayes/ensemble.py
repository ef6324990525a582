r"""Ensembles: K members (or K parallel SGMCMC chains) advanced at once with ``torch.func.vmap``.

:func:`build` lifts a transform whose state is a NamedTuple of tensors and whose ``update`` works under
``torch.func.vmap`` (every :mod:`thermoai.bayes.sgmcmc` transform) to K members: the ensemble state is the
member state with a leading dimension ``K`` on every tensor, and one ``update`` runs ``K`` member updates
in a single vmapped call (``randomness="different"``: independent noise per member). Two conveniences
follow the posteriors paper (Duffield et al., 2024, §4):

* :func:`deep_ensemble`: every member is SGHMC at ``temperature=0``, i.e. SGD with momentum started from
  its own initialisation: a deep ensemble.
* :func:`unbiased_ensemble`: every member is an SGHMC chain at ``temperature = 1/num_data`` (with the
  batch-averaged log posterior, *prior included*, this targets the Bayesian posterior); the final states of
  the K chains are K asymptotically unbiased posterior samples, unlike a deep ensemble's K modes.

Example::

    ens = ensemble.unbiased_ensemble(log_posterior, lr=1e-2, num_data=N, n_members=8)
    state = ens.init([init_params(seed) for seed in range(8)])
    for batch in loader:
        state, aux = ens.update(state, batch, inplace=True)
    samples = state.params  # every leaf (8, *leaf.shape)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from torch.func import vmap

from thermoai import tree as T
from thermoai.bayes.sgmcmc import sghmc
from thermoai.types import LogProbFn, Schedule, TensorTree, Transform


def build(transform: Transform, n_members: int, batch_per_member: bool = False, check_finite: bool = True) -> Transform:
    """Lift ``transform`` to ``n_members`` members advanced together.

    ``init(params, stacked=False)``: ``params`` is a sequence of ``n_members`` trees of identical structure,
    a callable ``k -> tree``, or (``stacked=True``) one tree whose leaves have a leading ``n_members`` dim.
    ``update(state, batch, inplace=False, generator=None)``: one step of every member; the same ``batch``
    for all (or, with ``batch_per_member``, leaves of ``batch`` carry a leading ``n_members`` dim).
    Returns ``(state, aux)`` with ``aux`` stacked over members. With ``check_finite`` a member whose log
    posterior or parameters became NaN/Inf raises ``ValueError`` (one host sync per step); an
    out-of-place update then leaves the input state untouched, an in-place one too (the new values are
    checked before they are written).
    """
    if not isinstance(n_members, int) or n_members < 1:
        raise ValueError(f"n_members must be a positive int; got {n_members!r}")

    def init(params: Any, stacked: bool = False, **kwargs: Any) -> Any:
        stacked_params = _stack_params(params, n_members, stacked)
        state = vmap(lambda p: transform.init(p, **kwargs), randomness="different")(stacked_params)
        # vmap broadcasts per-member constants (step, log_posterior) as expanded views: make them real
        # storage so that in-place updates can write into each member's entry
        return T.tree_map(lambda x: x.clone() if 0 in x.stride() else x, state)

    def update(
        state: Any, batch: Any, inplace: bool = False, generator: torch.Generator | None = None, **kwargs: Any
    ) -> tuple[Any, TensorTree]:
        _check_members(state, n_members)

        if generator is not None:  # only then: transforms without randomness need not accept it
            kwargs["generator"] = generator

        def one(s: Any, b: Any) -> tuple[Any, TensorTree]:
            return transform.update(s, b, inplace=False, **kwargs)

        new_state, aux = vmap(one, in_dims=(0, 0 if batch_per_member else None), randomness="different")(state, batch)
        if check_finite:
            _check_finite(new_state)
        if inplace:
            T.tree_insert_(state, new_state)
            return state, aux
        return new_state, aux

    return Transform(init=init, update=update)


def deep_ensemble(
    log_posterior: LogProbFn,
    lr: Schedule,
    n_members: int,
    alpha: float = 0.01,
    sigma: float = 1.0,
    momenta: TensorTree | float | None = 0.0,
    **kwargs: Any,
) -> Transform:
    """K independent SGD-with-momentum runs (SGHMC at ``temperature=0``); see :mod:`.sgmcmc.sghmc` for
    the mapping to ``torch.optim.SGD`` hyper-parameters. Extra keywords go to :func:`build`."""
    member = sghmc.build(log_posterior, lr=lr, alpha=alpha, beta=0.0, sigma=sigma, temperature=0.0, momenta=momenta)
    return build(member, n_members, **kwargs)


def unbiased_ensemble(
    log_posterior: LogProbFn,
    lr: Schedule,
    num_data: int,
    n_members: int,
    alpha: float = 0.01,
    beta: float = 0.0,
    sigma: float = 1.0,
    momenta: TensorTree | float | None = None,
    **kwargs: Any,
) -> Transform:
    """K parallel SGHMC chains at ``temperature = 1/num_data``; keep the final states.

    ``log_posterior`` must be the batch-averaged log posterior *including the prior*:
    ``mean_i log p(y_i | x_i, theta) + log p(theta) / num_data``.
    """
    if not isinstance(num_data, int) or num_data < 1:
        raise ValueError(f"num_data must be a positive int (the training-set size); got {num_data!r}")
    member = sghmc.build(
        log_posterior, lr=lr, alpha=alpha, beta=beta, sigma=sigma, temperature=1.0 / num_data, momenta=momenta
    )
    return build(member, n_members, **kwargs)


def member(state: Any, k: int) -> Any:
    """The state of member ``k`` (views into the ensemble state)."""
    return T.tree_map(lambda x: x[k], state)


def members(state: Any) -> list[Any]:
    """All member states, in order."""
    n = T.leaves(state)[0].shape[0]
    return [member(state, k) for k in range(n)]


def stack(trees: Sequence[TensorTree]) -> TensorTree:
    """Stack trees of identical structure along a new leading dimension."""
    trees = list(trees)
    if not trees:
        raise ValueError("cannot stack an empty sequence of trees")
    for i, t in enumerate(trees[1:], start=1):
        T.check_same_structure(trees[0], t, "params[0]", f"params[{i}]")
    spec = T.structure(trees[0])
    columns = zip(*[T.leaves(t) for t in trees])
    return T.unflatten(spec, [torch.stack([c.detach() for c in col]) for col in columns])


def _stack_params(params: Any, n: int, stacked: bool) -> TensorTree:
    if stacked:
        for i, leaf in enumerate(T.leaves(params)):
            if not isinstance(leaf, Tensor) or leaf.dim() == 0 or leaf.shape[0] != n:
                shape = tuple(leaf.shape) if isinstance(leaf, Tensor) else type(leaf).__name__
                raise ValueError(f"stacked params: leaf {i} must have a leading dimension of n_members={n}; got {shape}")
        return T.tree_map(lambda x: x.detach().clone(), params)
    if callable(params):
        params = [params(k) for k in range(n)]
    if not isinstance(params, (list, tuple)):
        raise TypeError(
            "ensemble init expects a list of n_members parameter trees, a callable k -> tree, or stacked=True "
            f"with a tree of stacked leaves; got {type(params).__name__}"
        )
    if len(params) != n:
        raise ValueError(f"ensemble init expects {n} parameter trees (n_members); got {len(params)}")
    return stack(params)


def _check_members(state: Any, n: int) -> None:
    first = T.leaves(state)[0]
    if first.dim() == 0 or first.shape[0] != n:
        raise ValueError(
            f"ensemble state must have a leading dimension of n_members={n}; got shape {tuple(first.shape)} "
            "(was it made by this ensemble's init?)"
        )


def _check_finite(state: Any) -> None:
    """One host sync when all is finite (log posteriors and parameters together); the error path then
    finds the culprit."""
    lp = getattr(state, "log_posterior", None)
    params = getattr(state, "params", state)
    if T.tree_all_finite((lp, params)):
        return
    if lp is not None and not bool(torch.isfinite(lp).all()):
        bad = torch.nonzero(~torch.isfinite(lp)).flatten().tolist()
        raise ValueError(f"ensemble members {bad} have a non-finite log posterior; state left unchanged")
    raise ValueError("the ensemble's parameters became NaN/Inf (non-finite gradients); state left unchanged")
