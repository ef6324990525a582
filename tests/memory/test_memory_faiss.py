"""The approximate index (``index="faiss"``) with the real faiss-cpu (installed by the ``all`` extra)."""

import pytest
import torch

faiss = pytest.importorskip("faiss")

from thermoai.memory import MemoryBank, attach  # noqa: E402
from thermoai.memory.attention import _Layer, _faiss_index, _faiss_search  # noqa: E402

TOL = dict(atol=2e-5, rtol=1e-5)


def test_faiss_index_on_a_small_bank_equals_exact_search(tiny, doc_ids):
    """HNSW over 40 memories per head visits them all: the logits equal the exact top-k."""
    bank = MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)
    prompt = doc_ids[None, 40:55]
    with attach(tiny, bank, topk=4, threshold=0.05):
        exact = tiny(prompt).logits
    with attach(tiny, bank, topk=4, threshold=0.05, index="faiss") as mind:
        assert all(len(layer.index) == mind.n_kv for layer in mind._layers.values())
        indexed = tiny(prompt).logits
    torch.testing.assert_close(indexed, exact, **TOL)


def test_faiss_recall_on_random_unit_keys():
    """Random Gaussian keys are the hard case for HNSW (no cluster structure): recall@10 against the
    exact cosine top-k over 10k memories per head. Measured 0.97-0.98; 1800 queries x 10 give a
    standard error near 0.004, so 0.9 fails only on a real defect (a wrong metric, unnormalised queries,
    a head/offset mix-up give recall near 0)."""
    generator = torch.Generator().manual_seed(0)
    n_kv, m, d, k = 3, 10_000, 64, 10
    keys = torch.nn.functional.normalize(torch.randn(n_kv, m, d, generator=generator), dim=-1)
    layer = _Layer(keys, keys, torch.ones(n_kv, m), torch.arange(n_kv).view(1, n_kv, 1, 1, 1) * m,
                   _faiss_index(keys))
    queries = 3.0 * torch.randn(1, n_kv, 3, 200, d, generator=generator)  # unnormalised, as in attention
    found = _faiss_search(layer, queries, k)
    exact = torch.einsum("bngsd,nmd->bngsm", queries, keys).topk(k, dim=-1).indices
    recall = (found[..., :, None] == exact[..., None, :]).any(-1).float().mean().item()
    assert recall > 0.9, recall
