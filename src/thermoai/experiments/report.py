"""``thermoai reproduce``: run the experiments and write one report with a verdict per paper.

:func:`reproduce` runs the experiments of :data:`thermoai.experiments.EXPERIMENTS` (the protocol they
follow is in that package's docstring) and writes into the output folder

* ``report.md``: one section per paper of :data:`PAPERS`, each with the claim quoted from its abstract, a
  headline table and plot per experiment, the verdict of each claim and a one-line verdict for the paper;
  then the machine, library versions, seeds and the wall time of each part;
* ``results.json``: every number that ``report.md`` prints (the same rounded values), with the provenance
  (thermoai version, git commit, date, command);
* each experiment's own page, ``<name>.md`` / ``.json`` / ``.png``, headed by the paper, the claim, the
  provenance (and, for a quick run, a smoke-test notice) and ending with its verdicts.

Nothing half-written is left behind: an experiment runs in a staging folder whose files are moved into the
output folder only once it has finished, and ``report.md``/``results.json`` are written to a temporary file
and renamed. A failing experiment is reported as failed, with its error, and the others still run; an
interrupt (Ctrl-C) writes the report of what finished, marks the rest as interrupted, and stops.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import inspect
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

VERDICTS = ("reproduced", "partly", "not reproduced", "not tested here")
MODES = ("smoke", "quick", "full")
_ALIASES = {"not": "not reproduced", "not run": "not tested here", "no": "not reproduced", "yes": "reproduced",
            "partial": "partly", "partially": "partly", "not tested": "not tested here"}


@dataclass(frozen=True)
class Paper:
    """One of the four papers: where its section goes, the claim quoted from its abstract, its experiments."""

    key: str
    title: str
    reference: str
    claim: str
    experiments: tuple[str, ...]


PAPERS: tuple[Paper, ...] = (
    Paper(
        "posteriors",
        "posteriors: scalable Bayesian learning, tempered SGMCMC and unbiased ensembles",
        "Duffield et al. 2024, arXiv 2406.00104",
        "We present a tempered framing of stochastic gradient Markov chain Monte Carlo [...] that transitions "
        "seamlessly into optimization and unveils a minor modification to deep ensembles to ensure they are "
        "asymptotically unbiased for the Bayesian posterior, and demonstrate and compare the utility of Bayesian "
        "approximations through experiments including an investigation into the cold posterior effect and "
        "applications with large language models.",
        ("cold_posterior", "sbc", "llm_uncertainty"),
    ),
    Paper(
        "thermo",
        "Thermodynamic computing: linear algebra and Bayesian posterior circuits",
        "Aifer et al. 2024, Thermodynamic Bayesian Inference, arXiv 2410.01793",
        "Thermodynamic computing has emerged as a paradigm for accelerating operations used in machine learning, "
        "such as matrix inversion [...]. It is shown, under reasonable assumptions, that the Bayesian posteriors "
        "for these models can be sampled in time scaling with ln(d), where d is dimension. For the "
        "Gaussian-Gaussian model, the energy cost is shown to scale with d ln(d).",
        ("thermo_crossover", "tbi_scaling"),
    ),
    Paper(
        "kfac",
        "Thermodynamic K-FAC: second-order optimisation on a thermodynamic computer",
        "Donatella et al. 2025, arXiv 2502.08603",
        "Our asymptotic complexity analysis predicts increasing advantage with our algorithm as n, the number of "
        "neurons per layer, increases. Numerical experiments show that even under significant quantization "
        "noise, the benefits of second-order optimization can be preserved. Finally, we predict substantial "
        "speedups for large-scale vision and graph problems based on realistic hardware characteristics.",
        ("kfac",),
    ),
    Paper(
        "emt",
        "Extended Mind Transformers: retrieval of key/value memories inside attention",
        "Klett & Ahle 2024, arXiv 2406.02332",
        "We show that it is possible to fix many of the shortcomings of the original method, such as the need "
        "for fine-tuning, by critically assessing how positional encodings should be updated for the keys and "
        "values retrieved. [...] We demonstrate the importance of external information being retrieved in a "
        "majority of decoder layers [...] and show that Extended Mind Transformers outperform today's state of "
        "the art by 6% on average.",
        ("emt_benchmark", "emt_perplexity"),
    ),
)


class OutputError(ValueError):
    """The output folder cannot be used (a file, or not writable)."""


# ----------------------------------------------------------------------------------- experiments' protocol


@dataclass
class Outcome:
    """What one experiment of a run gave: its status, verdicts, headline table and wall time (seconds)."""

    name: str
    paper: str
    status: str  # "done", "failed", "interrupted", "not in this version", "not selected", "no saved result"
    title: str = ""
    seconds: float | None = None
    verdicts: list[dict[str, str]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    seeds: Any = None
    seed_passed: bool = False
    plot: str | None = None
    page: str | None = None
    error: str | None = None
    traceback: str | None = None


def paper_of(name: str, module: Any = None) -> str:
    """The key of the paper an experiment belongs to: its module's ``PAPER`` if set, else :data:`PAPERS`."""
    declared = getattr(module, "PAPER", None)
    if declared in {p.key for p in PAPERS}:
        return declared
    for paper in PAPERS:
        if name in paper.experiments:
            return paper.key
    return "other"


