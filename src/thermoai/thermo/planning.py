r"""Run plans: how long a thermodynamic device must run to reach a tolerance, and what the run costs.

This module holds the only formulas for run length, device time and energy of each operation. The
simulator (:mod:`thermoai.thermo.linalg`) calls them with the spectrum of the matrix it programs, to
choose its run and to report what it did; the predictor (:mod:`thermoai.thermo.cost`) calls them with a
given or assumed spectrum, at sizes the simulator cannot reach. A test holds the two equal.

Conventions. The matrix is scaled to ``G = A / scale`` (``scale``: a Gershgorin bound, so every rate of
``G`` is at most ``1 / tau``); rates are in units of ``1 / tau`` and times in time constants ``tau`` unless
a name ends in ``_s``. ``kappa = 1 / lambda_min`` where ``lambda_min`` is the smallest real part of an
eigenvalue of ``G``: the condition number *relative to the Gershgorin scale* (at least the usual 2-norm
condition number of a symmetric matrix, equal for a diagonal one). A tolerance ``tol`` is split into a
burn-in budget ``tol / 2`` and a statistical budget ``eps = (sqrt 3 / 2) tol`` (they add in quadrature to
``tol``); programming errors (DAC rounding, mismatch) do not shrink with time and are reported as a floor.

=========  =====================================  ===========================================================
operation  burn-in (tau)                          averaging / protocol (tau)
=========  =====================================  ===========================================================
solve      ``kappa ln(2 / tol)``                  ``T = d (2 s2 S + d rho^2 dt) / (eps^2 r^2 smin^2 S)``
inv        ``kappa ln(2 / tol) / 2``              ``T = [sum_kl 2 / (l_k l_l (l_k + l_l)) + sum_k l_k^-3] / (eps^2 sum_k l_k^-2)``
lyapunov   as inv (rates: real parts of eigs)     as inv, on those rates (a heuristic for non-normal drifts)
expm       as inv                                 ``amp^2`` times the inv time, plus the lag
logdet     ``kappa ln(d / tol) / 2``              ``K`` quenches, ``1 / lambda_min(G_k)`` relaxation each
=========  =====================================  ===========================================================

solve: ``s2 = noise_scale^2 diffusion / 2 + sigma_th^2`` is the stationary variance of a cell at unit rate,
``rho`` the readout noise, ``dt`` the sampling interval, ``S = sum_k sigma_k^-2`` over the singular values of
``G`` and ``smin`` the smallest; the right-hand side is scaled to norm ``r smin`` (``r = adc_range / 2``) so
the solution fits the ADC, and a right-hand side of generic direction then has ``E||x*||^2 = r^2 smin^2 S / d``;
the time average has ``E||x_hat - x*||^2 = (2 s2 S + d rho^2 dt) / T``. inv: the asymptotic relative Frobenius
error of a time-averaged ``x x^T`` of a stationary OU with rates ``l`` (the sample covariance of N
independent draws when all rates are 1: ``(d + 1) / N``). logdet: the Jarzynski ladder of
:func:`thermoai.thermo.linalg.logdet`, ``K = ceil(d (1 - 1/kappa)^2 kappa / 2)`` quenches (``Var W <= 1``) and
``ceil(4 (e - 1) / eps^2)`` trajectories, each relaxing ``1 / (lambda_min + (k/K)(1 - lambda_min))`` after
quench k.

Cost of a plan, from :class:`~thermoai.thermo.device.Device` only: programming through
:meth:`~Device.program_cost`, the cells through :meth:`~Device.operating_cost`, second moments through
:meth:`~Device.accumulation_cost`.

Quantisation floor without the matrix (used by the predictor; the simulator uses the exact first-order
model of the programmed matrix): entry errors of variance ``V = q^2/12 + mismatch^2 mean(G_ij^2)`` with
``q`` the DAC step for a largest entry equal to the mean diagonal entry ``tr(G) / d`` (the diagonal of a
matrix in a generic basis averages its eigenvalues) and ``mean(G_ij^2) = sum l^2 / d^2``;
independent entries give a relative error ``sqrt(V S)`` (``S = sum l^-2``) for solve and inv, and an
absolute ``sqrt(V S)`` for logdet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from thermoai.thermo.device import Cost, Device
from thermoai.thermo.digital import DigitalHardware

__all__ = ["Spectrum", "Plan", "OPERATIONS", "plan", "plan_solve", "plan_inv", "plan_lyapunov", "plan_expm",
           "plan_logdet", "statistical_budget", "quantisation_floor"]

OPERATIONS: tuple[str, ...] = ("solve", "inv", "logdet", "expm", "lyapunov")
_GRID = 2048  # points standing in for a uniform spectrum of any size


def statistical_budget(tol: float) -> float:
    """The part of ``tol`` left to the statistical error: ``(sqrt 3 / 2) tol`` (burn-in takes ``tol / 2``)."""
    return tol * math.sqrt(3.0) / 2.0


@dataclass(frozen=True)
class Spectrum:
    """What a plan needs of the scaled drift ``G``: its rates (real parts of its eigenvalues, in 1/tau) and
    its singular values, each point standing for ``weight`` modes (1 for a real matrix's d eigenvalues; more
    for a grid standing in for a large d).

    Build it with :meth:`of_matrix` (the simulator), :meth:`given` or :meth:`uniform` (the predictor)."""

    rates: np.ndarray
    singular_values: np.ndarray
    weight: float
    d: int
    description: str = "given"

    @classmethod
    def of_matrix(cls, G: Any) -> "Spectrum":
        """The spectrum of a (d, d) torch or numpy matrix (rates: real parts of its eigenvalues)."""
        M = np.asarray(G.detach().cpu().numpy() if hasattr(G, "detach") else G, dtype=np.float64)
        if np.allclose(M, M.T, rtol=0, atol=1e-12 * max(np.abs(M).max(), 1e-300)):
            lam = np.linalg.eigvalsh(0.5 * (M + M.T))
            return cls(lam, np.abs(lam), 1.0, M.shape[0], "of the programmed matrix")
        return cls(np.linalg.eigvals(M).real, np.linalg.svd(M, compute_uv=False), 1.0, M.shape[0],
                   "of the programmed matrix")

    @classmethod
    def given(cls, rates: Sequence[float] | np.ndarray) -> "Spectrum":
        """d rates of a symmetric drift already in units of 1/tau (each in (0, 1]), e.g. the eigenvalues of
        the simulator's ``G = A / scale``."""
        lam = np.asarray(rates, dtype=np.float64).ravel()
        if lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam <= 0) or np.any(lam > 1 + 1e-12):
            raise ValueError(f"rates must be finite numbers in (0, 1] (units of 1/tau); got {lam.size} values in "
                             f"[{lam.min() if lam.size else 'n/a'}, {lam.max() if lam.size else 'n/a'}]")
        return cls(lam, lam, 1.0, lam.size)

    @classmethod
    def uniform(cls, d: int, kappa: float) -> "Spectrum":
        """d rates evenly spaced on ``[1/kappa, 1]``, both ends included (a symmetric matrix scaled to its
        largest eigenvalue, condition number exactly ``kappa``); above 2048 modes an evenly spaced 2048-point
        grid stands in for them, so a plan costs O(1) in d."""
        m = min(d, _GRID)
        lam = np.linspace(1.0 / kappa, 1.0, m) if m > 1 else np.array([1.0 / kappa])
        return cls(lam, lam, d / m, d, f"uniform on [1/kappa, 1], kappa = {kappa:g}")

    def __post_init__(self) -> None:
        if not float(np.min(self.rates)) > 0:
            raise ValueError(f"the drift must be stable: smallest rate {float(np.min(self.rates)):.3g} <= 0")

    @property
    def kappa(self) -> float:
        """``1 / lambda_min``: condition number relative to the largest possible rate, 1/tau."""
        return 1.0 / float(np.min(self.rates))

    def total(self, values: np.ndarray) -> float:
        """Sum over the d modes of per-point ``values``."""
        return float(np.sum(values)) * self.weight


