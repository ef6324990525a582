"""A digital processor in the roofline model: the host of a thermodynamic device and its digital rival.

``time = overhead + max(flops / (flop_rate * efficiency), bytes / memory_bandwidth)``, ``energy = power * time``.
Default figures: NVIDIA H100 SXM vendor datasheet (FP64 tensor core 67 TFLOP/s, HBM3 3.35 TB/s, 700 W), with a
60 % sustained efficiency and 20 us fixed overhead per call (assumptions, not measurements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["DigitalHardware", "check_number"]


def check_number(value: Any, name: str, strictly: bool = True) -> None:
    """TypeError unless ``value`` is a real number; ValueError unless finite and positive (non-negative with
    ``strictly=False``)."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (strictly and value == 0):
        bound = "positive" if strictly else "non-negative"
        raise ValueError(f"{name} must be finite and {bound}; got {value}")


@dataclass(frozen=True)
class DigitalHardware:
    """A digital processor for the roofline model. Units: FLOP/s, bytes/s, watts, seconds, bytes."""

    name: str = "NVIDIA H100 SXM, FP64 (datasheet)"
    flop_rate: float = 67e12
    memory_bandwidth: float = 3.35e12
    power_w: float = 700.0
    efficiency: float = 0.6
    overhead_s: float = 20e-6
    bytes_per_element: int = 8

    def __post_init__(self) -> None:
        for name in ("flop_rate", "memory_bandwidth", "power_w", "efficiency", "bytes_per_element"):
            check_number(getattr(self, name), f"DigitalHardware.{name}")
        check_number(self.overhead_s, "DigitalHardware.overhead_s", strictly=False)
        if self.efficiency > 1:
            raise ValueError(f"DigitalHardware.efficiency must be in (0, 1]; got {self.efficiency}")

    def time_s(self, flops: float, n_bytes: float = 0.0) -> float:
        """Roofline time of a kernel doing ``flops`` and moving ``n_bytes``."""
        return self.overhead_s + max(flops / (self.flop_rate * self.efficiency), n_bytes / self.memory_bandwidth)
