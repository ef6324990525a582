r"""A Gaussian sampling backend on the simulated device: any ``N(m, P^-1)`` given by its mean and precision.

:func:`circuit_sampler` returns a :class:`CircuitSampler`, a callable with the signature the dense Gaussian
posteriors of :mod:`thermoai.bayes` accept as their ``sample(..., sampler=)`` argument::

    samples, cost = sampler(mean (d,), precision (d, d), n, generator)      # samples (n, d) float64

Each call programs a :class:`~thermoai.thermo.circuits.gaussian.GaussianPosteriorCircuit` with the precision
itself (:meth:`~thermoai.thermo.circuits.gaussian.GaussianPosteriorCircuit.from_precision`: design "rc"
``C = c0 P``, ``G = C / tau``; design "active" couplings ``g0 P``), lets it relax from the mean for its
default burn-in and reads ``n`` samples; ``cost`` (:class:`~thermoai.thermo.device.Cost`) is the
programming plus the device time and energy of the run. The device's non-idealities (DAC rounding, the
mismatch of every array, noise gain, ADC and readout noise) are all kept: the chip samples its
:meth:`~thermoai.thermo.circuits.gaussian.GaussianPosteriorCircuit.stationary_law`, not exactly ``N(m, P^-1)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from thermoai.thermo.circuits.gaussian import DESIGNS, GaussianPosteriorCircuit
from thermoai.thermo.device import Cost, Device

__all__ = ["CircuitSampler", "circuit_sampler"]

_CIRCUIT_KEYS = ("noise", "scale", "allow_active", "rate_bound", "rounding")
_SAMPLE_KEYS = ("start", "burn_in", "interval", "chains")


class CircuitSampler:
    """``sampler(mean, precision, n, generator) -> (samples (n, d), Cost)`` on a simulated circuit.

    Attributes: ``design``, ``device`` (None: the PCB prototype with d cells, made per call),
    ``circuit_kwargs`` (for :meth:`GaussianPosteriorCircuit.from_precision`), ``sample_kwargs`` (for
    :meth:`GaussianPosteriorCircuit.sample`).
    """

    def __init__(self, design: str = "rc", device: Device | None = None, circuit_kwargs: dict | None = None,
                 sample_kwargs: dict | None = None):
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}; got {design!r}")
        if device is not None and not isinstance(device, Device):
            raise TypeError(f"device must be a thermoai.thermo.device.Device or None; got {type(device).__name__}")
        self.design, self.device = design, device
        self.circuit_kwargs = dict(circuit_kwargs or {})
        self.sample_kwargs = dict(sample_kwargs or {})

    def circuit(self, mean, precision) -> GaussianPosteriorCircuit:
        """The circuit a call programs for ``N(mean, precision^-1)`` (the same chip each time: the mismatch is
        the device's fixed pattern), for its :meth:`~GaussianPosteriorCircuit.stationary_law` and costs."""
        return GaussianPosteriorCircuit.from_precision(mean, precision, design=self.design, device=self.device,
                                                       **self.circuit_kwargs)

    def __call__(self, mean: Tensor, precision: Tensor, n: int,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Cost]:
        """``n`` draws (n, d) float64 of the chip programmed with ``mean`` (d,) and ``precision`` (d, d), and
        the :class:`Cost` of programming and running it."""
        return self.circuit(mean, precision).sample(n, generator, **self.sample_kwargs)

    def __repr__(self) -> str:
        return (f"CircuitSampler(design={self.design!r}, device={self.device!r}, "
                f"circuit_kwargs={self.circuit_kwargs!r}, sample_kwargs={self.sample_kwargs!r})")


def circuit_sampler(design: str = "rc", device: Device | None = None, **kwargs: Any) -> CircuitSampler:
    """A :class:`CircuitSampler` for ``design`` on ``device``. Keywords go to
    :meth:`GaussianPosteriorCircuit.from_precision` (``noise``, ``scale``, ``allow_active``, ``rate_bound``,
    ``rounding``) or to :meth:`GaussianPosteriorCircuit.sample` (``start``, ``burn_in``, ``interval``,
    ``chains``); TypeError for any other."""
    unknown = sorted(set(kwargs) - set(_CIRCUIT_KEYS) - set(_SAMPLE_KEYS))
    if unknown:
        raise TypeError(f"circuit_sampler got unexpected keyword(s) {unknown}; circuit keywords are "
                        f"{list(_CIRCUIT_KEYS)}, sampling keywords {list(_SAMPLE_KEYS)}")
    circuit = {k: v for k, v in kwargs.items() if k in _CIRCUIT_KEYS}
    sample = {k: v for k, v in kwargs.items() if k in _SAMPLE_KEYS}
    return CircuitSampler(design, device, circuit, sample)
