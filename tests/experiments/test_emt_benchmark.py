"""The counterfactual retrieval benchmark: its data generator, and a tiny end-to-end run."""

import dataclasses
import json

import pytest
import torch

from thermoai.experiments import emt_benchmark, emt_data


def _approx_count(text: str) -> int:
    return len(text.split())  # a tokenizer stand-in: the generator only needs a monotone count


def test_documents_are_deterministic_and_hold_their_facts():
    a = emt_data.make_document(1500, 5, seed=3, count_tokens=_approx_count)
    b = emt_data.make_document(1500, 5, seed=3, count_tokens=_approx_count)
    c = emt_data.make_document(1500, 5, seed=4, count_tokens=_approx_count)
    assert a.text == b.text and a.facts == b.facts and a.text != c.text
    assert 1200 <= a.n_tokens <= 1500
    offsets = [a.text.index(f.statement) for f in a.facts]
    assert offsets == a.fact_offsets
    # facts spread over the document: one in each fifth
    depths = sorted(o / len(a.text) for o in offsets)
    assert all(i / 5 <= d < (i + 1) / 5 for i, d in enumerate(depths)), depths


def test_answers_are_unknowable_and_unambiguous():
    filler = "\n".join(emt_data.filler_paragraphs()).lower()
    facts = emt_data.make_facts(40, seed=11)
    answers = [f.answer.lower() for f in facts]
    assert len(set(answers)) == 40
    assert not any(a in filler for a in answers)
    for f in facts:
        assert f.answer in f.statement and f.answer.lower() not in f.question.lower()
        others = [a for a in answers if a != f.answer.lower()]
        assert not any(o in f.statement.lower() for o in others)
    assert {f.kind for f in facts} == {"fictional", "altered"}


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_facts"):
        emt_data.make_facts(0, seed=1)
    with pytest.raises(ValueError, match="conditions"):
        emt_benchmark.run(tmp_path, quick=True, conditions=("oracle",))
    with pytest.raises(ValueError, match="size"):
        emt_benchmark.run(tmp_path, size="huge")
    with pytest.raises(ValueError, match="fraction"):
        emt_benchmark.evenly_spaced_layers(30, 0.0)


def test_evenly_spaced_layers():
    assert emt_benchmark.evenly_spaced_layers(30, 1.0) == list(range(30))
    assert emt_benchmark.evenly_spaced_layers(30, 0.1) == [0, 14, 29]
    assert emt_benchmark.evenly_spaced_layers(30, 0.01) == [29]


