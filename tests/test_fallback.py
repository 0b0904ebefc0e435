"""Never silently worse than a bias model (issue 10, item 3): the comparison every fit makes, the
``fallback="baseline"`` answer, its model directory, and what ``glocalk fit`` tells the user.

Two hand-made data sets with known winners:
- "biases": ratings = 3 + item bias + user bias + small noise (no interaction at all), and GLocal-K
  trained with a budget of one L-BFGS iteration per stage: the bias model is the true model
  class and GLocal-K has not fitted anything, so the bias model must win on validation;
- "blocks": the rank-2 block matrix of tests/test_behaviour.py (A-X 5, A-Y 3, B-X 1, B-Y 2), whose
  interaction of 0.75 in every block no additive model can fit (its best additive fit is 0.75
  off everywhere), while GLocal-K fits it within 0.5: GLocal-K must win.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from glocalk.baselines import Biases, entries
from glocalk.cli.app import main
from glocalk.data.matrix import RatingMatrix
from glocalk.errors import CheckpointError, ConfigError
from glocalk.estimator import GLocalKRecommender

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse"), pytest.mark.usefixtures("one_torch_thread")]

TINY_BUDGET = {"n_hid": 8, "epoch_p": 1, "epoch_f": 1, "iter_p": 1, "iter_f": 1, "threads": 1}
BLOCKS = np.array([[5.0, 3.0], [1.0, 2.0]])


def bias_frame(seed: int = 0, n_items: int = 60, n_users: int = 50) -> pd.DataFrame:
    """3 + b_item + b_user + N(0, 0.2) at 40% of the pairs; string ids."""
    rng = np.random.default_rng(seed)
    b_item, b_user = rng.normal(0, 0.8, n_items), rng.normal(0, 0.5, n_users)
    items, users = np.nonzero(rng.random((n_items, n_users)) < 0.4)
    rating = 3 + b_item[items] + b_user[users] + rng.normal(0, 0.2, len(items))
    return pd.DataFrame({"user": [f"u{u}" for u in users], "item": [f"i{i}" for i in items],
                         "rating": np.round(rating, 2)})


def block_frame(n: int = 60) -> pd.DataFrame:
    """Every (user, item) pair of the block matrix, 70% of them (seeded)."""
    group = (np.arange(n) >= n // 2).astype(int)
    full = BLOCKS[group[:, None], group[None, :]]
    items, users = np.nonzero(np.random.default_rng(1).random((n, n)) < 0.7)
    return pd.DataFrame({"user": users, "item": items, "rating": full[items, users]})


@pytest.fixture(scope="module")
def bias_data():
    df = bias_frame()
    test = df.sample(frac=0.15, random_state=0)
    return df.drop(test.index), test


@pytest.fixture(scope="module")
def loser(bias_data):
    train, test = bias_data
    return GLocalKRecommender("ml-100k", val_frac=0.2, fallback="baseline", **TINY_BUDGET).fit(train, test=test)


@pytest.fixture(scope="module")
def winner():
    model = GLocalKRecommender("ml-100k", val_frac=0.15, fallback="baseline", n_hid=20, lambda_2=3.0, lambda_s=0.006,
                               epoch_p=12, epoch_f=12, threads=1, seed=0)
    return model.fit(block_frame())


def _biases_on_the_same_split(model: GLocalKRecommender) -> Biases:
    """baselines.Biases fitted here on the model's own training and validation ratings."""
    saved = model.model_
    ref = Biases()
    ref.fit(RatingMatrix(saved.input, val=saved.val, rating_scale=saved.rating_scale))
    return ref


