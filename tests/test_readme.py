"""The README's Python blocks run as written, each in a fresh interpreter, and do as well as the README says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def _percent(out: str, label: str) -> float:
    return float(re.search(rf"{re.escape(label)}.*?accuracy (\d+(?:\.\d+)?)%", out).group(1)) / 100


def check_bayes(out: str) -> None:
    assert _percent(out, "SGHMC") > 0.9 and _percent(out, "VI diag") > 0.9, out  # chance is 0.1


def check_thermo(out: str) -> None:
    error = float(re.search(r"relative error (\S+) \(asked 1e-2", out).group(1))
    assert error < 1e-2, out
    assert "solve d=4096" in out


def check_circuits(out: str) -> None:
    assert float(re.search(r"relative error (\S+);", out).group(1)) < 0.1, out


def check_kfac(out: str) -> None:
    loss = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(.+?): training loss (\S+),", out, flags=re.M)}
    sgd, kfac, thermo = loss["SGD"], loss["SGD + K-FAC (eigh)"], loss[next(k for k in loss if "thermodynamic" in k)]
    assert kfac < sgd / 5 and thermo < sgd / 2, loss  # "about 20 times lower", "keeps most of that"
    assert min(_percent(out, k) for k in loss) > 0.9


def check_memory(out: str) -> None:
    assert "correct: True" in out and "Marguerite" not in out.split("without memory:")[1].split("\n")[0], out


CHECKS = {"thermoai.bayes": check_bayes, "thermoai.thermo.circuits": check_circuits, "thermoai.thermo ": check_thermo,
          "thermoai.optim": check_kfac, "thermoai.memory": check_memory}


def _check_for(code: str):
    first = next(line for line in code.splitlines() if line.startswith("from thermoai"))
    return next(check for key, check in CHECKS.items() if (first + " ").startswith(f"from {key}"))


def test_readme_has_a_python_block_per_capability():
    assert len(BLOCKS) >= 5
    assert {_check_for(code) for code in BLOCKS} == set(CHECKS.values())


@pytest.mark.parametrize("code", BLOCKS, ids=[_check_for(c).__name__.removeprefix("check_") for c in BLOCKS])
def test_readme_block_runs_and_does_well(code, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_for(code)(done.stdout)


def test_the_results_table_is_the_committed_report():
    """The README's results table is made from docs/results/results.json (scripts/readme_results.py), so it
    cannot drift from the report."""
    import json

    sys.path.insert(0, str(README.parent / "scripts"))
    try:
        import readme_results
    finally:
        sys.path.pop(0)
    results = json.loads((README.parent / "docs" / "results" / "results.json").read_text())
    text = README.read_text()
    assert readme_results.updated_readme(text, results) == text, "run python scripts/readme_results.py"
    for paper in results["papers"]:
        assert f"**{paper['verdict']}**" in text
    with pytest.raises(ValueError, match="no block between"):
        readme_results.updated_readme("# a README without the markers\n", results)
