"""The logistic-regression posterior circuit (thermoai.thermo.circuits) against NUTS (numpyro 0.22) on
scikit-learn's breast-cancer data, in one run.

Data: 569 rows, 30 features standardised with the training rows' statistics, a random 400/169 train/test split
(seed 0); prior N(0, I); likelihood logistic. Samplers, all on this CPU with one thread:

* NUTS (numpyro, float64): 4 chains x (1000 warm-up + 2000 draws), the reference posterior;
* the circuit, simulated (Euler-Maruyama, float32): 128 chains started at prior draws, a burn-in of three
  prior time constants L tau, then 24 reads half a prior time constant apart, on (a) an ideal device (32-bit
  converters, no mismatch) and (b) the PCB prototype (`Device.pcb_prototype`: 8-bit DACs, 1 % mismatch,
  12-bit ADC, readout noise);
* MALA (`thermoai.thermo.circuits.mala`, Laplace preconditioner): 32 chains x (500 warm-up + 2000).

Reported per sampler: marginal errors against NUTS (largest |mean difference| and |sd difference| in units of
NUTS's posterior sd, and the rms z-score of the 30 mean differences with both samplers' Monte Carlo errors from
their chains' spread), test accuracy / NLL / ECE, wall time on this CPU, and for the circuit the simulated
device time and energy. The table's ratio column is thermoai / NUTS for CPU time.

Run (benchmark environment, which has numpyro and a CPU jax):

    .venv-bench/bin/python benchmarks/circuits_vs_nuts.py          # full, writes benchmarks/results/circuits_vs_nuts.md
    .venv-bench/bin/python benchmarks/circuits_vs_nuts.py --quick  # smaller, prints only
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

from thermoai.thermo.circuits import LogisticPosteriorCircuit  # noqa: E402
from thermoai.thermo.circuits.mala import laplace_preconditioner, logistic_log_prob, mala  # noqa: E402
from thermoai.thermo.circuits.metrics import binary_metrics, predictive  # noqa: E402
from thermoai.thermo.device import Device  # noqa: E402

torch.set_num_threads(1)
F64 = torch.float64
RESULT = Path(__file__).parent / "results" / "circuits_vs_nuts.md"


def data(n_train: int = 400, seed: int = 0):
    X, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    X, y = X[perm], y[perm].astype(float)
    mu, sd = X[:n_train].mean(0), X[:n_train].std(0, ddof=1)
    X = (X - mu) / sd
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def run_nuts(X, y, chains, warmup, draws, seed=0):
    def model(X, y):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(X.shape[1]), 1.0).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method="sequential",
                progress_bar=False)
    t0, c0 = time.perf_counter(), time.process_time()
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(X), jnp.asarray(y))
    w = np.asarray(mcmc.get_samples(group_by_chain=True)["w"])  # (chains, draws, d)
    w.sum()  # block until ready
    return torch.tensor(w, dtype=F64), time.perf_counter() - t0, time.process_time() - c0


def summary(s):
    """Means, sds and standard errors of the means (chains independent) of samples (chains, k, d)."""
    flat = s.reshape(-1, s.shape[-1])
    return flat.mean(0), flat.std(0), s.mean(1).std(0) / math.sqrt(s.shape[0])


def compare(s, ref):
    m, sd, se = summary(s)
    mr, sdr, ser = summary(ref)
    z = (m - mr) / torch.sqrt(se**2 + ser**2)
    return {"max_mean_err_sd": float(((m - mr).abs() / sdr).max()), "max_sd_err_sd": float(((sd - sdr).abs() / sdr).max()),
            "rms_z": float(z.pow(2).mean().sqrt())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer draws; print only")
    args = ap.parse_args(argv)
    q = args.quick
    Xtr, ytr, Xte, yte = data()
    Xt, yt = torch.tensor(Xtr, dtype=F64), torch.tensor(ytr, dtype=F64)
    Xs, ys = torch.tensor(Xte, dtype=F64), torch.tensor(yte, dtype=F64)
    rows = {}

    ref, t_nuts, cpu_nuts = run_nuts(Xtr, ytr, chains=2 if q else 4, warmup=300 if q else 1000,
                                     draws=500 if q else 2000)
    rows["NUTS (numpyro)"] = {"samples": ref, "wall_s": t_nuts, "cpu_s": cpu_nuts}

    chains, reads = (32, 8) if q else (128, 24)
    for label, dev in (("circuit, ideal device", Device(n_cells=30, dac_bits=32, adc_bits=32, readout_noise=0.0,
                                                        mismatch=0.0)),
                       ("circuit, PCB prototype", Device.pcb_prototype(n_cells=30))):
        c = LogisticPosteriorCircuit(Xt, yt, device=dev, step_fraction=1.0)
        L, tau = c.stiffness, c.time_constant
        t0, c0 = time.perf_counter(), time.process_time()
        x, cost = c.sample(chains * reads, torch.Generator().manual_seed(1), chains=chains, burn_in=3 * L * tau,
                           interval=0.5 * L * tau, dtype=torch.float32)
        rows[label] = {"samples": x.reshape(chains, reads, 30), "wall_s": time.perf_counter() - t0,
                       "cpu_s": time.process_time() - c0, "device_s": cost.time, "device_j": cost.energy}

    prec = torch.eye(30, dtype=F64)
    zero = torch.zeros(30, dtype=F64)
    t0, c0 = time.perf_counter(), time.process_time()
    th_map, Lc = laplace_preconditioner(Xt, yt, zero, prec)
    g = torch.Generator().manual_seed(2)
    x0 = th_map + torch.randn(32, 30, dtype=F64, generator=g) @ Lc.mT
    out = mala(logistic_log_prob(Xt, yt, zero, prec), x0, 500 if q else 2000, warmup=200 if q else 500,
               precond_chol=Lc, generator=g)
    rows["MALA (thermoai, digital)"] = {"samples": out["samples"], "wall_s": time.perf_counter() - t0,
                                        "cpu_s": time.process_time() - c0, "accept": out["accept"]}

    ref_metrics = binary_metrics(predictive(ref.reshape(-1, 30), Xs), ys)
    lines = [
        "# Logistic-regression posterior: circuit (simulated) against NUTS (numpyro)",
        "",
        "Command: `.venv-bench/bin/python benchmarks/circuits_vs_nuts.py` (benchmark environment: numpyro "
        f"{numpyro.__version__}, jax {jax.__version__}, torch {torch.__version__}; {platform.processor() or platform.machine()}, "
        "one thread). Breast cancer, 400 training / 169 test rows, 30 standardised features, prior N(0, I).",
        "",
        "Marginal errors are in units of NUTS's posterior sd; rms z is the root mean square over the 30 "
        "coordinates of (mean difference) / (combined Monte Carlo error), about 1 when the two agree.",
        "",
        "| sampler | draws | max mean error (sd) | max sd error (sd) | rms z | test accuracy | test NLL | test ECE | "
        "wall time (s) | CPU time (s) | CPU-time ratio thermoai / NUTS | device time (s) | device energy (J) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        s = r["samples"]
        met = binary_metrics(predictive(s.reshape(-1, 30), Xs), ys)
        is_ref = label == "NUTS (numpyro)"
        cmp_ = compare(s, ref) if not is_ref else None
        errs = ("reference", "-", "-") if is_ref else (f"{cmp_['max_mean_err_sd']:.3f}", f"{cmp_['max_sd_err_sd']:.3f}",
                                                       f"{cmp_['rms_z']:.2f}")
        ratio = r["cpu_s"] / cpu_nuts
        dev_s = f"{r['device_s']:.3g}" if "device_s" in r else "-"
        dev_j = f"{r['device_j']:.3g}" if "device_j" in r else "-"
        lines.append(f"| {label} | {s.shape[0]} x {s.shape[1]} | {errs[0]} | {errs[1]} | {errs[2]} | "
                     f"{met['accuracy']:.4f} | {met['nll']:.4f} | {met['ece']:.4f} | "
                     f"{r['wall_s']:.2f} | {r['cpu_s']:.2f} | {ratio:.2f} | {dev_s} | {dev_j} |")
    ideal = rows["circuit, ideal device"]
    lines += [
        "",
        f"NUTS reference: accuracy {ref_metrics['accuracy']:.4f}, NLL {ref_metrics['nll']:.4f}, ECE "
        f"{ref_metrics['ece']:.4f}. MALA acceptance {rows['MALA (thermoai, digital)']['accept']:.2f}.",
        "",
        "Reading the table:",
        "",
        "- Times on this CPU are wall-clock and process CPU time (one thread; the machine is shared with other jobs, so "
        "the CPU time is the steadier of the two and the ratio uses it).",
        f"- The circuit's time is the cost of *simulating* it on this CPU (float32 Euler-Maruyama at one time constant per "
        f"step; the curvature bound L makes that {int(3 * 1 + 0.5 * reads)} L steps per chain); the device itself would "
        f"take the simulated device time ({ideal['device_s']:.3g} s for {chains} chains run one after another, "
        "programming included).",
        "- The PCB prototype's 8-bit DACs and 1 % mismatch distort the crossbars (the two crossbars hold different "
        "errors, so the drift is no longer a gradient): its error against NUTS is the device model's, not the "
        "simulator's; the ideal device's error is Monte Carlo noise plus the integrator's stated bias.",
        "- NUTS's wall time includes jax's compilation on the first chain.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not q:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
