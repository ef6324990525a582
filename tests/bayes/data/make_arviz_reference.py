"""Write ``arviz_reference.json``: fixed MCMC-like draws and ArviZ's diagnostics of them.

ArviZ is a benchmark-environment peer, never a thermoai dependency, so its numbers are computed once here
and committed; ``tests/bayes/test_diagnostics_arviz.py`` holds thermoai's diagnostics to them (and, where
ArviZ happens to be importable, to ArviZ live). Run with the benchmark environment:

    .venv-bench/bin/python tests/bayes/data/make_arviz_reference.py

Each case is a ``(chains, draws, 2)`` array (numpy's PCG64 with a fixed seed, stored in the JSON so the
test does not depend on any generator): stationary AR(1) chains, chains stuck apart, a trend within chains,
heavy tails (Student t with 2 degrees of freedom), antithetic chains (negative lag-1 correlation) and an
odd number of draws.

The committed file was made with ArviZ 0.23.4 (the newest for the benchmark environment's Python 3.11;
the Makefile's pin, ArviZ 1.3.0, needs Python >= 3.12). ArviZ 1.3.0 (arviz-stats 1.3.3, run under Python
3.12 on the same draws) gives the same R-hat, bulk/tail/mean ESS and MCSE of mean and sd, to 3e-16.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)
import arviz as az  # noqa: E402


def ar1(rng: np.random.Generator, phi: float, chains: int, draws: int, noise=None) -> np.ndarray:
    e = rng.standard_normal((chains, draws, 2)) if noise is None else noise
    x = np.empty_like(e)
    x[:, 0] = e[:, 0]
    s = np.sqrt(1 - phi * phi)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + s * e[:, t]
    return x


def cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240614)
    out = {"ar1_0.6": ar1(rng, 0.6, 4, 120)}
    stuck = ar1(rng, 0.3, 4, 100)
    stuck[0] += 1.5
    out["stuck_chain"] = stuck
    trend = ar1(rng, 0.2, 3, 100) + np.linspace(0.0, 2.0, 100)[None, :, None]
    out["trend"] = trend
    out["heavy_tails"] = ar1(rng, 0.5, 4, 100, noise=rng.standard_t(2.0, (4, 100, 2)))
    out["antithetic"] = ar1(rng, -0.4, 2, 150)
    out["odd_draws"] = ar1(rng, 0.8, 3, 101)
    return out


def diagnostics(x: np.ndarray) -> dict[str, list[float]]:
    ds = az.convert_to_dataset(x)  # one variable "x" of shape (chain, draw, 2)
    value = lambda d: [float(v) for v in np.asarray(d["x"]).ravel()]  # noqa: E731
    return {
        "rhat": value(az.rhat(ds, method="rank")),
        "ess_bulk": value(az.ess(ds, method="bulk")),
        "ess_tail": value(az.ess(ds, method="tail")),
        "ess_mean": value(az.ess(ds, method="mean")),
        "ess_quantile_0.3": value(az.ess(ds, method="quantile", prob=0.3)),
        "mcse_mean": value(az.mcse(ds, method="mean")),
        "mcse_sd": value(az.mcse(ds, method="sd")),
        "mcse_quantile_0.3": value(az.mcse(ds, method="quantile", prob=0.3)),
    }


def main() -> None:
    result = {"arviz_version": az.__version__, "cases": {}}
    for name, x in cases().items():
        result["cases"][name] = {"draws": x.tolist(), "arviz": diagnostics(x)}
    path = Path(__file__).with_name("arviz_reference.json")
    path.write_text(json.dumps(result))
    print(f"wrote {path} (ArviZ {az.__version__}, {len(result['cases'])} cases)")


if __name__ == "__main__":
    main()
