"""Helpers shared by the thermoai.memory tests."""

import torch


def make_tiny_llama(seed: int = 0, layers: int = 3, heads: int = 4, kv_heads: int = 2, vocab: int = 101,
                    dtype=torch.float32):
    """A random Llama (hidden 64, head_dim 16, GQA 4 query heads / 2 kv heads), eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config).eval().to(dtype)
    model.requires_grad_(False)
    return model
