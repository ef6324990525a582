"""The thermodynamic backend: with ideal converters it converges to the digital answer at the predicted rate
(mean squared error proportional to 1 / averaging time, unbiased); its error model has the simulator's error
distribution; input and output quantisation do what the docs say; device time and energy reach the report."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from thermoai.optim import KFAC, Damping, Inverse, Thermodynamic
from thermoai.optim.solvers import DeviceUsage, quantise_matrix
from thermoai.thermo.device import Device

IDEAL = Device(dac_bits=24, adc_bits=24, adc_range=16.0, readout_noise=0.0, mismatch=0.0)


def _spd(d, eigs, seed):
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    A = Q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ Q.T
    return 0.5 * (A + A.T)


A3 = _spd(3, [1.0, 0.5, 0.25], 0)
G2 = _spd(2, [0.8, 0.3], 1)
M23 = torch.tensor([[0.3, -1.0, 0.5], [0.7, 0.2, -0.4]], dtype=torch.float64)
DAMP = Damping(0.05, 0.1)


def _digital_U():
    state, _ = Inverse().prepare("l", A3, G2, DAMP)
    return Inverse().apply("l", state, M23)[0]


def _runs(solver_factory, runs):
    out = []
    for r in range(runs):
        s = solver_factory(r)
        state, _ = s.prepare("l", A3, G2, DAMP)
        out.append(s.apply("l", state, M23)[0])
    return torch.stack(out)


CASES = {
    "method 1": (lambda T, seed: Thermodynamic(1, device=IDEAL, averaging_s=T, seed=seed), 1.5e-3, 10),
    "method 2, per factor": (lambda T, seed: Thermodynamic(2, device=IDEAL, averaging_s=T, diffusion=0.3,
                                                           seed=seed), 1e-3, 24),
    "method 2, Kronecker": (lambda T, seed: Thermodynamic(2, system="kronecker", device=IDEAL, averaging_s=T,
                                                          diffusion=0.3, seed=seed), 1e-3, 24),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ideal_device_converges_to_digital_at_the_predicted_rate(case):
    """MSE(T) T is constant (statistical error ~ T^-1/2) and the mean over runs is the digital U; both within
    three standard errors estimated from the runs."""
    factory, T0, runs = CASES[case]
    ref = _digital_U()
    mse, se = [], []
    for T in (T0, 8 * T0):
        U = _runs(lambda seed: factory(T, seed), runs)
        e2 = ((U - ref) ** 2).sum((1, 2)) / float((ref**2).sum())
        mse.append(float(e2.mean()))
        se.append(float(e2.std()) / math.sqrt(runs))
        bias_z = (U.mean(0) - ref).abs() / (U.std(0) / math.sqrt(runs))
        assert float(bias_z.max()) < 4.0, (T, bias_z)
    ratio = mse[0] / mse[1]
    ratio_se = ratio * math.sqrt((se[0] / mse[0]) ** 2 + (se[1] / mse[1]) ** 2)
    assert abs(ratio - 8.0) < 3 * ratio_se, (ratio, ratio_se)
    assert mse[1] < 0.01  # and it is converging: under 10 % rms at the long averaging time


def _rel_errors(X, ref):
    return (X - ref) / ref.norm()


@pytest.mark.parametrize("op", ["inv", "solve"])
def test_error_model_matches_the_simulators_error_distribution(op):
    """A non-ideal device (4-bit DACs, 5 % mismatch, readout noise, 10-bit ADC whose range the cells do not
    reach: the error model ignores clipping): the error model's mean error (programming) and its spread
    (statistics) agree with the simulation's within four standard errors."""
    dev = Device(dac_bits=4, mismatch=0.05, readout_noise=2e-3, adc_bits=10, adc_range=8.0)
    runs = 240 if op == "inv" else 1000  # a simulated solve is cheap: its runs are vectorised
    b = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    errors = {}
    for mode in ("simulate", "error_model"):
        s = Thermodynamic(1 if op == "inv" else 2, device=dev, mode=mode, averaging_s=1e-3, diffusion=0.3, seed=7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the 4-bit programming floor exceeds linalg's default tol
            if op == "inv":
                X = torch.stack([s._inv(A3, DeviceUsage()) for _ in range(runs)])
                ref = torch.linalg.inv(A3)
            else:
                X = s._solve(A3, b.expand(runs, 3), DeviceUsage())
                ref = torch.linalg.solve(A3, b)
        errors[mode] = _rel_errors(X, ref).reshape(runs, -1)
    es, em = errors["simulate"], errors["error_model"]
    # the programming error is large here, so the mean test has power
    assert float(es.mean(0).abs().max()) > 5 * float(es.std(0).max()) / math.sqrt(runs)
    z = (es.mean(0) - em.mean(0)).abs() / torch.sqrt(es.var(0) / runs + em.var(0) / runs)
    assert float(z.max()) < 4.0, z
    cs, cm = es - es.mean(0), em - em.mean(0)  # the statistical part: spread around the mean
    vs, vm = (cs**2).sum(1), (cm**2).sum(1)
    se = math.sqrt(float(vs.var()) / runs + float(vm.var()) / runs)
    assert abs(float(vs.mean()) - float(vm.mean())) < 4 * se, (float(vs.mean()), float(vm.mean()), se)


@pytest.mark.parametrize("system", ["per_factor", "kronecker"])
def test_method_2_error_model_keeps_the_programming_between_inverse_updates(system):
    """The programmed matrices cached at prepare give the answer of programming afresh at each solve (10 %
    mismatch, so the programming error is large, and a long average, so the noise is small; fine DACs, since
    coarse rounding of the second sweep's right-hand sides would turn the small noise into whole steps)."""
    dev = Device(dac_bits=24, mismatch=0.1, readout_noise=0.0, adc_bits=24, adc_range=16.0)
    s = Thermodynamic(2, system=system, device=dev, mode="error_model", averaging_s=100.0, diffusion=0.3)
    state, _ = s.prepare("l", A3, G2, DAMP)
    assert any(k.startswith("prog_") for k in state)
    U_cached, _ = s.apply("l", state, M23)
    fresh = {k: v for k, v in state.items() if not k.startswith("prog_")}
    U_fresh, _ = s.apply("l", fresh, M23)
    digital = _digital_U()
    assert float((U_cached - U_fresh).norm()) < 1e-3 * float(digital.norm())
    assert float((U_cached - digital).norm()) > 1e-2 * float(digital.norm())  # the programming error is there


@pytest.mark.parametrize("method,system", [(1, "per_factor"), (2, "per_factor"), (2, "kronecker")])
def test_error_model_reports_the_simulators_device_time_and_energy(method, system):
    usage = {}
    for mode in ("simulate", "error_model"):
        s = Thermodynamic(method, system=system, device=IDEAL, mode=mode, averaging_s=2e-4)
        state, u1 = s.prepare("l", A3, G2, DAMP)
        _, u2 = s.apply("l", state, M23)
        u = u1 if method == 1 else u2
        usage[mode] = (u.time_s, u.energy_j, u.runs)
    assert usage["simulate"][0] == pytest.approx(usage["error_model"][0], rel=1e-12)
    assert usage["simulate"][1] == pytest.approx(usage["error_model"][1], rel=1e-12)
    assert usage["simulate"][2] == usage["error_model"][2] > 0


def test_input_quantisation_with_guard():
    """input_bits: the device inverts Q_b(A) + (lambda + r) I, r the row-sum bound of the rounding error, which
    keeps even a 3-bit low-rank factor positive definite."""
    X = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    A = X @ X.T / 2  # rank 2 of 6
    Q3 = quantise_matrix(A, 3)
    assert float(torch.linalg.eigvalsh(Q3).min()) < 0  # rounding alone makes it indefinite
    r = float((Q3 - A).abs().sum(1).max())
    assert float(torch.linalg.eigvalsh(Q3 + r * torch.eye(6, dtype=torch.float64)).min()) >= -1e-12
    s = Thermodynamic(1, device=IDEAL, mode="error_model", averaging_s=50.0, input_bits=3)
    state, _ = s.prepare("l", A, G2, Damping(0.01, 0.1))
    expected = torch.linalg.inv(Q3 + (0.01 + r) * torch.eye(6, dtype=torch.float64))
    assert float((state["inv_a"] - expected).norm() / expected.norm()) < 2e-3
    unquantised = torch.linalg.inv(A + 0.01 * torch.eye(6, dtype=torch.float64))
    assert float((state["inv_a"] - unquantised).norm() / unquantised.norm()) > 0.1
    with pytest.raises(ValueError, match="positive definite"):
        s_ng = Thermodynamic(1, device=IDEAL, mode="error_model", averaging_s=1e-3, input_bits=3, guard=False)
        s_ng.prepare("l", A, G2, Damping(1e-3, 0.1))


def test_output_quantisation_puts_the_result_on_a_b_bit_grid():
    b = 4
    s = Thermodynamic(1, device=IDEAL, mode="error_model", averaging_s=1e-2, output_bits=b)
    state, _ = s.prepare("l", A3, G2, DAMP)
    for X in (state["inv_a"], state["inv_g"]):
        step = float(X.abs().max()) / (2 ** (b - 1) - 1)
        k = X / step
        assert torch.allclose(k, k.round(), atol=1e-9) and int(k.abs().max().round()) == 2 ** (b - 1) - 1
    s2 = Thermodynamic(2, device=IDEAL, mode="error_model", averaging_s=1e-2, diffusion=1.0, output_bits=b)
    state, _ = s2.prepare("l", A3, G2, DAMP)
    U, _ = s2.apply("l", state, M23)
    step = float(U.abs().max()) / (2 ** (b - 1) - 1)
    assert torch.allclose(U / step, (U / step).round(), atol=1e-9)


@pytest.mark.parametrize("method", [1, 2])
def test_kfac_step_reports_device_time_next_to_digital_time(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))
    solver = Thermodynamic(method, device=IDEAL, mode="error_model", averaging_s=1e-3, diffusion=1.0)
    kfac = KFAC(net, solver=solver, inverse_update_interval=2)
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    reports = []
    for _ in range(3):
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        reports.append(kfac.step())
    for r in reports:
        assert set(r.digital_time_s) == {"factors", "inverse", "precondition"}
        device_work = r.inverse_update if method == 1 else True
        assert (r.device_time_s > 0) == device_work and (r.device_energy_j > 0) == device_work
        assert 0 <= r.device_time_parallel_s <= r.device_time_s
        if device_work:  # two layers, one device each: the slowest is less than both in turn
            assert r.device_time_parallel_s < r.device_time_s
    assert kfac.device_time_s == pytest.approx(sum(r.device_time_s for r in reports))


