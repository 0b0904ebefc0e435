"""The Optuna search: validation only, best trial, outputs, fixed hyperparameters, CLI."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("optuna")

from conftest import tiny_ratings  # noqa: E402

import glocalk.compare.tune as tune_mod  # noqa: E402
import glocalk.protocol as protocol  # noqa: E402
from glocalk.compare.tune import SEARCH_SPACE, describe_space, tune  # noqa: E402
from glocalk.data.matrix import RatingMatrix  # noqa: E402

FIXED = {"n_hid": 8, "epoch_p": 2, "epoch_f": 2, "iter_p": 2, "iter_f": 2}


def tiny_data(seed: int = 0) -> RatingMatrix:
    return tiny_ratings(60, 50, 0.35, seed)


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune")
    seen = []

    class Recording(protocol.Trainer):
        def __init__(self, data, *args, **kwargs):
            seen.append(data.test is None)
            super().__init__(data, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(protocol, "Trainer", Recording)  # the runner builds every trainer
    try:
        report = tune(tiny_data(), n_trials=3, out_dir=out, val_frac=0.1, seed=1, fixed=FIXED, patience=None,
                      prune=False, command=["test"])
    finally:
        mp.undo()
    return out, report, seen


def test_best_params_come_from_the_trial_with_the_lowest_validation_rmse(search):
    out, report, _ = search
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 3
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = min(complete, key=lambda t: t["val_rmse"])
    assert report["best_trial"] == best["number"]
    assert report["best_val_rmse"] == best["val_rmse"]
    assert report["best_params"] == best["params"]
    assert set(best["params"]) == set(SEARCH_SPACE) - set(FIXED)  # iter_f and n_hid are fixed here
    assert {k: report["params"][k] for k in best["params"]} == best["params"]
    assert {k: report["params"][k] for k in FIXED} == FIXED


def test_outputs(search):
    out, report, _ = search
    assert json.loads((out / "best.json").read_text())["best_trial"] == report["best_trial"]
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert float(rows[report["best_trial"]]["val_rmse"]) == pytest.approx(report["best_val_rmse"])
    assert report["search_space"] == describe_space({k: v for k, v in SEARCH_SPACE.items() if k not in FIXED})
    assert report["search_space"]["lambda_2"] == "log-uniform [1, 200]"


def test_the_search_never_sees_the_test_set(search):
    _, report, seen = search
    # Three search trainers without the test split; the final one-off test evaluation has it.
    assert seen == [True, True, True, False]
    test = report["test"]
    assert test["trial"] == report["best_trial"]
    # The tested model is the chosen trial's own: same validation RMSE as its trial.
    assert test["val_rmse"] == pytest.approx(report["best_val_rmse"], rel=1e-6)
    assert 0 < test["rmse"] < 2


def test_pruning_and_early_stopping_run(tmp_path):
    report = tune(tiny_data(), n_trials=4, out_dir=tmp_path, val_frac=0.1, seed=2, fixed={**FIXED, "epoch_f": 4},
                  patience=1, prune=True, evaluate_test=False)
    assert report["test"] is None and report["n_trials"] == 4
    trials = json.loads((tmp_path / "trials.json").read_text())["trials"]
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in trials)
    assert all(t["epochs_run"] <= 6 for t in trials if t["state"] == "COMPLETE")


def test_cli_tune(monkeypatch, tmp_path, capsys):
    import glocalk.data.datasets
    from glocalk.cli.app import main

    monkeypatch.setattr(glocalk.data.datasets, "load_dataset", lambda name, data_dir=None, download=False: tiny_data())
    rc = main(["tune", "--dataset", "tiny", "--trials", "2", "--val-frac", "0.1", "--n-hid", "8", "--epoch-p", "2",
               "--epoch-f", "2", "--iter-p", "2", "--iter-f", "2", "--lambda-2", "5", "--patience", "0",
               "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "best: trial" in printed and "train it: glocalk train --dataset tiny" in printed
    report = json.loads((tmp_path / "best.json").read_text())
    assert report["params"]["lambda_2"] == 5 and "lambda_2" not in report["best_params"]
    assert report["patience"] is None


def test_preset_point_keeps_only_values_inside_the_space():
    space = {"lambda_2": ("log", 1.0, 200.0), "dot_scale": ("log", 0.25, 4.0), "n_hid": ("categorical", (250, 500)),
             "iter_f": ("categorical", (5, 10))}
    preset = {"lambda_2": 20.0, "dot_scale": 8.0, "n_hid": 500, "iter_f": 7, "epoch_p": 30}
    # dot_scale 8 is outside [0.25, 4] and iter_f 7 is not a choice: both are left to the sampler.
    assert tune_mod.preset_point(preset, space) == {"lambda_2": 20.0, "n_hid": 500}


def test_trial_zero_is_the_preset(tmp_path):
    from glocalk.presets import PRESETS

    data = tiny_data()
    data = RatingMatrix(data.train, data.test, rating_scale=data.rating_scale, name="ml-100k")
    report = tune(data, n_trials=1, out_dir=tmp_path, val_frac=0.1, seed=3, fixed=FIXED, patience=None, prune=False,
                  evaluate_test=False)
    trial0 = json.loads((tmp_path / "trials.json").read_text())["trials"][0]["params"]
    preset = PRESETS["ml-100k"]
    assert trial0 == {"lambda_2": preset["lambda_2"], "lambda_s": preset["lambda_s"], "dot_scale": preset["dot_scale"]}
    assert report["best_params"] == trial0


def test_preset_trial_can_be_switched_off(tmp_path):
    from glocalk.presets import PRESETS

    data = tiny_data()
    data = RatingMatrix(data.train, data.test, rating_scale=data.rating_scale, name="ml-100k")
    tune(data, n_trials=1, out_dir=tmp_path, val_frac=0.1, seed=3, fixed=FIXED, patience=None, prune=False,
         evaluate_test=False, preset_first=False)
    trial0 = json.loads((tmp_path / "trials.json").read_text())["trials"][0]["params"]
    assert trial0["lambda_2"] != PRESETS["ml-100k"]["lambda_2"]