def normalise_verdict(value: Any) -> str:
    """One of :data:`VERDICTS` (``"not"`` -> ``"not reproduced"``, ``"not run"`` -> ``"not tested here"``)."""
    v = str(value).strip().lower()
    v = _ALIASES.get(v, v)
    if v not in VERDICTS:
        raise ValueError(f"verdict: expected one of {list(VERDICTS)}, got {value!r}")
    return v


def normalise_verdicts(raw: Any) -> list[dict[str, str]]:
    """``[{claim, verdict, reason}]`` from a list of such dicts or a ``{claim: {verdict, reason}}`` dict."""
    if raw is None:
        return []
    items = [{"claim": k, **v} for k, v in raw.items()] if isinstance(raw, dict) else list(raw)
    out = []
    for item in items:
        if not isinstance(item, dict) or not {"claim", "verdict"} <= set(item):
            raise ValueError(f"verdicts: each entry needs 'claim' and 'verdict' (and 'reason'); got {item!r}")
        out.append({"claim": str(item["claim"]), "verdict": normalise_verdict(item["verdict"]),
                    "reason": str(item.get("reason", ""))})
    return out


def headline_of(module: Any, result: Any) -> dict[str, Any]:
    """``{verdicts, summary, seeds}`` of a finished experiment: the keys its ``run()`` returned, else its
    module's ``headline(result)``, else a fallback verdict "not tested here: verdict not reported"."""
    result = result if isinstance(result, dict) else {}
    extra = {}
    if ("verdicts" not in result or "summary" not in result) and callable(getattr(module, "headline", None)):
        extra = module.headline(result) or {}
    verdicts = normalise_verdicts(result.get("verdicts", extra.get("verdicts")))
    if not verdicts:
        verdicts = [{"claim": "the experiment's claim", "verdict": "not tested here",
                     "reason": "verdict not reported: the experiment does not return 'verdicts' yet"}]
    summary = result.get("summary") if _is_table(result.get("summary")) else extra.get("summary")
    if summary is not None and not _is_table(summary):
        raise ValueError("summary: expected {'columns': [...], 'rows': [[...], ...]}")
    return {"verdicts": verdicts, "summary": summary, "seeds": result.get("seeds", extra.get("seeds"))}


def _is_table(x: Any) -> bool:
    return isinstance(x, dict) and isinstance(x.get("columns"), list) and isinstance(x.get("rows"), list)


def module_info(name: str) -> dict[str, Any]:
    """Title and declared run times (``RUN_TIME = {"quick": s, "full": s}``) of an experiment, for ``--help``;
    a module that fails to import gives its error as title instead of raising."""
    from thermoai.experiments import EXPERIMENTS

    try:
        module = importlib.import_module(EXPERIMENTS[name])
    except Exception as err:  # noqa: BLE001 - --help must list every experiment, even a broken one
        return {"title": f"(cannot be imported: {type(err).__name__}: {err})", "run_time": {}}
    title = getattr(module, "TITLE", None) or _first_sentence(module.__doc__ or "") or name
    return {"title": title, "run_time": dict(getattr(module, "RUN_TIME", {}) or {})}


