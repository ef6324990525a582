"""Tests of thermoai.thermo.cost: the analytical device-versus-digital time and energy models."""

import math

import numpy as np
import pytest

from thermoai.thermo import cost
from thermoai.thermo.device import Device
from thermoai.thermo.digital import DigitalHardware


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
    eps = tol * math.sqrt(3) / 2
    est = cost.device_cost("inv", d, tol=tol, rates=np.ones(d))
    assert est.settings["averaging_s"] == pytest.approx(tau * (d + 1) / eps**2)
    assert est.predicted_error["statistical"] == pytest.approx(eps, rel=1e-3)
    # a spread spectrum costs more, but at most (d + 1) kappa tau / eps^2
    T100 = cost.device_cost("inv", d, 100.0, tol).settings["averaging_s"]
    assert est.settings["averaging_s"] < T100 <= tau * (d + 1) * 100 / eps**2


def test_solve_time_formula():
    # chip: d DACs at 1e8 values/s; dynamics = burn-in kappa tau ln(2/tol) + averaging of the plan
    dev = Device.projected_chip(256)
    d, kappa, tol = 256, 50.0, 0.02
    est = cost.device_cost("solve", d, kappa, tol, device=dev)
    assert est.settings["burn_in_s"] == pytest.approx(kappa * 1e-6 * math.log(2 / tol))
    eps = tol * math.sqrt(3) / 2
    # generic right-hand side, uniform spectrum, no injected noise: T = d (2 s2 S + d rho^2 dt) / (eps^2 r^2 smin^2 S)
    lam = np.linspace(1 / kappa, 1, 256)
    S = (lam**-2).sum()
    s2 = dev.thermal_variance
    T = d * (2 * s2 * S + d * dev.readout_noise**2) / (eps**2 * 4.0 * lam.min() ** 2 * S)
    assert est.settings["averaging_s"] == pytest.approx(T * 1e-6)
    n = math.ceil(T)
    assert est.breakdown["dynamics"] == pytest.approx(est.settings["burn_in_s"] + n * 1e-6)
    assert est.breakdown["programming"] == pytest.approx((d * d / d + 1) * 1e-8)  # d^2 couplings, then d biases
    assert est.energy_breakdown["dynamics"] == pytest.approx(
        (d * 1e-3 + d * d * 1e-7) * est.breakdown["dynamics"] + n * d * 1e-11)
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
    assert cost.crossover_dimension("inv", 100.0, 0.1) is None
    est = cost.device_cost("inv", 1024, 100.0, 0.1)
    assert est.energy_breakdown["accumulation"] > cost.digital_cost("inv", 1024).energy_j
    analog = cost.device_cost("inv", 1024, 100.0, 0.1, device=Device.projected_chip(1024, analog_accumulators=True))
    assert analog.energy_breakdown["accumulation"] < est.energy_breakdown["accumulation"]
    assert analog.breakdown["accumulation"] == 0.0


def test_roundings_multiply_programming():
    one = cost.device_cost("solve", 512, 10.0, roundings=1)
    four = cost.device_cost("solve", 512, 10.0, roundings=4)
    assert four.breakdown["programming"] == pytest.approx(4 * one.breakdown["programming"])
    # each rounding runs its own burn-in; the averaging time is shared among them
    burn = one.settings["burn_in_s"]
    n4 = math.ceil(one.settings["averaging_s"] / 4 / 1e-6 - 1e-9)
    assert four.breakdown["dynamics"] == pytest.approx(4 * (burn + n4 * 1e-6))


def test_serial_programming_of_the_pcb_prototype():
    dev = Device.pcb_prototype(16, time_constant=2e-6, sampling_interval=4e-6)
    est = cost.device_cost("solve", 16, 10.0, device=dev)
    assert est.breakdown["programming"] == pytest.approx((16 * 16 + 16) * 1e-6)  # one value per microsecond
    assert est.settings["device"]["dac_channels"] == 1
    # the presets differ where their sources differ
    assert Device.projected_chip(16).parallel_dac_channels == 16 and dev.parallel_dac_channels == 1
    assert Device.projected_chip(16).signal_to_noise == pytest.approx(1000, rel=1e-3)


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
        (lambda: cost.device_cost("inv", 64, 10.0, device=Device(n_cells=8)), ValueError, "n_cells"),
        (lambda: cost.device_cost("inv", 64, 10.0, device="chip"), TypeError, "device"),
        (lambda: cost.device_cost("inv", 64), ValueError, "kappa"),
        (lambda: cost.device_cost("inv", 64, 10.0, roundings=0), ValueError, "roundings"),
        (lambda: cost.device_cost("inv", 4, 10.0, eigenvalues=[1.0, -1.0, 1.0, 1.0]), ValueError, "eigenvalues"),
        (lambda: DigitalHardware(flop_rate=-1.0), ValueError, "flop_rate"),
        (lambda: DigitalHardware(efficiency=2.0), ValueError, "efficiency"),
        (lambda: Device(time_constant=float("inf")), ValueError, "time_constant"),
        (lambda: Device(dac_channels=0), ValueError, "dac_channels"),
        (lambda: Device(analog_accumulators=1), TypeError, "analog_accumulators"),
        (lambda: cost.crossover_dimension("solve", 10.0, metric="area"), ValueError, "metric"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
