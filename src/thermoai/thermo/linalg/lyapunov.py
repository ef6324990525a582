r"""``lyapunov``: ``A X + X A^T = C`` as the stationary covariance of cells with programmed drift and noise."""

from __future__ import annotations

from typing import Any

import torch

from thermoai.thermo.device import Cost, Device
from thermoai.thermo.linalg import _protocol as P
from thermoai.thermo.ou import OUProcess
from thermoai.thermo.planning import Spectrum, plan_lyapunov


def lyapunov(A: Any, C: Any, *, tol: float = 5e-2, burn_in_s: float | None = None,
             averaging_s: float | None = None, device: Device | None = None, roundings: int = 1,
             rounding: str = "nearest", runs: int | None = None, strict: bool = False,
             generator: torch.Generator | None = None) -> P.Result:
    r"""Solve ``A X + X A^T = C`` (``A`` stable, ``C`` symmetric PSD) as the stationary covariance of
    ``dx = -G x ds + sqrt(s2 C / max|C|) dW`` (``G = A / scale``; the noise covariance is programmed
    too, and its amplitude ``s2`` is set so every cell's variance is at most 1 state unit^2). Then
    ``G S + S G^T = s2 C / max|C|`` gives ``X = S max|C| / (s2 scale)``.

    The statistical error is estimated from 16 batch means; the quantisation entry is the exact change
    of the answer caused by programming (computed by the simulator, which knows the ideal matrices).
    Run length: :func:`thermoai.thermo.planning.plan_lyapunov`. Returns ``Result(X (d, d) or (runs, d, d),
    report)``.
    """
    A64 = P.matrix(A, "A")
    d = A64.shape[0]
    C64 = P.matrix(C, "C")
    if C64.shape != A64.shape:
        raise ValueError(f"C must have the shape of A, {tuple(A64.shape)}; got {tuple(C64.shape)}")
    if not P.is_symmetric(C64):
        raise ValueError(f"C must be symmetric; got max |C - C^T| = {float((C64 - C64.mT).abs().max()):.3g}")
    w = torch.linalg.eigvalsh(C64)
    if float(w.min()) < -1e-12 * max(float(w.abs().max()), 1e-300) or float(w.abs().max()) == 0:
        raise ValueError(f"C must be positive semi-definite and non-zero; got eigenvalues in "
                         f"[{float(w.min()):.3g}, {float(w.max()):.3g}]")
    n, device = P.prepare("lyapunov", d, device, runs, tol=tol, roundings=roundings, rounding=rounding,
                          burn_in_s=burn_in_s, averaging_s=averaging_s)
    P.min_real_eig(A64, "A")
    scale, G = P.gershgorin_scaled(A64)
    c_max = float(C64.abs().max())
    Cn = C64 / c_max
    symmetric = P.is_symmetric(G)
    plan = plan_lyapunov(device, Spectrum.of_matrix(G), tol, runs=n, roundings=roundings, burn_in_s=burn_in_s,
                         averaging_s=averaging_s)
    X_ideal = OUProcess(G, Cn).stationary_covariance().to(torch.float64)
    s2 = 1.0 / float(X_ideal.diagonal().max()) / device.noise_scale**2
    v = device.noise_scale**2 * s2
    total = torch.zeros(n, d, d, dtype=torch.float64)
    programmed = torch.zeros(d, d, dtype=torch.float64)
    cost = Cost()
    err2 = torch.zeros(n, dtype=torch.float64)
    G_prog = P.mirror_upper(G) if symmetric else G
    C_prog = P.mirror_upper(Cn)
    norm = float(X_ideal.norm())
    for j in range(roundings):
        Gq, c1 = device.program(G_prog, generator, rounding)
        Cq, c2 = device.program(C_prog, generator, rounding)
        P.min_real_eig(Gq, "A", "the programmed (quantised) matrix (use more dac_bits)")
        try:
            proc = device.process(Gq, s2 * Cq)
        except ValueError as e:
            raise ValueError(f"the programmed noise covariance C is not valid ({e}); use more dac_bits") from None
        X_prog = proc.stationary_covariance().to(torch.float64) / v
        if j == 0:  # the exact programming error of one programming, before running
            P.check_floor(tol, {P.programming_label(device): float((X_prog - X_ideal).norm()) / norm}, "lyapunov",
                          strict)
        programmed += X_prog
        mom, c_run = P.stream_moments(device, Gq, s2 * Cq, plan, generator)
        cost = cost + c1 + c2 + c_run
        total += mom.mean() - P.read_bias(device) * torch.eye(d, dtype=torch.float64)
        err2 += mom.batch_error()
    X_dev = total / roundings / v
    errors = {"statistical": float((err2.sqrt() / roundings / v / norm).pow(2).mean().sqrt()),
              "burn_in": plan.predicted_error["burn_in"],
              "quantisation": float((programmed / roundings - X_ideal).norm()) / norm}
    value = X_dev * c_max / scale
    value = value[0] if runs is None else value
    report = P.Report.of_run(plan, cost, errors, A=A64, scale=scale, device=device, rounding=rounding, runs=n,
                             noise_variance=v, symmetric_programming=symmetric)
    return P.Result(value.to(P.out_dtype(A, C)), report)