def _first_sentence(doc: str, limit: int = 90) -> str:
    """The docstring's first sentence as plain text (reST markup dropped), cut to ``limit`` characters."""
    text = " ".join(doc.strip().split("\n\n")[0].split())
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "").replace("`", "")
    text = re.split(r"(?<=[a-z]{3}[.:])\s", text)[0].rstrip(".:")  # "et al. " does not end it
    return text if len(text) <= limit else text[: limit - 3].rsplit(" ", 1)[0] + "..."


def duration(seconds: Any) -> str:
    """``"40 s"``, ``"12 min"``, ``"1.5 h"``; ``"?"`` when unknown."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------------ provenance


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` when tracked files changed), or ``"unknown"``."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return "unknown (not a git checkout)"
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """Operating system, CPU, cores usable by this process, memory (GiB), Python, torch threads."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"os": platform.platform(), "cpu": cpu, "cores": cores, "memory_gib": memory,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(), "gpu": gpu}


LIBRARIES = ("thermoai", "torch", "numpy", "scipy", "optree", "scikit-learn", "matplotlib", "transformers", "tqdm")


def versions() -> dict[str, str]:
    """Installed versions of thermoai and the libraries the experiments use (``"not installed"``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# --------------------------------------------------------------------------------------------- writing


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so that a reader
    (or an interrupted run) sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is as readable as any file written here
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_folder(out: Path) -> Path:
    """Create ``out`` if needed and check that files can be written in it; :class:`OutputError` otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    return out


def _seconds(x: float) -> float | int:
    """A wall time as printed: whole seconds from 100 s on, else 3 significant digits."""
    return round(x) if x >= 100 else _number(x)


def _number(x: float | int) -> float | int:
    """The value as the report prints it: ints as they are, floats to 3 significant digits."""
    if isinstance(x, bool) or isinstance(x, int):
        return x
    if not math.isfinite(x):
        return x
    return float(f"{x:.3g}")


def _text(x: float | int) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if 1e3 <= abs(x) < 1e6:  # 2260, not 2.26e+03
        return f"{float(f'{x:.3g}'):.0f}"
    return f"{x:.3g}"


def _cell(value: Any) -> tuple[str, Any]:
    """``(markdown, json value)`` of a summary cell: text, a number, ``[mean, stderr]`` or ``None``."""
    if value is None:
        return "n/a", None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        m, s = (_number(v) for v in value)
        if isinstance(m, float) and not math.isfinite(m):
            return _text(m), None
        if isinstance(s, float) and not math.isfinite(s):
            return _text(m), [m, None]
        return f"{_text(m)} ± {_text(s)}", [m, s]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = _number(value)
        return _text(n), (n if not isinstance(n, float) or math.isfinite(n) else None)  # JSON has no NaN
    return str(value).replace("|", "\\|").replace("\n", " "), str(value)


