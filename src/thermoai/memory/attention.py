"""Extended Mind attention: top-k retrieval of memory keys/values inside every attention layer.

For a layer with local (cached) keys ``K_L``, values ``V_L`` and a memory bank ``K_M``, ``V_M`` (one
per key/value head), each query head ``h`` and query token ``i`` with rotated query ``q``:

    sim_j   = cos(q~, k~_j) = q~ . k~_j / (|q~| |k~_j|)            for every memory j of h's kv head
    R       = top-k indices of sim (optionally only those with sim_j > threshold)
    a       = softmax([ q~ . k~_R / sqrt(d)  ||  q . K_L / sqrt(d) + causal mask ])   (one softmax)
    out     = a[:k] V_M[R] + a[k:] V_L

where ``q~`` and ``k~`` are the query and memory keys placed by the position mode:

* ``"first"`` (reference, FoT's "rotate as if first"): ``k~ = s k`` unrotated, i.e. every memory
  sits at absolute position 0, at distance ``m`` from a query at position ``m``; ``q~ = q``.
* ``"original"``: ``k~ = RoPE(k, p - P)`` with ``p`` the memory's document position and ``P`` the
  document length, so a query at local position ``m`` sees it at distance ``P + m - p``: exactly as
  if the prompt continued the document. With the whole prefix as memory and ``k`` = all memories,
  this reproduces the full-context logits.
* ``"constant"`` (InfLLM): ``q~ = RoPE(q, D - m)``, ``k~ = s k``: every memory at distance ``D``.
* ``"none"``: ``q~ = RoPE(q, -m)``, ``k~ = s k``: no position information in memory logits.

(``s`` is the RoPE attention scaling, 1 for default RoPE.) Grouped-query attention is done through
a ``[b, n_kv, G, q, d]`` view of the queries, never by repeating the bank. Exact top-k costs one
``[q, M]`` similarity matrix per head (computed in query chunks to bound memory); an optional
approximate index (faiss HNSW) serves large banks. ALiBi models (MPT, Bloom) are not supported: the
reference gives memories a constant bias one step beyond the oldest local token; here only RoPE
models are accepted.

With ``output_attentions=True`` a retrieving layer returns its joint-softmax weights ``[b, H, q, k + kv]``
(each query's own ``k`` retrieved memories first, then the local keys; rows sum to 1) and computes them
materialised (not through the fused CPU kernel); other layers return eager attention weights.

The function is registered with transformers' ``AttentionInterface`` under the name ``"emt"``, and
the SDPA mask builder is registered under the same name in ``AttentionMaskInterface`` (without a
builder transformers passes no mask at all and padding would be silently lost). That builder returns
``None`` where the mask is purely causal; the function then applies causality itself (on a CPU
through the fused kernel's own causal mask, which skips the masked half). Layers without retrieval,
``topk == 0`` and a suspended mind fall through to transformers' SDPA.
"""

from __future__ import annotations

import contextlib
import math
import operator
from dataclasses import dataclass

import torch

from thermoai.memory import gemma
from thermoai.memory.bank import MemoryBank
from thermoai.memory.model import MIND_ATTRIBUTE, attention_shape, decoder_layers, suspended

__all__ = ["ExtendedMind", "attach", "suspended", "POSITION_MODES", "POSITION_MODE_ALIASES",
           "canonical_position_mode", "ATTENTION_NAME", "emt_attention"]

ATTENTION_NAME = "emt"
POSITION_MODES = ("first", "original", "constant", "none")
# other accepted spellings of the position modes
POSITION_MODE_ALIASES = {"as_if_first": "first", "as-if-first": "first", "zero": "first",
                         "constant_distance": "constant", "constant-distance": "constant", "infllm": "constant"}
