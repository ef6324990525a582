r"""Sample collection and convergence diagnostics for SGMCMC chains.

* :class:`Trace` / :func:`collect`: run a transform and keep samples with burn-in and thinning (one
  stacked tree at the end, not repeated concatenation).
* :func:`effective_sample_size`: multi-chain ESS with Geyer's initial monotone sequence (Stan's
  estimator, Vehtari et al. 2021, without rank normalisation).
* :func:`split_rhat`: split-:math:`\hat R` (Gelman et al., BDA3 §11.4).
* :func:`gaussian_kl` / :func:`sample_gaussian_kl`: KL divergence between Gaussians, and between the
  Gaussian with the samples' mean and covariance and a target.

Layouts: traces from :func:`collect` are draws-first, every leaf ``(n_kept, *leaf)`` (an ensemble state
gives ``(n_kept, K, *leaf)``); ESS and R-hat take chains-first arrays ``(chains, draws, *event)``
(:func:`draws_to_chains` converts).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from tqdm import tqdm

from thermoai import tree as T
from thermoai.types import TensorTree, Transform


class Trace:
    """Records ``extract(state)`` (default ``state.params``) from a stream of states.

    The first ``burn_in`` calls are discarded, then every ``thin``-th is kept (cloned, so in-place
    updates do not change recorded values). :attr:`samples` stacks them into one tree with a leading
    draws dimension.
    """

    def __init__(self, burn_in: int = 0, thin: int = 1, extract: Callable[[Any], TensorTree] | None = None):
        if not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(f"burn_in must be a non-negative int; got {burn_in!r}")
        if not isinstance(thin, int) or thin < 1:
            raise ValueError(f"thin must be a positive int; got {thin!r}")
        self.burn_in, self.thin = burn_in, thin
        self.extract = extract if extract is not None else (lambda s: s.params)
        self.calls = 0
        self._kept: list[list[Tensor]] = []
        self._spec = None

    def record(self, state: Any) -> bool:
        """Offer one state; returns True if it was kept."""
        i = self.calls
        self.calls += 1
        if i < self.burn_in or (i - self.burn_in) % self.thin:
            return False
        tree = self.extract(state)
        ls = T.leaves(tree)
        if self._spec is None:
            self._spec = T.structure(tree)
        elif T.structure(tree) != self._spec:
            raise ValueError("Trace.record: the extracted tree changed structure between calls")
        with torch.no_grad():
            self._kept.append([x.detach().clone() for x in ls])
        return True

    __call__ = record

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def samples(self) -> TensorTree:
        """The kept values stacked: every leaf ``(len(self), *leaf.shape)``."""
        if not self._kept:
            raise ValueError(f"no samples kept yet ({self.calls} states offered, burn_in={self.burn_in})")
        return T.unflatten(self._spec, [torch.stack(col) for col in zip(*self._kept)])


def collect(
    transform: Transform,
    state: Any,
    batches: Iterable[Any] | None = None,
    num_steps: int | None = None,
    burn_in: int = 0,
    thin: int = 1,
    extract: Callable[[Any], TensorTree] | None = None,
    inplace: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Any, TensorTree]:
    """Run ``transform.update`` and keep samples; returns ``(final_state, samples)``.

    ``batches``: an iterable of batches (cycled when ``num_steps`` is larger; re-iterable ones, such
    as a list or a DataLoader, start over), or None for a log posterior without data (then
    ``num_steps`` is required). The state after each update is offered to a :class:`Trace`.
    """
    if batches is None and num_steps is None:
        raise ValueError("collect needs batches, num_steps, or both")
    if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
        raise ValueError(f"num_steps must be a positive int; got {num_steps!r}")
    trace = Trace(burn_in, thin, extract)
    stream: Iterable[Any]
    if batches is None:
        stream = itertools.repeat(None, num_steps)
    elif num_steps is None:
        stream = batches
    else:
        stream = itertools.islice(_cycle(batches), num_steps)
    kwargs = {} if generator is None else {"generator": generator}
    for batch in tqdm(stream, total=num_steps, disable=not progress, desc="sampling"):
        state, _ = transform.update(state, batch, inplace=inplace, **kwargs)
        trace.record(state)
    return state, trace.samples


def _cycle(batches: Iterable[Any]) -> Iterable[Any]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("batches is empty")


def draws_to_chains(samples: TensorTree) -> TensorTree:
    """``(draws, chains, ...)`` -> ``(chains, draws, ...)`` on every leaf (ensemble traces)."""
    return T.tree_map(lambda x: x.movedim(0, 1), samples)


# ------------------------------------------------------------------------------------- ESS and R-hat

def _as_chains(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects tensors (or trees of tensors); got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} expects shape (chains, draws, *event); got {tuple(x.shape)} (use x[None] for one chain)")
    if x.shape[1] < 4:
        raise ValueError(f"{name} needs at least 4 draws per chain; got {x.shape[1]}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: samples contain NaN or Inf")
    return x.to(torch.float64).reshape(x.shape[0], x.shape[1], -1)


def _autocovariance(x: Tensor) -> Tensor:
    """Biased autocovariance along dim 1 of ``(chains, draws, e)`` via FFT; returns the same shape."""
    n = x.shape[1]
    centred = x - x.mean(dim=1, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(centred, n=size, dim=1)
    return torch.fft.irfft(f * f.conj(), n=size, dim=1)[:, :n] / n


def _ess_flat(x: Tensor) -> Tensor:
    m, n, _ = x.shape
    acov = _autocovariance(x)  # (m, n, e)
    chain_var = acov[:, 0] * n / (n - 1)  # (m, e)
    within = chain_var.mean(dim=0)
    between_over_n = x.mean(dim=1).var(dim=0, unbiased=True) if m > 1 else torch.zeros_like(within)
    var_plus = within * (n - 1) / n + between_over_n
    rho = 1.0 - (within - acov.mean(dim=0)) / var_plus  # (n, e)
    k = n // 2
    pairs = rho[: 2 * k : 2] + rho[1 : 2 * k : 2]  # Geyer's P_k = rho_2k + rho_2k+1, (k, e)
    positive = torch.cumprod((pairs > 0).to(pairs.dtype), dim=0)  # initial positive sequence
    monotone = torch.cummin(pairs, dim=0).values  # initial monotone sequence
    tau = -1.0 + 2.0 * (monotone * positive).sum(dim=0)
    tau = torch.clamp(tau, min=1.0 / math.log10(m * n) if m * n > 1 else 1.0)  # Stan's cap: ESS <= MN log10(MN)
    ess = m * n / tau
    return torch.where(var_plus > 0, ess, torch.full_like(ess, float("nan")))


def effective_sample_size(samples: TensorTree) -> TensorTree:
    """Effective sample size of each element; leaves ``(chains, draws, *event)`` -> ``(*event,)``.

    Autocorrelations are combined over chains with the between-chain variance (so chains stuck apart
    lower the ESS) and summed with Geyer's initial monotone sequence. A constant element gives NaN.
    """
    def one(x: Tensor) -> Tensor:
        flat = _as_chains(x, "effective_sample_size")
        return _ess_flat(flat).reshape(x.shape[2:]).to(x.dtype if x.is_floating_point() else torch.float64)

    return T.tree_map(one, samples)


def split_rhat(samples: TensorTree) -> TensorTree:
    r"""Split-:math:`\hat R` of each element; leaves ``(chains, draws, *event)`` -> ``(*event,)``.

    Each chain is cut into halves (the middle draw dropped for odd lengths), and
    :math:`\hat R = \sqrt{\widehat{\mathrm{var}}^+ / W}` over the ``2 * chains`` halves. Values near 1
    (below ~1.01) indicate agreement between and within chains.
    """
    def one(x: Tensor) -> Tensor:
        flat = _as_chains(x, "split_rhat")
        half = flat.shape[1] // 2
        halves = torch.cat([flat[:, :half], flat[:, -half:]], dim=0)
        n = halves.shape[1]
        within = halves.var(dim=1, unbiased=True).mean(dim=0)
        between_over_n = halves.mean(dim=1).var(dim=0, unbiased=True)
        var_plus = within * (n - 1) / n + between_over_n
        return torch.sqrt(var_plus / within).reshape(x.shape[2:]).to(x.dtype)

    return T.tree_map(one, samples)


# ---------------------------------------------------------------------------------------- Gaussian KL

def sample_mean_cov(samples: TensorTree, sample_dims: int = 1) -> tuple[Tensor, Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of samples.

    Every leaf has ``sample_dims`` leading sample dimensions (e.g. 2 for ``(chains, draws, ...)``),
    flattened together; the remaining dimensions of all leaves are ravelled into ``d`` in tree order.
    """
    ls = T.leaves(samples)
    if not ls:
        raise ValueError("samples has no tensor leaves")
    lead = ls[0].shape[:sample_dims]
    for i, x in enumerate(ls):
        if x.shape[:sample_dims] != lead:
            raise ValueError(f"samples: leaf {i} has leading shape {tuple(x.shape[:sample_dims])}, leaf 0 {tuple(lead)}")
    n = math.prod(lead)
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance; got {n}")
    flat = torch.cat([x.reshape(n, -1) for x in ls], dim=1)
    mean = flat.mean(dim=0)
    centred = flat - mean
    return mean, centred.T @ centred / (n - 1)


