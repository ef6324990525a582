"""The problems of the distributed tests, and the rank programs that run them.

Imported by the tests (problems, single-process references) and run as a script by each rank of
:func:`dist_launch.launch`: ``python dist_workers.py SCENARIO OUTDIR``. Every rank writes
``OUTDIR/rank{r}.safetensors`` (tensors) and ``OUTDIR/rank{r}.json`` (reports, messages).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from thermoai.bayes import distributed as bd
from thermoai.bayes import diagnostics
from thermoai.bayes.sgmcmc import sghmc
from thermoai.optim import Thermodynamic
from thermoai.optim import distributed as od

# ----------------------------------------------------------------------------------------- K-FAC

STEPS, GLOBAL_BATCH = 20, 32
CHECKPOINT_STEP = 10

KFAC_CONFIGS = {
    # owners broadcast prepared states; inverse every 3 steps; KL clipping reads every layer's U
    "comm": dict(damping=1e-2, inverse_update_interval=3, kl_clip=1e-2, lr=0.1),
    # states stay on their owner, which broadcasts U; eigen-basis damping
    "mem_exact": dict(strategy="mem", damping_form="exact", damping=1e-2, inverse_update_interval=2, kl_clip=None),
    # factors every 2nd step, n^2 assignment, Cholesky inverses
    "cholesky": dict(solver="cholesky", factor_update_interval=2, inverse_update_interval=4, damping=3e-2,
                     assignment="memory", kl_clip=None),
}
THERMO_CONFIGS = {
    "thermo1": lambda: dict(solver=Thermodynamic(method=1, mode="error_model"), damping=0.1, inverse_update_interval=5,
                            kl_clip=None),
    "thermo2": lambda: dict(solver=Thermodynamic(method=2, mode="error_model"), damping=0.1, kl_clip=None),
}
DISTRIBUTED_ONLY = ("strategy", "assignment", "group", "config")


def kfac_data(dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS, GLOBAL_BATCH, 6, generator=g, dtype=dtype)
    y = torch.sin(x[..., :3] * 2) + 0.1 * torch.randn(STEPS, GLOBAL_BATCH, 3, generator=g, dtype=dtype)
    return x, y


def kfac_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def single_process_kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in DISTRIBUTED_ONLY}


def train(model, kfac, steps, rank: int = 0, world: int = 1, start: int = 0, on_step=None):
    """SGD (no momentum: nothing else to checkpoint) preconditioned by ``kfac``; rank ``r`` takes the
    ``r``-th of ``world`` equal slices of each global batch."""
    x, y = kfac_data()
    n = GLOBAL_BATCH // world
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reports = []
    for s in range(start, start + steps):
        if on_step is not None:
            on_step(s, "before")
        opt.zero_grad()
        xb, yb = x[s, rank * n:(rank + 1) * n], y[s, rank * n:(rank + 1) * n]
        loss = ((model(xb) - yb) ** 2).mean()
        loss.backward()
        if on_step is not None:
            on_step(s, "after_backward")
        reports.append(kfac.step())
        opt.step()
    return reports


def report_json(r) -> dict:
    out = {"step": r.step, "device_time_s": r.device_time_s, "device_time_parallel_s": r.device_time_parallel_s,
           "device_energy_j": r.device_energy_j, "device_runs": r.device_runs}
    for k in ("device_time_pool_s", "rank_device_time_s", "owned_layers", "communication_s"):
        if hasattr(r, k):
            v = getattr(r, k)
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def params_of(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------- ensemble

ENSEMBLE = dict(n_members=4, shards=2, seed=11)
ENS_STEPS = 20
N_DATA = 64


def ensemble_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N_DATA, 5, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64) + 0.3 * torch.randn(N_DATA, generator=g,
                                                                                                dtype=torch.float64)
    x_test = torch.randn(7, 5, generator=g, dtype=torch.float64)
    return x, y, x_test


def log_posterior(p, batch):
    x, y = batch
    pred = x @ p["w"] + p["b"]
    log_lik = -0.5 * ((y - pred) ** 2).mean() / 0.09
    log_prior = -0.5 * ((p["w"] ** 2).sum() + p["b"] ** 2) / N_DATA
    return log_lik + log_prior, {"sq": ((y - pred) ** 2).mean()}


def member_transform():
    # SGHMC at T = 1/N: noisy chains, so equality across layouts needs the shards' own streams
    return sghmc.build(log_posterior, lr=2e-3, alpha=5.0, temperature=1.0 / N_DATA)


def member_params(k: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + k)
    return {"w": torch.randn(5, generator=g, dtype=torch.float64), "b": torch.randn((), generator=g, dtype=torch.float64)}


def ensemble_batch(step: int):
    x, y, _ = ensemble_data()
    idx = torch.randperm(N_DATA, generator=torch.Generator().manual_seed(1000 + step))[:16]
    return x[idx], y[idx]


UNEVEN = dict(n_members=5, shards=3, seed=2, batch_per_member=True)  # 2 ranks: 2 and 3 members, 1 and 2 shards


def member_batches(step: int, n_members: int = 5):
    """A batch per member (leading dimension ``n_members``): batch_per_member."""
    x, y, _ = ensemble_data()
    g = torch.Generator().manual_seed(2000 + step)
    idx = torch.stack([torch.randperm(N_DATA, generator=g)[:16] for _ in range(n_members)])
    return x[idx], y[idx]


def run_uneven(ens: bd.DistributedEnsemble, steps: int = 8):
    state = ens.init(member_params)
    for s in range(steps):
        state, aux = ens.update(state, member_batches(s))  # out of place: the shards' results concatenated
    return state, aux


def forward(p, x):
    return x @ p["w"] + p["b"]


def run_ensemble(ens: bd.DistributedEnsemble, state, start: int, stop: int, trace: diagnostics.Trace):
    for s in range(start, stop):
        state, _ = ens.update(state, ensemble_batch(s), inplace=True)
        trace(state)
    return state


# ---------------------------------------------------------------------------------------- scenarios


def scenario_kfac(rank, world, out: Path, tensors: dict, info: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    refuse_mismatched_configurations(rank, info)  # first: start-up refusals leave the group usable
    for name, cfg in {**KFAC_CONFIGS, **{k: f() for k, f in THERMO_CONFIGS.items()}}.items():
        model = kfac_model()
        ddp = DistributedDataParallel(model)
        kfac = od.DistributedKFAC(ddp, **cfg)
        info[f"{name}.owners"] = kfac.owners

        def on_step(s, when, kfac=kfac, name=name):
            if name == "comm" and s == CHECKPOINT_STEP and when == "before":
                od.save_checkpoint(out / "kfac_checkpoint.safetensors", kfac, ddp, extra={"step": s})

        reports = train(ddp, kfac, STEPS, rank, world, on_step=on_step)
        tensors.update(params_of(model, name))
        info[f"{name}.reports"] = [report_json(r) for r in reports]
        info[f"{name}.device_time_pool_s"] = kfac.device_time_pool_s
        info[f"{name}.device_time_s"] = kfac.device_time_s
        info[f"{name}.communication_s"] = kfac.communication_s


def scenario_ensemble(rank, world, out: Path, tensors: dict, info: dict) -> None:
    ens = bd.DistributedEnsemble(member_transform(), **ENSEMBLE)
    info["members"] = list(ens.members)
    state = ens.init(member_params)
    trace = diagnostics.Trace()
    state = run_ensemble(ens, state, 0, ENS_STEPS // 2, trace)
    ens.save(out / "ensemble_checkpoint.safetensors", state, extra={"step": ENS_STEPS // 2})
    state = run_ensemble(ens, state, ENS_STEPS // 2, ENS_STEPS, trace)
    full = ens.gather(state.params)
    tensors.update({f"params.{k}": v for k, v in full.items()})
    tensors.update({f"momenta.{k}": v for k, v in ens.gather(state.momenta).items()})
    tensors["predictions"] = ens.predict(forward, state.params, ensemble_data()[2])
    tensors.update({f"rhat.{k}": v for k, v in ens.split_rhat(trace.samples).items()})
    tensors.update({f"ess.{k}": v for k, v in ens.effective_sample_size(trace.samples).items()})
    tensors.update({f"local.{k}": v.clone() for k, v in state.params.items()})
    uneven = bd.DistributedEnsemble(member_transform(), **UNEVEN)
    info["uneven_members"] = list(uneven.members)
    info["uneven_shards"] = uneven.local_shards
    state, aux = run_uneven(uneven)
    tensors.update({f"uneven.{k}": v for k, v in uneven.gather(state.params).items()})
    tensors["uneven.aux"] = uneven.gather(aux["sq"])


def scenario_death(rank, world, out: Path, tensors: dict, info: dict) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = kfac_model()
    ddp = DistributedDataParallel(model)
    kfac = od.DistributedKFAC(ddp, **KFAC_CONFIGS["comm"])

    def on_step(s, when):
        if rank == 1 and s == 5 and when == "after_backward":
            sys.stderr.write(f"rank 1 exits at step 5\nTHERMOAI_EVENT_AT {time.time()}\n")
            sys.stderr.flush()
            os._exit(17)

    train(ddp, kfac, STEPS, rank, world, on_step=on_step)


def scenario_hang(rank, world, out: Path, tensors: dict, info: dict) -> None:
    """Rank 1 stops answering (alive, asleep) at step 5: rank 0 must give up after the group's timeout."""
    from torch.nn.parallel import DistributedDataParallel

    model = kfac_model()
    ddp = DistributedDataParallel(model)
    kfac = od.DistributedKFAC(ddp, **KFAC_CONFIGS["comm"])
    pause = float(os.environ["THERMOAI_TEST_PG_TIMEOUT"]) + 4

    def on_step(s, when):
        if rank == 1 and s == 5 and when == "after_backward":
            sys.stderr.write(f"THERMOAI_EVENT_AT {time.time()}\n")
            sys.stderr.flush()
            time.sleep(pause)
            os._exit(0)

    train(ddp, kfac, STEPS, rank, world, on_step=on_step)