def _table(summary: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    cols = [str(c) for c in summary["columns"]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows_json = []
    for row in summary["rows"]:
        cells = [_cell(v) for v in row]
        lines.append("| " + " | ".join(c[0] for c in cells) + " |")
        rows_json.append([c[1] for c in cells])
    data = {"columns": cols, "rows": rows_json}
    if summary.get("caption"):
        data["caption"] = str(summary["caption"])
    return lines, data


def paper_verdict(outcomes: list[Outcome]) -> tuple[str, str]:
    """One verdict for a paper from its experiments' claims, and the reason in one line."""
    claims = [v for o in outcomes if o.status == "done" for v in o.verdicts]
    failed = [o.name for o in outcomes if o.status in ("failed", "interrupted")]
    absent = [o.name for o in outcomes if o.status in ("not in this version", "not selected", "no saved result")]
    tested = [v["verdict"] for v in claims if v["verdict"] != "not tested here"]
    counts = {v: tested.count(v) for v in VERDICTS[:3] if tested.count(v)}
    if not tested:
        verdict = "not tested here"
    elif set(tested) == {"reproduced"}:
        verdict = "reproduced"
    elif set(tested) == {"not reproduced"}:
        verdict = "not reproduced"
    else:
        verdict = "partly"
    parts = [", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(tested)} claims tested"] if tested else []
    if len(claims) > len(tested):
        parts.append(f"{len(claims) - len(tested)} claim(s) not tested here")
    if failed:
        parts.append("failed or interrupted: " + ", ".join(failed))
    if absent:
        parts.append("not run: " + ", ".join(absent))
    return verdict, "; ".join(parts) if parts else "no experiment ran"


# ---------------------------------------------------------------------------------------------- running


def _modes_kwargs(module: Any, mode: str) -> dict[str, Any]:
    """run()'s keywords in ``mode``: the module's ``REPRODUCE[mode]``, else ``quick=True`` (``quick=False`` in full)."""
    options = (getattr(module, "REPRODUCE", None) or {}).get(mode)
    return dict(options) if options is not None else {"quick": mode != "full"}


def _notice(mode: str) -> str:
    if mode == "full":
        return ""
    flag = "--quick" if mode == "quick" else "--smoke"
    return (f"> **Smoke test, not a result.** Made with `{flag}`: the sizes are shrunk so that it finishes in "
            f"minutes; its numbers and verdicts only show that the code runs. Run `thermoai reproduce --full` "
            "(the committed `docs/results/` come from it) for the result.")


_HEAD, _HEAD_END, _TAIL = "<!-- thermoai reproduce: head -->", "<!-- thermoai reproduce: end of head -->", \
    "<!-- thermoai reproduce: verdict -->"


def _decorate_page(text: str, outcome: Outcome, paper: Paper | None, meta: dict[str, Any]) -> str:
    """Head the experiment's own page with the paper, claim, provenance (and smoke notice); end with verdicts.
    A page decorated before (``--rebuild``) gets its old head and verdict replaced, not repeated."""
    text = text.split(_TAIL)[0]
    if _HEAD in text and _HEAD_END in text:
        text = text[: text.index(_HEAD)] + text[text.index(_HEAD_END) + len(_HEAD_END):].lstrip("\n")
    lines = text.rstrip("\n").split("\n")
    title_at = next((i for i, line in enumerate(lines) if line.startswith("# ")), -1)
    head = [_HEAD]
    if meta["mode"] != "full":
        head += [_notice(meta["mode"]), ""]
    if paper is not None:
        head += [f"Paper: {paper.title} ({paper.reference}). Claim tested (from its abstract): \"{paper.claim}\"", ""]
    head += [f"Made by `{meta['command']}` with thermoai {meta['thermoai']} (commit {meta['commit']}) on "
             f"{meta['date']}; part of [the report](report.md).", _HEAD_END, ""]
    tail = ["", _TAIL, "## Verdict", ""] + [f"- **{v['verdict']}**: {v['claim']}. {v['reason']}" for v in outcome.verdicts]
    return "\n".join(lines[: title_at + 1] + ([""] if title_at >= 0 else []) + head + lines[title_at + 1:] + tail) + "\n"


def _finish_files(staging: Path, out: Path, outcome: Outcome, paper: Paper | None, meta: dict[str, Any]) -> None:
    """Decorate the experiment's page and JSON in the staging folder, then move every file into ``out``."""
    page = staging / f"{outcome.name}.md"
    if page.exists():
        page.write_text(_decorate_page(page.read_text(), outcome, paper, meta))
        outcome.page = page.name
    data = staging / f"{outcome.name}.json"
    if data.exists():
        try:
            content = json.loads(data.read_text())
        except json.JSONDecodeError:
            content = None
        if isinstance(content, dict):
            content["provenance"] = {k: meta[k] for k in ("thermoai", "commit", "date", "command", "mode")}
            content["verdicts_reported"] = outcome.verdicts
            data.write_text(json.dumps(content, indent=1, default=str))
    plot = staging / f"{outcome.name}.png"
    outcome.plot = plot.name if plot.exists() else None
    for path in sorted(staging.iterdir()):
        if path.is_file():
            os.replace(path, out / path.name)


def run_one(name: str, out: Path, mode: str, seed: int | None, meta: dict[str, Any]) -> Outcome:
    """Run one experiment into a staging folder inside ``out`` and move its files in when it has finished;
    an error becomes a failed :class:`Outcome` (a ``KeyboardInterrupt`` propagates, files left out)."""
    from thermoai.experiments import EXPERIMENTS

    outcome = Outcome(name, paper_of(name), "failed")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=out))
    start = time.perf_counter()
    try:
        module = importlib.import_module(EXPERIMENTS[name])
        outcome.paper = paper_of(name, module)
        outcome.title = module_info(name)["title"]
        kwargs = _modes_kwargs(module, mode)
        if seed is not None and "seed" in inspect.signature(module.run).parameters:
            kwargs["seed"] = seed
            outcome.seed_passed = True
        _seed_global(0 if seed is None else seed)
        result = module.run(staging, **kwargs)
        outcome.seconds = time.perf_counter() - start
        head = headline_of(module, result)
        outcome.verdicts, outcome.summary, outcome.seeds = head["verdicts"], head["summary"], head["seeds"]
        outcome.status = "done"
        paper = next((p for p in PAPERS if p.key == outcome.paper), None)
        _finish_files(staging, out, outcome, paper, meta)
    except KeyboardInterrupt:
        outcome.status, outcome.seconds = "interrupted", time.perf_counter() - start
        outcome.error = "interrupted (Ctrl-C) while running; its files were not kept"
        raise
    except Exception as err:  # noqa: BLE001 - one failing experiment must not stop the others
        outcome.status, outcome.seconds = "failed", time.perf_counter() - start
        outcome.error = f"{type(err).__name__}: {err}"
        outcome.traceback = traceback.format_exc()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outcome


