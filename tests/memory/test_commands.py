"""The ``thermoai memory build|ask`` command with the real SmolLM2 model, and its bad-input errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from thermoai.experiments.emt_data import make_document
from thermoai.memory import commands

BUILD = ["--window", "256", "--stride", "128", "--no-progress"]


@pytest.fixture(scope="module")
def patched_loader(smollm):
    """Reuse the session's SmolLM2 instead of loading it again in every command."""
    original = commands._load_model
    commands._load_model = lambda args: smollm
    yield smollm
    commands._load_model = original


@pytest.fixture(scope="module")
def document(tmp_path_factory, smollm):
    _, tokenizer = smollm
    doc = make_document(600, 3, seed=5, count_tokens=lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"]))
    path = tmp_path_factory.mktemp("doc") / "doc.txt"
    path.write_text(doc.text, encoding="utf-8")
    return doc, path


@pytest.fixture(scope="module")
def bank_file(document, patched_loader, tmp_path_factory):
    _, path = document
    out = tmp_path_factory.mktemp("bank") / "doc.bank"
    assert commands.main(["build", "--doc", str(path), "--out", str(out), *BUILD]) == 0
    return out


def test_build_writes_a_loadable_bank(bank_file, smollm):
    from thermoai.memory import MemoryBank

    bank = MemoryBank.load(bank_file, smollm[0])
    assert len(bank) > 500 and bank.window == 256 and bank.stride == 128


def test_ask_json_answers_from_memory_and_cites_the_fact(bank_file, document, capsys):
    doc, _ = document
    fictional = [(f, o) for f, o in zip(doc.facts, doc.fact_offsets) if f.kind == "fictional"]
    capsys.readouterr()
    code = commands.main(["ask", "--bank", str(bank_file), "--json", "--max-new-tokens", "24",
                          *[f.question for f, _ in fictional]])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(fictional)
    for line, (fact, offset) in zip(lines, fictional):
        result = json.loads(line)
        assert set(result) == {"question", "answer", "citations", "confidence"}
        assert 0 < result["confidence"]["score"] <= 1 and result["confidence"]["entropy"] >= 0
        assert result["question"] == fact.question
        # the answer is an invented word that appears only in the document, which is not in the prompt
        assert fact.answer.lower() in result["answer"].lower()
        top = result["citations"][0]
        assert top["start"] < offset + len(fact.statement) and top["end"] > offset, (top, offset)
        assert doc.text[top["start"]:top["end"]] == top["text"]


def test_ask_from_document_prints_answers(document, patched_loader, capsys):
    doc, path = document
    fact = next(f for f in doc.facts if f.kind == "fictional")
    capsys.readouterr()
    assert commands.main(["ask", "--doc", str(path), *BUILD, "--max-new-tokens", "24", fact.question]) == 0
    out = capsys.readouterr().out
    assert f"Q: {fact.question}" in out and "A: " in out and "[1] chars" in out


def test_ask_evidence_diagnostic_and_min_confidence(bank_file, document, capsys):
    """--evidence prints the retrieval diagnostic of the span holding the answer; --min-confidence 1 turns
    every answer into "not found in the document" (no answer has probability 1), 0 keeps them."""
    doc, _ = document
    fact = next(f for f in doc.facts if f.kind == "fictional")
    capsys.readouterr()
    assert commands.main(["ask", "--bank", str(bank_file), "--json", "--max-new-tokens", "16", "--evidence",
                          fact.answer, "--min-confidence", "0", fact.question]) == 0
    result = json.loads(capsys.readouterr().out)
    d = result["diagnostic"]
    assert result["found"] is True and d["evidence"] == fact.answer and d["verdict"] == "retrieved"
    assert len(d["recall_by_layer"]) == 30 and d["best_recall"] > d["chance"]
    assert commands.main(["ask", "--bank", str(bank_file), "--max-new-tokens", "16", "--min-confidence", "1",
                          "--evidence", fact.answer, fact.question]) == 0
    out = capsys.readouterr().out
    assert "A: not found in the document" in out and "recall@k by layer: 0:" in out
    code, err = _run(["ask", "--bank", str(bank_file), "--evidence", "no such words in it", fact.question], capsys)
    assert code == 2 and "--evidence" in err and "does not occur" in err
    code, err = _run(["ask", "--bank", str(bank_file), "--evidence", "a", "--evidence", "b", "--evidence", "c", "q?", "r?"], capsys)
    assert code == 2 and "once per question" in err


def test_build_int8_bank_is_a_quarter_and_answers(document, patched_loader, tmp_path, capsys):
    doc, path = document
    out = tmp_path / "doc8.bank"
    assert commands.main(["build", "--doc", str(path), "--out", str(out), "--dtype", "int8", *BUILD]) == 0
    from thermoai.memory import MemoryBank

    bank = MemoryBank.load(out)
    assert bank.quantized and bank.nbytes < 0.3 * len(bank) * 2 * 30 * 3 * 64 * 4
    fact = next(f for f in doc.facts if f.kind == "fictional")
    capsys.readouterr()
    assert commands.main(["ask", "--bank", str(out), "--json", "--max-new-tokens", "24", fact.question]) == 0
    assert fact.answer.lower() in json.loads(capsys.readouterr().out)["answer"].lower()


def _run(args, capsys):
    capsys.readouterr()
    code = commands.main(args)
    return code, capsys.readouterr().err


def test_empty_document_is_refused(tmp_path, patched_loader, capsys):
    doc = tmp_path / "empty.txt"
    doc.write_text("  \n\n ")
    out = tmp_path / "x.bank"
    code, err = _run(["build", "--doc", str(doc), "--out", str(out)], capsys)
    assert code == 2 and "empty" in err and not out.exists()


def test_missing_and_non_utf8_documents_are_refused(tmp_path, patched_loader, capsys):
    code, err = _run(["ask", "--doc", str(tmp_path / "nope.txt"), "q?"], capsys)
    assert code == 2 and "no such file" in err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    code, err = _run(["build", "--doc", str(bad), "--out", str(tmp_path / "b.bank")], capsys)
    assert code == 2 and "not UTF-8" in err


def test_document_longer_than_the_cap_is_refused_and_nothing_written(document, tmp_path, patched_loader, capsys):
    _, path = document
    out = tmp_path / "capped.bank"
    code, err = _run(["build", "--doc", str(path), "--out", str(out), "--max-tokens", "100", *BUILD], capsys)
    assert code == 2 and "more than the bank cap" in err and "--keep-last" in err
    assert list(tmp_path.iterdir()) == []
    assert commands.main(["build", "--doc", str(path), "--out", str(out), "--max-tokens", "100", "--keep-last", *BUILD]) == 0
    from thermoai.memory import MemoryBank

    assert len(MemoryBank.load(out)) == 100


def test_corrupted_and_truncated_banks_are_refused(bank_file, tmp_path, patched_loader, capsys):
    data = bank_file.read_bytes()
    truncated = tmp_path / "truncated.bank"
    truncated.write_bytes(data[: len(data) // 2])
    code, err = _run(["ask", "--bank", str(truncated), "q?"], capsys)
    assert code == 2 and "corrupted or truncated" in err
    flipped = bytearray(data)
    flipped[-1000] ^= 0xFF  # inside the tensor data: only the checksum can tell
    corrupted = tmp_path / "corrupted.bank"
    corrupted.write_bytes(bytes(flipped))
    code, err = _run(["ask", "--bank", str(corrupted), "q?"], capsys)
    assert code == 2 and "corrupted" in err
    code, err = _run(["ask", "--bank", str(tmp_path / "missing.bank"), "q?"], capsys)
    assert code == 2 and "no such file" in err


def test_usage_errors_exit_2(capsys):
    assert commands.main(["ask", "q?"]) == 2  # neither --doc nor --bank
    assert commands.main(["frobnicate"]) == 2


def test_merge_citations_pools_steps_and_drops_function_words():
    from thermoai.memory.citations import Citation

    def c(start, end, text, weight):
        return Citation(start, end, text, weight, (), ())

    steps = [[c(10, 20, "Drunmark", 0.3), c(0, 4, " the", 0.9)], [c(15, 25, "mark is", 0.1), c(40, 45, "river", 0.2)]]
    merged = commands.merge_citations(steps, top=5)
    assert [(m["start"], m["end"]) for m in merged] == [(10, 25), (40, 45)]
    assert merged[0]["weight"] == pytest.approx((0.3 + 0.1) / 2) and merged[1]["weight"] == pytest.approx(0.1)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "garbage.bank"
    bad.write_bytes(b"\x00" * 64)
    proc = subprocess.run([sys.executable, "-m", "thermoai", "memory", "ask", "--bank", str(bad), "q?"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "corrupted or truncated" in proc.stderr
