"""The papers' headline results, reproduced. One module per result.

Each module exposes ``run(out_dir: pathlib.Path, quick: bool = False) -> dict`` which writes
``<name>.md`` (a table and the findings), ``<name>.json`` (the numbers) and, where a picture helps,
``<name>.png`` into ``out_dir`` and returns the numbers. ``quick`` shrinks the work for tests.
``thermoai reproduce`` runs them in the order of :data:`EXPERIMENTS`.
"""

EXPERIMENTS: dict[str, str] = {
    # name -> module path; each module has run(out_dir, quick) -> dict
    "cold_posterior": "thermoai.experiments.cold_posterior",
    "thermo_crossover": "thermoai.experiments.thermo_crossover",
    "emt_benchmark": "thermoai.experiments.emt_benchmark",
    "tbi_scaling": "thermoai.experiments.tbi_scaling",
}
