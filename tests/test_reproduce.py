"""``thermoai reproduce``: the whole report on the tiniest settings, and what happens when things go wrong.

The end-to-end test runs every registered experiment that declares a smoke run (``REPRODUCE["smoke"]``)
through the command line and checks the report's sections, tables, plots and verdicts, and that every
number of ``results.json`` is printed in ``report.md``. The other tests use small fake experiments.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest

from thermoai.cli import main
from thermoai.experiments import EXPERIMENTS
from thermoai.experiments import report as R

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def _has_smoke(name: str) -> bool:
    module = importlib.import_module(EXPERIMENTS[name])
    return "smoke" in (getattr(module, "REPRODUCE", None) or {})


SMOKE = [n for n in EXPERIMENTS if _has_smoke(n)]


def numbers_in(tree) -> list[float]:
    """Every number (not bool) anywhere in a parsed JSON document."""
    if isinstance(tree, bool) or tree is None or isinstance(tree, str):
        return []
    if isinstance(tree, (int, float)):
        return [tree]
    values = tree.values() if isinstance(tree, dict) else tree
    return [x for v in values for x in numbers_in(v)]


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n") if heading + "\n" in text else text.index(heading)
    rest = text[start + len(heading):]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", rest, flags=re.M)]
    return rest[: ends[0]] if ends else rest


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        status = main(["reproduce", *SMOKE, "--smoke", "--no-progress", "--out", str(out)])
    return out, status, buffer.getvalue()


def test_the_existing_experiments_have_a_smoke_run():
    assert {"cold_posterior", "thermo_crossover", "emt_benchmark"} <= set(SMOKE)


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n not in SMOKE] or ["(none)"])
def test_experiments_without_a_smoke_run_are_named(name):
    if name == "(none)":
        return
    pytest.skip(f"{name} declares no REPRODUCE['smoke'] (a run of seconds): the whole-report test leaves it out")


def test_smoke_report_has_a_section_per_paper_with_table_plot_and_verdict(smoke_run):
    out, status, stdout = smoke_run
    assert status == 0
    assert stdout.strip().splitlines()[-1].startswith(f"report: {out / 'report.md'}")
    text = (out / "report.md").read_text()
    assert "Smoke test, not a result" in text.split("## ")[0]  # at the top, before any section
    for paper in R.PAPERS:
        body = section(text, f"## {paper.title}")
        assert paper.claim in body
        verdict = re.search(r"\*\*Verdict \(smoke-test sizes\): (.+?)\*\* — ", body)
        assert verdict and verdict.group(1) in R.VERDICTS, body[:400]
        for name in paper.experiments:
            if name not in SMOKE:
                continue
            part = section(body, f"### {name}")
            assert re.search(r"^\| .+ \|\n\|(---\|)+\n\| ", part, flags=re.M), f"{name}: no table"
            assert f"![{name}]({name}.png)" in part and (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
            verdicts = re.findall(r"^- \*\*(.+?)\*\*: ", part, flags=re.M)
            assert verdicts and set(verdicts) <= set(R.VERDICTS), (name, verdicts)
            assert f"[{name}.md]({name}.md)" in part


def test_every_number_of_results_json_is_printed_in_the_report(smoke_run):
    out, _, _ = smoke_run
    text = (out / "report.md").read_text()
    printed = [float(x) for x in NUMBER.findall(text)]
    data = json.loads((out / "results.json").read_text())
    values = numbers_in(data)
    assert len(values) > 50  # tables, wall times, seeds, the machine
    missing = [v for v in values if not any(math.isclose(v, p, rel_tol=1e-9, abs_tol=1e-12) for p in printed)]
    assert not missing, missing[:10]
    # and the verdicts of results.json are the report's
    for paper in data["papers"]:
        assert f"**{paper['verdict']}**" in text
        for experiment in paper["experiments"]:
            for v in experiment.get("verdicts", []):
                assert f"- **{v['verdict']}**: {v['claim']}. {v['reason']}" in text


def test_report_json_and_pages_carry_version_commit_date_command(smoke_run):
    out, _, _ = smoke_run
    data = json.loads((out / "results.json").read_text())
    text = (out / "report.md").read_text()
    assert data["thermoai"] == importlib.metadata.version("thermoai") and data["mode"] == "smoke"
    assert data["command"].startswith("thermoai reproduce") and "--smoke" in data["command"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT.+", data["date"])
    for key in ("thermoai", "commit", "date", "command"):
        assert str(data[key]) in text
    for name in SMOKE:
        page = (out / f"{name}.md").read_text()
        assert page.startswith("# ") and "Smoke test, not a result" in page and "Paper: " in page
        assert data["command"] in page and data["commit"] in page
        assert page.rstrip().split("## Verdict")[-1].strip().startswith("- **")  # ends with its verdicts
        saved = json.loads((out / f"{name}.json").read_text())
        assert saved["provenance"]["command"] == data["command"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging or temporary files


def test_rebuild_gives_the_same_verdicts_from_the_saved_numbers(smoke_run, tmp_path):
    out, _, _ = smoke_run
    import shutil

    for path in out.iterdir():
        shutil.copy(path, tmp_path / path.name)
    before = json.loads((out / "results.json").read_text())
    assert main(["reproduce", "--rebuild", *SMOKE, "--out", str(tmp_path)]) == 0
    after = json.loads((tmp_path / "results.json").read_text())
    verdicts = lambda d: [(e["name"], e.get("verdicts")) for p in d["papers"] for e in p["experiments"]]  # noqa: E731
    assert verdicts(after) == verdicts(before)
    page = (tmp_path / f"{SMOKE[0]}.md").read_text()
    assert page.count("## Verdict") == 1 and page.count("Paper: ") == 1  # decorated once, not twice


# ------------------------------------------------------------------------------------- fake experiments


def _fake(monkeypatch, name: str, run, paper: str = "kfac", **attrs) -> None:
    module = types.ModuleType(f"fake_{name}")
    module.run, module.PAPER = run, paper
    for k, v in attrs.items():
        setattr(module, k, v)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(EXPERIMENTS, name, module.__name__)


def _good(out_dir, quick=False):
    Path(out_dir, "good.md").write_text("# Good\n\nnew page\n")
    Path(out_dir, "good.json").write_text(json.dumps({"x": 1.5}))
    return {"verdicts": [{"claim": "it works", "verdict": "reproduced", "reason": "x = 1.5"}],
            "summary": {"columns": ["x", "y"], "rows": [[1.23456, [0.5, 0.01]]]}}


def test_a_failing_experiment_is_reported_and_the_others_still_run(monkeypatch, tmp_path, capsys):
    def bad(out_dir, quick=False):
        Path(out_dir, "bad.md").write_text("# half")
        raise RuntimeError("boom in the middle")

    _fake(monkeypatch, "bad", bad)
    _fake(monkeypatch, "good", _good)
    assert main(["reproduce", "bad", "good", "--quick", "--no-progress", "--out", str(tmp_path)]) == 1
    text = (tmp_path / "report.md").read_text()
    assert "**failed**: RuntimeError: boom in the middle" in section(text, "### bad")
    assert "- **reproduced**: it works. x = 1.5" in section(text, "### good")
    assert "| 1.23 | 0.5 ± 0.01 |" in text
    assert not (tmp_path / "bad.md").exists()  # its half-written page never reached the folder
    assert (tmp_path / "good.md").read_text().count("new page") == 1
    assert "boom in the middle" in capsys.readouterr().err
    status = {e["name"]: e["status"] for p in json.loads((tmp_path / "results.json").read_text())["papers"]
              for e in p["experiments"]}
    assert status["bad"] == "failed" and status["good"] == "done"


def test_an_interrupted_run_keeps_the_finished_pages_and_writes_a_whole_report(monkeypatch, tmp_path):
    (tmp_path / "slow.md").write_text("# Slow\n\nthe previous run's page\n")

    def slow(out_dir, quick=False):
        Path(out_dir, "slow.md").write_text("# Slow\n\nhalf of a new p")
        raise KeyboardInterrupt

    _fake(monkeypatch, "good", _good)
    _fake(monkeypatch, "slow", slow)
    _fake(monkeypatch, "later", _good)
    assert main(["reproduce", "good", "slow", "later", "--quick", "--no-progress", "--out", str(tmp_path)]) == 130
    assert (tmp_path / "slow.md").read_text() == "# Slow\n\nthe previous run's page\n"
    assert "new page" in (tmp_path / "good.md").read_text()
    text = (tmp_path / "report.md").read_text()
    assert "**interrupted**" in section(text, "### slow") and "**interrupted**" in section(text, "### later")
    assert text.rstrip().endswith("|")  # the whole report, up to the last line of the run table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.json", "good.md", "report.md", "results.json",
                                                          "slow.md"]


def test_an_interrupt_while_writing_the_report_leaves_the_old_report(monkeypatch, tmp_path):
    _fake(monkeypatch, "good", _good)
    (tmp_path / "report.md").write_text("old report\n")
    real_replace = R.os.replace

    def replace(src, dst):
        if Path(dst).name == "report.md":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(R.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        main(["reproduce", "good", "--quick", "--no-progress", "--out", str(tmp_path)])
    assert (tmp_path / "report.md").read_text() == "old report\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_experiment_without_verdicts_gets_the_fallback(monkeypatch, tmp_path):
    _fake(monkeypatch, "quiet", lambda out_dir, quick=False: {"x": 1})
    assert main(["reproduce", "quiet", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    part = section((tmp_path / "report.md").read_text(), "### quiet")
    assert "**not tested here**" in part and "verdict not reported" in part and "no headline table" in part


def test_a_bad_verdict_fails_that_experiment_with_a_clear_error(monkeypatch, tmp_path):
    _fake(monkeypatch, "odd", lambda out_dir, quick=False: {"verdicts": [{"claim": "c", "verdict": "maybe"}]})
    assert main(["reproduce", "odd", "--quick", "--no-progress", "--out", str(tmp_path)]) == 1
    assert "verdict: expected one of" in (tmp_path / "report.md").read_text()


def test_modes_and_seed_reach_run(monkeypatch, tmp_path):
    calls = []

    def run(out_dir, quick=False, seed=None, size="default"):
        calls.append((quick, seed, size))
        return {"verdicts": {"claim": {"verdict": "not", "reason": "r"}}, "seeds": [seed]}

    _fake(monkeypatch, "seeded", run, REPRODUCE={"smoke": {"quick": True, "size": "tiny"}})
    assert main(["reproduce", "seeded", "--smoke", "--seed", "7", "--no-progress", "--out", str(tmp_path)]) == 0
    assert main(["reproduce", "seeded", "--full", "--no-progress", "--out", str(tmp_path)]) == 0
    assert calls == [(True, 7, "tiny"), (False, None, "default")]
    text = (tmp_path / "report.md").read_text()
    assert "**not reproduced**: claim. r" in text  # "not" read as "not reproduced"


def test_paper_verdict_combines_the_claims():
    def outcome(*verdicts, status="done"):
        return R.Outcome("x", "kfac", status, verdicts=[{"claim": "c", "verdict": v, "reason": ""} for v in verdicts])

    assert R.paper_verdict([outcome("reproduced", "reproduced")])[0] == "reproduced"
    assert R.paper_verdict([outcome("reproduced", "not reproduced")])[0] == "partly"
    assert R.paper_verdict([outcome("not reproduced"), outcome("not tested here")])[0] == "not reproduced"
    assert R.paper_verdict([outcome("not tested here")])[0] == "not tested here"
    verdict, reason = R.paper_verdict([outcome("reproduced"), outcome(status="failed")])
    assert verdict == "reproduced" and "failed or interrupted: x" in reason


def test_every_number_the_report_prints_is_in_results_json(smoke_run):
    out, _, _ = smoke_run
    data = json.loads((out / "results.json").read_text())

    def strings(tree):
        if isinstance(tree, str):
            return [tree]
        if isinstance(tree, dict):
            return [s for k, v in tree.items() for s in [k, *strings(v)]]
        return [s for v in tree for s in strings(v)] if isinstance(tree, list) else []

    known = set(numbers_in(data)) | {float(x) for s in strings(data) for x in NUMBER.findall(s)}
    text = (out / "report.md").read_text()
    unknown = [x for x in NUMBER.findall(text) if not any(math.isclose(float(x), k, rel_tol=1e-9) for k in known)]
    assert not unknown, unknown[:20]
