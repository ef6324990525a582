"""Ensembles and parallel SGHMC chains on 2 CPU processes (gloo, loopback) against the same ensemble on 1.

One launch (:func:`dist_workers.scenario_ensemble`) runs 4 noisy SGHMC chains in 2 shards on 2 ranks (a
checkpoint at step 10), then 5 chains in 3 shards (2 and 3 members per rank, batches per member). The
tests run the same ensembles in this process, without a process group.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import dist_workers as W
from dist_launch import describe, launch
from thermoai.bayes import diagnostics, ensemble
from thermoai.bayes import distributed as bd

WORKERS = str(W.__file__)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble")
    results = launch([WORKERS, "ensemble", str(out)], 2, out, timeout_s=120)
    assert all(r.returncode == 0 for r in results), describe(results)
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks, infos


@pytest.fixture(scope="module")
def one_rank():
    ens = bd.DistributedEnsemble(W.member_transform(), **W.ENSEMBLE)
    trace = diagnostics.Trace()
    state = W.run_ensemble(ens, ens.init(W.member_params), 0, W.ENS_STEPS, trace)
    return ens, state, trace


def test_four_members_on_two_ranks_equal_the_same_ensemble_on_one(run, one_rank):
    _, ranks, infos = run
    ens, state, trace = one_rank
    assert infos[0]["members"] == [0, 1] and infos[1]["members"] == [2, 3]
    for key in ("w", "b"):
        # the same shards and streams, wherever they run: bit for bit the same chains
        assert torch.equal(ranks[0][f"params.{key}"], state.params[key]), key
        assert torch.equal(ranks[0][f"momenta.{key}"], state.momenta[key]), key
        assert torch.equal(ranks[1][f"params.{key}"], state.params[key]), key  # gathered on every rank
        assert torch.equal(ranks[1][f"local.{key}"], state.params[key][2:]), key  # rank 1 ran members 2, 3
    # noisy chains: the members differ from one another and from their start
    assert float((state.params["w"][0] - state.params["w"][1]).abs().max()) > 1e-3
    start = ensemble.stack([W.member_params(k) for k in range(4)])
    assert float((state.params["w"] - start["w"]).abs().max()) > 1e-2


def test_gathered_predictions_and_rhat_cover_all_chains(run, one_rank):
    _, ranks, _ = run
    ens, state, trace = one_rank
    preds = ens.predict(W.forward, state.params, W.ensemble_data()[2])
    assert ranks[0]["predictions"].shape == (4, 7)
    torch.testing.assert_close(ranks[0]["predictions"], preds, rtol=1e-12, atol=1e-12)
    rhat = ens.split_rhat(trace.samples)
    ess = ens.effective_sample_size(trace.samples)
    for key in ("w", "b"):
        torch.testing.assert_close(ranks[0][f"rhat.{key}"], rhat[key], rtol=1e-12, atol=0)
        torch.testing.assert_close(ranks[1][f"rhat.{key}"], rhat[key], rtol=1e-12, atol=0)
        torch.testing.assert_close(ranks[0][f"ess.{key}"], ess[key], rtol=1e-12, atol=0)
    # the chains of one rank alone give another R-hat: the gathered one used all four
    rank0_only = diagnostics.split_rhat(diagnostics.draws_to_chains({"w": trace.samples["w"][:, :2]}))
    assert not torch.allclose(rank0_only["w"], rhat["w"])


def test_checkpoint_saved_from_two_ranks_resumes_on_one(run, one_rank):
    out, ranks, _ = run
    path = out / "ensemble_checkpoint.safetensors"
    header = bd.DistributedEnsemble.read_header(path)
    assert header["world_size"] == 2 and header["shards"] == 2 and header["extra"] == {"step": W.ENS_STEPS // 2}
    ens = bd.DistributedEnsemble(W.member_transform(), **W.ENSEMBLE)
    state = ens.load(path, ens.init(W.member_params))
    assert int(state.step[0]) == W.ENS_STEPS // 2
    state = W.run_ensemble(ens, state, W.ENS_STEPS // 2, W.ENS_STEPS, diagnostics.Trace())
    for key in ("w", "b"):
        assert torch.equal(state.params[key], one_rank[1].params[key]), key
        assert torch.equal(state.params[key], ranks[0][f"params.{key}"]), key


def test_uneven_shards_and_per_member_batches(run):
    _, ranks, infos = run
    assert infos[0]["uneven_members"] == [0, 1] and infos[1]["uneven_members"] == [2, 3, 4]
    assert infos[0]["uneven_shards"] == [0] and infos[1]["uneven_shards"] == [1, 2]
    ens = bd.DistributedEnsemble(W.member_transform(), **W.UNEVEN)
    state, aux = W.run_uneven(ens)
    for key in ("w", "b"):
        assert torch.equal(ranks[0][f"uneven.{key}"], state.params[key]), key
    assert torch.equal(ranks[0]["uneven.aux"], aux["sq"])


def test_loading_needs_the_same_members_shards_and_seed(run):
    out, _, _ = run
    other = bd.DistributedEnsemble(W.member_transform(), n_members=4, shards=4, seed=11)
    with pytest.raises(ValueError, match="shards=2"):
        other.load(out / "ensemble_checkpoint.safetensors", other.init(W.member_params))
