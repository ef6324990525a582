"""Laplace dense samples drawn digitally against drawn through a simulated circuit (thermoai only), in one run.

Models, both on scikit-learn's breast-cancer data (400 training rows, 30 features standardised with the
training rows' statistics, seed-0 split), prior N(0, I), found at the MAP by full-batch L-BFGS (float64):

* logistic regression with an intercept, d = 31;
* an MLP 30-8-1 (tanh), d = 257.

The Laplace approximation is `thermoai.bayes.laplace.dense_ggn` (prior precision 1), the target
``N(theta*, prec^-1)``. Samplers of it, ``n`` draws each:

* digital: `dense_ggn.sample` (one Cholesky factorisation, a triangular solve), wall time on this CPU
  (one thread, median of 5 runs);
* through `sample(..., sampler=circuit_sampler(design, device, interval=3 t_slow))`: design "rc" (every mode
  relaxes at 1/tau; the precision is not an M-matrix, so some elements are active) on three devices: an ideal
  one (30-bit converters, no mismatch, no readout noise), the PCB prototype (`Device.pcb_prototype`: 8-bit DACs
  written serially, 1 % mismatch on every array, 12-bit ADC) and the projected chip (`Device.projected_chip`:
  one DAC per cell, no mismatch); design "active" on the ideal device. Reads are three slowest relaxation
  times apart (autocorrelation e^-3 = 0.05).

Reported: moment errors against the Laplace law (largest |mean error| and |sd error| over the coordinates, in
units of the Laplace sd; the rms z-score of the mean errors, about 1 for a correct sampler of independent
draws; KL of the fitted Gaussian, whose value for exact draws is about (d + d(d+1)/2) / (2 n)), the chip's own
predicted error (KL of its exact stationary law to the Laplace law: the device-model floor, free of sampling
noise), the device time and energy (programming apart) and the ratio device time / digital wall time.

Run:

    .venv/bin/python benchmarks/laplace_on_circuit.py          # writes benchmarks/results/laplace_on_circuit.md
    .venv/bin/python benchmarks/laplace_on_circuit.py --quick  # fewer draws; prints only
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer

from thermoai import tree as T
from thermoai.bayes._common import flat_rows
from thermoai.bayes.laplace import dense_ggn
from thermoai.thermo.circuits import circuit_sampler
from thermoai.thermo.circuits._common import gaussian_kl
from thermoai.thermo.device import Device

torch.set_num_threads(1)
F64 = torch.float64
RESULT = Path(__file__).parent / "results" / "laplace_on_circuit.md"


def data(n_train: int = 400, seed: int = 0):
    X, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(X.shape[0])
    X, y = X[perm], y[perm].astype(float)
    mu, sd = X[:n_train].mean(0), X[:n_train].std(0, ddof=1)
    X = (X - mu) / sd
    return torch.tensor(X[:n_train], dtype=F64), torch.tensor(y[:n_train], dtype=F64)


def logreg_forward(p, batch):
    return (batch[0] @ p["w"] + p["b"])[:, None], torch.tensor([])


def mlp_forward(p, batch):
    h = torch.tanh(batch[0] @ p["w1"].T + p["b1"])
    return h @ p["w2"].T + p["b2"], torch.tensor([])


def outer(z, batch):
    return -torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], batch[1], reduction="sum")


def fit_map(forward, params, batch):
    """Full-batch L-BFGS on the negative log posterior (prior N(0, I))."""
    flat, unravel = T.ravel(params)
    x = flat.clone().requires_grad_()
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -outer(forward(unravel(x), batch)[0], batch) + 0.5 * (x * x).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return unravel(x.detach())


def errors(flat, mean, cov, n_eff):
    sd = cov.diagonal().sqrt()
    m_hat, S_hat = flat.mean(0), torch.cov(flat.T)
    z = (m_hat - mean) / (sd / math.sqrt(n_eff))
    prec = torch.linalg.inv(cov)
    return {"mean_err_sd": float(((m_hat - mean).abs() / sd).max()),
            "sd_err_rel": float((S_hat.diagonal().sqrt() / sd - 1).abs().max()),
            "rms_z": float(z.pow(2).mean().sqrt()),
            "kl_fit": gaussian_kl(m_hat, S_hat, mean, 0.5 * (prec + prec.mT))}


def run_model(label, forward, params, batch, n, lines, rows_out):
    t0 = time.perf_counter()
    params = fit_map(forward, params, batch)
    fit_s = time.perf_counter() - t0
    tr = dense_ggn.build(forward, outer, prior_precision=1.0)
    state, _ = tr.update(tr.init(params), batch)
    mean = T.tree_ravel(state.params)
    d = mean.numel()
    prec = 0.5 * (state.prec + state.prec.mT)
    cov = torch.linalg.inv(prec)
    k = d + d * (d + 1) / 2

    walls = []
    for rep in range(5):
        t0 = time.perf_counter()
        draws = dense_ggn.sample(state, (n,), generator=torch.Generator().manual_seed(rep))
        walls.append(time.perf_counter() - t0)
    digital_s = statistics.median(walls)
    e = errors(flat_rows(draws, n), mean, cov, n)
    rows = [(f"digital (Cholesky), this CPU", e, None, None, None, digital_s)]

    ideal = Device(n_cells=d, dac_bits=30, adc_bits=24, readout_noise=0.0, mismatch=0.0)
    devices = [("rc", "ideal device", ideal), ("rc", "PCB prototype", Device.pcb_prototype(n_cells=d)),
               ("rc", "projected chip", Device.projected_chip(n_cells=d)), ("active", "ideal device", ideal)]
    for design, dev_label, dev in devices:
        probe = circuit_sampler(design, dev).circuit(mean, prec)
        interval = 3 * probe.slowest_relaxation_time
        sampler = circuit_sampler(design, dev, interval=interval)
        t0 = time.perf_counter()
        tree, cost = dense_ggn.sample(state, (n,), generator=torch.Generator().manual_seed(7), sampler=sampler)
        sim_s = time.perf_counter() - t0
        rho = math.exp(-3.0)
        e = errors(flat_rows(tree, n), mean, cov, n * (1 - rho) / (1 + rho))
        m_st, S_st = probe.stationary_law(programmed=True, readout=True)
        floor = gaussian_kl(m_st, S_st, mean, prec)
        prog = probe.programming_cost
        rows.append((f"circuit {design}, {dev_label}", e, floor, cost, prog, sim_s))

    lines += [f"## {label} (d = {d})", "",
              f"MAP by L-BFGS in {fit_s:.2f} s; Laplace GGN precision: condition number "
              f"{float(torch.linalg.cond(prec)):.3g}, passive RC realisation: "
              f"{probe.realisation['passive']} ({probe.realisation['active_elements']} active elements). "
              f"KL of the fitted Gaussian for exact independent draws: about k / (2 n) = {k / (2 * n):.3g} "
              f"(k = {int(k)}).", "",
              "| sampler | max mean error (sd) | max sd error (rel) | rms z | KL fitted | KL chip law (predicted) | "
              "device time (s) | of which programming (s) | device energy (J) | of which programming (J) | "
              "device time / digital wall time | wall time of this run on this CPU (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e, floor, cost, prog, wall in rows:
        if cost is None:
            dev_cols = "- | - | - | - | 1 (reference: " + f"{wall * 1e3:.3g} ms)"
        else:
            dev_cols = (f"{cost.time:.3g} | {prog.time:.3g} | {cost.energy:.3g} | {prog.energy:.3g} | "
                        f"{cost.time / digital_s:.3g}")
        lines.append(f"| {name} | {e['mean_err_sd']:.3f} | {e['sd_err_rel']:.3f} | {e['rms_z']:.2f} | "
                     f"{e['kl_fit']:.3g} | {'-' if floor is None else f'{floor:.3g}'} | {dev_cols} | {wall:.3g} |")
    lines.append("")
    rows_out[label] = rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer draws; print only")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else 20000
    X, y = data()
    batch = (X, y)
    g = torch.Generator().manual_seed(0)
    lines = ["# Laplace dense samples: digital against a simulated circuit", "",
             f"Command: `.venv/bin/python benchmarks/laplace_on_circuit.py` (torch {torch.__version__}; "
             f"{platform.processor() or platform.machine()}, one thread). Breast cancer, 400 training rows, "
             f"30 standardised features, prior N(0, I); Laplace dense GGN at the MAP; n = {n} draws per sampler; "
             "circuit reads three slowest relaxation times apart. Load average at the start: "
             f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} (the machine is shared; the digital wall time moves "
             "with it, the device figures do not).", ""]
    rows: dict = {}
    run_model("Logistic regression", logreg_forward,
              {"w": torch.zeros(30, dtype=F64), "b": torch.zeros(1, dtype=F64)}, batch, n, lines, rows)
    run_model("MLP 30-8-1 (tanh)", mlp_forward,
              {"w1": 0.3 * torch.randn(8, 30, generator=g, dtype=F64), "b1": torch.zeros(8, dtype=F64),
               "w2": 0.3 * torch.randn(1, 8, generator=g, dtype=F64), "b2": torch.zeros(1, dtype=F64)},
              batch, n, lines, rows)
    lines += [
        "Reading the tables:",
        "",
        "- Errors are against the Laplace law N(theta*, prec^-1) itself. The digital row and the ideal-device rows "
        "are Monte Carlo noise only (rms z about 1, KL fitted about k / (2 n)); a device's own error is its "
        "predicted KL (exact stationary law of the chip as programmed, readout included), which the fitted KL then "
        "exceeds.",
        "- The device time is simulated: programming every array (rc: the capacitance and conductance matrices, d^2 "
        "values each, the sources and the noise gain) plus the burn-in and n reads; the PCB prototype writes its DAC "
        "values one at a time at 1 us, which dominates; the projected chip writes one value per cell at once. "
        "Digital wall time is for this CPU (one thread) and is the sampling step only (the Laplace fit is shared).",
        "- The last column is the host time of *simulating* the chip (exact OU transitions), not a device figure.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
