"""Real text for the language-model uncertainty and continual-learning experiment, offline.

Every source ships inside a package that ``make venv`` installs; nothing is downloaded.

| source | what | language | licence |
| --- | --- | --- | --- |
| ``pydoc_data.topics`` (CPython's standard library) | prose of the Python language reference | English | PSF License Agreement (Python documentation) |
| ``sklearn/datasets/descr/*.rst`` (scikit-learn) | descriptions of the bundled data sets | English | BSD-3-Clause |
| ``sphinx/locale/*/LC_MESSAGES/sphinx.po`` (Sphinx 8.2.3) | Sphinx's messages and their human translations | English originals, Albanian, French, ... | BSD-2-Clause (translations contributed under the project's licence) |

The Sphinx wheel is installed without its dependencies and never imported: its message catalogues are
found with ``importlib.util.find_spec`` and parsed here (the same pattern as the embedded model's wheel).

**Statements.** :func:`translated_statements` gives pairs (English original, translation) of Sphinx
messages that read as sentences: at least six words on both sides, no format placeholders, markup or
line breaks, not marked fuzzy. The English originals are in-distribution statements for a model
fine-tuned on English documentation prose; their translations are the out-of-distribution set (the
posteriors paper: English against Samoan statements). Pairs keep the content fixed, so the two sets
differ in language only.

**Windows.** :func:`chunk` cuts a text's tokens into consecutive windows of ``length`` tokens (the
last, partial window is dropped); :func:`encode_statements` right-pads statements to a common length and
raises ``ValueError`` for a statement longer than ``max_length`` unless ``truncate=True`` (then it keeps
the first ``max_length`` tokens, documented in the returned ``truncated`` count).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from thermoai.experiments.emt_data import filler_paragraphs

__all__ = [
    "SOURCES",
    "python_reference",
    "dataset_descriptions",
    "sphinx_catalogue",
    "sphinx_messages",
    "translated_statements",
    "Encoded",
    "encode_statements",
    "chunk",
]

SOURCES: dict[str, dict[str, str]] = {
    "python_reference": {
        "what": "prose of the Python language reference (pydoc_data.topics, CPython standard library)",
        "language": "English",
        "licence": "PSF License Agreement (Python documentation)",
    },
    "dataset_descriptions": {
        "what": "descriptions of scikit-learn's bundled data sets (sklearn/datasets/descr/*.rst)",
        "language": "English",
        "licence": "BSD-3-Clause (scikit-learn)",
    },
    "sphinx_messages": {
        "what": "Sphinx 8.2.3's messages and their translations (sphinx/locale/*/LC_MESSAGES/sphinx.po)",
        "language": "English originals; Albanian (sq), French (fr), ... translations",
        "licence": "BSD-2-Clause (Sphinx; translations contributed under the project's licence)",
    },
}


def python_reference() -> tuple[str, ...]:
    """Prose paragraphs of the Python language reference, in a fixed order (see ``emt_data``)."""
    return filler_paragraphs()


@lru_cache(maxsize=1)
def dataset_descriptions() -> tuple[str, ...]:
    """Prose paragraphs of scikit-learn's data-set descriptions (files sorted by name).

    Kept: unindented paragraphs of at least 80 characters that are not reStructuredText headings,
    directives, field lists or tables; inline markup (``**``, backquotes, ``:ref:`` roles) removed.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset_descriptions needs scikit-learn (the experiments extra)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "descr"
    paragraphs: list[str] = []
    for path in sorted(folder.glob("*.rst")):
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            if not block or block[0].isspace() or block.startswith(("..", ":", "=", "|", "-", "*  ")):
                continue
            lines = [ln for ln in block.split("\n") if not re.fullmatch(r"[*=\-~^+#]{3,}", ln.strip())]
            text = " ".join(ln.strip() for ln in lines).strip()
            text = re.sub(r":\w+:`([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", text)  # :ref:`name <target>` -> name
            text = re.sub(r"`+([^`]*)`+_?", r"\1", text).replace("**", "")
            if len(text) < 80 or "====" in text:
                continue
            paragraphs.append(text)
    if len(paragraphs) < 20:
        raise RuntimeError(f"scikit-learn's data-set descriptions gave only {len(paragraphs)} paragraphs")
    return tuple(paragraphs)


def _sphinx_locale() -> Path:
    spec = importlib.util.find_spec("sphinx")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the translated statements need the Sphinx wheel's message catalogues "
            "(pip install --no-deps sphinx==8.2.3; `make venv` does it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "locale"


