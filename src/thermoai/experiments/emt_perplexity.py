"""Extended Mind perplexity on long real documents: memories against truncation and the whole input.

The paper's perplexity experiment (extended-mind-transformers ``experiments/perplexity.py``: WikiText-103,
input lengths 512 ... 9728, ``topk: 3``), on documents that ship with Python itself. For each document
and input length ``L`` the input is the document's first ``L`` tokens, and the same last ``S`` tokens
are scored under three conditions:

* ``truncated``: the model sees only the last ``W`` tokens of the input (positions from 0);
* ``extended_mind``: the same last ``W`` tokens in context, the earlier ``L - W`` tokens as memories
  (``MemoryBank``, ``attach(model, bank, topk=3)``, the library's reference settings otherwise);
* ``full``: the whole input, where it fits the model's positions (SmolLM2: 8192).

For ``L <= W`` there is nothing to remember and the three conditions coincide. The score of a condition
is the mean negative log-likelihood of the scored tokens, ``NLL = -(1/S) sum_t log p(x_t | context)``
(nats per token), and its perplexity ``exp(NLL)``. Documents are the unit of replication: figures are
means over documents with standard errors ``sd / sqrt(n)``, and memory-minus-truncation is a paired
difference of NLL per document.

Cost: attention is causal, so one forward pass of the longest input gives the ``full`` condition for
every length, and one bank built on the document's first ``L_max - W`` tokens serves every length
through ``MemoryBank.prefix`` (equal to a bank built on the prefix).

Documents (all under the PSF licence, part of every CPython): the longest topics of the Python
documentation in ``pydoc_data.topics`` (prose from the Language Reference and Library Reference),
then the sources of long stdlib modules (code with docstrings), in a fixed order, each used if it
has at least ``L_max`` tokens.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["run", "headline", "documents", "score_document", "Document", "TITLE", "PAPER", "RUN_TIME", "REPRODUCE"]

CONDITIONS = ("truncated", "extended_mind", "full")
_LABELS = {"truncated": "truncation to the last W tokens", "extended_mind": "Extended Mind (earlier tokens as memories)",
           "full": "whole input in context"}
# pydoc topics first (prose), then stdlib sources (code); a document is used if it is long enough
_TOPICS = ("specialnames", "compound", "types", "formatstrings", "string-methods", "typesseq", "debugger")
_MODULES = ("argparse", "dataclasses", "subprocess", "enum", "inspect", "typing", "pathlib")
PRESETS = {
    "full": {"n_documents": 4, "lengths": (512, 1024, 2048, 4096, 6144, 8192), "window": 2048, "scored": 256},
    "quick": {"n_documents": 3, "lengths": (512, 1024, 2048), "window": 512, "scored": 128},
}


@dataclass(frozen=True)
class Document:
    """A long text: ``name``, where it comes from (``source``), its ``licence`` and its token ``ids``."""

    name: str
    source: str
    licence: str
    ids: tuple[int, ...]


def _texts():
    """``(name, source, text)`` of every candidate document, in the fixed order."""
    import importlib
    import inspect as _inspect

    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # pragma: no cover - every CPython ships it
        raise ImportError("emt_perplexity needs the standard library's pydoc_data (part of CPython)") from err
    for name in _TOPICS:
        if name in topics:
            yield f"pydoc topic '{name}'", "Python documentation, pydoc_data/topics.py (stdlib)", topics[name]
    for name in _MODULES:
        module = importlib.import_module(name)
        yield f"{name}.py", f"CPython standard library source, {Path(module.__file__).name}", _inspect.getsource(module)


def documents(tokenizer, n: int, min_tokens: int) -> list[Document]:
    """The first ``n`` candidate documents with at least ``min_tokens`` tokens, cut to ``min_tokens``.

    Raises ``ValueError`` if fewer than ``n`` are long enough.
    """
    if int(n) < 1:
        raise ValueError(f"n_documents: expected >= 1, got {n}")
    found = []
    for name, source, text in _texts():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= min_tokens:
            found.append(Document(name, source, "PSF-2.0 (Python Software Foundation License)", tuple(ids[:min_tokens])))
        if len(found) == n:
            return found
    raise ValueError(f"n_documents: only {len(found)} bundled documents have >= {min_tokens} tokens, asked for {n}")


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood (nats) of ``targets [S]`` under ``logits [S, V]`` (float32)."""
    return float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="mean"))


