"""Rewrite README.md's results table from docs/results/results.json (run after
``thermoai reproduce --rebuild --out docs/results``); ``--check`` exits 1 when the README is out of date.

The block between ``report.README_BEGIN`` and ``report.README_END`` is replaced; nothing else is touched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from thermoai.experiments import report

ROOT = Path(__file__).resolve().parents[1]


def updated_readme(readme: str, results: dict) -> str:
    """``readme`` with its results block made from ``results``; ValueError if the markers are missing."""
    start, end = readme.find(report.README_BEGIN), readme.find(report.README_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no block between {report.README_BEGIN!r} and {report.README_END!r}")
    return readme[:start] + report.readme_block(results) + readme[end + len(report.README_END):]


def main(argv: list[str]) -> int:
    readme_path, results_path = ROOT / "README.md", ROOT / "docs" / "results" / "results.json"
    readme = readme_path.read_text()
    try:
        results = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: cannot read {results_path} ({err}); remake it with make results")
        return 2
    new = updated_readme(readme, results)
    if "--check" in argv:
        if new != readme:
            print("README.md's results table is out of date: run python scripts/readme_results.py")
            return 1
        return 0
    report.atomic_write(readme_path, new)
    print(f"wrote {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
