"""Thermodynamic hardware, simulated: exact Ornstein-Uhlenbeck dynamics, an analog device with its
non-idealities and costs, linear algebra computed on that device, and time/energy models against digital
hardware. User guide: docs/thermo.md.

* :mod:`~thermoai.thermo.ou`: ``OUProcess`` (exact transitions, sampling, likelihood for any stable drift)
  and the integrators ``euler_maruyama`` and ``exponential_integrator`` for nonlinear drifts.
* :mod:`~thermoai.thermo.device`: ``Device``, the one description of the hardware (programming through
  DACs with the chip's mismatch, exact dynamics, ADC readout, the cost formulas; presets
  ``Device.pcb_prototype()`` and ``Device.projected_chip()``), ``Cost`` (seconds and joules), ``quantise``.
* :mod:`~thermoai.thermo.digital`: ``DigitalHardware``, the roofline model of a digital processor.
* :mod:`~thermoai.thermo.planning`: run length, device time and energy of each operation (``Plan``), used by
  the simulator and the predictor alike.
* :mod:`~thermoai.thermo.linalg`: ``solve``, ``inv``, ``lyapunov``, ``expm``, ``logdet`` run on a
  ``Device``; each returns ``Result(value, Report)``.
* :mod:`~thermoai.thermo.cost`: predicted time and energy of device versus digital (``compare``,
  ``crossover_dimension``), for the same ``Device``.
"""

from thermoai.thermo.cost import Comparison, CostEstimate, compare, crossover_dimension, device_cost, digital_cost
from thermoai.thermo.device import Cost, Device, quantise
from thermoai.thermo.digital import DigitalHardware
from thermoai.thermo.linalg import Report, Result, ToleranceWarning, expm, inv, logdet, lyapunov, solve
from thermoai.thermo.planning import Plan, Spectrum
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
    "ToleranceWarning",
    "Plan",
    "Spectrum",
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
    "DigitalHardware",
]
