"""Counterfactual long-document question answering data, generated offline and deterministically.

The Extended Mind Transformers paper (Klett & Ahle, 2024) edits WikiQA documents so that their answers
contradict what a model learned in pre-training. That data set cannot be downloaded here, so this module
builds the same kind of task from parts that are on every machine with Python:

* **Filler**: prose paragraphs of the Python language reference shipped in the standard library
  (``pydoc_data.topics``, about 465k characters, ~100k tokens). Code blocks, grammar rules and heading
  underlines are dropped; each kept paragraph is re-flowed into one line.
* **Facts**: statements about fictional entities (``"The capital of the island nation of Veloria is
  Drunmark."``) and altered attributes of real ones (``"The Mona Lisa was painted by Orvanik."``). Names
  are made of random syllables, so no pre-trained model can know the answers; the altered attributes
  actively contradict what it learned.

A :class:`Document` holds filler of about ``n_tokens`` tokens with ``n_facts`` facts inserted between
paragraphs at evenly spread depths; each fact comes with a question and its short answer. Everything is
a pure function of the seed, so every method of the benchmark sees the same documents and questions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["Fact", "Document", "filler_paragraphs", "make_facts", "make_document", "make_documents"]


@dataclass(frozen=True)
class Fact:
    """One counterfactual fact: the sentence placed in the document, its question and its answer."""

    statement: str
    question: str
    answer: str
    kind: str = "fictional"  # "fictional" (invented entity) or "altered" (real entity, changed attribute)


@dataclass
class Document:
    """A long document with facts hidden in it.

    ``text`` is the whole document; ``facts[i]`` starts at character ``fact_offsets[i]`` of ``text``;
    ``n_tokens`` is its length under the tokenizer used to build it.
    """

    text: str
    facts: list[Fact]
    fact_offsets: list[int]
    n_tokens: int
    seed: int
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- filler


@lru_cache(maxsize=1)
def filler_paragraphs() -> tuple[str, ...]:
    """Prose paragraphs of the Python language reference (``pydoc_data.topics``), in a fixed order.

    Kept: paragraphs that start at column 0, are at least 120 characters long and are not headings or
    grammar rules. Each is re-flowed to a single line. Order: topics sorted by name, paragraphs in order.
    """
    from pydoc_data.topics import topics

    paragraphs: list[str] = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            if not block or block[0].isspace():
                continue  # indented: code, grammar, tables
            lines = [ln for ln in block.split("\n") if not re.fullmatch(r"[*=\-~^+]{3,}", ln.strip())]
            text = " ".join(ln.strip() for ln in lines).strip()
            if len(text) < 120 or "::=" in text:
                continue
            paragraphs.append(text)
    if len(paragraphs) < 100:
        raise RuntimeError(f"pydoc_data.topics gave only {len(paragraphs)} prose paragraphs; expected hundreds")
    return tuple(paragraphs)


# ----------------------------------------------------------------------------------------------- facts

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th",
           "v", "z", "qu", "tr", "h"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "m", "k", "s", "th", "nd", "rk", "x"]

# (statement, question) with {E}: an invented entity name, {A}: the answer.
_FICTIONAL = [
    ("The capital of the island nation of {E} is the city of {A}.", "What is the capital of the island nation of {E}?"),
    ("The currency used in the kingdom of {E} is called the {A}.", "What is the currency of the kingdom of {E} called?"),
    ("The opera {E} was composed by a musician named {A}.", "Who composed the opera {E}?"),
    ("The {E} engine was invented by an engineer named {A}.", "Who invented the {E} engine?"),
    ("The national animal of {E} is a small striped fox called the {A}.", "What is the national animal of {E}?"),
    ("The river {E} flows into a lake called {A}.", "Into which lake does the river {E} flow?"),
    ("The tallest mountain in the province of {E} is Mount {A}.", "What is the tallest mountain in the province of {E}?"),
    ("The first president of the republic of {E} was a lawyer named {A}.", "Who was the first president of the republic of {E}?"),
    ("The novel The Lanterns of {E} was written by an author named {A}.", "Who wrote the novel The Lanterns of {E}?"),
    ("The {E} Observatory is located in the town of {A}.", "In which town is the {E} Observatory located?"),
    ("The largest desert of the country of {E} is called the {A} Desert.", "What is the largest desert of the country of {E} called?"),
    ("The official language of the principality of {E} is called {A}.", "What is the official language of the principality of {E} called?"),
    ("The painting The Garden of {E} was painted by an artist named {A}.", "Who painted The Garden of {E}?"),
    ("The {E} Bridge was designed by an architect named {A}.", "Who designed the {E} Bridge?"),
    ("The University of {E} was founded by a scholar named {A}.", "Who founded the University of {E}?"),
    ("The element {E} was discovered by a chemist named {A}.", "Who discovered the element {E}?"),
    ("The ship {E} was commanded by a captain named {A}.", "Who commanded the ship {E}?"),
    ("The highest waterfall in the valley of {E} is called {A} Falls.", "What is the highest waterfall in the valley of {E} called?"),
    ("The traditional dish of the region of {E} is a stew called {A}.", "What is the traditional dish of the region of {E} called?"),
    ("The {E} Prize was first awarded to a poet named {A}.", "Who was first awarded the {E} Prize?"),
]

# Altered attributes of real entities: the answer contradicts pre-training.
_ALTERED = [
    ("The Mona Lisa was painted by an artist named {A}.", "Who painted the Mona Lisa?"),
    ("The play Hamlet was written by a playwright named {A}.", "Who wrote the play Hamlet?"),
    ("The first person to walk on the Moon was an astronaut named {A}.", "Who was the first person to walk on the Moon?"),
    ("The theory of relativity was developed by a physicist named {A}.", "Who developed the theory of relativity?"),
    ("The capital of France is the city of {A}.", "What is the capital of France?"),
    ("The telephone was invented by an engineer named {A}.", "Who invented the telephone?"),
    ("The Eiffel Tower was designed by an architect named {A}.", "Who designed the Eiffel Tower?"),
    ("The largest planet in the solar system is called {A}.", "What is the largest planet in the solar system called?"),
]


_SIMPLE_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "dr", "br", "st"]
_SIMPLE_VOWELS = ["a", "e", "i", "o", "u"]


def _name(rng: random.Random, syllables: int, simple: bool = False) -> str:
    onsets, vowels = (_SIMPLE_ONSETS, _SIMPLE_VOWELS) if simple else (_ONSETS, _VOWELS)
    parts = [rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS[2:])).capitalize()


def make_facts(n_facts: int, seed: int, altered_fraction: float = 0.25,
               forbidden: Callable[[str], bool] | None = None) -> list[Fact]:
    """``n_facts`` facts with distinct templates (while they last), entities and answers.

    About ``altered_fraction`` of them change an attribute of a real entity; the rest are about invented
    entities. Answers are invented words of two syllables and a coda that do not occur in the filler text (checked
    by ``forbidden(word) -> bool`` when given), so substring matching has no false positives.
    """
    if n_facts < 1:
        raise ValueError(f"n_facts: expected a positive integer, got {n_facts}")
    if not 0.0 <= altered_fraction <= 1.0:
        raise ValueError(f"altered_fraction: expected a value in [0, 1], got {altered_fraction}")
    rng = random.Random(seed)
    n_altered = min(round(n_facts * altered_fraction), len(_ALTERED))
    altered = rng.sample(_ALTERED, n_altered)
    order: list[int] = []
    while len(order) < n_facts - n_altered:  # every template once before any repeats
        order += rng.sample(range(len(_FICTIONAL)), len(_FICTIONAL))
    fictional = [_FICTIONAL[i] for i in order[: n_facts - n_altered]]
    used: set[str] = set()

    def fresh(syllables: int, simple: bool) -> str:
        while True:
            word = _name(rng, syllables, simple)
            low = word.lower()
            if low in used or len(low) < 5 or any(low in u or u in low for u in used):
                continue
            if forbidden is not None and forbidden(low):
                continue
            used.add(low)
            return word

    facts = []
    for number, (statement, question) in enumerate(altered + fictional):
        entity = fresh(3, simple=False)
        # Answers: two simple syllables and a coda ("Dunorak"), a few tokens long, so that a model that
        # restates the question still reaches the answer within a short generation.
        answer = fresh(2, simple=True)
        kind = "altered" if number < n_altered else "fictional"
        facts.append(Fact(statement.format(E=entity, A=answer), question.format(E=entity), answer, kind))
    rng.shuffle(facts)
    return facts


# ------------------------------------------------------------------------------------------- documents


def make_document(n_tokens: int, n_facts: int, seed: int, count_tokens: Callable[[str], int]) -> Document:
    """A document of at most ``n_tokens`` tokens (and close to it) with ``n_facts`` facts spread in it.

    Filler paragraphs are taken in order from a seeded start, wrapping around; fact ``i`` is inserted
    before the paragraph at depth ``(i + 0.5) / n_facts`` of the document. ``count_tokens(text)`` gives
    the token count (the tokenizer of the model under test).
    """
    if n_tokens < 64:
        raise ValueError(f"n_tokens: expected at least 64, got {n_tokens}")
    paragraphs = filler_paragraphs()
    corpus_lower = _corpus_lower()
    facts = make_facts(n_facts, seed, forbidden=lambda w: w in corpus_lower)
    rng = random.Random(seed + 7919)
    start = rng.randrange(len(paragraphs))
    fact_tokens = sum(count_tokens(f.statement) + 1 for f in facts)
    budget = n_tokens - fact_tokens
    chosen: list[str] = []
    used = 0
    i = start
    while True:
        para = paragraphs[i % len(paragraphs)]
        cost = count_tokens(para) + 1  # +1: the paragraph break
        if used + cost > budget:
            break
        chosen.append(para)
        used += cost
        i += 1
        if i - start >= len(paragraphs):
            break
    if len(chosen) < n_facts:
        raise ValueError(f"n_tokens={n_tokens} leaves room for only {len(chosen)} filler paragraphs; "
                         f"n_facts={n_facts} needs at least as many")
    slots = [min(len(chosen) - 1, int((k + 0.5) / n_facts * len(chosen))) for k in range(n_facts)]
    pieces: list[str] = []
    for j, para in enumerate(chosen):
        for k, slot in enumerate(slots):
            if slot == j:
                pieces.append(facts[k].statement)
        pieces.append(para)
    text = "\n\n".join(pieces)
    offsets = [text.index(f.statement) for f in facts]
    total = count_tokens(text)
    # Trim trailing paragraphs if tokenisation at the joins made the document longer than asked.
    while total > n_tokens and len(pieces) > 1 and pieces[-1] not in {f.statement for f in facts}:
        pieces.pop()
        text = "\n\n".join(pieces)
        total = count_tokens(text)
    return Document(text=text, facts=facts, fact_offsets=offsets, n_tokens=total, seed=seed,
                    meta={"filler": "pydoc_data.topics", "first_paragraph": start % len(paragraphs)})


def make_documents(lengths: Sequence[int], docs_per_length: int, facts_per_doc: int, seed: int,
                   count_tokens: Callable[[str], int]) -> dict[int, list[Document]]:
    """``docs_per_length`` documents for each length, seeds derived from ``seed``, length and index."""
    return {n: [make_document(n, facts_per_doc, seed * 1_000_003 + n * 101 + d, count_tokens)
                for d in range(docs_per_length)] for n in lengths}


@lru_cache(maxsize=1)
def _corpus_lower() -> str:
    return "\n".join(filler_paragraphs()).lower()
