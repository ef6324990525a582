"""``thermoai memory``: build a memory bank from a document, ask questions against it.

    thermoai memory build --doc FILE --out BANK [--window 3072] [--stride 512] [--max-tokens N] [--keep-last]
    thermoai memory ask (--doc FILE | --bank BANK) [--json] [--topk 10] [--evidence TEXT] [--min-confidence P]
                        QUESTION [QUESTION ...]

``build`` runs the document through the model once, in windows of ``--window`` tokens advanced by
``--stride`` (the cost is about ``N * window / stride`` token-forwards: a smaller stride gives every
memory more left context, a larger one builds faster), and saves the keys and values as a safetensors
bank. ``ask`` builds (from ``--doc``) or loads (from ``--bank``) the bank once, then answers every
question in turn with the document only in memory, and prints each answer with the document spans
its tokens attended to most. With ``--json`` it prints one JSON object per question and line:
``{"question": ..., "answer": ..., "citations": [{"start", "end", "text", "context", "weight"}, ...],
"confidence": {...}}`` (plus ``"found"`` with ``--min-confidence`` and ``"diagnostic"`` with ``--evidence``).
Citations rank document spans by their contribution to the answer tokens in excess of a content-free
query (``thermoai.memory.citations.answer_citations``); ``--evidence TEXT`` runs the retrieval
diagnostic (``thermoai.memory.diagnostics``) for the span of the document holding the answer.

Errors (missing, empty or undecodable documents, a document longer than the bank cap, a corrupted or
truncated bank, a bank built for another model) are one line on stderr and exit status 2; a bank file
is written to a temporary name and renamed, so a failed or interrupted build leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

__all__ = ["main", "build_parser", "answer_question", "merge_citations"]

PROG = "thermoai memory"


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Extended Mind memory banks: build one from a "
                                     "document, ask questions against it.")
    sub = parser.add_subparsers(dest="action", required=True)

    def add_model_options(p):
        p.add_argument("--model", default=None, help="local Llama-family model directory (default: the embedded "
                       "SmolLM2-135M-Instruct)")
        p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def add_build_options(p):
        p.add_argument("--window", type=int, default=None, help="tokens per forward pass (default 3072)")
        p.add_argument("--stride", type=int, default=None,
                       help="window advance (default 512): smaller = more context per memory, slower build; "
                            "cost ~ N * window / stride token-forwards")
        p.add_argument("--max-tokens", type=int, default=100_000, help="bank cap in tokens (default 100000)")
        p.add_argument("--keep-last", action="store_true",
                       help="for a document longer than --max-tokens keep its last tokens instead of failing")
        p.add_argument("--dtype", choices=["float32", "bfloat16", "int8"], default=None,
                       help="storage of the bank's keys and values (default: the model's, float32); bfloat16 halves "
                            "the file, int8 (per-vector scales) quarters it")

    build = sub.add_parser("build", help="build a memory bank from a document and save it")
    build.add_argument("--doc", required=True, help="UTF-8 text file")
    build.add_argument("--out", required=True, help="bank file to write (safetensors)")
    add_build_options(build)
    add_model_options(build)

    ask = sub.add_parser("ask", help="answer questions from a document held only in memory")
    source = ask.add_mutually_exclusive_group(required=True)
    source.add_argument("--doc", help="UTF-8 text file (its bank is built once for all questions)")
    source.add_argument("--bank", help="bank file written by 'thermoai memory build'")
    ask.add_argument("questions", nargs="+", metavar="QUESTION")
    ask.add_argument("--json", action="store_true", help="one JSON object per question and line")
    ask.add_argument("--topk", type=int, default=10, help="memories per head and token (default 10)")
    ask.add_argument("--position-mode", default="first", help="first (default), original, constant, none")
    ask.add_argument("--max-new-tokens", type=int, default=48, help="answer length cap (default 48)")
    ask.add_argument("--citations", type=int, default=3, help="cited spans per answer (default 3)")
    ask.add_argument("--evidence", action="append", default=None, metavar="TEXT",
                     help="retrieval diagnostic: text of the document that holds the answer (once for all questions, "
                          "or once per question in order); prints recall@k per layer and the attention it got")
    ask.add_argument("--min-confidence", type=float, default=None, metavar="P",
                     help="answer 'not found in the document' when the answer's confidence (geometric mean "
                          "probability of its tokens) is below P")
    add_build_options(ask)
    add_model_options(ask)
    return parser


# ------------------------------------------------------------------------------------------- helpers


def _read_document(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"--doc: no such file {path!r}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CommandError(f"--doc: {path!r} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise CommandError(f"--doc: cannot read {path!r}: {err.strerror}") from err
    if not text.strip():
        raise CommandError(f"--doc: {path!r} is empty; a memory bank needs a non-empty document")
    return text


def _load_model(args):
    import torch

    from thermoai.memory.model import load_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device: {args.device!r} requested but CUDA is not available")
    return load_model(args.model, device=args.device)


_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "int8": "int8"}


def _build_bank(args, model, tokenizer, text: str):
    from thermoai.memory.bank import MemoryBank

    if args.max_tokens < 1:
        raise CommandError(f"--max-tokens: expected a positive integer, got {args.max_tokens}")
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if n_tokens > args.max_tokens and not args.keep_last:
        raise CommandError(f"--doc: the document has {n_tokens} tokens, more than the bank cap --max-tokens="
                           f"{args.max_tokens}; raise the cap, or pass --keep-last to keep only its last "
                           f"{args.max_tokens} tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the over-cap warning is ours to give (above)
        return MemoryBank.build(model, tokenizer, text=text, window=args.window, stride=args.stride,
                                max_tokens=args.max_tokens, progress=not args.no_progress,
                                dtype=_DTYPES[args.dtype] if getattr(args, "dtype", None) else None)


def _only_function_words(text: str | None) -> bool:
    """True for spans like " the" or ", and": attention sinks that every question attends to."""
    from thermoai.memory.citations import only_function_words

    return only_function_words(text)


def merge_citations(per_step, top: int) -> list[dict]:
    """Pool the cited spans of every generation step: overlapping spans merge, weights add up.

    ``per_step``: ``[[Citation, ...], ...]`` (one list per step). Spans made only of function words and
    punctuation (" the", ", and") are left out: they act as attention sinks, drawing weight for every
    question whatever its content, and cite nothing. Returns the ``top`` heaviest spans as
    dicts ``{start, end, weight}``, heaviest first; ``weight`` is the span's share of all attention,
    averaged over the steps (layers, heads and generated tokens).
    """
    spans = sorted(((c.start, c.end, c.weight, c.text) for step in per_step for c in step
                    if c.start >= 0 and not _only_function_words(c.text)))
    merged: list[list] = []
    for start, end, weight, text in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2] += weight
        else:
            merged.append([start, end, weight])
    merged.sort(key=lambda s: -s[2])
    steps = max(1, len(per_step))
    return [{"start": s, "end": e, "weight": round(w / steps, 5)} for s, e, w in merged[:top]]


def _sentence_around(text: str, start: int, end: int, limit: int = 240) -> str:
    """The sentence (or line) of ``text`` holding ``[start, end)``, at most ``limit`` characters."""
    dot = text.rfind(". ", 0, start)
    left = max(dot + 2 if dot >= 0 else 0, text.rfind("\n", 0, start) + 1, start - limit)
    right_dot = text.find(". ", end)
    right_nl = text.find("\n", end)
    candidates = [i for i in (right_dot + 1 if right_dot >= 0 else -1, right_nl) if i >= 0]
    right = min(candidates + [len(text), end + limit])
    return " ".join(text[left:right].split())


def answer_question(model, tokenizer, mind, question: str, max_new_tokens: int = 48, top: int = 3,
                    evidence: str | None = None, min_confidence: float | None = None) -> dict:
    """Answer ``question`` with the attached ``mind`` (record=True).

    Returns ``{"question", "answer", "citations", "confidence"}`` and, with ``evidence`` (text that occurs in
    the document and holds the answer), ``"diagnostic"``: ``RetrievalDiagnostic.summary()`` over the answer's
    steps. Citations are ``answer_citations`` (contribution to the answer tokens in excess of a content-free
    query; sinks and function words left out). ``confidence`` is ``thermoai.memory.confidence.confidence``;
    when ``min_confidence`` is given and the answer's ``confidence["score"]`` is below it, ``"found"`` is
    False and the printed answer says it was not found in the document.
    """
    import torch

    from thermoai.memory.citations import answer_citations
    from thermoai.memory.confidence import confidence as confidence_of

    mind.reset_citations()
    stop = {}
    if getattr(tokenizer, "chat_template", None):
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
    else:  # a base model (Gemma 3 270M) has no chat template: a plain prompt, the answer ending at its line
        from thermoai.memory.gemma import newline_stop_tokens

        inputs = tokenizer(f"Question: {question}\nAnswer:", return_tensors="pt")
        stop = {"eos_token_id": newline_stop_tokens(tokenizer)}
    inputs = {k: v.to(next(model.parameters()).device) for k, v in inputs.items()}
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, top_p=None, top_k=None,
                             temperature=None, pad_token_id=tokenizer.eos_token_id, output_logits=True,
                             return_dict_in_generate=True, **stop)
    generated = out.sequences[0, prompt_len:]
    special = set(tokenizer.all_special_ids) | set(stop.get("eos_token_id", ()))
    n_answer = next((t for t, tok in enumerate(generated.tolist()) if tok in special), len(generated))
    n_answer = max(1, n_answer)
    answer = tokenizer.decode(generated, skip_special_tokens=True).strip()
    scores = torch.stack([s[0] for s in out.logits[:n_answer]]).float()  # [T, vocab]
    result = {"question": question, "answer": answer}
    text = mind.bank.text or ""
    citations = []
    if mind.steps:
        for c in answer_citations(mind, steps=n_answer, top=top):
            citations.append({"start": c.start, "end": c.end, "weight": round(c.weight, 5), "text": text[c.start:c.end],
                              "context": _sentence_around(text, c.start, c.end)})
    result["citations"] = citations
    result["confidence"] = confidence_of(mind, scores, generated[:n_answer], steps=n_answer)
    if min_confidence is not None:
        result["found"] = result["confidence"]["score"] >= min_confidence
    if evidence is not None:
        from thermoai.memory.diagnostics import diagnose, find_span

        result["diagnostic"] = diagnose(mind, find_span(text, evidence), steps=n_answer).summary()
        result["diagnostic"]["evidence"] = evidence
    return result


# -------------------------------------------------------------------------------------------- actions


def _build(args) -> int:
    out = Path(args.out)
    if out.is_dir():
        raise CommandError(f"--out: {args.out!r} is a directory; expected a bank file name")
    text = _read_document(args.doc)
    model, tokenizer = _load_model(args)
    bank = _build_bank(args, model, tokenizer, text)
    bank.save(out)
    print(f"wrote {out}: {len(bank)} memories from {bank.n_positions} tokens (window {bank.window}, "
          f"stride {bank.stride})", file=sys.stderr)
    return 0


def _ask(args) -> int:
    from thermoai.memory.attention import attach
    from thermoai.memory.bank import MemoryBank

    if args.topk < 1:
        raise CommandError(f"--topk: expected a positive integer, got {args.topk}")
    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens: expected a positive integer, got {args.max_new_tokens}")
    if args.citations < 0:
        raise CommandError(f"--citations: expected an integer >= 0, got {args.citations}")
    if args.evidence and len(args.evidence) not in (1, len(args.questions)):
        raise CommandError(f"--evidence: expected once for all questions or once per question ({len(args.questions)}), "
                           f"got {len(args.evidence)}")
    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        raise CommandError(f"--min-confidence: expected a probability in [0, 1], got {args.min_confidence}")
    text = _read_document(args.doc) if args.doc else None
    if args.bank and not Path(args.bank).is_file():
        raise CommandError(f"--bank: no such file {args.bank!r}")
    model, tokenizer = _load_model(args)
    if text is not None:
        bank = _build_bank(args, model, tokenizer, text)
    else:
        try:
            bank = MemoryBank.load(args.bank, model)
        except ValueError as err:
            raise CommandError(f"--bank: {err}") from err
    with attach(model, bank, topk=args.topk, position_mode=args.position_mode, record=True) as mind:
        for number, question in enumerate(args.questions):
            evidence = None
            if args.evidence:
                evidence = args.evidence[number if len(args.evidence) > 1 else 0]
            try:
                result = answer_question(model, tokenizer, mind, question, args.max_new_tokens, max(args.citations, 1),
                                         evidence=evidence, min_confidence=args.min_confidence)
            except ValueError as err:
                if "evidence" in str(err):
                    raise CommandError(f"--{err}") from err
                raise
            result["citations"] = result["citations"][: args.citations]
            if args.json:
                print(json.dumps(result, ensure_ascii=False), flush=True)
                continue
            shown = result["answer"] if result.get("found", True) else "not found in the document"
            conf = result["confidence"]
            print(f"Q: {question}\nA: {shown}")
            if not result.get("found", True):
                print(f"   (the model's answer {result['answer']!r} has confidence {conf['score']:.3f} < "
                      f"--min-confidence {args.min_confidence})")
            print(f"   confidence {conf['score']:.3f} (entropy {conf['entropy']:.2f} nats, "
                  f"{100 * conf['memory_attention']:.0f} % of attention on memories)")
            for i, c in enumerate(result["citations"], 1):
                print(f"  [{i}] chars {c['start']}-{c['end']} (contribution {c['weight']:.4f}): {c['context']}")
            if "diagnostic" in result:
                d = result["diagnostic"]
                print(f"  retrieval of {d['evidence'][:40]!r} ({d['span_memories']} memories, {d['steps']} answer "
                      f"steps, k={d['topk']}): {d['verdict']}; recall@k mean {d['recall']:.2f}, best layer "
                      f"{d['best_recall']:.2f} (chance {d['chance']:.3f}); attention on it {100 * d['span_mass']:.2f} % "
                      f"({100 * d['memory_share']:.1f} % of the memory attention)")
                print("  recall@k by layer: " + " ".join(f"{l}:{r:.2f}" for l, r in zip(d["layers"], d["recall_by_layer"])))
            print(flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``thermoai memory``; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its usage message
        return int(exit_.code or 0)
    try:
        return _build(args) if args.action == "build" else _ask(args)
    except CommandError as err:
        print(f"{PROG} {args.action}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        print(f"{PROG} {args.action}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.action}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