def _seed_global(seed: int) -> None:
    """Seed the global generators, so that experiments that draw from them repeat from run to run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reproduce(names: Iterable[str] | None = None, out: str | Path = "out/quick", mode: str = "quick",
              seed: int | None = None, command: str | None = None, progress: bool = True) -> tuple[list[Outcome], int]:
    """Run the named experiments (default: all) in ``mode`` (``smoke``, ``quick`` or ``full``), write
    ``out/report.md`` and ``out/results.json``; returns the outcomes and the exit status (0 when every
    experiment finished, 1 when one failed, 130 when interrupted).

    Raises:
        ValueError: an unknown experiment name (the message lists the valid ones) or mode.
        OutputError: ``out`` is a file or cannot be written.
    """
    from tqdm.auto import tqdm

    from thermoai.experiments import EXPERIMENTS

    names = list(names) if names else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; choose from: {', '.join(EXPERIMENTS)}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    out = check_output_folder(Path(out))
    started = time.perf_counter()
    meta = {"thermoai": versions()["thermoai"], "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "command": command or f"thermoai reproduce {' '.join(names)} --{mode} --out {out}", "mode": mode,
            "seed": seed}
    outcomes: dict[str, Outcome] = {}
    status = 0
    bar = tqdm(names, desc="thermoai reproduce", unit="experiment", disable=not progress, position=0)
    try:
        for name in bar:
            bar.set_postfix_str(name)
            outcomes[name] = run_one(name, out, mode, seed, meta)
            if outcomes[name].status == "failed":
                status = 1
                print(f"{name} failed:\n{outcomes[name].traceback}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        status = 130
        for name in names:
            if name not in outcomes:
                outcomes[name] = Outcome(name, paper_of(name), "interrupted",
                                         error="interrupted (Ctrl-C) before it finished; its files were not kept")
    finally:
        bar.close()
    meta["wall_s"] = time.perf_counter() - started
    ordered = [outcomes[n] for n in names]
    write_report(out, ordered, meta)
    return ordered, status


# -------------------------------------------------------------------------------------------- the report


def write_report(out: Path, outcomes: list[Outcome], meta: dict[str, Any]) -> None:
    """Write ``report.md`` and ``results.json`` (atomically) from the outcomes of a run."""
    markdown, data = render(outcomes, meta)
    atomic_write(Path(out) / "results.json", json.dumps(data, indent=1, allow_nan=False) + "\n")
    atomic_write(Path(out) / "report.md", markdown)


def _all_outcomes(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    """Per paper key, the outcomes of its experiments, with placeholders for those not run."""
    from thermoai.experiments import EXPERIMENTS

    by_name = {o.name: o for o in outcomes}
    grouped: dict[str, list[Outcome]] = {p.key: [] for p in PAPERS}
    for paper in PAPERS:
        for name in paper.experiments:
            if name in by_name:
                continue
            status = "not selected" if name in EXPERIMENTS else "not in this version"
            grouped[paper.key].append(Outcome(name, paper.key, status))
    for o in outcomes:
        grouped.setdefault(o.paper, []).append(o)
    order: dict[str, int] = {}
    for name in [n for p in PAPERS for n in p.experiments] + list(by_name):
        order.setdefault(name, len(order))
    for key in grouped:
        grouped[key].sort(key=lambda o: order.get(o.name, len(order)))
    return grouped


def render(outcomes: list[Outcome], meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(report.md text, results.json document)``; every number of the document is printed in the text."""
    grouped = _all_outcomes(outcomes)
    papers = {p.key: p for p in PAPERS}
    mode = meta["mode"]
    md = ["# thermoai: the four papers, reproduced", ""]
    if mode != "full":
        md += [_notice(mode), ""]
    md += [f"Made by `{meta['command']}` with thermoai {meta['thermoai']} (commit {meta['commit']}) on "
           f"{meta['date']}. Each section quotes a paper's claim from its abstract, shows what was measured, and "
           "gives a verdict: reproduced, partly, not reproduced, or not tested here. Each experiment's own page "
           "(linked) holds the full tables, the set-up and the reasoning.", ""]
    data: dict[str, Any] = {"thermoai": meta["thermoai"], "commit": meta["commit"], "date": meta["date"],
                            "command": meta["command"], "mode": mode, "papers": [], "run": {}}

    glance = ["## Verdicts", "", "| paper | verdict | why |", "|---|---|---|"]
    sections: list[str] = []
    for key, group in grouped.items():
        if not group:
            continue
        paper = papers.get(key)
        verdict, reason = paper_verdict(group)
        title = paper.title if paper else "Other experiments"
        glance.append(f"| [{title}](#{_anchor(title)}) | **{verdict}** | {reason} |")
        entry: dict[str, Any] = {"key": key, "title": title, "verdict": verdict, "reason": reason, "experiments": []}
        sections += [f"## {title}", ""]
        if paper:
            sections += [f"*{paper.reference}.* Claim (abstract): \"{paper.claim}\"", ""]
            entry["reference"], entry["claim"] = paper.reference, paper.claim
        sections += [f"**Verdict{' (smoke-test sizes)' if mode != 'full' else ''}: {verdict}** — {reason}.", ""]
        for o in group:
            sections += _experiment_section(o, entry)
        data["papers"].append(entry)
    md += glance + [""] + sections
    md += _run_section(outcomes, meta, data)
    return "\n".join(md).rstrip("\n") + "\n", data


