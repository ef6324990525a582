"""Retrieval diagnostic: did the memories that hold the answer get retrieved, and did they get attention?

With ``record=True`` an ``ExtendedMind`` keeps, for every forward step ``t`` (in ``generate``: the pass
that predicts generated token ``t``), every retrieving layer ``l`` and every query head ``h``, the
indices ``R_{t,l,h}`` (``k`` of them) of the memories retrieved by the step's last query and their
weights ``a_{t,l,h,j}`` in the joint softmax. Given the memories ``S`` of the span of the document
that holds the answer (``span_memories``), this module computes

    hit_{t,l,h}    = 1[R_{t,l,h} ∩ S ≠ ∅]                       did top-k include the span?
    mass_{t,l,h}   = sum_{j in R_{t,l,h} ∩ S} a_{t,l,h,j}        attention share the span received
    memory_{t,l,h} = sum_{j in R_{t,l,h}} a_{t,l,h,j}            attention share of all retrieved memories

    recall@k of layer l = mean_{t,h} hit_{t,l,h}                   [layers]
    chance@k            = 1 - C(M - |S|, k) / C(M, k)              what a random top-k would give

so that a wrong answer can be told apart as *not retrieved* (recall near chance in every layer) or
*retrieved, not used* (high recall in some layers, little mass). ``classify`` makes that call with a
stated rule (see its docstring). Memories retrieved but masked by a similarity ``threshold`` have weight
0 and do not count as retrieved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["span_memories", "find_span", "answer_steps", "RetrievalDiagnostic", "diagnose", "classify", "RETRIEVED_RECALL"]

# a question's span counts as retrieved when some layer's recall@k over its answer steps and heads
# reaches this (half of the heads find it), see ``classify``
RETRIEVED_RECALL = 0.5


def find_span(text: str, evidence: str) -> tuple[int, int]:
    """Character span ``(start, end)`` of the first case-insensitive occurrence of ``evidence`` in ``text``.

    Raises ``ValueError`` naming ``evidence`` when it does not occur.
    """
    if not isinstance(evidence, str) or not evidence.strip():
        raise ValueError(f"evidence: expected a non-empty string that occurs in the document, got {evidence!r}")
    start = text.lower().find(evidence.strip().lower())
    if start < 0:
        raise ValueError(f"evidence: {evidence.strip()[:60]!r} does not occur in the document")
    return start, start + len(evidence.strip())


def answer_steps(tokenizer, generated, answer: str) -> slice | None:
    """The generation steps that wrote ``answer``: ``slice(t0, t1)`` over the ``generated`` token ids
    (step ``t`` predicts ``generated[t]``), or ``None`` when the decoded output does not contain it
    (case-insensitive)."""
    ids = [int(t) for t in generated]
    text = tokenizer.decode(ids, skip_special_tokens=True).lower()
    where = text.find(answer.strip().lower())
    if where < 0 or not answer.strip():
        return None
    end = where + len(answer.strip())
    t0 = t1 = None
    for t in range(len(ids)):
        length = len(tokenizer.decode(ids[: t + 1], skip_special_tokens=True))
        if t0 is None and length > where:
            t0 = t
        if length >= end:
            t1 = t + 1
            break
    return slice(t0, t1 if t1 is not None else len(ids))


def span_memories(bank, start: int, end: int) -> torch.Tensor:
    """Bank indices ``[n]`` of the memories whose characters overlap ``[start, end)`` of ``bank.text``."""
    if bank.text is None:
        raise ValueError("bank: built from token ids, it has no character spans; build it from text to diagnose spans")
    if not 0 <= start < end:
        raise ValueError(f"start, end: expected 0 <= start < end, got ({start}, {end})")
    spans = bank.char_spans.cpu()
    hit = (spans[:, 0] < end) & (spans[:, 1] > start)
    return hit.nonzero().flatten()


@dataclass
class RetrievalDiagnostic:
    """Per step, layer and head: was the answer span retrieved (``hit``) and how much attention it got.

    Attributes:
        layers: the retrieving layers, in the order of the second axis.
        target: ``[n]`` bank indices of the span's memories.
        hit: ``[steps, L, H]`` bool, top-k included a span memory.
        mass: ``[steps, L, H]`` float32, attention weight on the span's memories.
        memory_mass: ``[steps, L, H]`` float32, attention weight on all retrieved memories.
        topk: k of the recorded steps; ``n_memories``: memories in the bank.
    """

    layers: tuple[int, ...]
    target: torch.Tensor
    hit: torch.Tensor
    mass: torch.Tensor
    memory_mass: torch.Tensor
    topk: int
    n_memories: int

    @property
    def chance(self) -> float:
        """Probability that ``k`` memories drawn at random include one of the span: ``1 - C(M-n, k)/C(M, k)``."""
        m, n, k = self.n_memories, int(self.target.numel()), self.topk
        if n == 0 or k == 0:
            return 0.0
        if m - n < k:
            return 1.0
        return 1.0 - math.exp(math.lgamma(m - n + 1) - math.lgamma(m - n - k + 1) - math.lgamma(m + 1) + math.lgamma(m - k + 1))

    @property
    def recall_by_layer(self) -> torch.Tensor:
        """``[L]`` recall@k of each layer: share of (step, head) pairs whose top-k hold a span memory."""
        return self.hit.float().mean(dim=(0, 2)) if self.hit.numel() else torch.zeros(len(self.layers))

    @property
    def mass_by_layer(self) -> torch.Tensor:
        """``[L]`` mean attention weight (over steps and heads) on the span's memories."""
        return self.mass.mean(dim=(0, 2)) if self.mass.numel() else torch.zeros(len(self.layers))

    @property
    def recall(self) -> float:
        """recall@k averaged over steps, layers and heads."""
        return float(self.hit.float().mean()) if self.hit.numel() else 0.0

    @property
    def best_recall(self) -> float:
        """The highest per-layer recall@k."""
        return float(self.recall_by_layer.max()) if self.hit.numel() else 0.0

    @property
    def span_mass(self) -> float:
        """Attention weight on the span averaged over steps, layers and heads (share of all attention)."""
        return float(self.mass.mean()) if self.mass.numel() else 0.0

    @property
    def memory_share(self) -> float:
        """Share of the span in the attention that went to memories: ``sum mass / sum memory_mass``."""
        total = float(self.memory_mass.sum())
        return float(self.mass.sum()) / total if total > 0 else 0.0

    def summary(self, digits: int = 4) -> dict:
        """A JSON-ready dict: recall and mass overall and per layer, chance level, and ``classify``'s verdict."""
        r = lambda x: round(float(x), digits)  # noqa: E731
        return {
            "span_memories": int(self.target.numel()), "steps": int(self.hit.shape[0]), "topk": self.topk,
            "recall": r(self.recall), "best_recall": r(self.best_recall), "chance": r(self.chance),
            "span_mass": r(self.span_mass), "memory_share": r(self.memory_share),
            "verdict": classify(self),
            "layers": list(self.layers),
            "recall_by_layer": [r(x) for x in self.recall_by_layer.tolist()],
            "mass_by_layer": [r(x) for x in self.mass_by_layer.tolist()],
        }


