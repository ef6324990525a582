"""Tests of Device's per-array mismatch patterns, the couplings' thermal noise and the cell/coupling counts of
its operating cost (thermoai.thermo.device)."""

import dataclasses
import math

import pytest
import torch

from thermoai.thermo.device import BOLTZMANN, Cost, Device

F64 = torch.float64


def _spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, generator=g, dtype=F64)
    return M @ M.T / d + torch.eye(d, dtype=F64)


def test_each_array_has_its_own_reproducible_mismatch_pattern():
    d, mis = 64, 0.05
    dev = Device(n_cells=d, mismatch=mis, dac_bits=24)  # DAC error ~1e-7: the mismatch alone
    A = torch.full((d, d), 2.0, dtype=F64)
    A[0, 1] = 2.0 - 1e-9  # not symmetric: one coupling per entry
    cells, cost = dev.program(A)
    assert torch.equal(cells, dev.program(A, array="couplings")[0])  # the default array is the cells' own
    other, cost2 = dev.program(A, array="conductances")
    assert cost2 == cost == dev.program_cost(d * d)
    r1, r2 = (cells / 2 - 1).flatten(), (other / 2 - 1).flatten()
    n = r1.numel()
    # each array: relative spread with sd = mismatch (5 standard errors of a sample sd, sd / sqrt(2n))
    for r in (r1, r2):
        assert abs(float(r.std()) - mis) < 5 * mis / math.sqrt(2 * n)
    # independent patterns: the correlation of the two arrays' errors is 0 within 5 / sqrt(n)
    corr = float(torch.corrcoef(torch.stack([r1, r2]))[0, 1])
    assert abs(corr) < 5 / math.sqrt(n)
    # reproducible: the same chip and array name give the same values; another chip (seed) another pattern
    assert torch.equal(other, dev.program(A, array="conductances")[0])
    assert not torch.equal(other, dataclasses.replace(dev, seed=1).program(A, array="conductances")[0])
    assert not torch.equal(other, dev.program(A, array="sources")[0])


def test_independent_arrays_do_not_cancel_in_a_ratio():
    """C^-1 G with C and G both the same matrix: one pattern cancels exactly (C^-1 G = I), two independent
    patterns leave relative errors of sd sqrt(2) mismatch in G - C."""
    d, mis = 16, 0.02
    dev = Device(n_cells=d, mismatch=mis, dac_bits=24)
    P = torch.full((d, d), 0.5, dtype=F64) + torch.eye(d, dtype=F64)  # no entry near zero
    same = torch.linalg.solve(dev.program(P)[0], dev.program(P)[0])
    assert torch.allclose(same, torch.eye(d, dtype=F64), atol=1e-12)
    C = dev.program(P, array="capacitances")[0]
    G = dev.program(P, array="conductances")[0]
    rel = ((G - C) / P)[tuple(torch.triu_indices(d, d))]  # symmetric: one coupling per pair
    n, sd = rel.numel(), mis * math.sqrt(2)
    assert abs(float(rel.std()) - sd) < 5 * sd / math.sqrt(2 * n)
    assert float((torch.linalg.solve(C, G) - torch.eye(d, dtype=F64)).abs().max()) > mis / 4


def test_arrays_larger_than_the_cells_and_fixed_array_size():
    dev = Device(n_cells=4, mismatch=0.05, dac_bits=16)
    X = torch.ones(10, 3, dtype=F64)
    with pytest.raises(ValueError, match="at most n_cells = 4"):
        dev.program(X)  # the cells' array holds at most n_cells
    full, cost = dev.program(X, array="crossbar", array_cells=10)
    assert full.shape == (10, 3) and cost == dev.program_cost(30)
    # blocks written into the same array keep the errors of their positions
    assert torch.equal(dev.program(X[:6], array="crossbar", array_cells=10)[0], full[:6])
    assert torch.equal(dev.program(X[:2, :1], array="crossbar", array_cells=10)[0], full[:2, :1])
    with pytest.raises(TypeError, match="array must be a non-empty string"):
        dev.program(X, array="")
    with pytest.raises(ValueError, match="array_cells"):
        dev.program(X, array="crossbar", array_cells=0)


def test_couplings_thermal_noise_gives_the_kT_over_C_law():
    """The Johnson noise of the couplings alone: stationary covariance sigma_th^2 M^-1 whatever G is
    (fluctuation-dissipation); the cells' own floor (the default) gives sigma_th^2 A^-1 instead."""
    d = 6
    dev = Device(n_cells=d, capacitance=BOLTZMANN * 300 / 0.25)  # sigma_th^2 = 0.25 state units^2
    assert dev.thermal_variance == pytest.approx(0.25, rel=1e-12)
    G = _spd(d, 1)
    S = dev.process(G, 0.0, thermal="couplings").stationary_covariance()
    assert torch.allclose(S, 0.25 * torch.eye(d, dtype=F64), rtol=0, atol=1e-10)
    S_cells = dev.process(G, 0.0).stationary_covariance()
    assert torch.allclose(S_cells, 0.25 * torch.linalg.inv(G), rtol=0, atol=1e-10)
    M = _spd(d, 2)  # a Maxwell (capacitance) matrix
    A = torch.linalg.solve(M, G)
    S_M = dev.process(A, 0.0, thermal="couplings", capacitance=M).stationary_covariance()
    assert torch.allclose(S_M, 0.25 * torch.linalg.inv(M), rtol=0, atol=1e-10)
    # requested diffusion adds on top, scaled by noise_scale^2
    dev2 = dataclasses.replace(dev, noise_scale=0.5)
    D = dev2.process(G, 2.0, thermal="couplings").D
    assert torch.allclose(D, 0.5 * torch.eye(d, dtype=F64) + 0.25 * 2 * G, atol=1e-12)
    with pytest.raises(ValueError, match="thermal must be one of"):
        dev.process(G, thermal="resistors")
    with pytest.raises(ValueError, match="capacitance is used with thermal='couplings' only"):
        dev.process(G, capacitance=M)
    with pytest.raises(ValueError, match="capacitance must be symmetric positive definite"):
        dev.process(G, thermal="couplings", capacitance=-M)
    with pytest.raises(ValueError, match="capacitance must be a finite"):
        dev.process(G, thermal="couplings", capacitance=torch.eye(3, dtype=F64))


def test_operating_cost_counts_cells_and_couplings_apart():
    dev = Device(n_cells=8, power_per_cell=1e-3, power_per_coupling=1e-6, adc_energy_per_conversion=1e-10)
    base = dev.operating_cost(3, 4, 2e-6, 100)
    assert base == dev.operating_cost(3, 4, 2e-6, 100, cells=4, couplings=16)
    c = dev.operating_cost(3, 4, 2e-6, 100, cells=10, couplings=16 + 48)
    assert c.time == base.time == 3 * 2e-6
    assert c.energy == pytest.approx(3 * (10 * 1e-3 + 64 * 1e-6) * 2e-6 + 100 * 1e-10, rel=1e-14)
    assert c.energy - base.energy == pytest.approx(3 * (6 * 1e-3 + 48 * 1e-6) * 2e-6, rel=1e-12)
    assert dev.operating_cost(1, 4, 1.0, 0, couplings=0) == Cost(1.0, 4e-3)
    with pytest.raises(ValueError, match="cells must be a non-negative integer"):
        dev.operating_cost(1, 4, 1.0, 0, cells=-1)
    with pytest.raises(ValueError, match="couplings must be a non-negative integer"):
        dev.operating_cost(1, 4, 1.0, 0, couplings=2.5)
