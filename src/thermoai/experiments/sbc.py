"""Simulation-based calibration of every thermoai.bayes method on two small models (Talts et al. 2018).

For each model, ``n_replications`` parameter vectors are drawn from the prior and a data set is simulated
from each; every method then computes its posterior for every data set (all replications at once, vmapped)
and the rank of the true parameters among ``n_draws`` of its draws is recorded. A calibrated method gives
uniform ranks; :mod:`thermoai.bayes.sbc` tests that with a chi-square over bins of rank values, per
parameter, and the method is called calibrated when the smallest p-value times the number of parameters
(Bonferroni) is at least 0.01.

Models (both with 2 parameters, small enough for the CPU):

- **linear**: conjugate Gaussian linear regression, ``y = X w + N(0, s^2)`` with ``n`` points whose two
  features have correlation ``rho`` (so the posterior is correlated), prior ``w ~ N(0, tau^2 I)``. The
  exact posterior is Gaussian.
- **logistic**: Bayesian logistic regression (intercept and slope), ``n`` points, ``x ~ N(0, 1)``, prior
  ``N(0, tau^2 I)``. With few points the posterior is skewed, not Gaussian.

Methods: SGLD, SGHMC, SGNHT, BAOA, pSGLD (full-batch gradients, thinned chains from a prior draw), VI diag
and dense (Adam on the NELBO, STL), Laplace diag and dense (GGN at the MAP), the EKFs with GGN and with
empirical-Fisher curvature (diag and dense, one pass in batches), and the unbiased ensemble (SGHMC chains
from independent prior draws; the final states are the draws). What each should do by construction is in
:data:`EXPECTED`; the report says whether SBC agrees, and why.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from thermoai.bayes import ekf, laplace, sbc, vi
from thermoai.bayes.adam import adam
from thermoai.bayes.sgmcmc import baoa, psgld, sghmc, sgld, sgnht

F64 = torch.float64

# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Config:
    """Sizes of the experiment (defaults: the full run, about 9 minutes on 2 busy cores)."""

    n_replications: int = 200
    n_draws: int = 19  # ranks 0..19: 20 values, 2 per bin
    n_bins: int = 10
    seed: int = 0
    # linear model
    n_linear: int = 20
    rho: float = 0.8
    noise_sd: float = 1.0
    tau_linear: float = 1.0
    # logistic model
    n_logistic: int = 5
    tau_logistic: float = 3.0
    # chains: burn-in and thinning are multiplied by this (1: the settings in SAMPLERS)
    chain_scale: float = 1.0
    vi_steps: int = 1500
    vi_samples: int = 4
    ensemble_steps: int = 1000
    newton_steps: int = 25
    # Laplace and the EKFs cost a second: they get more replications, for more power
    n_replications_cheap: int = 1000
    methods: tuple[str, ...] = ()  # empty: all of METHODS


QUICK = Config(n_replications=50, n_draws=9, n_bins=5, chain_scale=0.15, vi_steps=400, ensemble_steps=300,
               n_replications_cheap=200)
CHEAP = ("laplace_diag", "laplace_dense", "ekf_diag_ggn", "ekf_dense_ggn", "ekf_diag_fisher", "ekf_dense_fisher")

METHODS = (
    "sgld", "sghmc", "sgnht", "baoa", "psgld", "vi_diag", "vi_dense", "laplace_diag", "laplace_dense",
    "ekf_diag_ggn", "ekf_dense_ggn", "ekf_diag_fisher", "ekf_dense_fisher", "unbiased_ensemble",
)
LABELS = {
    "sgld": "SGLD", "sghmc": "SGHMC", "sgnht": "SGNHT", "baoa": "BAOA", "psgld": "pSGLD (frozen after burn-in)",
    "vi_diag": "VI diag", "vi_dense": "VI dense", "laplace_diag": "Laplace diag (GGN)",
    "laplace_dense": "Laplace dense (GGN)", "ekf_diag_ggn": "EKF diag (GGN)", "ekf_dense_ggn": "EKF dense (GGN)",
    "ekf_diag_fisher": "EKF diag (emp. Fisher)", "ekf_dense_fisher": "EKF dense (emp. Fisher)",
    "unbiased_ensemble": "unbiased ensemble (SGHMC)",
}
MODELS = ("linear", "logistic")
MODEL_LABELS = {"linear": "(a) conjugate Gaussian linear regression", "logistic": "(b) Bayesian logistic regression"}

# Step sizes from the curvature of the log posterior (linear: eigenvalues of I/tau^2 + X^T X / s^2 from ~5
# to ~40 for n = 20, rho = 0.8; logistic: from the prior's 1/tau^2 ~ 0.1 to ~ n / 4 * E[1 + x^2] ~ 2.5):
# SGLD's variance bias is ~ lr * lambda / 2 (a few %), its autocorrelation time ~ 2 / (lr * lambda_min)
# steps; SGHMC-family chains (mass 1) use friction ~ 2 sqrt(lambda_min) and lr * sqrt(lambda_max) <~ 0.15.
# The EKFs see the data in batches of ekf_batch (logistic: one point at a time, else a single step at the
# prior mean, where the empirical Fisher and the GGN of a Bernoulli likelihood coincide).
SAMPLERS = {
    "linear": {"sgld_lr": 1e-3, "sgld_thin": 300, "hmc_lr": 0.02, "alpha": 4.0, "hmc_thin": 60,
               "psgld_lr": 5e-3, "psgld_thin": 300, "burn_in": 1500, "ekf_batch": 5},
    "logistic": {"sgld_lr": 2e-2, "sgld_thin": 500, "hmc_lr": 0.1, "alpha": 0.7, "hmc_thin": 60,
                 "psgld_lr": 2e-2, "psgld_thin": 250, "burn_in": 1000, "ekf_batch": 1},
}

# What each method does by construction: (expected calibrated?, why)
EXPECTED: dict[tuple[str, str], tuple[bool, str]] = {}
for _m in ("sgld", "sghmc", "sgnht", "baoa", "psgld"):
    for _model in MODELS:
        EXPECTED[(_m, _model)] = (True, "an MCMC chain whose stationary law is the posterior up to a discretisation "
                                         "bias of a few % at this step size; draws thinned to near-independence")
for _model in MODELS:
    EXPECTED[("unbiased_ensemble", _model)] = (
        True, "independent SGHMC chains from prior draws, run long enough to forget their start: final states are "
              "posterior draws")
EXPECTED.update({
    ("vi_diag", "linear"): (False, "a mean-field Gaussian fitted by KL(q||p) has the marginal variances 1/P_jj of the "
                                   "precision's diagonal, below the true ones when the posterior is correlated: too narrow"),
    ("vi_diag", "logistic"): (False, "mean-field and Gaussian: too narrow where the posterior is correlated, and the "
                                     "skew of the logistic posterior is lost"),
    ("vi_dense", "linear"): (True, "the Gaussian family contains the exact posterior, and STL gradients vanish there, "
                                   "so Adam converges to it"),
    ("vi_dense", "logistic"): (False, "the best Gaussian under KL(q||p) is not the skewed logistic posterior"),
    ("laplace_diag", "linear"): (False, "the diagonal of the precision gives variances 1/P_jj: too narrow for a "
                                        "correlated posterior"),
    ("laplace_diag", "logistic"): (False, "diagonal and Gaussian at the mode: too narrow and without the skew"),
    ("laplace_dense", "linear"): (True, "the GGN is the exact Hessian and the posterior is Gaussian: exact"),
    ("laplace_dense", "logistic"): (False, "a Gaussian at the mode, with the curvature at the mode: the skewed "
                                           "posterior's mean and tails are off"),
    ("ekf_diag_ggn", "linear"): (False, "the off-diagonal information is dropped after every batch: the marginals are "
                                        "too narrow and the mean lags"),
    ("ekf_diag_ggn", "logistic"): (False, "diagonal, and linearised at the running mean"),
    ("ekf_dense_ggn", "linear"): (True, "the Kalman filter: exact for a linear-Gaussian model"),
    ("ekf_dense_ggn", "logistic"): (False, "an extended Kalman filter linearises the likelihood at the running mean, "
                                           "one pass: an approximation"),
    ("ekf_diag_fisher", "linear"): (False, "the empirical Fisher x x^T r^2 / s^4 at the running mean replaces the "
                                           "information x x^T / s^2: wrong whenever the residuals are not ~ s"),
    ("ekf_diag_fisher", "logistic"): (False, "empirical Fisher at the running mean, diagonal: an approximation"),
    ("ekf_dense_fisher", "linear"): (False, "the empirical Fisher x x^T r^2 / s^4 at the running mean replaces the "
                                            "information x x^T / s^2: wrong whenever the residuals are not ~ s"),
    ("ekf_dense_fisher", "logistic"): (False, "empirical Fisher at the running mean: an approximation"),
})

# ---------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Spec:
    """One model: the SBC model, the GGN split (``forward``, ``outer``), the prior sd and the name."""

    name: str
    model: sbc.Model
    forward: Callable[[Any, Any], tuple[Tensor, Tensor]]
    outer: Callable[[Tensor, Any], Tensor]
    tau: float


def forward(params: dict[str, Tensor], batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Outputs ``(B, 1)``: ``X w``."""
    return (batch[0] @ params["w"])[:, None], torch.tensor([])


