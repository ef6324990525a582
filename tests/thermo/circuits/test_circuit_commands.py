"""``thermoai thermo logistic``: the demo runs end to end through the top-level command and prints the
comparison; bad arguments are refused."""

import re

from thermoai.cli import main


def test_thermo_logistic_prints_accuracy_calibration_device_cost_and_digital_wall_time(capsys):
    assert main(["thermo", "logistic", "--device", "ideal", "--chains", "2", "--reads", "2", "--mala-steps", "30",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "ECE" in out and "NLL" in out
    circuit = re.search(r"^circuit\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.e+-]+) s device, ([\d.e+-]+) J", out, re.M)
    mala = re.search(r"^MALA\s+([\d.]+)\s+([\d.]+)\s+([\d.]+).*\s([\d.]+) s \(acceptance", out, re.M)
    assert circuit and mala, out
    assert 0.8 < float(circuit.group(1)) <= 1 and 0.8 < float(mala.group(1)) <= 1  # test accuracy
    assert float(circuit.group(4)) > 0 and float(circuit.group(5)) > 0 and float(mala.group(4)) > 0


def test_thermo_help_and_bad_arguments(capsys):
    try:
        main(["thermo", "--help"])
    except SystemExit as e:
        assert e.code == 0
    assert "logistic" in capsys.readouterr().out
    assert main(["thermo", "logistic", "--chains", "0", "--no-progress"]) == 2
    assert "--chains must be a positive integer" in capsys.readouterr().out
