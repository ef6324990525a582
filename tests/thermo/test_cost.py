"""Tests of thermoai.thermo.cost: the analytical device-versus-digital time and energy models."""

import math

import numpy as np
import pytest

from thermoai.thermo import cost
from thermoai.thermo.cost import DeviceHardware, DigitalHardware
from thermoai.thermo.device import Device


def test_digital_roofline_flops():
    hw = DigitalHardware(flop_rate=1e12, memory_bandwidth=1e12, power_w=100.0, efficiency=0.5, overhead_s=0.0)
    d = 4096
    c = cost.digital_cost("solve", d, hardware=hw)
    assert c.time_s == pytest.approx((d**3 / 3 + 2 * d**2) / 0.5e12)  # compute-bound at this size
    assert c.energy_j == pytest.approx(100.0 * c.time_s)
    assert cost.digital_cost("inv", d, hardware=hw).time_s == pytest.approx(d**3 / 0.5e12)
    assert cost.digital_cost("inv", d, hardware=hw, algorithm="lu").time_s == pytest.approx(2 * d**3 / 0.5e12)
    # memory-bound when the bandwidth is tiny: 3 d^2 elements of 8 bytes
    slow = DigitalHardware(flop_rate=1e15, memory_bandwidth=1e6, overhead_s=0.0)
    assert cost.digital_cost("solve", 64, hardware=slow).time_s == pytest.approx(3 * 64 * 64 * 8 / 1e6)


def test_sample_covariance_limit_of_the_second_moment_time():
    # all rates equal: the sample covariance of N independent draws, relative Frobenius error^2 = (d + 1) / N
    d, tol, tau = 10, 0.1, 1e-6
    T = cost.second_moment_averaging_time(d, 1.0, tol, tau, eigenvalues=np.ones(d))
    assert T == pytest.approx(tau * (d + 1) / tol**2)
    # a spread spectrum costs more, but at most (d + 1) kappa tau / tol^2
    T100 = cost.second_moment_averaging_time(d, 100.0, tol, tau)
    assert T < T100 <= tau * (d + 1) * 100 / tol**2


def test_solve_time_formula():
    dev = DeviceHardware(time_constant_s=1e-6, snr=10.0, dac_rate_hz=1e9)
    d, kappa, tol = 256, 50.0, 0.02
    est = cost.device_cost("solve", d, kappa, tol, device=dev)
    assert est.breakdown["burn_in"] == pytest.approx(kappa * 1e-6 * math.log(2 / tol))
    eps = tol * math.sqrt(3) / 2
    # uniform spectrum on [1/kappa, 1]: mean (lambda_max / lambda)^2 = kappa exactly (up to the grid)
    assert est.breakdown["averaging"] == pytest.approx(2 * 1e-6 * kappa / (100.0 * eps**2), rel=0.02)
    assert est.breakdown["programming"] == pytest.approx(d * d / (d * 1e9))
    assert est.time_s == pytest.approx(sum(est.breakdown.values()))
    assert est.energy_j == pytest.approx(sum(est.energy_breakdown.values()))


def test_compare_winner_and_ratio_are_consistent():
    c = cost.compare("solve", 4096, 100.0)
    assert c.time_ratio == pytest.approx(c.digital.time_s / c.device.time_s)
    assert c.winner_time == ("device" if c.time_ratio > 1 else "digital")
    assert c.winner_energy == ("device" if c.energy_ratio > 1 else "digital")
    assert "solve d=4096" in str(c)
    # the digital cost grows as d^3, the device's burn-in not at all: the device wins at large d
    assert cost.compare("solve", 16384, 100.0).time_ratio > cost.compare("solve", 1024, 100.0).time_ratio
    d_x = cost.crossover_dimension("solve", 100.0)
    assert d_x is not None and cost.compare("solve", d_x, 100.0).time_ratio > 1
    if d_x > 64:
        assert cost.compare("solve", d_x // 2, 100.0).time_ratio <= 1


def test_host_accumulation_makes_inverse_lose():
    # 2 d^2 flops per sample for x x^T on the host over ~(d+1) kappa / tol^2 samples exceeds d^3
    assert cost.crossover_dimension("inv", 100.0, 0.1, accumulation="host") is None
    est = cost.device_cost("inv", 1024, 100.0, 0.1, accumulation="host")
    assert est.energy_breakdown["accumulation"] > cost.digital_cost("inv", 1024).energy_j


def test_roundings_multiply_programming():
    one = cost.device_cost("solve", 512, 10.0, roundings=1)
    four = cost.device_cost("solve", 512, 10.0, roundings=4)
    assert four.breakdown["programming"] == pytest.approx(4 * one.breakdown["programming"])
    assert four.breakdown["burn_in"] == pytest.approx(4 * one.breakdown["burn_in"])


def test_from_device_maps_the_simulated_device():
    dev = Device(n_cells=16, time_constant=2e-6, sampling_interval=4e-6, program_time_per_value=1e-6)
    hw = DeviceHardware.from_device(dev)
    assert hw.time_constant_s == 2e-6 and hw.sampling_interval_s == 4e-6
    assert hw.dac_channels == 1 and hw.dac_rate_hz == pytest.approx(1e6)
    est = cost.device_cost("solve", 16, 10.0, device=hw)
    assert est.breakdown["programming"] == pytest.approx(16 * 16 * 1e-6)  # serial writes
    assert DeviceHardware.from_device(dev, snr=5.0).snr == 5.0


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: cost.compare("det", 64, 10.0), ValueError, "op must be"),
        (lambda: cost.compare("solve", 0, 10.0), ValueError, "d must"),
        (lambda: cost.compare("solve", 64, 0.5), ValueError, "kappa"),
        (lambda: cost.compare("solve", 64, float("nan")), ValueError, "kappa"),
        (lambda: cost.compare("solve", 64, 10.0, tol=2.0), ValueError, "tol"),
        (lambda: cost.compare("solve", 64, "10"), TypeError, "kappa"),
        (lambda: cost.digital_cost("solve", 64, algorithm="qr"), ValueError, "algorithm"),
        (lambda: cost.device_cost("inv", 64, 10.0, accumulation="cloud"), ValueError, "accumulation"),
        (lambda: cost.device_cost("inv", 64, 10.0, roundings=0), ValueError, "roundings"),
        (lambda: cost.device_cost("inv", 4, 10.0, eigenvalues=[1.0, -1.0, 1.0, 1.0]), ValueError, "eigenvalues"),
        (lambda: DigitalHardware(flop_rate=-1.0), ValueError, "flop_rate"),
        (lambda: DigitalHardware(efficiency=2.0), ValueError, "efficiency"),
        (lambda: DeviceHardware(time_constant_s=float("inf")), ValueError, "time_constant_s"),
        (lambda: DeviceHardware(dac_bits=1), ValueError, "dac_bits"),
        (lambda: cost.crossover_dimension("solve", 10.0, metric="area"), ValueError, "metric"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