@dataclass(frozen=True)
class Plan:
    """A device run chosen for an operation: its length, what it does and what it costs.

    Times per run are in seconds. ``n_samples`` snapshots are read per run and rounding; ``runs``
    independent runs (right-hand sides, repetitions, trajectories) go one after another; the whole protocol
    is repeated for each of ``roundings`` programmings. ``cost`` is the total; ``breakdown`` splits it into
    ``programming``, ``dynamics`` (cells on, readout included) and ``accumulation``. ``predicted_error``
    holds the error the plan is designed to reach (``statistical``, ``burn_in`` bound of the averaged bias)
    and, for the predictor, a ``quantisation`` floor estimated from the spectrum (absent when unknown).
    """

    op: str
    d: int
    tol: float
    kappa: float
    burn_in_s: float
    averaging_s: float
    n_samples: int
    runs: int
    roundings: int
    cost: Cost
    breakdown: dict[str, Cost]
    predicted_error: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total_error(self) -> float:
        """Quadrature sum of :attr:`predicted_error`."""
        return math.sqrt(sum(e**2 for e in self.predicted_error.values()))


# ------------------------------------------------------------------------------------------------ helpers


def _snapshots(device: Device, t_avg: float) -> int:
    """Snapshots covering ``t_avg`` time constants (at least one)."""
    return max(1, math.ceil(t_avg * device.time_constant / device.sampling_interval - 1e-9))


