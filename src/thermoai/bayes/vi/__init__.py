"""Variational inference: diagonal and dense Gaussian families."""
from thermoai.bayes.vi import dense, diag

__all__ = ["diag", "dense"]
