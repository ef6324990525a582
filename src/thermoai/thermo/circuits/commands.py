"""``thermoai thermo logistic``: sample the breast-cancer posterior on the simulated logistic circuit and
compare it with a digital sampler (MALA) on this CPU.

Prints, for each sampler, test accuracy, NLL and expected calibration error (10 bins), and next to them the
circuit's simulated device time and energy and the digital sampler's wall time.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

__all__ = ["main", "build_parser"]

DEVICES = ("pcb", "chip", "ideal")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thermoai thermo", description="Thermodynamic posterior circuits, simulated.")
    sub = p.add_subparsers(dest="demo", required=True)
    lg = sub.add_parser("logistic", help="Bayesian logistic regression on breast cancer: circuit against MALA",
                        description=__doc__.splitlines()[0])
    lg.add_argument("--device", choices=DEVICES, default="pcb",
                    help="pcb: Device.pcb_prototype (8-bit DACs, 1%% mismatch, serial programming); chip: "
                         "Device.projected_chip; ideal: exact converters, no mismatch (default pcb)")
    lg.add_argument("--chains", type=int, default=32, help="circuit runs, one after another (default 32)")
    lg.add_argument("--reads", type=int, default=16, help="reads per run, half a prior time constant apart (default 16)")
    lg.add_argument("--mala-steps", type=int, default=1000, help="kept MALA steps per chain, 32 chains (default 1000)")
    lg.add_argument("--train", type=int, default=400, help="training rows; the rest of the 569 are the test set")
    lg.add_argument("--seed", type=int, default=0, help="split, chains and noise (default 0)")
    lg.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _device(name: str, d: int):
    from thermoai.thermo.device import Device

    if name == "pcb":
        return Device.pcb_prototype(n_cells=d)
    if name == "chip":
        return Device.projected_chip(n_cells=d)
    return Device(n_cells=d, dac_bits=32, adc_bits=32, readout_noise=0.0, mismatch=0.0)


def _bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def run_logistic(args: argparse.Namespace) -> int:
    from thermoai.thermo.circuits import LogisticPosteriorCircuit
    from thermoai.thermo.circuits.data import breast_cancer
    from thermoai.thermo.circuits.mala import laplace_preconditioner, logistic_log_prob, mala
    from thermoai.thermo.circuits.metrics import binary_metrics, predictive

    for name in ("chains", "reads", "mala_steps"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
            return 2
    F64 = torch.float64
    try:
        Xtr, ytr, Xte, yte = breast_cancer(args.train, args.seed)
    except ValueError as err:  # the training-set size
        print(f"error: --train: {err}")
        return 2
    d = Xtr.shape[1]
    show = not args.no_progress

    circuit = LogisticPosteriorCircuit(Xtr, ytr, device=_device(args.device, d), step_fraction=1.0)
    L, tau = circuit.stiffness, circuit.time_constant
    print(f"breast cancer: {args.train} training / {Xte.shape[0]} test rows, {d} features; device "
          f"'{args.device}', curvature bound L = {L:.0f}, prior time constant {L * tau * 1e3:.3g} ms")
    t0 = time.perf_counter()
    with _bar(show, 1, "circuit (simulated)") as bar:
        def tick(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        samples, cost = circuit.sample(args.chains * args.reads, torch.Generator().manual_seed(args.seed),
                                       chains=args.chains, burn_in=3 * L * tau, interval=0.5 * L * tau,
                                       dtype=torch.float32, progress=tick)
    t_circuit = time.perf_counter() - t0

    zero, prec = torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64)
    t0 = time.perf_counter()
    th_map, Lc = laplace_preconditioner(Xtr, ytr, zero, prec)
    g = torch.Generator().manual_seed(args.seed + 1)
    x0 = th_map + torch.randn(32, d, dtype=F64, generator=g) @ Lc.mT
    warm = 300
    with _bar(show, warm + args.mala_steps, "MALA (digital)") as bar:
        out = mala(logistic_log_prob(Xtr, ytr, zero, prec), x0, args.mala_steps, warmup=warm, precond_chol=Lc,
                   generator=g, progress=lambda k: bar.update(1))
    t_mala = time.perf_counter() - t0

    rows = [("circuit", binary_metrics(predictive(samples, Xte), yte), f"{cost.time:.3g} s device, "
             f"{cost.energy:.3g} J", f"{t_circuit:.2f} s to simulate"),
            ("MALA", binary_metrics(predictive(out["samples"].reshape(-1, d), Xte), yte), "-",
             f"{t_mala:.2f} s (acceptance {out['accept']:.2f})")]
    print(f"{'sampler':<8} {'accuracy':>9} {'NLL':>8} {'ECE':>8}  {'device time, energy':<28} wall time on this CPU")
    for name, m, dev, wall in rows:
        print(f"{name:<8} {m['accuracy']:>9.4f} {m['nll']:>8.4f} {m['ece']:>8.4f}  {dev:<28} {wall}")
    n_draws = samples.shape[0]
    print(f"({n_draws} circuit draws from {args.chains} runs; {out['samples'].shape[0] * out['samples'].shape[1]} "
          f"MALA draws. Device time counts programming and every run one after another"
          + ("; the PCB prototype programs one value per microsecond" if args.device == "pcb" else "") + ".)")
    if not math.isfinite(cost.energy):  # pragma: no cover - a cost is always finite
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_logistic(args)