def _burn(kappa: float, tol: float, rate_factor: float, burn_in_s: float | None, device: Device) -> float:
    """Burn-in in time constants: ``kappa ln(2 / tol) / rate_factor`` unless given in seconds."""
    if burn_in_s is not None:
        return burn_in_s / device.time_constant
    return kappa * math.log(2.0 / tol) / rate_factor


def _averaged_bias(kappa: float, t_burn: float, t_avg: float, rate_factor: float) -> float:
    """Bound on the relative bias of a time average over ``[t_burn, t_burn + t_avg]`` of a quantity relaxing
    as ``e^{-rate_factor t / kappa}``: ``e^{-f t_burn / kappa} min(1, kappa / (f t_avg))``."""
    return math.exp(-rate_factor * t_burn / kappa) * min(1.0, kappa / (rate_factor * max(t_avg, 1e-300)))


def _second_moment_time(spec: Spectrum, eps: float) -> float:
    """Averaging time (tau) for a relative Frobenius error ``eps`` of a time-averaged ``x x^T``."""
    inv = 1.0 / spec.rates
    w = spec.weight
    cross = float(np.sum(2.0 * np.outer(inv, inv) / (spec.rates[:, None] + spec.rates[None, :]))) * w * w
    diag = float(np.sum(inv**3)) * w
    return (cross + diag) / (eps**2 * spec.total(inv**2))


def quantisation_floor(device: Device, spec: Spectrum, rounding: str = "nearest", roundings: int = 1) -> float:
    """Programming error expected from the spectrum alone (module docstring): relative for solve and inv,
    absolute for logdet. ``K`` stochastic roundings average the rounding part (variance ``q^2/6 / K``)."""
    q = device.dac_step(spec.total(spec.rates) / spec.d)  # largest entry ~ the diagonal's mean, tr(G) / d
    v_round = q * q / 12.0 if rounding == "nearest" else q * q / 6.0 / roundings
    v_mismatch = device.mismatch**2 * spec.total(spec.rates**2) / spec.d**2
    return math.sqrt((v_round + v_mismatch) * spec.total(spec.singular_values**-2.0))


def _plan(op: str, device: Device, spec: Spectrum, tol: float, *, burn_in: float, averaging: float,
          n_samples: int, runs: int, roundings: int, breakdown: dict[str, Cost], errors: dict[str, float],
          settings: dict[str, Any] | None = None) -> Plan:
    """The :class:`Plan` (times given in time constants; its cost is the sum of ``breakdown``)."""
    return Plan(op=op, d=spec.d, tol=tol, kappa=spec.kappa, burn_in_s=burn_in * device.time_constant,
                averaging_s=averaging * device.time_constant, n_samples=n_samples, runs=runs,
                roundings=roundings, cost=sum(breakdown.values(), Cost()), breakdown=breakdown,
                predicted_error=errors, settings={"spectrum": spec.description, **(settings or {})})


def _moments_breakdown(device: Device, d: int, runs: int, roundings: int, t_burn: float, n_samples: int,
                       n_programmed: int, host: DigitalHardware | None) -> dict[str, Cost]:
    """Cost of ``roundings`` x (program, then ``runs`` runs of burn-in + ``n_samples`` snapshots whose
    ``x x^T`` are accumulated)."""
    dt_s = device.sampling_interval
    avg_s = n_samples * dt_s
    return {
        "programming": roundings * device.program_cost(n_programmed),
        "dynamics": roundings * device.operating_cost(runs, d, t_burn * device.time_constant + avg_s,
                                                      runs * n_samples * d),
        "accumulation": roundings * device.accumulation_cost(d, runs * n_samples, runs * avg_s, host),
    }


