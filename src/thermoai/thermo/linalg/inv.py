r"""``inv``: ``A^-1`` of a symmetric positive-definite ``A`` as the stationary covariance of the cells."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from thermoai.thermo.device import Cost, Device
from thermoai.thermo.linalg import _protocol as P
from thermoai.thermo.planning import Spectrum, plan_inv


def quant_var_inv(Ginv: Tensor, varG: Tensor, symmetric: bool) -> float:
    """E||dG^-1||_F^2 of the first-order change ``-G^-1 dG G^-1``."""
    n_col = (Ginv**2).sum(0)
    n_row = (Ginv**2).sum(1)
    if not symmetric:
        return max(float(n_col @ varG @ n_row), 0.0)
    H = Ginv.mT @ Ginv
    total = (varG * (torch.outer(n_col, n_col) + H**2)).sum() - (varG.diagonal() * n_col**2).sum()
    return max(float(total), 0.0)


def second_moment_error(eigs: Tensor, v: float, dt: float, n_avg: int) -> float:
    """Relative Frobenius standard error of the time average of ``x x^T`` over ``N = n_avg`` snapshots of a
    stationary OU with symmetric drift eigenvalues ``eigs`` and covariance ``v G^-1``::

        E||S_hat - S||_F^2 = (1/N) [ sum_km v_k v_m g(r_k r_m) + sum_k v_k^2 g(r_k^2) ],
        g(r) = sum_{|l| < N} (1 - |l|/N) r^|l| = (1 + r)/(1 - r) - 2 r (1 - r^N) / (N (1 - r)^2),

    with ``v_k = v / l_k`` and ``r_k = exp(-l_k dt)``; relative to ``||S||_F``."""
    vk = v / eigs
    rk = torch.exp(-eigs * dt)

    def g(r: Tensor) -> Tensor:
        return (1 + r) / (1 - r) - 2 * r * (1 - r**n_avg) / (n_avg * (1 - r) ** 2)

    cross = (torch.outer(vk, vk) * g(torch.outer(rk, rk))).sum()
    diag = (vk**2 * g(rk**2)).sum()
    return math.sqrt(float(cross + diag) / n_avg / float((vk**2).sum()))


def start_bias(eigs: Tensor, dt: float, t_burn: float, n_avg: int) -> float:
    """Relative Frobenius bias of the average of ``x x^T`` over snapshots at ``t_burn + j dt`` (j = 1..N) of
    cells started at 0, symmetric drift with eigenvalues ``eigs`` and covariance ``v G^-1``: mode k's variance
    at time t is ``(v / l_k)(1 - e^{-2 l_k t})``, so the bias is ``(v / l_k) e^{-2 l_k t_burn} (1/N) sum_j
    e^{-2 l_k j dt}`` against ``||v / l||``."""
    r = torch.exp(-2 * eigs * dt)
    mean_decay = torch.exp(-2 * eigs * t_burn) * r * (1 - r**n_avg) / ((1 - r) * n_avg)
    return float((mean_decay / eigs).norm() / (1 / eigs).norm())


def _relative_quantisation(G: Tensor, varG: Tensor) -> float:
    Ginv = torch.linalg.inv(G)
    return quant_var_inv(Ginv, varG, True) / float((Ginv**2).sum())


def inv(A: Any, *, tol: float = 5e-2, burn_in_s: float | None = None, averaging_s: float | None = None,
        device: Device | None = None, roundings: int = 1, rounding: str = "nearest", runs: int | None = None,
        strict: bool = False, generator: torch.Generator | None = None) -> P.Result:
    r"""Invert a symmetric positive-definite ``A`` as the stationary covariance of ``dx = -G x ds +
    sqrt(2 sigma^2) dW``: ``Cov = sigma^2 G^-1`` (``sigma^2`` set so every cell's variance is at most 1 state
    unit^2, a quarter of the ADC range), so ``A^-1 = S_hat / (sigma^2 scale)``.

    Args as :func:`~thermoai.thermo.linalg.solve`; ``runs`` repeats the whole protocol independently (value
    gets a leading axis of that size; device time and energy add up). The run length comes from
    :func:`thermoai.thermo.planning.plan_inv`. Returns ``Result(A^-1 (d, d) or (runs, d, d), report)``.
    """
    A64 = P.matrix(A, "A")
    d = A64.shape[0]
    n, device = P.prepare("inv", d, device, runs, tol=tol, roundings=roundings, rounding=rounding,
                          burn_in_s=burn_in_s, averaging_s=averaging_s)
    P.check_spd(A64, "A")
    scale, G = P.gershgorin_scaled(A64)
    spec = Spectrum.of_matrix(G)
    plan = plan_inv(device, spec, tol, runs=n, roundings=roundings, burn_in_s=burn_in_s, averaging_s=averaging_s)
    sigma2 = float(spec.rates.min()) / device.noise_scale**2
    v = device.noise_scale**2 * sigma2 + device.thermal_variance
    D = 2 * sigma2 * torch.eye(d, dtype=torch.float64)
    dt = device.sampling_interval / device.time_constant
    G_prog = P.mirror_upper(G)
    vG, mG = P.programming_variances(device, G_prog, rounding)
    rnd = math.sqrt(_relative_quantisation(G, vG) / (roundings if rounding == "stochastic" else 1))
    P.check_floor(tol, P.programming_parts(device, rnd, math.sqrt(_relative_quantisation(G, mG))), "inv", strict)
    total = torch.zeros(n, d, d, dtype=torch.float64)
    cost = Cost()
    stat2, q_round, q_mis, bias = 0.0, 0.0, 0.0, 0.0
    for _ in range(roundings):
        Gq, c = device.program(G_prog, generator, rounding)
        try:
            P.check_spd(Gq, "the programmed (quantised) A")
        except ValueError as e:
            raise ValueError(f"{e}; use more dac_bits") from None
        mom, c_run = P.stream_moments(device, Gq, D, plan, generator)
        cost = cost + c + c_run
        total += mom.mean() - P.read_bias(device) * torch.eye(d, dtype=torch.float64)
        eigs = torch.linalg.eigvalsh(Gq)
        stat2 += second_moment_error(eigs, v, dt, plan.n_samples) ** 2
        bias += start_bias(eigs, dt, plan.burn_in_s / device.time_constant, plan.n_samples) / roundings
        q_round += _relative_quantisation(Gq, vG) / roundings
        q_mis += _relative_quantisation(Gq, mG) / roundings
    value = total / roundings / (v * scale)
    errors = {"statistical": math.sqrt(stat2) / roundings, "burn_in": bias,
              "quantisation": math.sqrt(P.averaged_variance(q_round, q_mis, rounding, roundings))}
    value = value[0] if runs is None else value
    report = P.Report.of_run(plan, cost, errors, A=A64, scale=scale, device=device, rounding=rounding, runs=n,
                             noise_variance=v)
    return P.Result(value.to(P.out_dtype(A)), report)
