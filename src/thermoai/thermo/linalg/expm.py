r"""``expm``: the matrix exponential ``e^{tA}`` as a lagged autocovariance of the cells."""

from __future__ import annotations

import math
from typing import Any

import torch

from thermoai.thermo.device import Cost, Device
from thermoai.thermo.linalg import _protocol as P
from thermoai.thermo.planning import Spectrum, plan_expm


def expm(A: Any, t: float = 1.0, *, shift: float | None = None, tol: float = 0.1, burn_in_s: float | None = None,
         averaging_s: float | None = None, device: Device | None = None, roundings: int = 1,
         rounding: str = "nearest", runs: int | None = None, strict: bool = False,
         generator: torch.Generator | None = None) -> P.Result:
    r"""The matrix exponential ``e^{t A}`` as an autocovariance (Duffield et al., PRR 7, 013147, 2025).

    With ``M = alpha I - t A`` (``alpha = shift``, by default ``max(0, lambda_max(sym(t A))) + 1`` so that
    ``sym(M)`` is positive definite), the device runs ``dx = -G x ds + sqrt(G + G^T) dW`` with
    ``G = M / (l dt)``, whose stationary covariance is ``I``, and ``E[x_{k+l} x_k^T] = e^{-G l dt} =
    e^{-M}``; hence ``e^{tA} = e^{alpha} E[x_{k+l} x_k^T]``. The lag ``l = ceil(||M||_inf / dt)`` keeps every
    rate at most ``1 / tau``. The noise covariance ``G + G^T`` is that of the programmed couplings
    (fluctuation-dissipation), so ``S = I`` holds for the programmed chip too. Errors are amplified by
    ``amp = e^{alpha} sqrt(d) / ||e^{tA}||_F`` relative to ``||e^{tA}||_F`` (the simulator plans with the true
    norm; a device would use the bound ``||e^{tA}||_F >= sqrt(d) e^{-lambda_max(sym(-tA))}``). Run length:
    :func:`thermoai.thermo.planning.plan_expm` on the rates of ``sym(G)``. Statistical error from batch
    means; quantisation error exact (simulator side).

    Returns ``Result(e^{tA} (d, d) or (runs, d, d), report)``.
    """
    A64 = P.matrix(A, "A")
    d = A64.shape[0]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"t must be a finite number; got {t!r}")
    n, device = P.prepare("expm", d, device, runs, tol=tol, roundings=roundings, rounding=rounding,
                          burn_in_s=burn_in_s, averaging_s=averaging_s)
    Bm = -t * A64
    mu = float(torch.linalg.eigvalsh(0.5 * (Bm + Bm.mT)).min())
    if shift is None:
        alpha = max(0.0, -mu) + 1.0
    else:
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift):
            raise ValueError(f"shift must be a finite number; got {shift!r}")
        if not shift + mu > 0:
            raise ValueError(f"shift must exceed {-mu:.6g} (= -lambda_min of the symmetric part of -tA) so that "
                             f"the drift's symmetric part is positive definite; got {shift}")
        alpha = float(shift)
    M = Bm + alpha * torch.eye(d, dtype=torch.float64)
    dt = device.sampling_interval / device.time_constant
    lag = max(1, math.ceil(float(M.abs().sum(1).max()) / dt))
    G = M / (lag * dt)
    symmetric = P.is_symmetric(G)
    ideal = math.exp(alpha) * torch.linalg.matrix_exp(-G * lag * dt)
    norm = float(ideal.norm())
    amp = math.exp(alpha) * math.sqrt(d) / max(norm, 1e-300)
    plan = plan_expm(device, Spectrum.of_matrix(0.5 * (G + G.mT)), tol, amplification=amp, lag=lag, runs=n,
                     roundings=roundings, burn_in_s=burn_in_s, averaging_s=averaging_s,
                     min_samples=lag + 2 * P.BATCHES)
    total = torch.zeros(n, d, d, dtype=torch.float64)
    programmed = torch.zeros(d, d, dtype=torch.float64)
    cost = Cost()
    err2 = torch.zeros(n, dtype=torch.float64)
    v = device.noise_scale**2
    G_prog = P.mirror_upper(G) if symmetric else G
    for j in range(roundings):
        Gq, c1 = device.program(G_prog, generator, rounding)
        sym_min = float(torch.linalg.eigvalsh(Gq + Gq.mT).min())
        if not sym_min > 0:
            raise ValueError("the programmed (quantised) drift lost a positive-definite symmetric part (smallest "
                             f"eigenvalue of G + G^T: {sym_min:.3g}); use more dac_bits or a larger shift")
        E_prog = torch.linalg.matrix_exp(-Gq * lag * dt)
        if j == 0:  # the exact programming error of one programming, before running
            P.check_floor(tol, {P.programming_label(device): float((math.exp(alpha) * E_prog - ideal).norm()) / norm},
                          "expm", strict)
        programmed += E_prog
        # noise G + G^T of the programmed couplings (fluctuation-dissipation): stationary covariance I
        mom, c_run = P.stream_moments(device, Gq, Gq + Gq.mT, plan, generator, lag=lag)
        cost = cost + c1 + c_run
        total += mom.mean()
        err2 += mom.batch_error()
    value = math.exp(alpha) * total / roundings / v
    errors = {"statistical": float((math.exp(alpha) * err2.sqrt() / roundings / v / norm).pow(2).mean().sqrt()),
              "burn_in": plan.predicted_error["burn_in"],
              "quantisation": float((math.exp(alpha) * programmed / roundings - ideal).norm()) / norm}
    value = value[0] if runs is None else value
    report = P.Report.of_run(plan, cost, errors, A=A64, scale=lag * dt, device=device, t=t, shift=alpha,
                             rounding=rounding, runs=n, symmetric_programming=symmetric)
    return P.Result(value.to(P.out_dtype(A)), report)
