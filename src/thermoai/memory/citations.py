"""Citations: which parts of the document each generated token attended to.

With ``record=True`` an ``ExtendedMind`` keeps, for every forward pass ("step") and every retrieving
layer ``l``, the indices ``R_{l,h}`` of the memories retrieved by the last query token of each head
``h`` and their weights ``a_{l,h,j}`` in the joint softmax. In ``model.generate`` step ``t`` is the
forward pass that predicts generated token ``t`` (the prefill predicts the first one). A memory's
score at a step is its attention weight averaged over layers and query heads,

    w_j = 1 / (L H) * sum_{l, h} a_{l,h,j}     (0 for heads that did not retrieve j),

i.e. the share of the model's total attention that went to memory ``j`` (the reference counts how
often an index is retrieved; weighting by attention ranks memories that were retrieved but ignored
lower). The top memories are mapped to their character spans in the document and neighbouring
memories are merged into one span.

**Evidence for an answer** (``answer_citations``, used by ``thermoai memory ask``) ranks memories by
their *contribution* to the answer tokens instead: attention times the norm of the value it brings
(Kobayashi et al. 2020, "Attention is not only a weight"), in excess of what a content-free query
gives the same memory,

    c_j  = 1 / (T L H) * sum_{t, l, h} a_{t,l,h,j} |v_{l,g(h),j}|     over the answer steps t
    e_j  = max(0, c_j - c0_j)                                          c0: one forward of the BOS token

Attention sinks (the document's first token, blank tokens, " the") draw attention from every query,
whatever it asks; their small values and the baseline ``c0`` remove them unless the answer attends
to them more than a query about nothing does. Spans made only of function words and punctuation are
not reported (they cite nothing a reader can check).
"""

from __future__ import annotations

import re

from dataclasses import dataclass

import torch

_FUNCTION_WORDS = frozenset(
    "a an the of to in on at by for from with and or but as is are was were be been it its this that these those "
    "which who whom what there their they he she his her we you i not no".split())


def only_function_words(text: str | None) -> bool:
    """True for spans like " the" or ", and" (only function words and punctuation): nothing to check."""
    words = re.findall(r"\w+", (text or "").lower())
    return all(w in _FUNCTION_WORDS for w in words)

__all__ = ["Citation", "memory_weights", "cite", "sink_memories", "contributions", "baseline_contributions",
           "answer_citations", "only_function_words"]


@dataclass(frozen=True)
class Citation:
    """A cited stretch of the document.

    Attributes:
        start, end: character offsets in the document text (-1 when the bank has no text).
        text: ``document[start:end]`` (or the decoded ids when the bank has no text; None otherwise).
        weight: summed mean attention weight of the memories in the span (see module docstring).
        memories: bank indices of the memories in the span, in document order.
        positions: their token positions in the document.
    """

    start: int
    end: int
    text: str | None
    weight: float
    memories: tuple[int, ...]
    positions: tuple[int, ...]