# elements of one [b, H, q_chunk, M] similarity block: bounds prefill memory; on a CPU small enough
# that the top-k reads the block from cache (1.6x faster than 1 << 24 for 8 x 1100 queries against 16k
# memories, float32, one core), on a GPU large enough that kernel launches do not dominate
_SIM_BUDGET = {"cpu": 1 << 22, "cuda": 1 << 27}
# at most this many query rows (batch x group x tokens) per kv head use the bank @ queries^T product
# (measured on one CPU core with 16k memories: 1.3x faster for 3 rows, even at 9, slower beyond)
_FEW_QUERIES = 8
# the exact top-k first ranks blocks of this many memories by their maximum
_TOPK_BLOCK = 64
# on a CPU, the local part of a prefill comes from torch's fused kernel (no [s, kv] logits): 1.7x
# faster for 8 x 1100 tokens (decoding keeps the one-row logits, where the kernel call costs more);
# tests switch it off to check it against the materialised joint softmax
_FUSED_LOCAL = hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def canonical_position_mode(position_mode: str) -> str:
    """The name in ``POSITION_MODES`` of ``position_mode`` or of its alias (``"infllm"`` -> ``"constant"``).

    Raises ``ValueError`` for any other value.
    """
    mode = POSITION_MODE_ALIASES.get(position_mode, position_mode) if isinstance(position_mode, str) else position_mode
    if mode not in POSITION_MODES:
        raise ValueError(f"position_mode: expected one of {POSITION_MODES} (or an alias in "
                         f"{sorted(POSITION_MODE_ALIASES)}), got {position_mode!r}")
    return mode


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Llama RoPE of ``x[..., t, d]`` at ``positions[..., t]`` (any real numbers), times ``scale``."""
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(x.device, torch.float32)
    emb = torch.cat((angles, angles), dim=-1)
    x32 = x.to(torch.float32)
    return ((x32 * emb.cos() + _rotate_half(x32) * emb.sin()) * scale).to(x.dtype)


@dataclass
class _Layer:
    unit_keys: torch.Tensor  # [n_kv, M, d] keys placed by the position mode, divided by their norm
    values: torch.Tensor  # [n_kv, M, d]
    key_norms: torch.Tensor  # [n_kv, M] float32 norms of the placed keys
    offsets: torch.Tensor  # [1, n_kv, 1, 1, 1] = head * M: per-head index -> row of the flattened bank
    index: object = None  # optional approximate-search index per kv head
    bank_index: torch.Tensor | None = None  # [M'] bank index of each row when memories are skipped


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if ATTENTION_NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, emt_attention)


class ExtendedMind:
    """A memory bank attached to a Llama-family model; use as a context manager or call ``detach``.

    Args:
        model: the causal LM the bank was built for (checked).
        bank: a ``MemoryBank``; its tensors are placed once on the model's device and dtype.
        topk: memories per query head and token (reference default 10); 0 disables retrieval.
            Mutable: ``mind.topk = 4``.
        layers: indices of the layers that retrieve (default: all, as the reference).
        position_mode: ``"first"`` (default, reference), ``"original"``, ``"constant"``, ``"none"``.
        distance: the memory distance ``D`` of ``"constant"`` (default: the bank's window).
        threshold: drop retrieved memories with cosine similarity <= threshold (reference: off;
            0.25 when on). Mutable.
        record: record which memories the last query of each forward attended to (citations).
        index: ``"exact"`` (default) or ``"faiss"`` (approximate HNSW search, needs ``faiss-cpu``;
            worth it above ~100k memories).
        skip_memories: memories left out of retrieval: ``"none"`` (default, the reference), ``"first"``
            (the document's first token: computed at position 0 without context it is an attention sink
            that takes 35-50 % of SmolLM2's memory attention) or ``"sinks"`` (``citations.sink_memories``:
            the first token and whitespace-only tokens). Recorded indices stay bank indices.
        neighbours: also attend to the ``n`` memories that follow each retrieved one in the document
            (default 0, the reference). The joint softmax then holds up to ``k (n + 1)`` memories per
            query (duplicates once), each with its own dot-product logit: a query that matches a
            fact's subject also reads the words after it, where the answer is.
        local_layers: what sliding-window layers (Gemma 3) retrieve: ``"window"`` (default: memories
            outside the layer's window are dropped), ``"global"`` (only full-attention layers retrieve)
            or ``"all"``; see ``thermoai.memory.gemma``. No effect on models without sliding layers.
    """

    SKIP_MEMORIES = ("none", "first", "sinks")

    def __init__(self, model, bank: MemoryBank, topk: int = 10, layers=None, position_mode: str = "first",
                 distance: int | None = None, threshold: float | None = None, record: bool = False,
                 index: str = "exact", skip_memories: str = "none", neighbours: int = 0,
                 local_layers: str = gemma.DEFAULT_LOCAL_LAYERS):
        if not isinstance(bank, MemoryBank):
            raise TypeError(f"bank: expected a MemoryBank, got {type(bank).__name__}")
        base, decoder = decoder_layers(model)
        rotary = getattr(base, "rotary_emb", None)
        n_layers, n_heads, n_kv, head_dim = attention_shape(model)
        if rotary is None or 2 * gemma.layer_rope(rotary, model.config, 0)[0].numel() != head_dim:
            raise TypeError("model: Extended Mind needs a Llama-family model with full-dimension RoPE "
                            "(model.model.rotary_emb); ALiBi and partial-rotary models are not supported")
        gemma.check_supported(model)
        bank.check_model(model)
        mode = canonical_position_mode(position_mode)
        if index not in ("exact", "faiss"):
            raise ValueError(f"index: expected 'exact' or 'faiss', got {index!r}")
        if skip_memories not in self.SKIP_MEMORIES:
            raise ValueError(f"skip_memories: expected one of {self.SKIP_MEMORIES}, got {skip_memories!r}")
        if layers is None:
            layers = list(range(n_layers))
        else:
            layers = sorted({int(i) for i in layers})
            bad = [i for i in layers if not 0 <= i < n_layers]
            if bad:
                raise ValueError(f"layers: expected indices in [0, {n_layers}), got {bad}")
        layers = gemma.select_layers(model.config, layers, local_layers)
        self.local_layers = local_layers
        self.model = model
        self.bank = bank
        self.topk = topk
        self.threshold = threshold
        self.layers = tuple(layers)
        self.position_mode = mode
        self.distance = int(bank.window if distance is None else distance)
        self.record = bool(record)
        self.index_kind = index
        self.skip_memories = skip_memories
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
            raise ValueError(f"neighbours: expected an integer >= 0, got {neighbours!r}")
        self.neighbours = neighbours
        self.active = True
        self.n_heads, self.n_kv = n_heads, n_kv
        self.steps: list[list[tuple[int, torch.Tensor, torch.Tensor]]] = []
        self._rotary = rotary  # inv_freq is read at each call: dynamic RoPE variants replace it
        self._attached = False

        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        if mode == "original":
            key_positions = (bank.positions - bank.n_positions).to(device)
        else:
            key_positions = torch.zeros(len(bank), dtype=torch.long, device=device)
        kept = None
        if skip_memories != "none":
            from thermoai.memory.citations import sink_memories

            skipped = (bank.positions == bank.positions.min()).nonzero().flatten().cpu() if skip_memories == "first" \
                else sink_memories(bank)
            mask = torch.ones(len(bank), dtype=torch.bool)
            mask[skipped] = False
            if not mask.any():
                raise ValueError(f"skip_memories: {skip_memories!r} leaves no memory in this bank")
            kept = mask.nonzero().flatten()
            key_positions = key_positions[kept.to(device)]
        self._memory_positions = key_positions  # [M'] placed positions, for the sliding layers' window
        self._windows = {i: gemma.layer_window(model.config, i) for i in self.layers} if local_layers == "window" else {}
        self._layers: dict[int, _Layer] = {}
        for index_l in self.layers:
            keys, values = bank.layer(index_l, device=device)  # float32, dequantised if the bank is int8
            if kept is not None:
                keys, values = keys[:, kept.to(device)], values[:, kept.to(device)]
            if not (torch.isfinite(keys).all() and torch.isfinite(values).all()):
                raise ValueError(f"bank: layer {index_l} holds NaN or Inf keys or values; rebuild the bank "
                                 "(a model that produces non-finite activations cannot serve as memory)")
            inv_freq, scale = gemma.layer_rope(rotary, model.config, index_l)
            if mode == "original" or scale != 1.0:
                keys = rotate(keys, key_positions, inv_freq, scale)
            norms = keys.norm(dim=-1)
            # unit keys turn the cosine ranking into one matmul: q . k/|k| = cos * |q|, and the
            # logit is recovered for the k selected as (q . k/|k|) * |k|
            unit = (keys / norms.clamp_min(1e-12)[..., None]).to(dtype)
            values = values.to(dtype)
            offsets = torch.arange(n_kv, device=device).view(1, n_kv, 1, 1, 1) * unit.shape[1]
            layer = _Layer(unit.contiguous(), values.contiguous(), norms.contiguous(), offsets,
                           bank_index=None if kept is None else kept.to(device))
            if index == "faiss":
                layer.index = _faiss_index(unit)
            self._layers[index_l] = layer
        self._modules = [decoder[i].self_attn for i in self.layers]
        self._previous_impl = None
        self.attach()

    # ------------------------------------------------------------------ settings
    @property
    def topk(self) -> int:
        return self._topk

    @topk.setter
    def topk(self, value) -> None:
        try:
            count = operator.index(value)  # ints and integer numpy scalars, not floats
        except TypeError:
            count = -1
        if isinstance(value, bool) or count < 0:
            raise ValueError(f"topk: expected an integer >= 0, got {value!r}")
        self._topk = count

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @threshold.setter
    def threshold(self, value) -> None:
        if value is not None and not (isinstance(value, (int, float)) and -1.0 <= float(value) <= 1.0):
            raise ValueError(f"threshold: expected None or a cosine similarity in [-1, 1], got {value!r}")
        self._threshold = None if value is None else float(value)

    # ------------------------------------------------------------------ attach / detach
    def attach(self) -> "ExtendedMind":
        """Route the model's attention through ``"emt"`` (done by the constructor)."""
        if self._attached:
            return self
        other = getattr(self.model, MIND_ATTRIBUTE, None)
        if other is not None and other is not self:
            raise RuntimeError("model already has an ExtendedMind attached; detach it first")
        _register()
        self._previous_impl = self.model.config._attn_implementation
        self.model.set_attn_implementation(ATTENTION_NAME)
        for module in self._modules:
            setattr(module, MIND_ATTRIBUTE, self)
        setattr(self.model, MIND_ATTRIBUTE, self)
        self._attached = True
        return self

    def detach(self) -> None:
        """Restore the model's previous attention implementation (``attach()`` re-attaches)."""
        if not self._attached:
            return
        for module in self._modules:
            if getattr(module, MIND_ATTRIBUTE, None) is self:
                delattr(module, MIND_ATTRIBUTE)
        if getattr(self.model, MIND_ATTRIBUTE, None) is self:
            delattr(self.model, MIND_ATTRIBUTE)
        self.model.set_attn_implementation(self._previous_impl or "sdpa")
        self._attached = False

    def __enter__(self) -> "ExtendedMind":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @contextlib.contextmanager
    def settings(self, **changes):
        """Temporarily change ``topk``, ``threshold`` or ``record``: ``with mind.settings(topk=0): ...``."""
        allowed = {"topk", "threshold", "record"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"settings: expected keys among {sorted(allowed)}, got {sorted(unknown)}")
        old = {name: getattr(self, name) for name in changes}
        try:
            for name, value in changes.items():
                setattr(self, name, value)
            yield self
        finally:
            for name, value in old.items():
                setattr(self, name, value)

    # ------------------------------------------------------------------ citations
    def reset_citations(self) -> None:
        """Forget recorded retrievals (call before a new ``generate``)."""
        self.steps = []

    def citations(self, top: int = 5, merge_gap: int = 1, tokenizer=None, skip_sinks: bool = True):
        """Memories each recorded forward step attended to; see ``thermoai.memory.citations.cite``."""
        from thermoai.memory.citations import cite

        return cite(self, top=top, merge_gap=merge_gap, tokenizer=tokenizer, skip_sinks=skip_sinks)

    # ------------------------------------------------------------------ the attention
    def _query_positions(self, kwargs, b: int, s: int, kv: int, device) -> torch.Tensor:
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(kv - s, kv, device=device)[None]
        return positions.to(device).expand(b, s)

    def _retrieve(self, layer: _Layer, q: torch.Tensor, k: int):
        """Top-k memories of every query: ``q [b, n_kv, G, s, d]`` -> (dot products, cosines, indices
        within the head, rows of the flattened ``[n_kv * M]`` bank), each ``[b, n_kv, G, s, k]``.

        ``scores`` are ``q . k/|k|`` (the cosine times ``|q|``); the dot product is recovered as
        ``scores * |k|`` and the cosine as ``scores / |q|``.
        """
        b, n_kv, g, s, d = q.shape
        m = layer.unit_keys.shape[1]
        if layer.index is not None:
            idx = _faiss_search(layer, q, k)
            found = idx >= 0  # faiss pads with -1 when it finds fewer than k
            idx = idx.clamp_min(0)
            flat = idx + layer.offsets
            keys = layer.unit_keys.view(-1, d).index_select(0, flat.reshape(-1)).view(*flat.shape, d)
            scores = torch.matmul(keys, q.unsqueeze(-1)).squeeze(-1).to(torch.float32)
            scores = scores.masked_fill(~found, float("-inf"))
        elif b * g * s <= _FEW_QUERIES:
            # decoding: bank @ queries^T streams the [M, d] keys once per kv head, faster on a CPU than
            # queries @ bank^T for a few query rows (the queries must stay [rows, d]-contiguous: a
            # [d, rows]-contiguous right factor is 3x slower)
            rows = q.transpose(0, 1).reshape(n_kv, b * g * s, d)
            # [n_kv, b*G*s, M], made contiguous for the row-wise top-k (a small copy)
            scores_all = torch.matmul(layer.unit_keys, rows.transpose(1, 2)).transpose(1, 2).contiguous()
            scores, idx = _topk(scores_all, k)
            scores = scores.view(n_kv, b, g, s, k).transpose(0, 1).to(torch.float32)
            idx = idx.view(n_kv, b, g, s, k).transpose(0, 1)
        else:
            # prefill: the b*G*s query rows of each kv head as one [n_kv, rows, d] batch (a small copy),
            # scored by one batched matmul per block of rows into a [n_kv, rows, M] block whose rows the
            # top-k reads contiguously (an einsum over the [b, n_kv, G, s, d] view permuted its
            # [.., M] output: 2x slower for 40 x 9 queries against 16k memories)
            rows = q.transpose(0, 1).reshape(n_kv, b * g * s, d)
            budget = _SIM_BUDGET.get(q.device.type, _SIM_BUDGET["cpu"])
            chunk = max(1, budget // max(1, n_kv * m))
            keys_t = layer.unit_keys.transpose(1, 2)  # [n_kv, d, M] view: BLAS reads the transpose as is
            score_parts, idx_parts = [], []
            for start in range(0, rows.shape[1], chunk):
                best, best_idx = _topk(torch.matmul(rows[:, start:start + chunk], keys_t), k)
                score_parts.append(best)
                idx_parts.append(best_idx)
            scores = torch.cat(score_parts, 1).view(n_kv, b, g, s, k).transpose(0, 1).to(torch.float32)
            idx = torch.cat(idx_parts, 1).view(n_kv, b, g, s, k).transpose(0, 1)
        flat = idx + layer.offsets  # [b, n_kv, G, s, k] rows of the [n_kv * M] flattened bank
        dots = scores * layer.key_norms.view(-1)[flat]
        q_norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(1e-12)
        return dots, scores / q_norm, idx, flat

    @staticmethod
    def _expand(layer: _Layer, q: torch.Tensor, idx: torch.Tensor, n: int):
        """Add the ``n`` following memories of each retrieved one: ``idx [..., k]`` -> ``[..., k (n + 1)]``
        with their dot products, cosines, flat rows and a mask of repeated memories (kept once)."""
        m, d = layer.unit_keys.shape[1], q.shape[-1]
        steps = torch.arange(n + 1, device=idx.device)
        wide = (idx[..., :, None] + steps).clamp_max(m - 1).flatten(-2)  # [b, n_kv, G, s, k (n+1)]
        flat = wide + layer.offsets
        keys = layer.unit_keys.view(-1, d).index_select(0, flat.reshape(-1)).view(*flat.shape, d)
        scores = torch.matmul(keys, q.unsqueeze(-1)).squeeze(-1).to(torch.float32)
        dots = scores * layer.key_norms.view(-1)[flat]
        q_norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(1e-12)
        same = wide[..., :, None] == wide[..., None, :]  # [..., K, K]
        duplicate = same.tril(-1).any(-1)  # an earlier slot holds the same memory
        return dots, scores / q_norm, wide, flat, duplicate

    def _forward(self, module, query, key, value, attention_mask, scaling, kwargs):
        layer = self._layers[module.layer_idx]
        b, n_heads, s, d = query.shape
        n_kv, kv = key.shape[1], key.shape[2]
        g = n_heads // n_kv
        k = min(self.topk, layer.unit_keys.shape[1])
        q = query.view(b, n_kv, g, s, d)
        if self.position_mode in ("constant", "none"):
            target = self.distance if self.position_mode == "constant" else 0
            shift = target - self._query_positions(kwargs, b, s, kv, query.device)  # [b, s]
            q_mem = rotate(q, shift[:, None, None, :], gemma.layer_rope(self._rotary, self.model.config, module.layer_idx)[0])
        else:
            q_mem = q
        dots, sims, idx, flat = self._retrieve(layer, q_mem, k)  # [b, n_kv, G, s, k]
        duplicate = None
        if self.neighbours and k:
            dots, sims, idx, flat, duplicate = self._expand(layer, q_mem, idx, self.neighbours)
            k = idx.shape[-1]
        mem_logits = dots * scaling
        if self.threshold is not None:
            mem_logits = mem_logits.masked_fill(sims <= self.threshold, float("-inf"))
        if duplicate is not None:
            mem_logits = mem_logits.masked_fill(duplicate, float("-inf"))
        window = self._windows.get(module.layer_idx)
        if window is not None:
            mem_logits = gemma.mask_outside_window(mem_logits, idx, self._memory_positions,
                                                   self._query_positions(kwargs, b, s, kv, query.device), window,
                                                   self.position_mode, self.distance)

        mem_values = layer.values.view(-1, d).index_select(0, flat.reshape(-1)).view(b, n_kv, g * s, k, d)
        want_weights = bool(kwargs.get("output_attentions"))
        weights = None
        if s > 1 and query.device.type == "cpu" and _FUSED_LOCAL and not want_weights:  # prefill
            mem_w, out = self._merge_with_fused_local(query, key, value, attention_mask, scaling, mem_logits, mem_values)
        else:
            mem_w, out, weights = self._joint_softmax(q, key, value, attention_mask, scaling, mem_logits, mem_values)
            if want_weights:  # [b, H, s, k + kv]: each query's own k memories first, then the local keys
                weights = weights.view(b, n_heads, s, -1)
            else:
                weights = None
        if self.record:
            last = idx[:, :, :, -1] if layer.bank_index is None else layer.bank_index[idx[:, :, :, -1]]
            self._record(module.layer_idx, last.reshape(b, -1), mem_w[:, :, :, -1].reshape(b, -1))
        return out.view(b, n_heads, s, d).transpose(1, 2).contiguous(), weights

    @staticmethod
    def _joint_softmax(q, key, value, attention_mask, scaling, mem_logits, mem_values):
        """One softmax over ``[memory logits || local logits]`` (materialises the local logits)."""
        b, n_kv, g, s, d = q.shape
        kv, k = key.shape[2], mem_logits.shape[-1]
        # local attention as batched matmuls over the [b, n_kv, G*s] query rows of each kv head
        local_logits = torch.matmul(q.reshape(b, n_kv, g * s, d), key.transpose(-1, -2)).view(b, n_kv, g, s, kv)
        local_logits = local_logits.to(torch.float32) * scaling
        mask = _additive_mask(attention_mask, s, kv, torch.float32, q.device)
        if mask is not None:
            local_logits = local_logits + mask[:, :, None]
        weights = torch.softmax(torch.cat([mem_logits, local_logits], dim=-1), dim=-1)
        mem_w, local_w = weights[..., :k], weights[..., k:].to(value.dtype)
        out = torch.matmul(mem_w.to(value.dtype).reshape(b, n_kv, g * s, 1, k), mem_values).view(b, n_kv, g * s, d)
        return mem_w, out + torch.matmul(local_w.reshape(b, n_kv, g * s, kv), value), weights

    @staticmethod
    def _merge_with_fused_local(query, key, value, attention_mask, scaling, mem_logits, mem_values):
        """The same joint softmax, with the local part from torch's fused CPU attention.

        The fused kernel returns the local output ``o_L`` and ``lse_L = log sum_j exp(l_j)`` without
        materialising the ``[s, kv]`` logits; with ``c = max(lse_L, max_i m_i)`` the joint softmax is

            out = (e^(lse_L - c) o_L + sum_i e^(m_i - c) v_i) / (e^(lse_L - c) + sum_i e^(m_i - c)).
        """
        b, n_heads, s, d = query.shape
        n_kv, kv = key.shape[1], key.shape[2]
        g, k = n_heads // n_kv, mem_logits.shape[-1]
        causal = attention_mask is None and s == kv  # the kernel's own causal mask: half the work
        # the kernel takes additive masks of the query's dtype
        mask = None if causal else _additive_mask(attention_mask, s, kv, query.dtype, query.device)
        local, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1), 0.0, causal,
            attn_mask=mask, scale=scaling)  # [b, H, s, d], [b, H, s] float32
        lse = lse.view(b, n_kv, g, s)
        top = torch.maximum(lse, mem_logits.amax(-1))
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        local_w = torch.exp(lse - top)  # [b, n_kv, G, s]
        mem_w = torch.exp(mem_logits - top[..., None])  # [b, n_kv, G, s, k]
        total = local_w + mem_w.sum(-1)
        mem_w, local_w = mem_w / total[..., None], (local_w / total).reshape(b, n_kv, g * s, 1)
        out = torch.matmul(mem_w.to(value.dtype).reshape(b, n_kv, g * s, 1, k), mem_values).view(b, n_kv, g * s, d)
        local = local.reshape(b, n_kv, g * s, d)
        # a fully masked row (left padding) may come back as NaN with zero weight
        local = torch.where(local_w > 0, local, torch.zeros_like(local))
        return mem_w, out + (local_w * local).to(out.dtype)

    def _record(self, layer_idx: int, idx: torch.Tensor, weights: torch.Tensor) -> None:
        if layer_idx == self.layers[0] or not self.steps:
            self.steps.append([])
        self.steps[-1].append((layer_idx, idx.detach().cpu(), weights.detach().to(torch.float32).cpu()))


def _additive_mask(attention_mask, s: int, kv: int, dtype: torch.dtype, device) -> torch.Tensor | None:
    """The local keys' mask ``[b or 1, 1, s, kv]`` as additive ``dtype`` values, or ``None`` if all are visible.

    ``attention_mask`` is what the SDPA mask builder gave: boolean (True: attend), additive, or ``None``
    for a purely causal mask (built here for ``s > 1``). Masked entries get the dtype's finite minimum,
    not -inf, which keeps fully masked padding rows finite.
    """
    if attention_mask is not None:
        mask = attention_mask[:, :, :, -kv:]
    elif s > 1:
        mask = torch.ones(s, kv, dtype=torch.bool, device=device).tril(kv - s)[None, None]
    else:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


def emt_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The ``"emt"`` attention function (transformers' signature); output ``[b, q, H, d]``."""
    mind = getattr(module, MIND_ATTRIBUTE, None)
    if scaling is None:
        scaling = 1.0 / math.sqrt(query.shape[-1])
    if mind is None or not mind.active or mind.topk == 0:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if kwargs.get("output_attentions"):  # sdpa has no weights to give; eager has
            from transformers.models.llama.modeling_llama import eager_attention_forward

            mask = _additive_mask(attention_mask, query.shape[2], key.shape[2], query.dtype, query.device)
            return eager_attention_forward(module, query, key, value, mask, scaling=scaling, dropout=dropout)

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if dropout and module.training:
        raise ValueError("dropout: Extended Mind attention is for inference; call model.eval()")
    return mind._forward(module, query, key, value, attention_mask, scaling, kwargs)


def attach(model, bank: MemoryBank, topk: int = 10, layers=None, position_mode: str = "first", **options) -> ExtendedMind:
    """Attach ``bank`` to ``model``; returns the ``ExtendedMind`` (a context manager; ``.detach()``)."""
    return ExtendedMind(model, bank, topk=topk, layers=layers, position_mode=position_mode, **options)


def _topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``scores.topk(k, dim=-1)`` (values, indices), in blocks: on a CPU about 2x faster for long rows.

    The last dimension is cut into blocks of ``_TOPK_BLOCK``; the k largest scores lie in the k blocks
    with the largest maxima (a block outside them has k larger blocks, each holding an element at
    least as large), so the top-k is taken over those k blocks plus the incomplete tail block only.
    Ties may be broken differently from ``torch.topk``. Half-precision scores on a CPU are ranked in
    float32 (an order-preserving copy): there the reductions run 2x faster than on bfloat16.
    """
    if scores.device.type == "cpu" and scores.dtype in (torch.bfloat16, torch.float16):
        scores = scores.float()
    m = scores.shape[-1]
    blocks = m // _TOPK_BLOCK
    if blocks < 4 * k:
        return scores.topk(k, dim=-1)
    whole = blocks * _TOPK_BLOCK
    main = scores[..., :whole].unflatten(-1, (blocks, _TOPK_BLOCK))
    best = main.amax(-1).topk(k, dim=-1).indices  # [..., k] blocks
    candidates = main.gather(-2, best[..., None].expand(*best.shape, _TOPK_BLOCK)).flatten(-2)
    offsets = torch.arange(_TOPK_BLOCK, device=scores.device)
    positions = (best[..., None] * _TOPK_BLOCK + offsets).flatten(-2)
    if whole < m:
        candidates = torch.cat([candidates, scores[..., whole:]], -1)
        tail = torch.arange(whole, m, device=scores.device).expand(*positions.shape[:-1], m - whole)
        positions = torch.cat([positions, tail], -1)
    values, local = candidates.topk(k, dim=-1)
    return values, positions.gather(-1, local)


# ---------------------------------------------------------------------- optional approximate index
def _faiss_index(unit_keys: torch.Tensor):
    """One HNSW inner-product index per kv head over the unit keys (cosine search)."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError("index='faiss' needs faiss-cpu: pip install 'thermoai[ann]' (or faiss-cpu)") from err
    indexes = []
    for head in unit_keys.to(torch.float32).cpu().numpy():
        index = faiss.IndexHNSWFlat(head.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
        index.add(head)
        indexes.append(index)
    return indexes


def _faiss_search(layer: _Layer, q: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[b, n_kv, G, s, k]`` of the (approximately) most cosine-similar memories, -1 if none."""
    b, n_kv, g, s, d = q.shape
    normed = torch.nn.functional.normalize(q.to(torch.float32), dim=-1)
    idx = torch.empty(b, n_kv, g, s, k, dtype=torch.long)
    for head, index in enumerate(layer.index):
        flat = normed[:, head].reshape(-1, d).cpu().numpy()
        _, found = index.search(flat, k)
        idx[:, head] = torch.from_numpy(found).reshape(b, g, s, k)
    return idx.to(q.device)
