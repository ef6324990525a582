"""What the distributed parts of thermoai share: the process group of one object with failures turned into
:class:`DistributedError`, and the start-up check that every rank has the same configuration.

``thermoai.bayes.distributed`` (the sharded ensemble) and ``thermoai.optim.distributed`` (data-parallel
K-FAC) are sibling units that may not import each other; both use this module, so a user catches one
``DistributedError`` and one ``ConfigMismatchError`` whichever they run. Without an initialised
``torch.distributed`` process group every helper works on one rank and makes no collective call.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DistributedError", "ConfigMismatchError", "ProcessGroup", "check_same_config"]


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped, or the process group's timeout passed. The run cannot
    continue; restart it from the last checkpoint."""


class ConfigMismatchError(ValueError):
    """The ranks were started with different configurations (raised on every rank, at start-up)."""


# ------------------------------------------------------------------------------------- process group


class ProcessGroup:
    """The process group of one object: rank, world size, global ranks, the device collectives use."""

    def __init__(self, group: Any, what: str):
        self.what = what
        if not (dist.is_available() and dist.is_initialized()):
            if group is not None:
                raise ValueError(f"group was given but torch.distributed is not initialised; call "
                                 f"torch.distributed.init_process_group first (or leave group=None)")
            self.group, self.rank, self.world_size, self.device = None, 0, 1, torch.device("cpu")
            self.global_ranks = [0]
            return
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if self.rank < 0:
            raise ValueError(f"this process (global rank {dist.get_rank()}) is not a member of group")
        self.global_ranks = ([dist.get_global_rank(group, r) for r in range(self.world_size)]
                             if group is not None else list(range(self.world_size)))
        backend = str(dist.get_backend(group))
        self.device = (torch.device("cuda", torch.cuda.current_device()) if backend == "nccl"
                       else torch.device("cpu"))

    @classmethod
    def single(cls, what: str) -> "ProcessGroup":
        """A one-rank group, whatever the process group (a plain KFAC writes its own checkpoint)."""
        g = cls.__new__(cls)
        g.what, g.group, g.rank, g.world_size, g.device, g.global_ranks = what, None, 0, 1, torch.device("cpu"), [0]
        return g

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, group=..., **kwargs)``, with a failure turned into a :class:`DistributedError`."""
        try:
            return fn(*args, group=self.group, **kwargs)
        except RuntimeError as err:  # DistBackendError and DistNetworkError are RuntimeErrors
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DistributedError(
                f"{self.what}: {name} failed on rank {self.rank} of {self.world_size} ({type(err).__name__}: "
                f"{first[:300]}). Another rank has stopped or has not reached this point within the process "
                "group's timeout; this rank stops too (resume from the last checkpoint; docs/distributed.md, "
                "'Faults').") from err

    def all_gather(self, t: Tensor, name: str) -> list[Tensor]:
        """Every rank's ``t`` (the same shape and dtype on each), in rank order."""
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self.run(name, dist.all_gather, out, t)
        return out

    def all_gather_json(self, obj: Any, name: str) -> list[Any]:
        """Every rank's ``obj`` (JSON-able), in rank order."""
        data = json.dumps(obj, sort_keys=True, default=str).encode()
        if self.world_size == 1:
            return [json.loads(data)]
        sizes = self.all_gather(torch.tensor([len(data)], dtype=torch.int64, device=self.device), f"{name} (sizes)")
        longest = max(int(s) for s in sizes)
        buf = torch.zeros(longest, dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        outs = self.all_gather(buf.to(self.device), name)
        return [json.loads(o[: int(s)].cpu().numpy().tobytes()) for o, s in zip(outs, sizes)]

    def broadcast_flat(self, tensors: list[Tensor], src: int, name: str) -> None:
        """Broadcast ``tensors`` from group rank ``src`` into the same-shaped ``tensors`` of every other rank,
        one call per dtype."""
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for dtype, ts in by_dtype.items():
            if self.rank == src:
                flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in ts])
            else:
                flat = torch.empty(sum(t.numel() for t in ts), dtype=dtype, device=self.device)
            self.run(name, dist.broadcast, flat, self.global_ranks[src])
            if self.rank != src:
                offset = 0
                for t in ts:
                    t.copy_(flat[offset:offset + t.numel()].view(t.shape))
                    offset += t.numel()

    def any_flag(self, flag: bool, name: str) -> bool:
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.device)
        self.run(name, dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier_ok(self, ok: bool, name: str) -> bool:
        """A barrier that also tells whether every rank got here with ``ok``."""
        return not self.any_flag(not ok, name)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for k, v in config.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: config}


def check_same_config(config: Mapping[str, Any], group: Any = None, what: str = "run") -> str:
    """All-gather ``config`` (a JSON-able mapping) and raise :class:`ConfigMismatchError` on every rank if
    any rank's differs from rank 0's, naming the differing keys (dotted paths) with both values.

    Returns the configuration's hash (16 hex digits of the SHA-256 of its canonical JSON). A collective:
    every rank of ``group`` must call it. Without a process group it only validates and hashes."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a dict of JSON-able values); got {type(config).__name__}")
    try:
        text = json.dumps(config, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"config must be JSON-able (numbers, strings, lists, dicts): {err}") from err
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    g = ProcessGroup(group, what)
    configs = g.all_gather_json(json.loads(text), "configuration check")
    ref = _flatten(configs[0])
    problems = []
    for r, other in enumerate(configs[1:], start=1):
        mine = _flatten(other)
        keys = sorted(k for k in set(ref) | set(mine) if ref.get(k, "<missing>") != mine.get(k, "<missing>"))
        if keys:
            shown = ", ".join(f"{k} (rank 0: {_short(ref.get(k, '<missing>'))}, rank {r}: "
                              f"{_short(mine.get(k, '<missing>'))})" for k in keys[:6])
            more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
            problems.append(f"rank {r} differs from rank 0 in {shown}{more}")
    if problems:
        raise ConfigMismatchError(f"{what}: the ranks were started with different configurations, refused at "
                                  f"start-up (this is rank {g.rank} of {g.world_size}): " + "; ".join(problems))
    return digest


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."