def memory_weights(mind) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per batch row and step: ``(indices [n], weights [n])`` of every memory that got attention.

    Weights are averaged over the retrieving layers and all query heads (see module docstring).
    """
    if not mind.steps:
        return []
    batch = mind.steps[0][0][1].shape[0]
    n_memories = len(mind.bank)
    result: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(batch)]
    for records in mind.steps:
        per_row = torch.zeros(batch, n_memories, dtype=torch.float32)
        for _layer, idx, weights in records:
            per_row.scatter_add_(1, idx, weights)
        per_row /= len(mind.layers) * mind.n_heads
        for row in range(batch):
            nonzero = per_row[row].nonzero().flatten()
            result[row].append((nonzero, per_row[row, nonzero]))
    return result


def sink_memories(bank, tokenizer=None) -> torch.Tensor:
    """Bank indices of memories that act as attention sinks rather than content: ``[n]``.

    These are the document's first token (computed at position 0 without left context, it collects
    attention like a BOS token does; models without a BOS token, SmolLM2 among them, use the first
    token as their sink) and whitespace-only tokens. On SmolLM2 these two take 40-50% of the memory
    attention at every step, whatever the step is about.
    """
    sinks = bank.positions == 0
    if bank.text is not None:
        blank = [bank.text[a:b].strip() == "" if a >= 0 else False for a, b in bank.char_spans.tolist()]
        sinks |= torch.tensor(blank, dtype=torch.bool, device=sinks.device)
    elif tokenizer is not None:
        blank = [tokenizer.decode([t]).strip() == "" for t in bank.token_ids.tolist()]
        sinks |= torch.tensor(blank, dtype=torch.bool, device=sinks.device)
    return sinks.nonzero().flatten().cpu()


def cite(mind, top: int = 5, merge_gap: int = 1, tokenizer=None, skip_sinks: bool = True) -> list[list[list[Citation]]]:
    """Top cited document spans per batch row and step: ``result[row][step] -> [Citation, ...]``.

    Args:
        mind: an ``ExtendedMind`` that recorded (``record=True``) during the forward passes.
        top: number of highest-weight memories kept per step before merging into spans.
        merge_gap: memories at most this many document tokens apart join one span.
        tokenizer: used to decode spans when the bank was built from ids (no text).
        skip_sinks: leave out attention-sink memories (``sink_memories``): the first document
            token and whitespace-only tokens.

    Spans are sorted by weight, highest first.
    """
    if top < 1:
        raise ValueError(f"top: expected >= 1, got {top}")
    if merge_gap < 1:
        raise ValueError(f"merge_gap: expected >= 1, got {merge_gap}")
    if not mind.steps and not mind.record:
        raise ValueError("mind: nothing recorded; attach with record=True (or set mind.record = True) before generating")
    bank = mind.bank
    positions = bank.positions.cpu()
    spans = bank.char_spans.cpu()
    excluded = sink_memories(bank, tokenizer) if skip_sinks else torch.empty(0, dtype=torch.long)
    result = []
    for row in memory_weights(mind):
        row_out = []
        for indices, weights in row:
            if excluded.numel():
                keep = ~torch.isin(indices, excluded)
                indices, weights = indices[keep], weights[keep]
            if indices.numel() == 0:
                row_out.append([])
                continue
            best = weights.topk(min(top, indices.numel()))
            chosen = indices[best.indices]
            order = positions[chosen].argsort()
            chosen, chosen_w = chosen[order], best.values[order]
            groups: list[list[int]] = []
            for i in range(chosen.numel()):
                if groups and int(positions[chosen[i]] - positions[chosen[groups[-1][-1]]]) <= merge_gap:
                    groups[-1].append(i)
                else:
                    groups.append([i])
            citations = []
            for group in groups:
                mems = chosen[group]
                start, end = int(spans[mems[0], 0]), int(spans[mems[-1], 1])
                if bank.text is not None and start >= 0:
                    text = bank.text[start:end]
                elif tokenizer is not None:
                    ids = bank.token_ids[mems.to(bank.token_ids.device)].tolist()
                    text = tokenizer.decode(ids)
                else:
                    text = None
                citations.append(Citation(start, end, text, float(chosen_w[group].sum()), tuple(mems.tolist()),
                                          tuple(positions[mems].tolist())))
            citations.sort(key=lambda c: -c.weight)
            row_out.append(citations)
        result.append(row_out)
    return result


def _value_norms(mind) -> dict[int, torch.Tensor]:
    """Per retrieving layer, ``[n_kv, M]`` float32 norms of the memory values (cached on the mind)."""
    cached = getattr(mind, "_value_norms", None)
    if cached is None:
        cached = {}
        for l, layer in mind._layers.items():
            norms = layer.values.float().norm(dim=-1).cpu()  # [n_kv, rows]
            if layer.bank_index is not None:  # skipped memories: zero norm at their bank index
                full = torch.zeros(norms.shape[0], len(mind.bank))
                full[:, layer.bank_index.cpu()] = norms
                norms = full
            cached[l] = norms
        mind._value_norms = cached
    return cached


def contributions(mind, row: int = 0, steps=None, records=None) -> torch.Tensor:
    """``[M]`` mean value-weighted attention ``c_j`` of every memory over the recorded ``steps``
    (an int: the first ones; a slice; None: all) of batch row ``row`` (see module docstring)."""
    records = mind.steps if records is None else records
    if isinstance(steps, int):
        records = records[:max(1, steps)]
    elif isinstance(steps, slice):
        records = records[steps]
    if not records:
        raise ValueError("mind: nothing recorded; attach with record=True (or set mind.record = True) before generating")
    norms = _value_norms(mind)
    heads, groups = mind.n_heads, mind.n_heads // mind.n_kv
    kv_of_head = torch.arange(heads) // groups
    total = torch.zeros(len(mind.bank), dtype=torch.float32)
    for record in records:
        for layer, idx, weights in record:
            idx = idx[row].view(heads, -1)
            w = weights[row].view(heads, -1) * norms[layer][kv_of_head[:, None], idx]
            total.scatter_add_(0, idx.flatten(), w.flatten())
    return total / (len(records) * len(records[0]) * heads)


@torch.no_grad()
def baseline_contributions(mind) -> torch.Tensor:
    """``[M]`` contributions ``c0_j`` for a content-free query: one forward pass of the model's BOS (else
    EOS) token with the mind's current settings. Cached per (topk, threshold) on the mind."""
    key = (mind.topk, mind.threshold)
    cache = getattr(mind, "_baselines", None)
    if cache is None:
        cache = mind._baselines = {}
    if key not in cache:
        config = mind.model.config
        token = config.bos_token_id if config.bos_token_id is not None else config.eos_token_id
        if isinstance(token, (list, tuple)):
            token = token[0]
        device = next(mind.model.parameters()).device
        saved, record = mind.steps, mind.record
        mind.steps, mind.record = [], True
        try:
            mind.model(input_ids=torch.tensor([[int(token or 0)]], device=device), use_cache=False)
            cache[key] = contributions(mind, 0)
        finally:
            mind.steps, mind.record = saved, record
    return cache[key]


