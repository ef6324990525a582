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
The matrix is scaled so that its largest eigenvalue maps to the device rate ``1/tau`` (``tau`` = time
constant); the smallest is then ``1/(kappa tau)``. Unless a spectrum is given, eigenvalues are assumed
spread uniformly on ``[1/kappa, 1] / tau`` (for which ``mean((lambda_max/lambda)^2) = kappa`` exactly).
The tolerance is split into a burn-in bias ``tol/2`` and a statistical error ``(sqrt(3)/2) tol`` so the
two add (in quadrature) to ``tol``.

* burn-in (mean): ``t_burn = ln(2/tol) / lambda_min = kappa tau ln(2/tol)``; covariance relaxes twice as
  fast: ``t_burn = kappa tau ln(2/tol) / 2``.
* ``solve`` (relative 2-norm error of the time-averaged mean, signal at full scale, noise such that a cell
  relaxing at rate ``1/tau`` has stationary rms ``full_scale/snr``): the time average over ``T`` has
  covariance ``(2/(beta T)) A^-2``, so ``err^2 = 2 tau mean((lambda_max/lambda)^2) / (snr^2 T)`` and
  ``T_avg = 2 tau m2 / (snr^2 eps^2)``.
* ``inv`` (relative Frobenius error of ``beta * time-averaged x x^T``; independent of the noise level)::

      T_avg = [sum_kl 2 / (l_k l_l (l_k + l_l)) + sum_k 1 / l_k^3] / (eps^2 sum_k 1 / l_k^2)

  (rates ``l`` in units of ``1/tau``): ``(d + 1) tau / eps^2`` when all rates equal ``1/tau`` (the sample
  covariance of ``N`` independent draws), at most ``(d + 1) kappa tau / eps^2``.
  ``lyapunov`` and ``expm`` (an autocovariance) use the same formula: a second-moment estimate.
* ``logdet`` (absolute error, Jarzynski over a quasi-static quench ladder between ``A`` and
  ``lambda_max I``, each stage relaxing for ``kappa tau``): ``Var(beta W) ~ (1/2K) sum_k (1 - l_k)^2 / l_k``, so
  ``T = 2 kappa tau sum_k (1 - l_k)^2 / l_k / tol^2`` (unlike the other operations, the
  statistical error is given the whole ``tol``, not ``eps``).

Device energy = ``(d P_cell + d^2 P_coupling) * t_dynamics`` + DAC conversions (``d^2`` programmed values,
times the number of randomised roundings) + ADC conversions (``d`` per sample) + the accumulation of
``x x^T`` for second-moment operations: on the host at the digital flop rate (``accumulation="host"``,
``2 d^2`` flops per sample) or in ``d^2`` on-chip analog multiply-integrators (``accumulation="analog"``).

Default figures. Digital: NVIDIA H100 SXM vendor datasheet (FP64 tensor core 67 TFLOP/s, HBM3 3.35 TB/s,
700 W), with a 60 % sustained efficiency and 20 us fixed overhead (assumptions, not measurements).
Device: microsecond time constant as in the SPU's RLC cells and the thermox matrix-exponential examples
(research note thermo.md, sections 1.6 and 2.3); the other device figures (snr, DAC/ADC rates and energies,
power per cell) are stated assumptions: the reference papers' hardware tables were not available.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

Operation = Literal["solve", "inv", "logdet", "expm", "lyapunov"]
OPERATIONS: tuple[str, ...] = ("solve", "inv", "logdet", "expm", "lyapunov")

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
class DigitalHardware:
    """A digital processor for the roofline model. Units: FLOP/s, bytes/s, watts, seconds, bytes."""

    name: str = "NVIDIA H100 SXM, FP64 (datasheet)"
    flop_rate: float = 67e12
    memory_bandwidth: float = 3.35e12
    power_w: float = 700.0
    efficiency: float = 0.6
    overhead_s: float = 20e-6
    bytes_per_element: int = 8

    def __post_init__(self) -> None:
        for name in ("flop_rate", "memory_bandwidth", "power_w", "efficiency", "bytes_per_element"):
            _check_positive(getattr(self, name), f"DigitalHardware.{name}")
        _check_positive(self.overhead_s, "DigitalHardware.overhead_s", strictly=False)
        if self.efficiency > 1:
            raise ValueError(f"DigitalHardware.efficiency must be in (0, 1]; got {self.efficiency}")

    def time_s(self, flops: float, n_bytes: float = 0.0) -> float:
        """Roofline time of a kernel doing ``flops`` and moving ``n_bytes``."""
        return self.overhead_s + max(flops / (self.flop_rate * self.efficiency), n_bytes / self.memory_bandwidth)