# -------------------------------------------------------------------------------------------------- plans


def plan_solve(device: Device, spec: Spectrum, tol: float, *, rhs: int = 1, roundings: int = 1,
               diffusion: float = 0.0, burn_in_s: float | None = None, averaging_s: float | None = None) -> Plan:
    """Plan for ``solve``: ``rhs`` right-hand sides, each run in turn on the programmed matrix."""
    d, kappa = spec.d, spec.kappa
    eps = statistical_budget(tol)
    t_burn = _burn(kappa, tol, 1.0, burn_in_s, device)
    dt = device.sampling_interval / device.time_constant
    r = device.adc_range / 2
    s2 = device.noise_scale**2 * diffusion / 2 + device.thermal_variance
    S = spec.total(spec.singular_values**-2.0)
    smin = float(np.min(spec.singular_values))
    # relative squared error of the average, times T: (2 s2 S + d rho^2 dt) / (r^2 smin^2 S / d)
    err2_T = d * (2 * s2 * S + d * device.readout_noise**2 * dt) / (r**2 * smin**2 * S)
    t_avg = err2_T / eps**2 if averaging_s is None else averaging_s / device.time_constant
    n = _snapshots(device, t_avg / roundings)
    run_s = t_burn * device.time_constant + n * device.sampling_interval
    breakdown = {
        "programming": roundings * (device.program_cost(d * d) + rhs * device.program_cost(d)),
        "dynamics": roundings * device.operating_cost(rhs, d, run_s, rhs * n * d),
    }
    t_total = roundings * n * dt
    errors = {"statistical": math.sqrt(err2_T / t_total), "burn_in": _averaged_bias(kappa, t_burn, n * dt, 1.0)}
    return _plan("solve", device, spec, tol, burn_in=t_burn, averaging=t_avg, n_samples=n, runs=rhs,
                 roundings=roundings, breakdown=breakdown, errors=errors,
                 settings={"diffusion": diffusion, "right_hand_sides": rhs})


def plan_inv(device: Device, spec: Spectrum, tol: float, *, runs: int = 1, roundings: int = 1,
             burn_in_s: float | None = None, averaging_s: float | None = None,
             host: DigitalHardware | None = None) -> Plan:
    """Plan for ``inv`` (the stationary covariance of the programmed cells)."""
    eps = statistical_budget(tol)
    t_burn = _burn(spec.kappa, tol, 2.0, burn_in_s, device)
    T = _second_moment_time(spec, 1.0)  # error^2 * time for unit error
    t_avg = T / eps**2 if averaging_s is None else averaging_s / device.time_constant
    n = _snapshots(device, t_avg / roundings)
    dt = device.sampling_interval / device.time_constant
    breakdown = _moments_breakdown(device, spec.d, runs, roundings, t_burn, n, spec.d * spec.d, host)
    errors = {"statistical": math.sqrt(T / (roundings * n * dt)),
              "burn_in": _averaged_bias(spec.kappa, t_burn, n * dt, 2.0)}
    return _plan("inv", device, spec, tol, burn_in=t_burn, averaging=t_avg, n_samples=n, runs=runs,
                 roundings=roundings, breakdown=breakdown, errors=errors)


def plan_lyapunov(device: Device, spec: Spectrum, tol: float, *, runs: int = 1, roundings: int = 1,
                  burn_in_s: float | None = None, averaging_s: float | None = None,
                  host: DigitalHardware | None = None) -> Plan:
    """Plan for ``lyapunov``: the inv formula on the rates of ``G`` (drift and noise both programmed)."""
    p = plan_inv(device, spec, tol, runs=runs, roundings=roundings, burn_in_s=burn_in_s, averaging_s=averaging_s,
                 host=host)
    n, d = p.n_samples, spec.d
    t_burn = p.burn_in_s / device.time_constant
    breakdown = _moments_breakdown(device, d, runs, roundings, t_burn, n, 2 * d * d, host)
    return _plan("lyapunov", device, spec, tol, burn_in=t_burn, averaging=p.averaging_s / device.time_constant,
                 n_samples=n, runs=runs, roundings=roundings, breakdown=breakdown, errors=p.predicted_error)