def linear_spec(cfg: Config) -> Spec:
    n, rho, s, tau = cfg.n_linear, cfg.rho, cfg.noise_sd, cfg.tau_linear

    def prior_sample(k: int, g: torch.Generator) -> dict[str, Tensor]:
        return {"w": tau * torch.randn(k, 2, generator=g, dtype=F64)}

    def log_prior(theta: dict[str, Tensor]) -> Tensor:
        return -0.5 * (theta["w"] ** 2).sum() / tau**2

    def simulate(theta: dict[str, Tensor], g: torch.Generator) -> tuple[Tensor, Tensor]:
        z = torch.randn(n, 2, generator=g, dtype=F64)
        x = torch.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]], dim=1)
        return x, x @ theta["w"] + s * torch.randn(n, generator=g, dtype=F64)

    def outer(z: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        return -0.5 * ((batch[1] - z[:, 0]) ** 2).sum() / s**2

    def log_likelihood(theta: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        return outer(forward(theta, data)[0], data)

    model = sbc.Model(prior_sample, log_prior, simulate, log_likelihood, params_like={"w": torch.zeros(2, dtype=F64)})
    return Spec("linear", model, forward, outer, tau)


def logistic_spec(cfg: Config) -> Spec:
    n, tau = cfg.n_logistic, cfg.tau_logistic

    def prior_sample(k: int, g: torch.Generator) -> dict[str, Tensor]:
        return {"w": tau * torch.randn(k, 2, generator=g, dtype=F64)}

    def log_prior(theta: dict[str, Tensor]) -> Tensor:
        return -0.5 * (theta["w"] ** 2).sum() / tau**2

    def simulate(theta: dict[str, Tensor], g: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.stack([torch.ones(n, dtype=F64), torch.randn(n, generator=g, dtype=F64)], dim=1)  # intercept, slope
        p = torch.sigmoid(x @ theta["w"])
        return x, (torch.rand(n, generator=g, dtype=F64) < p).to(F64)

    def outer(z: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
        return -F.binary_cross_entropy_with_logits(z[:, 0], batch[1], reduction="sum")

    def log_likelihood(theta: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        return outer(forward(theta, data)[0], data)

    model = sbc.Model(prior_sample, log_prior, simulate, log_likelihood, params_like={"w": torch.zeros(2, dtype=F64)})
    return Spec("logistic", model, forward, outer, tau)


# ---------------------------------------------------------------------------------------------- methods


def newton_map(spec: Spec, data: Any, steps: int) -> dict[str, Tensor]:
    """The posterior mode of every replication by Newton's method (vmapped; the log posteriors are strictly
    concave), started at the prior mean."""

    def neg(w: Tensor, d: Any) -> Tensor:
        return -spec.model.log_posterior({"w": w}, d)[0]

    grad = torch.func.grad(neg)
    hess = torch.func.hessian(neg)

    def step(w: Tensor, d: Any) -> Tensor:
        return w - torch.linalg.solve(hess(w, d), grad(w, d))

    R = data[0].shape[0]
    w = torch.zeros(R, 2, dtype=F64)
    for _ in range(steps):
        w = torch.func.vmap(step)(w, data)
    return {"w": w}


def make_method(name: str, spec: Spec, cfg: Config) -> sbc.Method:
    """The SBC method ``name`` for ``spec`` at the settings of ``cfg``."""
    s = SAMPLERS[spec.name]
    burn = max(1, int(s["burn_in"] * cfg.chain_scale))
    L = cfg.n_draws

    def chains(build: Callable[[Any], Any], thin: int) -> sbc.Method:
        return sbc.chain_method(build, spec.model, burn_in=burn, thin=max(1, int(thin * cfg.chain_scale)), n_draws=L)

    if name == "sgld":
        return chains(lambda lp: sgld.build(lp, lr=s["sgld_lr"]), s["sgld_thin"])
    if name == "sghmc":
        return chains(lambda lp: sghmc.build(lp, lr=s["hmc_lr"], alpha=s["alpha"]), s["hmc_thin"])
    if name == "sgnht":
        return chains(lambda lp: sgnht.build(lp, lr=s["hmc_lr"], alpha=s["alpha"]), s["hmc_thin"])
    if name == "baoa":
        return chains(lambda lp: baoa.build(lp, lr=s["hmc_lr"], alpha=s["alpha"]), s["hmc_thin"])
    if name == "psgld":
        return chains(lambda lp: psgld.build(lp, lr=s["psgld_lr"], freeze_after=burn), s["psgld_thin"])
    if name == "unbiased_ensemble":
        steps = max(burn, int(cfg.ensemble_steps * max(cfg.chain_scale, 0.25)))
        return sbc.ensemble_method(lambda lp: sghmc.build(lp, lr=s["hmc_lr"], alpha=s["alpha"]), spec.model, L, steps)

    R_zeros = lambda data, g: {"w": torch.zeros(data[0].shape[0], 2, dtype=F64)}  # noqa: E731 - the prior mean
    full = lambda data: [data]  # noqa: E731

    if name in ("vi_diag", "vi_dense"):
        module = vi.diag if name == "vi_diag" else vi.dense
        n = cfg.vi_steps
        # Adam's steps are ~lr whatever the gradient: decay lr 100-fold so the final iterate sits still
        lr = lambda t: 0.05 * 0.01 ** (torch.clamp(t.to(F64), max=n) / n)  # noqa: E731 - a tensor: vmap-safe
        transform = module.build(spec.model.log_posterior, optimizer=adam(lr=lr), n_samples=cfg.vi_samples)
        return sbc.approximation_method(transform, module.sample, L, R_zeros, lambda data: [data] * n)
    if name in ("laplace_diag", "laplace_dense"):
        module = laplace.diag_ggn if name == "laplace_diag" else laplace.dense_ggn
        transform = module.build(spec.forward, spec.outer, prior_precision=1.0 / spec.tau**2)
        return sbc.approximation_method(transform, module.sample, L, lambda d, g: newton_map(spec, d, cfg.newton_steps), full)

    b = s["ekf_batch"]
    n_points = cfg.n_linear if spec.name == "linear" else cfg.n_logistic

    def batches(data: Any) -> list[Any]:
        return [tuple(x[:, i : i + b] for x in data) for i in range(0, n_points, b)]

    if name in ("ekf_diag_ggn", "ekf_dense_ggn"):
        if name == "ekf_diag_ggn":
            transform, sample = ekf.diag_ggn.build(spec.forward, spec.outer, init_sds=spec.tau), ekf.diag_ggn.sample
        else:
            transform, sample = ekf.dense_ggn.build(spec.forward, spec.outer, init_cov=spec.tau**2), ekf.dense_ggn.sample
        return sbc.approximation_method(transform, sample, L, R_zeros, batches)
    if name in ("ekf_diag_fisher", "ekf_dense_fisher"):
        def log_lik(params: Any, batch: Any) -> tuple[Tensor, Tensor]:
            return spec.model.log_likelihood(params, batch), torch.tensor([])

        # batch-mean information times lr = batch size: each batch adds its summed empirical Fisher
        if name == "ekf_diag_fisher":
            transform = ekf.diag_fisher.build(log_lik, lr=float(b), init_sds=spec.tau)
            sample = ekf.diag_fisher.sample
        else:
            transform = ekf.dense_fisher.build(log_lik, lr=float(b), init_cov=spec.tau**2)
            sample = ekf.dense_fisher.sample
        return sbc.approximation_method(transform, sample, L, R_zeros, batches)
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")


# ---------------------------------------------------------------------------------------------- analysis


def shape_of(result: sbc.SBCResult) -> str:
    """What the worst parameter's rank histogram says: too narrow (U), too wide (hump), biased, or none."""
    j = int(result.p_values.argmin())
    counts = result.counts[j].to(F64)
    expected = result.expected
    R = result.n_replications
    ends, exp_ends = float(counts[0] + counts[-1]), float(expected[0] + expected[-1])
    half = counts.shape[0] // 2
    low, exp_low = float(counts[:half].sum()), float(expected[:half].sum())
    sd_low = math.sqrt(exp_low * (1 - exp_low / R))
    name = result.names[j]
    if ends > 1.5 * exp_ends:
        return f"{name}: too narrow (U-shaped ranks: {ends:.0f} in the end bins against {exp_ends:.0f} expected)"
    if ends < 0.5 * exp_ends:
        return f"{name}: too wide (hump: {ends:.0f} in the end bins against {exp_ends:.0f} expected)"
    if abs(low - exp_low) > 3 * sd_low:
        side = "high (the truth mostly below the draws)" if low > exp_low else "low (the truth mostly above the draws)"
        return f"{name}: biased {side}: {low:.0f} ranks in the lower half against {exp_low:.0f} expected"
    return f"{name}: no clear shape"


def verdict(method: str, model: str, res: dict[str, Any]) -> dict[str, str]:
    """A claim (what the method should do by construction), whether SBC shows it, and why."""
    expected, why = EXPECTED[(method, model)]
    p = res["p_min_bonferroni"]
    observed = p >= 0.01
    claim = f"{LABELS[method]} is {'calibrated' if expected else 'not calibrated'} on {MODEL_LABELS[model]}"
    ess = f", ESS of the {res['n_draws']} kept draws {res['info']['ess']:.1f}" if "ess" in res.get("info", {}) else ""
    stat = f"Bonferroni p = {p:.2g} over {len(res['names'])} parameters{ess}"
    if observed == expected:
        v = "reproduced"
        reason = f"{stat}; {why}" + ("" if expected else f"; {res['shape']}")
    elif expected:
        v = "not reproduced"
        reason = f"{stat}; {res['shape']}: expected calibrated ({why}), so the step size, the burn-in or the " \
                 "optimisation is not enough here"
    else:
        v = "not reproduced"
        reason = f"{stat}: the approximation error is too small for {res['n_replications']} replications to " \
                 f"resolve ({why})"
    return {"claim": claim, "verdict": v, "reason": reason}


# ---------------------------------------------------------------------------------------------- run


def run(out_dir: Path, quick: bool = False, config: Config | None = None, seed: int | None = None,
        progress: bool = True) -> dict:
    """Run SBC for every method on both models; write ``sbc.md``, ``sbc.json`` and ``sbc.png`` into
    ``out_dir`` and return the numbers (config, per model and method: ranks histogram, p-values, seconds,
    shape; the verdicts)."""
    from tqdm.auto import tqdm

    cfg = config if config is not None else (QUICK if quick else Config())
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    methods = cfg.methods or METHODS
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r} in config.methods; known: {', '.join(METHODS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread avoids the thread-pool overhead
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {model: {} for model in MODELS}
    figures: dict[tuple[str, str], sbc.SBCResult] = {}
    try:
        with tqdm(total=len(MODELS) * len(methods), desc="sbc", unit="method", disable=not progress) as bar:
            for model in MODELS:
                spec = linear_spec(cfg) if model == "linear" else logistic_spec(cfg)
                for m in methods:
                    t0 = time.perf_counter()
                    # the same seed for every method: the same prior draws and data sets (paired comparison)
                    R = cfg.n_replications_cheap if m in CHEAP else cfg.n_replications
                    result = sbc.run(spec.model, make_method(m, spec, cfg), R, cfg.n_draws,
                                     seed=cfg.seed + (0 if model == "linear" else 1), n_bins=cfg.n_bins)
                    entry = result.to_dict()
                    entry["seconds"] = time.perf_counter() - t0
                    entry["shape"] = shape_of(result)
                    results[model][m] = entry
                    figures[(model, m)] = result
                    bar.update(1)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    verdicts = [verdict(m, model, results[model][m]) for model in MODELS for m in methods]
    out = {"config": asdict(cfg), "quick": quick, "seconds": seconds, "results": results, "verdicts": verdicts}
    (out_dir / "sbc.json").write_text(json.dumps(out, indent=1))
    plot(figures, methods, out_dir / "sbc.png")
    (out_dir / "sbc.md").write_text(report(out))
    out.update(headline(out))
    return out


def plot(figures: dict[tuple[str, str], sbc.SBCResult], methods: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(methods), 4, figsize=(10, 1.35 * len(methods) + 0.6), squeeze=False)
    for i, m in enumerate(methods):
        for k, model in enumerate(MODELS):
            res = figures[(model, m)]
            sbc.plot(res, axes=list(axes[i, 2 * k : 2 * k + 2]))
            axes[i, 2 * k].set_title(f"{model} {res.names[0]} p={float(res.p_values[0]):.2g}", fontsize=6)
            axes[i, 2 * k + 1].set_title(f"{model} {res.names[1]} p={float(res.p_values[1]):.2g}", fontsize=6)
        axes[i, 0].set_ylabel(LABELS[m], fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle("SBC rank histograms (grey: 99 % band of a uniform histogram)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _row(model: str, m: str, r: dict[str, Any]) -> str:
    p = " / ".join(f"{v:.2g}" for v in r["p_values"])
    ess = f"{r['info']['ess']:.1f}" if "ess" in r.get("info", {}) else "–"
    expected = "yes" if EXPECTED[(m, model)][0] else "no"
    observed = "yes" if r["p_min_bonferroni"] >= 0.01 else "**no**"
    return f"| {LABELS[m]} | {expected} | {r['n_replications']} | {p} | {r['p_min_bonferroni']:.2g} | {observed} | {ess} | {r['shape']} | {r['seconds']:.0f} |"


def report(out: dict[str, Any]) -> str:
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in out["config"].items()})
    command = "thermoai reproduce sbc" + (" --quick" if out["quick"] else " --full")
    lines = [
        "# Simulation-based calibration of thermoai.bayes",
        "",
        f"Produced by `{command}` in {out['seconds']:.0f} s ({'quick settings: a smoke test, not a result' if out['quick'] else 'default settings'}).",
        "",
        f"SBC (Talts et al. 2018): {cfg.n_replications} replications per model, each a parameter vector drawn from "
        f"the prior and a data set simulated from it; every method's {cfg.n_draws} posterior draws give the rank of "
        f"the true value (0 to {cfg.n_draws}); a chi-square test over {cfg.n_bins} bins of ranks per parameter "
        "(`thermoai.bayes.sbc`). A method counts as calibrated when the smallest p-value times the number of "
        "parameters is at least 0.01 (Bonferroni). Every method sees the same prior draws and data sets.",
        "",
        f"- {MODEL_LABELS['linear']}: n = {cfg.n_linear}, two features with correlation {cfg.rho}, noise sd "
        f"{cfg.noise_sd}, prior N(0, {cfg.tau_linear:g}² I); the exact posterior is Gaussian and correlated.",
        f"- {MODEL_LABELS['logistic']}: intercept and slope, n = {cfg.n_logistic}, x ~ N(0, 1), prior "
        f"N(0, {cfg.tau_logistic:g}² I); the posterior is skewed.",
        "",
        "SGMCMC chains: full-batch gradients, one chain per data set from a prior draw, burn-in then thinning "
        "(settings per model in `SAMPLERS` of `thermoai/experiments/sbc.py`, burn-in and thinning × "
        f"{cfg.chain_scale:g}); 'ESS' is the bulk ESS of a replication's kept draws, averaged (near "
        f"{cfg.n_draws} for near-independent draws). VI: Adam on the NELBO with {cfg.vi_samples} draws per step, "
        f"{cfg.vi_steps} steps, lr 0.05 decayed 100-fold. Laplace: GGN at the Newton MAP plus the prior precision. "
        f"EKFs: one pass from the prior in batches of {SAMPLERS['linear']['ekf_batch']} (linear) and "
        f"{SAMPLERS['logistic']['ekf_batch']} (logistic). Laplace and the EKFs, which cost about a second, are run on "
        f"{cfg.n_replications_cheap} replications for more power. Unbiased ensemble: {cfg.n_draws} SGHMC "
        "chains per data set from independent prior draws, final states.",
        "",
    ]
    for model in MODELS:
        lines += [f"## {MODEL_LABELS[model]}", "",
                  "| method | calibrated by construction | replications | p per parameter | Bonferroni p | calibrated by SBC | ESS | worst parameter's histogram | s |",
                  "|---|---|---:|---|---:|---|---:|---|---:|"]
        lines += [_row(model, m, r) for m, r in out["results"][model].items()]
        lines.append("")
    lines += ["![rank histograms](sbc.png)", "", "## Which methods are calibrated, and why", ""]
    for v in out["verdicts"]:
        lines.append(f"- {v['claim']}: **{v['verdict']}**. {v['reason']}.")
    agree = sum(v["verdict"] == "reproduced" for v in out["verdicts"])
    lines += ["", f"SBC agrees with what the construction predicts in {agree} of {len(out['verdicts'])} cases.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- for `thermoai reproduce`

TITLE = "simulation-based calibration of every thermoai.bayes method (linear and logistic regression)"
PAPER = "posteriors"
RUN_TIME = {"quick": 50, "full": 270}  # seconds on 2 busy CPU cores (load 6: quick 50 s in make run, full 265 s for docs/results)
REPRODUCE = {"smoke": {"quick": True, "config": replace(
    QUICK, n_replications=20, n_draws=3, n_bins=2, chain_scale=0.05, vi_steps=50, ensemble_steps=50, newton_steps=5,
    n_replications_cheap=20)}}


def headline(result: dict) -> dict:
    """Verdicts and a headline table (methods × models: Bonferroni p) from ``sbc.json`` alone."""
    methods = list(result["results"]["linear"])
    rows = [[LABELS[m]] + [result["results"][model][m]["p_min_bonferroni"] for model in MODELS] for m in methods]
    table = {"columns": ["method", "p (linear)", "p (logistic)"], "rows": rows,
             "caption": f"SBC, {result['config']['n_replications']} replications, Bonferroni p over 2 parameters; "
                        "calibrated when p >= 0.01"}
    return {"verdicts": result["verdicts"], "summary": table, "seeds": [result["config"]["seed"]]}
