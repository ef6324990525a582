"""Uncertainty-triggered retrieval: raising k when the next-token entropy is high."""

import pytest
import torch

from thermoai.memory import MemoryBank, attach, generate_adaptive


@pytest.fixture(scope="module")
def bank(tiny, doc_ids):
    return MemoryBank.build(tiny, ids=doc_ids[:40], progress=False)


def greedy(model, prompt, steps):
    return model.generate(prompt, max_new_tokens=steps, do_sample=False)


def test_thresholds_at_the_extremes_equal_fixed_k(tiny, doc_ids, bank):
    prompt = doc_ids[None, 40:50]
    with attach(tiny, bank, topk=10) as mind:
        never = generate_adaptive(tiny, mind, prompt, 6, k=2, step_k=5, entropy_threshold=1e9)
        always = generate_adaptive(tiny, mind, prompt, 6, k=2, step_k=5, entropy_threshold=0.0)
        assert mind.topk == 10  # restored
        mind.topk = 2
        low = greedy(tiny, prompt, 6)
        mind.topk = 7
        high = greedy(tiny, prompt, 6)
    assert not never.raised.any() and always.raised.all()
    assert torch.equal(never.sequences, low) and torch.equal(always.sequences, high)
    assert never.entropies.shape == (1, 6) and (never.entropies > 0).all()


def test_batch_rows_are_independent(tiny, doc_ids, bank):
    """Rows raise k at different steps; each row equals its own single-row run, so the cache
    entries of rows that stayed certain are restored after a re-run."""
    prompts = torch.stack([doc_ids[40:50], doc_ids[50:60]])
    with attach(tiny, bank, topk=10) as mind:
        probe = generate_adaptive(tiny, mind, prompts, 8, k=1, step_k=6, entropy_threshold=1e9)
        threshold = float(probe.entropies.median())
        batched = generate_adaptive(tiny, mind, prompts, 8, k=1, step_k=6, entropy_threshold=threshold)
        singles = [generate_adaptive(tiny, mind, row[None], 8, k=1, step_k=6, entropy_threshold=threshold)
                   for row in prompts]
    raised = batched.raised
    assert raised.any() and not raised.all() and not torch.equal(raised[0], raised[1])
    for row, single in enumerate(singles):
        assert torch.equal(batched.sequences[row], single.sequences[0])
        assert torch.equal(batched.raised[row], single.raised[0])
        torch.testing.assert_close(batched.entropies[row], single.entropies[0], atol=1e-4, rtol=1e-4)


def test_bad_arguments(tiny, doc_ids, bank):
    with attach(tiny, bank) as mind:
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate_adaptive(tiny, mind, doc_ids[None, :5], 0)
        with pytest.raises(ValueError, match="entropy_threshold"):
            generate_adaptive(tiny, mind, doc_ids[None, :5], 2, entropy_threshold=-1)
        with pytest.raises(ValueError, match="input_ids"):
            generate_adaptive(tiny, mind, doc_ids[:5], 2)