def _anchor(title: str) -> str:
    """The heading id that Markdown renderers (mkdocs, GitHub) give to ``## title``."""
    slug = re.sub(r"[^\w\s-]", "", title.lower()).strip()
    return re.sub(r"[\s]+", "-", slug)


def _experiment_section(o: Outcome, entry: dict[str, Any]) -> list[str]:
    lines = [f"### {o.name}" + (f": {o.title}" if o.title else ""), ""]
    item: dict[str, Any] = {"name": o.name, "status": o.status}
    if o.status == "not in this version":
        lines += ["Not tested here: this experiment is not in this version of thermoai yet.", ""]
        item["verdicts"] = []
    elif o.status == "not selected":
        lines += [f"Not run in this report (not named on the command line): `thermoai reproduce {o.name}`.", ""]
        item["verdicts"] = []
    elif o.status == "no saved result":
        lines += [f"Not tested here: no saved {o.name}.json to rebuild from; run `thermoai reproduce {o.name} --full`.", ""]
        item["verdicts"] = []
    elif o.status in ("failed", "interrupted"):
        lines += [f"**{o.status}**: {o.error}" + (f" (after {_text(_seconds(o.seconds))} s)" if o.seconds else "")
                  + ". Verdict: not tested here.", ""]
        item["error"] = o.error
        if o.seconds is not None:
            item["seconds"] = _seconds(o.seconds)
        item["verdicts"] = []
    else:
        if o.summary is not None:
            table, item["summary"] = _table(o.summary)
            if o.summary.get("caption"):
                lines += [str(o.summary["caption"]), ""]
            lines += table + [""]
        else:
            lines += ["(The experiment reports no headline table; see its page.)", ""]
        if o.plot:
            lines += [f"![{o.name}]({o.plot})", ""]
            item["plot"] = o.plot
        lines += [f"- **{v['verdict']}**: {v['claim']}. {v['reason']}" for v in o.verdicts] + [""]
        item["verdicts"] = o.verdicts
        links = [f"[{o.page}]({o.page})"] if o.page else []
        links.append(f"numbers: [{o.name}.json]({o.name}.json)")
        wall = "not recorded" if o.seconds is None else f"{_text(_seconds(o.seconds))} s"
        lines += ["Full page: " + " · ".join(links) + f" · wall time {wall}", ""]
        if o.seconds is not None:
            item["seconds"] = _seconds(o.seconds)
        item["page"] = o.page
    entry["experiments"].append(item)
    return lines