def test_the_bias_model_wins_on_bias_data_and_the_fallback_answers_with_it(loser):
    c = loser.comparison_
    assert c["validation"] and c["winner_on_validation"] == "biases" and c["answer"] == "biases"
    assert "loses" in c["warning"] and f"{c['biases']['val']['rmse']:.4f}" in c["warning"]
    ref = _biases_on_the_same_split(loser)
    assert (c["biases"]["reg_item"], c["biases"]["reg_user"]) == (ref.info["reg_item"], ref.info["reg_user"])
    # The saved model's answers are the Biases model's predictions (matrices hold ratings + offset,
    # as some ratings here are <= 0).
    assert loser.offset_ > 0, "test setup: ratings <= 0, so the units matter"
    items, users, internal = entries(loser.model_.val)
    truth = internal - loser.offset_
    pred = loser.predict(loser.user_ids_[users], loser.item_ids_[items])
    np.testing.assert_allclose(pred, ref.predict(items, users) - loser.offset_, rtol=0, atol=1e-12)
    # The reported validation RMSE is the RMSE of those predictions against the held-out ratings.
    assert c["biases"]["val"]["rmse"] == pytest.approx(np.sqrt(np.mean((pred - truth) ** 2)), rel=1e-9)
    assert c["biases"]["val"]["n_rated"] == loser.model_.val.nnz


def test_the_comparison_reports_glocalk_as_training_scored_it_and_both_on_test(loser, bias_data):
    c = loser.comparison_
    member = loser.members_[0]
    logged = next(r for r in loser.history_[member["seed"]] if r["epoch"] == member["epoch"])
    assert c["glocalk"]["val"]["rmse"] == pytest.approx(logged["val_rmse"], rel=1e-4)
    assert c["glocalk"]["val"]["rmse"] > c["biases"]["val"]["rmse"]
    _, test = bias_data
    assert c["glocalk"]["test"]["n_rated"] + c["glocalk"]["test"]["n_skipped"] == len(test)
    # The fallback model answers the test set too: its metrics are the bias model's test figures.
    assert loser.metrics_["rmse"] == pytest.approx(c["biases"]["test"]["rmse"], rel=1e-12)


def test_glocalk_wins_on_block_data_and_keeps_answering(winner):
    c = winner.comparison_
    assert c["winner_on_validation"] == "glocalk" and c["answer"] == "glocalk" and "warning" not in c
    assert winner.model_.fallback.answer == "glocalk"
    # The withheld ratings are answered by GLocal-K: within 0.5 of the block value (an additive
    # model is 0.75 off on every block), so not by the bias model.
    items, users, truth = entries(winner.model_.val)
    pred = winner.predict(winner.user_ids_[users], winner.item_ids_[items])
    assert np.abs(pred - truth).max() < 0.5
    assert c["biases"]["val"]["rmse"] > 0.5


def test_a_fallback_model_directory_round_trips(loser, winner, tmp_path):
    for name, model in (("loser", loser), ("winner", winner)):
        model.save(tmp_path / name)
        back = GLocalKRecommender.load(tmp_path / name)
        meta = json.loads((tmp_path / name / "model.json").read_text())
        assert meta["fallback"]["answer"] == model.comparison_["answer"]
        assert meta["estimator"]["fallback"] == "baseline"
        users, items = model.user_ids_[:7], model.item_ids_[:7]
        np.testing.assert_array_equal(back.predict(users, items), model.predict(users, items))
        pd.testing.assert_frame_equal(back.recommend(users[0], 5), model.recommend(users[0], 5))
        unknown = model.predict(["nobody"], [items[0]], unknown="baseline")
        np.testing.assert_array_equal(back.predict(["nobody"], [items[0]], unknown="baseline"), unknown)


def test_without_a_fallback_the_model_directory_keeps_its_format(bias_data, tmp_path):
    train, _ = bias_data
    model = GLocalKRecommender("ml-100k", val_frac=0.2, **TINY_BUDGET).fit(train)
    assert model.comparison_["winner_on_validation"] == "biases" and model.comparison_["answer"] == "glocalk"
    assert "--fallback baseline would" in model.comparison_["warning"]
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert "fallback" not in meta and meta["estimator"]["fallback"] == "none"
    assert not any(k.startswith("fallback.") for k in load_file(tmp_path / "m" / "weights.safetensors"))
    # GLocal-K answers: not the bias model's predictions.
    ref = _biases_on_the_same_split(model)
    items, users, _ = entries(model.model_.val)
    pred = model.predict(model.user_ids_[users], model.item_ids_[items])
    assert np.abs(pred - (ref.predict(items, users) - model.offset_)).max() > 0.1


