r"""Simulation-based calibration (SBC; Talts, Betancourt, Simpson, Vehtari & Gelman, 2018).

If an inference method is correct, then for :math:`\tilde\theta \sim p(\theta)` and
:math:`y \sim p(y \mid \tilde\theta)` the rank of :math:`\tilde\theta` among :math:`L` independent draws of
the method's posterior :math:`p(\theta \mid y)` is uniform on :math:`\{0, \dots, L\}`, for every scalar
parameter (the prior is the average of the posteriors over data drawn from the prior). A method whose
posterior is too narrow puts the true value in the tails too often (a U-shaped rank histogram), one too
wide in the middle (a hump), a biased one to one side. :func:`run` repeats

    theta ~ prior;  y ~ simulate(theta);  draws ~ method(y);  rank_j = #{l : draws_l,j < theta_j}

for ``n_replications`` data sets at once (methods vectorise over them with ``torch.func.vmap``) and tests
the ranks of each parameter for uniformity with Pearson's chi-square over ``n_bins`` bins of rank values
(expected count per bin ``R * (ranks in the bin) / (L + 1)``, ``n_bins - 1`` degrees of freedom); its
p-value is returned per parameter, with the rank histograms and :func:`plot`.

Draws must be near-independent: autocorrelated MCMC draws give non-uniform ranks even for a correct
sampler (Talts et al. §5), so chains are thinned (:func:`chain_method`; its ``ess`` field reports the
effective sample size of the kept draws).

The model is a :class:`Model`: a prior sampler, the log prior, a simulator and the log likelihood. Methods
are functions ``method(data, generator) -> draws`` where ``data`` has a leading replication dimension ``R``
on every leaf and every leaf of ``draws`` has shape ``(R, L, *leaf)``; :func:`chain_method`,
:func:`approximation_method` and :func:`ensemble_method` build them from thermoai transforms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from thermoai import tree as T
from thermoai.types import TensorTree, Transform

__all__ = [
    "Model", "SBCResult", "run", "ranks", "uniformity_test", "plot", "chain_method", "approximation_method",
    "ensemble_method", "parameter_names",
]

Method = Callable[[Any, torch.Generator], TensorTree]


@dataclass(frozen=True)
class Model:
    """A Bayesian model for SBC.

    Attributes:
        prior_sample: ``prior_sample(n, generator) -> theta`` with a leading ``n`` on every leaf.
        log_prior: ``log_prior(theta) -> scalar`` for one parameter tree.
        simulate: ``simulate(theta, generator) -> data`` for one parameter tree: a tree of tensors whose
            shapes do not depend on ``theta`` (they are stacked over replications).
        log_likelihood: ``log_likelihood(theta, data) -> scalar``, summed over the data set.
        params_like: a parameter tree of the right structure and shapes (e.g. zeros); prior draws are
            checked against it. Default: the first prior draw.
    """

    prior_sample: Callable[[int, torch.Generator], TensorTree]
    log_prior: Callable[[TensorTree], Tensor]
    simulate: Callable[[TensorTree, torch.Generator], Any]
    log_likelihood: Callable[[TensorTree, Any], Tensor]
    params_like: TensorTree | None = None

    def log_posterior(self, theta: TensorTree, data: Any) -> tuple[Tensor, Tensor]:
        """``log p(data | theta) + log p(theta)`` (the whole data set, temperature 1) and an empty aux: the
        ``log_posterior`` every thermoai method takes."""
        return self.log_likelihood(theta, data) + self.log_prior(theta), torch.tensor([])


@dataclass
class SBCResult:
    """Ranks, histograms and uniformity tests of one SBC run.

    Attributes:
        ranks: ``(R, d)`` int64, rank of the true value among the ``n_draws`` draws, per parameter.
        n_draws: ``L``; ranks lie in ``0 .. L``.
        edges: ``(n_bins + 1,)`` rank-value edges of the bins (bin b holds ranks ``edges[b] <= r < edges[b+1]``).
        counts: ``(d, n_bins)`` rank histogram per parameter.
        expected: ``(n_bins,)`` expected count per bin under uniformity.
        chi2: ``(d,)`` Pearson statistics; ``p_values``: ``(d,)`` their p-values (``n_bins - 1`` dof).
        names: ``d`` parameter names (ravel order of the parameter tree).
        info: anything the method reported (e.g. ``ess`` of thinned chains), JSON-friendly.
    """

    ranks: Tensor
    n_draws: int
    edges: Tensor
    counts: Tensor
    expected: Tensor
    chi2: Tensor
    p_values: Tensor
    names: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_replications(self) -> int:
        return int(self.ranks.shape[0])

    def p_min_bonferroni(self) -> float:
        """The smallest p-value times the number of parameters (capped at 1): a p-value for the
        hypothesis that *every* parameter is calibrated."""
        return min(1.0, float(self.p_values.min()) * len(self.names))

    def calibrated(self, alpha: float = 0.01) -> bool:
        """Whether uniformity is not rejected at level ``alpha`` for all parameters jointly (Bonferroni)."""
        return self.p_min_bonferroni() >= alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_replications": self.n_replications, "n_draws": self.n_draws, "names": self.names,
            "edges": self.edges.tolist(), "counts": self.counts.tolist(), "expected": self.expected.tolist(),
            "chi2": self.chi2.tolist(), "p_values": self.p_values.tolist(),
            "p_min_bonferroni": self.p_min_bonferroni(), "info": self.info,
        }


# ------------------------------------------------------------------------------------------ the run


def run(
    model: Model,
    method: Method,
    n_replications: int,
    n_draws: int,
    seed: int | torch.Generator = 0,
    n_bins: int | None = None,
) -> SBCResult:
    """Simulation-based calibration of ``method`` on ``model``.

    Args:
        model: prior, simulator and likelihood (:class:`Model`).
        method: ``method(data, generator) -> draws``: ``data`` leaves ``(R, ...)``, draws leaves
            ``(R, n_draws, *param)`` (see module docstring).
        n_replications: ``R``, the number of simulated data sets.
        n_draws: ``L`` posterior draws per data set (ranks take ``L + 1`` values).
        seed: an int or a ``torch.Generator``; the prior draws, the data and the method's randomness all
            come from it, so the same seed gives the same result.
        n_bins: bins of rank values for the chi-square test; default ``min(20, L + 1, R // 5)`` (at least
            five expected counts per bin).
    """
    n_bins = check_sizes(n_replications, n_draws, n_bins)
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    thetas, data = simulate(model, n_replications, generator)
    draws = method(data, generator)
    info: dict[str, Any] = {}
    if isinstance(draws, tuple) and len(draws) == 2 and isinstance(draws[1], dict):
        draws, info = draws
    r = ranks(thetas, draws, n_draws)
    edges, counts, expected, chi2, p = uniformity_test(r, n_draws, n_bins)
    return SBCResult(r, n_draws, edges, counts, expected, chi2, p, parameter_names(T.tree_map(lambda x: x[0], thetas)), info)


def check_sizes(n_replications: int, n_draws: int, n_bins: int | None) -> int:
    """Validate ``R``, ``L`` and the bins; returns the number of bins."""
    for name, value in (("n_replications", n_replications), ("n_draws", n_draws)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if n_bins is None:
        n_bins = min(20, n_draws + 1, n_replications // 5)
        if n_bins < 2:
            raise ValueError(
                f"n_replications={n_replications} and n_draws={n_draws} leave fewer than 2 bins with 5 expected "
                "counts each: SBC needs n_draws >= 1 and n_replications >= 10"
            )
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an int >= 2; got {n_bins!r}")
    if n_draws + 1 < n_bins:
        raise ValueError(
            f"n_draws={n_draws} gives {n_draws + 1} possible ranks, fewer than n_bins={n_bins}: draw at least "
            f"{n_bins - 1} posterior samples per replication (or use fewer bins)"
        )
    if n_replications < 5 * n_bins:
        raise ValueError(
            f"n_replications={n_replications} gives fewer than 5 expected ranks in each of n_bins={n_bins} bins "
            f"(the chi-square approximation needs them): use at least {5 * n_bins} replications or fewer bins"
        )
    return n_bins


def simulate(model: Model, n_replications: int, generator: torch.Generator) -> tuple[TensorTree, Any]:
    """``(thetas, data)``: prior draws (leaves ``(R, ...)``) and the data simulated from each, stacked."""
    thetas = model.prior_sample(n_replications, generator)
    leaves = T.leaves(thetas)
    if not leaves or not all(isinstance(x, Tensor) for x in leaves):
        raise TypeError(f"prior_sample must return a tree of tensors; got {type(thetas).__name__}")
    for i, x in enumerate(leaves):
        if x.dim() == 0 or x.shape[0] != n_replications:
            raise ValueError(
                f"prior_sample(n={n_replications}, ...) must return draws with a leading dimension n on every "
                f"leaf; leaf {i} has shape {tuple(x.shape)}"
            )
    first = T.tree_map(lambda x: x[0], thetas)
    if model.params_like is not None:
        try:
            T.check_same_structure(model.params_like, first, "params_like", "a prior_sample draw")
        except ValueError as err:
            raise ValueError(f"prior_sample's draws do not match the parameters of log_prior: {err}") from None
    try:
        value = model.log_prior(first)
    except (RuntimeError, IndexError, ValueError, TypeError) as err:
        raise ValueError(
            f"log_prior cannot be evaluated at a draw of prior_sample (shapes {[tuple(x.shape) for x in T.leaves(first)]}): "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"log_prior must return a scalar at a draw of prior_sample; got {shape} (do the draws have the "
            "parameters' shapes?)"
        )
    if not bool(torch.isfinite(value)):
        raise ValueError(f"log_prior is not finite ({float(value)}) at a draw of prior_sample")
    datasets = [model.simulate(T.tree_map(lambda x: x[r], thetas), generator) for r in range(n_replications)]
    spec = T.structure(datasets[0])
    for r, d in enumerate(datasets[1:], start=1):
        try:
            T.check_same_structure(datasets[0], d, "data[0]", f"data[{r}]")
        except ValueError as err:
            raise ValueError(f"simulate must return data sets of one structure and shape: {err}") from None
    data = T.unflatten(spec, [torch.stack(col) for col in zip(*[T.leaves(d) for d in datasets])])
    return thetas, data


def ranks(thetas: TensorTree, draws: TensorTree, n_draws: int | None = None) -> Tensor:
    """``(R, d)`` int64 ranks: per replication and scalar parameter (ravel order), the number of draws
    strictly below the true value. ``thetas`` leaves ``(R, *shape)``, ``draws`` leaves ``(R, L, *shape)``."""
    T.check_floating_leaves(draws, "the method's draws")
    tl, dl = T.leaves(thetas), T.leaves(draws)
    if T.structure(thetas) != T.structure(draws):
        raise ValueError(f"the method's draws have tree structure {T.structure(draws)}, the parameters {T.structure(thetas)}")
    R = tl[0].shape[0]
    L = dl[0].shape[1] if dl[0].dim() > 1 else None
    for i, (t, d) in enumerate(zip(tl, dl)):
        want = (R, n_draws if n_draws is not None else L, *t.shape[1:])
        if tuple(d.shape) != want:
            raise ValueError(
                f"the method's draws must have shape (n_replications, n_draws, *param) = {want} on leaf {i}; "
                f"got {tuple(d.shape)}"
            )
    theta_flat = torch.cat([t.reshape(R, -1) for t in tl], dim=1)
    draw_flat = torch.cat([d.reshape(R, d.shape[1], -1) for d in dl], dim=2).to(theta_flat.dtype)
    if not bool(torch.isfinite(draw_flat).all()):
        raise ValueError("the method returned NaN or infinite draws")
    return (draw_flat < theta_flat[:, None, :]).sum(dim=1)


def uniformity_test(r: Tensor, n_draws: int, n_bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pearson's chi-square test that ranks ``r`` ``(R, d)`` are uniform on ``0 .. n_draws``.

    The ``n_draws + 1`` rank values are cut into ``n_bins`` contiguous bins as evenly as possible; returns
    ``(edges, counts (d, B), expected (B,), chi2 (d,), p_values (d,))``.
    """
    import scipy.stats

    R, d = r.shape
    n_values = n_draws + 1
    edges = torch.round(torch.linspace(0, n_values, n_bins + 1, dtype=torch.float64)).to(torch.int64)
    which = torch.bucketize(r.contiguous(), edges[1:-1].contiguous(), right=True)  # bin index of each rank
    counts = torch.stack([torch.bincount(which[:, j], minlength=n_bins) for j in range(d)])
    expected = R * (edges[1:] - edges[:-1]).to(torch.float64) / n_values
    chi2 = ((counts.to(torch.float64) - expected) ** 2 / expected).sum(dim=1)
    p = torch.as_tensor(scipy.stats.chi2.sf(chi2.numpy(), n_bins - 1), dtype=torch.float64)
    return edges, counts, expected, chi2, p


