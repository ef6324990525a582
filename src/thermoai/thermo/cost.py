"""Analytical time and energy models: thermodynamic device versus digital linear algebra.

The question this module answers: *at dimension d, condition number kappa and tolerance tol, which wins
(device or digital), by how much, in time and in energy?*

Digital model (roofline)
------------------------
``time = overhead + max(flops / (flop_rate * efficiency), bytes / memory_bandwidth)``,
``energy = power * time``. Flop counts (d x d, dense, real):

============  ==========================================  ==============
operation     algorithm                                   flops
============  ==========================================  ==============
solve         Cholesky + 2 triangular solves (SPD)        d^3/3 + 2 d^2
solve (LU)    LU with pivoting + 2 triangular solves      2 d^3/3 + 2 d^2
inv           Cholesky, then inverse from the factor      d^3
inv (LU)      LU, then inverse                            2 d^3
logdet        Cholesky, sum of log diagonal               d^3/3
expm          eigh (~9 d^3) + V diag V^T (2 d^3)          11 d^3
lyapunov      eigh (9 d^3) + 4 products (8 d^3)           17 d^3
============  ==========================================  ==============

Memory traffic is taken as ``3 d^2`` elements (read A, write the factor, read it back), which favours
the digital side at small d.

Device model
------------
The device is :class:`thermoai.thermo.device.Device` (default :meth:`Device.projected_chip`), the same
description the simulator runs on, and the run is the :class:`~thermoai.thermo.planning.Plan` of
:mod:`thermoai.thermo.planning`: the same formulas :mod:`thermoai.thermo.linalg` uses to choose and report a
simulated run, so a prediction for the spectrum of a matrix equals what the simulator reports for it. Unless
a spectrum is given, eigenvalues are assumed spread uniformly on ``[1/kappa, 1] / tau`` (a symmetric matrix
scaled to its largest eigenvalue). ``predicted_error`` adds to the plan's errors the quantisation floor that
the device's DAC bits and mismatch set (:func:`thermoai.thermo.planning.quantisation_floor`); ``meets_tol``
says whether the total stays within ``tol``.

Default digital figures: :class:`thermoai.thermo.digital.DigitalHardware` (NVIDIA H100 SXM datasheet); device
figures: the presets of :class:`~thermoai.thermo.device.Device`, each with its source.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from thermoai.thermo import planning
from thermoai.thermo.device import Device
from thermoai.thermo.digital import DigitalHardware, check_number
from thermoai.thermo.planning import OPERATIONS, Spectrum, quantisation_floor

Operation = Literal["solve", "inv", "logdet", "expm", "lyapunov"]

# digital flops as (cubic coefficient, quadratic coefficient) of d
_DIGITAL_FLOPS: dict[tuple[str, str], tuple[float, float]] = {
    ("solve", "cholesky"): (1.0 / 3.0, 2.0),
    ("solve", "lu"): (2.0 / 3.0, 2.0),
    ("inv", "cholesky"): (1.0, 0.0),
    ("inv", "lu"): (2.0, 0.0),
    ("logdet", "cholesky"): (1.0 / 3.0, 1.0),
    ("logdet", "lu"): (2.0 / 3.0, 1.0),
    ("expm", "eigh"): (11.0, 0.0),
    ("lyapunov", "eigh"): (17.0, 0.0),
}
_DEFAULT_DIGITAL_ALGORITHM = {"solve": "cholesky", "inv": "cholesky", "logdet": "cholesky", "expm": "eigh",
                              "lyapunov": "eigh"}


@dataclass(frozen=True)
class CostEstimate:
    """Predicted cost of one operation. ``breakdown`` maps each part (``programming``, ``dynamics``: the cells
    running and read, ``accumulation``; or ``compute`` for digital) to its time in seconds;
    ``energy_breakdown`` likewise in joules. ``predicted_error`` (device only): the plan's statistical and
    burn-in errors and the programming floor; ``meets_tol``: whether they stay within ``tol``."""

    op: str
    d: int
    kappa: float
    tol: float
    platform: str
    time_s: float
    energy_j: float
    breakdown: dict[str, float] = field(default_factory=dict)
    energy_breakdown: dict[str, float] = field(default_factory=dict)
    predicted_error: dict[str, float] = field(default_factory=dict)
    meets_tol: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Device versus digital on the same problem. Ratios are digital / device (> 1: the device wins)."""

    op: str
    d: int
    kappa: float
    tol: float
    device: CostEstimate
    digital: CostEstimate
    time_ratio: float
    energy_ratio: float
    winner_time: str
    winner_energy: str

    def __str__(self) -> str:
        def side(ratio: float) -> str:
            return f"device by {ratio:.3g}x" if ratio > 1 else f"digital by {1 / ratio:.3g}x"

        return (f"{self.op} d={self.d} kappa={self.kappa:g} tol={self.tol:g}: "
                f"time device {self.device.time_s:.3g} s vs digital {self.digital.time_s:.3g} s ({side(self.time_ratio)}); "
                f"energy device {self.device.energy_j:.3g} J vs digital {self.digital.energy_j:.3g} J "
                f"({side(self.energy_ratio)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------- checks


def _check_problem(op: str, d: int, kappa: float | None, tol: float) -> None:
    if op not in OPERATIONS:
        raise ValueError(f"op must be one of {OPERATIONS}; got {op!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int; got {d!r}")
    if kappa is not None:
        check_number(kappa, "kappa")
        if kappa < 1:
            raise ValueError(f"kappa must be >= 1 (a condition number); got {kappa}")
    check_number(tol, "tol")
    if op != "logdet" and tol >= 1:
        raise ValueError(f"tol is a relative error for {op} and must be in (0, 1); got {tol}")


def spectrum(d: int, kappa: float | None = None, eigenvalues: Sequence[float] | None = None,
             rates: Sequence[float] | None = None) -> Spectrum:
    """The spectrum a prediction assumes: ``rates`` (the simulator's scaled drift, in 1/tau) if given, else
    ``eigenvalues`` scaled so the largest is 1/tau, else d rates uniform on ``[1/kappa, 1]``."""
    if rates is not None:
        spec = Spectrum.given(rates)
    elif eigenvalues is not None:
        lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
        if lam.size != d or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
            raise ValueError(f"eigenvalues must be {d} finite positive numbers; got {lam.size} values "
                             f"with min {lam.min() if lam.size else 'n/a'}")
        spec = Spectrum.given(lam / lam.max())
    elif kappa is None:
        raise ValueError("give kappa (for a uniform spectrum), eigenvalues or rates")
    else:
        return Spectrum.uniform(d, float(kappa))
    if spec.d != d:
        raise ValueError(f"rates must hold d = {d} values; got {spec.d}")
    return spec


# -------------------------------------------------------------------------------------------------- models


def digital_cost(op: Operation, d: int, kappa: float = 1.0, tol: float = 1e-2,
                 hardware: DigitalHardware | None = None, algorithm: str | None = None) -> CostEstimate:
    """Roofline time and energy of the direct digital algorithm (exact to rounding, so ``tol`` and
    ``kappa`` do not change it; they are recorded for the comparison)."""
    _check_problem(op, d, kappa, tol)
    hw = hardware or DigitalHardware()
    algorithm = algorithm or _DEFAULT_DIGITAL_ALGORITHM[op]
    if (op, algorithm) not in _DIGITAL_FLOPS:
        known = sorted(a for (o, a) in _DIGITAL_FLOPS if o == op)
        raise ValueError(f"algorithm for {op} must be one of {known}; got {algorithm!r}")
    c3, c2 = _DIGITAL_FLOPS[(op, algorithm)]
    flops = c3 * d**3 + c2 * d**2
    n_bytes = 3.0 * d * d * hw.bytes_per_element
    t = hw.time_s(flops, n_bytes)
    return CostEstimate(op=op, d=d, kappa=float(kappa), tol=float(tol), platform=hw.name, time_s=t,
                        energy_j=hw.power_w * t, breakdown={"compute": t}, energy_breakdown={"compute": hw.power_w * t},
                        settings={"algorithm": algorithm, "flops": flops, "bytes": n_bytes, "hardware": asdict(hw)})


def device_cost(op: Operation, d: int, kappa: float | None = None, tol: float = 1e-2, device: Device | None = None,
                host: DigitalHardware | None = None, roundings: int = 1, eigenvalues: Sequence[float] | None = None,
                rates: Sequence[float] | None = None, **protocol: Any) -> CostEstimate:
    """Predicted device time and energy of one operation: the :class:`~thermoai.thermo.planning.Plan` for
    ``device`` (default :meth:`Device.projected_chip` with ``n_cells = d``), tolerance and spectrum
    (:func:`spectrum`). ``roundings`` randomised roundings multiply the programming and burn-in (the total
    averaging time is shared among them). ``protocol`` goes to the plan (``runs``, ``rhs``, ``diffusion``,
    ``stages``, ...). Where second moments are summed is the device's ``analog_accumulators``.
    """
    _check_problem(op, d, kappa, tol)
    if isinstance(roundings, bool) or not isinstance(roundings, int) or roundings < 1:
        raise ValueError(f"roundings must be a positive int; got {roundings!r}")
    dev = Device.projected_chip(n_cells=d) if device is None else device
    if not isinstance(dev, Device):
        raise TypeError(f"device must be a thermoai.thermo.device.Device; got {type(dev).__name__}")
    if dev.n_cells < d:
        raise ValueError(f"device has n_cells = {dev.n_cells} < d = {d}; use dataclasses.replace(device, n_cells={d})")
    spec = spectrum(d, kappa, eigenvalues, rates)
    if op != "logdet":
        protocol["roundings"] = roundings
    if op in ("inv", "lyapunov", "expm", "logdet"):
        protocol["host"] = host
    plan = planning.plan(op, dev, spec, tol, **protocol)
    errors = dict(plan.predicted_error)
    if op in ("solve", "inv", "logdet"):
        errors["quantisation"] = quantisation_floor(dev, spec, roundings=roundings)
    total_error = math.sqrt(sum(e * e for e in errors.values()))
    return CostEstimate(op=op, d=d, kappa=spec.kappa, tol=float(tol), platform=_device_name(dev),
                        time_s=plan.cost.time, energy_j=plan.cost.energy,
                        breakdown={k: c.time for k, c in plan.breakdown.items()},
                        energy_breakdown={k: c.energy for k, c in plan.breakdown.items()},
                        predicted_error=errors, meets_tol=total_error <= tol * (1 + 1e-9),
                        settings={"roundings": roundings, "samples": plan.n_samples, "burn_in_s": plan.burn_in_s,
                                  "averaging_s": plan.averaging_s, "spectrum": spec.description,
                                  "plan": plan.settings, "device": asdict(dev)})


def _device_name(dev: Device) -> str:
    return (f"thermodynamic device ({dev.n_cells} cells, tau = {dev.time_constant:g} s, "
            f"{dev.parallel_dac_channels} DAC channel(s), {'analog' if dev.analog_accumulators else 'host'} "
            "accumulation)")


def compare(op: Operation, d: int, kappa: float, tol: float = 1e-2, device: Device | None = None,
            digital: DigitalHardware | None = None, algorithm: str | None = None, roundings: int = 1) -> Comparison:
    """Which wins, by how much: ``compare("solve", 4096, 100)`` -> :class:`Comparison` (ratios are
    digital / device; above 1 the device is faster or uses less energy). ``digital`` is both the rival and
    the device's host."""
    dev_cost = device_cost(op, d, kappa, tol, device=device, host=digital, roundings=roundings)
    dig_cost = digital_cost(op, d, kappa, tol, hardware=digital, algorithm=algorithm)
    time_ratio = dig_cost.time_s / dev_cost.time_s
    energy_ratio = dig_cost.energy_j / dev_cost.energy_j
    return Comparison(op=op, d=d, kappa=float(kappa), tol=float(tol), device=dev_cost, digital=dig_cost,
                      time_ratio=time_ratio, energy_ratio=energy_ratio,
                      winner_time="device" if time_ratio > 1 else "digital",
                      winner_energy="device" if energy_ratio > 1 else "digital")


def crossover_dimension(op: Operation, kappa: float, tol: float = 1e-2, dims: Sequence[int] | None = None,
                        metric: Literal["time", "energy"] = "time", **kwargs: Any) -> int | None:
    """Smallest d in ``dims`` (default powers of two 64..16384) from which on the device wins on ``metric``
    at every larger d of the list; ``None`` if it does not win at the largest."""
    if metric not in ("time", "energy"):
        raise ValueError(f"metric must be 'time' or 'energy'; got {metric!r}")
    dims = list(dims) if dims is not None else [2**k for k in range(6, 15)]
    return lasting_win(dims, [getattr(compare(op, d, kappa, tol, **kwargs), f"{metric}_ratio") for d in dims])


def lasting_win(dims: Sequence[int], ratios: Sequence[float]) -> int | None:
    """Smallest d of the increasing ``dims`` from which every ratio (digital / device) is above 1, so the
    device wins there and at every larger d of the list; ``None`` if it does not win at the largest."""
    wins = [r > 1 for r in ratios]
    if not wins or not wins[-1]:
        return None
    i = len(wins) - 1
    while i > 0 and wins[i - 1]:
        i -= 1
    return dims[i]


__all__ = ["OPERATIONS", "Device", "DigitalHardware", "CostEstimate", "Comparison", "digital_cost", "device_cost",
           "compare", "crossover_dimension", "lasting_win", "spectrum"]
