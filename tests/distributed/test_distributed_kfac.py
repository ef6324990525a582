"""Data-parallel K-FAC on 2 CPU processes (gloo, loopback) against single-process K-FAC on the global batch.

One launch (:func:`dist_workers.scenario_kfac`) first has rank 1 ask for other settings (refused), then
trains the same MLP under ``DistributedDataParallel`` with each configuration for 20 steps, each rank on
its half of every global batch, and saves a checkpoint at step 10. The tests recompute everything in this
process with the plain ``KFAC`` on the whole batch.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import dist_workers as W
from dist_launch import describe, launch
from thermoai.optim import KFAC, Thermodynamic
from thermoai.optim import distributed as od
from thermoai.optim.solvers import Damping

WORKERS = str(W.__file__)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfac")
    results = launch([WORKERS, "kfac", str(out)], 2, out, timeout_s=150)
    assert all(r.returncode == 0 for r in results), describe(results)
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks, infos


def single_process(cfg: dict, steps: int = W.STEPS):
    model = W.kfac_model()
    kfac = KFAC(model, **W.single_process_kwargs(cfg))
    reports = W.train(model, kfac, steps)
    return model, kfac, reports


@pytest.mark.parametrize("name", list(W.KFAC_CONFIGS))
def test_two_ranks_equal_single_process_kfac_after_20_steps(run, name):
    _, ranks, infos = run
    # both ranks own layers, so the broadcasts (of states, or of U with strategy="mem") are exercised
    assert set(infos[0][f"{name}.owners"].values()) == {0, 1}
    model, _, _ = single_process(W.KFAC_CONFIGS[name])
    reference = W.params_of(model, name)
    for key, ref in reference.items():
        # the ranks apply identical updates: bit for bit the same parameters
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        # against one process: the factor sums are added in another order, nothing else differs
        torch.testing.assert_close(ranks[0][key], ref, rtol=1e-10, atol=1e-12, msg=f"{name}: {key}")
    # and the run moved: equality with the initial parameters would prove nothing
    start = W.params_of(W.kfac_model(), name)
    assert max(float((reference[k] - start[k]).abs().max()) for k in reference) > 1e-2


def test_checkpoint_saved_from_two_ranks_resumes_on_one(run):
    out, ranks, _ = run
    ck = od.load_checkpoint(out / "kfac_checkpoint.safetensors")
    assert ck.world_size == 2 and ck.extra == {"step": W.CHECKPOINT_STEP} and ck.config_hash
    cfg = W.single_process_kwargs(W.KFAC_CONFIGS["comm"])
    model = W.kfac_model()
    model.load_state_dict(ck.model)
    kfac = KFAC(model, **cfg)
    kfac.load_state_dict(ck.kfac)
    assert kfac.steps == W.CHECKPOINT_STEP
    W.train(model, kfac, W.STEPS - W.CHECKPOINT_STEP, start=W.CHECKPOINT_STEP)
    uninterrupted, _, _ = single_process(W.KFAC_CONFIGS["comm"])
    for key, value in W.params_of(model, "comm").items():
        torch.testing.assert_close(value, ranks[0][key], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(value, W.params_of(uninterrupted, "comm")[key], rtol=1e-10, atol=1e-12)


def test_thermodynamic_solvers_form_a_pool_of_the_ranks_devices(run):
    _, ranks, infos = run
    info = infos[0]
    owners = {k: int(v) for k, v in info["thermo1.owners"].items()}
    reports = info["thermo1.reports"]
    # step 0 prepares every layer: redo each layer's device run from the single-process factors
    model = W.kfac_model()
    cfg = W.THERMO_CONFIGS["thermo1"]()
    kfac = KFAC(model, **W.single_process_kwargs(cfg))
    single = W.train(model, kfac, 1)[0]
    sd = kfac.state_dict()
    per_layer = {}
    for name, (A, G) in kfac.factors().items():
        _, usage = Thermodynamic(method=1, mode="error_model").prepare(
            name, A, G, Damping.from_tensor(sd[f"layer.{name}.damping"]))
        per_layer[name] = usage.time_s
    expected = [sum(t for n, t in per_layer.items() if owners[n] == r) for r in range(2)]
    first = reports[0]
    assert first["rank_device_time_s"] == pytest.approx(expected, rel=1e-9)
    assert first["device_time_s"] == pytest.approx(single.device_time_s, rel=1e-9)  # all layers, one device
    assert first["device_time_pool_s"] == pytest.approx(max(expected), rel=1e-9)  # one device per rank
    assert first["device_time_parallel_s"] == pytest.approx(max(per_layer.values()), rel=1e-9)
    assert 0 < first["device_time_pool_s"] < first["device_time_s"]
    # only inverse steps use the device (method 1), and the totals add the reports up
    assert [r["step"] for r in reports if r["device_time_s"] > 0] == [0, 5, 10, 15]
    assert info["thermo1.device_time_pool_s"] == pytest.approx(sum(r["device_time_pool_s"] for r in reports))
    assert info["thermo1.device_time_s"] == pytest.approx(sum(r["device_time_s"] for r in reports))
    assert infos[1]["thermo1.reports"][0]["rank_device_time_s"] == first["rank_device_time_s"]


def test_method_two_solves_on_the_owners_and_shares_the_updates(run):
    _, ranks, infos = run
    reports = infos[0]["thermo2.reports"]
    assert all(r["device_time_s"] > 0 and min(r["rank_device_time_s"]) > 0 for r in reports)  # every step
    model = W.kfac_model()
    single = W.train(model, KFAC(model, **W.single_process_kwargs(W.THERMO_CONFIGS["thermo2"]())), 1)[0]
    assert reports[0]["device_time_s"] == pytest.approx(single.device_time_s, rel=1e-9)
    # each rank's device noise differs, but every rank applies the owners' U: identical parameters
    for key in W.params_of(W.kfac_model(), "thermo2"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert bool(torch.isfinite(ranks[0][key]).all())


def test_reports_name_the_owned_layers_and_time_the_collectives(run):
    _, _, infos = run
    for r in range(2):
        owners = infos[r]["comm.owners"]
        for rep in infos[r]["comm.reports"]:
            assert rep["owned_layers"] == [n for n, o in owners.items() if o == r]
            assert rep["communication_s"] > 0  # the factor all-reduce runs every step here
        assert infos[r]["comm.communication_s"] >= sum(rep["communication_s"] for rep in infos[r]["comm.reports"]) * 0.99


def test_a_rank_with_another_configuration_is_refused_at_start_up(run):
    _, _, infos = run
    for info in infos:
        # every rank refuses, and says what differs and where
        assert info["kfac"].startswith("DistributedKFAC: the ranks were started with different configurations")
        assert "rank 1 differs from rank 0 in kfac.damping (rank 0: 0.01, rank 1: 0.02)" in info["kfac"]
        assert "rank 1 differs from rank 0 in seed (rank 0: 11, rank 1: 12)" in info["ensemble"]
        assert info["after"] == "accepted"
