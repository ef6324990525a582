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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Citation", "memory_weights", "cite", "sink_memories"]


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
