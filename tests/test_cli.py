"""The ``thermoai`` command: ``reproduce`` drives the experiments registry, ``memory`` reaches its own parser."""

from thermoai.cli import main
from thermoai.experiments import EXPERIMENTS


def test_reproduce_writes_the_report_of_the_named_experiment(tmp_path):
    assert main(["reproduce", "thermo_crossover", "--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "thermo_crossover.md").read_text()
    assert "crossover" in report.lower()
    assert (tmp_path / "thermo_crossover.json").stat().st_size > 0


def test_reproduce_refuses_an_unknown_experiment_and_names_the_choices(tmp_path, capsys):
    assert main(["reproduce", "no_such_experiment", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_experiment" in err and all(name in err for name in EXPERIMENTS)
    assert not any(tmp_path.iterdir())


def test_memory_help_reaches_the_memory_parser(capsys):
    assert main(["memory", "--help"]) == 0
    out = capsys.readouterr().out
    assert "build" in out and "ask" in out
