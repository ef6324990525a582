"""Shared fixtures for thermoai.memory tests: a tiny random-weight Llama with GQA, and SmolLM2."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from memory_helpers import make_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_llama()


@pytest.fixture(scope="module")
def doc_ids():
    """80 random non-special token ids (ids 0, 1, 2 are pad, bos, eos)."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, 101, (80,), generator=generator)


@pytest.fixture(scope="session")
def smollm():
    from thermoai.memory import load_model

    return load_model()

