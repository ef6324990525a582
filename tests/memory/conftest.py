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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these small-matrix tests on one intra-op thread.

    The matrices here are tiny, so a second thread gains little, while on a loaded machine (the test
    suite runs beside other work on 2 cores) oversubscribed OpenMP threads made a SmolLM2 forward
    20-40x slower. The previous setting is restored afterwards.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