@dataclass(frozen=True)
class DeviceHardware:
    """A thermodynamic (analog Ornstein-Uhlenbeck) device for the cost model. SI units throughout.

    ``snr`` is the full-scale signal over the stationary rms noise of one cell relaxing at ``1/tau``.
    ``dac_bits`` (None: ideal) quantises programmed values per matrix: step ``max|G| / (2^(bits-1) - 1)``.
    ``mismatch`` is the relative rms of a static gain error on each programmed element (drawn once per
    device from ``mismatch_seed``).
    ``dac_channels``/``adc_channels`` = ``None`` means one converter per cell (``d`` of them).
    """

    name: str = "analog OU device (microsecond cells; assumed figures)"
    time_constant_s: float = 1e-6
    snr: float = 1e3
    sampling_interval_s: float = 1e-6
    dac_bits: int | None = 8
    adc_bits: int | None = 12
    mismatch: float = 0.0
    mismatch_seed: int = 0
    dac_rate_hz: float = 1e8
    adc_rate_hz: float = 1e8
    dac_energy_j: float = 1e-12
    adc_energy_j: float = 1e-11
    dac_channels: int | None = None
    adc_channels: int | None = None
    power_per_cell_w: float = 1e-3
    power_per_coupling_w: float = 1e-7
    power_per_accumulator_w: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("time_constant_s", "snr", "sampling_interval_s", "dac_rate_hz", "adc_rate_hz"):
            _check_positive(getattr(self, name), f"DeviceHardware.{name}")
        for name in ("dac_bits", "adc_bits"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
                raise ValueError(f"DeviceHardware.{name} must be None (ideal) or an int >= 2; got {value!r}")
        for name in ("dac_energy_j", "adc_energy_j", "power_per_cell_w", "power_per_coupling_w",
                     "power_per_accumulator_w", "mismatch"):
            _check_positive(getattr(self, name), f"DeviceHardware.{name}", strictly=False)
        for name in ("dac_channels", "adc_channels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"DeviceHardware.{name} must be None or a positive int; got {value!r}")

    @classmethod
    def from_device(cls, device: Any, **overrides: Any) -> "DeviceHardware":
        """The cost-model view of a simulated :class:`thermoai.thermo.device.Device` (then ``overrides``).

        Mapping: time constant, sampling interval, converter bits, mismatch and power per cell carry over;
        programming is serial (one DAC channel writing one value per ``program_time_per_value``, at
        ``program_energy_per_value``); one ADC per cell converts once per sampling interval at
        ``adc_energy_per_conversion``; the device has no coupling or accumulator power terms. The noise
        that limits ``solve`` combines the kT/C floor and the white readout noise as an equivalent OU
        noise: ``snr = 1 / sqrt(thermal_variance + readout_noise^2 dt / (2 tau))`` (full scale = 1 state
        unit; white noise of variance ``rho^2`` per sample contributes ``rho^2 dt`` to the long-run
        variance, an OU cell of variance ``s^2`` at rate ``1/tau`` contributes ``2 s^2 tau``).
        """
        tau = float(device.time_constant)
        dt = float(device.sampling_interval)
        noise2 = float(device.thermal_variance) + float(device.readout_noise) ** 2 * dt / (2 * tau)
        values = dict(
            name=f"simulated Device ({device.n_cells} cells, serial programming)",
            time_constant_s=tau,
            snr=1.0 / math.sqrt(noise2) if noise2 > 0 else 1e12,
            sampling_interval_s=dt,
            dac_bits=device.dac_bits,
            adc_bits=device.adc_bits,
            mismatch=float(device.mismatch),
            dac_rate_hz=1.0 / device.program_time_per_value if device.program_time_per_value > 0 else 1e18,
            dac_channels=1,
            adc_rate_hz=1.0 / dt,
            dac_energy_j=float(device.program_energy_per_value),
            adc_energy_j=float(device.adc_energy_per_conversion),
            power_per_cell_w=float(device.power_per_cell),
            power_per_coupling_w=0.0,
            power_per_accumulator_w=0.0,
        )
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class CostEstimate:
    """Predicted cost of one operation. ``breakdown`` maps each part (programming, burn_in, averaging,
    readout, accumulation, or compute) to its time in seconds; ``energy_breakdown`` likewise in joules."""

    op: str
    d: int
    kappa: float
    tol: float
    platform: str
    time_s: float
    energy_j: float
    breakdown: dict[str, float] = field(default_factory=dict)
    energy_breakdown: dict[str, float] = field(default_factory=dict)
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


def _check_positive(value: Any, name: str, strictly: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (strictly and value == 0):
        bound = "positive" if strictly else "non-negative"
        raise ValueError(f"{name} must be finite and {bound}; got {value}")


def _check_problem(op: str, d: int, kappa: float, tol: float) -> None:
    if op not in OPERATIONS:
        raise ValueError(f"op must be one of {OPERATIONS}; got {op!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int; got {d!r}")
    _check_positive(kappa, "kappa")
    if kappa < 1:
        raise ValueError(f"kappa must be >= 1 (a condition number); got {kappa}")
    _check_positive(tol, "tol")
    if op != "logdet" and tol >= 1:
        raise ValueError(f"tol is a relative error for {op} and must be in (0, 1); got {tol}")


# ------------------------------------------------------------------------------------------- spectral sums


def _spectrum(d: int, kappa: float, eigenvalues: Sequence[float] | np.ndarray | None) -> tuple[np.ndarray, float]:
    """Rates in units of 1/tau (largest = 1) and the weight that turns grid sums into sums over d modes.

    Without ``eigenvalues``, a 2048-point midpoint grid of the uniform density on [1/kappa, 1] stands in
    for the d eigenvalues (sums are scaled by d / grid size), so the cost stays O(1) in d."""
    if eigenvalues is not None:
        lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
        if lam.size != d or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
            raise ValueError(f"eigenvalues must be {d} finite positive numbers; got {lam.size} values "
                             f"with min {lam.min() if lam.size else 'n/a'}")
        return lam / lam.max(), 1.0
    m = 2048
    lam = 1.0 / kappa + (np.arange(m) + 0.5) * (1.0 - 1.0 / kappa) / m  # midpoint rule
    return lam, d / m


def solve_averaging_time(d: int, kappa: float, tol: float, tau: float, snr: float,
                         eigenvalues: Sequence[float] | None = None) -> float:
    """``T_avg = 2 tau mean((lambda_max/lambda)^2) / (snr^2 tol^2)`` seconds (relative error ``tol``)."""
    lam, _ = _spectrum(d, kappa, eigenvalues)
    return 2.0 * tau * float(np.mean(lam**-2.0)) / (snr**2 * tol**2)


def second_moment_averaging_time(d: int, kappa: float, tol: float, tau: float,
                                 eigenvalues: Sequence[float] | None = None) -> float:
    """Averaging time (s) for a relative Frobenius error ``tol`` of a time-averaged ``x x^T`` (see module
    docstring). O(m^2) in the grid size m <= 2048."""
    lam, w = _spectrum(d, kappa, eigenvalues)
    inv = 1.0 / lam
    cross = float(np.sum(2.0 * np.outer(inv, inv) / (lam[:, None] + lam[None, :]))) * w * w
    diag = float(np.sum(inv**3)) * w
    norm = float(np.sum(inv**2)) * w
    return tau * (cross + diag) / (tol**2 * norm)


def logdet_protocol_time(d: int, kappa: float, tol: float, tau: float,
                         eigenvalues: Sequence[float] | None = None) -> float:
    """Jarzynski ladder time (s) for an absolute log-determinant error ``tol`` (see module docstring)."""
    lam, w = _spectrum(d, kappa, eigenvalues)
    return 2.0 * kappa * tau * float(np.sum((1.0 - lam) ** 2 / lam)) * w / tol**2


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


def device_cost(op: Operation, d: int, kappa: float, tol: float = 1e-2, device: DeviceHardware | None = None,
                host: DigitalHardware | None = None, accumulation: Literal["host", "analog"] = "host",
                roundings: int = 1, eigenvalues: Sequence[float] | None = None) -> CostEstimate:
    """Predicted device time and energy of one operation.

    ``roundings`` randomised roundings of the programmed matrix multiply the programming cost (the total
    averaging time is shared among them, so dynamics time does not grow). ``accumulation`` says where the
    second moments ``x x^T`` of ``inv``/``expm``/``lyapunov`` are summed (see module docstring).
    """
    _check_problem(op, d, kappa, tol)
    dev = device or DeviceHardware()
    hw = host or DigitalHardware()
    if accumulation not in ("host", "analog"):
        raise ValueError(f"accumulation must be 'host' or 'analog'; got {accumulation!r}")
    if isinstance(roundings, bool) or not isinstance(roundings, int) or roundings < 1:
        raise ValueError(f"roundings must be a positive int; got {roundings!r}")
    tau = dev.time_constant_s
    eps_stat = tol * math.sqrt(3.0) / 2.0
    second_moment = op in ("inv", "expm", "lyapunov")

    if op == "solve":
        t_burn = kappa * tau * math.log(2.0 / tol)
        t_avg = solve_averaging_time(d, kappa, eps_stat, tau, dev.snr, eigenvalues)
    elif second_moment:
        t_burn = 0.5 * kappa * tau * math.log(2.0 / tol)
        t_avg = second_moment_averaging_time(d, kappa, eps_stat, tau, eigenvalues)
    else:  # logdet: equilibrate at the reference, then the quench ladder
        t_burn = 0.5 * kappa * tau * math.log(2.0 / tol)
        t_avg = logdet_protocol_time(d, kappa, tol, tau, eigenvalues)
    n_samples = max(1, math.ceil(t_avg / dev.sampling_interval_s))
    # logdet needs the quadratic form x^T dA x per stage; counted like one x x^T update per sample
    breakdown, energy = run_cost(dev, d, n_programmed=roundings * d * d, burn_in_s=roundings * t_burn,
                                 averaging_s=t_avg, n_samples=n_samples,
                                 second_moment=second_moment or op == "logdet", accumulation=accumulation, host=hw)
    return CostEstimate(op=op, d=d, kappa=float(kappa), tol=float(tol), platform=dev.name,
                        time_s=sum(breakdown.values()), energy_j=sum(energy.values()), breakdown=breakdown,
                        energy_breakdown=energy,
                        settings={"accumulation": accumulation, "roundings": roundings, "samples": n_samples,
                                  "spectrum": "given" if eigenvalues is not None else "uniform on [1/kappa, 1]",
                                  "device": asdict(dev)})


def run_cost(device: DeviceHardware, d: int, n_programmed: int, burn_in_s: float, averaging_s: float,
             n_samples: int, second_moment: bool, accumulation: str = "host",
             host: DigitalHardware | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Time (s) and energy (J) breakdowns of one device run: programming ``n_programmed`` values through
    the DACs, ``burn_in_s + averaging_s`` of dynamics, ``n_samples`` readouts of ``d`` cells, and (for
    second moments) accumulating ``x x^T`` on the host or in on-chip integrators. (The simulator,
    :mod:`thermoai.thermo.linalg`, charges through :meth:`thermoai.thermo.device.Device.operating_cost`.)"""
    hw = host or DigitalHardware()
    dac_channels = device.dac_channels or d
    adc_channels = device.adc_channels or d
    t_program = n_programmed / (dac_channels * device.dac_rate_hz)
    n_adc = n_samples * d
    t_readout = n_adc / (adc_channels * device.adc_rate_hz)  # readout overlaps the dynamics unless slower
    t_avg = max(averaging_s, t_readout)
    t_dyn = burn_in_s + t_avg
    t_accum, e_accum = 0.0, 0.0
    if second_moment:
        if accumulation == "host":
            t_flops = 2.0 * d * d * n_samples / (hw.flop_rate * hw.efficiency)
            t_accum = max(0.0, t_flops - t_dyn)  # overlaps with the dynamics
            e_accum = hw.power_w * t_flops
        else:
            e_accum = d * d * device.power_per_accumulator_w * t_dyn
    static_w = d * device.power_per_cell_w + d * d * device.power_per_coupling_w
    breakdown = {"programming": t_program, "burn_in": burn_in_s, "averaging": t_avg, "accumulation": t_accum}
    energy = {"programming": n_programmed * device.dac_energy_j, "dynamics": static_w * t_dyn,
              "readout": n_adc * device.adc_energy_j, "accumulation": e_accum}
    return breakdown, energy


def compare(op: Operation, d: int, kappa: float, tol: float = 1e-2, device: DeviceHardware | None = None,
            digital: DigitalHardware | None = None, accumulation: Literal["host", "analog"] = "host",
            algorithm: str | None = None, roundings: int = 1) -> Comparison:
    """Which wins, by how much: ``compare("solve", 4096, 100)`` -> :class:`Comparison` (ratios are
    digital / device; above 1 the device is faster or uses less energy)."""
    dev_cost = device_cost(op, d, kappa, tol, device=device, host=digital, accumulation=accumulation,
                           roundings=roundings)
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


__all__ = ["OPERATIONS", "DigitalHardware", "DeviceHardware", "CostEstimate", "Comparison", "digital_cost",
           "device_cost", "run_cost", "compare", "crossover_dimension", "lasting_win", "solve_averaging_time",
           "second_moment_averaging_time", "logdet_protocol_time"]