def test_without_validation_nothing_is_compared(bias_data):
    train, test = bias_data
    model = GLocalKRecommender("ml-100k", **TINY_BUDGET).fit(train, test=test)
    assert model.comparison_["validation"] is False and "--val-frac" in model.comparison_["note"]
    assert "glocalk" not in model.comparison_ and "winner_on_validation" not in model.comparison_


def test_a_model_directory_from_before_issue_10_loads_as_glocalk():
    model = GLocalKRecommender.load(Path(__file__).parent / "data" / "model-before-issue-9")
    assert model.model_.fallback is None and model.settings().fallback == "none" and not model.scorer_.biases_answer


def test_a_damaged_fallback_is_a_checkpoint_error(loser, tmp_path):
    loser.save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    tensors = load_file(weights)
    del tensors["fallback.b_user"]
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match="fallback.b_user"):
        GLocalKRecommender.load(tmp_path / "m")


def test_bad_fallback_settings_are_config_errors():
    with pytest.raises(ConfigError, match="--fallback"):
        GLocalKRecommender("ml-100k", val_frac=0.2, fallback="blended")
    with pytest.raises(ConfigError, match="--val-frac"):
        GLocalKRecommender("ml-100k", fallback="baseline")


# -- glocalk fit ---------------------------------------------------------------------------------

CLI_TINY = ["--preset", "ml-100k",
        "--n-hid", "8", "--epoch-p", "1", "--epoch-f", "1", "--iter-p", "1", "--iter-f", "1", "--threads", "1",
            "--quiet"]


@pytest.fixture(scope="module")
def csv_files(bias_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("fallback-cli")
    train, test = bias_data
    train.to_csv(d / "train.csv", index=False)
    test.to_csv(d / "test.csv", index=False)
    return d


def test_glocalk_fit_says_that_glocalk_loses_and_records_it(csv_files, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(["fit", str(csv_files / "train.csv"), "--test", str(csv_files / "test.csv"), "--val-frac", "0.2",
                 "--fallback", "baseline", *CLI_TINY, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "WARNING: GLocal-K loses to the user + item bias model on validation" in printed
    assert "answers with the bias model" in printed
    report = json.loads((out / "report.json").read_text())
    c = report["comparison"]
    assert c["winner_on_validation"] == "biases" and c["answer"] == "biases" and c["warning"]
    assert {"val", "test"} <= set(c["glocalk"]) and {"val", "test"} <= set(c["biases"])
    assert json.loads((out / "model.json").read_text())["fallback"]["answer"] == "biases"


def test_glocalk_fit_without_fallback_still_compares_and_says_so(csv_files, tmp_path, capsys):
    code = main(["fit", str(csv_files / "train.csv"), "--val-frac", "0.2", *CLI_TINY, "--out", str(tmp_path / "a")])
    printed = capsys.readouterr().out
    assert code == 0 and "WARNING: GLocal-K loses" in printed and "--fallback baseline would" in printed
    c = json.loads((tmp_path / "a" / "report.json").read_text())["comparison"]
    assert c["winner_on_validation"] == "biases" and c["answer"] == "glocalk" and c["fallback"] == "none"
    assert "test" not in c["glocalk"], "no test set: nothing on test"
    assert "fallback" not in json.loads((tmp_path / "a" / "model.json").read_text())
    code = main(["fit", str(csv_files / "train.csv"), *CLI_TINY, "--out", str(tmp_path / "b")])
    printed = capsys.readouterr().out
    assert code == 0 and "no validation split" in printed and "--val-frac" in printed
    c = json.loads((tmp_path / "b" / "report.json").read_text())["comparison"]
    assert c == {"validation": False, "note": c["note"]} and "--val-frac" in c["note"]


def test_glocalk_fit_fallback_without_validation_is_refused(csv_files, tmp_path, capsys):
    code = main(["fit", str(csv_files / "train.csv"), "--fallback", "baseline", *CLI_TINY,
                 "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "--fallback baseline" in err and "--val-frac" in err
    assert not (tmp_path / "m").exists()
