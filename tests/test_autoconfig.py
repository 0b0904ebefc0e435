"""``preset="auto"`` (issue 10, item 2): the budgeted configuration search on the validation ratings.

Checked against independent expectations: candidate 0 scores what a plain ml-100k fit with the same
split and patience scores; the chosen candidate is the argmin of the recorded validation RMSEs; the
test ratings can be permuted without changing anything the search records; a zero budget tries only
the preset; the report, the printed table and the saved model carry the choice.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_ratings, write_mat

import glocalk.autoconfig
import glocalk.data.datasets
import glocalk.protocol
from glocalk.autoconfig import (
    AUTO,
    AUTO_PATIENCE,
    CANDIDATES,
    OWN_DATA_VAL_FRAC,
    Settings,
    candidate_overrides,
    own_data_defaults,
)
from glocalk.cli.app import main
from glocalk.errors import ConfigError
from glocalk.estimator import GLocalKRecommender
from glocalk.presets import PRESETS

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse"), pytest.mark.usefixtures("one_torch_thread")]

SHORT = {"epoch_p": 2, "epoch_f": 3, "iter_p": 1, "iter_f": 1, "threads": 1}


def frame(seed: int = 0, n_items: int = 40, n_users: int = 30) -> pd.DataFrame:
    """Low-rank ratings 1..5 at 40% of the pairs; string ids."""
    rng = np.random.default_rng(seed)
    full = np.clip(np.round(3 + rng.normal(0, 1, (n_items, 2)) @ rng.normal(0, 0.7, (2, n_users))), 1, 5)
    items, users = np.nonzero(rng.random((n_items, n_users)) < 0.4)
    return pd.DataFrame({"user": [f"u{u}" for u in users], "item": [f"i{i}" for i in items],
                         "rating": full[items, users]})


@pytest.fixture(scope="module")
def data():
    df = frame()
    test = df.sample(frac=0.15, random_state=0)
    return df.drop(test.index), test


@pytest.fixture(scope="module")
def auto_model(data):
    train, test = data
    return GLocalKRecommender("auto", val_frac=0.2, budget=60, **SHORT).fit(train, test=test)


def _val_selected_rmse(history: list[dict]) -> float:
    """The lowest validation RMSE over the fine-tuning epochs (the epoch a run hands over)."""
    return min(r["val_rmse"] for r in history if r["stage"] == 2)


def test_the_candidates_start_with_the_preset_and_drop_what_the_user_fixed():
    assert CANDIDATES[0] == {}
    assert candidate_overrides(set())[0] == {} and len(candidate_overrides(set())) == len(CANDIDATES)
    fixed = candidate_overrides({"n_hid"})
    assert fixed == [{}, {"output_bias": "mean"}, {"lambda_2": 50.0}, {"output_bias": "mean", "lambda_2": 50.0},
                     {"lambda_2": 100.0}, {"lambda_2": 200.0}]


def test_candidate_0_is_the_preset_and_the_chosen_one_has_the_lowest_validation_rmse(auto_model, data):
    auto = auto_model.auto_.json_entry()
    assert len(auto["candidates"]) == len(CANDIDATES) and not auto["stopped_by_budget"]
    assert auto["candidates"][0]["params"] == {}
    train, _ = data
    plain = GLocalKRecommender("ml-100k", val_frac=0.2, patience=AUTO_PATIENCE, **SHORT).fit(train)
    assert auto["candidates"][0]["val_rmse"] == pytest.approx(_val_selected_rmse(plain.history_[1]), rel=1e-9)
    rmses = [c["val_rmse"] for c in auto["candidates"]]
    assert auto["chosen"] == int(np.argmin(rmses))
    chosen = auto["candidates"][auto["chosen"]]
    # The model is the chosen candidate's own run, with its hyperparameters.
    assert _val_selected_rmse(auto_model.history_[1]) == pytest.approx(chosen["val_rmse"], rel=1e-12)
    expected = {**PRESETS["ml-100k"], **SHORT, **chosen["params"], "patience": AUTO_PATIENCE}
    assert {k: auto_model.model_.hyperparameters[k] for k in expected} == expected


def test_the_test_set_chooses_nothing(auto_model, data):
    train, test = data
    shuffled = test.assign(rating=np.random.default_rng(5).permutation(test["rating"].to_numpy()))
    other = GLocalKRecommender("auto", val_frac=0.2, budget=60, **SHORT).fit(train, test=shuffled)
    a, b = auto_model.auto_.json_entry(), other.auto_.json_entry()
    assert [c["val_rmse"] for c in a["candidates"]] == [c["val_rmse"] for c in b["candidates"]]
    assert a["chosen"] == b["chosen"]
    assert auto_model.metrics_["rmse"] != other.metrics_["rmse"], "the permuted test set is scored differently"


def test_a_zero_budget_trains_only_the_preset(data):
    train, _ = data
    labels = set()
    model = GLocalKRecommender("auto", val_frac=0.2, budget=0, n_ensemble=2, **SHORT).fit(
        train, on_epoch=lambda label, rec: labels.add(label))
    assert labels == {"1 (candidate 0)", 2}, "the search's epochs are labelled with the candidate"
    auto = model.auto_.json_entry()
    assert [c["params"] for c in auto["candidates"]] == [{}] and auto["stopped_by_budget"] and auto["chosen"] == 0
    assert [m["seed"] for m in model.members_] == [1, 2], "the other seeds are trained with the chosen values"
    assert model.model_.hyperparameters["lambda_2"] == PRESETS["ml-100k"]["lambda_2"]


def test_auto_settings_that_cannot_work_are_config_errors():
    with pytest.raises(ConfigError, match="--val-frac"):
        GLocalKRecommender("auto")
    with pytest.raises(ConfigError, match="--budget"):
        GLocalKRecommender("auto", val_frac=0.1, budget=-1)
    with pytest.raises(ConfigError, match="--preset auto"):
        GLocalKRecommender("ml-100k", budget=5)


CLI_SHORT = ["--epoch-p", "2", "--epoch-f", "3", "--iter-p", "1", "--iter-f", "1", "--n-hid", "16",
             "--threads", "1", "--quiet"]


def test_glocalk_fit_preset_auto_records_prints_and_saves_a_model_that_loads(data, tmp_path, capsys):
    train, test = data
    train.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "m"
    code = main(["fit", str(tmp_path / "train.csv"), "--preset", "auto", "--val-frac", "0.2", "--budget", "30",
                 *CLI_SHORT, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    auto = json.loads((out / "report.json").read_text())["auto"]
    n = len(candidate_overrides({"n_hid"}))  # --n-hid is fixed by the user: only lambda_2 is searched
    assert len(auto["candidates"]) == n and auto["budget_minutes"] == 30 and auto["stopped_by_budget"] is False
    assert set(auto["candidates"][0]) >= {"params", "val_rmse", "epochs", "seconds"}
    assert "--preset auto" in printed and printed.count("<- chosen") == 1
    model = GLocalKRecommender.load(out)
    pred = model.predict(test["user"].to_numpy()[:5], test["item"].to_numpy()[:5])
    assert np.all(np.isfinite(pred)) and np.all((pred >= 1) & (pred <= 5))


def test_glocalk_fit_preset_auto_without_validation_is_refused(data, tmp_path, capsys):
    train, _ = data
    train.to_csv(tmp_path / "train.csv", index=False)
    code = main(["fit", str(tmp_path / "train.csv"), "--preset", "auto", *CLI_SHORT, "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "--preset auto" in err and "--val-frac" in err
    assert not (tmp_path / "m").exists()


def test_glocalk_train_preset_auto_records_the_search_in_summary_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(glocalk.data.datasets, "load_dataset", lambda *a, **k: tiny_ratings(name="ml-100k"))
    out = tmp_path / "run"
    code = main(["train", "--dataset", "ml-100k", "--preset", "auto", "--val-frac", "0.1", "--budget", "30",
                 "--seed", "1", "2", *CLI_SHORT, "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    auto = summary["auto"]
    assert auto["candidates"][0]["params"] == {} and len(auto["candidates"]) == len(candidate_overrides({"n_hid"}))
    rmses = [c["val_rmse"] for c in auto["candidates"]]
    assert auto["chosen"] == int(np.argmin(rmses))
    chosen = auto["candidates"][auto["chosen"]]["params"]
    expected = {**PRESETS["ml-100k"], "n_hid": 16, "epoch_p": 2, "epoch_f": 3, "iter_p": 1, "iter_f": 1,
                "patience": AUTO_PATIENCE, **chosen}
    assert {k: summary["hyperparameters"][k] for k in expected} == expected
    assert summary["seeds"] == [1, 2] and summary["complete"]
    assert "<- chosen" in capsys.readouterr().out


@pytest.mark.parametrize("args, named", [(["--preset", "auto"], "--val-frac"),
                                          (["--budget", "3", "--val-frac", "0.1"], "--preset auto")])
def test_glocalk_train_auto_flags_that_do_not_go_together(tmp_path, capsys, monkeypatch, args, named):
    monkeypatch.setattr(glocalk.data.datasets, "load_dataset", lambda *a, **k: tiny_ratings(name="ml-100k"))
    code = main(["train", "--dataset", "ml-100k", *args, *CLI_SHORT, "--out", str(tmp_path / "run")])
    assert code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# -- the own-data default (no preset): the search, a validation split, the fallback ------------------------


def test_own_data_defaults_fill_in_only_what_no_preset_names():
    assert own_data_defaults(None, None, None) == Settings(AUTO, OWN_DATA_VAL_FRAC, "blend")
    assert own_data_defaults(None, 0.25, "none") == Settings(AUTO, 0.25, "none")
    # A named preset runs exactly as given: no validation split, no fallback unless asked.
    assert own_data_defaults("ml-100k", None, None) == Settings("ml-100k", None, "none")
    assert own_data_defaults("auto", 0.2, None) == Settings("auto", 0.2, "none")


def test_the_estimators_default_searches_on_a_tenth_and_answers_with_the_blend(data, tmp_path):
    train, test = data
    model = GLocalKRecommender(budget=0, **SHORT).fit(train, test=test)
    assert model.auto_ is not None and len(model.auto_.candidates) == 1  # a zero budget: the preset only
    # 10% of the training ratings held out for validation (seeded, rounded).
    assert model.model_.val.nnz == round(0.1 * len(train))
    record = model.comparison_
    assert record["fallback"] == "blend" and record["answer"] == "blend" and not model.scorer_.biases_answer
    assert model.scorer_.alpha == record["blend"]["alpha"] == model.model_.fallback.alpha
    assert record["blend"]["val"]["rmse"] <= min(record["biases"]["val"]["rmse"], record["glocalk"]["val"]["rmse"])
    # The directory records the settings as run, and reloads as them.
    model.save(tmp_path / "m")
    estimator = json.loads((tmp_path / "m" / "model.json").read_text())["estimator"]
    assert (estimator["preset"], estimator["val_frac"], estimator["fallback"]) == ("auto", 0.1, "blend")
    loaded = GLocalKRecommender.load(tmp_path / "m")
    assert np.array_equal(loaded.predict(test["user"], test["item"]), model.predict(test["user"], test["item"]))


def test_glocalk_fit_without_a_preset_runs_the_own_data_default(data, tmp_path, capsys):
    train, _ = data
    train.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "m"
    assert main(["fit", str(tmp_path / "train.csv"), "--budget", "0", *CLI_SHORT, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "auto" and report["val_frac"] == 0.1
    assert report["comparison"]["fallback"] == "blend" and len(report["auto"]["candidates"]) == 1
    assert "GLocal-K vs the user + item bias model" in capsys.readouterr().out


def test_glocalk_train_mat_without_a_preset_runs_the_own_data_default(tmp_path, capsys, monkeypatch):
    df = frame(seed=3)
    is_test = np.random.default_rng(0).random(len(df)) < 0.15
    write_mat(tmp_path / "own.mat", df, is_test)
    out = tmp_path / "run"
    runs = []
    for module in (glocalk.autoconfig, glocalk.protocol):  # count the trainings, wherever they start
        monkeypatch.setattr(module, "train_run", lambda *a, _run=glocalk.protocol.train_run, **k: runs.append(1)
                            or _run(*a, **k))
    assert main(["train", "--mat", str(tmp_path / "own.mat"), "--budget", "0", "--seed", "1", "2", *CLI_SHORT,
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_frac"] == 0.1 and len(summary["auto"]["candidates"]) == 1
    # The wall time counts the search, which trained seed 1 (it was 0 + seed 2's alone before).
    assert summary["wall_time_s"] >= summary["auto"]["candidates"][0]["seconds"] + summary["runs"][1]["wall_time_s"]
    # The chosen candidate IS seed 1's run (trained on that seed's split): 1 candidate + seed 2, not 3 trainings;
    # and its paper rows report test epochs.
    assert len(runs) == 2
    seed1 = summary["runs"][0]
    assert seed1["val_selected"]["val_rmse"] == summary["auto"]["candidates"][0]["val_rmse"]
    log = (out / "seed-1" / "epochs.jsonl").read_text()
    assert seed1["best"]["rmse"] > 0 and log.count("\n") == seed1["epochs_run"]
    comparison = summary["comparison"]
    assert [s["seed"] for s in comparison["per_seed"]] == [1, 2]
    # GLocal-K's side is each seed's validation-selected epoch, averaged.
    for name, key in (("val", "val_rmse"), ("test", "rmse")):
        expected = np.mean([run["val_selected"][key] for run in summary["runs"]])
        assert comparison["glocalk"][name]["rmse"] == pytest.approx(expected)
    winner = "biases" if comparison["biases"]["val"]["rmse"] < comparison["glocalk"]["val"]["rmse"] else "glocalk"
    assert comparison["answer"] == winner and comparison["answer_test"] == comparison[winner]["test"]
    assert comparison["fallback"] == "baseline", "train cannot blend: its own-data default is the better of two"
    assert "GLocal-K vs the user + item bias model" in capsys.readouterr().out


def test_glocalk_train_on_a_paper_dataset_without_a_preset_is_the_paper_protocol(tmp_path, monkeypatch):
    monkeypatch.setattr(glocalk.data.datasets, "load_dataset", lambda *a, **k: tiny_ratings(name="ml-100k"))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ml-100k", *CLI_SHORT, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_frac"] is None and "auto" not in summary and "comparison" not in summary
    assert summary["hyperparameters"]["lambda_2"] == PRESETS["ml-100k"]["lambda_2"]
