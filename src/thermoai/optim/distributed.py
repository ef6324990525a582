r"""Data-parallel K-FAC on ``torch.distributed``: factors averaged over ranks, inverse work pooled by cost.

Use it where :class:`~thermoai.optim.kfac.KFAC` is used, in a script started by ``torchrun`` (one process per
GPU, NCCL; or per CPU socket, gloo), with the model wrapped in ``DistributedDataParallel``::

    dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=120))
    ddp = DistributedDataParallel(model.cuda(local_rank), device_ids=[local_rank])
    kfac = DistributedKFAC(ddp, inverse_update_interval=10)    # the KFAC arguments, plus the three below
    for x, y in loader:                                       # each rank: its share of the global batch
        opt.zero_grad()
        loss_fn(ddp(x), y).backward()                         # DDP averages the gradients
        kfac.step()                                           # factors all-reduced, inverses pooled
        opt.step()

What happens per step on ``W`` ranks, each with ``N_r`` examples of the global batch ``N = sum_r N_r``
(the notation of :mod:`thermoai.optim.kfac`):

* **Factors** (factor-update steps): each rank's hooks hold the sums ``S_A^r = sum_rows a a^T`` and
  ``S_G^r = sum_n g g^T`` with their row and example counts; a small all-reduce adds the counts and one
  more per dtype (all layers' sums in one buffer) adds the sums, so every rank updates its running
  averages with the factors of the *global* batch::

      A_batch = sum_r S_A^r / sum_r rows_r,      G_batch = sum_r S_G^r / sum_r N_r

  This is the example-weighted average of the ranks' factors (the plain average when the ranks' batches
  are equal) and it equals single-process K-FAC on the global batch: with a loss averaged over each rank's
  ``N_r`` examples, the per-example gradient ``g = N_r dL_r/ds`` is the same ``d l_n / ds`` that one process
  computes as ``N dL/ds`` (``tests/distributed`` holds the parameters equal after 20 steps).
* **Inverses / solves**: each layer has one *owner* rank. Owners are chosen once, at construction, by the
  greedy longest-processing-time rule of KAISA (Pauloski et al., SC'21; kfac-pytorch's ``KAISAAssignment``
  with colocated factors): layers sorted by cost, largest first, each given to the least-loaded rank, with
  the cost of a layer ``c(d_in) + c(d_out)``, ``c(n) = n^3`` (``assignment="compute"``, the flops of an
  eigen-decomposition) or ``n^2`` (``"memory"``, the bytes of a factor); a diagonal ``A`` (embedding) costs
  ``d_in``. At an inverse-update step only the owner runs the solver's ``prepare``; then, with
  ``strategy="comm"`` (KAISA's COMM-OPT, the default) the owners broadcast the prepared states (one call
  per owner and dtype) and every rank preconditions every layer; with ``strategy="mem"`` (KAISA's
  MEM-OPT) states stay on their owner, which preconditions its layers each step and broadcasts ``U``.
  Solvers that work on the device at every step (``Thermodynamic(method=2)``) always run ``apply`` on the
  owner and broadcast ``U``, so that each rank's device serves only its layers.
* **The thermodynamic backend** treats the ranks' devices as a pool of solvers: each rank's device runs
  its layers in turn, the ranks in parallel. :class:`DistributedStepReport` gathers every rank's device
  time: ``device_time_s`` (all layers on one device, as single-process K-FAC reports it),
  ``device_time_pool_s`` (the pool: the busiest rank's device) and ``rank_device_time_s`` (per rank).
  Each rank's device has its own noise stream (the solver's generator, re-seeded per rank).

Every rank must build the same ``DistributedKFAC``: at construction the ranks all-gather a description
of their configuration (the K-FAC settings, the layers and their shapes, the solver and its device, the
world size, ``strategy``, ``assignment``, the torch version and the user's ``config=``) and each raises
:class:`ConfigMismatchError` naming the settings that differ and the ranks, before any training step.
Every collective is wrapped: when a rank dies or a collective passes the process group's ``timeout``
(``init_process_group(timeout=...)``), the others raise :class:`DistributedError` naming the collective,
the step and the rank, instead of waiting for ever. (Failures inside DDP's own gradient all-reduce
surface as torch's ``DistBackendError``, also after at most the timeout.)

Checkpoints are written once, by rank 0, as safetensors with a JSON header (:func:`save_checkpoint`), and
read on any number of ranks: :func:`load_checkpoint` gives a ``KFAC.state_dict()``, loadable into a
single-process :class:`~thermoai.optim.kfac.KFAC` or a ``DistributedKFAC`` of any world size.

Without an initialised process group (or with ``torch.distributed`` unavailable) a ``DistributedKFAC`` is
a one-rank pool: it behaves exactly as :class:`~thermoai.optim.kfac.KFAC`, and the single-process API is
unchanged. Recipes for several GPUs and nodes: ``docs/distributed.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from thermoai.distributed import ConfigMismatchError, DistributedError, ProcessGroup, check_same_config
from thermoai.optim.kfac import KFAC, StepReport
from thermoai.optim.solvers import Damping, Solver

__all__ = ["DistributedKFAC", "DistributedStepReport", "DistributedError", "ConfigMismatchError", "assign_layers",
           "factor_cost", "check_same_config", "save_checkpoint", "load_checkpoint", "Checkpoint"]

_CHECKPOINT_FORMAT = "thermoai.optim.distributed/1"
ASSIGNMENTS = ("compute", "memory")
STRATEGIES = ("comm", "mem")


def _describe(v: Any) -> Any:
    """A JSON-able description of a hyper-parameter (callables by qualified name and definition site)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, Tensor):
        return v.tolist() if v.numel() <= 16 else f"tensor{tuple(v.shape)}"
    if isinstance(v, torch.optim.Optimizer):
        return {"optimizer": type(v).__qualname__, "lr": [float(g["lr"]) for g in v.param_groups]}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _describe(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if callable(v):
        code = getattr(v, "__code__", None)
        where = f"@{Path(code.co_filename).name}:{code.co_firstlineno}" if code is not None else ""
        return f"{getattr(v, '__module__', '?')}.{getattr(v, '__qualname__', type(v).__qualname__)}{where}"
    return repr(v)


def _describe_solver(solver: Solver) -> dict[str, Any]:
    out: dict[str, Any] = {"class": f"{type(solver).__module__}.{type(solver).__qualname__}", "name": solver.name}
    for k, v in sorted(vars(solver).items()):
        if isinstance(v, torch.Generator):
            continue
        out[k] = _describe(v)
    return out


# --------------------------------------------------------------------------------------- assignment


def factor_cost(d: int, assignment: str = "compute", diagonal: bool = False) -> float:
    """The cost of one factor of size ``d``: ``d^3`` (``"compute"``) or ``d^2`` (``"memory"``); a diagonal
    factor (kept as a vector) costs ``d`` either way."""
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {list(ASSIGNMENTS)}; got {assignment!r}")
    if diagonal:
        return float(d)
    return float(d) ** (3 if assignment == "compute" else 2)


def assign_layers(costs: Mapping[str, float], world_size: int) -> dict[str, int]:
    """Greedy longest-processing-time assignment of work to ``world_size`` ranks: ``{name: rank}``.

    Items in decreasing cost (ties: in the given order) each go to the rank with the least load so far
    (ties: the lowest rank). The busiest rank's load is at most ``4/3`` of the optimum (Graham 1969)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer; got {world_size!r}")
    for name, c in costs.items():
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0:
            raise ValueError(f"costs must be non-negative numbers; got {c!r} for {name!r}")
    order = sorted(range(len(costs)), key=lambda i: -float(list(costs.values())[i]))
    names = list(costs)
    loads = [0.0] * world_size
    owners: dict[str, int] = {}
    for i in order:
        r = loads.index(min(loads))
        owners[names[i]] = r
        loads[r] += float(costs[names[i]])
    return {n: owners[n] for n in names}


# ------------------------------------------------------------------------------------------ reports


@dataclass(frozen=True)
class DistributedStepReport(StepReport):
    """:class:`~thermoai.optim.kfac.StepReport` over all ranks, plus the pool.

    ``device_time_s``, ``device_energy_j``, ``device_runs``: sums over the ranks (all layers' device work, as
    one device would do it); ``device_time_parallel_s``: one device per layer (the slowest layer of any rank);
    ``device_time_pool_s``: one device per rank, each running its layers in turn (the busiest rank);
    ``rank_device_time_s``: each rank's device time. ``communication_s``: this rank's host seconds inside
    K-FAC's collectives (factor all-reduce, broadcasts, report gather; DDP's gradient all-reduce is not in
    it); ``owned_layers``: the layers whose solver work this rank does. ``digital_time_s`` is this rank's."""

    device_time_pool_s: float = 0.0
    rank_device_time_s: tuple[float, ...] = ()
    communication_s: float = 0.0
    owned_layers: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------- pooled solver