def _seeds_text(o: Outcome) -> tuple[str, Any]:
    seeds = o.seeds
    if seeds is None:
        return ("--seed passed to run()" if o.seed_passed else "the experiment's fixed seeds (see its page)"), None
    if isinstance(seeds, (int, float)):
        seeds = [seeds]
    if not seeds:
        return "none (no random draws)", []
    seeds = [int(s) if isinstance(s, (int, float)) and float(s).is_integer() else s for s in seeds]
    return ", ".join(map(str, seeds)) + (" (from --seed)" if o.seed_passed else ""), seeds


def _run_section(outcomes: list[Outcome], meta: dict[str, Any], data: dict[str, Any]) -> list[str]:
    m, v = machine(), versions()
    lines = ["## The run", "",
             f"Machine: {m['os']}; CPU {m['cpu']}, {m['cores']} cores usable; "
             + (f"{_text(_number(m['memory_gib']))} GiB memory; " if m["memory_gib"] else "")
             + f"GPU {m['gpu']}; Python {m['python']}; torch threads {m['torch_threads']}.", "",
             "Libraries: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", "",
             f"Global random generators seeded with {0 if meta['seed'] is None else meta['seed']} before each "
             "experiment" + (f"; `--seed {meta['seed']}` passed to the experiments whose run() takes a seed."
                             if meta["seed"] is not None else "; the experiments use their own fixed seeds."), "",
             "| part | status | seeds | wall time (s) |", "|---|---|---|---:|"]
    if meta.get("rebuilt"):
        lines[2:2] = ["Rebuilt from saved results (`--rebuild`): nothing was run; the machine and libraries are "
                      "those that rebuilt the report, the wall times those saved with each result (where saved) "
                      "and each experiment's page names the command that made it.", ""]
    parts = []
    for o in outcomes:
        text, seeds = _seeds_text(o)
        secs = _seconds(o.seconds) if o.seconds is not None else None
        lines.append(f"| {o.name} | {o.status} | {text} | {_text(secs) if secs is not None else '-'} |")
        parts.append({"name": o.name, "status": o.status, "seeds": seeds, "seconds": secs})
    total = _seconds(meta["wall_s"])
    lines += [f"| total | | | {_text(total)} |", ""]
    if m["memory_gib"] is None:
        m.pop("memory_gib")
    else:
        m["memory_gib"] = _number(m["memory_gib"])
    data["run"] = {"machine": m, "libraries": v, "global_seed": 0 if meta["seed"] is None else meta["seed"],
                   "seed_option": meta["seed"], "parts": parts, "wall_s": total}
    return lines


# ------------------------------------------------------------------------------------------- rebuilding


def _mode_of(result: dict[str, Any]) -> str:
    """The mode a saved result was made in: its provenance, else its ``quick`` flag or size."""
    mode = (result.get("provenance") or {}).get("mode")
    if mode in MODES:
        return mode
    return "quick" if result.get("quick") else "full"