def parameter_names(params: TensorTree) -> list[str]:
    """Names of the scalar parameters in ravel order: ``key[i]`` for dict leaves, ``theta[i]`` for a
    tensor (the index omitted for a one-element leaf)."""
    import optree

    paths, leaves, _ = optree.tree_flatten_with_path(params, none_is_leaf=False)
    out = []
    for path, leaf in zip(paths, leaves):
        base = ".".join(str(p) for p in path) or "theta"
        n = leaf.numel()
        out += [base] if n == 1 else [f"{base}[{i}]" for i in range(n)]
    return out


# ------------------------------------------------------------------------------------------ methods


def _seeded(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (), generator=generator))


def _stacked_run(transform: Transform, start: TensorTree, steps: Iterable[Any], record: Callable[[int, Any], None] | None,
                 vectorised: bool, init_kwargs: dict[str, Any] | None = None) -> Any:
    """Run ``transform`` for every replication (vmapped via ``ensemble.build`` with a batch per member, or
    in a loop) over ``steps``: each step is a batch with a leading replication dimension."""
    from thermoai.bayes import ensemble

    R = T.leaves(start)[0].shape[0]
    init_kwargs = init_kwargs or {}
    if vectorised:
        members = ensemble.build(transform, R, batch_per_member=True)
        state = members.init(start, stacked=True, **init_kwargs)
        for i, batch in enumerate(steps):
            state, _ = members.update(state, batch)
            if record is not None:
                record(i, state)
        return state
    states = [transform.init(T.tree_map(lambda x: x[r].clone(), start), **init_kwargs) for r in range(R)]
    for i, batch in enumerate(steps):
        states = [transform.update(s, T.tree_map(lambda x: x[r], batch))[0] for r, s in enumerate(states)]
        if record is not None:
            record(i, ensemble.stack(states))
    return ensemble.stack(states)