def test_argument_checks_name_the_argument():
    for kw, match in (({"method": 3}, "method"), ({"system": "dense"}, "system"), ({"mode": "fast"}, "mode"),
                      ({"tol": 2.0}, "tol"), ({"averaging_s": 0.0}, "averaging_s"), ({"input_bits": 1}, "input_bits"),
                      ({"roundings": 0}, "roundings"), ({"rounding": "up"}, "rounding"), ({"diffusion": -1.0}, "diffusion")):
        with pytest.raises(ValueError, match=match):
            Thermodynamic(**kw)
    with pytest.raises(TypeError, match="output_bits"):
        Thermodynamic(output_bits=4.0)
    with pytest.raises(TypeError, match="device"):
        Thermodynamic(device="chip")
    with pytest.raises(ValueError, match="eigh"):
        Thermodynamic().prepare("l", A3, G2, Damping(0, 0, 0.1))


@pytest.mark.parametrize("shape", [(520, 513), (513, 600), (512, 512), (600, 9)])
def test_padded_preconditioning_equals_the_plain_products(shape):
    """The zero-padded matmuls of large layers (odd sizes from the bias column) give G^-1 M A^-1 up to the
    summation order, for square, tall and wide layers, and leave small or already aligned ones alone."""
    from thermoai.optim.solvers import _sandwich

    g = torch.Generator().manual_seed(0)
    d_out, d_in = shape
    G = torch.randn(d_out, d_out, generator=g, dtype=torch.float64)
    A = torch.randn(d_in, d_in, generator=g, dtype=torch.float64)
    M = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    U = _sandwich(G, M, A)
    assert U.shape == shape
    torch.testing.assert_close(U, (G @ M) @ A, rtol=1e-12, atol=1e-10)
    a_diag = torch.rand(d_in, generator=g, dtype=torch.float64)
    torch.testing.assert_close(_sandwich(G, M, a_diag), (G @ M) * a_diag, rtol=0, atol=0)
