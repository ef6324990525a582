"""Memory bank of Extended Mind Transformers: a document's keys and values, computed once.

The document's token ids ``x_0 .. x_{N-1}`` are cut into windows of ``window`` tokens advanced by
``stride`` (reference defaults 3072 / 512): windows ``[b, min(b + window, N))`` for ``b = 0, stride,
2 stride, ...`` until a window reaches ``N``. Each window goes through a fresh forward pass of the
model (positions from 0, no memory retrieval, no cache) and contributes the keys and values of the
tokens that no earlier window produced: the first window all of its tokens, every later one its last
``stride`` tokens, each then seen with ``window - stride`` tokens of left context. A smaller stride
gives each memory more left context at the cost of more forward passes: the build costs about
``N * window / stride`` token-forwards (16k tokens with 3072 / 512: 83k, four minutes for SmolLM2 on
two CPU cores), so a bank is built once per document and saved.

For every layer ``l`` the bank keeps

    keys[l]   = k_proj(h_l)   [n_kv_heads, M, head_dim]   (before RoPE; after k_norm if the model has one)
    values[l] = v_proj(h_l)   [n_kv_heads, M, head_dim]

per key/value head (grouped-query models are not repeated to the query heads), the token ids, their
positions in the document and their character spans in the text (for citations). Special tokens
(BOS, EOS, padding: the tokenizer's ``all_special_ids``) are removed, as in the reference, where this
drops the BOS attention sink. At most ``max_tokens`` memories are kept (reference: 100 000); from a
longer document the oldest are dropped with a warning, and windows that only feed dropped tokens are
not computed.

Files are safetensors. The header names the model, a hash of its architecture config, a fingerprint
of its weights, the settings and a SHA-256 of every tensor; ``MemoryBank.load`` refuses a bank built
for another model and reports corrupted or truncated files. ``save`` writes a temporary file in the
same directory and renames it, so an interrupted save leaves no half-written bank.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thermoai.memory.gemma import key_norm_heads_first
from thermoai.memory.model import attention_shape, decoder_layers, model_name, suspended

__all__ = ["MemoryBank", "config_hash", "weights_fingerprint", "default_window", "quantize_int8", "STORAGE_DTYPES"]

# names accepted for the storage dtype of keys and values
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.int8}


def _storage_dtype(dtype):
    """A torch dtype from ``dtype`` (a torch dtype or a name in ``STORAGE_DTYPES``), or None."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in STORAGE_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in STORAGE_DTYPES:
        return STORAGE_DTYPES[dtype]
    raise ValueError(f"dtype: expected one of {sorted(STORAGE_DTYPES)} (or the torch dtype), got {dtype!r}")


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``x [..., d]`` with one float32 scale per vector: ``x ≈ q * scale[..., None]``,
    ``scale = max_i |x_i| / 127``, ``q = round(x / scale)``; the error per element is at most ``scale / 2``."""
    x = x.to(torch.float32)
    scale = x.abs().amax(-1) / 127.0
    q = torch.round(x / scale.clamp_min(1e-30)[..., None]).clamp_(-127, 127).to(torch.int8)
    return q, scale

FORMAT = "thermoai.memory.MemoryBank"
VERSION = "1"
REFERENCE_WINDOW = 3072
REFERENCE_STRIDE = 512
DEFAULT_MAX_TOKENS = 100_000

_CONFIG_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "rope_parameters", "rope_theta",
    "rope_scaling", "max_position_embeddings", "attention_bias", "tie_word_embeddings",
)


def config_hash(model) -> str:
    """SHA-256 (first 16 hex digits) of the architecture fields of ``model.config``."""
    cfg = model.config.to_dict()
    fields = {key: cfg.get(key) for key in _CONFIG_KEYS if key in cfg}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(model) -> str:
    """SHA-256 (16 hex digits) of a few key-projection weights, rounded to bfloat16.

    Two models with one config but different weights (a fine-tune, another seed) produce different
    keys, so the config hash alone cannot tell them apart. Rounding to bfloat16 first makes a
    float32 model and its bfloat16 copy share the fingerprint.
    """
    _, layers = decoder_layers(model)
    digest = hashlib.sha256()
    for layer in (layers[0], layers[-1]):
        weight = layer.self_attn.k_proj.weight.detach()[:4].to("cpu", torch.bfloat16).float()
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()[:16]


def default_window(model) -> tuple[int, int]:
    """Reference window and stride (3072 / 512), scaled down to the model's position range."""
    limit = int(getattr(model.config, "max_position_embeddings", REFERENCE_WINDOW) or REFERENCE_WINDOW)
    window = min(REFERENCE_WINDOW, limit)
    stride = max(1, round(REFERENCE_STRIDE * window / REFERENCE_WINDOW))
    return window, stride


