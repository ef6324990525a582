r"""``logdet``: ``ln det A`` of a symmetric positive-definite ``A`` by a Jarzynski quench ladder (package
docstring)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from thermoai.thermo.device import Device
from thermoai.thermo.linalg import _protocol as P
from thermoai.thermo.planning import Spectrum, plan_logdet


def _quant_var(Ginv: Tensor, varG: Tensor) -> float:
    """Var of the first-order change ``tr(G^-1 dG)`` of ``ln det G`` (symmetric programming)."""
    g2 = varG * Ginv.mT**2
    return float(2 * (g2.sum() - g2.diagonal().sum()) + g2.diagonal().sum())


def logdet(A: Any, *, tol: float = 0.1, stages: int | None = None, trajectories: int | None = None,
           relax_s: float | None = None, device: Device | None = None, rounding: str = "nearest",
           runs: int | None = None, strict: bool = False, generator: torch.Generator | None = None) -> P.Result:
    r"""``ln det A`` of a symmetric positive-definite ``A`` by the Jarzynski quench ladder of the package
    docstring (absolute error ``tol``; protocol from :func:`thermoai.thermo.planning.plan_logdet`).

    Args:
        stages: number of quenches K (default ``ceil(d (1 - 1/kappa)^2 kappa / 2)``, so ``Var W <= 1``).
        trajectories: independent ladders averaged (default ``ceil(4 (e - 1) / eps^2)``).
        relax_s: relaxation after each quench in seconds (default ``1 / lambda_min(G_k)`` time constants).
        runs: independent repetitions of the whole estimate (value gets a leading axis).
        strict: raise instead of warning when programming errors alone exceed ``tol``.

    The statistical error is the delta-method standard error ``2 sd(e^{-W}) / (sqrt(n) mean(e^{-W}))``;
    the quantisation entry is the first-order model ``Var tr(G^-1 dG)``.
    Returns ``Result(ln det A (0-d) or (runs,), report)``.
    """
    A64 = P.matrix(A, "A")
    d = A64.shape[0]
    P.positive(tol, "tol", allow_none=False)
    P.positive(stages, "stages", integer=True)
    P.positive(trajectories, "trajectories", integer=True)
    P.positive(relax_s, "relax_s")
    P.check_rounding(rounding)
    n_runs = P.runs_count(runs)
    device = P.device_for(device, d)
    P.check_noise(device, "logdet", "the work is measured against the noise")
    P.check_spd(A64, "A")
    scale, G = P.gershgorin_scaled(A64)
    plan = plan_logdet(device, Spectrum.of_matrix(G), tol, runs=n_runs, stages=stages, trajectories=trajectories,
                       relax_s=relax_s)
    K, n_traj = plan.settings["stages"], plan.settings["trajectories"]
    G_prog = P.mirror_upper(G)
    vG, mG = P.programming_variances(device, G_prog, rounding)
    Ginv0 = torch.linalg.inv(G)
    P.check_floor(tol, P.programming_parts(device, math.sqrt(_quant_var(Ginv0, vG)), math.sqrt(_quant_var(Ginv0, mG))),
                  "logdet", strict)
    Gq, cost = device.program(G_prog, generator, rounding)
    try:
        P.check_spd(Gq, "the programmed (quantised) A")
    except ValueError as e:
        raise ValueError(f"{e}; use more dac_bits") from None
    lam_q = torch.linalg.eigvalsh(Gq)
    sigma2 = min(1.0, float(lam_q.min())) / device.noise_scale**2  # every cell's variance <= 1 state unit^2
    v = device.noise_scale**2 * sigma2 + device.thermal_variance  # noise temperature
    eye = torch.eye(d, dtype=torch.float64)
    D = 2 * sigma2 * eye
    n = n_runs * n_traj

    def relax(M: Tensor, x: Tensor, t: float) -> Tensor:
        """The cells' states after ``t`` time constants at couplings ``M`` (exact, not read)."""
        return device.process(M, D).sample(x, torch.tensor([0.0, t], dtype=torch.float64), generator=generator)[:, -1]

    x = relax(Gq, torch.zeros(n, d, dtype=torch.float64), plan.burn_in_s / device.time_constant)
    W = torch.zeros(n, dtype=torch.float64)
    dG = (eye - Gq) / K  # positive semi-definite: W >= 0
    for k in range(1, K + 1):
        xr = device.read(x, generator=generator)[0]
        W += 0.5 * torch.einsum("ni,ij,nj->n", xr, dG, xr) / v
        if k < K:
            x = relax(Gq + k * dG, x, plan.settings["relax"][k - 1])
    Wr = W.reshape(n_runs, n_traj)
    log_mean = torch.logsumexp(-Wr, dim=1) - math.log(n_traj)
    value = d * math.log(scale) + 2 * log_mean
    w = torch.exp(-Wr - (-Wr).max(dim=1, keepdim=True).values)
    se = 2 * w.std(dim=1) / (w.mean(dim=1) * math.sqrt(n_traj)) if n_traj > 1 else torch.full((n_runs,), math.nan)
    Ginv = torch.linalg.inv(Gq)
    quant = math.sqrt(P.averaged_variance(_quant_var(Ginv, vG), _quant_var(Ginv, mG), rounding, 1))
    # the thermal floor raises the noise temperature a little; its bias on W is first order in it
    errors = {"statistical": float(se.pow(2).mean().sqrt()), "burn_in": plan.predicted_error["burn_in"],
              "quantisation": quant}
    seconds = (plan.burn_in_s + plan.averaging_s)
    cost = cost + device.operating_cost(n, d, seconds, n * K * d) + device.accumulation_cost(d, n * K, n * seconds)
    value = value[0] if runs is None else value
    report = P.Report.of_run(plan, cost, errors, A=A64, scale=scale, device=device, rounding=rounding,
                             runs=n_runs, protocol="Jarzynski quench ladder from G to I")
    return P.Result(value.to(P.out_dtype(A)), report)
