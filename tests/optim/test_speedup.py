"""The K-FAC speed-up predictor: its parts are the stated formulas and the device's run plans."""

import math
from dataclasses import replace

import pytest

from thermoai.optim import speedup as S
from thermoai.thermo.device import Device
from thermoai.thermo.digital import DigitalHardware
from thermoai.thermo.planning import Spectrum, plan_inv, plan_solve

FAST = Device.projected_chip(8, time_constant=1e-9, sampling_interval=1e-9, program_time_per_value=1e-10)
HW = DigitalHardware(flop_rate=1e12, memory_bandwidth=1e11, efficiency=1.0, overhead_s=0.0)


def test_digital_parts_are_the_stated_flop_counts():
    layer = S.LinearShape("fc", 99, 50)  # A is 100 x 100 with the bias column
    t = S.predict([layer], 32, digital=HW, inverse_interval=10, device=FAST)
    b = t.breakdown["kfac_digital"]
    assert b["forward_backward"] == pytest.approx(6 * 32 * 99 * 50 / 1e12)
    assert b["factors"] == pytest.approx(2 * 32 * (100**2 + 50**2) / 1e12)
    assert b["inverses"] == pytest.approx(9 * (100**3 + 50**3) / 1e12 / 10)
    assert b["apply"] == pytest.approx(2 * (50**2 * 100 + 50 * 100**2) / 1e12)
    assert t.kfac_digital_s == pytest.approx(sum(b.values()))
    assert t.adam_s == pytest.approx(sum(t.breakdown["adam"].values()))
    # a longer inverse interval amortises the inversions
    t20 = S.predict([layer], 32, digital=HW, inverse_interval=20, device=FAST)
    assert t20.breakdown["kfac_digital"]["inverses"] == pytest.approx(b["inverses"] / 2)


def test_device_parts_are_the_run_plans():
    layer = S.LinearShape("fc", 15, 8)
    kappa, tol = 20.0, 0.1
    t1 = S.predict([layer], 16, digital=HW, device=FAST, method=1, kappa=kappa, tol=tol, inverse_interval=5)
    expected = sum(plan_inv(replace(FAST, n_cells=max(8, d)), Spectrum.uniform(d, kappa), tol).cost.time
                   for d in (8, 16)) / 5
    assert t1.breakdown["kfac_thermo"]["device"] == pytest.approx(expected, rel=1e-12)
    t2 = S.predict([layer], 16, digital=HW, device=FAST, method=2, kappa=kappa, tol=tol, inverse_interval=5)
    expected = 0.0
    for d, rhs in ((8, 16), (16, 8)):
        dev = replace(FAST, n_cells=max(8, d))
        expected += plan_solve(dev, Spectrum.uniform(d, kappa), tol, rhs=rhs).cost.time
        expected -= dev.program_cost(d * d).time * (1 - 1 / 5)  # the factor is programmed once per interval
    assert t2.breakdown["kfac_thermo"]["device"] == pytest.approx(expected, rel=1e-12)
    assert t2.breakdown["kfac_thermo"]["apply"] == 0.0 and t1.breakdown["kfac_thermo"]["apply"] > 0


def test_parallel_solvers_divide_the_device_time():
    layers = [S.LinearShape("fc", 255, 256, count=4)]
    one = S.predict(layers, 64, device=FAST, solvers=1)
    four = S.predict(layers, 64, device=FAST, solvers=4)
    assert four.breakdown["kfac_thermo"]["device"] == pytest.approx(one.breakdown["kfac_thermo"]["device"] / 4)
    assert four.device_energy_j == pytest.approx(one.device_energy_j)


def test_speedup_over_digital_kfac_grows_with_width():
    rows = S.width_sweep([256, 512, 1024, 2048, 4096, 8192], device=FAST)
    speedups = [r["speedup_vs_kfac"] for r in rows]
    assert all(b > a for a, b in zip(speedups, speedups[1:])), speedups
    # digital K-FAC's cubic work makes it lose ground to Adam as the width grows
    vs_adam = [r["digital_kfac_vs_adam"] for r in rows]
    assert vs_adam[-1] < vs_adam[0]
    # a slower device (microsecond cells) is slower per step at every width
    slow = S.width_sweep([256, 8192], device=Device.projected_chip(8))
    assert all(s["kfac_thermo_s"] > f["kfac_thermo_s"] for s, f in zip(slow, [rows[0], rows[-1]]))


def test_presets_have_the_workloads_sizes():
    vit = S.vit_s16()
    params = sum(s.count * (s.n_in + 1) * s.n_out for s in vit)
    assert 21e6 < params < 23e6  # ViT-S/16: about 22 M parameters in its linear layers
    gnn = S.ogbg_gnn()
    assert max(s.a_size for s in gnn) == 1025 and {s.n_out for s in gnn} == {256, 128}
    t = S.predict(vit, 256, device=FAST)
    assert t.speedup_vs_adam(0.5) == pytest.approx(t.adam_s / (0.5 * t.kfac_thermo_s))


@pytest.mark.parametrize("call, match", [
    (lambda: S.predict([], 8), "layers"),
    (lambda: S.predict([S.LinearShape("a", 4, 4)], 0), "batch"),
    (lambda: S.predict([S.LinearShape("a", 4, 4)], 8, method=3), "method"),
    (lambda: S.predict([S.LinearShape("a", 4, 4)], 8, kappa=0.5), "kappa"),
    (lambda: S.predict([S.LinearShape("a", 4, 4)], 8, tol=1.5), "tol"),
    (lambda: S.LinearShape("a", 0, 4), "n_in"),
    (lambda: S.mlp([4]), "widths"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
