r"""Ensembles and parallel SGMCMC chains across the ranks of ``torch.distributed``.

:class:`DistributedEnsemble` lifts a member transform (any :mod:`thermoai.bayes.sgmcmc` transform, or
``sghmc`` at ``temperature=0`` for a deep ensemble) to ``n_members`` members spread over the ranks of a
``torchrun`` job. Members are split into ``shards`` contiguous blocks (sizes differing by at most one);
the shards are dealt to the ranks contiguously, and each rank advances each of its shards with one
vmapped call of :func:`thermoai.bayes.ensemble.build`. Members never talk to each other, so a step has no
communication; collectives happen only where results are gathered::

    ens = DistributedEnsemble(sghmc.build(log_post, lr=1e-2, temperature=1 / N), n_members=32)
    state = ens.init(lambda k: init_params(seed=k))           # only this rank's members are built
    trace = diagnostics.Trace(burn_in=100)
    for batch in loader:
        state, aux = ens.update(state, batch, inplace=True)
        trace(state)
    logits = ens.predict(forward, state.params, x_test)        # (32, ...) on every rank
    rhat = ens.split_rhat(trace.samples)                       # R-hat over all 32 chains
    ens.save("ckpt.safetensors", state)                        # written once, by rank 0

**Randomness is per shard, not per rank.** Each shard has its own random stream, seeded from ``seed`` and
the shard's index; a shard's noise (momenta at ``init``, Langevin noise at ``update``) is drawn from its
stream inside its vmapped call (``randomness="different"``). The results depend on ``n_members``,
``shards`` and ``seed`` only, not on the number of ranks or on which rank runs a shard: an ensemble with
``shards=S`` gives the same members on 1, 2, ... or ``S`` ranks (``tests/distributed``), and a checkpoint
(which holds every shard's stream) resumes on any of them. ``shards`` defaults to the world size; pass
it explicitly to compare runs on different numbers of ranks.

Checkpoints (:meth:`DistributedEnsemble.save`): one safetensors file written by rank 0 (no pickle), every
member's state and every shard's random state, with a JSON header (members, shards, seed, leaf paths,
shapes and dtypes, configuration hash, the world size it was written on). :meth:`~DistributedEnsemble.load`
reads it on any number of ranks, each taking its own members.

Every rank must build the same ensemble: the constructor all-gathers the configuration (``n_members``,
``shards``, ``seed``, the flags, the world size, the torch version and the user's ``config=``) and raises
:class:`ConfigMismatchError` on every rank naming the differences. A rank that dies or hangs makes the
others' next collective raise :class:`DistributedError` after at most the process group's ``timeout``.

Without a process group the ensemble runs every shard in this process: the single-process API of
:mod:`thermoai.bayes.ensemble` is unchanged and this class is opt-in. Launch recipes: docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import optree
import torch
from torch import Tensor
from torch.func import vmap

from thermoai import tree as T
from thermoai.bayes import diagnostics, ensemble
from thermoai.distributed import ConfigMismatchError, DistributedError, ProcessGroup, check_same_config
from thermoai.types import TensorTree, Transform

__all__ = ["DistributedEnsemble", "DistributedError", "ConfigMismatchError", "check_same_config", "shard_bounds"]

_FORMAT = "thermoai.bayes.distributed/1"
_MASK64 = (1 << 64) - 1


# ------------------------------------------------------------------------------------------ layout


def shard_bounds(n_members: int, shards: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: the members of each shard, contiguous, sizes differing by at most one
    (the first ``n_members % shards`` shards have one more)."""
    base, extra = divmod(n_members, shards)
    out, start = [], 0
    for b in range(shards):
        stop = start + base + (1 if b < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def _shard_seed(seed: int, shard: int) -> int:
    """SplitMix64 of ``(seed, shard)``: well-separated seeds for neighbouring shards."""
    z = (seed * 0x9E3779B97F4A7C15 + (shard + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def _cat(trees: Sequence[Any]) -> Any:
    if len(trees) == 1:
        return trees[0]
    return T.tree_map(lambda *xs: torch.cat(xs), trees[0], *trees[1:])


def _slice(tree: Any, start: int, stop: int) -> Any:
    return T.tree_map(lambda x: x[start:stop], tree)


class DistributedEnsemble:
    """``n_members`` members of ``transform`` over the ranks (module docstring). Collective methods (every
    rank calls them, in the same order): the constructor, :meth:`gather`, :meth:`predict`,
    :meth:`split_rhat`, :meth:`effective_sample_size`, :meth:`save`. :meth:`init`, :meth:`update` and
    :meth:`load` are local.

    Args:
        transform: the member transform (``init(params)``, ``update(state, batch)``); it must work under
            ``torch.func.vmap`` (every :mod:`thermoai.bayes.sgmcmc` transform does).
        n_members: the number of members (chains) in all.
        shards: the number of random streams and vmapped blocks (default: the world size); between the
            world size and ``n_members``. Results depend on it, not on the number of ranks.
        seed: seeds the shards' random streams.
        batch_per_member: each member gets its own batch (leaves with a leading member dimension: this
            rank's members, or all ``n_members``, sliced here).
        check_finite: as in :func:`thermoai.bayes.ensemble.build`.
        group: the process group (default: the world).
        config: your own run configuration (a JSON-able dict), compared across the ranks with the rest.

    Attributes: ``rank``, ``world_size``, ``bounds`` (each shard's members), ``local_shards``,
    ``members`` (this rank's member indices, a ``range``), ``n_local``, ``config_hash``.
    """

    def __init__(self, transform: Transform, n_members: int, *, shards: int | None = None, seed: int = 0,
                 batch_per_member: bool = False, check_finite: bool = True, group: Any = None,
                 config: Mapping[str, Any] | None = None):
        if not (isinstance(transform, tuple) and hasattr(transform, "init") and hasattr(transform, "update")):
            raise TypeError(f"transform must be a thermoai Transform (init, update); got {type(transform).__name__}")
        if isinstance(n_members, bool) or not isinstance(n_members, int) or n_members < 1:
            raise ValueError(f"n_members must be a positive int; got {n_members!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int; got {type(seed).__name__}")
        for name, flag in (("batch_per_member", batch_per_member), ("check_finite", check_finite)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False; got {flag!r}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a JSON-able dict or None; got {type(config).__name__}")
        self.comm = ProcessGroup(group, "DistributedEnsemble")
        self.rank, self.world_size = self.comm.rank, self.comm.world_size
        shards = self.world_size if shards is None else shards
        if isinstance(shards, bool) or not isinstance(shards, int) or not self.world_size <= shards <= n_members:
            raise ValueError(f"shards must be an int between the world size ({self.world_size}) and n_members "
                             f"({n_members}): every rank needs a shard and every shard a member; got {shards!r}")
        self.transform, self.n_members, self.shards, self.seed = transform, n_members, shards, seed
        self.batch_per_member, self.check_finite = batch_per_member, check_finite
        self.bounds = shard_bounds(n_members, shards)
        w = self.world_size
        self.shard_ranks = [next(r for r in range(w) if r * shards // w <= b < (r + 1) * shards // w)
                            for b in range(shards)]
        self.local_shards = [b for b in range(shards) if self.shard_ranks[b] == self.rank]
        self.members = range(self.bounds[self.local_shards[0]][0], self.bounds[self.local_shards[-1]][1])
        self.n_local = len(self.members)
        self._lifted = {stop - start: ensemble.build(transform, stop - start, batch_per_member, check_finite)
                        for start, stop in self.bounds}
        description = {"n_members": n_members, "shards": shards, "seed": seed, "batch_per_member": batch_per_member,
                       "check_finite": check_finite, "world_size": w, "torch": torch.__version__,
                       "user": dict(config) if config is not None else {}}
        self.config_hash = check_same_config(description, group, "DistributedEnsemble")
        self._rng: dict[int, Tensor] = {}
        self._device: torch.device | None = None

    # --- random streams ------------------------------------------------------------------------------

    def _fresh_streams(self, device: torch.device) -> None:
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"DistributedEnsemble supports parameters on cpu or cuda devices; got {device}")
        self._device = device
        self._rng = {b: torch.Generator(device=device).manual_seed(_shard_seed(self.seed, b)).get_state()
                     for b in self.local_shards}

    @contextlib.contextmanager
    def _stream(self, shard: int) -> Iterator[None]:
        """Run the block with the global random state of the parameters' device set to the shard's
        stream (and restored after); the stream advances only if the block succeeds."""
        dev = self._device
        if dev.type == "cpu":
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(self._rng[shard])
                yield
                self._rng[shard] = torch.get_rng_state()
        else:
            with torch.random.fork_rng(devices=[dev], device_type="cuda"):
                torch.cuda.set_rng_state(self._rng[shard], dev)
                yield
                self._rng[shard] = torch.cuda.get_rng_state(dev)

    # --- init / update -------------------------------------------------------------------------------

    def _member_params(self, params: Any, stacked: bool) -> Any:
        """This rank's members' parameters, stacked (leading ``n_local``)."""
        lo, hi = self.members.start, self.members.stop
        if stacked:
            for i, leaf in enumerate(T.leaves(params)):
                if not isinstance(leaf, Tensor) or leaf.dim() == 0 or leaf.shape[0] not in (self.n_members, self.n_local):
                    shape = tuple(leaf.shape) if isinstance(leaf, Tensor) else type(leaf).__name__
                    raise ValueError(f"stacked params: leaf {i} must have a leading dimension of n_members="
                                     f"{self.n_members} (or this rank's {self.n_local} members); got {shape}")
            if T.leaves(params)[0].shape[0] == self.n_members:
                params = _slice(params, lo, hi)
            return T.tree_map(lambda x: x.detach().clone(), params)
        if callable(params):
            trees = [params(k) for k in self.members]
        elif isinstance(params, (list, tuple)):
            if len(params) != self.n_members:
                raise ValueError(f"init expects {self.n_members} parameter trees (n_members); got {len(params)}")
            trees = list(params[lo:hi])
        else:
            raise TypeError("init expects a callable k -> tree (called for this rank's members only), a list of "
                            "n_members trees, or stacked=True with a tree of stacked leaves; got "
                            f"{type(params).__name__}")
        return ensemble.stack(trees)

    def init(self, params: Any, stacked: bool = False, **kwargs: Any) -> Any:
        """This rank's members' state: every leaf ``(n_local, *leaf)``. ``params`` as in
        :func:`thermoai.bayes.ensemble.build`'s ``init``: a callable ``k -> tree`` (called for this rank's
        members ``k`` only), a list of ``n_members`` trees, or (``stacked=True``) stacked leaves with a leading
        ``n_members`` (or ``n_local``). Resets the shards' random streams; keywords go to the member init."""
        local = self._member_params(params, stacked)
        self._fresh_streams(T.leaves(local)[0].device)
        states = []
        for b in self.local_shards:
            start, stop = (i - self.members.start for i in self.bounds[b])
            with self._stream(b):
                states.append(self._lifted[stop - start].init(_slice(local, start, stop), stacked=True, **kwargs))
        return _cat(states)

    def _check_state(self, state: Any) -> None:
        if self._device is None:
            raise ValueError("call init (or load) on this ensemble before update: the shards' random streams "
                             "start there")
        first = T.leaves(state)[0]
        if first.dim() == 0 or first.shape[0] != self.n_local:
            raise ValueError(f"state must hold this rank's {self.n_local} members (leading dimension); got shape "
                             f"{tuple(first.shape)} (was it made by this ensemble's init or load?)")

    def update(self, state: Any, batch: Any, inplace: bool = False, **kwargs: Any) -> tuple[Any, TensorTree]:
        """One step of this rank's members (no communication). ``batch`` is shared by all members, or with
        ``batch_per_member`` has leaves with a leading ``n_local`` (or ``n_members``) dimension. Returns
        ``(state, aux)``, ``aux`` stacked over this rank's members."""
        self._check_state(state)
        if self.batch_per_member:
            lead = {x.shape[0] if isinstance(x, Tensor) and x.dim() else None for x in T.leaves(batch)}
            if lead == {self.n_members} and self.n_members != self.n_local:
                batch = _slice(batch, self.members.start, self.members.stop)
            elif lead != {self.n_local}:
                raise ValueError(f"batch_per_member: every batch leaf needs a leading dimension of this rank's "
                                 f"{self.n_local} members (or n_members={self.n_members}); got {sorted(lead, key=str)}")
        if "generator" in kwargs:
            raise TypeError("DistributedEnsemble.update draws from the shards' own streams; do not pass generator")
        outs, auxes = [], []
        for b in self.local_shards:
            start, stop = (i - self.members.start for i in self.bounds[b])
            whole = len(self.local_shards) == 1
            part = state if whole else _slice(state, start, stop)
            part_batch = batch if (not self.batch_per_member or whole) else _slice(batch, start, stop)
            with self._stream(b):
                new, aux = self._lifted[stop - start].update(part, part_batch, inplace=inplace, **kwargs)
            outs.append(new)
            auxes.append(aux)
        if inplace:
            return state, _cat(auxes)
        return _cat(outs), _cat(auxes)

    # --- gathering (collective) ----------------------------------------------------------------------

    def _gather_rows(self, leaves: list[Tensor], counts: list[int], name: str) -> list[Tensor]:
        """Every rank's ``leaves`` (leading dim ``counts[rank]``) concatenated in rank order, on every rank;
        one all-gather per dtype (rows padded to the longest rank)."""
        if self.world_size == 1:
            return list(leaves)
        longest = max(counts)
        out: list[Tensor | None] = [None] * len(leaves)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, x in enumerate(leaves):
            by_dtype.setdefault(x.dtype, []).append(i)
        for dtype, idx in by_dtype.items():
            widths = [math.prod(leaves[i].shape[1:]) for i in idx]
            mine = torch.cat([leaves[i].reshape(leaves[i].shape[0], -1) for i in idx], dim=1).to(self.comm.device)
            if mine.shape[0] < longest:
                mine = torch.cat([mine, mine.new_zeros(longest - mine.shape[0], mine.shape[1])])
            parts = self.comm.all_gather(mine.contiguous(), name)
            full = torch.cat([p[:c] for p, c in zip(parts, counts)]).to(leaves[idx[0]].device)
            for i, piece in zip(idx, torch.split(full, widths, dim=1)):
                out[i] = piece.reshape(full.shape[0], *leaves[i].shape[1:])
        return out  # type: ignore[return-value]

    def _member_counts(self) -> list[int]:
        return [sum(self.bounds[b][1] - self.bounds[b][0] for b in range(self.shards) if self.shard_ranks[b] == r)
                for r in range(self.world_size)]

    def gather(self, tree: Any, dim: int = 0) -> Any:
        """All members' values on every rank: each leaf of ``tree`` holds this rank's members along ``dim``
        (``n_local``); the result holds all ``n_members``, in member order. Collective."""
        ls = T.leaves(tree)
        for i, x in enumerate(ls):
            if not isinstance(x, Tensor) or x.dim() <= dim or x.shape[dim] != self.n_local:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"gather: leaf {i} must have this rank's {self.n_local} members along dim {dim}; "
                                 f"got {shape}")
        moved = [x.detach().movedim(dim, 0) for x in ls]
        full = self._gather_rows(moved, self._member_counts(), "gather of the members")
        return T.unflatten(T.structure(tree), [x.movedim(0, dim) for x in full])

    def predict(self, fn: Callable[..., Any], params: TensorTree, *args: Any, randomness: str = "error") -> Any:
        """``fn(member_params, *args)`` for every member (vmapped over this rank's), gathered: leaves
        ``(n_members, ...)`` on every rank, e.g. logits for :func:`thermoai.bayes.predictive.classification_uncertainty`
        (``dim=0``). Collective."""
        with torch.no_grad():
            local = vmap(lambda p: fn(p, *args), randomness=randomness)(params)
        return self.gather(local)

    def split_rhat(self, samples: TensorTree) -> TensorTree:
        """Split-R-hat over all ``n_members`` chains: ``samples`` is this rank's draws-first trace (every leaf
        ``(draws, n_local, *event)``, e.g. :attr:`thermoai.bayes.diagnostics.Trace.samples`); the same
        ``(*event,)`` result on every rank. Collective."""
        return diagnostics.split_rhat(diagnostics.draws_to_chains(self.gather(samples, dim=1)))

    def effective_sample_size(self, samples: TensorTree) -> TensorTree:
        """Multi-chain ESS over all chains (``samples`` as in :meth:`split_rhat`). Collective."""
        return diagnostics.effective_sample_size(diagnostics.draws_to_chains(self.gather(samples, dim=1)))

    # --- checkpoints ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, state: Any, extra: Mapping[str, Any] | None = None) -> Path | None:
        """Write every member's state and every shard's random stream to ``path`` (safetensors, JSON header),
        once, from rank 0, atomically (a temporary file, then a rename). Collective: the other ranks wait
        until the file is complete and raise if rank 0 could not write it. Returns the path on rank 0."""
        from safetensors.torch import save_file

        self._check_state(state)
        try:
            extra_json = json.dumps(dict(extra or {}), sort_keys=True)
        except (TypeError, ValueError) as err:
            raise TypeError(f"extra must be a JSON-able dict: {err}") from err
        ls = T.leaves(state)
        full = self._gather_rows([x.detach() for x in ls], self._member_counts(), "checkpoint gather of the members")
        rng = torch.stack([self._rng[b] for b in self.local_shards]).to(self.comm.device)
        counts = [sum(1 for b in range(self.shards) if self.shard_ranks[b] == r) for r in range(self.world_size)]
        streams = self._gather_rows([rng], counts, "checkpoint gather of the random streams")[0].cpu()
        path = Path(path)
        ok, failure = True, None
        if self.rank == 0:
            tensors = {f"state.{i}": x.cpu().contiguous() for i, x in enumerate(full)}
            tensors.update({f"rng.{b}": streams[b].contiguous() for b in range(self.shards)})
            header = {"format": _FORMAT, "n_members": self.n_members, "shards": self.shards, "seed": self.seed,
                      "world_size": self.world_size, "config_hash": self.config_hash,
                      "rng_device": self._device.type, "paths": _leaf_paths(state),
                      "shapes": [list(x.shape[1:]) for x in ls], "dtypes": [str(x.dtype) for x in ls],
                      "extra": json.loads(extra_json)}
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file(tensors, str(tmp), metadata={"thermoai": json.dumps(header, sort_keys=True)})
                os.replace(tmp, path)
            except OSError as err:
                ok, failure = False, err
                tmp.unlink(missing_ok=True)
        if not self.comm.barrier_ok(ok, "checkpoint write"):
            if failure is not None:
                raise failure
            raise DistributedError(f"DistributedEnsemble.save: rank 0 could not write {str(path)!r}")
        return path if self.rank == 0 else None

    @staticmethod
    def read_header(path: str | os.PathLike) -> dict[str, Any]:
        """The JSON header of a checkpoint (members, shards, seed, leaf paths, shapes, ...)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{str(path)!r} is not a readable safetensors checkpoint: {err}") from err
        header = json.loads(meta.get("thermoai", "{}"))
        if header.get("format") != _FORMAT:
            raise ValueError(f"{str(path)!r} is not a thermoai ensemble checkpoint (format {header.get('format')!r}, "
                             f"expected {_FORMAT!r})")
        return header

    def load(self, path: str | os.PathLike, like: Any) -> Any:
        """This rank's members' state from a :meth:`save` file written on any number of ranks; ``like`` is a
        state of this ensemble on this rank (from :meth:`init`: structure, dtypes and device; its values are
        not used). Restores this rank's shards' random streams. Local: each rank reads the file."""
        from safetensors import safe_open

        header = self.read_header(path)
        for key in ("n_members", "shards", "seed"):
            if header[key] != getattr(self, key):
                raise ValueError(f"checkpoint {str(path)!r} was written by an ensemble with {key}={header[key]}; this "
                                 f"one has {key}={getattr(self, key)} (build it with {key}={header[key]} to resume)")
        first = T.leaves(like)[0]
        if first.dim() == 0 or first.shape[0] != self.n_local:
            raise ValueError(f"like must be a state of this rank's {self.n_local} members (from init)")
        ls = T.leaves(like)
        paths = _leaf_paths(like)
        if paths != header["paths"] or [list(x.shape[1:]) for x in ls] != header["shapes"]:
            raise ValueError(f"checkpoint {str(path)!r} holds a state with leaves {list(zip(header['paths'], header['shapes']))}; "
                             f"like has {list(zip(paths, [list(x.shape[1:]) for x in ls]))}")
        device = first.device
        if header["rng_device"] != device.type:
            raise ValueError(f"checkpoint {str(path)!r} holds {header['rng_device']} random streams; the state here "
                             f"is on {device.type} (load it with parameters on {header['rng_device']})")
        lo, hi = self.members.start, self.members.stop
        with safe_open(str(path), framework="pt") as f:
            values = [f.get_slice(f"state.{i}")[lo:hi].to(device=x.device, dtype=x.dtype) for i, x in enumerate(ls)]
            self._device = device
            self._rng = {b: f.get_tensor(f"rng.{b}") for b in self.local_shards}
        return T.unflatten(T.structure(like), values)


def _leaf_paths(tree: Any) -> list[str]:
    """A readable path of every leaf (``.params['w']``-style), for checkpoint headers and their checks."""
    return [str(a) for a in optree.tree_accessors(tree, none_is_leaf=False)]
