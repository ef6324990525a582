r"""A thermodynamic device: physical parameters, non-idealities, and time/energy accounting.

The model is a stochastic processing unit (SPU) in the sense of Melanson et al., "Thermodynamic computing
system for AI applications", Nat. Commun. 16, 3757 (2025), arXiv 2312.04836: ``n_cells`` analog unit
cells, all-to-all coupled through programmable couplings, each with an injected Gaussian noise source
and read out through an ADC. Its state ``x`` (in *state units*: one unit is ``full_scale_voltage`` volts
on a cell) follows the overdamped OU dynamics of :mod:`thermoai.thermo.ou` in device time
``s = t / time_constant``::

    dx = -A (x - b) ds + sqrt(D_eff) dW_s,    D_eff = noise_scale^2 D + 2 sigma_th^2 I,

so ``A`` is in units of 1 / time_constant (a coupling of 1 relaxes in one time constant) and
``sigma_th^2 = k_B T / (C V_fs^2)`` is the kT/C thermal floor of a cell (negligible at the defaults:
4e-12 state units^2). With ``thermal="couplings"`` (:meth:`Device.process`) the thermal part is instead
the Johnson noise of the coupling conductances themselves, ``2 sigma_th^2 A M^-1`` for a network
``M dx = -G (x - b) ds`` (``A = M^-1 G``, ``M`` the capacitance matrix in units of ``capacitance``,
identity by default): the fluctuation-dissipation noise whose stationary covariance is ``sigma_th^2 M^-1``.

Non-idealities, each with an error model that the tests check:

* **Programming** (:meth:`Device.program`): a matrix or vector is scaled so its largest entry uses the
  DAC's full scale, rounded to ``dac_bits`` signed bits (step ``q = max|M| / (2^(bits-1) - 1)``; error
  uniform in [-q/2, q/2], variance ``q^2 / 12``; or unbiased stochastic rounding), then every entry is
  multiplied by ``1 + mismatch * eps`` with ``eps ~ N(0, 1)``: the relative spread of the physical
  couplings. The mismatch pattern is a property of the chip: it is drawn from ``seed``, per cell pair,
  so the same device gives the same errors each time it is programmed. Each physical array of the chip
  (``array=``: the cells' couplings, a second capacitance network, a crossbar, bias sources) has its own
  independent, reproducible pattern. A symmetric matrix uses one physical coupling per cell pair and
  stays symmetric.
* **Reading** (:meth:`Device.read`): readout noise ``N(0, readout_noise^2)``, clipping to
  ``[-adc_range, adc_range]`` and rounding to ``adc_bits`` (step ``adc_range / (2^(bits-1) - 1)``).

Every operation returns ``(result, Cost)``: the device time in seconds and the energy in joules
(:meth:`Device.stream`, which hands its snapshots to a callback, returns the Cost alone). The dynamics
(:meth:`Device.process`) and the cost primitives (:meth:`Device.program_cost`, :meth:`Device.operating_cost`,
:meth:`Device.accumulation_cost`) are defined here only. This is the one description of the hardware:
:mod:`thermoai.thermo.linalg` simulates runs on it and :mod:`thermoai.thermo.cost` predicts runs on it,
both through the run plans of :mod:`thermoai.thermo.planning`.

Presets (:meth:`Device.pcb_prototype`, :meth:`Device.projected_chip`) name the hardware the reports use.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
from torch import Tensor

from thermoai.thermo.digital import DigitalHardware
from thermoai.thermo.ou import OUProcess

__all__ = ["Cost", "Device", "quantise", "BOLTZMANN"]

BOLTZMANN = 1.380649e-23  # J / K (exact, SI 2019)
_CHUNK_STATES = 2_000_000  # states (n * steps * d) that Device.stream holds at once
CELL_ARRAY = "couplings"  # the name of the cells' own coupling array in Device.program
THERMAL = ("cells", "couplings")


@dataclass(frozen=True)
class Cost:
    """Device time (s) and energy (J) of an operation. ``a + b`` runs a then b (times and energies add);
    ``Cost.parallel(a, b)`` runs them side by side (time is the max, energies add); ``k * cost`` repeats."""

    time: float = 0.0
    energy: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(self.time + other.time, self.energy + other.energy)

    def __radd__(self, other):  # lets sum() of costs start from 0
        if other == 0:
            return self
        return self.__add__(other)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.time * k, self.energy * k)

    __rmul__ = __mul__

    @staticmethod
    def parallel(*costs: "Cost") -> "Cost":
        return Cost(max((c.time for c in costs), default=0.0), sum(c.energy for c in costs))

    @property
    def power(self) -> float:
        """Average power (W) over the operation."""
        return self.energy / self.time if self.time > 0 else 0.0


def quantise(
    x: Tensor,
    bits: int,
    full_scale: float | Tensor,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Round ``x`` to a signed ``bits``-bit grid with step ``full_scale / (2^(bits-1) - 1)``, clipping to
    ``[-full_scale, full_scale]``.

    ``rounding="nearest"`` has error uniform in [-q/2, q/2] (variance q^2/12) for values spread over many
    steps; ``"stochastic"`` rounds up with probability equal to the fractional part, unbiased, variance
    ``f (1 - f) q^2`` (at most q^2/4), the randomised rounding of arXiv 2401.16231.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 2:
        raise ValueError(f"bits must be an integer >= 2; got {bits!r}")
    levels = 2 ** (bits - 1) - 1
    fs = torch.as_tensor(full_scale, dtype=x.dtype, device=x.device)
    if not bool((fs > 0).all()):
        return torch.zeros_like(x)
    q = fs / levels
    u = torch.clamp(x / q, -levels, levels)
    if rounding == "nearest":
        r = torch.round(u)
    elif rounding == "stochastic":
        lo = torch.floor(u)
        r = lo + (torch.rand(u.shape, dtype=u.dtype, device=u.device, generator=generator) < (u - lo)).to(u.dtype)
    else:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}")
    return r * q


@dataclass(frozen=True)
class Device:
    """Physical parameters of a thermodynamic device (an SPU-like array of coupled noisy cells).

    Defaults follow the 8-cell SPU of Melanson et al. (Nat. Commun. 16, 3757, 2025; arXiv 2312.04836)
    where it fixes them, and are argued otherwise (each is a plain field: replace it with
    ``dataclasses.replace(device, n_cells=64)``).

    Attributes (units):
        n_cells: number of unit cells (SPU: 8). A d-dimensional problem needs d <= n_cells.
        time_constant (s): relaxation time of a cell at unit coupling. 1e-6: the SPU's RLC cells relax on
            sqrt(LC) ~ RC ~ microseconds (thermox's matrix-exponential study plots device time in us).
        temperature (K): 300, room temperature; sets the kT/C thermal floor.
        capacitance (F): 1e-9 per cell (nF scale, assumed: the SPU values were not available); only enters
            the thermal floor.
        full_scale_voltage (V): volts per state unit, 1.0.
        noise_scale: amplitude of the injected noise sources relative to the requested diffusion (the
            SPU's noise is injected with a programmable amplitude, not only thermal); 1.0.
        dac_bits: resolution of programmed couplings and biases; 8, typical of digital potentiometers
            and switched-capacitor banks on a PCB prototype (argued, not from the paper).
        adc_bits: readout resolution; 12, a common DAQ/microcontroller ADC (argued).
        adc_range: readout full scale, +-4 state units (4 standard deviations of a unit-variance cell).
        readout_noise: std of additive readout noise in state units; 1e-3 (half a 12-bit LSB of +-4).
        mismatch: relative std of each physical coupling; 0.01, the tolerance of precision passive
            components (component imprecision is the error source of arXiv 2401.16231).
        sampling_interval (s): time between ADC snapshots, 1e-6 (1 MS/s).
        power_per_cell (W): static power of a cell (op-amps, noise source), 1e-3 for discrete PCB
            electronics (argued; an integrated design would be orders of magnitude lower).
        program_time_per_value (s): time for one DAC channel to write one coupling or bias, 1e-6 (a
            serial DAC/SPI write).
        program_energy_per_value (J): energy to write one value, 1e-10 (argued: ~100 pJ per DAC write).
        dac_channels: DAC channels writing in parallel; 1 (serial programming, a PCB prototype); None
            means one per cell (``n_cells``), as an integrated chip would have.
        adc_energy_per_conversion (J): 1e-10, a 12-bit 1 MS/s ADC at a Walden figure of merit of
            ~25 fJ per conversion step (25e-15 * 2^12).
        power_per_coupling (W): static power of each programmed coupling while the cells run; 0 on the
            PCB (passive resistors/digital potentiometers; their draw is in ``power_per_cell``).
        analog_accumulators: whether second moments ``x x^T`` are integrated on the chip (d^2 analog
            multiply-integrators) instead of summed from the readouts on the digital host; False.
        power_per_accumulator (W): static power of one analog multiply-integrator, 1e-6 (assumed).
        seed: fixes the chip's mismatch pattern (another seed is another chip).

    Cost formulas (the only ones in thermoai, used by the simulator and the predictor alike):
    programming ``n`` values takes ``ceil(n / channels) program_time_per_value`` and
    ``n program_energy_per_value``; a run keeping ``d`` cells on for ``t`` seconds costs
    ``(d power_per_cell + d^2 power_per_coupling) t`` plus ``adc_energy_per_conversion`` per conversion (other
    counts of cells and couplings, e.g. a circuit's sigmoid cells and crossbars, through
    :meth:`operating_cost`'s ``cells`` and ``couplings``);
    accumulating second moments costs ``2 d^2`` host flops per snapshot (or ``d^2 power_per_accumulator t``
    on the chip), see :meth:`accumulation_cost`.
    """

    n_cells: int = 8
    time_constant: float = 1e-6
    temperature: float = 300.0
    capacitance: float = 1e-9
    full_scale_voltage: float = 1.0
    noise_scale: float = 1.0
    dac_bits: int = 8
    adc_bits: int = 12
    adc_range: float = 4.0
    readout_noise: float = 1e-3
    mismatch: float = 0.01
    sampling_interval: float = 1e-6
    power_per_cell: float = 1e-3
    program_time_per_value: float = 1e-6
    program_energy_per_value: float = 1e-10
    dac_channels: int | None = 1
    adc_energy_per_conversion: float = 1e-10
    power_per_coupling: float = 0.0
    analog_accumulators: bool = False
    power_per_accumulator: float = 1e-6
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "analog_accumulators":
                if not isinstance(v, bool):
                    raise TypeError(f"Device.analog_accumulators must be True or False; got {v!r}")
                continue
            if f.name == "dac_channels" and v is None:
                continue
            if f.name in ("n_cells", "dac_bits", "adc_bits", "seed", "dac_channels"):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError(f"Device.{f.name} must be an integer; got {type(v).__name__}")
                low = {"n_cells": 1, "dac_bits": 2, "adc_bits": 2, "seed": -(2**63), "dac_channels": 1}[f.name]
                if v < low:
                    raise ValueError(f"Device.{f.name} must be >= {low}; got {v}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"Device.{f.name} must be a number; got {type(v).__name__}")
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"Device.{f.name} must be finite and non-negative; got {v}")
            strictly = ("time_constant", "capacitance", "full_scale_voltage", "adc_range", "sampling_interval")
            if f.name in strictly and v == 0:
                raise ValueError(f"Device.{f.name} must be positive; got {v}")

    # --- presets ------------------------------------------------------------------------------------

    @classmethod
    def pcb_prototype(cls, n_cells: int = 8, **overrides: Any) -> "Device":
        """Today's discrete-component prototype: the field defaults (an SPU-like board of Melanson et al.,
        Nat. Commun. 16, 3757, 2025, with the figures argued in the class docstring): 1 us cells, 8-bit
        DACs written serially at 1 us and 100 pJ per value, 12-bit 1 MS/s ADCs, 1 % mismatch, 1 mW per cell."""
        return cls(n_cells=n_cells, **overrides)

    @classmethod
    def projected_chip(cls, n_cells: int = 4096, **overrides: Any) -> "Device":
        """The projected integrated chip of the crossover report (docs/results/thermo_crossover.md); every
        figure is an assumption stated there, none a measurement:

        * time constant and sampling interval 1 us: the SPU's RLC cells (research note thermo.md §1.6, §2.3);
        * one 100 MS/s DAC per cell (``program_time_per_value = 1e-8``, ``dac_channels = None``) at 1 pJ per
          write; 12-bit ADCs at 10 pJ per conversion; 8-bit DACs; no mismatch (set ``mismatch`` to study
          it);
        * readout noise ``sqrt(2) 1e-3`` state units: together with the kT/C floor, a long-run noise equal to
          that of a cell with stationary rms 1e-3 of full scale relaxing at ``1/tau`` (signal-to-noise 1000,
          see :attr:`signal_to_noise`);
        * 1 mW per cell, 0.1 uW per coupling, 1 uW per analog accumulator (used when
          ``analog_accumulators=True``).
        """
        values: dict[str, Any] = dict(n_cells=n_cells, time_constant=1e-6, sampling_interval=1e-6,
                                      program_time_per_value=1e-8, program_energy_per_value=1e-12, dac_channels=None,
                                      adc_energy_per_conversion=1e-11, readout_noise=math.sqrt(2) * 1e-3,
                                      mismatch=0.0, power_per_cell=1e-3, power_per_coupling=1e-7,
                                      power_per_accumulator=1e-6)
        values.update(overrides)
        return cls(**values)

    # --- derived quantities -------------------------------------------------------------------------

    @property
    def signal_to_noise(self) -> float:
        """Full scale (one state unit) over the rms of the equivalent cell noise that limits a time average:
        the kT/C floor plus white readout noise, ``1 / sqrt(sigma_th^2 + readout_noise^2 dt / (2 tau))``
        (white noise of variance ``rho^2`` per snapshot contributes ``rho^2 dt`` to the long-run variance, an
        OU cell of variance ``s^2`` relaxing at ``1/tau`` contributes ``2 s^2 tau``). Injected noise (a
        sampler's diffusion) comes on top."""
        noise2 = self.thermal_variance + self.readout_noise**2 * self.sampling_interval / (2 * self.time_constant)
        return 1.0 / math.sqrt(noise2) if noise2 > 0 else math.inf

    @property
    def parallel_dac_channels(self) -> int:
        """DAC channels writing at once (``dac_channels``, or ``n_cells`` when that is None)."""
        return self.n_cells if self.dac_channels is None else self.dac_channels

    @property
    def thermal_variance(self) -> float:
        """kT/C floor of one cell in state units^2: ``k_B T / (C V_fs^2)``."""
        return BOLTZMANN * self.temperature / (self.capacitance * self.full_scale_voltage**2)

    def dac_step(self, full_scale: float) -> float:
        """Programming step for a matrix whose largest |entry| is ``full_scale``."""
        return full_scale / (2 ** (self.dac_bits - 1) - 1)

    @property
    def adc_step(self) -> float:
        return self.adc_range / (2 ** (self.adc_bits - 1) - 1)

    def to_device_time(self, seconds: float) -> float:
        """Physical seconds to device time units (time constants)."""
        return seconds / self.time_constant

    # --- operations ---------------------------------------------------------------------------------

    def _check_fits(self, x: Tensor, name: str) -> None:
        if x.dim() not in (1, 2) or any(s > self.n_cells for s in x.shape):
            raise ValueError(
                f"{name} must be a vector or matrix with at most n_cells = {self.n_cells} rows/columns; got "
                f"shape {tuple(x.shape)} (use dataclasses.replace(device, n_cells=...) for a larger device)"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must have finite entries")

    def program(
        self, values, generator: torch.Generator | None = None, rounding: str = "nearest", *,
        array: str = CELL_ARRAY, array_cells: int | None = None,
    ) -> tuple[Tensor, Cost]:
        """Program a (d, d) coupling matrix or a (d,) bias vector: DAC quantisation, then mismatch.

        Returns the values the device actually holds (same shape and dtype) and the programming cost
        (``numel`` serial writes). ``generator`` drives stochastic rounding only; the mismatch is the
        chip's fixed pattern (drawn from ``seed`` per cell pair or cell), identical at every programming:
        use ``dataclasses.replace(device, seed=k)`` for another chip. A symmetric matrix is programmed
        with one physical coupling per cell pair (its upper triangle, mirrored), so it stays symmetric.

        ``array`` names the physical array written: ``"couplings"`` (the default) is the cells' own
        coupling array, at most ``n_cells`` rows and columns. Any other name is a separate array of the
        chip (a second capacitance network, a crossbar, bias sources) with its own pattern, independent of
        every other array's and reproducible (drawn from ``(seed, array)``); such an array may have more
        rows than the chip has cells: it has ``max(n_cells, array_cells, *values.shape)`` rows and columns
        (``array_cells`` fixes that size when blocks of different shapes are written into the same array,
        so that a position keeps its error). Two arrays of the same shape then carry independent errors,
        which a ratio of them (``C^-1 G``) does not cancel.
        """
        if not isinstance(array, str) or not array:
            raise TypeError(f"array must be a non-empty string naming a physical array; got {array!r}")
        if array_cells is not None and (isinstance(array_cells, bool) or not isinstance(array_cells, int)
                                        or array_cells < 1):
            raise ValueError(f"array_cells must be a positive integer or None; got {array_cells!r}")
        x = torch.as_tensor(values)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if array != CELL_ARRAY or array_cells is not None:
            if x.dim() not in (1, 2):
                raise ValueError(f"values must be a vector or matrix; got shape {tuple(x.shape)}")
            size = max(self.n_cells, array_cells or 0, *x.shape)
            seed = (self.seed * 1_000_003 + zlib.crc32(array.encode())) % (2**62)
            programmed = dataclasses.replace(self, seed=seed, n_cells=size)._program(x, generator, rounding)
        else:
            programmed = self._program(x, generator, rounding)
        return programmed, self.program_cost(x.numel())

    def _program(self, x: Tensor, generator: torch.Generator | None, rounding: str) -> Tensor:
        """DAC rounding and this device's own mismatch pattern (``seed``, ``n_cells`` rows)."""
        self._check_fits(x, "values")
        symmetric = x.dim() == 2 and x.shape[0] == x.shape[1] and bool(torch.equal(x, x.mT))
        full = float(x.detach().abs().max()) if x.numel() else 0.0
        q = quantise(x, self.dac_bits, full, rounding, generator)
        if self.mismatch > 0:
            # one frozen pattern per cell pair (matrices) or per cell (vectors)
            gen = torch.Generator().manual_seed(self.seed * 2 + (1 if x.dim() == 1 else 0))
            eps = torch.randn((self.n_cells,) * x.dim(), dtype=torch.float64, generator=gen)
            eps = eps[tuple(slice(0, s) for s in x.shape)].to(dtype=x.dtype, device=x.device)
            q = q * (1 + self.mismatch * eps)
        if symmetric:
            q = torch.triu(q) + torch.triu(q, 1).mT
        return q

    def program_cost(self, n_values: int) -> Cost:
        """Writing ``n_values`` couplings or biases: ``ceil(n / channels)`` rounds of
        ``program_time_per_value`` (channels: :attr:`parallel_dac_channels`), ``n program_energy_per_value``."""
        rounds = -(-int(n_values) // self.parallel_dac_channels)
        return Cost(rounds * self.program_time_per_value, n_values * self.program_energy_per_value)

    def read(self, x, generator: torch.Generator | None = None) -> tuple[Tensor, Cost]:
        """Read states (..., d) through the ADC: readout noise, clipping to +-adc_range, quantisation.

        Cost: one snapshot of all d cells per ``sampling_interval``, ``numel`` conversions.
        """
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if x.dim() == 0 or x.shape[-1] > self.n_cells:
            raise ValueError(f"x must have shape (..., d) with d <= n_cells = {self.n_cells}; got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x must have finite entries")
        y = x
        if self.readout_noise > 0:
            y = y + self.readout_noise * torch.randn(
                x.shape, dtype=x.dtype, device=x.device, generator=generator
            )
        y = quantise(y, self.adc_bits, self.adc_range)
        snapshots = x.numel() // x.shape[-1]
        return y, Cost(snapshots * self.sampling_interval, x.numel() * self.adc_energy_per_conversion)

    def sample_times(self, duration: float, burn_in: float = 0.0) -> Tensor:
        """Physical times (s, float64) of the snapshots :meth:`run` reads: ``burn_in + k * sampling_interval``
        for k = 1 .. floor(duration / sampling_interval)."""
        n_steps = self._n_steps(duration)
        return burn_in + self.sampling_interval * torch.arange(1, n_steps + 1, dtype=torch.float64)

    def _n_steps(self, duration: float) -> int:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
            raise TypeError(f"duration must be a finite number of seconds; got {duration!r}")
        n_steps = int(math.floor(duration / self.sampling_interval * (1 + 1e-12)))
        if n_steps < 1:
            raise ValueError(
                f"duration must be at least one sampling_interval ({self.sampling_interval} s); got {duration}"
            )
        return n_steps

    def process(self, A, D=2.0, b=None, *, thermal: str = "cells", capacitance=None) -> OUProcess:
        """The OU process that cells with programmed couplings ``A`` (d, d) follow, in device time (time
        constants): ``dx = -A (x - b) ds + sqrt(D_eff) dW_s`` with ``D_eff = noise_scale^2 D + D_th``.

        ``D`` is the requested diffusion in state units^2 per time constant: a scalar (``D I``), (d,)
        (``diag(D)``) or (d, d). ``b`` (d,) is the fixed point (zeros if None). The thermal part ``D_th``:

        * ``thermal="cells"`` (default): ``2 sigma_th^2 I``, each cell's own kT/C floor;
        * ``thermal="couplings"``: the Johnson noise of the coupling conductances of a network
          ``M dx = -G (x - b) ds`` with ``A = M^-1 G`` (``capacitance``: the (d, d) SPD matrix ``M`` in units
          of :attr:`capacitance`, identity if None): ``D_th = 2 sigma_th^2 M^-1 G M^-1 = 2 sigma_th^2 A M^-1``
          (symmetrised). Alone it gives the stationary covariance ``sigma_th^2 M^-1`` whatever ``G`` is (the
          fluctuation-dissipation theorem).

        Raises ValueError for an unstable ``A``, an invalid ``D``, ``thermal`` or ``capacitance``, or a matrix
        larger than the device."""
        if thermal not in THERMAL:
            raise ValueError(f"thermal must be one of {THERMAL}; got {thermal!r}")
        A = torch.as_tensor(A)
        if not A.is_floating_point():
            A = A.to(torch.get_default_dtype())
        if A.dim() != 2:
            raise ValueError(f"A must be a (d, d) matrix; got shape {tuple(A.shape)}")
        self._check_fits(A, "A")
        d = A.shape[0]
        eye = torch.eye(d, dtype=A.dtype, device=A.device)
        Dt = torch.as_tensor(D, dtype=A.dtype, device=A.device)
        if Dt.dim() == 0:
            Dt = Dt * eye
        elif Dt.dim() == 1:
            if Dt.shape[0] != d:
                raise ValueError(f"D as a vector must have shape ({d},); got {tuple(Dt.shape)}")
            Dt = torch.diag(Dt)
        if thermal == "cells":
            if capacitance is not None:
                raise ValueError("capacitance is used with thermal='couplings' only")
            D_th = 2 * self.thermal_variance * eye
        elif capacitance is None:
            D_th = self.thermal_variance * (A + A.mT)
        else:
            M = torch.as_tensor(capacitance, dtype=A.dtype, device=A.device)
            if M.shape != (d, d) or not bool(torch.isfinite(M).all()):
                raise ValueError(f"capacitance must be a finite ({d}, {d}) matrix; got shape {tuple(M.shape)}")
            LM, info = torch.linalg.cholesky_ex(0.5 * (M + M.mT))
            if int(info) != 0:
                raise ValueError("capacitance must be symmetric positive definite (a Maxwell matrix)")
            AMinv = torch.cholesky_solve(A.mT, LM).mT  # A M^-1
            D_th = self.thermal_variance * (AMinv + AMinv.mT)
        return OUProcess(A, self.noise_scale**2 * Dt + D_th, b)

    def operating_cost(self, n_runs: int, d: int, seconds: float, conversions: int, *,
                       cells: int | None = None, couplings: int | None = None) -> Cost:
        """Cost of ``n_runs`` runs made one after another, each keeping ``cells`` cells (default ``d``) and
        ``couplings`` couplings (default ``d^2``) on for ``seconds``, with ``conversions`` ADC conversions in
        all: time ``n_runs seconds``, energy ``n_runs (cells power_per_cell + couplings power_per_coupling)
        seconds + conversions adc_energy_per_conversion``. The cost model of :meth:`run` and :meth:`stream`;
        protocols that drive the cells otherwise (e.g. a quench ladder) or that keep other elements on
        (a circuit's sigmoid cells and crossbar couplings: pass their counts) charge through it too."""
        cells = d if cells is None else cells
        couplings = d * d if couplings is None else couplings
        for name, v in (("cells", cells), ("couplings", couplings)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer; got {v!r}")
        static_w = cells * self.power_per_cell + couplings * self.power_per_coupling
        energy = n_runs * static_w * seconds + conversions * self.adc_energy_per_conversion
        return Cost(n_runs * seconds, energy)

    def accumulation_cost(self, d: int, n_snapshots: int, seconds: float,
                          host: DigitalHardware | None = None) -> Cost:
        """Cost of forming second moments ``sum_k x_k x_k^T`` over ``n_snapshots`` snapshots of ``d`` cells
        taken during ``seconds`` of dynamics.

        With :attr:`analog_accumulators`, ``d^2`` on-chip integrators run alongside the cells: no extra time,
        energy ``d^2 power_per_accumulator seconds``. Otherwise the digital ``host`` (a
        :class:`thermoai.thermo.digital.DigitalHardware`, default the H100 figures) adds ``2 d^2`` flops per
        snapshot while the dynamics run: time only where it is slower than them,
        ``max(0, t_flops - seconds)``, energy ``host.power_w t_flops``."""
        if self.analog_accumulators:
            return Cost(0.0, d * d * self.power_per_accumulator * seconds)
        host = DigitalHardware() if host is None else host
        t_flops = 2.0 * d * d * n_snapshots / (host.flop_rate * host.efficiency)
        return Cost(max(0.0, t_flops - seconds), host.power_w * t_flops)

    def stream(
        self,
        A,
        b=None,
        duration: float = 1e-3,
        D=2.0,
        x0=None,
        n: int = 1,
        burn_in: float = 0.0,
        generator: torch.Generator | None = None,
        *,
        consume: Callable[[Tensor], Any],
    ) -> Cost:
        """:meth:`run` without keeping the snapshots: they are handed to ``consume(chunk)`` in time order,
        chunk by chunk (``chunk`` (n, S, d) as read, at most about 2e6 states at once), so long averages
        run in bounded memory. Same arguments, dynamics, noise draws and cost as :meth:`run`, except that
        ``b`` may also be (n, d): one fixed point per run (runs that differ only in their programmed bias).

        The cells are simulated exactly (:meth:`process`): one exact jump over the burn-in, then exact
        transitions between consecutive snapshots. Returns the :class:`Cost` (see :meth:`run`).
        """
        proc = self.process(A, D)
        d = proc.dim
        if isinstance(burn_in, bool) or not isinstance(burn_in, (int, float)) or not (0 <= burn_in < math.inf):
            raise ValueError(f"burn_in must be a non-negative number of seconds; got {burn_in!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer; got {n!r}")
        n_steps = self._n_steps(duration)
        if x0 is not None:
            x0 = proc._check_state(x0, "x0").to(proc.dtype)
            if x0.dim() == 2:
                if n not in (1, x0.shape[0]):
                    raise ValueError(f"n = {n} does not match x0 of shape {tuple(x0.shape)}")
                n = x0.shape[0]
            elif x0.dim() != 1:
                raise ValueError(f"x0 must have shape (d,) or (n, d); got {tuple(x0.shape)}")
        if b is None:
            shift = torch.zeros(n, d, dtype=proc.dtype, device=proc.device)
        else:
            shift = torch.as_tensor(b, dtype=proc.dtype, device=proc.device)
            if shift.shape not in ((d,), (n, d)) or not bool(torch.isfinite(shift).all()):
                raise ValueError(f"b must be finite with shape ({d},) or ({n}, {d}); got {tuple(shift.shape)}")
            shift = shift.expand(n, d)
        # the cells hold x = y + b with y the zero-mean process: the same linear dynamics for every b
        y = -shift if x0 is None else x0.expand(n, d) - shift
        burn = burn_in / self.time_constant
        if burn > 0:
            y = proc.sample(y, torch.tensor([0.0, burn], dtype=torch.float64), generator=generator)[:, -1]
        dt = self.sampling_interval / self.time_constant
        chunk = max(1, _CHUNK_STATES // (n * d))
        done = 0
        while done < n_steps:
            S = min(chunk, n_steps - done)
            path = proc.sample(y, dt * torch.arange(S + 1, dtype=torch.float64), generator=generator)[:, 1:]
            y = path[:, -1]
            consume(self.read(path + shift[:, None, :], generator=generator)[0])
            done += S
        return self.operating_cost(n, d, burn_in + n_steps * self.sampling_interval, n * n_steps * d)

    def run(
        self,
        A,
        b=None,
        duration: float = 1e-3,
        D=2.0,
        x0=None,
        n: int = 1,
        burn_in: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Cost]:
        """Run the device's OU dynamics with programmed ``A`` (units 1/time_constant) and ``b``, and read
        snapshots through the ADC.

        Args:
            A: (d, d) programmed couplings (the output of :meth:`program`); must be stable.
            b: (d,) fixed point of the programmed cells (state units), zeros if None.
            duration (s): reading window; snapshots every ``sampling_interval`` (see :meth:`sample_times`).
            D: requested diffusion in state units^2 per time constant (scalar, (d,) or (d, d)); the default
                2 gives stationary covariance A^{-1} for symmetric A. Scaled by ``noise_scale^2``, plus the
                thermal floor (:meth:`process`).
            x0: (d,) or (n, d) start at time 0 (state units); zeros (cells reset) if None.
            n: number of repetitions, run one after another (taken from x0 when it is (n, d)).
            burn_in (s): time run before the first snapshot, not read.
            generator: for the dynamics' noise and the readout noise.

        Returns:
            samples (n, T, d) as read, T = floor(duration / sampling_interval), at :meth:`sample_times`;
            Cost with time ``n (burn_in + duration)`` and energy ``n d power_per_cell (burn_in + duration)``
            plus ``n T d`` ADC conversions (:meth:`operating_cost`). :meth:`stream` does the same run without
            keeping the samples.
        """
        chunks: list[Tensor] = []
        cost = self.stream(A, b, duration, D, x0, n, burn_in, generator, consume=chunks.append)
        return torch.cat(chunks, dim=1), cost
