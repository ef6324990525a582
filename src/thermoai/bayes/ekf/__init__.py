"""Extended Kalman filters over parameters: diagonal and dense updates with the empirical Fisher
(``diag_fisher``, ``dense_fisher``) or the generalised Gauss-Newton curvature (``diag_ggn``,
``dense_ggn``; exactly the Kalman filter on a linear-Gaussian model)."""

from thermoai.bayes.ekf import dense_fisher, dense_ggn, diag_fisher, diag_ggn

__all__ = ["diag_fisher", "dense_fisher", "diag_ggn", "dense_ggn"]
