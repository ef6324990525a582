"""Confidence of an answer given with Extended Mind: how sure the model was, and how much it read memory.

For an answer of ``T`` tokens ``y_1 .. y_T`` with next-token distributions ``p_t`` (the logits of the
steps that wrote them), and the recorded joint-softmax weights ``a_{t,l,h,j}`` of the retrieved memories:

    probability       = exp( 1/T sum_t log p_t(y_t) )           geometric mean of the chosen tokens' probability
    min_probability   = min_t p_t(y_t)
    entropy           = 1/T sum_t H(p_t)                         nats (the quantity the adaptive retrieval thresholds)
    memory_attention  = 1/(T L H) sum_{t,l,h} sum_j a_{t,l,h,j}  share of attention that went to memories

``score`` is ``probability``; on the counterfactual benchmark it separates right from wrong answers better than
the others (docs/results/emt_benchmark.md, "Confidence"), and ``thermoai memory ask --min-confidence P`` says
"not found in the document" below ``P``.
"""

from __future__ import annotations

import torch

__all__ = ["confidence", "token_confidence", "memory_attention"]


def token_confidence(logits: torch.Tensor, tokens: torch.Tensor) -> dict:
    """Probability and entropy signals from ``logits [T, vocab]`` of the steps that chose ``tokens [T]``."""
    if logits.dim() != 2 or tokens.shape != logits.shape[:1]:
        raise ValueError(f"logits, tokens: expected [T, vocab] and [T], got {tuple(logits.shape)} and {tuple(tokens.shape)}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, tokens.long().to(logp.device)[:, None]).squeeze(1)
    entropy = -(logp.exp() * logp).sum(-1)
    return {"probability": float(chosen.mean().exp()), "min_probability": float(chosen.min().exp()),
            "entropy": float(entropy.mean())}


def memory_attention(mind, steps=None, row: int = 0) -> float:
    """Share of attention on retrieved memories, averaged over the recorded ``steps`` (int: the first ones;
    slice; None: all), the retrieving layers and the query heads of batch row ``row``."""
    records = mind.steps if mind is not None else []
    if isinstance(steps, int):
        records = records[:max(1, steps)]
    elif isinstance(steps, slice):
        records = records[steps]
    if not records:
        return 0.0
    share = [float(w[row].sum()) / (len(record) * mind.n_heads) for record in records for _, _, w in record]
    return sum(share) / len(records)


def confidence(mind, logits: torch.Tensor, tokens: torch.Tensor, steps=None, row: int = 0, digits: int = 4) -> dict:
    """``token_confidence`` plus ``memory_attention`` over the recorded ``steps`` of batch row ``row``,
    and ``score`` (= ``probability``), rounded to ``digits``."""
    out = token_confidence(logits, tokens)
    out["memory_attention"] = memory_attention(mind, steps, row)
    out["score"] = out["probability"]
    return {k: round(v, digits) for k, v in out.items()}