def _tensor_digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().cpu().view(torch.uint8).numpy()
    return hashlib.sha256(memoryview(data)).hexdigest()


def _special_ids(tokenizer, model) -> set[int]:
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    else:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(model.config, name, None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
    return ids


@dataclass
class MemoryBank:
    """Keys and values of a document for one model.

    Attributes:
        keys: ``[n_layers, n_kv_heads, M, head_dim]`` pre-RoPE keys.
        values: ``[n_layers, n_kv_heads, M, head_dim]`` values.
        token_ids: ``[M]`` token id of each memory.
        positions: ``[M]`` position of each memory in the tokenised document (0-based).
        char_spans: ``[M, 2]`` start/end character offsets in ``text`` (-1 where unknown).
        text: the document text, or None when built from token ids.
        n_positions: tokens in the document before removal and cap (where a prompt continues).
        model: name of the model; ``config_hash`` / ``fingerprint`` identify it.
        window, stride, max_tokens: build settings; ``dropped``: memories removed by the cap.
        key_scales, value_scales: ``[n_layers, n_kv_heads, M]`` float32 scales when ``keys``/``values``
            are int8 (``quantize_int8``), else None; ``layer(l)`` gives dequantised float32 tensors.

    Storage per memory token: ``2 L n_kv d`` times 4 bytes (float32), 2 (bfloat16) or 1 + 8/d (int8).
    """

    keys: torch.Tensor
    values: torch.Tensor
    token_ids: torch.Tensor
    positions: torch.Tensor
    char_spans: torch.Tensor
    text: str | None
    n_positions: int
    model: str
    config_hash: str
    fingerprint: str
    window: int
    stride: int
    max_tokens: int
    dropped: int = 0
    remove_special: bool = True
    extra: dict = field(default_factory=dict)
    key_scales: torch.Tensor | None = None
    value_scales: torch.Tensor | None = None

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.keys.shape[2])

    @property
    def n_layers(self) -> int:
        return int(self.keys.shape[0])

    @property
    def n_kv_heads(self) -> int:
        return int(self.keys.shape[1])

    @property
    def head_dim(self) -> int:
        return int(self.keys.shape[3])

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def nbytes(self) -> int:
        """Bytes of keys, values and (int8) their scales."""
        scales = 0 if self.key_scales is None else 2 * self.key_scales.numel() * 4
        return self.keys.numel() * self.keys.element_size() * 2 + scales

    @property
    def quantized(self) -> bool:
        return self.keys.dtype == torch.int8

    def layer(self, index: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer ``index``, ``[n_kv_heads, M, head_dim]`` each, dequantised if int8."""
        keys, values = self.keys[index].to(device), self.values[index].to(device)
        if self.quantized:
            keys = keys.to(torch.float32) * self.key_scales[index].to(device)[..., None]
            values = values.to(torch.float32) * self.value_scales[index].to(device)[..., None]
        return keys.to(dtype), values.to(dtype)

    def __repr__(self) -> str:
        return (
            f"MemoryBank(model={self.model!r}, memories={len(self)}, layers={self.n_layers}, "
            f"kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, dtype={self.keys.dtype}, "
            f"window={self.window}, stride={self.stride}, dropped={self.dropped})"
        )

    def to(self, device=None, dtype=None) -> "MemoryBank":
        """A copy (or the same tensors if nothing changes) on ``device`` with keys/values in ``dtype``
        (``torch.int8`` or ``"int8"`` quantises with per-vector scales; a float dtype dequantises)."""
        dtype = _storage_dtype(dtype)
        key_scales, value_scales = self.key_scales, self.value_scales
        if dtype == torch.int8 and not self.quantized:
            keys, key_scales = quantize_int8(self.keys)
            values, value_scales = quantize_int8(self.values)
            keys, values, key_scales, value_scales = (t.to(device) for t in (keys, values, key_scales, value_scales))
        elif dtype is not None and dtype != torch.int8 and self.quantized:
            keys = (self.keys.to(torch.float32) * self.key_scales[..., None]).to(device=device, dtype=dtype)
            values = (self.values.to(torch.float32) * self.value_scales[..., None]).to(device=device, dtype=dtype)
            key_scales = value_scales = None
        else:
            keys, values = self.keys.to(device=device), self.values.to(device=device)
            if dtype is not None and not self.quantized:
                keys, values = keys.to(dtype), values.to(dtype)
            if key_scales is not None:
                key_scales, value_scales = key_scales.to(device), value_scales.to(device)
        return MemoryBank(
            keys, values, self.token_ids.to(device), self.positions.to(device), self.char_spans.to(device),
            self.text, self.n_positions, self.model, self.config_hash, self.fingerprint, self.window,
            self.stride, self.max_tokens, self.dropped, self.remove_special, dict(self.extra), key_scales, value_scales,
        )

    def prefix(self, n_tokens: int) -> "MemoryBank":
        """The bank of the document's first ``n_tokens`` tokens, cut from this one (no forward pass).

        The windows of a build start at ``0, stride, 2 stride, ...`` whatever the document's length and
        attention is causal, so a memory's key and value depend only on the tokens of its window up to
        itself: building on the first ``n_tokens`` tokens gives the memories at positions
        ``< n_tokens`` of this bank (equal up to float rounding). One build of a long document then
        serves every shorter prefix (the perplexity experiment's input lengths). ``n_positions``
        becomes ``n_tokens``; banks with dropped memories (``max_tokens``) are refused.
        """
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or not 1 <= n_tokens <= self.n_positions:
            raise ValueError(f"n_tokens: expected an integer in [1, {self.n_positions}], got {n_tokens!r}")
        if self.dropped:
            raise ValueError(f"n_tokens: this bank dropped its {self.dropped} oldest memories (max_tokens), "
                             "so it holds no complete prefix")
        m = int((self.positions < n_tokens).sum())  # positions are increasing
        if m == 0:
            raise ValueError(f"n_tokens: the first {n_tokens} tokens hold no memory (all special tokens)")
        cut = lambda t: None if t is None else t[:, :, :m]  # noqa: E731
        text, spans = self.text, self.char_spans[:m]
        return MemoryBank(
            cut(self.keys), cut(self.values), self.token_ids[:m], self.positions[:m], spans, text, n_tokens,
            self.model, self.config_hash, self.fingerprint, self.window, self.stride, self.max_tokens, 0,
            self.remove_special, dict(self.extra), cut(self.key_scales), cut(self.value_scales),
        )

    def span(self, index: int) -> tuple[int, int]:
        """Character span ``(start, end)`` of memory ``index`` in ``text`` ((-1, -1) if unknown)."""
        start, end = self.char_spans[index].tolist()
        return int(start), int(end)

    # ----------------------------------------------------------------- checks
    def check_model(self, model) -> None:
        """Raise ``ValueError`` unless ``model`` is the model this bank was built for."""
        n_layers, _, n_kv, head_dim = attention_shape(model)
        mine = (self.config_hash, self.fingerprint)
        theirs = (config_hash(model), weights_fingerprint(model))
        if mine != theirs or (self.n_layers, self.n_kv_heads, self.head_dim) != (n_layers, n_kv, head_dim):
            raise ValueError(
                f"memory bank was built for model {self.model!r} (config hash {mine[0]}, weights {mine[1]}, "
                f"{self.n_layers} layers x {self.n_kv_heads} kv heads x {self.head_dim}) but the model given is "
                f"{model_name(model)!r} (config hash {theirs[0]}, weights {theirs[1]}, {n_layers} layers x "
                f"{n_kv} kv heads x {head_dim}); keys and values of one model mean nothing to another: "
                f"rebuild the bank with MemoryBank.build(model, ...)"
            )

    # ----------------------------------------------------------------- build
    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model,
        tokenizer=None,
        text: str | None = None,
        ids=None,
        window: int | None = None,
        stride: int | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        remove_special: bool = True,
        dtype: torch.dtype | None = None,
        device=None,
        progress: bool = True,
    ) -> "MemoryBank":
        """Run the document through ``model`` in strided windows and keep every layer's keys and values.

        Args:
            model: a Llama-family causal LM (RoPE; grouped-query attention allowed).
            tokenizer: needed with ``text``; gives the special ids to remove and character offsets.
            text: the document. Exactly one of ``text`` and ``ids`` is given.
            ids: ``[N]`` token ids (list or 1-D tensor) instead of text; no character spans then.
            window: tokens per forward pass (default ``min(3072, max_position_embeddings)``).
            stride: window advance (default 512 scaled like ``window``); ``1 <= stride <= window``.
            max_tokens: cap on memories kept; the oldest are dropped beyond it (default 100 000).
            remove_special: drop special tokens from the bank (default True, as the reference).
            dtype: storage of keys/values: a float dtype, ``torch.int8``/``"int8"`` (per-vector scales,
                ``quantize_int8``), or a name in ``STORAGE_DTYPES`` (default: the model's dtype).
            device: where the bank's tensors live (default CPU; ``attach`` places the copy used for
                retrieval on the model's device, once).
            progress: show a tqdm bar counting the document's tokens as their memories are stored.
        """
        base, layers = decoder_layers(model)
        n_layers, _, n_kv, head_dim = attention_shape(model)
        dtype = _storage_dtype(dtype)
        if (text is None) == (ids is None):
            raise ValueError("text, ids: expected exactly one of them, got " + ("both" if text is not None else "neither"))
        offsets = None
        if text is not None:
            if not isinstance(text, str):
                raise TypeError(f"text: expected str, got {type(text).__name__}")
            if not text.strip():
                raise ValueError("text: expected a non-empty document, got an empty or blank string")
            if tokenizer is None:
                raise ValueError("tokenizer: required to build a bank from text")
            try:
                enc = tokenizer(text, return_offsets_mapping=True, verbose=False)
                offsets = torch.tensor(enc["offset_mapping"], dtype=torch.long).reshape(-1, 2)
            except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
                enc = tokenizer(text, verbose=False)
            token_ids = torch.tensor(enc["input_ids"], dtype=torch.long).reshape(-1)
        else:
            try:
                token_ids = torch.as_tensor(ids).long().cpu()
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"ids: expected a 1-D sequence of token ids, got {type(ids).__name__}") from err
            if token_ids.dim() != 1:
                raise ValueError(f"ids: expected a 1-D sequence of token ids, got shape {tuple(token_ids.shape)}")
            vocab = int(model.config.vocab_size)
            if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= vocab):
                raise ValueError(f"ids: expected token ids in [0, {vocab}), got range [{int(token_ids.min())}, {int(token_ids.max())}]")
        n = int(token_ids.numel())
        if n == 0:
            raise ValueError("text/ids: expected a non-empty document, got 0 tokens")

        default_w, default_s = default_window(model)
        window = default_w if window is None else int(window)
        limit = int(getattr(model.config, "max_position_embeddings", window) or window)
        if window < 1:
            raise ValueError(f"window: expected >= 1, got {window}")
        if window > limit:
            warnings.warn(f"window={window} exceeds the model's max_position_embeddings={limit}", stacklevel=2)
        stride = (default_s if window == default_w else max(1, round(REFERENCE_STRIDE * window / REFERENCE_WINDOW))) \
            if stride is None else int(stride)
        if not 1 <= stride <= window:
            raise ValueError(f"stride: expected 1 <= stride <= window={window}, got {stride}")
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens: expected >= 1, got {max_tokens}")
        max_tokens = int(max_tokens)

        keep = torch.ones(n, dtype=torch.bool)
        if remove_special:
            special = _special_ids(tokenizer, model)
            if special:
                keep &= ~torch.isin(token_ids, torch.tensor(sorted(special), dtype=torch.long))
        kept_positions = keep.nonzero().flatten()
        if kept_positions.numel() == 0:
            raise ValueError("text/ids: the document holds only special tokens; nothing to remember")
        dropped = 0
        if kept_positions.numel() > max_tokens:
            dropped = int(kept_positions.numel()) - max_tokens
            warnings.warn(
                f"document has {kept_positions.numel()} memory tokens, more than max_tokens={max_tokens}: "
                f"the oldest {dropped} are dropped (the bank keeps the last {max_tokens})",
                stacklevel=2,
            )
            keep[kept_positions[:dropped]] = False
            kept_positions = kept_positions[dropped:]
        m = int(kept_positions.numel())
        first_kept = int(kept_positions[0])

        model_device = next(model.parameters()).device
        device = torch.device("cpu") if device is None else torch.device(device)
        quantize = dtype == torch.int8
        store_dtype = torch.float32 if quantize else (dtype or next(model.parameters()).dtype)
        keys = torch.empty(n_layers, n_kv, m, head_dim, dtype=store_dtype, device=device)
        values = torch.empty_like(keys)
        slot_of = torch.full((n,), -1, dtype=torch.long)
        slot_of[kept_positions] = torch.arange(m)

        windows = []
        begin, prev_end = 0, 0
        while True:
            end = min(begin + window, n)
            if end > first_kept:
                windows.append((begin, end, prev_end))
            prev_end = end
            if end == n:
                break
            begin += stride

        captured: dict = {}
        heads_first = key_norm_heads_first(model)

        def hook(name, index):
            def fn(_module, _inputs, output):
                captured[(name, index)] = output
            return fn

        handles = []
        for index, layer in enumerate(layers):
            attn = layer.self_attn
            key_module = getattr(attn, "k_norm", None) or attn.k_proj
            handles.append(key_module.register_forward_hook(hook("k", index)))
            handles.append(attn.v_proj.register_forward_hook(hook("v", index)))

        try:
            from tqdm.auto import tqdm

            # counts document tokens whose memories are stored (not token-forwards, which include overlap)
            bar = tqdm(total=n - (windows[0][2] if windows else 0), unit="tok", desc="memory bank (document tokens)",
                       disable=not progress)
            with suspended(model):
                for begin, end, new_from in windows:
                    chunk = token_ids[begin:end].to(model_device)[None]
                    base(input_ids=chunk, use_cache=False)
                    local = torch.arange(new_from, end)
                    local = local[keep[new_from:end]]
                    slots = slot_of[local].to(device)
                    rows = (local - begin).to(model_device)
                    for index in range(n_layers):
                        k = captured[("k", index)]
                        if heads_first:  # Gemma 3 norms keys after the head transpose: [1, n_kv, s, d]
                            k = k.transpose(1, 2)
                        k = k.reshape(end - begin, n_kv, head_dim)
                        v = captured[("v", index)].reshape(end - begin, n_kv, head_dim)
                        keys[index][:, slots] = k[rows].transpose(0, 1).to(device, store_dtype)
                        values[index][:, slots] = v[rows].transpose(0, 1).to(device, store_dtype)
                    captured.clear()
                    bar.update(end - new_from)
            bar.close()
        finally:
            for handle in handles:
                handle.remove()

        key_scales = value_scales = None
        if quantize:
            keys, key_scales = quantize_int8(keys)
            values, value_scales = quantize_int8(values)
        char_spans = offsets[kept_positions] if offsets is not None else torch.full((m, 2), -1, dtype=torch.long)
        return cls(
            keys=keys, values=values, token_ids=token_ids[kept_positions].clone(), positions=kept_positions.clone(),
            char_spans=char_spans.clone(), text=text, n_positions=n, model=model_name(model),
            config_hash=config_hash(model), fingerprint=weights_fingerprint(model), window=window, stride=stride,
            max_tokens=max_tokens, dropped=dropped, remove_special=bool(remove_special),
            key_scales=key_scales, value_scales=value_scales,
        )

    # ----------------------------------------------------------------- files
    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            "keys": self.keys, "values": self.values, "token_ids": self.token_ids,
            "positions": self.positions, "char_spans": self.char_spans,
        }
        if self.key_scales is not None:
            tensors["key_scales"], tensors["value_scales"] = self.key_scales, self.value_scales
        if self.text is not None:
            tensors["text_utf8"] = torch.frombuffer(bytearray(self.text.encode("utf-8")) or bytearray(1), dtype=torch.uint8)
        return {name: t.detach().contiguous().cpu() for name, t in tensors.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank to ``path`` (safetensors) atomically: a temporary file, then a rename."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.is_dir():
            raise ValueError(f"path: expected a file name, got the directory {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = self._tensors()
        metadata = {
            "format": FORMAT, "version": VERSION, "model": self.model, "config_hash": self.config_hash,
            "weights_fingerprint": self.fingerprint, "window": str(self.window), "stride": str(self.stride),
            "max_tokens": str(self.max_tokens), "n_positions": str(self.n_positions), "dropped": str(self.dropped),
            "remove_special": str(self.remove_special).lower(), "n_memories": str(len(self)),
            "text_bytes": str(len(self.text.encode("utf-8"))) if self.text is not None else "-1",
            "sha256": json.dumps({name: _tensor_digest(t) for name, t in tensors.items()}, sort_keys=True),
            "extra": json.dumps(self.extra, sort_keys=True, default=str),
        }
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, device=None, verify: bool = True) -> "MemoryBank":
        """Read a bank written by ``save``.

        Args:
            path: the safetensors file.
            model: if given, the bank must have been built for it (else ``ValueError``), and float
                keys and values take the model's dtype (int8 banks stay int8).
            device: where to put the tensors (default CPU; ``attach`` places the copy used for
                retrieval on the model's device, once).
            verify: check the SHA-256 of every tensor (detects corrupted files; about 1 s per GB).
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no memory bank file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as err:  # safetensors raises its own error types for truncated headers/data
            raise ValueError(f"memory bank file {str(path)!r} is corrupted or truncated: {err}") from err
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"{str(path)!r} is not a thermoai memory bank (header format {metadata.get('format')!r}, expected {FORMAT!r})"
            )
        if metadata.get("version") != VERSION:
            raise ValueError(f"{str(path)!r}: memory bank version {metadata.get('version')!r} is not supported (expected {VERSION})")
        try:
            digests = json.loads(metadata["sha256"])
            n_memories = int(metadata["n_memories"])
            keys, values = tensors["keys"], tensors["values"]
            token_ids, positions, spans = tensors["token_ids"], tensors["positions"], tensors["char_spans"]
            text = None
            if "text_utf8" in tensors:
                text = bytes(tensors["text_utf8"].numpy().tobytes())[: int(metadata["text_bytes"])].decode("utf-8")
            settings = dict(
                n_positions=int(metadata["n_positions"]), model=metadata["model"], config_hash=metadata["config_hash"],
                fingerprint=metadata["weights_fingerprint"], window=int(metadata["window"]), stride=int(metadata["stride"]),
                max_tokens=int(metadata["max_tokens"]), dropped=int(metadata["dropped"]),
                remove_special=metadata["remove_special"] == "true", extra=json.loads(metadata.get("extra", "{}")),
            )
        except (KeyError, ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"memory bank file {str(path)!r} is corrupted: missing or bad field {err}") from err
        if verify:
            for name, tensor in tensors.items():
                if digests.get(name) != _tensor_digest(tensor):
                    raise ValueError(f"memory bank file {str(path)!r} is corrupted: checksum of {name!r} does not match")
        if keys.dim() != 4 or keys.shape != values.shape or keys.shape[2] != n_memories or \
                token_ids.shape != (n_memories,) or positions.shape != (n_memories,) or spans.shape != (n_memories, 2):
            raise ValueError(f"memory bank file {str(path)!r} is corrupted: inconsistent tensor shapes")
        scales = (tensors.get("key_scales"), tensors.get("value_scales"))
        if (keys.dtype == torch.int8) != (scales[0] is not None) or (scales[0] is None) != (scales[1] is None) or \
                (scales[0] is not None and (scales[0].shape != keys.shape[:3] or scales[1].shape != keys.shape[:3])):
            raise ValueError(f"memory bank file {str(path)!r} is corrupted: int8 keys/values need key_scales and "
                             "value_scales of shape [layers, kv_heads, memories]")
        bank = cls(keys, values, token_ids, positions, spans, text, **settings, key_scales=scales[0], value_scales=scales[1])
        if model is not None:
            bank.check_model(model)
            bank = bank.to(device=device, dtype=None if bank.quantized else next(model.parameters()).dtype)
        elif device is not None:
            bank = bank.to(device=device)
        return bank