def diagnose(mind, target, row: int = 0, steps: int | slice | None = None) -> RetrievalDiagnostic:
    """The retrieval diagnostic of batch row ``row`` over the recorded steps of ``mind``.

    Args:
        mind: an ``ExtendedMind`` that recorded (``record=True``) while generating.
        target: bank indices of the answer span (``span_memories``), or a ``(start, end)`` character span.
        row: batch row.
        steps: the first ``steps`` recorded steps (e.g. the number of answer tokens, so that steps after
            the end of the answer do not count), a slice of them, or all (``None``).
    """
    if not mind.steps:
        raise ValueError("mind: nothing recorded; attach with record=True (or set mind.record = True) before generating")
    if isinstance(target, tuple) and len(target) == 2 and all(isinstance(x, int) for x in target):
        target = span_memories(mind.bank, *target)
    target = torch.as_tensor(target, dtype=torch.long).flatten().cpu()
    records = mind.steps
    if isinstance(steps, int):
        records = records[:max(1, steps)]
    elif isinstance(steps, slice):
        records = records[steps]
    batch = records[0][0][1].shape[0]
    if not 0 <= row < batch:
        raise ValueError(f"row: expected a batch row in [0, {batch}), got {row}")
    layers = tuple(layer for layer, _, _ in records[0])
    heads = mind.n_heads
    hits, masses, totals = [], [], []
    for record in records:
        idx = torch.stack([i[row] for _, i, _ in record]).view(len(record), heads, -1)  # [L, H, k]
        w = torch.stack([w[row] for _, _, w in record]).view(len(record), heads, -1)
        inside = torch.isin(idx, target)
        if mind.threshold is not None:  # masked by the threshold: weight 0, not retrieved
            inside &= w > 0
        hits.append(inside.any(-1))
        masses.append((w * inside).sum(-1))
        totals.append(w.sum(-1))
    k = int(records[0][0][1].shape[1] // heads)
    return RetrievalDiagnostic(layers, target, torch.stack(hits), torch.stack(masses), torch.stack(totals), k,
                               len(mind.bank))


def classify(diagnostic: RetrievalDiagnostic, recall: float = RETRIEVED_RECALL) -> str:
    """``"retrieved"`` when some layer's recall@k reaches ``recall`` (default: half of its heads over the
    answer steps hold a span memory in their top-k) and that is above the chance level, else
    ``"not retrieved"``. Whether a retrieved span was *used* is read from the answer (right or wrong)
    and from ``span_mass``."""
    best = diagnostic.best_recall
    return "retrieved" if best >= recall and best > diagnostic.chance else "not retrieved"