def chain_method(
    build: Callable[[Callable[..., Any]], Transform],
    model: Model,
    burn_in: int,
    thin: int,
    n_draws: int,
    init: Callable[[int, torch.Generator], TensorTree] | None = None,
    batches: Callable[[Any, int], Any] | None = None,
    vectorised: bool = True,
) -> Method:
    """An SBC method from an MCMC transform: ``build(log_posterior) -> Transform``, one chain per data set
    (all vmapped), started at a fresh prior draw (or ``init(R, generator)``), ``burn_in`` steps discarded,
    then every ``thin``-th state's ``params`` kept until ``n_draws`` are kept. ``batches(data, step)``
    gives the batch of a step (default: the whole data set, i.e. full-batch gradients).

    The method also reports ``ess``: the mean over replications and parameters of the bulk ESS of each
    replication's kept draws (:func:`thermoai.bayes.diagnostics.ess_bulk`), which should be near
    ``n_draws`` for valid ranks.
    """
    from thermoai.bayes import diagnostics

    for name, value in (("burn_in", burn_in), ("thin", thin), ("n_draws", n_draws)):
        if not isinstance(value, int) or value < (0 if name == "burn_in" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'burn_in' else 'positive'} int; got {value!r}")

    def method(data: Any, generator: torch.Generator) -> tuple[TensorTree, dict[str, Any]]:
        R = T.leaves(data)[0].shape[0]
        start = (init or model.prior_sample)(R, generator)
        transform = build(model.log_posterior)
        kept: list[TensorTree] = []
        total = burn_in + thin * n_draws

        def record(i: int, state: Any) -> None:
            if i >= burn_in and (i - burn_in + 1) % thin == 0:
                kept.append(T.tree_map(lambda x: x.detach().clone(), state.params))

        steps = (data if batches is None else batches(data, i) for i in range(total))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seeded(generator))  # vmapped members draw from the global RNG
            _stacked_run(transform, start, steps, record, vectorised)
        draws = T.unflatten(T.structure(kept[0]), [torch.stack(col, dim=1) for col in zip(*[T.leaves(k) for k in kept])])
        if n_draws < 4:
            return draws, {}
        flat = torch.cat([x.reshape(R, n_draws, -1) for x in T.leaves(draws)], dim=2)  # (R, L, d)
        ess = diagnostics.ess_bulk(flat.permute(1, 0, 2)[None])  # each replication one chain: (R, d)
        return draws, {"ess": float(ess.mean()), "ess_min": float(ess.min())}

    return method


