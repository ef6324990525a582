"""The kfac experiment: the quick run writes its report, numbers and plot, and its numbers hang together; and a
small version of the headline claim: KFAC(model) with its defaults in front of SGD with momentum, with only the
learning rate tuned, beats Adam with its learning rate tuned on the deep autoencoder at a fixed step budget."""

import dataclasses
import json
import math

import numpy as np
import pytest

from thermoai.experiments import EXPERIMENTS
from thermoai.experiments import kfac as E


SMALL = dataclasses.replace(E.SMOKE, seeds=(0, 1), steps=(("autoencoder", 10), ("mlp", 5), ("cnn", 5)), eval_every=5)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfac")
    return out, E.run(out, quick=True, config=SMALL)


def test_registered_with_the_report_protocol():
    assert EXPERIMENTS["kfac"] == "thermoai.experiments.kfac"
    assert E.PAPER == "kfac" and E.TITLE and set(E.RUN_TIME) == {"quick", "full"}
    assert set(E.REPRODUCE) == {"smoke", "quick", "full"} and E.REPRODUCE["smoke"]["config"] is E.SMOKE
    # full sizes are the Config defaults, quick and smoke shrink them
    assert E.REPRODUCE["full"] == {"quick": False, "config": E.REPORT} and E.sizes_name(E.REPORT) == "full"
    for cfg in (E.QUICK, E.SMOKE):
        for kind in E.MODELS:
            assert cfg.steps_for(kind) < E.Config().steps_for(kind) and cfg.steps_for(kind) % cfg.eval_every == 0