def answer_citations(mind, row: int = 0, steps=None, top: int = 3, merge_gap: int = 1, tokenizer=None,
                     baseline: bool = True) -> list[Citation]:
    """The document spans that contributed most to an answer, heaviest first (see module docstring).

    Args:
        mind: an ``ExtendedMind`` that recorded while generating the answer.
        row: batch row.
        steps: the answer's steps (an int: the first ones, e.g. the number of generated tokens; a slice;
            None: all recorded steps).
        top: spans returned (at most).
        merge_gap: memories at most this many document tokens apart join one span.
        tokenizer: decodes spans of a bank built from ids.
        baseline: subtract the content-free query's contributions (``baseline_contributions``).

    ``Citation.weight`` is the span's summed excess contribution ``sum e_j`` (attention share times
    value norm); spans of function words only are skipped.
    """
    if top < 1:
        raise ValueError(f"top: expected >= 1, got {top}")
    if merge_gap < 1:
        raise ValueError(f"merge_gap: expected >= 1, got {merge_gap}")
    score = contributions(mind, row, steps)
    if baseline:
        score = (score - baseline_contributions(mind)).clamp_min(0)
    bank = mind.bank
    positions, spans = bank.positions.cpu(), bank.char_spans.cpu()
    candidates = score.nonzero().flatten()
    if candidates.numel() == 0:
        return []
    best = candidates[score[candidates].argsort(descending=True)][: 8 * top]
    order = positions[best].argsort()
    best = best[order]
    groups: list[list[int]] = []
    for j in best.tolist():
        if groups and int(positions[j] - positions[groups[-1][-1]]) <= merge_gap:
            groups[-1].append(j)
        else:
            groups.append([j])
    result = []
    for group in groups:
        start, end = int(spans[group[0], 0]), int(spans[group[-1], 1])
        if bank.text is not None and start >= 0:
            text = bank.text[start:end]
        elif tokenizer is not None:
            text = tokenizer.decode(bank.token_ids[group].tolist())
        else:
            text = None
        if text is not None and only_function_words(text):
            continue
        result.append(Citation(start, end, text, float(score[group].sum()), tuple(group),
                               tuple(positions[group].tolist())))
    result.sort(key=lambda c: -c.weight)
    return result[:top]