def _placement(t: Tensor, like: Tensor) -> str:
    return "param" if t.device == like.device else "cpu"


class _PooledSolver(Solver):
    """Runs the wrapped solver only on each layer's owner; shares the results (module docstring).

    ``prepare`` and ``apply`` are called by :meth:`KFAC.step` for every layer in the same order on every
    rank; results a rank does not compute are placeholders (an empty state dict, an uninitialised ``U``)
    filled in place by the next flush: the states at the first ``apply`` after the prepares, the ``U`` by
    :meth:`flush_updates` before KFAC reads them (``DistributedKFAC._kl_scale``)."""

    def __init__(self, inner: Solver, owner: DistributedKFAC):
        self.inner = inner
        self.kfac = owner
        self.name = inner.name
        self.supports_exact = inner.supports_exact
        self.device_every_step = inner.device_every_step
        self.remote_apply = inner.device_every_step or owner.strategy == "mem"
        self._states: list[tuple[str, dict[str, Tensor]]] = []  # prepared this step, to broadcast
        self._updates: list[tuple[str, Tensor]] = []  # applied this step (remote_apply), to broadcast
        self._error: tuple[str, BaseException] | None = None  # this rank's failure in owned work
        self.communication_s = 0.0

    # the wrapped solver's own state (e.g. the thermodynamic generator) is saved as it is
    def state_dict(self) -> dict[str, Tensor]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.inner.load_state_dict(state)

    @property
    def pending(self) -> bool:
        return bool(self._states or self._updates)

    def _mine(self, layer: str) -> bool:
        return self.kfac.owners[layer] == self.kfac.comm.rank

    def _guarded(self, layer: str, fn: Callable[[], Any], fallback: Any) -> Any:
        if self._error is not None:
            return fallback
        try:
            return fn()
        except Exception as err:  # raised on every rank at the next flush
            self._error = (layer, err)
            return fallback

    def prepare(self, layer: str, A: Tensor, G: Tensor, damping: Damping):
        if self.kfac.comm.world_size == 1:
            return self.inner.prepare(layer, A, G, damping)
        state: dict[str, Tensor] = {}
        usage = None
        if self._mine(layer):
            state, usage = self._guarded(layer, lambda: self.inner.prepare(layer, A, G, damping), ({}, None))
            # the layout the other ranks receive (a matmul's rounding can depend on its operands' strides)
            state = {k: v.contiguous() for k, v in state.items()}
        if not self.remote_apply:
            self._states.append((layer, state))
        return state, usage

    def apply(self, layer: str, state: dict[str, Tensor], M: Tensor):
        if self.kfac.comm.world_size == 1:
            return self.inner.apply(layer, state, M)
        self.flush_states()
        if not self.remote_apply:
            return self.inner.apply(layer, state, M)
        U, usage = torch.zeros_like(M), None  # zeros, not garbage, if a flush were ever missed
        if self._mine(layer):
            U, usage = self._guarded(layer, lambda: self.inner.apply(layer, state, M), (U, None))
            U = U.to(M.dtype)
        self._updates.append((layer, U))
        return U, usage

    def _raise_shared_error(self, name: str) -> None:
        """If any rank failed in its owned work, raise that error on every rank."""
        comm = self.kfac.comm
        failed = self._error is not None
        if not comm.any_flag(failed, f"{name} (error flags)"):
            return
        mine = None if self._error is None else {"layer": self._error[0], "type": type(self._error[1]).__name__,
                                                 "message": str(self._error[1])}
        reports = comm.all_gather_json(mine, f"{name} (errors)")
        err = self._error
        self._error = None
        self._states, self._updates = [], []
        if err is not None:
            raise err[1]
        r, rep = next((r, rep) for r, rep in enumerate(reports) if rep is not None)
        kinds = {"ValueError": ValueError, "FloatingPointError": FloatingPointError, "TypeError": TypeError}
        raise kinds.get(rep["type"], RuntimeError)(f"{rep['message']} (raised on rank {r}, the owner of layer "
                                                   f"'{rep['layer']}')")

    def flush_states(self) -> None:
        """Broadcast the states prepared this step from their owners (no-op when there are none)."""
        if not self._states:
            return
        t0 = time.perf_counter()
        try:
            self._raise_shared_error("solver prepare")
            self.kfac._share_states(self._states, "solver state broadcast")
        finally:
            self._states = []
            self.communication_s += time.perf_counter() - t0

    def flush_updates(self) -> None:
        """Broadcast the preconditioned gradients computed this step from their owners into the
        placeholders of the other ranks."""
        if not self._updates:
            return
        t0 = time.perf_counter()
        try:
            self._raise_shared_error("solver apply")
            comm = self.kfac.comm
            for r in range(comm.world_size):
                mine = [U for layer, U in self._updates if self.kfac.owners[layer] == r]
                if mine:
                    comm.broadcast_flat(mine, r, "preconditioned-gradient broadcast")
        finally:
            self._updates = []
            self.communication_s += time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ the class