def test_writes_markdown_json_png(small):
    out, res = small
    md = (out / "kfac.md").read_text()
    for part in ("## (a) Digital K-FAC step-time breakdown", "## (b) Quantisation study", "## (c) Speed-up predictor",
                 "## KFAC(model) with its defaults against tuned Adam", "## Verdicts", "output-update 4 bits",
                 "### autoencoder", "| vit_s16 | 1024 | 2 |", "| 8192 |"):
        assert part in md, part
    data = json.loads((out / "kfac.json").read_text())
    assert set(data["studies"]) == set(E.MODELS) and data["quick"] is True
    png = (out / "kfac.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_headline_from_the_saved_numbers_alone(small):
    """--rebuild reads the verdicts from kfac.json: they must be those the run returned, one per claim, each
    with a verdict of the protocol and a reason; the table's cells are the study's numbers."""
    out, res = small
    saved = json.loads((out / "kfac.json").read_text())
    head = E.headline(saved)
    assert head["verdicts"] == res["verdicts"] and head["summary"] == res["summary"]
    assert head["seeds"] == [0, 1]
    assert len(head["verdicts"]) == 6
    for v in head["verdicts"]:
        assert v["verdict"] in ("reproduced", "partly", "not reproduced", "not tested here") and v["reason"]
    rows = {r[0]: r for r in head["summary"]["rows"]}
    assert set(rows) == set(E.MODELS)
    for kind, st in res["studies"].items():
        assert rows[kind][3] == pytest.approx(list(st["summary"]["adam"]["final_train_loss"]), nan_ok=True)
        assert rows[kind][4] == st["lr"]["kfac"]


def test_speedup_part_is_the_predictor(small):
    """Part (c) holds thermoai.optim.speedup's own numbers: no formula of its own in the experiment."""
    from thermoai.optim import speedup as S

    _, res = small
    sp = res["speedup"]
    for name, batch in SMALL.presets:
        for m in (1, 2):
            t = S.predict(S.PRESETS[name](), batch, method=m, kappa=SMALL.kappa, tol=SMALL.speedup_tol)
            got = sp["presets"][name][f"method{m}"]
            assert got["kfac_thermo_s"] == t.kfac_thermo_s and got["adam_s"] == t.adam_s
            assert got["speedup_vs_adam"]["0.75"] == t.speedup_vs_adam(0.75)
    assert [r["width"] for r in sp["sweep"]["method2"]] == [256, 512, 1024, 2048, 4096, 8192]
    t = S.predict(S.mlp([2048] * 5), SMALL.sweep_batch, method=2, kappa=SMALL.kappa, tol=SMALL.speedup_tol)
    assert sp["sweep"]["method2"][3]["speedup_vs_kfac"] == t.speedup_vs_kfac


def test_numbers_hang_together(small):
    _, res = small
    cfg = SMALL
    for kind, st in res["studies"].items():
        names = {"sgd", "adam", "kfac", "thermo|m1", "thermo|m2"} | {
            f"thermo|{q}|{b}" for q in E.QUANTISATIONS for b in cfg.bits}
        assert set(st["summary"]) == names
        sm = st["summary"]
        # the target is Adam's mean final loss, and the share is recomputed from the table's means
        assert st["target"] == pytest.approx(sm["adam"]["final_train_loss"][0])
        for name, (share, _) in st["share_kept"].items():
            a, k, q = (sm[n]["final_train_loss"][0] for n in ("adam", "kfac", name))
            if a > k and math.isfinite(q):
                assert share == pytest.approx((a - q) / (a - k))
            elif a <= k:
                assert math.isnan(share)  # no advantage to keep
        for name in names - {"sgd", "adam", "kfac"}:
            assert sm[name]["device_s_per_step"] > 0 and sm[name]["device_j_per_step"] > 0
        # curves: one per seed, evaluated every eval_every steps up to the budget
        for curve in st["curves"]["kfac"]:
            assert [s for s, _ in curve] == list(range(0, cfg.steps_for(kind) + 1, cfg.eval_every))
    for row in res["breakdown"]:
        assert sum(row["fraction"].values()) == pytest.approx(1.0)


def test_steps_to_and_share_kept():
    assert E.steps_to([(0, 5.0), (10, 3.0), (20, 1.0)], 3.0) == 10
    assert E.steps_to([(0, 5.0), (10, 4.0)], 3.0) is None
    s, se = E.share_kept((10.0, 0.1), (6.0, 0.1), (8.0, 0.2))
    assert s == pytest.approx(0.5) and se > 0
    # delta method: independent means, d s / d (a, k, q) = ((q - k), (a - q), -(a - k)) / (a - k)^2
    assert se == pytest.approx(math.sqrt((2 / 16 * 0.1) ** 2 + (2 / 16 * 0.1) ** 2 + (0.2 / 4) ** 2))
    assert math.isnan(E.share_kept((6.0, 0.1), (7.0, 0.1), (8.0, 0.2))[0])  # K-FAC worse than Adam: nothing to keep
    assert E.share_kept((10.0, 0.1), (6.0, 0.1), (math.inf, math.nan))[0] == -math.inf


def test_kfac_defaults_beat_tuned_adam_on_the_deep_autoencoder():
    """A small version of the report's claim: 150 steps, two seeds, each optimizer's learning rate tuned on a
    grid on seed 0; K-FAC's mean final training loss is lower than Adam's by more than three standard errors."""
    cfg = dataclasses.replace(E.QUICK, seeds=(0, 1), steps=(("autoencoder", 150),), eval_every=50,
                              lr_grid=(("adam", (3e-3, 1e-2, 3e-2)), ("kfac", (0.1, 0.3))))
    data = E.load_data(cfg)
    finals = {}
    for method in ("adam", "kfac"):
        lr, _ = E.tune("autoencoder", method, cfg, data)
        finals[method] = [E.train("autoencoder", method, lr, s, cfg, data)["final_train_loss"] for s in cfg.seeds]
    (ka, kse), (aa, ase) = E._mean_se(finals["kfac"]), E._mean_se(finals["adam"])
    assert aa - ka > 3 * math.sqrt(kse**2 + ase**2), (finals, ka, aa)
    assert np.isfinite(finals["kfac"]).all()
