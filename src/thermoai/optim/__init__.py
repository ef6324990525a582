"""K-FAC second-order optimisation with digital and thermodynamic solver backends. User guide: docs/optim.md.

* :mod:`~thermoai.optim.kfac`: ``KFAC``, the preconditioner in front of any ``torch.optim`` optimizer
  (``loss.backward(); kfac.step(); opt.step()``), and its ``StepReport``.
* :mod:`~thermoai.optim.layers`: the per-layer factors of ``nn.Linear``, ``nn.Conv2d`` and ``nn.Embedding``
  (expand and reduce weight sharing).
* :mod:`~thermoai.optim.solvers`: ``Eigh`` (default), ``Cholesky``, ``Inverse`` and ``Thermodynamic``
  (methods 1 and 2 on the simulated device of :mod:`thermoai.thermo`, simulated or by its error model).
"""

from thermoai.optim.kfac import KFAC, StepReport
from thermoai.optim.solvers import Cholesky, Damping, DeviceUsage, Eigh, Inverse, Solver, Thermodynamic

__all__ = ["KFAC", "StepReport", "Solver", "Eigh", "Cholesky", "Inverse", "Thermodynamic", "Damping",
           "DeviceUsage"]
