"""What every thermodynamic linear-algebra operation shares: input checks, scaling, the programming error
model and its floor, streamed moments, and the :class:`Report` (see the package docstring)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from thermoai.thermo.device import Cost, Device
from thermoai.thermo.ou import as_real_tensor, check_finite
from thermoai.thermo.planning import Plan

BATCHES = 16  # batch means for the error estimate of lyapunov/expm


class ToleranceWarning(UserWarning):
    """The requested tolerance is below the floor that the device's programming (DAC bits, mismatch) allows."""


@dataclass(frozen=True)
class Report:
    """What a device computation cost and how accurate it is.

    ``estimated_error`` is relative (2-norm for solve, Frobenius otherwise) except for ``logdet``
    (absolute); it combines in quadrature the entries of ``error_breakdown`` (``statistical`` of the run
    made, ``burn_in`` bound, ``quantisation`` model of the programmed matrix). ``predicted_error`` is what the
    :class:`~thermoai.thermo.planning.Plan` was designed to reach (without programming errors); ``plan`` is
    that plan, whose cost equals ``device_time_s``/``energy_j`` (the cost model of
    :mod:`thermoai.thermo.cost`). ``kappa`` is ``1 / lambda_min`` of the Gershgorin-scaled drift (the run
    length's condition number, >= the usual one); ``kappa_2`` is the usual 2-norm condition number of ``A``.
    Times in seconds, energy in joules.
    """

    device_time_s: float
    energy_j: float
    estimated_error: float
    error_breakdown: dict[str, float]
    predicted_error: float
    burn_in_s: float
    averaging_s: float
    n_samples: int
    roundings: int
    kappa: float
    kappa_2: float
    scale: float
    plan: Plan
    cost_breakdown: dict[str, Cost]
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_run(cls, plan: Plan, cost: Cost, errors: dict[str, float], *, A: Tensor, scale: float, device: Device,
               **settings: Any) -> "Report":
        """The report of a run made to ``plan`` that cost ``cost``, with its estimated ``errors``."""
        s = torch.linalg.svdvals(A)
        settings = {"op": plan.op, "tol": plan.tol, **plan.settings, **settings,
                    "device": {k: getattr(device, k) for k in device.__dataclass_fields__}}
        return cls(device_time_s=cost.time, energy_j=cost.energy,
                   estimated_error=math.sqrt(sum(e**2 for e in errors.values())), error_breakdown=errors,
                   predicted_error=plan.total_error, burn_in_s=plan.burn_in_s,
                   averaging_s=plan.averaging_s, n_samples=plan.n_samples * plan.roundings,
                   roundings=plan.roundings, kappa=plan.kappa, kappa_2=float(s.max() / s.min()), scale=scale,
                   plan=plan, cost_breakdown=plan.breakdown, settings=settings)


class Result(NamedTuple):
    value: Tensor
    report: Report


# --------------------------------------------------------------------------------------------- input checks


def real64(x: Any, name: str) -> Tensor:
    """``x`` as a detached float64 tensor; TypeError for non-numeric, complex or boolean input."""
    return as_real_tensor(x.detach() if isinstance(x, Tensor) else x, name, dtype=torch.float64)


def matrix(A: Any, name: str) -> Tensor:
    t = real64(A, name)
    if t.dim() != 2 or t.shape[0] != t.shape[1] or t.shape[0] == 0:
        raise ValueError(f"{name} must be a square (d, d) matrix with d >= 1; got shape {tuple(t.shape)}")
    check_finite(t, name)
    return t


def out_dtype(*xs: Any) -> torch.dtype:
    for x in xs:
        if isinstance(x, Tensor) and x.dtype in (torch.float32, torch.float64):
            return x.dtype
    return torch.get_default_dtype()


def is_symmetric(M: Tensor) -> bool:
    return bool((M - M.mT).abs().max() <= 1e-12 * max(float(M.abs().max()), 1e-300))


def check_spd(G: Tensor, name: str) -> None:
    if not is_symmetric(G):
        raise ValueError(f"{name} must be symmetric positive definite; got max |{name} - {name}^T| = "
                         f"{float((G - G.mT).abs().max()):.3g}")
    w = torch.linalg.eigvalsh(G)
    if not float(w.min()) > 1e-13 * float(w.abs().max()):
        raise ValueError(f"{name} must be symmetric positive definite; got smallest eigenvalue {float(w.min()):.3g}")


def min_real_eig(G: Tensor, name: str, what: str = "the matrix") -> float:
    ev = torch.linalg.eigvals(G)
    re = float(ev.real.min())
    if not re > 1e-13 * float(G.abs().max()):
        raise ValueError(f"{name} must have eigenvalues with positive real part (a stable drift); {what} has "
                         f"smallest real part {re:.3g}")
    return re