@torch.no_grad()
def score_document(model, ids: torch.Tensor, lengths, window: int, scored: int, topk: int = 3,
                   bank_stride: int | None = None, progress=None) -> dict:
    """NLL (nats per token) of the last ``scored`` tokens of ``ids[:L]`` for every ``L`` in ``lengths``.

    Returns ``{condition: {L: nll or None}}``; ``full`` is ``None`` where ``L`` exceeds the model's
    positions. Memories come from one bank built on ``ids[:max(lengths) - window]`` (window ``window``,
    stride ``bank_stride``, default ``window``: consecutive windows, each memory computed with the same
    amount of left context as a truncated input), cut per length with ``MemoryBank.prefix``.
    """
    from thermoai.memory import MemoryBank, attach

    lengths = sorted(int(n) for n in lengths)
    longest = lengths[-1]
    limit = int(getattr(model.config, "max_position_embeddings", longest) or longest)
    device = next(model.parameters()).device
    ids = ids.to(device)
    out = {c: {} for c in CONDITIONS}
    tick = progress or (lambda *_: None)

    # whole input: one forward pass of the longest input that fits; causal, so it serves every length
    fits = [n for n in lengths if n <= limit]
    if fits:
        hidden = model.model(input_ids=ids[None, :fits[-1]]).last_hidden_state[0]
        for n in fits:
            logits = model.lm_head(hidden[n - scored - 1:n - 1])
            out["full"][n] = _nll(logits, ids[n - scored:n])
        del hidden
    for n in lengths:
        out["full"].setdefault(n, None)
    tick("full")

    def local(n):
        logits = model(input_ids=ids[None, max(0, n - window):n], logits_to_keep=scored + 1).logits[0, :-1]
        return _nll(logits, ids[n - scored:n])

    bank = None
    if longest > window:
        bank = MemoryBank.build(model, ids=ids[:longest - window].cpu(), window=window,
                                stride=bank_stride or window, progress=False)
    tick("bank")
    for n in lengths:
        out["truncated"][n] = local(n)
        if n <= window:  # nothing to remember: the same computation
            out["extended_mind"][n] = out["truncated"][n]
        else:
            with attach(model, bank.prefix(n - window), topk=topk):
                out["extended_mind"][n] = local(n)
        tick(f"L={n}")
    return out