def test_quick_run_writes_a_consistent_report(tmp_path):
    from thermoai.memory import load_model

    model, tokenizer = load_model()
    previous = torch.get_num_threads()
    torch.set_num_threads(2)  # run(threads=1) must put this back when it is done
    try:
        result = emt_benchmark.run(tmp_path, quick=True, model=model, tokenizer=tokenizer, progress=False, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    for suffix in ("md", "json", "png"):
        assert (tmp_path / f"emt_benchmark.{suffix}").stat().st_size > 0
    saved = json.loads((tmp_path / "emt_benchmark.json").read_text())
    assert saved["accuracy"] == result["accuracy"]
    cfg = emt_benchmark.SIZES["quick"]
    n = cfg.docs_per_length * cfg.facts_per_doc
    questions = {}
    for condition in emt_benchmark.CONDITIONS:
        entry = result["accuracy"][condition][str(cfg.lengths[0])]
        assert entry["total"] == n
        rows = [r for r in result["records"] if r["condition"] == condition]
        questions[condition] = [r["question"] for r in rows]
        assert entry["correct"] == sum(emt_benchmark.is_correct(r["expected"], r["generated"]) for r in rows)
    assert len({tuple(q) for q in questions.values()}) == 1  # every method saw the same questions
    assert [e["value"] for e in result["ablations"]["position_mode"]] == list(cfg.ablate_position_modes)
    assert result["ablations"]["layer_fraction"][0]["layers"] == emt_benchmark.evenly_spaced_layers(30, 0.5)
    report = (tmp_path / "emt_benchmark.md").read_text()
    assert "Extended Mind + retrieval augmentation" in report and "Command:" in report
    # the retrieval diagnostic and the confidence of every Extended Mind answer, summarised per condition
    for r in result["records"]:
        has = r["condition"] in ("extended_mind", "extended_mind_rag") or r["condition"].startswith("ablation:")
        assert ("diagnostic" in r) == has, r["condition"]
        if has:
            for span in ("sentence", "answer"):
                d = r["diagnostic"][span]
                assert len(d["recall_by_layer"]) in (30, 15) and 0 <= d["recall"] <= d["best_recall"] <= 1
                assert d["verdict"] in ("retrieved", "not retrieved") and d["span_memories"] >= 1
            assert 0 < r["confidence"]["probability"] <= 1 and 0 <= r["confidence"]["memory_attention"] <= 1
    summary = result["diagnostics"]["extended_mind"]
    for span in ("sentence", "answer"):
        e = summary[span]
        assert e["right"] + e["wrong_not_retrieved"] + e["wrong_retrieved"] == n
    assert summary["thresholds"][0]["answered"] + summary["thresholds"][0]["not_found"] == n
    assert [e["value"] for e in result["ablations"]["bank_dtype"]] == ["float32", "int8"]
    assert set(result["paired_ablations"]) >= {"bank_dtype: int8 - float32", "skip_memories: first - none"}
    assert "## Retrieval diagnostic" in report and "## Confidence" in report


def test_threads_hold_for_the_run_and_are_restored_after_it(monkeypatch, tmp_path):
    """``threads`` sets torch's thread count for the run only (also when the run fails); ``None`` keeps it."""
    seen = []

    def fake_run(cfg, *args):
        seen.append(torch.get_num_threads())
        if len(seen) == 2:
            raise RuntimeError("the run failed")
        return {}

    monkeypatch.setattr(emt_benchmark, "_run", fake_run)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        emt_benchmark.run(tmp_path, quick=True, threads=1)
        assert seen == [1] and torch.get_num_threads() == 3
        with pytest.raises(RuntimeError, match="the run failed"):
            emt_benchmark.run(tmp_path, quick=True, threads=2)
        assert seen == [1, 2] and torch.get_num_threads() == 3
        emt_benchmark.run(tmp_path, quick=True)
        assert seen == [1, 2, 3] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)


def test_parallel_documents_give_the_same_records_in_document_order(tmp_path):
    """jobs=2 answers each document in its own process; records come back in the documents' order and
    equal the single-process run (greedy decoding, one thread per process)."""
    settings = dict(size="quick", docs_per_length=2, conditions=("no_document", "extended_mind"),
                    ablate_position_modes=(), ablate_layer_fractions=(), ablate_topk=(), progress=False, threads=1)
    serial = emt_benchmark.run(tmp_path / "serial", **settings)
    parallel = emt_benchmark.run(tmp_path / "parallel", jobs=2, **settings)
    keys = [(r["length"], r["doc"], r["fact"], r["condition"], r["generated"]) for r in serial["records"]]
    assert keys == [(r["length"], r["doc"], r["fact"], r["condition"], r["generated"]) for r in parallel["records"]]
    assert [r["doc"] for r in serial["records"]] == sorted(r["doc"] for r in serial["records"])
    assert {r["doc"] for r in serial["records"]} == {0, 1}
    assert serial["accuracy"] == parallel["accuracy"]


def test_parallel_jobs_refuse_a_preloaded_model(tmp_path):
    with pytest.raises(ValueError, match="jobs"):
        emt_benchmark.run(tmp_path, quick=True, model=object(), tokenizer=object(), jobs=2)
    with pytest.raises(ValueError, match="jobs"):
        emt_benchmark.run(tmp_path, quick=True, jobs=0)