class DistributedKFAC(KFAC):
    """K-FAC for data-parallel training (module docstring). Collective: every rank constructs it, and
    calls :meth:`step`, :meth:`state_dict` and :func:`save_checkpoint`, in the same order.

    Args:
        model: the ``nn.Module``, or the ``DistributedDataParallel`` wrapping it (hooks go on the wrapped
            module, so layer names and checkpoints match single-process K-FAC).
        group: the process group (default: the world); ranks are numbered within it.
        assignment: the cost of a layer's solver work for the owner assignment: ``"compute"`` (``n^3``,
            default) or ``"memory"`` (``n^2``).
        strategy: ``"comm"`` (default: owners broadcast the prepared states; every rank preconditions every
            layer) or ``"mem"`` (states stay on their owner; owners broadcast ``U`` every step).
        config: your own run configuration (a JSON-able dict: data, schedule, seed ...), compared across
            the ranks at construction with the rest.
        **kwargs: the arguments of :class:`~thermoai.optim.kfac.KFAC`.

    Attributes: ``owners`` (``{layer: rank}``), ``loads`` (each rank's summed cost), ``owned_layers``,
    ``config_hash``, ``rank``, ``world_size``, ``device_time_pool_s`` (cumulative pool time),
    ``communication_s`` (cumulative seconds in K-FAC's collectives on this rank).
    """

    def __init__(self, model: nn.Module, *, group: Any = None, assignment: str = "compute", strategy: str = "comm",
                 config: Mapping[str, Any] | None = None, **kwargs: Any):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {list(ASSIGNMENTS)}; got {assignment!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {strategy!r}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a JSON-able dict or None; got {type(config).__name__}")
        self.comm = ProcessGroup(group, "DistributedKFAC")
        super().__init__(model, **kwargs)
        self.assignment, self.strategy = assignment, strategy
        self.rank, self.world_size = self.comm.rank, self.comm.world_size
        costs = {name: factor_cost(layer.helper.d_in, assignment, layer.helper.a_diagonal)
                 + factor_cost(layer.helper.d_out, assignment) for name, layer in self._layers.items()}
        self.owners = assign_layers(costs, self.world_size)
        self.loads = [sum(c for n, c in costs.items() if self.owners[n] == r) for r in range(self.world_size)]
        description = self._configuration(dict(config) if config is not None else {})
        self.config_hash = check_same_config(description, group, "DistributedKFAC")
        inner = self.solver
        if self.world_size > 1:
            self.generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator)) + self.rank)
            gen = getattr(inner, "generator", None)
            if isinstance(gen, torch.Generator):  # one noise stream per device of the pool
                gen.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)) + self.rank)
        self.solver = _PooledSolver(inner, self)
        self.device_time_pool_s = 0.0
        self._comm_s = 0.0

    @property
    def owned_layers(self) -> list[str]:
        """The layers whose solver work this rank does."""
        return [n for n in self._layers if self.owners[n] == self.rank]

    @property
    def communication_s(self) -> float:
        """Cumulative host seconds this rank spent in K-FAC's collectives."""
        return self._comm_s + self.solver.communication_s

    def _configuration(self, user: dict[str, Any]) -> dict[str, Any]:
        layers = [[name, layer.helper.kind, layer.helper.d_in, layer.helper.d_out,
                   str(layer.helper.module.weight.dtype)] for name, layer in self._layers.items()]
        settings = {k: _describe(getattr(self, k, None)) for k in (
            "damping", "factor_decay", "kl_clip", "lr", "factor_update_interval", "inverse_update_interval",
            "damping_form", "damping_split", "fisher", "predictive", "sharing", "loss_reduction")}
        return {"world_size": self.comm.world_size, "strategy": self.strategy, "assignment": self.assignment,
                "torch": torch.__version__, "kfac": settings, "layers": layers,
                "skipped": dict(sorted(self.skipped.items())), "solver": _describe_solver(self.solver),
                "user": user}

    # --- the step ----------------------------------------------------------------------------------

    def step(self) -> DistributedStepReport:
        """:meth:`KFAC.step` on the global batch: factor statistics all-reduced first (factor-update steps),
        the owners' solver work shared inside. Returns a :class:`DistributedStepReport`."""
        comm = self.comm
        k = self.steps
        t_comm = 0.0
        if self._collect and comm.world_size > 1:
            t0 = time.perf_counter()
            self._allreduce_statistics(k)
            t_comm += time.perf_counter() - t0
        totals = (self.device_time_s, self.device_energy_j)
        comm_before = self.solver.communication_s
        try:
            base = super().step()
        except BaseException:
            self.solver._states, self.solver._updates, self.solver._error = [], [], None
            raise
        if self.solver.pending:
            raise RuntimeError("DistributedKFAC: KFAC.step no longer calls _kl_scale after the apply loop, so the "
                               "preconditioned gradients of other ranks' layers were not received; "
                               "thermoai.optim.distributed must follow kfac.py")
        mine = [base.device_time_s, base.device_time_parallel_s, base.device_energy_j, float(base.device_runs)]
        ranks = [mine]
        if comm.world_size > 1:
            t0 = time.perf_counter()
            local = torch.tensor(mine, dtype=torch.float64, device=comm.device)
            out = [torch.empty_like(local) for _ in range(comm.world_size)]
            comm.run(f"device-usage gather at step {k}", dist.all_gather, out, local)
            ranks = [o.cpu().tolist() for o in out]
            t_comm += time.perf_counter() - t0
        self._comm_s += t_comm
        total = sum(r[0] for r in ranks)
        energy = sum(r[2] for r in ranks)
        pool = max(r[0] for r in ranks)
        self.device_time_s, self.device_energy_j = totals[0] + total, totals[1] + energy
        self.device_time_pool_s += pool
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(StepReport)}
        fields.update(device_time_s=total, device_time_parallel_s=max(r[1] for r in ranks), device_energy_j=energy,
                      device_runs=int(sum(r[3] for r in ranks)))
        self.last_report = DistributedStepReport(
            **fields, device_time_pool_s=pool, rank_device_time_s=tuple(r[0] for r in ranks),
            communication_s=t_comm + self.solver.communication_s - comm_before, owned_layers=tuple(self.owned_layers))
        return self.last_report

    def _kl_scale(self, updates, grads, k):
        # the first point after KFAC's apply loop: the other ranks' U must be here before KFAC reads them
        self.solver.flush_updates()
        return super()._kl_scale(updates, grads, k)

    def _allreduce_statistics(self, k: int) -> None:
        """Sum every layer's factor statistics (and their counts) over the ranks, in place."""
        layers = list(self._layers.values())
        head = torch.tensor([v for layer in layers for v in (
            float(layer.a_sum is not None), float(layer.g_sum is not None), float(layer.a_rows), float(layer.examples))],
            dtype=torch.float64, device=self.comm.device)
        if layers:
            self.comm.run(f"all-reduce of the K-FAC factor counts at step {k}", dist.all_reduce, head)
        head = head.view(-1, 4).cpu().tolist() if layers else []
        w = self.comm.world_size
        odd = [layer.name for layer, h in zip(layers, head) if h[0] not in (0, w) or h[1] not in (0, w)]
        if odd:
            raise ValueError(f"DistributedKFAC: at step {k} layers {odd} recorded factor statistics on some ranks "
                             "only; every rank must run the same forward and backward passes (the same modules, in "
                             "training mode) before step()")
        sums = [t for layer in layers for t in (layer.a_sum, layer.g_sum) if t is not None]
        by_dtype: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in sums:
            by_dtype.setdefault((t.dtype, t.device), []).append(t)
        for (_, device), ts in by_dtype.items():
            flat = torch.cat([t.reshape(-1) for t in ts]).to(self.comm.device)
            self.comm.run(f"all-reduce of the K-FAC factor statistics at step {k}", dist.all_reduce, flat)
            flat = flat.to(device)
            offset = 0
            for t in ts:
                t.copy_(flat[offset:offset + t.numel()].view(t.shape))
                offset += t.numel()
        for layer, h in zip(layers, head):
            layer.a_rows, layer.examples = int(h[2]), int(h[3])

    def _share_states(self, states: list[tuple[str, dict[str, Tensor]]], name: str) -> None:
        """Fill every rank's ``states`` entries with their owners' tensors: the layout (keys, shapes,
        dtypes, placement) is all-gathered as JSON, then one broadcast per owner and dtype."""
        comm = self.comm
        layout = {layer: [[key, list(t.shape), str(t.dtype).removeprefix("torch."),
                           _placement(t, self._layers[layer].helper.module.weight)] for key, t in state.items()]
                  for layer, state in states if self.owners[layer] == comm.rank}
        layouts = comm.all_gather_json(layout, f"{name} (layout)")
        for r in range(comm.world_size):
            owned = [(layer, state) for layer, state in states if self.owners[layer] == r]
            received: list[Tensor] = []
            for layer, state in owned:
                if r == comm.rank:
                    received += list(state.values())
                    continue
                weight = self._layers[layer].helper.module.weight
                for key, shape, dtype, where in layouts[r].get(layer, []):
                    t = torch.empty(shape, dtype=getattr(torch, dtype),
                                    device=weight.device if where == "param" else "cpu")
                    state[key] = t
                    received.append(t)
            if received:
                comm.broadcast_flat(received, r, name)

    # --- checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        """The complete :meth:`KFAC.state_dict` on every rank (collective: with ``strategy="mem"`` or a
        method-2 solver the owners' states are gathered first). Loadable by any ``KFAC`` or
        ``DistributedKFAC`` of the same model and settings, on any number of ranks."""
        shared: list[tuple[str, dict[str, Tensor]]] = []
        if self.comm.world_size > 1 and self.solver.remote_apply:
            shared = [(n, layer.solver_state) for n, layer in self._layers.items() if layer.solver_state is not None]
            self._share_states(shared, "solver-state gather for state_dict")
        try:
            return super().state_dict()
        finally:
            for name, state in shared:
                if self.owners[name] != self.rank:
                    state.clear()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """:meth:`KFAC.load_state_dict` (a state saved on any number of ranks); with ``strategy="mem"`` or a
        method-2 solver, states of layers this rank does not own are dropped after loading."""
        super().load_state_dict(state)
        if self.comm.world_size > 1 and self.solver.remote_apply:
            for name, layer in self._layers.items():
                if layer.solver_state is not None and self.owners[name] != self.rank:
                    layer.solver_state = {}


# ------------------------------------------------------------------------------------------ files


def save_checkpoint(path: str | os.PathLike, kfac: KFAC, model: nn.Module | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path | None:
    """Write ``kfac``'s state (and ``model``'s ``state_dict``, if given) to ``path``, once, from rank 0.

    A safetensors file (no pickle) whose header holds JSON: the format, the world size it was written on,
    ``kfac``'s configuration hash and ``extra`` (JSON-able). Written to a temporary file and renamed, so a
    crash leaves the previous checkpoint intact. Collective for a :class:`DistributedKFAC`: every rank calls
    it; the others wait until the file is complete (and raise if rank 0 could not write it). Returns the
    path on rank 0, None elsewhere. On several nodes, ``path`` must be on a file system rank 0 can write
    and the readers can read."""
    from safetensors.torch import save_file

    if not isinstance(kfac, KFAC):
        raise TypeError(f"kfac must be a thermoai.optim.KFAC; got {type(kfac).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None; got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    try:
        meta_extra = json.dumps(dict(extra or {}), sort_keys=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"extra must be a JSON-able dict: {err}") from err
    comm = kfac.comm if isinstance(kfac, DistributedKFAC) else ProcessGroup.single("save_checkpoint")
    state = kfac.state_dict()  # collective for DistributedKFAC
    path = Path(path)
    ok, failure = True, None
    if comm.rank == 0:
        tensors = {f"kfac.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
        if model is not None:
            tensors.update({f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
        meta = {"format": _CHECKPOINT_FORMAT, "world_size": str(comm.world_size),
                "config_hash": getattr(kfac, "config_hash", ""), "extra": meta_extra}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, path)
        except OSError as err:
            ok, failure = False, err
            tmp.unlink(missing_ok=True)
    if not comm.barrier_ok(ok, "checkpoint write"):
        if failure is not None:
            raise failure
        raise DistributedError(f"save_checkpoint: rank 0 could not write {str(path)!r}")
    return path if comm.rank == 0 else None


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` read: ``kfac`` (a ``KFAC.state_dict()``), ``model`` (a module
    ``state_dict``, empty if none was saved), ``world_size`` it was written on, ``config_hash``, ``extra``."""

    kfac: dict[str, Tensor]
    model: dict[str, Tensor]
    world_size: int
    config_hash: str
    extra: dict[str, Any]


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a :func:`save_checkpoint` file on any rank (each reads it; nothing is collective)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{str(path)!r} is not a readable safetensors checkpoint: {err}") from err
    if meta.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a thermoai K-FAC checkpoint (format {meta.get('format')!r}, "
                         f"expected {_CHECKPOINT_FORMAT!r})")
    return Checkpoint(kfac={k[5:]: v for k, v in tensors.items() if k.startswith("kfac.")},
                      model={k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                      world_size=int(meta.get("world_size", "1")), config_hash=meta.get("config_hash", ""),
                      extra=json.loads(meta.get("extra", "{}")))
