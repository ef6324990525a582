"""The SGMCMC noise draw (one scaled normal_ over the whole tree into a reused buffer): its distribution,
independence between leaves and between steps, reproducibility, and that no state aliases the buffer."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

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
    # the flat draw is torch's own normal_: the same numbers as one randn over the concatenated tree
    flat = torch.randn(80_000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat(a), flat)


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