def test_paired_differences_on_known_records():
    """a right on 3 of 4 questions, b on 1 (the one a misses): differences (1, 1, 1, -1)."""
    def rec(fact, condition, correct, kind="fictional"):
        return {"length": 2000, "doc": 0, "fact": fact, "condition": condition, "correct": correct, "kind": kind}

    records = [rec(0, "a", True), rec(1, "a", True), rec(2, "a", True), rec(3, "a", False, "altered"),
               rec(0, "b", False), rec(1, "b", False), rec(2, "b", False), rec(3, "b", True, "altered"),
               rec(4, "a", True)]  # no b answer: not paired
    out = emt_benchmark.paired_differences(records, "a", "b")
    assert (out["n"], out["a_only"], out["b_only"]) == (4, 3, 1)
    assert out["difference"] == pytest.approx(0.5)
    assert out["stderr"] == pytest.approx(1.0 / 2)  # sample s.d. of (1, 1, 1, -1) is 1, over sqrt(4)
    altered = emt_benchmark.paired_differences(records, "a", "b", kind="altered")
    assert (altered["n"], altered["difference"]) == (1, -1.0)
    assert emt_benchmark.paired_differences(records, "a", "missing") is None


def test_baseline_comparison_pairs_each_condition_with_the_earlier_run(tmp_path):
    def rec(fact, condition, correct, generated, question=None, setting=None):
        return {"length": 2000, "doc": 0, "fact": fact, "condition": condition, "correct": correct, "kind": "fictional",
                "generated": generated, "question": question or f"q{fact}", "setting": setting}

    new = [rec(0, "rag", True, "A"), rec(1, "rag", True, "B"), rec(2, "rag", False, "x"),
           rec(0, "extended_mind", False, "n"), rec(0, "ablation:topk", True, "A", setting=2)]
    old = [rec(0, "rag", True, "A"), rec(1, "rag", False, "b"), rec(2, "rag", False, "x"),
           rec(0, "extended_mind", True, "A"), rec(0, "ablation:topk", False, "z", setting=2)]
    out = emt_benchmark.baseline_comparison(new, old, ("rag", "extended_mind", "truncated"))
    assert set(out) == {"rag", "extended_mind"}  # no truncated records; ablations are not conditions
    assert (out["rag"]["n"], out["rag"]["a_only"], out["rag"]["b_only"], out["rag"]["same_text"]) == (3, 1, 0, 2)
    assert out["rag"]["difference"] == pytest.approx(1 / 3)
    assert (out["extended_mind"]["difference"], out["extended_mind"]["same_text"]) == (-1.0, 0)
    with pytest.raises(ValueError, match="same documents"):
        emt_benchmark.baseline_comparison(new, [rec(0, "rag", True, "A", question="other")], ("rag",))
    # on the page: the section, and a missing file is said, not an error
    cfg = emt_benchmark.BenchmarkConfig(conditions=("rag", "extended_mind"), baseline=str(tmp_path / "old.json"))
    assert emt_benchmark._baseline(cfg, new)["missing"] is True
    (tmp_path / "old.json").write_text(json.dumps({"records": old}))
    result = {"baseline": emt_benchmark._baseline(cfg, new)}
    lines = "\n".join(emt_benchmark._baseline_lines(result, dataclasses.asdict(cfg)))
    assert "## Against the previous run" in lines and "+33.3 ± 33.3 (1 / 0 of 3) | 2 of 3" in lines
    (tmp_path / "old.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a benchmark JSON"):
        emt_benchmark._baseline(cfg, new)
    for other in ("[1, 2]", '{"records": 3}'):  # valid JSON, but not a benchmark's
        (tmp_path / "old.json").write_text(other)
        with pytest.raises(ValueError, match="not a benchmark JSON"):
            emt_benchmark._baseline(cfg, new)
