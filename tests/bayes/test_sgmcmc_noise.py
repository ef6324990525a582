"""The SGMCMC noise draw (one scaled draw over the whole tree into a reused buffer, thermoai.philox for float32): its distribution,
independence between leaves and between steps, reproducibility, and that no state aliases the buffer."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from thermoai import philox
from thermoai.bayes.sgmcmc import _common as C
from thermoai.bayes.sgmcmc import sghmc, sgld


def tree_leaves():
    return [torch.zeros(300, 200), torch.zeros(7), torch.zeros(50_000, dtype=torch.float64), torch.zeros(3, 1, 5)]


def test_draws_are_standard_normal_times_std():
    ls = tree_leaves()
    noise = C.scratch_normal(ls, 0.25, torch.Generator().manual_seed(0))
    assert [n.shape for n in noise] == [x.shape for x in ls] and [n.dtype for n in noise] == [x.dtype for x in ls]
    for n in (noise[0], noise[2]):  # 60 000 and 50 000 draws, one per dtype buffer
        z = n.double().reshape(-1) / 0.25
        k = z.numel()
        assert abs(float(z.mean())) < 5 / math.sqrt(k)
        assert abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / k)
        assert abs(float((z**4).mean()) - 3.0) < 5 * math.sqrt(96 / k)  # var(z^4) = 105 - 9
        assert scipy.stats.kstest(z.numpy(), "norm").pvalue > 1e-3


def test_leaves_and_steps_are_independent_and_seeded():
    ls = [torch.zeros(40_000), torch.zeros(40_000)]
    g = torch.Generator().manual_seed(1)
    a = [x.clone() for x in C.scratch_normal(ls, 1.0, g)]
    b = [x.clone() for x in C.scratch_normal(ls, 1.0, g)]
    bound = 5 / math.sqrt(40_000)  # sd of a sample correlation of independent draws
    assert abs(float(torch.corrcoef(torch.stack([a[0], a[1]]))[0, 1])) < bound  # leaf against leaf
    assert abs(float(torch.corrcoef(torch.stack([a[0], b[0]]))[0, 1])) < bound  # step against step
    again = C.scratch_normal(ls, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], a[0]) and torch.equal(again[1], a[1])
    # float32 on the CPU: one Philox draw over the concatenated tree, keyed by one draw of the generator
    # (torch's normal_ with the generator where the kernel cannot be built)
    g = torch.Generator().manual_seed(1)
    if philox.available():
        flat = philox.normal_(torch.empty(80_000), 1.0, philox.draw_key(g))
    else:
        flat = torch.randn(80_000, generator=g)
    assert torch.equal(torch.cat(a), flat)
    # float64 leaves keep torch's own normal_ with the generator
    d = C.scratch_normal([torch.zeros(10, dtype=torch.float64)], 2.0, torch.Generator().manual_seed(4))[0]
    assert torch.equal(d, 2.0 * torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("inplace", [False, True])
def test_states_never_alias_the_scratch_buffer(inplace):
    lp = lambda p, b: (-0.5 * (p["w"] ** 2).sum() - 0.5 * (p["b"] ** 2).sum(), torch.tensor([]))  # noqa: E731
    for transform in (sgld.build(lp, lr=0.1), sghmc.build(lp, lr=0.1)):
        s1, _ = transform.update(transform.init({"w": torch.ones(4, 3), "b": torch.ones(3)}), None, inplace=inplace)
        kept = {k: v.clone() for k, v in s1.params.items()}
        transform.update(transform.init({"w": torch.zeros(4, 3), "b": torch.zeros(3)}), None)  # draws again
        assert all(torch.equal(s1.params[k], kept[k]) for k in kept)
    C.release_scratch()
    assert C.scratch_normal([torch.zeros(2)], 1.0, None)[0].shape == (2,)


def test_add_noise_in_place_draws_each_float32_leaf_in_its_own_stream():
    target = [torch.ones(3000), torch.zeros(20, 30), torch.zeros(500, dtype=torch.float64), torch.zeros(8, 8).t()]
    g = torch.Generator().manual_seed(9)
    before = [t.clone() for t in target]
    out = C.add_noise(target, 0.5, g, inplace=True)
    assert all(o is t for o, t in zip(out, target))  # in place
    if not philox.available():
        pytest.skip("no compiled kernel: the scratch path is tested above")
    g = torch.Generator().manual_seed(9)
    key = philox.draw_key(g)
    for i in (0, 1):  # contiguous float32 leaves: stream (key, leaf index), added in place
        assert torch.equal(target[i], philox.add_normal_(before[i].clone(), 0.5, key, offset=i))
    # the float64 leaf and the transposed (non-contiguous) one: one scratch draw after the key
    rest = C.scratch_normal([before[2], before[3]], 0.5, g)
    assert torch.equal(target[2], before[2] + rest[0]) and torch.equal(target[3], before[3] + rest[1])
    z = torch.cat([(target[0] - 1).reshape(-1), target[1].reshape(-1)]) / 0.5
    k = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(k) and abs(float(z.var()) - 1) < 5 * math.sqrt(2 / k)
    assert abs(float(torch.corrcoef(torch.stack([z[:600], z[3000:3600]]))[0, 1])) < 5 / math.sqrt(600)