def _mean_se(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _summarise(per_doc: list[dict], lengths) -> dict:
    """Per length and condition: perplexity and NLL mean ± SE over documents; paired NLL differences."""
    table, paired = {}, {}
    for n in lengths:
        key = str(n)
        table[key] = {}
        for c in CONDITIONS:
            nll = [d[c][key] for d in per_doc if d[c][key] is not None]
            if not nll:
                table[key][c] = None
                continue
            m, se = _mean_se(nll)
            p, pse = _mean_se([math.exp(v) for v in nll])
            table[key][c] = {"nll": m, "nll_stderr": se, "perplexity": p, "perplexity_stderr": pse, "n": len(nll)}
        paired[key] = {}
        for a, b in (("extended_mind", "truncated"), ("full", "truncated"), ("extended_mind", "full")):
            diffs = [d[a][key] - d[b][key] for d in per_doc if d[a][key] is not None and d[b][key] is not None]
            if diffs:
                m, se = _mean_se(diffs)
                paired[key][f"{a} - {b}"] = {"nll_difference": m, "stderr": se, "n": len(diffs),
                                             "ratio": math.exp(m)}
    return {"table": table, "paired": paired}


def run(out_dir: str | Path, quick: bool = False, *, n_documents: int | None = None, lengths=None,
        window: int | None = None, scored: int | None = None, topk: int = 3, bank_stride: int | None = None,
        threads: int | None = None, model=None, tokenizer=None, progress: bool = True) -> dict:
    """Run the experiment; writes ``emt_perplexity.{md,json,png}`` into ``out_dir`` and returns the numbers.

    Args:
        quick: the quick preset (3 documents, lengths 512 ... 2048, ``W = 512``, 128 scored tokens)
            instead of the full one (4 documents, 512 ... 8192, ``W = 2048`` as the paper, 256 scored).
        n_documents, lengths, window, scored: override the preset (``scored < min(lengths)``,
            ``scored <= window``).
        topk: memories per head and token (paper: 3). bank_stride: bank build stride (default ``W``).
        threads: torch CPU threads for the run (restored afterwards).
        model, tokenizer: default the embedded SmolLM2-135M-Instruct.
    """
    preset = dict(PRESETS["quick" if quick else "full"])
    for key, value in (("n_documents", n_documents), ("lengths", lengths), ("window", window), ("scored", scored)):
        if value is not None:
            preset[key] = value
    lengths = sorted({int(n) for n in preset["lengths"]})
    window, scored, n_docs = int(preset["window"]), int(preset["scored"]), int(preset["n_documents"])
    if window < 2:
        raise ValueError(f"window: expected >= 2 tokens, got {window}")
    if not 1 <= scored <= window or scored >= lengths[0]:
        raise ValueError(f"scored: expected 1 <= scored <= window ({window}) and < the shortest length "
                         f"({lengths[0]}), got {scored}")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk: expected an integer >= 1, got {topk!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        if model is None:
            from thermoai.memory import load_model

            model, tokenizer = load_model()
        elif tokenizer is None:
            raise ValueError("tokenizer: required with model")
        docs = documents(tokenizer, n_docs, lengths[-1])
        per_doc = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_docs * (len(lengths) + 2), desc="emt_perplexity", unit="step")
        for doc in docs:
            t0 = time.perf_counter()
            nll = score_document(model, torch.tensor(doc.ids), lengths, window, scored, topk=topk,
                                 bank_stride=bank_stride, progress=(lambda *_: bar.update(1)) if bar else None)
            per_doc.append({"name": doc.name, "source": doc.source, "licence": doc.licence,
                            "seconds": time.perf_counter() - t0,
                            **{c: {str(n): v for n, v in nll[c].items()} for c in CONDITIONS}})
        if bar:
            bar.close()
    finally:
        torch.set_num_threads(old_threads)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    result = {
        "settings": {"lengths": lengths, "window": window, "scored": scored, "topk": topk, "n_documents": n_docs,
                     "bank_window": window, "bank_stride": bank_stride or window,
                     "max_positions": limit, "model": getattr(model.config, "name_or_path", None) or "model",
                     "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                     "threads": int(threads or old_threads), "quick": bool(quick)},
        "documents": per_doc,
        **_summarise(per_doc, lengths),
        "seconds": time.perf_counter() - started,
    }
    result.update(headline(result))
    (out_dir / "emt_perplexity.json").write_text(json.dumps(result, indent=1))
    _write(out_dir, result)
    _plot(out_dir / "emt_perplexity.png", result)
    return result


# ------------------------------------------------------------------------------------------- report
def _cell(entry) -> str:
    if entry is None:
        return "n/a"
    se = entry["perplexity_stderr"]
    return f"{entry['perplexity']:.2f}" + ("" if se is None else f" ± {se:.2f}")


def _diff(entry) -> str:
    if entry is None:
        return "n/a"
    se = entry["stderr"]
    return f"{entry['nll_difference']:+.4f}" + ("" if se is None else f" ± {se:.4f}")


def _write(out_dir: Path, result: dict) -> None:
    cfg = result["settings"]
    lengths = [str(n) for n in cfg["lengths"]]
    w = cfg["window"]
    lines = [
        "# Extended Mind perplexity on long documents",
        "",
        f"{cfg['model']} ({cfg['dtype']}), {cfg['n_documents']} documents, input lengths {', '.join(lengths)} tokens; "
        f"in context the last W = {w} tokens"
        + (" (the paper: 2048)" if w != 2048 else " (as the paper)")
        + f"; memories: the earlier tokens, top-k = {cfg['topk']} per head and token (the paper's perplexity "
        f"setting), bank window {cfg['bank_window']}, stride {cfg['bank_stride']}. Scored: the last {cfg['scored']} "
        "tokens of each input, the same tokens in every condition. Perplexity mean ± standard error over documents.",
        "",
        "| input length | " + " | ".join(_LABELS[c] for c in CONDITIONS) + " | memory − truncation, NLL (nats/token) |",
        "|---|" + "---|" * (len(CONDITIONS) + 1),
    ]
    for n in lengths:
        row = result["table"][n]
        lines.append(f"| {n} | " + " | ".join(_cell(row[c]) for c in CONDITIONS)
                     + f" | {_diff(result['paired'][n].get('extended_mind - truncated'))} |")
    lines += [
        "",
        f"For L ≤ W = {w} nothing is remembered and the three conditions are the same computation. Whole input: "
        f"n/a beyond the model's {cfg['max_positions']} positions. Paired differences are per document (negative: "
        "memories lower the NLL); their ratio exp(difference) is the factor on perplexity.",
        "",
        "## Paired differences of NLL (nats per token), mean ± SE over documents",
        "",
        "| input length | memory − truncation | whole input − truncation | memory − whole input |",
        "|---|---|---|---|",
    ]
    for n in lengths:
        p = result["paired"][n]
        lines.append(f"| {n} | {_diff(p.get('extended_mind - truncated'))} | {_diff(p.get('full - truncated'))} | "
                     f"{_diff(p.get('extended_mind - full'))} |")
    lines += ["", "## Documents", "", "| document | source | licence | NLL per condition at the longest input | seconds |",
              "|---|---|---|---|---|"]
    top = lengths[-1]
    for d in result["documents"]:
        cells = ", ".join(f"{c} {d[c][top]:.3f}" for c in CONDITIONS if d[c][top] is not None)
        lines.append(f"| {d['name']} | {d['source']} | {d['licence']} | {cells} | {d['seconds']:.0f} |")
    lines += [
        "",
        "Each document is the first L tokens of its text (the SmolLM2 tokenizer, no special tokens). The whole "
        "input's NLLs for all lengths come from one forward pass of the longest input, and the memories of every "
        "length from one bank built on the longest prefix and cut with `MemoryBank.prefix` (attention is causal, "
        "so both equal separate runs up to float rounding).",
        "",
        f"Run time: {result['seconds']:.0f} s ({cfg['threads']} torch threads). Command: `thermoai reproduce "
        f"emt_perplexity {'--quick' if cfg['quick'] else '--full'}`.",
        "",
    ]
    (out_dir / "emt_perplexity.md").write_text("\n".join(lines))


def _plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["settings"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for c, style in zip(CONDITIONS, ("o-", "s-", "^--")):
        xs, ys, es = [], [], []
        for n in cfg["lengths"]:
            e = result["table"][str(n)][c]
            if e is not None:
                xs.append(n)
                ys.append(e["perplexity"])
                es.append(e["perplexity_stderr"] or 0.0)
        ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=_LABELS[c].replace("W", f"W={cfg['window']}"))
    ax.axvline(cfg["window"], color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel(f"perplexity of the last {cfg['scored']} tokens")
    ax.set_title(f"{cfg['model']}: memories (k={cfg['topk']}) against truncation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------- thermoai reproduce
TITLE = "Extended Mind perplexity on long documents: memories against truncation and the whole input"
PAPER = "emt"
RUN_TIME = {"quick": 80, "full": 1350}  # seconds, measured on the shared 2-core machine under other work (load 5-7)
REPRODUCE = {
    "smoke": {"quick": True, "n_documents": 2, "lengths": (96, 192), "window": 64, "scored": 32, "threads": 1},
    "quick": {"quick": True, "threads": 1},
    "full": {"quick": False, "threads": 1},
}


def headline(result: dict) -> dict:
    """Verdicts and the headline table from the numbers of ``emt_perplexity.json`` alone."""
    cfg = result["settings"]
    w = cfg["window"]
    longer = [str(n) for n in cfg["lengths"] if n > w]
    diffs = [result["paired"][n].get("extended_mind - truncated") for n in longer]
    diffs = [(n, d) for n, d in zip(longer, diffs) if d is not None]

    def fmt(n, d):
        se = "n/a" if d["stderr"] is None else f"{d['stderr']:.4f}"
        return f"L={n}: {d['nll_difference']:+.4f} ± {se} nats (perplexity x{d['ratio']:.3f})"

    if not diffs:
        v1, r1 = "not tested here", f"no input length exceeds the context window W = {w}"
    else:
        lower = [d["nll_difference"] + 2 * (d["stderr"] or math.inf) < 0 for _, d in diffs]
        below = [d["nll_difference"] < 0 for _, d in diffs]
        v1 = "reproduced" if all(lower) else "partly" if any(lower) or all(below) else "not reproduced"
        r1 = (f"paired NLL difference memory − truncation over {cfg['n_documents']} documents, W = {w}, k = {cfg['topk']}: "
              + "; ".join(fmt(n, d) for n, d in diffs))
        room = [(n, result["paired"][n].get("full - truncated")) for n, _ in diffs]
        room = [(n, d) for n, d in room if d is not None]
        if room:  # what the whole context itself gains: the most memories could recover
            r1 += "; for scale, whole input − truncation: " + "; ".join(fmt(n, d) for n, d in room)
    full = [(n, result["paired"][n].get("extended_mind - full")) for n in longer]
    full = [(n, d) for n, d in full if d is not None]
    if not full:
        v2, r2 = "not tested here", "no input longer than W fits the model's positions"
    else:
        close = [d["nll_difference"] - 2 * (d["stderr"] or math.inf) <= 0 for _, d in full]
        v2 = "reproduced" if all(close) else "partly" if any(close) else "not reproduced"
        r2 = "memory − whole input (negative or within 2 SE: memories as good as the whole context): " + \
            "; ".join(fmt(n, d) for n, d in full)
    verdicts = [
        {"claim": "memories lower perplexity against truncation to the context window", "verdict": v1, "reason": r1},
        {"claim": "with memories, perplexity approaches that of the whole input in context", "verdict": v2,
         "reason": r2},
    ]
    rows = []
    for c in CONDITIONS:
        cells = []
        for n in cfg["lengths"]:
            e = result["table"][str(n)][c]
            cells.append(None if e is None else [e["perplexity"], e["perplexity_stderr"]]
                         if e["perplexity_stderr"] is not None else e["perplexity"])
        rows.append([_LABELS[c].replace("W", f"W = {w}"), *cells])
    summary = {"columns": ["condition", *(f"{n} tokens" for n in cfg["lengths"])], "rows": rows,
               "caption": f"perplexity of the last {cfg['scored']} tokens by input length, mean ± SE over "
                          f"{cfg['n_documents']} documents (Python documentation and stdlib sources), "
                          f"{cfg['model']}, k = {cfg['topk']}"}
    return {"verdicts": verdicts, "summary": summary, "seeds": []}
