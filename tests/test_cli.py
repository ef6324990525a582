"""The ``thermoai`` command a user meets first: version, help, ``reproduce`` and its refusals, ``memory``."""

import os

import pytest

from thermoai import __version__
from thermoai.cli import main
from thermoai.experiments import EXPERIMENTS


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"thermoai {__version__}"


def test_top_level_help_says_in_plain_words_what_each_command_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "reproduce" in out and "memory" in out and "verdict per paper" in out and "memory bank" in out
    assert "``" not in out and ":mod:" not in out and ":func:" not in out


def test_reproduce_help_lists_every_experiment_with_its_run_times(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    for name in EXPERIMENTS:
        assert name in lines, name
    # the three experiments that declare their run times show them as "quick / full"
    for name in ("cold_posterior", "thermo_crossover", "emt_benchmark"):
        assert " / " in lines[name] and "?" not in lines[name].split(" / ")[0], lines[name]
    assert "--quick" in out and "--full" in out and "--seed" in out and "--out" in out


def test_reproduce_writes_the_report_of_the_named_experiment(tmp_path, capsys):
    assert main(["reproduce", "thermo_crossover", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "thermo_crossover.md").read_text()
    assert "crossover" in page.lower()
    assert (tmp_path / "thermo_crossover.json").stat().st_size > 0
    assert "### thermo_crossover" in (tmp_path / "report.md").read_text()
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"report: {tmp_path / 'report.md'}")


def test_reproduce_refuses_an_unknown_experiment_and_names_the_choices(tmp_path, capsys):
    assert main(["reproduce", "no_such_experiment", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_experiment" in err and all(name in err for name in EXPERIMENTS)
    assert not any(tmp_path.iterdir())


def test_reproduce_refuses_an_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "report.md"
    target.write_text("keep me")
    assert main(["reproduce", "thermo_crossover", "--quick", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err and str(target) in err
    assert target.read_text() == "keep me"


def test_reproduce_refuses_an_out_it_cannot_create(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main(["reproduce", "thermo_crossover", "--quick", "--out", str(tmp_path / "a_file" / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --out") and "cannot write" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_reproduce_refuses_a_read_only_out(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["reproduce", "thermo_crossover", "--quick", "--out", str(folder)]) == 2
    finally:
        folder.chmod(0o700)
    assert "cannot write" in capsys.readouterr().err and not any(folder.iterdir())


def test_memory_help_reaches_the_memory_parser(capsys):
    assert main(["memory", "--help"]) == 0
    out = capsys.readouterr().out
    assert "build" in out and "ask" in out
