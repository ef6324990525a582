"""The distributed classes in one process (no process group): the work assignment, the configuration
check, and a one-rank pool that is exactly the single-process API."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

import dist_workers as W
from thermoai.bayes import distributed as bd
from thermoai.bayes import ensemble
from thermoai.optim import KFAC
from thermoai.optim import distributed as od

# --------------------------------------------------------------------------------------- assignment


def test_greedy_assignment_takes_the_largest_first_to_the_least_loaded_rank():
    assert od.assign_layers({"a": 8, "b": 1, "c": 7, "d": 2}, 2) == {"a": 0, "b": 0, "c": 1, "d": 1}
    assert od.assign_layers({"a": 1, "b": 1, "c": 1}, 2) == {"a": 0, "b": 1, "c": 0}  # ties: given order, low rank
    assert od.assign_layers({"a": 5}, 3) == {"a": 0}


def test_greedy_assignment_is_within_four_thirds_of_the_best():
    rng = random.Random(0)
    for _ in range(50):
        costs = {f"l{i}": float(rng.randint(1, 30) ** 3) for i in range(rng.randint(2, 7))}
        world = rng.randint(2, 3)
        owners = od.assign_layers(costs, world)
        busiest = max(sum(c for n, c in costs.items() if owners[n] == r) for r in range(world))
        best = min(max(sum(c for (n, c), o in zip(costs.items(), combo) if o == r) for r in range(world))
                   for combo in itertools.product(range(world), repeat=len(costs)))
        assert best <= busiest <= 4 / 3 * best + 1e-9


def test_factor_costs_are_cubes_or_squares():
    assert od.factor_cost(10) == 1000 and od.factor_cost(10, "memory") == 100
    assert od.factor_cost(10, diagonal=True) == 10
    with pytest.raises(ValueError, match="assignment"):
        od.factor_cost(3, "time")
    with pytest.raises(ValueError, match="world_size"):
        od.assign_layers({"a": 1}, 0)
    with pytest.raises(ValueError, match="costs"):
        od.assign_layers({"a": -1.0}, 2)


def test_costs_follow_the_layer_shapes():
    kfac = od.DistributedKFAC(W.kfac_model(), assignment="memory")
    # Linear(6, 12): A is 7 x 7 (bias), G 12 x 12
    assert kfac.loads == [7**2 + 12**2 + 13**2 + 8**2 + 9**2 + 3**2]
    emb = od.DistributedKFAC(nn.Sequential(nn.Embedding(50, 4), nn.Linear(4, 2)))
    assert emb.loads == [50 + 4**3 + 5**3 + 2**3]  # a diagonal A costs its size


# ---------------------------------------------------------------------------------- configuration


def test_configuration_check_hashes_and_validates_in_one_process():
    h = od.check_same_config({"lr": 0.1, "data": {"n": 3}})
    assert h == od.check_same_config({"data": {"n": 3}, "lr": 0.1}) and len(h) == 16
    assert h != od.check_same_config({"lr": 0.2, "data": {"n": 3}})
    assert bd.check_same_config({"lr": 0.1, "data": {"n": 3}}) == h
    with pytest.raises(TypeError, match="JSON-able"):
        od.check_same_config({"f": object()})
    with pytest.raises(TypeError, match="config must be a mapping"):
        bd.check_same_config([1, 2])
    # one class each, whichever module a user imports them from
    assert bd.DistributedError is od.DistributedError and bd.ConfigMismatchError is od.ConfigMismatchError


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="strategy"):
        od.DistributedKFAC(W.kfac_model(), strategy="hybrid")
    with pytest.raises(ValueError, match="assignment"):
        od.DistributedKFAC(W.kfac_model(), assignment="flops")
    with pytest.raises(TypeError, match="config"):
        od.DistributedKFAC(W.kfac_model(), config=[1])
    with pytest.raises(ValueError, match="group was given"):
        od.DistributedKFAC(W.kfac_model(), group=object())
    with pytest.raises(ValueError, match="shards"):
        bd.DistributedEnsemble(W.member_transform(), n_members=2, shards=3)
    with pytest.raises(ValueError, match="n_members"):
        bd.DistributedEnsemble(W.member_transform(), n_members=0)
    with pytest.raises(TypeError, match="transform"):
        bd.DistributedEnsemble(lambda p: p, n_members=2)
    ens = bd.DistributedEnsemble(W.member_transform(), n_members=2)
    state = ens.init(W.member_params)
    with pytest.raises(TypeError, match="generator"):
        ens.update(state, W.ensemble_batch(0), generator=torch.Generator())
    with pytest.raises(ValueError, match="2 members"):
        ens.update(ensemble.member(state, 0), W.ensemble_batch(0))
    with pytest.raises(ValueError, match="call init"):
        bd.DistributedEnsemble(W.member_transform(), n_members=2).update(state, W.ensemble_batch(0))


# ----------------------------------------------------------------------------------- one-rank pools


def test_one_rank_distributed_kfac_is_kfac_bit_for_bit():
    cfg = W.KFAC_CONFIGS["comm"]
    m1, m2 = W.kfac_model(), W.kfac_model()
    plain = KFAC(m1, **W.single_process_kwargs(cfg))
    pooled = od.DistributedKFAC(m2, **cfg)
    W.train(m1, plain, 12)
    reports = W.train(m2, pooled, 12)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert isinstance(reports[0], od.DistributedStepReport) and reports[0].owned_layers == tuple(pooled.layers)
    sa, sb = plain.state_dict(), pooled.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:  # the damping record holds NaN for "no exact damping"
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, equal_nan=True, msg=k)


def test_a_one_rank_checkpoint_loads_into_plain_kfac(tmp_path):
    model = W.kfac_model()
    kfac = od.DistributedKFAC(model, **W.KFAC_CONFIGS["mem_exact"])
    W.train(model, kfac, 5)
    path = od.save_checkpoint(tmp_path / "k.safetensors", kfac, model, extra={"note": "one rank"})
    ck = od.load_checkpoint(path)
    assert ck.world_size == 1 and ck.extra == {"note": "one rank"}
    other = KFAC(W.kfac_model(), **W.single_process_kwargs(W.KFAC_CONFIGS["mem_exact"]))
    other.load_state_dict(ck.kfac)
    for k, v in other.state_dict().items():
        torch.testing.assert_close(v, kfac.state_dict()[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file, renamed
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        od.load_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        od.load_checkpoint(tmp_path / "missing.safetensors")


def test_one_shard_is_the_plain_ensemble_with_the_shards_stream():
    # the distributed ensemble adds nothing to the arithmetic: one shard is ensemble.build drawing from a
    # generator seeded like the shard's stream
    ens = bd.DistributedEnsemble(W.member_transform(), n_members=3, seed=5)
    state = ens.init(W.member_params)
    plain = ensemble.build(W.member_transform(), 3)
    gen = torch.Generator().manual_seed(bd._shard_seed(5, 0))
    ref = plain.init([W.member_params(k) for k in range(3)], generator=gen)
    for s in range(6):
        state, _ = ens.update(state, W.ensemble_batch(s), inplace=True)
        ref, _ = plain.update(ref, W.ensemble_batch(s), generator=gen)
    for key in ("w", "b"):
        assert torch.equal(state.params[key], ref.params[key])
        assert torch.equal(state.momenta[key], ref.momenta[key])


def test_the_shards_streams_leave_the_global_generator_alone():
    ens = bd.DistributedEnsemble(W.member_transform(), n_members=4, shards=2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    state = ens.init(W.member_params)
    ens.update(state, W.ensemble_batch(0), inplace=True)
    assert torch.equal(torch.get_rng_state(), before)


def test_ensemble_checkpoint_round_trip_and_its_refusals(tmp_path):
    ens = bd.DistributedEnsemble(W.member_transform(), n_members=4, shards=2, seed=1)
    state = ens.init(W.member_params)
    for s in range(3):
        state, _ = ens.update(state, W.ensemble_batch(s), inplace=True)
    path = ens.save(tmp_path / "e.safetensors", state)
    # the streams live in the ensemble object (like a Generator): a second one resumes from the file
    again = bd.DistributedEnsemble(W.member_transform(), n_members=4, shards=2, seed=1)
    resumed = again.load(path, again.init(W.member_params))
    a, _ = ens.update(state, W.ensemble_batch(3))
    b, _ = again.update(resumed, W.ensemble_batch(3))
    assert torch.equal(a.params["w"], b.params["w"])  # the streams came back too
    assert not torch.equal(a.params["w"], state.params["w"])
    wrong_seed = bd.DistributedEnsemble(W.member_transform(), n_members=4, shards=2, seed=2)
    with pytest.raises(ValueError, match="seed=1"):
        wrong_seed.load(path, wrong_seed.init(W.member_params))
    with pytest.raises(ValueError, match="leaves"):
        ens.load(path, ens.init(lambda k: {"w": W.member_params(k)["w"]}))
