"""Cold posteriors and unbiased ensembles on a real data set (Duffield et al. 2025, posteriors, §5).

The experiment of the posteriors paper (arXiv 2406.00104, IMDB + CNN-LSTM) at a size that runs on a laptop
CPU: an MLP classifier on scikit-learn's bundled ``digits`` set (1797 8x8 images, 10 classes; nothing is
downloaded), trained by

- MAP (Adam on the log posterior),
- Laplace, diagonal GGN at the MAP, with the linearised predictive,
- VI with a diagonal Gaussian (reparameterised, sticking-the-landing gradients),
- serial SGHMC (one chain, thinned samples after burn-in),
- a deep ensemble (K SGHMC chains at T = 0, i.e. heavy-ball SGD; final states),
- the unbiased ensemble (the same K chains at temperature T; final states),

over a sweep of temperatures ``T = t / N`` with ``t`` in {0.03, 0.1, 0.3, 1, 3} (``t = 1`` is the Bayesian
posterior, ``t < 1`` a cold one). The log posterior is averaged over the batch,
``mean_i log p(y_i | x_i, theta) + log p(theta) / N``, so ``temperature = t / N`` targets
``p(theta | D)^(1/t)``. Reported per method and temperature: test accuracy, negative log-likelihood of the
predictive (NLL, nats per example) and expected calibration error (ECE, 15 equal-width confidence bins), as
mean +- standard error over seeds (each seed: its own initialisation, minibatch order and noise; the
train/test split is fixed).

Two findings of the paper are checked on these numbers and reported as they come out:
(1) at the Bayesian temperature the Bayesian methods have lower NLL than MAP; (2) the ensemble at
``T = 1/N`` has lower NLL than the deep ensemble at ``T = 0``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from thermoai import tree as T
from thermoai.bayes import ensemble
from thermoai.bayes.adam import adam
from thermoai.bayes.laplace import diag_ggn
from thermoai.bayes.log_prob import value_and_grad
from thermoai.bayes.sgmcmc import sghmc
from thermoai.bayes.vi import diag as vi_diag

# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Config:
    """Sizes and hyper-parameters of the experiment (defaults: the full run, about ten minutes on 2 cores)."""

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    temperatures: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)  # in units of 1/N
    hidden: tuple[int, ...] = (100, 100)
    # isotropic Gaussian prior N(0, prior_sd^2 I) on every weight and bias; variance 1/5 as Izmailov et al.
    # (2021, "What are Bayesian neural network posteriors really like?") for MLPs and CNNs
    prior_sd: float = 0.4472135954999579
    batch_size: int = 128
    test_fraction: float = 0.3
    split_seed: int = 0
    # MAP
    map_epochs: int = 100
    map_lr: float = 1e-3
    # SGHMC (serial and ensembles): lr = epsilon, alpha = friction, momenta start at 0 (as the paper)
    sghmc_lr: float = 0.1
    sghmc_alpha: float = 1.0
    sghmc_burnin_epochs: int = 100
    sghmc_sample_epochs: int = 200
    sghmc_thin_epochs: int = 5
    ensemble_members: int = 10
    ensemble_epochs: int = 100
    # VI diag
    vi_epochs: int = 200
    vi_lr: float = 1e-3
    vi_init_log_sd: float = -3.0
    # predictive
    n_predictive_samples: int = 32


QUICK = Config(
    seeds=(0, 1),
    temperatures=(0.1, 1.0),
    hidden=(32,),
    map_epochs=15,
    map_lr=1e-2,
    sghmc_burnin_epochs=10,
    sghmc_sample_epochs=10,
    sghmc_thin_epochs=2,
    ensemble_members=4,
    ensemble_epochs=15,
    vi_epochs=15,
    vi_lr=1e-2,
    n_predictive_samples=8,
)

METHODS = ("map", "laplace_ggn_lin", "vi_diag", "sghmc_serial", "deep_ensemble", "unbiased_ensemble")
TEMPERED = ("laplace_ggn_lin", "vi_diag", "sghmc_serial", "unbiased_ensemble")
LABELS = {
    "map": "MAP",
    "laplace_ggn_lin": "Laplace diag GGN (linearised)",
    "vi_diag": "VI diag",
    "sghmc_serial": "SGHMC serial",
    "deep_ensemble": "Deep ensemble (T=0)",
    "unbiased_ensemble": "Unbiased ensemble (T)",
}

# ---------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Split:
    """Standardised digits: ``x_*`` (n, 64) float32, ``y_*`` (n,) int64."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def load_digits_split(test_fraction: float = 0.3, seed: int = 0) -> Split:
    """scikit-learn's bundled digits, a stratified train/test split fixed by ``seed``, features standardised
    with the training set's mean and standard deviation (constant pixels are left centred, not divided)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    data = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data.astype(np.float64), data.target, test_size=test_fraction, random_state=seed, stratify=data.target
    )
    mean, sd = x_tr.mean(0), x_tr.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)  # pixels that are always 0 in training would divide by zero
    as_x = lambda a: torch.tensor((a - mean) / sd, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return Split(as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te))


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless stream of index tensors: a fresh random permutation per epoch, cut into batches (the last,
    short batch of each epoch is dropped so that every step sees ``batch_size`` examples)."""
    if batch_size > n:
        raise ValueError(f"batch_size ({batch_size}) exceeds the training set size ({n})")
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size