def rebuild(out: str | Path, names: Iterable[str] | None = None, command: str | None = None) -> list[Outcome]:
    """Write ``report.md``/``results.json`` from the ``<name>.json`` already in ``out`` (nothing is run):
    the verdicts come from the numbers saved there (``run()``'s keys or the module's ``headline``)."""
    from thermoai.experiments import EXPERIMENTS

    names = list(names) if names else list(EXPERIMENTS)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; choose from: {', '.join(EXPERIMENTS)}")
    out = check_output_folder(Path(out))
    meta = {"thermoai": versions()["thermoai"], "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "command": command or f"thermoai reproduce --rebuild --out {out}", "mode": "full", "seed": None,
            "wall_s": 0.0, "rebuilt": True}
    outcomes = []
    for name in names:
        module = importlib.import_module(EXPERIMENTS[name])
        o = Outcome(name, paper_of(name, module), "done", title=module_info(name)["title"])
        path = out / f"{name}.json"
        if not path.exists():
            o.status = "no saved result"
        else:
            result = json.loads(path.read_text())
            if _mode_of(result) != "full":
                meta["mode"] = "quick"
            head = headline_of(module, result)
            o.verdicts, o.summary, o.seeds = head["verdicts"], head["summary"], head["seeds"]
            o.seconds = next((float(result[k]) for k in ("seconds", "elapsed_s", "wall_s") if
                              isinstance(result.get(k), (int, float))), None)
            o.plot = f"{name}.png" if (out / f"{name}.png").exists() else None
            page = out / f"{name}.md"
            if page.exists():
                o.page = page.name
                paper = next((p for p in PAPERS if p.key == o.paper), None)
                made = {**meta, **(result.get("provenance") or {}), "mode": _mode_of(result)}  # the run that made it
                atomic_write(page, _decorate_page(page.read_text(), o, paper, made))
        outcomes.append(o)
    meta["wall_s"] = sum(o.seconds or 0.0 for o in outcomes)
    write_report(out, outcomes, meta)
    return outcomes


README_BEGIN = "<!-- results table: made by scripts/readme_results.py from docs/results/results.json -->"
README_END = "<!-- end of results table -->"


def readme_table(data: dict[str, Any], page: str = "docs/results/report.md", listed: int = 4) -> str:
    """The README's results table from a ``results.json`` (``data``): a row per experiment with its verdicts;
    an experiment with at most ``listed`` claims lists each, a larger one counts them and lists those not
    reproduced; ``page`` is the report the paper names link to."""
    rows = ["| paper | experiment | verdicts |", "|---|---|---|"]
    for paper in data["papers"]:
        name = f"[{paper['key']}]({page}#{_anchor(paper['title'])}): **{paper['verdict']}**"
        for experiment in paper["experiments"]:
            verdicts = experiment.get("verdicts") or []
            clean = lambda v: " ".join(str(v["claim"]).split()).replace("|", "\\|")  # noqa: E731
            if not verdicts:
                cell = f"not tested here ({experiment.get('status', 'no saved result')})"
            elif len(verdicts) <= listed:
                cell = "<br>".join(f"**{v['verdict']}**: {clean(v)}" for v in verdicts)
            else:
                counts = {k: sum(v["verdict"] == k for v in verdicts) for k in VERDICTS}
                cell = ", ".join(f"{n} {k}" for k, n in counts.items() if n) + " of " + f"{len(verdicts)} claims"
                cell += "".join(f"<br>**{v['verdict']}**: {clean(v)}" for v in verdicts if v["verdict"] != "reproduced")
            rows.append(f"| {name} | {experiment['name']} | {cell} |")
            name = ""
    return "\n".join(rows)


def readme_block(data: dict[str, Any]) -> str:
    """The README's block between :data:`README_BEGIN` and :data:`README_END`: the table and its command."""
    return "\n".join([README_BEGIN, "", f"Made by `{data['command']}` on {data['date'][:10]} (thermoai {data['thermoai']},",
                      f"commit {data['commit']}), paper verdicts: "
                      + "; ".join(f"{p['key']} **{p['verdict']}**" for p in data["papers"]) + ".", "",
                      readme_table(data), "", README_END])


__all__ = ["PAPERS", "VERDICTS", "Paper", "Outcome", "OutputError", "reproduce", "rebuild", "render",
           "headline_of", "normalise_verdicts", "readme_table", "readme_block", "paper_verdict", "atomic_write",
           "check_output_folder"]