def plan_expm(device: Device, spec: Spectrum, tol: float, *, amplification: float = 1.0, lag: int = 1,
              runs: int = 1, roundings: int = 1, burn_in_s: float | None = None, averaging_s: float | None = None,
              min_samples: int = 1, host: DigitalHardware | None = None) -> Plan:
    """Plan for ``expm`` (a lag-``lag`` autocovariance): the inv time at ``tol / amplification`` times
    ``amplification^2``, plus the lag; at least ``min_samples`` snapshots per rounding. ``amplification``
    is ``e^alpha sqrt(d) / ||e^{tA}||_F`` (1 in the predictor, a lower bound)."""
    eps = statistical_budget(tol) / amplification
    dt = device.sampling_interval / device.time_constant
    t_burn = _burn(spec.kappa, tol / amplification, 2.0, burn_in_s, device)
    T = _second_moment_time(spec, 1.0)
    t_avg = T / eps**2 + lag * dt if averaging_s is None else averaging_s / device.time_constant
    n = max(min_samples, _snapshots(device, t_avg / roundings))
    breakdown = _moments_breakdown(device, spec.d, runs, roundings, t_burn, n, spec.d * spec.d, host)
    pairs = max(1, n - lag)
    errors = {"statistical": amplification * math.sqrt(T / (roundings * pairs * dt)),
              "burn_in": amplification * _averaged_bias(spec.kappa, t_burn, n * dt, 2.0)}
    return _plan("expm", device, spec, tol, burn_in=t_burn, averaging=t_avg, n_samples=n, runs=runs,
                 roundings=roundings, breakdown=breakdown, errors=errors,
                 settings={"lag_steps": lag, "amplification": amplification})


def plan_logdet(device: Device, spec: Spectrum, tol: float, *, runs: int = 1, stages: int | None = None,
                trajectories: int | None = None, relax_s: float | None = None,
                host: DigitalHardware | None = None) -> Plan:
    """Plan for ``logdet`` (absolute error ``tol``): the Jarzynski quench ladder of the module docstring.
    ``settings["relax"]`` lists the relaxation (tau) after each quench but the last."""
    d, kappa = spec.d, spec.kappa
    lam_min = 1.0 / kappa
    K = stages if stages is not None else max(1, math.ceil(d * (1 - lam_min) ** 2 * kappa / 2))
    eps = statistical_budget(tol)
    n_traj = trajectories if trajectories is not None else math.ceil(4 * (math.e - 1) / eps**2)
    t_burn = 0.5 * kappa * math.log(max(d / tol, 1.0))
    if relax_s is None:
        relax = [1.0 / (lam_min + (k / K) * (1 - lam_min)) for k in range(1, K)]
    else:
        relax = [relax_s / device.time_constant] * (K - 1)
    t_total = t_burn + sum(relax)
    n = runs * n_traj
    seconds = t_total * device.time_constant
    breakdown = {
        "programming": device.program_cost(d * d),
        # each trajectory keeps the d cells on for the whole ladder and reads them once per stage
        "dynamics": device.operating_cost(n, d, seconds, n * K * d),
        # the work x^T dG x of each stage: one d^2 quadratic form per read-out
        "accumulation": device.accumulation_cost(d, n * K, n * seconds, host),
    }
    errors = {"statistical": math.sqrt(4 * (math.e - 1) / n_traj), "burn_in": d * math.exp(-2 * t_burn / kappa) / 2}
    return _plan("logdet", device, spec, tol, burn_in=t_burn, averaging=t_total - t_burn, n_samples=K, runs=n,
                 roundings=1, breakdown=breakdown, errors=errors,
                 settings={"stages": K, "trajectories": n_traj, "relax": relax})


def plan(op: str, device: Device, spec: Spectrum, tol: float, **kwargs: Any) -> Plan:
    """The plan of ``op`` (one of :data:`OPERATIONS`); ``kwargs`` go to its ``plan_*`` function."""
    table = {"solve": plan_solve, "inv": plan_inv, "lyapunov": plan_lyapunov, "expm": plan_expm,
             "logdet": plan_logdet}
    if op not in table:
        raise ValueError(f"op must be one of {OPERATIONS}; got {op!r}")
    return table[op](device, spec, tol, **kwargs)