# ---------------------------------------------------------------------------------------------- model


def init_mlp(sizes: tuple[int, ...], generator: torch.Generator) -> dict[str, Tensor]:
    """MLP parameters ``{"w{i}": (sizes[i], sizes[i+1]), "b{i}": (sizes[i+1],)}``, He-normal weights, zero
    biases."""
    params: dict[str, Tensor] = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = torch.randn(fan_in, fan_out, generator=generator) * math.sqrt(2.0 / fan_in)
        params[f"b{i}"] = torch.zeros(fan_out)
    return params


def mlp(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Logits ``(n, C)`` of a ReLU MLP on inputs ``x`` ``(n, d)``; pure, so it vmaps over parameter stacks."""
    n_layers = len(params) // 2
    h = x
    for i in range(n_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            h = torch.relu(h)
    return h


def make_log_posterior(n_train: int, prior_sd: float) -> Callable[[Any, Any], tuple[Tensor, Tensor]]:
    """``log_posterior(params, (x, y)) = mean_i log p(y_i | x_i) + log N(params; 0, prior_sd^2 I) / N``
    (constants dropped), the batch-averaged convention under which ``temperature = 1/N`` is Bayes."""
    prior_prec = 1.0 / prior_sd**2

    def log_posterior(params: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x, y = batch
        log_lik = -F.cross_entropy(mlp(params, x), y)
        log_prior = -0.5 * prior_prec * sum((p * p).sum() for p in T.leaves(params))
        return log_lik + log_prior / n_train, torch.tensor([])

    return log_posterior


def forward(params: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``forward(params, (x, y)) -> (logits (n, C), aux)``, the un-reduced model output for GGN methods."""
    return mlp(params, batch[0]), torch.tensor([])


def outer_log_likelihood(logits: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Summed categorical log-likelihood of the labels given logits ``(n, C)``."""
    return -F.cross_entropy(logits, batch[1], reduction="sum")


# ---------------------------------------------------------------------------------------------- metrics


def log_predictive_from_logits(logits: Tensor) -> Tensor:
    """Log of the Monte Carlo predictive ``mean_s softmax(logits_s)`` for logits ``(S, n, C)`` -> ``(n, C)``;
    computed as a log-mean-exp so that tiny probabilities stay finite."""
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (samples, n, classes); got {tuple(logits.shape)}")
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def accuracy(log_probs: Tensor, y: Tensor) -> float:
    """Fraction of examples whose most probable class is the label."""
    return float((log_probs.argmax(-1) == y).double().mean())


def nll(log_probs: Tensor, y: Tensor) -> float:
    """Mean negative log predictive probability of the labels (nats per example)."""
    return float(-log_probs.gather(-1, y[:, None]).double().mean())


def expected_calibration_error(log_probs: Tensor, y: Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins on (0, 1]:
    ``sum_b (n_b / n) |accuracy_b - mean confidence_b|`` with confidence the top predictive probability."""
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int; got {n_bins!r}")
    probs = log_probs.double().exp()
    confidence, predicted = probs.max(-1)
    correct = (predicted == y).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # bin b holds (edges[b], edges[b+1]]; confidence >= 1/C > 0, so nothing falls below the first edge
    which = torch.bucketize(confidence, edges[1:-1], right=False)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            ece += mask.double().mean() * (correct[mask].mean() - confidence[mask].mean()).abs()
    return float(ece)


def evaluate(log_probs: Tensor, y: Tensor) -> dict[str, float]:
    """Accuracy, NLL and ECE (15 bins) of a predictive ``log_probs`` ``(n, C)`` against labels ``y`` ``(n,)``."""
    if log_probs.ndim != 2 or y.ndim != 1 or log_probs.shape[0] != y.shape[0]:
        raise ValueError(
            f"evaluate expects log_probs of shape (n, classes) and labels of shape (n,); got "
            f"{tuple(log_probs.shape)} and {tuple(y.shape)}"
        )
    if not bool(torch.isfinite(log_probs).all()):
        raise ValueError("the predictive has non-finite log probabilities")
    return {"accuracy": accuracy(log_probs, y), "nll": nll(log_probs, y), "ece": expected_calibration_error(log_probs, y)}


# ---------------------------------------------------------------------------------------------- methods

# purposes of the per-seed random streams (see Problem.generator); per-temperature streams add the index
SALT_INIT, SALT_MAP, SALT_ENSEMBLE_INIT = 1, 2, 3
SALT_VI, SALT_SGHMC, SALT_ENSEMBLE, SALT_LAPLACE = 100, 200, 300, 400


@dataclass
class Problem:
    """Everything one seed's runs share."""

    cfg: Config
    data: Split
    sizes: tuple[int, ...]
    log_posterior: Callable[[Any, Any], tuple[Tensor, Tensor]]
    seed: int

    def generator(self, salt: int) -> torch.Generator:
        """A generator for one purpose (``salt``) of this seed, so that methods do not share streams."""
        return torch.Generator().manual_seed(1_000_003 * self.seed + salt)

    def batches(self, salt: int) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.data.x_train, self.data.y_train
        for idx in minibatches(self.data.n_train, self.cfg.batch_size, self.generator(salt)):
            yield x[idx], y[idx]

    def epochs_to_steps(self, epochs: int) -> int:
        return epochs * steps_per_epoch(self.data.n_train, self.cfg.batch_size)

    def test_logits(self, params: Any) -> Tensor:
        """Test logits ``(n_test, C)`` of one parameter tree."""
        with torch.no_grad():
            return mlp(params, self.data.x_test)

    def test_logits_stacked(self, stacked: Any) -> Tensor:
        """Test logits ``(S, n_test, C)`` of a tree whose leaves carry a leading sample dimension."""
        with torch.no_grad():
            return torch.func.vmap(mlp, in_dims=(0, None))(stacked, self.data.x_test)


def run_map(problem: Problem) -> dict[str, Tensor]:
    """Maximum a posteriori: Adam on the batch-averaged log posterior from the seed's initialisation;
    returns the final parameters."""
    cfg = problem.cfg
    params = init_mlp(problem.sizes, problem.generator(SALT_INIT))
    optimizer = adam(lr=cfg.map_lr, maximize=True)
    opt_state = optimizer.init(params)
    batches = problem.batches(SALT_MAP)
    for _ in range(problem.epochs_to_steps(cfg.map_epochs)):
        _, grads, _ = value_and_grad(problem.log_posterior, params, next(batches))
        params, opt_state = optimizer.update(grads, opt_state, params, inplace=True)
    return params


def run_vi_diag(problem: Problem, t: float, index: int) -> Tensor:
    """Diagonal-Gaussian VI at temperature ``t / N`` from the seed's initialisation (STL gradients, one
    draw per step, initial sd ``exp(vi_init_log_sd)``); returns Monte Carlo test logits ``(S, n, C)``."""
    cfg = problem.cfg
    transform = vi_diag.build(
        problem.log_posterior, lr=cfg.vi_lr, temperature=t / problem.data.n_train, n_samples=1, stl=True,
        init_log_sds=cfg.vi_init_log_sd,
    )
    state = transform.init(init_mlp(problem.sizes, problem.generator(SALT_INIT)))
    noise = problem.generator(SALT_VI + index)
    batches = problem.batches(SALT_VI + index)
    for _ in range(problem.epochs_to_steps(cfg.vi_epochs)):
        state, _ = transform.update(state, next(batches), inplace=True, generator=noise)
    draws = vi_diag.sample(state, (cfg.n_predictive_samples,), generator=noise)
    return problem.test_logits_stacked(draws)


def run_sghmc_serial(problem: Problem, t: float, index: int) -> Tensor:
    """One SGHMC chain at temperature ``t / N`` (momenta start at 0): burn-in, then a test-logit snapshot
    every ``sghmc_thin_epochs``; returns the snapshots ``(S, n, C)``."""
    cfg = problem.cfg
    transform = sghmc.build(
        problem.log_posterior, lr=cfg.sghmc_lr, alpha=cfg.sghmc_alpha, temperature=t / problem.data.n_train,
        momenta=0.0,
    )
    state = transform.init(init_mlp(problem.sizes, problem.generator(SALT_INIT)))
    noise = problem.generator(SALT_SGHMC + index)
    batches = problem.batches(SALT_SGHMC + index)
    burn_in = problem.epochs_to_steps(cfg.sghmc_burnin_epochs)
    thin = problem.epochs_to_steps(cfg.sghmc_thin_epochs)
    total = burn_in + problem.epochs_to_steps(cfg.sghmc_sample_epochs)
    snapshots = []
    for i in range(1, total + 1):
        state, _ = transform.update(state, next(batches), inplace=True, generator=noise)
        if i > burn_in and (i - burn_in) % thin == 0:
            snapshots.append(problem.test_logits(state.params))
    return torch.stack(snapshots)


def run_laplace_ggn(problem: Problem, map_params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Diagonal GGN precision at the MAP over the whole training set, prior included:
    ``prec = 1/prior_sd^2 + sum_i diag(J_i^T H_i J_i)`` (``H_i`` the softmax cross-entropy Hessian)."""
    transform = diag_ggn.build(forward, outer_log_likelihood, prior_precision=1.0 / problem.cfg.prior_sd**2)
    state = transform.init(map_params)
    x, y = problem.data.x_train, problem.data.y_train
    for start in range(0, problem.data.n_train, problem.cfg.batch_size):
        state, _ = transform.update(state, (x[start : start + problem.cfg.batch_size], y[start : start + problem.cfg.batch_size]), inplace=True)
    return state.prec_diag


def laplace_linearised_logits(
    problem: Problem, map_params: dict[str, Tensor], prec_diag: dict[str, Tensor], t: float, index: int
) -> Tensor:
    """Test logits ``(S, n, C)`` of the linearised model ``f(mu) + J (theta_s - mu)`` with
    ``theta_s - mu ~ N(0, t / prec)``: the Laplace posterior tempered to ``p^(1/t)`` (precision divided by
    ``t``), applied after the fit as in the paper. One Jacobian-vector product per draw, vmapped."""
    generator = problem.generator(SALT_LAPLACE + index)
    sds = {k: torch.sqrt(t / v) for k, v in prec_diag.items()}
    deltas = {
        k: sds[k] * torch.randn((problem.cfg.n_predictive_samples, *v.shape), generator=generator)
        for k, v in map_params.items()
    }
    x = problem.data.x_test

    def linearised(delta: dict[str, Tensor]) -> Tensor:
        f0, jv = torch.func.jvp(lambda p: mlp(p, x), (map_params,), (delta,))
        return f0 + jv

    with torch.no_grad():
        return torch.func.vmap(linearised)(deltas)


def run_ensemble(problem: Problem, t: float, index: int) -> Tensor:
    """``ensemble_members`` SGHMC chains at temperature ``t / N`` (``t = 0``: the deep ensemble), advanced
    together in one vmapped update from the seed's K initialisations (shared by every temperature, so the
    comparison with the deep ensemble is paired); returns the test logits of the final states ``(K, n, C)``."""
    cfg = problem.cfg
    k_members = cfg.ensemble_members
    member = sghmc.build(
        problem.log_posterior, lr=cfg.sghmc_lr, alpha=cfg.sghmc_alpha, temperature=t / problem.data.n_train,
        momenta=0.0,
    )
    ens = ensemble.build(member, k_members)
    init_gen = problem.generator(SALT_ENSEMBLE_INIT)
    state = ens.init([init_mlp(problem.sizes, init_gen) for _ in range(k_members)])
    batches = problem.batches(SALT_ENSEMBLE + index)
    # the members' noise comes from the global generator (vmap with randomness="different"); fork it so
    # that the caller's global random state is left as it was
    with torch.random.fork_rng():
        torch.manual_seed(1_000_003 * problem.seed + SALT_ENSEMBLE + index)
        for _ in range(problem.epochs_to_steps(cfg.ensemble_epochs)):
            state, _ = ens.update(state, next(batches), inplace=True)
    return problem.test_logits_stacked(state.params)


# ---------------------------------------------------------------------------------------------- the sweep


def run_seed(cfg: Config, data: Split, seed: int, progress: Any = None) -> dict[str, dict[str, dict[str, float]]]:
    """All methods and temperatures for one seed: ``{method: {t_key: {metric: value}}}`` where ``t_key`` is
    the temperature in units of 1/N as a string (``"0"`` for MAP and the deep ensemble)."""
    sizes = (data.x_train.shape[1], *cfg.hidden, data.n_classes)
    problem = Problem(cfg, data, sizes, make_log_posterior(data.n_train, cfg.prior_sd), seed)
    y = data.y_test
    out: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METHODS}

    def tick() -> None:
        if progress is not None:
            progress.update(1)

    map_params = run_map(problem)
    out["map"]["0"] = evaluate(torch.log_softmax(problem.test_logits(map_params), -1), y)
    prec = run_laplace_ggn(problem, map_params)
    out["deep_ensemble"]["0"] = evaluate(log_predictive_from_logits(run_ensemble(problem, 0.0, 0)), y)
    tick()
    for index, t in enumerate(cfg.temperatures, start=1):
        key = t_key(t)
        out["laplace_ggn_lin"][key] = evaluate(
            log_predictive_from_logits(laplace_linearised_logits(problem, map_params, prec, t, index)), y
        )
        out["vi_diag"][key] = evaluate(log_predictive_from_logits(run_vi_diag(problem, t, index)), y)
        out["sghmc_serial"][key] = evaluate(log_predictive_from_logits(run_sghmc_serial(problem, t, index)), y)
        out["unbiased_ensemble"][key] = evaluate(log_predictive_from_logits(run_ensemble(problem, t, index)), y)
        tick()
    return out


def t_key(t: float) -> str:
    return f"{t:g}"


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample sd / sqrt(n); 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else 0.0
    return float(a.mean()), se


def summarise(per_seed: list[dict[str, dict[str, dict[str, float]]]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{method: {t_key: {metric: [mean, se]}}}`` over seeds."""
    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    for method in METHODS:
        summary[method] = {}
        for key in per_seed[0][method]:
            summary[method][key] = {
                metric: list(mean_se([run[method][key][metric] for run in per_seed]))
                for metric in ("accuracy", "nll", "ece")
            }
    return summary


def paired_difference(per_seed: list[dict], a: tuple[str, str], b: tuple[str, str], metric: str) -> tuple[float, float]:
    """Mean +- standard error over seeds of ``metric(a) - metric(b)`` (same seed: same data order/init)."""
    return mean_se([run[a[0]][a[1]][metric] - run[b[0]][b[1]][metric] for run in per_seed])


def findings(cfg: Config, per_seed: list[dict]) -> dict[str, Any]:
    """The paper's two qualitative claims, tested on paired per-seed differences (a difference counts as
    established when it is more than two standard errors from zero)."""
    one = t_key(1.0) if 1.0 in cfg.temperatures else t_key(cfg.temperatures[-1])
    bayes_vs_map = {}
    for method in TEMPERED:
        d, se = paired_difference(per_seed, (method, one), ("map", "0"), "nll")
        bayes_vs_map[method] = {"nll_minus_map": d, "se": se, "verdict": _verdict(d, se, "lower", "higher")}
    best = {}
    for method in TEMPERED:
        means = {key: float(np.mean([run[method][key]["nll"] for run in per_seed])) for key in per_seed[0][method]}
        key = min(means, key=means.get)
        d, se = paired_difference(per_seed, (method, key), ("map", "0"), "nll")
        best[method] = {"t": key, "nll_minus_map": d, "se": se, "verdict": _verdict(d, se, "lower", "higher")}
    ens = {}
    for metric in ("nll", "ece", "accuracy"):
        d, se = paired_difference(per_seed, ("unbiased_ensemble", one), ("deep_ensemble", "0"), metric)
        ens[metric] = {"unbiased_minus_deep": d, "se": se, "verdict": _verdict(d, se, "lower", "higher")}
    ens_by_t = {}
    for key in per_seed[0]["unbiased_ensemble"]:
        d, se = paired_difference(per_seed, ("unbiased_ensemble", key), ("deep_ensemble", "0"), "nll")
        ens_by_t[key] = {"nll_unbiased_minus_deep": d, "se": se, "verdict": _verdict(d, se, "lower", "higher")}
    return {"t_bayes": one, "unbiased_vs_deep_nll_by_t": ens_by_t, "coldest_t": t_key(min(cfg.temperatures)), "bayes_vs_map_at_t1": bayes_vs_map, "best_t_vs_map": best, "unbiased_vs_deep_ensemble": ens}


def _verdict(d: float, se: float, below: str, above: str) -> str:
    """``below``/``above`` when the difference ``d`` is more than two standard errors below/above zero."""
    if se == 0.0:
        return below if d < 0 else above
    if d < -2 * se:
        return below
    if d > 2 * se:
        return above
    return "no clear difference"


# ---------------------------------------------------------------------------------------------- report


def _fmt(ms: list[float], digits: int = 3) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def table(summary: dict) -> str:
    lines = [
        "| method | T (× 1/N) | test accuracy | test NLL | ECE (15 bins) |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        for key, m in summary[method].items():
            lines.append(
                f"| {LABELS[method]} | {key} | {_fmt(m['accuracy'])} | {_fmt(m['nll'])} | {_fmt(m['ece'])} |"
            )
    return "\n".join(lines)


def findings_text(f: dict) -> str:
    one = f["t_bayes"]
    lines = [f"**Finding 1 (Bayesian methods beat MAP on NLL), at T = {one}/N:**", ""]
    for method, r in f["bayes_vs_map_at_t1"].items():
        lines.append(
            f"- {LABELS[method]}: NLL − MAP NLL = {r['nll_minus_map']:+.3f} ± {r['se']:.3f} → **{r['verdict']}** than MAP"
            if r["verdict"] != "no clear difference"
            else f"- {LABELS[method]}: NLL − MAP NLL = {r['nll_minus_map']:+.3f} ± {r['se']:.3f} → no clear difference"
        )
    wins = [m for m, r in f["bayes_vs_map_at_t1"].items() if r["verdict"] == "lower"]
    lines += ["", f"At the Bayesian temperature {len(wins)} of {len(f['bayes_vs_map_at_t1'])} methods have a lower NLL than MAP."]
    lines += ["", "At each method's best temperature of the sweep:", ""]
    for method, r in f["best_t_vs_map"].items():
        lines.append(
            f"- {LABELS[method]}: best T = {r['t']}/N, NLL − MAP NLL = {r['nll_minus_map']:+.3f} ± {r['se']:.3f} "
            f"({r['verdict'] if r['verdict'] != 'no clear difference' else 'no clear difference from'}"
            f"{' than' if r['verdict'] != 'no clear difference' else ''} MAP)"
        )
    best_ts = {r["t"] for r in f["best_t_vs_map"].values()}
    coldest = t_key(min(float(r["t"]) for r in f["best_t_vs_map"].values()))
    if len(best_ts) == 1 and f.get("coldest_t") == coldest:
        lines += [
            "",
            f"Every tempered method has its lowest NLL at T = {coldest}/N, the coldest temperature of the sweep: "
            "a cold-posterior effect.",
        ]
    e = f["unbiased_vs_deep_ensemble"]
    lines += [
        "",
        f"**Finding 2 (the ensemble at T = {one}/N beats the deep ensemble at T = 0):** unbiased minus deep"
        " (lower NLL and ECE and higher accuracy are better):",
        "",
        f"- NLL {e['nll']['unbiased_minus_deep']:+.4f} ± {e['nll']['se']:.4f} → {e['nll']['verdict']}",
        f"- ECE {e['ece']['unbiased_minus_deep']:+.4f} ± {e['ece']['se']:.4f} → {e['ece']['verdict']}",
        f"- accuracy {e['accuracy']['unbiased_minus_deep']:+.4f} ± {e['accuracy']['se']:.4f} → {e['accuracy']['verdict']}",
    ]
    lines += ["", "NLL of the ensemble at each temperature minus the deep ensemble's:", ""]
    for key, r in f["unbiased_vs_deep_nll_by_t"].items():
        lines.append(f"- T = {key}/N: {r['nll_unbiased_minus_deep']:+.4f} ± {r['se']:.4f} → {r['verdict']}")
    held = e["nll"]["verdict"] == "lower"
    lines += ["", f"The paper's second finding {'holds' if held else 'does not hold'} here on NLL."]
    return "\n".join(lines)


def plot(summary: dict, cfg: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ts = np.asarray(cfg.temperatures)
    colours = {"laplace_ggn_lin": "C0", "vi_diag": "C1", "sghmc_serial": "C2", "unbiased_ensemble": "C3"}
    for ax, metric, title in zip(axes, ("accuracy", "nll", "ece"), ("test accuracy", "test NLL", "ECE (15 bins)")):
        for method, colour in colours.items():
            m = np.array([summary[method][t_key(t)][metric] for t in cfg.temperatures])
            ax.errorbar(ts, m[:, 0], yerr=m[:, 1], marker="o", capsize=3, color=colour, label=LABELS[method])
        for method, colour, style in (("map", "k", "--"), ("deep_ensemble", "C3", ":")):
            mean, se = summary[method]["0"][metric]
            ax.axhline(mean, linestyle=style, color=colour, label=LABELS[method])
            ax.axhspan(mean - se, mean + se, color=colour, alpha=0.08)
        ax.set_xscale("log")
        ax.set_xlabel("temperature T × N  (1 = Bayes posterior)")
        ax.set_title(title)
        if metric == "nll":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Cold posteriors on digits (MLP); mean ± s.e. over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(cfg: Config, summary: dict, f: dict, seconds: float, quick: bool, n_params: int, data: Split) -> str:
    command = "thermoai reproduce cold_posterior" + (" --quick" if quick else "") + "   (or `make run` for all)"
    return f"""# Cold posteriors and unbiased ensembles on digits

Reproduces, at laptop size, the cold-posterior experiment of the posteriors paper (Duffield et al.,
arXiv 2406.00104, §5, IMDB + CNN-LSTM) with thermoai.bayes. Produced by

```
{command}
```

in {seconds:.0f} s of wall-clock time ({'quick settings: a smoke test, not a result' if quick else 'default settings'}).

**Set-up.** scikit-learn's bundled `digits` (8×8 images, 10 classes): {data.n_train} training and
{int(data.x_test.shape[0])} test images (stratified split, seed {cfg.split_seed}), standardised. ReLU MLP
{' → '.join(str(s) for s in (data.x_train.shape[1], *cfg.hidden, data.n_classes))} ({n_params:,} parameters),
prior N(0, {cfg.prior_sd**2:g} I), batch {cfg.batch_size}, batch-averaged log posterior (mean log-likelihood +
log prior / N), so `temperature = t/N` targets p(θ|D)^(1/t). Seeds {list(cfg.seeds)} (each: initialisation,
minibatch order, noise); mean ± standard error over seeds.

- MAP: Adam (lr {cfg.map_lr:g}) for {cfg.map_epochs} epochs.
- Laplace: diagonal GGN at the MAP over the training set plus the prior precision; the precision divided by
  t (tempered after the fit, as in the paper); linearised predictive, {cfg.n_predictive_samples} draws.
- VI diag: thermoai's Adam (lr {cfg.vi_lr:g}), one draw per step, STL, initial sd e^{cfg.vi_init_log_sd:g},
  {cfg.vi_epochs} epochs from the same initialisation as MAP; {cfg.n_predictive_samples} predictive draws.
- SGHMC serial: lr {cfg.sghmc_lr:g}, α {cfg.sghmc_alpha:g}, momenta 0, {cfg.sghmc_burnin_epochs} epochs burn-in, then a
  sample every {cfg.sghmc_thin_epochs} epochs for {cfg.sghmc_sample_epochs} epochs.
- Deep ensemble: {cfg.ensemble_members} SGHMC chains at T = 0 (SGD with momentum), {cfg.ensemble_epochs} epochs,
  final states; unbiased ensemble: the same chains, same initialisations and batches, at T = t/N. All
  members advance in one vmapped update (`thermoai.bayes.ensemble`).

Metrics on the test set: accuracy, NLL of the predictive (nats per image), expected calibration error
with 15 equal-width confidence bins.

{table(summary)}

![cold posterior](cold_posterior.png)

## The paper's findings, checked

Differences are paired by seed; "lower"/"higher" means more than two standard errors from zero.

{findings_text(f)}
"""


def run(out_dir: Path, quick: bool = False, config: Config | None = None) -> dict:
    """Run the sweep and write ``cold_posterior.md``, ``.json`` and ``.png`` into ``out_dir``; returns the
    numbers (config, per-seed results, summary, findings)."""
    from tqdm.auto import tqdm

    cfg = config if config is not None else (QUICK if quick else Config())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_digits_split(cfg.test_fraction, cfg.split_seed)
    threads = torch.get_num_threads()
    # the model is tiny: one thread avoids the thread-pool overhead that dominates every step at this size
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        with tqdm(total=len(cfg.seeds) * (1 + len(cfg.temperatures)), desc="cold posterior", unit="job") as bar:
            per_seed = [run_seed(cfg, data, seed, bar) for seed in cfg.seeds]
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    return write_outputs(out_dir, cfg, per_seed, seconds, quick)


def write_outputs(out_dir: Path, cfg: Config, per_seed: list[dict], seconds: float, quick: bool) -> dict:
    """Summarise per-seed results, check the findings and write the three files (also used to rebuild a
    report from a saved ``cold_posterior.json`` without re-running: ``Config(**json["config"])``)."""
    data = load_digits_split(cfg.test_fraction, cfg.split_seed)
    sizes = (data.x_train.shape[1], *cfg.hidden, data.n_classes)
    n_params = sum(x.numel() for x in T.leaves(init_mlp(sizes, torch.Generator())))
    summary = summarise(per_seed)
    f = findings(cfg, per_seed)
    result = {
        "config": asdict(cfg),
        "quick": quick,
        "seconds": seconds,
        "n_params": n_params,
        "n_train": data.n_train,
        "n_test": int(data.x_test.shape[0]),
        "per_seed": per_seed,
        "summary": summary,
        "findings": f,
    }
    (out_dir / "cold_posterior.json").write_text(json.dumps(result, indent=1))
    plot(summary, cfg, out_dir / "cold_posterior.png")
    (out_dir / "cold_posterior.md").write_text(report(cfg, summary, f, seconds, quick, n_params, data))
    return result


# ------------------------------------------------------------------------------- for `thermoai reproduce`

TITLE = "cold posteriors and tempered (unbiased) ensembles on digits"
PAPER = "posteriors"
RUN_TIME = {"quick": 40, "full": 850}  # seconds on 2 CPU cores (docs/results: 846 s)
# run() keywords of `thermoai reproduce --smoke`, the tiniest run, for the test of the whole report: it checks the
# plumbing, not the findings
REPRODUCE = {"smoke": {"quick": True, "config": Config(
    seeds=(0, 1), temperatures=(0.1, 1.0), hidden=(16,), map_epochs=3, map_lr=1e-2, sghmc_burnin_epochs=2,
    sghmc_sample_epochs=2, sghmc_thin_epochs=1, ensemble_members=2, ensemble_epochs=2, vi_epochs=2, vi_lr=1e-2,
    n_predictive_samples=4)}}


def headline(result: dict) -> dict:
    """The report's verdicts (``[{claim, verdict, reason}]``), headline table and seeds, computed from the
    numbers of ``cold_posterior.json`` alone (summary, findings, per-seed results)."""
    f, summary, per_seed = result["findings"], result["summary"], result["per_seed"]
    one = f["t_bayes"]
    diff = lambda r, key="nll_minus_map": f"{LABELS[r[0]]} {r[1][key]:+.3f} ± {r[1]['se']:.3f}"  # noqa: E731

    at_one = f["bayes_vs_map_at_t1"]
    wins = [m for m, r in at_one.items() if r["verdict"] == "lower"]
    v1 = "reproduced" if len(wins) == len(at_one) else ("partly" if wins else "not reproduced")
    r1 = (f"test NLL minus MAP's at T = {one}/N (negative: better than MAP): "
          + ", ".join(diff(item) for item in at_one.items()) + f"; {len(wins)} of {len(at_one)} lower by 2 s.e.")

    ens = f["unbiased_vs_deep_ensemble"]["nll"]
    v2 = {"lower": "reproduced", "higher": "not reproduced"}.get(ens["verdict"], "not reproduced")
    r2 = (f"NLL of the ensemble at T = {one}/N minus the deep ensemble's: {ens['unbiased_minus_deep']:+.4f} ± "
          f"{ens['se']:.4f} ({ens['verdict']})")

    colder = [t_key(t) for t in result["config"]["temperatures"] if t < float(one)]
    if not colder:
        v3, r3 = "not tested here", "the sweep has no temperature below 1/N"
    else:
        gains = {}
        for method in TEMPERED:
            best = min(colder, key=lambda k: np.mean([run[method][k]["nll"] for run in per_seed]))
            gains[method] = (best, *paired_difference(per_seed, (method, best), (method, one), "nll"))
        better = [m for m, (_, d, se) in gains.items() if d < -2 * se]
        v3 = "reproduced" if len(better) == len(gains) else ("partly" if better else "not reproduced")
        r3 = ("NLL at the best colder T minus NLL at T = 1/N: " + ", ".join(
            f"{LABELS[m]} (T = {b}/N) {d:+.3f} ± {se:.3f}" for m, (b, d, se) in gains.items())
            + f"; {len(better)} of {len(gains)} lower by 2 s.e.")
    verdicts = [
        {"claim": "Bayesian approximations beat MAP on test NLL at the Bayesian temperature", "verdict": v1,
         "reason": r1},
        {"claim": "the tempered (unbiased) ensemble at T = 1/N beats the deep ensemble (T = 0) on test NLL",
         "verdict": v2, "reason": r2},
        {"claim": "cold posterior effect: the tempered methods do better below T = 1/N", "verdict": v3,
         "reason": r3},
    ]
    rows = []
    for method in METHODS:
        for key, m in summary[method].items():
            if key in ("0", one) or (method in TEMPERED and colder and key == min(colder, key=float)):
                rows.append([LABELS[method], key, m["accuracy"], m["nll"], m["ece"]])
    table = {"columns": ["method", "T (× 1/N)", "test accuracy", "test NLL", "ECE"], "rows": rows,
             "caption": f"digits, MLP {result['n_params']} parameters; mean ± s.e. over "
                        f"{len(result['config']['seeds'])} seeds"}
    return {"verdicts": verdicts, "summary": table, "seeds": list(result["config"]["seeds"])}