@lru_cache(maxsize=None)
def sphinx_catalogue(language: str) -> tuple[tuple[str, str, bool], ...]:
    """``(msgid, msgstr, fuzzy)`` of every singular entry of Sphinx's ``language`` catalogue, in file order
    (plural entries give their first form; the header entry is skipped)."""
    if not isinstance(language, str) or not re.fullmatch(r"[A-Za-z_@.0-9]+", language):
        raise ValueError(f"language must be a locale name such as 'sq' or 'fr'; got {language!r}")
    path = _sphinx_locale() / language / "LC_MESSAGES" / "sphinx.po"
    if not path.is_file():
        available = sorted(p.name for p in _sphinx_locale().iterdir() if (p / "LC_MESSAGES" / "sphinx.po").is_file())
        raise ValueError(f"language: Sphinx has no catalogue {language!r}; available: {available}")
    entries: list[tuple[str, str, bool]] = []
    current: dict[str, str] = {}
    key: str | None = None
    fuzzy = False
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if current.get("msgid") and "msgstr" in current:
                entries.append((current["msgid"], current["msgstr"], fuzzy))
            current, key, fuzzy = {}, None, False
            continue
        if line.startswith("#"):
            fuzzy = fuzzy or (line.startswith("#,") and "fuzzy" in line)
            continue
        m = re.match(r'(msgctxt|msgid_plural|msgid|msgstr(?:\[0\])?|msgstr\[\d+\])\s+(".*")\s*$', line)
        if m:
            key = m.group(1)
            key = "msgstr" if key == "msgstr[0]" else key
            if key.startswith("msgstr[") or key == "msgid_plural":
                key = None  # further plural forms: not needed
                continue
            current[key] = ast.literal_eval(m.group(2))
        elif line.startswith('"') and key is not None:
            current[key] += ast.literal_eval(line)
    return tuple(entries)


_NOT_PROSE = re.compile(r"[%{}<>\\\n`*|]")


def _statement_like(text: str, min_words: int) -> bool:
    return len(text.split()) >= min_words and not _NOT_PROSE.search(text)


def translated_statements(language: str = "sq", min_words: int = 6) -> list[tuple[str, str]]:
    """``(English, translation)`` pairs of Sphinx messages that read as sentences (module docstring),
    in catalogue order, duplicates removed."""
    if not isinstance(min_words, int) or min_words < 1:
        raise ValueError(f"min_words must be a positive int; got {min_words!r}")
    seen: set[str] = set()
    pairs = []
    for english, translated, fuzzy in sphinx_catalogue(language):
        if fuzzy or not translated or translated == english or english in seen:
            continue
        if _statement_like(english, min_words) and _statement_like(translated, min_words):
            seen.add(english)
            pairs.append((english, translated))
    return pairs


def sphinx_messages(language: str) -> tuple[str, ...]:
    """Every translated, non-fuzzy message of a Sphinx catalogue with placeholders and markup removed
    (running text in that language, for training episodes)."""
    out = []
    for _, translated, fuzzy in sphinx_catalogue(language):
        if fuzzy or not translated:
            continue
        text = re.sub(r"%\(\w+\)[sdr]|%[sdr]|\{\w*\}|<[^>]*>|[`*|\\]", "", translated)
        text = " ".join(text.split())
        if len(text.split()) >= 3:
            out.append(text)
    return tuple(out)


# ---------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Encoded:
    """Right-padded statements: ``input_ids`` ``(B, L)`` int64, ``mask`` ``(B, L)`` bool (real tokens),
    ``lengths`` ``(B,)``, and how many statements were ``truncated``."""

    input_ids: Tensor
    mask: Tensor
    lengths: Tensor
    truncated: int


def encode_statements(
    tokenizer: Any, texts: Sequence[str], max_length: int, pad_id: int | None = None, truncate: bool = False
) -> Encoded:
    """Tokenise ``texts`` (no special tokens) and right-pad them to the longest.

    Raises ``ValueError`` when a statement has more than ``max_length`` tokens (the model's window or a
    budget), unless ``truncate`` keeps its first ``max_length`` tokens. Empty statements are refused.
    """
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (one context and one predicted token); got {max_length!r}")
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty sequence of strings")
    rows = []
    truncated = 0
    for i, text in enumerate(texts):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"texts[{i}] tokenises to nothing")
        if len(ids) > max_length:
            if not truncate:
                raise ValueError(
                    f"texts[{i}] has {len(ids)} tokens, more than max_length={max_length}; "
                    "shorten it or pass truncate=True to keep its first max_length tokens"
                )
            ids = ids[:max_length]
            truncated += 1
        rows.append(ids)
    pad = pad_id if pad_id is not None else (getattr(tokenizer, "pad_token_id", None) or 0)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return Encoded(input_ids, mask, mask.sum(-1), truncated)


def chunk(tokenizer: Any, paragraphs: Sequence[str], length: int, n_chunks: int | None = None) -> Tensor:
    """Consecutive windows ``(n, length)`` of the tokens of ``paragraphs`` joined by blank lines.

    The final partial window is dropped; ``n_chunks`` keeps the first ``n_chunks`` windows and raises
    ``ValueError`` if the text has fewer.
    """
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2; got {length!r}")
    text = "\n\n".join(paragraphs)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    n = len(ids) // length
    if n_chunks is not None:
        if n_chunks > n:
            raise ValueError(f"n_chunks={n_chunks} windows of {length} tokens asked for, but the text has only {n}")
        n = n_chunks
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {length}")
    return torch.tensor(ids[: n * length], dtype=torch.long).reshape(n, length)