def approximation_method(
    transform: Transform,
    sample: Callable[..., TensorTree],
    n_draws: int,
    init: Callable[[Any, torch.Generator], TensorTree],
    steps: Callable[[Any], Iterable[Any]],
    vectorised: bool = True,
    init_kwargs: dict[str, Any] | None = None,
) -> Method:
    """An SBC method from a Gaussian approximation (VI, Laplace, EKF): for every data set (vmapped) the
    state starts at ``init(data, generator)`` (leaves ``(R, ...)``: the prior mean, a MAP, ...), is
    updated on every batch of ``steps(data)`` (each with a leading ``R``), and ``sample(state,
    (n_draws,))`` gives the draws."""

    def method(data: Any, generator: torch.Generator) -> TensorTree:
        start = init(data, generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seeded(generator))
            state = _stacked_run(transform, start, steps(data), None, vectorised, init_kwargs)
            if vectorised:
                return vmap(lambda s: sample(s, (n_draws,)), randomness="different")(state)
            R = T.leaves(start)[0].shape[0]
            per = [sample(T.tree_map(lambda x: x[r], state), (n_draws,)) for r in range(R)]
            return T.unflatten(T.structure(per[0]), [torch.stack(c) for c in zip(*[T.leaves(p) for p in per])])

    return method


