"""Thermodynamic hardware, simulated: exact Ornstein-Uhlenbeck dynamics, an analog device with its
non-idealities and costs, linear algebra computed on that device, and time/energy models against digital
hardware. User guide: docs/thermo.md.

* :mod:`~thermoai.thermo.ou`: ``OUProcess`` (exact transitions, sampling, likelihood for any stable drift)
  and the integrators ``euler_maruyama`` and ``exponential_integrator`` for nonlinear drifts.
* :mod:`~thermoai.thermo.device`: ``Device`` (programming through DACs with the chip's mismatch, exact
  dynamics, ADC readout), ``Cost`` (seconds and joules) and ``quantise``.
* :mod:`~thermoai.thermo.linalg`: ``solve``, ``inv``, ``lyapunov``, ``expm``, ``logdet`` run on a
  ``Device``; each returns ``Result(value, Report)``.
* :mod:`~thermoai.thermo.cost`: analytical time and energy of device versus digital (``compare``,
  ``crossover_dimension``, ``DeviceHardware``, ``DigitalHardware``).
"""

from thermoai.thermo.cost import (
    Comparison,
    CostEstimate,
    DeviceHardware,
    DigitalHardware,
    compare,
    crossover_dimension,
    device_cost,
    digital_cost,
)
from thermoai.thermo.device import Cost, Device, quantise
from thermoai.thermo.linalg import Report, Result, expm, inv, logdet, lyapunov, solve
from thermoai.thermo.ou import OUProcess, euler_maruyama, exponential_integrator

__all__ = [
    "OUProcess",
    "euler_maruyama",
    "exponential_integrator",
    "Cost",
    "Device",
    "quantise",
    "Report",
    "Result",
    "solve",
    "inv",
    "lyapunov",
    "expm",
    "logdet",
    "compare",
    "crossover_dimension",
    "device_cost",
    "digital_cost",
    "Comparison",
    "CostEstimate",
    "DeviceHardware",
    "DigitalHardware",
]