def refuse_mismatched_configurations(rank: int, info: dict) -> None:
    """Rank 1 asks for another damping, then another ensemble seed: both are refused on every rank."""
    cfg = dict(KFAC_CONFIGS["comm"])
    if rank == 1:
        cfg["damping"] = 2e-2
    try:
        od.DistributedKFAC(kfac_model(), **cfg)
        info["kfac"] = "accepted"
    except od.ConfigMismatchError as err:
        info["kfac"] = str(err)
    ens_cfg = dict(ENSEMBLE)
    if rank == 1:
        ens_cfg["seed"] = 12
    try:
        bd.DistributedEnsemble(member_transform(), **ens_cfg, config={"data": "regression-64"})
        info["ensemble"] = "accepted"
    except bd.ConfigMismatchError as err:
        info["ensemble"] = str(err)
    # the same configuration is accepted afterwards: the process group survived the refusals
    od.DistributedKFAC(kfac_model(), **KFAC_CONFIGS["comm"])
    info["after"] = "accepted"


def main() -> None:
    from safetensors.torch import save_file

    from dist_launch import init_process_group

    scenario, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    rank, world = init_process_group(float(os.environ.get("THERMOAI_TEST_PG_TIMEOUT", "30")))
    tensors: dict[str, torch.Tensor] = {}
    info: dict = {"rank": rank, "world": world}
    try:
        globals()[f"scenario_{scenario}"](rank, world, out, tensors, info)
    except BaseException:
        sys.stderr.write(f"THERMOAI_RAISED_AT {time.time()}\n")  # exit itself can take seconds more
        sys.stderr.flush()
        raise
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps(info, default=str))
    import torch.distributed as dist

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