def gaussian_kl(mean_p: Tensor, cov_p: Tensor, mean_q: Tensor, cov_q: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(N(\mu_p, \Sigma_p) \,\|\, N(\mu_q, \Sigma_q))` in nats (0-d tensor).

    :math:`\tfrac12[\mathrm{tr}(\Sigma_q^{-1}\Sigma_p) + (\mu_q-\mu_p)^\top\Sigma_q^{-1}(\mu_q-\mu_p) - d
    + \log\det\Sigma_q - \log\det\Sigma_p]`, via Cholesky factors (both covariances must be positive
    definite).
    """
    d = mean_p.shape[-1]
    for name, m, c in (("p", mean_p, cov_p), ("q", mean_q, cov_q)):
        if tuple(m.shape) != (d,) or tuple(c.shape) != (d, d):
            raise ValueError(f"gaussian_kl: mean_{name} must be ({d},) and cov_{name} ({d}, {d}); got "
                             f"{tuple(m.shape)} and {tuple(c.shape)}")
    lp, info_p = torch.linalg.cholesky_ex(cov_p)
    lq, info_q = torch.linalg.cholesky_ex(cov_q)
    if int(info_p) != 0:
        raise ValueError("gaussian_kl: cov_p is not positive definite")
    if int(info_q) != 0:
        raise ValueError("gaussian_kl: cov_q is not positive definite")
    a = torch.linalg.solve_triangular(lq, lp, upper=False)  # L_q^{-1} L_p
    diff = torch.linalg.solve_triangular(lq, (mean_q - mean_p).unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2.0 * (torch.log(torch.diagonal(lq)).sum() - torch.log(torch.diagonal(lp)).sum())
    return 0.5 * ((a * a).sum() + (diff * diff).sum() - d + logdet)


def sample_gaussian_kl(samples: TensorTree, target_mean: Tensor, target_cov: Tensor, sample_dims: int = 1) -> Tensor:
    """``KL(N(sample mean, sample cov) || N(target_mean, target_cov))``; see :func:`sample_mean_cov`."""
    mean, cov = sample_mean_cov(samples, sample_dims)
    return gaussian_kl(mean, cov, target_mean.to(mean.dtype), target_cov.to(mean.dtype))