def ensemble_method(
    build: Callable[[Callable[..., Any]], Transform],
    model: Model,
    n_members: int,
    num_steps: int,
    init: Callable[[int, torch.Generator], TensorTree] | None = None,
) -> Method:
    """An SBC method from an ensemble of chains whose *final* states are the draws (the unbiased
    ensemble): ``n_members`` chains of ``build(log_posterior)`` per data set, each from its own prior
    draw, ``num_steps`` full-batch steps; all ``R * n_members`` chains advance in one vmapped update."""
    from thermoai.bayes import ensemble

    if not isinstance(n_members, int) or n_members < 1:
        raise ValueError(f"n_members must be a positive int; got {n_members!r}")

    def method(data: Any, generator: torch.Generator) -> TensorTree:
        R = T.leaves(data)[0].shape[0]
        start = (init or model.prior_sample)(R * n_members, generator)
        repeated = T.tree_map(lambda x: x.repeat_interleave(n_members, dim=0), data)
        chains = ensemble.build(build(model.log_posterior), R * n_members, batch_per_member=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seeded(generator))
            state = chains.init(start, stacked=True)
            for _ in range(num_steps):
                state, _ = chains.update(state, repeated, inplace=True)
        return T.tree_map(lambda x: x.reshape(R, n_members, *x.shape[1:]), state.params)

    return method


# ------------------------------------------------------------------------------------------ plot


def plot(result: SBCResult, path: str | Path | None = None, axes: Sequence[Any] | None = None, title: str | None = None) -> Any:
    """Rank histograms, one panel per parameter: the counts per bin, the expected count and its central
    99 % binomial band (grey; a correct method leaves about 1 bin in 100 outside it), p-value in the title.
    Writes ``path`` if given; returns the figure (or the given axes' figure)."""
    import matplotlib

    if axes is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.stats

    d = len(result.names)
    if axes is None:
        fig, axes = plt.subplots(1, d, figsize=(2.6 * d, 2.2), squeeze=False)
        axes = list(axes[0])
    else:
        fig = axes[0].figure
    if len(axes) < d:
        raise ValueError(f"plot needs {d} axes (one per parameter); got {len(axes)}")
    centres = np.arange(result.counts.shape[1])
    frac = (result.expected / result.n_replications).numpy()
    lo = scipy.stats.binom.ppf(0.005, result.n_replications, frac)
    hi = scipy.stats.binom.ppf(0.995, result.n_replications, frac)
    for j, ax in enumerate(axes[:d]):
        ax.fill_between(np.r_[centres - 0.5, centres[-1] + 0.5], np.r_[lo, lo[-1]], np.r_[hi, hi[-1]], step="post",
                        color="0.85", lw=0)
        ax.bar(centres, result.counts[j].numpy(), width=0.9, color="C0")
        ax.step(np.r_[centres - 0.5, centres[-1] + 0.5], np.r_[result.expected.numpy(), result.expected[-1].item()],
                where="post", color="k", lw=0.8)
        ax.set_title(f"{result.names[j]}  p={float(result.p_values[j]):.2g}", fontsize=7)
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig

