r"""Bayes over part of a causal language model, with the frozen part run once.

A decoder-only language model computes

.. math::

    h_0 = \mathrm{embed}(x), \qquad h_{i+1} = \mathrm{block}_i(h_i), \qquad
    \mathrm{logits} = \mathrm{head}(\mathrm{norm}(h_L)).

When the random (trainable) parameters all lie in ``block_k ... block_{L-1}``, the final norm or the head,
the activations :math:`h_k` entering block ``k`` do not depend on them: :meth:`LMSubset.prefix` computes
them once (no gradient), and every ensemble member, chain step, Laplace draw or fine-tuning step then only
runs the suffix :meth:`LMSubset.logits`, a pure function of the subset that ``torch.func.grad`` and
``torch.func.vmap`` (hence :mod:`thermoai.bayes.ensemble`, :mod:`~thermoai.bayes.sgmcmc`,
:mod:`~thermoai.bayes.laplace`) accept. For SmolLM2-135M with the last of its 30 layers random, a step
costs the last layer and the tied 49152 x 576 output projection instead of the whole model.

Example (any Hugging Face causal LM that follows the usual layout; the embedded SmolLM2 through
:func:`thermoai.memory.load_model`)::

    from thermoai.bayes import ensemble, lm
    sub = lm.LMSubset(model, layer=-1)               # the last decoder layer is random, the rest frozen
    hidden = sub.prefix(input_ids)                    # (B, L, d): computed once, reused for every draw
    params = sub.params()                             # {parameter name: tensor}, detached copies
    logits = sub.logits(params, hidden)               # (B, L, V) == model(input_ids).logits
    ll = lm.token_log_likelihood(logits, input_ids, mask)   # (B, L-1): log p(x_{t+1} | x_<=t)
    sub.load(draw)                                    # write a draw (or a posterior mean) into the model

``include`` narrows the subset inside the suffix: a name substring (``"lora_"`` for peft LoRA adapters
injected into the last layer, ``"mlp."``), a predicate on the full parameter name, or a list of names.
The subset is taken from the model's parameter tree with :func:`thermoai.tree.tree_extract` and put back
with :func:`thermoai.tree.tree_insert`, so frozen tensors are never copied or written.

**Sequences.** A batch is ``(B, L)`` token ids of one length ``L``; shorter texts are right-padded (any
id) and masked out of losses: with causal attention a padding token only influences positions after it,
so the real tokens' logits are those of the unpadded text (tested). ``L`` may not exceed the model's
window (``config.max_position_embeddings``); longer texts raise ``ValueError`` (cut them into windows
first, e.g. :func:`thermoai.experiments.llm_data.chunk`).

**Model layout.** The blocks are found as ``model.get_decoder().layers`` (Llama, Mistral, Qwen, Gemma,
...), ``.h`` (GPT-2) or ``.blocks``/``.layer``; the final norm as the decoder's ``norm``, ``ln_f``,
``final_layernorm`` or ``norm_f``; the head as ``model.get_output_embeddings()``. Pass ``blocks=``,
``norm=`` and ``head=`` for other layouts. The keyword arguments a block receives (rotary position
embeddings, masks) are recorded by a forward pre-hook on block ``k`` for a batch of one and reused for
every batch of the same length; models whose head does more than ``head(norm(h))`` (logit soft-capping)
need a ``head`` module that does it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from thermoai import tree as T
from thermoai.bayes import module as bayes_module
from thermoai.bayes._common import under_transform

__all__ = ["LMSubset", "decoder_blocks", "final_norm", "token_log_likelihood", "context_window"]

_BLOCK_ATTRS = ("layers", "h", "blocks", "layer")
_NORM_ATTRS = ("norm", "ln_f", "final_layernorm", "norm_f")


class _StopForward(Exception):
    """Raised by the recording pre-hook: the rest of the model need not run."""


def _decoder(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_decoder", None)
    if callable(get):
        try:
            dec = get()
        except (AttributeError, NotImplementedError, TypeError):
            dec = None
        if isinstance(dec, nn.Module):
            return dec
    for name in ("model", "transformer", "decoder"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module):
            return sub
    return model


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks (an ``nn.ModuleList``) of a causal LM, in order (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    dec = _decoder(model)
    for attr in _BLOCK_ATTRS:
        blocks = getattr(dec, attr, None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    raise TypeError(
        f"model: cannot find the decoder blocks of {type(model).__name__} (looked for "
        f"{', '.join(_BLOCK_ATTRS)} on {type(dec).__name__}); pass blocks= explicitly"
    )


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the head, or ``None`` if the model has none we recognise."""
    dec = _decoder(model)
    for attr in _NORM_ATTRS:
        norm = getattr(dec, attr, None)
        if isinstance(norm, nn.Module):
            return norm
    return None


def context_window(model: nn.Module) -> int | None:
    """The longest sequence the model's positions allow (``config.max_position_embeddings`` or
    ``n_positions``), or ``None`` if the config does not say."""
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _Suffix(nn.Module):
    """Blocks ``k..`` then the final norm and the head; holds the model as a submodule only so that its
    parameters keep their names (``model.<name>``) for ``torch.func.functional_call``."""

    def __init__(self, model: nn.Module, blocks: list[nn.Module], norm: nn.Module | None, head: nn.Module):
        super().__init__()
        self.model = model
        # plain attributes, not submodules: the same objects as inside self.model
        object.__setattr__(self, "_blocks", blocks)
        object.__setattr__(self, "_norm", norm)
        object.__setattr__(self, "_head", head)

    def forward(self, hidden: Tensor, block_kwargs: dict[str, Any], positions: Tensor | None = None) -> Tensor:
        h = hidden
        for block in self._blocks:
            out = block(h, **block_kwargs)
            h = out[0] if isinstance(out, (tuple, list)) else out
        if positions is not None:  # the head (V x d per position) only where logits are wanted
            h = h.flatten(0, 1).index_select(0, positions)
        if self._norm is not None:
            h = self._norm(h)
        return self._head(h)


class LMSubset:
    """A causal LM split into a frozen prefix (run once) and a suffix that holds the random subset.

    Args:
        model: a causal language model (``model(input_ids=...)``); it is not modified (its parameters are
            read, and written only by :meth:`load`).
        layer: index of the first block that holds random parameters (negative counts from the end;
            ``-1``: the last block).
        include: which parameters of the suffix (blocks ``layer..``, final norm, head) are random:
            ``None`` for every parameter of the blocks ``layer..`` (norm and head stay frozen); a name
            substring or a predicate on the full name, applied to the suffix's parameters only; or an
            iterable of full names, each of which must lie in the suffix. A parameter also used before
            block ``layer`` (a head tied to the input embedding) is never in the suffix. An empty
            selection raises ``ValueError``.
        blocks, norm, head: the model's parts, for layouts the defaults do not find.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: int = -1,
        include: str | Callable[[str], bool] | Iterable[str] | None = None,
        blocks: nn.ModuleList | None = None,
        norm: nn.Module | None = None,
        head: nn.Module | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.blocks = blocks if blocks is not None else decoder_blocks(model)
        n = len(self.blocks)
        if not isinstance(layer, int) or not -n <= layer < n:
            raise ValueError(f"layer must be an int in [{-n}, {n}) (the model has {n} blocks); got {layer!r}")
        self.layer = layer % n
        self.norm = norm if norm is not None else final_norm(model)
        self.head = head if head is not None else _output_embeddings(model)
        self.window = context_window(model)
        self._suffix = _Suffix(model, list(self.blocks)[self.layer :], self.norm, self.head)

        named = dict(model.named_parameters())  # tied parameters appear once, under their first name
        parts = [*list(self.blocks)[self.layer :], self.norm, self.head]
        suffix_modules = {id(m) for part in parts if part is not None for m in part.modules()}
        # a parameter that any module outside the suffix uses (a tied input embedding) shapes the cached
        # activations, so it can never be random here
        used_before = {
            id(p) for m in model.modules() if id(m) not in suffix_modules for p in m.parameters(recurse=False)
        }
        in_suffix = {id(p) for part in parts if part is not None for p in part.parameters()} - used_before
        in_blocks = {id(p) for b in list(self.blocks)[self.layer :] for p in b.parameters()} - used_before
        candidates = [name for name, p in named.items() if id(p) in (in_blocks if include is None else in_suffix)]
        if include is not None and not isinstance(include, str) and not callable(include):
            wanted = _names(include)
            unknown = sorted(wanted - set(named))
            if unknown:
                raise ValueError(f"include: {unknown[:3]} are not parameter names of {type(model).__name__}")
            outside = sorted(wanted - set(candidates))
            if outside:
                raise ValueError(
                    f"include: {outside[:3]} are used before block {self.layer} (or tied to a parameter that is), "
                    "so the cached prefix depends on them; choose a smaller layer or other names"
                )
            chosen = [name for name in candidates if name in wanted]
        else:
            keep_name = _name_filter(include)
            chosen = [name for name in candidates if keep_name(name)]
        if not chosen:
            raise ValueError(
                f"include: no parameter of {type(model).__name__} from block {self.layer} on matches {include!r}; "
                "the subset would be empty"
            )
        self.names: list[str] = chosen
        self._ids = {id(named[name]) for name in chosen}
        self._kwargs: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------------ the subset

    def keep(self, leaf: Tensor) -> bool:
        """``True`` for the model's parameter tensors in the subset (for :func:`thermoai.tree.tree_extract`)."""
        return id(leaf) in self._ids

    def full_tree(self) -> dict[str, Tensor]:
        """The model's parameters, ``{name: parameter}`` (the live tensors, not copies)."""
        return dict(self.model.named_parameters())

    def params(self) -> dict[str, Tensor]:
        """The subset's current values, ``{name: tensor}`` (detached copies; leaves in sorted-name order)."""
        sub = T.tree_extract(self.full_tree(), self.keep)
        return {name: value.detach().clone() for name, value in sub.items() if value is not None}

    def merged(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The full parameter tree with the subset taken from ``params`` (:func:`thermoai.tree.tree_insert`);
        frozen entries are the model's own tensors."""
        self._check_params(params)
        return T.tree_insert(self.full_tree(), {k: params[k] for k in sorted(params)}, self.keep)

    def load(self, params: dict[str, Tensor]) -> nn.Module:
        """Write ``params`` (the subset: a draw, a mean, a MAP) into the model in place; returns it."""
        self._check_params(params)
        return bayes_module.load(self.model, params)

    def n_params(self) -> int:
        """Number of scalar parameters in the subset."""
        named = self.full_tree()
        return sum(named[name].numel() for name in self.names)

    # ------------------------------------------------------------------------------------ forward

    def prefix(self, input_ids: Tensor, batch_size: int = 16) -> Tensor:
        """The frozen activations entering block ``layer``: ``(B, L, d)`` float tensor, no gradient.

        Args:
            input_ids: ``(B, L)`` int64 token ids (right-padded; see the module docstring), ``L`` at most
                the model's window.
            batch_size: rows run through the model at once (memory bound; the result does not depend on it).
        """
        ids = self._check_ids(input_ids)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        parts = [self._record(ids[i : i + batch_size])[0] for i in range(0, ids.shape[0], batch_size)]
        return torch.cat(parts)

    def logits(self, params: dict[str, Tensor], hidden: Tensor, positions: Tensor | None = None) -> Tensor:
        """``(B, L, V)`` logits with the subset set to ``params`` and the prefix's activations ``hidden``
        ``(B, L, d)``; equal to ``model(input_ids).logits`` when ``params`` are the model's own values.
        Pure in ``params`` (grad, vmap).

        ``positions`` selects where the head runs (the head is most of the suffix's cost: ``V x d`` per
        position): a ``(B, L)`` bool mask, giving ``(n, V)`` logits of its ``n`` true positions in row-major
        order, or a 1-D int64 tensor of flat indices ``b * L + t`` (the form that works under ``vmap``).
        """
        if not isinstance(hidden, Tensor) or hidden.ndim != 3:
            raise ValueError(f"hidden must be the (B, L, d) output of prefix(); got {_describe(hidden)}")
        index = None if positions is None else _flat_positions(positions, tuple(hidden.shape[:2]), hidden.device)
        kwargs = self._block_kwargs(int(hidden.shape[1]), hidden.device)
        named = {"model." + k: v for k, v in params.items()}
        return torch.func.functional_call(self._suffix, named, (hidden, kwargs, index), strict=False)

    def token_log_likelihood(
        self, params: dict[str, Tensor], hidden: Tensor, input_ids: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        """``(B, L-1)`` next-token log-likelihoods (see :func:`token_log_likelihood`)."""
        return token_log_likelihood(self.logits(params, hidden), input_ids, mask)

    # ------------------------------------------------------------------------------------ internals

    def _check_params(self, params: Any) -> None:
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict {{name: tensor}} of the subset; got {type(params).__name__}")
        if sorted(params) != sorted(self.names):
            missing = sorted(set(self.names) - set(params))
            extra = sorted(set(params) - set(self.names))
            raise ValueError(f"params must hold exactly the subset's names; missing {missing[:3]}, unexpected {extra[:3]}")

    def _check_ids(self, input_ids: Any) -> Tensor:
        if not isinstance(input_ids, Tensor) or input_ids.is_floating_point() or input_ids.ndim != 2:
            raise ValueError(f"input_ids must be a (B, L) integer tensor of token ids; got {_describe(input_ids)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
        if self.window is not None and input_ids.shape[1] > self.window:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} positions but the model's window is {self.window}; "
                "cut the text into windows of at most that many tokens"
            )
        return input_ids.long()

    def _record(self, ids: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """Run the model on ``ids`` up to block ``layer``; its input and keyword arguments."""
        got: dict[str, Any] = {}

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            got["hidden"] = hidden.detach()
            got["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            raise _StopForward

        handle = self.blocks[self.layer].register_forward_pre_hook(hook, with_kwargs=True)
        device = _device_of(self.model)
        try:
            with torch.no_grad():
                self.model(input_ids=ids.to(device), use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "hidden" not in got:
            raise TypeError(f"block {self.layer} was never called by {type(self.model).__name__}.forward")
        return got["hidden"], got["kwargs"]

    def _block_kwargs(self, length: int, device: torch.device) -> dict[str, Any]:
        if self.window is not None and length > self.window:
            raise ValueError(f"hidden has {length} positions but the model's window is {self.window}")
        if length not in self._kwargs:
            dummy = torch.zeros((1, length), dtype=torch.long)
            self._kwargs[length] = self._record(dummy)[1]
        return self._kwargs[length]


def token_log_likelihood(logits: Tensor, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Next-token log-likelihoods ``log p(x_{t+1} | x_{<=t})``: ``(B, L-1)`` from logits ``(B, L, V)``
    and ids ``(B, L)``; where ``mask`` ``(B, L)`` is false at the *target* position ``t+1`` the entry is 0.

    Works under ``vmap`` (no data-dependent control flow) and in float64 if the logits are. Outside
    ``torch.func`` transforms a NaN log-likelihood (from NaN or +inf logits) raises ``ValueError``; a -inf
    logit at a target gives -inf (that token is impossible under the logits), not an error. Inside
    ``grad``/``vmap`` the check is left to the caller (:func:`thermoai.bayes.log_prob.value_and_grad`
    refuses a non-finite value).
    """
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        raise ValueError(f"logits must be (B, L, V); got {_describe(logits)}")
    if not isinstance(input_ids, Tensor) or tuple(input_ids.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"input_ids must be (B, L) = {tuple(logits.shape[:2])}; got {_describe(input_ids)}")
    targets = input_ids[:, 1:]
    # cross_entropy wants the classes in dim 1: (B, V, L-1)
    ll = -F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
    if not under_transform(ll) and bool(torch.isnan(ll).any()):
        rows = torch.isnan(ll).any(-1).nonzero().flatten().tolist()
        raise ValueError(f"logits: NaN or +inf entries give NaN log-likelihoods in rows {rows[:5]}")
    if mask is None:
        return ll
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"mask must have the shape of input_ids {tuple(input_ids.shape)}; got {_describe(mask)}")
    return ll * mask[:, 1:].to(ll.dtype)


def _flat_positions(positions: Any, shape: tuple[int, int], device: torch.device) -> Tensor:
    """Flat indices ``b * L + t`` from a ``(B, L)`` bool mask or a 1-D integer index tensor."""
    if not isinstance(positions, Tensor):
        raise TypeError(f"positions must be a (B, L) bool mask or a 1-D int64 index tensor; got {_describe(positions)}")
    if positions.dtype == torch.bool:
        if tuple(positions.shape) != shape:
            raise ValueError(f"positions: a bool mask must have hidden's (B, L) = {shape}; got {tuple(positions.shape)}")
        return positions.to(device).flatten().nonzero().flatten()
    if positions.is_floating_point() or positions.is_complex() or positions.ndim != 1:
        raise ValueError(f"positions: an index tensor must be 1-D integer flat indices; got {_describe(positions)}")
    n = shape[0] * shape[1]
    if not under_transform(positions) and positions.numel() and not 0 <= int(positions.min()) <= int(positions.max()) < n:
        raise ValueError(f"positions: flat indices must lie in [0, {n}) for hidden's (B, L) = {shape}")
    return positions.to(device=device, dtype=torch.long)


def _name_filter(include: Any) -> Callable[[str], bool]:
    if include is None:
        return lambda name: True
    if isinstance(include, str):
        if not include:
            raise ValueError("include: an empty string matches every name; pass None for the whole suffix")
        return lambda name: include in name
    return include


def _names(include: Any) -> set[str]:
    if not isinstance(include, Iterable):
        raise TypeError(
            f"include must be None, a name substring, a predicate on names or names; got {type(include).__name__}"
        )
    wanted = set(include)
    if not all(isinstance(w, str) for w in wanted):
        raise TypeError("include: an iterable must hold parameter names (str)")
    return wanted


def _output_embeddings(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"model: cannot find the output head of {type(model).__name__}; pass head= explicitly")
    return head


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"
