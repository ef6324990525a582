"""thermoai: physics-based and probabilistic AI in PyTorch.

Subpackages: :mod:`thermoai.bayes` (Bayesian learning as functional transforms), :mod:`thermoai.thermo`
(thermodynamic-hardware simulator and linear algebra), :mod:`thermoai.optim` (K-FAC with digital and
thermodynamic solvers), :mod:`thermoai.memory` (Extended Mind Transformers, optional extra).
"""

__version__ = "0.1.0"
