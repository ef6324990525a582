"""Devices that sample Bayesian posteriors by realising Langevin dynamics physically (Aifer et al.,
"Thermodynamic Bayesian Inference", arXiv 2410.01793), simulated on a :class:`thermoai.thermo.device.Device`.

* :class:`GaussianPosteriorCircuit` (:mod:`.gaussian`): Gaussian-Gaussian model and Bayesian linear
  regression; a passive parallel-RC design and an active SPU-style design; exact posterior for reference.
* :class:`LogisticPosteriorCircuit` (:mod:`.logistic`): Bayesian logistic regression with resistive
  crossbars and differential-pair sigmoids.
* :func:`circuit_sampler` (:mod:`.sampler`): any Gaussian ``N(m, P^-1)`` from its mean and precision
  (:meth:`GaussianPosteriorCircuit.from_precision`), the sampling backend of thermoai.bayes's dense
  Gaussian posteriors (their ``sample(..., sampler=)``).

User guide: docs/circuits.md.
"""

from thermoai.thermo.circuits.gaussian import GaussianPosteriorCircuit
from thermoai.thermo.circuits.logistic import LogisticPosteriorCircuit
from thermoai.thermo.circuits.sampler import CircuitSampler, circuit_sampler

__all__ = ["GaussianPosteriorCircuit", "LogisticPosteriorCircuit", "CircuitSampler", "circuit_sampler"]
