r"""``solve``: ``A x = b`` as the time-averaged mean of ``dx = -G (x - x*) ds + sqrt(D) dW``."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from thermoai.thermo.device import Cost, Device
from thermoai.thermo.linalg import _protocol as P
from thermoai.thermo.planning import Spectrum, plan_solve


def _quant_var(Ginv: torch.Tensor, x: torch.Tensor, varG: torch.Tensor, varc: torch.Tensor, symmetric: bool) -> float:
    """E||dx||^2 of the first-order change ``dx = -G^-1 dG x + G^-1 dc``."""
    n = (Ginv**2).sum(0)  # ||g_i||^2, g_i the i-th column of G^-1
    total = float(n @ varG @ (x**2)) + float(n @ varc)
    if symmetric:
        H = Ginv.mT @ Ginv
        cross = varG * H * torch.outer(x, x)
        total += float(cross.sum() - cross.diagonal().sum())
    return max(total, 0.0)


def _mean_variance(device: Device, Gq: torch.Tensor, D: torch.Tensor, n_avg: int) -> float:
    """E||mean - x*||^2 of an average of N snapshots of the stationary chain ``y_{k+1} = F y_k + e_k``:
    ``(1/N) tr[S + M S + S M^T] + d rho^2 / N`` with ``M = sum_{l<N} (1 - l/N) F^l = F (I-F)^-1 -
    F (I - F^N)(I-F)^-2 / N`` (exact for finite N), plus the white readout noise."""
    d = Gq.shape[0]
    dt = device.sampling_interval / device.time_constant
    Sig = device.process(Gq, D).stationary_covariance().to(torch.float64)
    F = torch.linalg.matrix_exp(-Gq * dt)
    eye = torch.eye(d, dtype=torch.float64)
    IF = torch.linalg.inv(eye - F)
    Mn = F @ IF - F @ (eye - torch.linalg.matrix_power(F, n_avg)) @ IF @ IF / n_avg
    return float(torch.trace(Sig + Mn @ Sig + Sig @ Mn.mT) + d * device.readout_noise**2) / n_avg


def _start_bias(device: Device, Gq: torch.Tensor, x_star: torch.Tensor, t_burn: float, n_avg: int) -> torch.Tensor:
    """Bias (k, d) of the average of the snapshots at ``t_burn + j dt`` (j = 1..N) of cells started at 0:
    ``E x(t) = (I - e^{-G t}) x*``, so the bias is ``-e^{-G t_burn} F (I - F^N) (I - F)^-1 x* / N``, ``F = e^{-G dt}``."""
    d = Gq.shape[0]
    dt = device.sampling_interval / device.time_constant
    eye = torch.eye(d, dtype=torch.float64)
    F = torch.linalg.matrix_exp(-Gq * dt)
    Sum = F @ (eye - torch.linalg.matrix_power(F, n_avg)) @ torch.linalg.inv(eye - F)
    return -(torch.linalg.matrix_exp(-Gq * t_burn) @ Sum @ x_star.mT).mT / n_avg


def solve(A: Any, b: Any, *, tol: float = 1e-2, burn_in_s: float | None = None, averaging_s: float | None = None,
          device: Device | None = None, diffusion: float = 0.0, roundings: int = 1, rounding: str = "nearest",
          strict: bool = False, generator: torch.Generator | None = None) -> P.Result:
    r"""Solve ``A x = b`` as the time-averaged mean of ``dx = -G (x - x*) ds + sqrt(D) dW``.

    Args:
        A: (d, d) with eigenvalues of positive real part (SPD, or any stable drift).
        b: (d,) or (k, d): k right-hand sides, each run in turn on the programmed matrix (k independent
            estimates; also the way to get many seeds at once).
        tol: requested relative error; sets burn-in and averaging time unless they are given
            (:func:`thermoai.thermo.planning.plan_solve`).
        burn_in_s, averaging_s: device seconds (the averaging time is shared among the roundings).
        device: a :class:`Device` (default ``Device(n_cells=d)``, the PCB prototype).
        diffusion: injected noise ``D = diffusion * I`` (state units^2 per time constant), on top of the
            device's thermal floor. The right-hand side is scaled so the solution has norm at most
            ``r = adc_range / 2`` state units (using the smallest singular value of G).
        roundings, rounding: error mitigation by averaging randomised roundings (package docstring).
        strict: raise ValueError instead of warning when programming errors alone exceed ``tol``.
        generator: for the noise, the readout and stochastic rounding.

    Returns ``Result(x, report)``, x of the shape of b.
    """
    A64 = P.matrix(A, "A")
    d = A64.shape[0]
    b64 = P.real64(b, "b")
    if b64.dim() not in (1, 2) or b64.shape[-1] != d:
        raise ValueError(f"b must have shape ({d},) or (k, {d}) to match A of shape {tuple(A64.shape)}; "
                         f"got {tuple(b64.shape)}")
    P.check_finite(b64, "b")
    P.check_common(tol, roundings, rounding, burn_in_s, averaging_s)
    if isinstance(diffusion, bool) or not isinstance(diffusion, (int, float)) or not (0 <= diffusion < math.inf):
        raise ValueError(f"diffusion must be a finite non-negative number; got {diffusion!r}")
    device = P.device_for(device, d)
    P.min_real_eig(A64, "A")
    B = b64.reshape(-1, d)
    k = B.shape[0]
    scale, G = P.gershgorin_scaled(A64)
    symmetric = P.is_symmetric(G)
    spec = Spectrum.of_matrix(G)
    plan = plan_solve(device, spec, tol, rhs=k, roundings=roundings, diffusion=diffusion, burn_in_s=burn_in_s,
                      averaging_s=averaging_s)
    # the right-hand side scaled so that ||x*|| <= r: every cell stays inside the ADC range
    r = device.adc_range / 2
    b_norm = B.norm(dim=1, keepdim=True)
    c_scale = torch.where(b_norm > 0, r * float(spec.singular_values.min()) / b_norm.clamp_min(1e-300),
                          torch.zeros_like(b_norm))
    C = B * c_scale
    D = diffusion * torch.eye(d, dtype=torch.float64)
    n_avg = plan.n_samples
    # the slowest mode's stationary spread around x* (||x*|| <= r): beyond the ADC range, readings clip
    spread = 3 * math.sqrt((device.noise_scale**2 * diffusion / 2 + device.thermal_variance) * spec.kappa)
    if r + spread > device.adc_range:
        msg = (f"solve: the cells' noise (3 sd = {spread:.3g} state units for diffusion = {diffusion:g} at kappa = "
               f"{spec.kappa:.3g}) on top of the solution (norm up to {r:g}) exceeds adc_range = {device.adc_range:g}: "
               "readings clip and the error exceeds its estimate; lower the diffusion")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, P.ToleranceWarning, stacklevel=2)

    G_prog = P.mirror_upper(G) if symmetric else G
    vG, mG = P.programming_variances(device, G_prog, rounding)
    vC = [P.programming_variances(device, C[i], rounding) for i in range(k)]
    x_norm = torch.linalg.solve(G, C.mT).mT.norm(dim=1).clamp_min(1e-300)

    def quantisation(Gm: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per right-hand side variances (rounding, mismatch) of the first-order change of x at ``Gm``."""
        Ginv = torch.linalg.inv(Gm)
        rnd = torch.tensor([_quant_var(Ginv, X[i], vG, vC[i][0], symmetric) for i in range(k)])
        mis = torch.tensor([_quant_var(Ginv, X[i], mG, vC[i][1], symmetric) for i in range(k)])
        return rnd, mis

    def relative(var: torch.Tensor) -> float:
        return float((var.sqrt() / x_norm).pow(2).mean().sqrt())

    # before running: can programming meet tol at all? (first-order model at the ideal matrix)
    rnd0, mis0 = quantisation(G, torch.linalg.solve(G, C.mT).mT)
    parts = P.programming_parts(device, relative(rnd0 / (roundings if rounding == "stochastic" else 1)),
                                relative(mis0))
    P.check_floor(tol, parts, "solve", strict)
    total = torch.zeros(k, d, dtype=torch.float64)
    cost = Cost()
    stat_var = torch.zeros(k, dtype=torch.float64)
    bias = torch.zeros(k, d, dtype=torch.float64)
    q_round = torch.zeros(k, dtype=torch.float64)
    q_mis = torch.zeros(k, dtype=torch.float64)
    for _ in range(roundings):
        Gq, cost_g = device.program(G_prog, generator, rounding)
        P.min_real_eig(Gq, "A", "the programmed (quantised) matrix (use more dac_bits)")
        progs = [device.program(C[i], generator, rounding) for i in range(k)]
        Cq = torch.stack([p[0] for p in progs])
        cost = cost + cost_g + sum((p[1] for p in progs), Cost())
        x_star = torch.linalg.solve(Gq, Cq.mT).mT  # the programmed chip's fixed point (simulator side)
        rnd, mis = quantisation(Gq, x_star)
        q_round += rnd / roundings
        q_mis += mis / roundings
        acc = torch.zeros(k, d, dtype=torch.float64)
        # one run per right-hand side, each with its own fixed point, from reset cells (x = 0)
        cost = cost + device.stream(Gq, x_star, n_avg * device.sampling_interval, D, n=k,
                                    burn_in=plan.burn_in_s, generator=generator,
                                    consume=lambda reads: acc.add_(reads.sum(1)))
        total += acc / n_avg
        stat_var += _mean_variance(device, Gq, D, n_avg)
        bias += _start_bias(device, Gq, x_star, plan.burn_in_s / device.time_constant, n_avg) / roundings
    x_dev = total / roundings
    stat = ((stat_var / roundings**2).sqrt() / x_norm).pow(2).mean().sqrt()
    quant = torch.tensor([P.averaged_variance(float(q_round[i]), float(q_mis[i]), rounding, roundings)
                          for i in range(k)])
    errors = {"statistical": float(stat), "burn_in": relative(bias.pow(2).sum(1)), "quantisation": relative(quant)}
    x = torch.where(c_scale > 0, x_dev / (c_scale.clamp_min(1e-300) * scale), torch.zeros_like(x_dev))
    x = x.reshape(b64.shape).to(P.out_dtype(A, b))
    report = P.Report.of_run(plan, cost, errors, A=A64, scale=scale, device=device, rounding=rounding,
                             symmetric_programming=symmetric)
    return P.Result(x, report)
