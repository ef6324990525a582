r"""Sample collection and convergence diagnostics for SGMCMC chains.

* :class:`Trace` / :func:`collect`: run a transform and keep samples with burn-in and thinning (one
  stacked tree at the end, not repeated concatenation).
* :func:`effective_sample_size`: multi-chain ESS with Geyer's initial monotone sequence (Stan's
  estimator, Vehtari et al. 2021, without rank normalisation).
* :func:`split_rhat`: split-:math:`\hat R` (Gelman et al., BDA3 §11.4).
* :func:`rhat`, :func:`ess_bulk`, :func:`ess_tail`, :func:`ess_mean`, :func:`ess_quantile`,
  :func:`mcse_mean`, :func:`mcse_sd`, :func:`mcse_quantile`: the rank-normalised diagnostics of Vehtari
  et al. (2021) that Stan and ArviZ report, equal to ArviZ's numbers on the same draws.
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

import numpy as np
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


# ------------------------------------------------------------ rank-normalised R-hat, bulk/tail ESS, MCSE
# Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization, folding, and localization: an
# improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16(2). The arithmetic follows ArviZ
# (0.23, ``arviz.stats.diagnostics``) step for step, so the numbers agree to rounding
# (tests/bayes/data/arviz_reference.json); it runs in float64 numpy, vectorised over the elements.


def _chains_np(x: Tensor, name: str, min_chains: int = 1) -> tuple[np.ndarray, tuple[int, ...]]:
    flat = _as_chains(x, name)
    if flat.shape[0] < min_chains:
        raise ValueError(f"{name} needs at least {min_chains} chains; got {flat.shape[0]} (shape (chains, draws, ...))")
    return flat.cpu().numpy(), tuple(x.shape[2:])


def _split_np(x: np.ndarray) -> np.ndarray:
    """``(m, n, e)`` -> ``(2m, n // 2, e)``: first halves then second halves (the middle draw of an odd
    length dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _z_scale_np(x: np.ndarray) -> np.ndarray:
    """Rank normalisation: average ranks over all draws of each element, Blom's offset ``(r - 3/8) /
    (S + 1/4)``, then the standard-normal quantile."""
    import scipy.special
    import scipy.stats

    m, n, e = x.shape
    ranks = scipy.stats.rankdata(x.reshape(m * n, e), method="average", axis=0)
    return scipy.special.ndtri((ranks - 0.375) / (m * n + 0.25)).reshape(m, n, e)


def _autocov_np(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance of every chain along the draws axis (FFT), ``(m, n, e)``."""
    import scipy.fft

    n = x.shape[1]
    size = scipy.fft.next_fast_len(2 * n)
    centred = x - x.mean(axis=1, keepdims=True)
    f = np.fft.rfft(centred, n=size, axis=1)
    f *= np.conjugate(f)
    return np.fft.irfft(f, n=size, axis=1)[:, :n] / n


def _ess_np(x: np.ndarray) -> np.ndarray:
    """ESS of each element of ``(m, n, e)`` chains: Geyer's initial positive then monotone sequence on the
    multi-chain autocorrelation (Stan/ArviZ ``_ess``), ``tau >= 1 / log10(m n)``."""
    m, n, e = x.shape
    out = np.empty(e)
    constant = (x.max(axis=(0, 1)) - x.min(axis=(0, 1))) < np.finfo(float).resolution
    acov = _autocov_np(x)
    mean_acov = acov.mean(axis=0)  # (n, e)
    mean_var = mean_acov[0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + x.mean(axis=1).var(axis=0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_of = lambda t: 1.0 - (mean_var - mean_acov[t]) / var_plus  # noqa: E731
        rho = np.zeros((n, e))
        rho[0] = 1.0
        even, odd = np.ones(e), rho_of(1)
        rho[1] = odd
        t_end = np.ones(e, dtype=np.int64)  # each element's t when its positive sequence stops
        active = np.ones(e, dtype=bool)
        t = 1
        while t < n - 3:
            active &= (even + odd) > 0.0
            if not active.any():
                break
            new_even, new_odd = rho_of(t + 1), rho_of(t + 2)
            even, odd = np.where(active, new_even, even), np.where(active, new_odd, odd)
            keep = active & ((new_even + new_odd) >= 0)
            rho[t + 1] = np.where(keep, new_even, 0.0)
            rho[t + 2] = np.where(keep, new_odd, 0.0)
            t_end = np.where(active, t + 2, t_end)
            t += 2
        max_t = t_end - 2
        cols = np.arange(e)
        rho[max_t + 1, cols] = np.where(even > 0, even, rho[max_t + 1, cols])
        t = 1
        while t <= max_t.max() - 2:  # initial monotone sequence, pair by pair
            on = t <= max_t - 2
            prev, nxt = rho[t - 1] + rho[t], rho[t + 1] + rho[t + 2]
            lower = on & (nxt > prev)
            rho[t + 1] = np.where(lower, prev / 2.0, rho[t + 1])
            rho[t + 2] = np.where(lower, prev / 2.0, rho[t + 2])
            t += 2
        csum = np.concatenate([np.zeros((1, e)), np.cumsum(rho, axis=0)], axis=0)
        tau = -1.0 + 2.0 * csum[max_t + 1, cols] + rho[max_t + 1, cols]
        tau = np.maximum(tau, 1.0 / np.log10(m * n))
        ess = m * n / tau
    ess[np.isnan(rho).any(axis=0)] = np.nan
    out[:] = ess
    out[constant] = m * n
    return out


def _rhat_np(x: np.ndarray) -> np.ndarray:
    """Classic R-hat of ``(m, n, e)``: ``sqrt((B / W + n - 1) / n)`` with ``B = n var(chain means)``."""
    n = x.shape[1]
    between = n * x.mean(axis=1).var(axis=0, ddof=1)
    within = x.var(axis=1, ddof=1).mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((between / within + n - 1) / n)


def _quantile_np(x: np.ndarray, prob: float) -> np.ndarray:
    """Type-7 (linear) quantile over all draws of each element."""
    m, n, e = x.shape
    return np.quantile(x.reshape(m * n, e), prob, axis=0)


def _ess_quantile_np(x: np.ndarray, prob: float) -> np.ndarray:
    return _ess_np(_split_np((x <= _quantile_np(x, prob)).astype(float)))


def _check_prob(prob: float, name: str) -> float:
    if not isinstance(prob, (int, float)) or not 0.0 < prob < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1); got {prob!r}")
    return float(prob)


def _per_leaf(samples: TensorTree, name: str, fn: Callable[[np.ndarray], np.ndarray], min_chains: int = 1) -> TensorTree:
    def one(x: Tensor) -> Tensor:
        arr, event = _chains_np(x, name, min_chains)
        return torch.as_tensor(fn(arr), dtype=torch.float64).reshape(event)

    return T.tree_map(one, samples)


def rhat(samples: TensorTree) -> TensorTree:
    r"""Rank-normalised split-:math:`\hat R` (Vehtari et al. 2021) of each element; leaves
    ``(chains, draws, *event)`` -> ``(*event,)`` float64.

    The chains are split in halves; :math:`\hat R` is computed on the rank-normalised draws (bulk) and on
    the rank-normalised distances to the median (folded, tails); the larger is returned. Values below
    1.01 indicate agreement. Needs at least 2 chains (as ArviZ).
    """

    def fn(x: np.ndarray) -> np.ndarray:
        split = _split_np(x)
        bulk = _rhat_np(_z_scale_np(split))
        median = np.median(split.reshape(-1, split.shape[-1]), axis=0)
        tail = _rhat_np(_z_scale_np(np.abs(split - median)))
        return np.maximum(bulk, tail)

    return _per_leaf(samples, "rhat", fn, min_chains=2)


def ess_bulk(samples: TensorTree) -> TensorTree:
    """Bulk ESS (Vehtari et al. 2021): the ESS of the rank-normalised split chains; leaves
    ``(chains, draws, *event)`` -> ``(*event,)`` float64. Robust to heavy tails; it measures how well the
    centre of the distribution (means, medians) is estimated."""
    return _per_leaf(samples, "ess_bulk", lambda x: _ess_np(_z_scale_np(_split_np(x))))


def ess_tail(samples: TensorTree, prob: tuple[float, float] = (0.05, 0.95)) -> TensorTree:
    """Tail ESS: the smaller of the ESS of the indicators ``x <= q_low`` and ``x <= q_high`` (the
    ``prob`` quantiles, split chains); how well the tails (intervals) are estimated."""
    lo, hi = (_check_prob(p, "ess_tail prob") for p in prob)
    return _per_leaf(samples, "ess_tail", lambda x: np.minimum(_ess_quantile_np(x, lo), _ess_quantile_np(x, hi)))


def ess_mean(samples: TensorTree) -> TensorTree:
    """ESS of the mean: the split-chain ESS of the draws themselves (no rank normalisation), the one
    :func:`mcse_mean` uses (ArviZ ``method="mean"``)."""
    return _per_leaf(samples, "ess_mean", lambda x: _ess_np(_split_np(x)))


def ess_quantile(samples: TensorTree, prob: float) -> TensorTree:
    """ESS of the ``prob`` quantile (the indicator ``x <= q``, split chains)."""
    p = _check_prob(prob, "prob")
    return _per_leaf(samples, "ess_quantile", lambda x: _ess_quantile_np(x, p))


def mcse_mean(samples: TensorTree) -> TensorTree:
    """Monte Carlo standard error of the mean: ``sd / sqrt(ESS_mean)`` (sd over all draws, ``ddof=1``)."""

    def fn(x: np.ndarray) -> np.ndarray:
        sd = x.reshape(-1, x.shape[-1]).std(axis=0, ddof=1)
        return sd / np.sqrt(_ess_np(_split_np(x)))

    return _per_leaf(samples, "mcse_mean", fn)


def mcse_sd(samples: TensorTree) -> TensorTree:
    r"""Monte Carlo standard error of the standard deviation (ArviZ 0.23): with ``c = (x - mean)^2``,
    :math:`\mathrm{var}(\hat\sigma^2) \approx (\overline{c^2} - \bar c^2) / \mathrm{ESS}(c)` and the delta
    method, :math:`\mathrm{mcse} = \sqrt{\mathrm{var}(\hat\sigma^2) / (4 \bar c)}`."""

    def fn(x: np.ndarray) -> np.ndarray:
        c2 = (x - x.mean(axis=(0, 1))) ** 2
        ess = _ess_np(_split_np(c2))
        evar = c2.mean(axis=(0, 1))
        varvar = ((c2**2).mean(axis=(0, 1)) - evar**2) / ess
        return np.sqrt(varvar / evar / 4)

    return _per_leaf(samples, "mcse_sd", fn)


def mcse_quantile(samples: TensorTree, prob: float) -> TensorTree:
    """Monte Carlo standard error of the ``prob`` quantile: half the width of the central 68 % interval
    of the order statistics, from the ``Beta(ESS p + 1, ESS (1 - p) + 1)`` law of the quantile's rank."""
    import scipy.stats

    p = _check_prob(prob, "prob")

    def fn(x: np.ndarray) -> np.ndarray:
        ess = _ess_quantile_np(x, p)
        s = np.sort(x.reshape(-1, x.shape[-1]), axis=0)
        size = s.shape[0]
        out = np.empty(x.shape[-1])
        for j in range(x.shape[-1]):
            with np.errstate(invalid="ignore"):
                ppf = scipy.stats.beta.ppf([0.1586553, 0.8413447], ess[j] * p + 1, ess[j] * (1 - p) + 1)
            ppf_size = ppf * size - 1
            lo = s[int(np.floor(np.nanmax((ppf_size[0], 0)))), j]
            hi = s[int(np.ceil(np.nanmin((ppf_size[1], size - 1)))), j]
            out[j] = (hi - lo) / 2
        return out

    return _per_leaf(samples, "mcse_quantile", fn)


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