def positive(value: Any, name: str, allow_none: bool = True, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise TypeError(f"{name} must be a {'positive integer' if integer else 'number'}; got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and positive; got {value}")


def check_rounding(rounding: str) -> None:
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic'; got {rounding!r}")


def check_common(tol: float, roundings: int, rounding: str, burn_in_s: Any, averaging_s: Any) -> None:
    positive(tol, "tol", allow_none=False)
    if tol >= 1:
        raise ValueError(f"tol must be a relative error in (0, 1); got {tol}")
    positive(roundings, "roundings", allow_none=False, integer=True)
    check_rounding(rounding)
    if burn_in_s is not None:
        if isinstance(burn_in_s, bool) or not isinstance(burn_in_s, (int, float)) or not (0 <= burn_in_s < math.inf):
            raise ValueError(f"burn_in_s must be a finite non-negative number of seconds; got {burn_in_s!r}")
    positive(averaging_s, "averaging_s")


def device_for(device: Device | None, d: int) -> Device:
    if device is None:
        return Device(n_cells=d)
    if not isinstance(device, Device):
        raise TypeError(f"device must be a thermoai.thermo.device.Device; got {type(device).__name__}")
    if d > device.n_cells:
        raise ValueError(f"the problem has d = {d} but the device has n_cells = {device.n_cells}; use "
                         f"dataclasses.replace(device, n_cells={d})")
    return device


def check_noise(device: Device, op: str, why: str = "the answer is read from the noise") -> None:
    if device.noise_scale == 0:
        raise ValueError(f"device.noise_scale must be positive for {op}: {why}")


def runs_count(runs: int | None) -> int:
    positive(runs, "runs", integer=True)
    return 1 if runs is None else runs


def prepare(op: str, d: int, device: Device | None, runs: int | None, *, tol: float, roundings: int, rounding: str,
            burn_in_s: Any, averaging_s: Any) -> tuple[int, Device]:
    """The checks every moment-based operation shares (run settings, repetitions, the device and its noise);
    returns ``(runs, device)``."""
    check_common(tol, roundings, rounding, burn_in_s, averaging_s)
    n = runs_count(runs)
    device = device_for(device, d)
    check_noise(device, op)
    return n, device


def gershgorin_scaled(A64: Tensor) -> tuple[float, Tensor]:
    """``(scale, G = A / scale)`` with ``scale`` the largest absolute row sum of ``A`` (a Gershgorin bound):
    every rate of ``G`` is at most 1 (one over the time constant) and every entry fits the DAC."""
    scale = float(A64.abs().sum(1).max())
    return scale, A64 / scale


def mirror_upper(M: Tensor) -> Tensor:
    """The upper triangle of ``M`` mirrored: exactly symmetric, so :meth:`Device.program` uses one physical
    coupling per cell pair (``M`` is symmetric to 1e-12 when this is called)."""
    return torch.triu(M) + torch.triu(M, 1).mT


# ------------------------------------------------------------------------------------- programming errors


def programming_variances(device: Device, M: Tensor, rounding: str) -> tuple[Tensor, Tensor]:
    """Per-entry variances of the error :meth:`Device.program` makes on ``M`` (first-order model of the
    package docstring): rounding (``q^2/12`` nearest, ``f (1 - f) q^2`` stochastic, ``f`` the fractional part
    of ``M / q``) and mismatch (``(mismatch M_ij)^2``)."""
    full = float(M.abs().max())
    if full == 0:  # nothing to program: zeros stay zero
        return torch.zeros_like(M), torch.zeros_like(M)
    step = device.dac_step(full)
    if rounding == "nearest":
        var = torch.full_like(M, step**2 / 12.0)
    else:
        f = M / step - torch.floor(M / step)
        var = f * (1 - f) * step**2
    return var, (device.mismatch * M) ** 2


def averaged_variance(var_round: float, var_mismatch: float, rounding: str, roundings: int) -> float:
    """Variance after averaging ``roundings`` programmings: stochastic roundings are independent (divide
    by K); nearest rounding and the chip's mismatch repeat identically at every programming."""
    return var_round / (roundings if rounding == "stochastic" else 1) + var_mismatch


def programming_parts(device: Device, rounding_error: float, mismatch_error: float) -> dict[str, float]:
    """The two programming errors of the first-order model, named for :func:`check_floor`."""
    return {f"DAC rounding at dac_bits = {device.dac_bits}": rounding_error,
            f"mismatch = {device.mismatch:g}": mismatch_error}


def programming_label(device: Device) -> str:
    """Name of the whole programming error (rounding and mismatch together), where it is computed exactly."""
    return f"programming at dac_bits = {device.dac_bits}, mismatch = {device.mismatch:g}"


def check_floor(tol: float, parts: dict[str, float], op: str, strict: bool) -> None:
    """Warn (:class:`ToleranceWarning`), or raise ValueError with ``strict``, when the programming errors
    alone (``parts``: name -> error, added in quadrature) reach ``tol``: the device cannot meet it at any
    run length. The message names the floor and the limiting non-ideality first."""
    floor = math.sqrt(sum(e * e for e in parts.values()))
    if not floor >= tol:
        return
    ranked = "; ".join(f"{name}: {err:.3g}" for name, err in sorted(parts.items(), key=lambda kv: -kv[1]))
    msg = (f"{op}: tol = {tol:g} is below the floor of {floor:.3g} that programming sets on this device "
           f"({ranked}); no run length reaches tol. Use more dac_bits, a device with less mismatch, or "
           "roundings=K with rounding='stochastic' (averages the rounding part only).")
    if strict:
        raise ValueError(msg)
    warnings.warn(msg, ToleranceWarning, stacklevel=3)


# ------------------------------------------------------------------------------------ streamed running sums


class Moments:
    """Accumulates ``x_{k+lag} x_k^T`` over a stream of reads (n, S, d), in total and in ``B`` batches
    (for batch-means error estimates)."""

    def __init__(self, n: int, d: int, n_avg: int, lag: int = 0, batches: int = BATCHES):
        self.lag, self.pairs = lag, n_avg - lag
        self.B = max(1, min(batches, self.pairs))
        self.sums = torch.zeros(n, self.B, d, d, dtype=torch.float64)
        self.counts = torch.zeros(self.B, dtype=torch.float64)
        self.pos = 0  # index of the next read
        self.prev: Tensor | None = None

    def __call__(self, reads: Tensor) -> None:
        lag, S = self.lag, reads.shape[1]
        # ``full`` holds the kept reads (the last min(lag, pos)) followed by the new ones
        full = reads if self.prev is None else torch.cat([self.prev, reads], 1)
        start = self.pos - (0 if self.prev is None else self.prev.shape[1])  # position of full[:, 0]
        first = max(self.pos, lag)  # first position that has a partner ``lag`` steps earlier
        last = self.pos + S  # one past the last position
        if lag:
            self.prev = full[:, -min(lag, full.shape[1]):]
        self.pos = last
        if first >= last:
            return
        late = full[:, first - start : last - start]
        early = full[:, first - lag - start : last - lag - start]
        # pair index p = position - lag; batch = p * B // pairs
        bid = (torch.arange(first - lag, last - lag) * self.B) // self.pairs
        for b in torch.unique(bid).tolist():
            m = bid == b
            self.sums[:, b] += torch.einsum("nsi,nsj->nij", late[:, m], early[:, m])
            self.counts[b] += int(m.sum())

    def mean(self) -> Tensor:
        return self.sums.sum(1) / self.counts.sum()

    def batch_error(self) -> Tensor:
        """Squared standard error (per run) of :meth:`mean` from batch means, Frobenius norm."""
        if self.B < 2:
            return torch.full(self.sums.shape[:1], float("nan"), dtype=torch.float64)
        bm = self.sums / self.counts.clamp_min(1)[None, :, None, None]  # (n, B, d, d)
        dev = bm - bm.mean(1, keepdim=True)
        return (dev**2).sum((-2, -1)).sum(1) / (self.B * (self.B - 1))


def stream_moments(device: Device, Gq: Tensor, D: Tensor, plan: Plan, generator: torch.Generator | None,
                   lag: int = 0) -> tuple[Moments, Cost]:
    """``plan.runs`` runs of the programmed cells from reset (x = 0), zero fixed point: the plan's burn-in,
    then ``plan.n_samples`` snapshots streamed into the moments ``x_{k+lag} x_k^T``. The cost includes
    accumulating those moments (:meth:`Device.accumulation_cost`)."""
    n, d, S = plan.runs, Gq.shape[0], plan.n_samples
    mom = Moments(n, d, S, lag=lag)
    avg_s = S * device.sampling_interval
    cost = device.stream(Gq, None, avg_s, D, n=n, burn_in=plan.burn_in_s, generator=generator, consume=mom)
    return mom, cost + device.accumulation_cost(d, n * S, n * avg_s)


def read_bias(device: Device) -> float:
    """Known bias that readout adds to a second moment's diagonal: readout noise and ADC rounding."""
    return device.readout_noise**2 + device.adc_step**2 / 12.0
