"""The papers' headline results, reproduced. One module per result.

Each module exposes ``run(out_dir: pathlib.Path, quick: bool = False) -> dict`` which writes
``<name>.md`` (a table and the findings), ``<name>.json`` (the numbers) and, where a picture helps,
``<name>.png`` into ``out_dir`` and returns the numbers. ``quick`` shrinks the work for tests.
``thermoai reproduce`` (:mod:`thermoai.experiments.report`) runs them in the order of :data:`EXPERIMENTS`
and writes one report with a section per paper.

**What the report reads from an experiment** (all optional; without them it says "verdict not reported"):

- ``run()`` returns, besides its numbers, ``"verdicts"``: a list of
  ``{"claim": str, "verdict": str, "reason": str}`` (or a ``{claim: {"verdict", "reason"}}`` dict), the
  verdict one of ``reproduced``, ``partly``, ``not reproduced``, ``not tested here`` (``not`` and
  ``not run`` are read as the last two), the reason one line with the numbers behind it; and
  ``"summary"``: the headline table, ``{"columns": [str, ...], "rows": [[cell, ...], ...], "caption": str}``
  with each cell a string, a number, ``[mean, standard error]`` or ``None`` (printed "n/a"). Numbers are
  printed to 3 significant digits and ``results.json`` keeps them as printed. ``"seeds"``: the seeds used.
- Or, instead, a module function ``headline(result) -> {"verdicts", "summary", "seeds"}`` computed from the
  saved ``<name>.json`` alone, which also lets ``thermoai reproduce --rebuild`` remake the report from
  saved results without running anything (cold_posterior, thermo_crossover and emt_benchmark do this).
- Module constants: ``PAPER`` (``"posteriors"``, ``"thermo"``, ``"kfac"`` or ``"emt"``: the report's
  section; default from :data:`thermoai.experiments.report.PAPERS`), ``RUN_TIME = {"quick": s, "full": s}``
  (seconds on 2 CPU cores, shown by ``reproduce --help``), ``TITLE`` (one line for ``--help`` and the
  report; default the docstring's first sentence), ``REPRODUCE = {"smoke": {...}, "quick": {...},
  "full": {...}}`` (keyword arguments of ``run()`` per mode; a missing mode gets ``quick=True``, or
  ``quick=False`` for full). ``smoke`` is the tiniest run, used by ``--smoke`` and by the test of the whole
  report (tests/test_reproduce.py): keep it to seconds.
- A ``seed`` parameter of ``run()`` receives ``--seed N``.

The report runs each experiment in a staging folder and moves its files into the output folder only when
it has finished; it heads each page with the paper, the claim and the provenance and ends it with the
verdicts, so a module need not do this itself.
"""

EXPERIMENTS: dict[str, str] = {
    # name -> module path; each module has run(out_dir, quick) -> dict
    "cold_posterior": "thermoai.experiments.cold_posterior",
    "thermo_crossover": "thermoai.experiments.thermo_crossover",
    "emt_benchmark": "thermoai.experiments.emt_benchmark",
    "llm_uncertainty": "thermoai.experiments.llm_uncertainty",
    "kfac": "thermoai.experiments.kfac",
    "tbi_scaling": "thermoai.experiments.tbi_scaling",
    "sbc": "thermoai.experiments.sbc",
    "emt_perplexity": "thermoai.experiments.emt_perplexity",
}
