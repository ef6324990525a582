"""Extended Kalman filters over parameters: diagonal and dense empirical-Fisher updates."""

from thermoai.bayes.ekf import dense_fisher, diag_fisher

__all__ = ["diag_fisher", "dense_fisher"]
