"""GLocalKRecommender: fit / predict / recommend / save / load, resume, ensembles, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from glocalk.data.matrix import RatingMatrix
from glocalk.data.readers import read_ratings, to_rating_matrix
from glocalk.data.synthetic import example_ratings
from glocalk.errors import CheckpointError, DataError, TrainingError
from glocalk.estimator import GLocalKRecommender

# Tiny settings: the suite runs on 2 shared cores.
TINY = dict(n_hid=8, n_dim=3, epoch_p=2, epoch_f=2, iter_p=3, iter_f=3, threads=1)



@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return example_ratings(n_users=30, n_items=40, density=0.35, seed=3)


@pytest.fixture(scope="module")
def fitted(data) -> GLocalKRecommender:
    train, test = data
    return GLocalKRecommender("ml-100k", val_frac=0.1, **TINY).fit(train, test=test)


def test_fit_dataframe_with_string_ids(fitted, data):
    train, test = data
    assert fitted.user_ids_.dtype == object and isinstance(fitted.user_ids_[0], str)
    pred = fitted.predict(test["user"], test["item"])
    assert pred.shape == (len(test),) and np.all((pred >= 1) & (pred <= 5))
    one = fitted.predict(test["user"].iloc[0], test["item"].iloc[0])
    assert isinstance(one, float) and one == pytest.approx(pred[0])
    assert set(fitted.metrics_) >= {"rmse", "mae", "ndcg", "n_rated"} and fitted.metrics_["n_rated"] == len(test)
    assert fitted.members_[0]["stage"] == 2 and len(fitted.history_[1]) == 4
    # A DataFrame of pairs works too.
    assert np.array_equal(fitted.predict(test[["user", "item"]]), pred)


def test_evaluate_matches_metrics_of_fit(fitted, data):
    _, test = data
    assert fitted.evaluate(test) == pytest.approx(fitted.metrics_)


def test_headerless_double_colon_file(tmp_path):
    train, _ = example_ratings(n_users=20, n_items=25, density=0.4, seed=1)
    path = tmp_path / "ratings.dat"
    lines = [f"{int(u[1:])}::{int(i[1:])}::{int(r)}::{t}" for u, i, r, t in train.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n")
    model = GLocalKRecommender("ml-100k", **TINY).fit(path)
    assert model.user_ids_.dtype.kind == "i" and len(model.user_ids_) == train["user"].nunique()
    # Integer ids are matched from ints and from their text.
    u, i = int(train["user"].iloc[0][1:]), int(train["item"].iloc[0][1:])
    assert model.predict(u, i) == model.predict(str(u), str(i))


def test_parquet_file(tmp_path, data):
    train, test = data
    path = tmp_path / "ratings.parquet"
    train.to_parquet(path)
    model = GLocalKRecommender("ml-100k", **TINY).fit(path, test=test)
    assert model.metrics_["n_rated"] == len(test)


def test_save_load_round_trip_identical(tmp_path, fitted, data):
    _, test = data
    fitted.save(tmp_path / "m")
    loaded = GLocalKRecommender.load(tmp_path / "m")
    assert np.array_equal(loaded.predict(test["user"], test["item"]), fitted.predict(test["user"], test["item"]))
    pd.testing.assert_frame_equal(loaded.recommend("u001", 5), fitted.recommend("u001", 5))
    assert list(loaded.user_ids_) == list(fitted.user_ids_) and isinstance(loaded.item_ids_[0], str)
    assert loaded.metrics_ == fitted.metrics_ and loaded.members_ == fitted.members_
    # The directory records the settings as run (defaults filled in): the same settings, the same parameters.
    assert loaded.settings() == fitted.settings()
    assert loaded.config() == fitted.config()
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["kind"] == "glocalk-model" and meta["fingerprint"] == fitted.fingerprint_
    assert {"torch", "numpy", "glocalk"} <= set(meta["versions"]) and meta["rating_scale"] == [1.0, 5.0]


def test_round_trip_int_ids_and_offset(tmp_path):
    # A 0..4 scale is stored shifted by 1 and shifted back on the way out.
    train, _ = example_ratings(n_users=20, n_items=25, density=0.4, seed=2)
    df = pd.DataFrame({"user": train["user"].str[1:].astype(int), "item": train["item"].str[1:].astype(int),
                       "rating": train["rating"] - 1})
    model = GLocalKRecommender("ml-100k", **TINY).fit(df)
    assert model.offset_ == 1.0 and model.rating_scale_ == (0.0, 4.0)
    pred = model.predict(df["user"], df["item"])
    assert pred.min() >= 0 and pred.max() <= 4
    model.save(tmp_path / "m")
    loaded = GLocalKRecommender.load(tmp_path / "m")
    assert loaded.user_ids_.dtype.kind == "i"
    assert np.array_equal(loaded.predict(df["user"], df["item"]), pred)
    rec = loaded.recommend(int(df["user"].iloc[0]), 3)
    assert rec["score"].between(0, 4).all()


def test_recommend_excludes_seen_and_sorts(fitted, data):
    train, _ = data
    user = "u002"
    seen = set(train.loc[train["user"] == user, "item"])
    rec = fitted.recommend(user, k=10)
    assert list(rec.columns) == ["item", "score", "rank"] and list(rec["rank"]) == list(range(1, 11))
    assert not seen & set(rec["item"])
    assert np.all(np.diff(rec["score"].to_numpy()) <= 0)
    # The scores are the model's predictions, and no unseen item outranks the list.
    assert np.allclose(rec["score"], fitted.predict([user] * 10, rec["item"]))
    others = [i for i in fitted.item_ids_ if i not in seen and i not in set(rec["item"])]
    assert fitted.predict([user] * len(others), others).max() <= rec["score"].min() + 1e-6
    everything = fitted.recommend(user, k=len(fitted.item_ids_), exclude_seen=False)
    assert len(everything) == len(fitted.item_ids_) and seen <= set(everything["item"])


def test_recommend_ties_broken_by_item_order(fitted):
    # A scoring core whose every score is 3.0: the order must fall back to the item order.
    model = copy.copy(fitted)
    model.scorer_ = copy.copy(fitted.scorer_)
    h, w, b = fitted.scorer_.factors[0]
    model.scorer_.factors = [(np.zeros_like(h), w, np.full_like(b, 3.0))]
    rec = model.recommend("u001", 5, exclude_seen=False)
    assert list(rec["item"]) == list(fitted.item_ids_[:5]) and (rec["score"] == 3.0).all()


def test_unknown_ids(fitted):
    with pytest.raises(DataError, match="unknown user 'nobody'.*not in the training data"):
        fitted.predict("nobody", "m0001")
    with pytest.raises(DataError, match="unknown item 'm9999'"):
        fitted.predict(["u001", "u001"], ["m0001", "m9999"])
    with pytest.raises(DataError, match="unknown user 'nobody'"):
        fitted.recommend("nobody")
    p = fitted.predict(["nobody", "u001", "nobody"], ["m0001", "m9999", "m9999"], unknown="baseline")
    assert np.all(np.isfinite(p)) and np.all((p >= 1) & (p <= 5))
    assert p[2] == pytest.approx(fitted.scorer_.mu)  # both unknown: the global mean
    rec = fitted.recommend("nobody", 4, unknown="baseline")
    order = np.argsort(-(fitted.scorer_.mu + fitted.scorer_.b_item), kind="stable")[:4]  # ties: item order
    assert list(rec["item"]) == list(fitted.item_ids_[order])


def test_resume_equals_uninterrupted(tmp_path, data):
    train, _ = data
    params = dict(TINY, epoch_p=3, epoch_f=3, val_frac=0.1, seed=[4, 5])
    reference = GLocalKRecommender("ml-100k", **params).fit(train)

    def stop_after(seed: int, rec: dict) -> None:
        if seed == 5 and rec["epoch"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GLocalKRecommender("ml-100k", **params).fit(train, on_epoch=stop_after, checkpoint_dir=tmp_path / "state")
    epochs = []
    resumed = GLocalKRecommender("ml-100k", **params).fit(train, checkpoint_dir=tmp_path / "state", resume=True,
                                               on_epoch=lambda s, rec: epochs.append((s, rec["epoch"])))
    assert epochs == [(5, 5), (5, 6)]  # seed 4 was finished; seed 5 continues after epoch 4
    users, items = train["user"], train["item"]
    np.testing.assert_allclose(resumed.predict(users, items), reference.predict(users, items), rtol=0, atol=1e-6)
    assert resumed.members_ == reference.members_


def test_resume_refuses_other_data(tmp_path, data):
    train, _ = data
    GLocalKRecommender("ml-100k", **TINY).fit(train, checkpoint_dir=tmp_path / "state")
    with pytest.raises(CheckpointError, match="other data or parameters"):
        GLocalKRecommender("ml-100k", **TINY).fit(train.iloc[5:], checkpoint_dir=tmp_path / "state", resume=True)


def test_ensemble_averages_members(data):
    train, test = data
    ens = GLocalKRecommender("ml-100k", seed=[1, 2], **TINY).fit(train)
    assert [m["seed"] for m in ens.members_] == [1, 2]
    singles = [GLocalKRecommender("ml-100k", seed=s, **TINY).fit(train) for s in (1, 2)]
    i = pd.Index(ens.item_ids_).get_indexer(test["item"])
    u = pd.Index(ens.user_ids_).get_indexer(test["user"])
    expected = np.clip(np.mean([m.scorer_.scores(i, u) for m in singles], axis=0), 1, 5)
    np.testing.assert_allclose(ens.predict(test["user"], test["item"]), expected, rtol=0, atol=1e-9)
    assert GLocalKRecommender("ml-100k", seed=7, n_ensemble=3).seeds() == [7, 8, 9]
    assert GLocalKRecommender("ml-100k").seeds() == [1]


def test_rating_matrix_input(data):
    train, test = data
    rm = to_rating_matrix(read_ratings(train), read_ratings(test), unknown="drop")
    model = GLocalKRecommender("ml-100k", **TINY).fit(rm)
    assert model.metrics_["n_rated"] == rm.test.nnz
    assert isinstance(model.item_ids_[0], str)


def test_params_and_clone():
    model = GLocalKRecommender("ml-100k", n_hid=16, val_frac=0.2, seed=[1, 2])
    assert model.get_params()["n_hid"] == 16 and model.clone().get_params() == model.get_params()
    assert model.config()["lambda_2"] == 20.0  # from the ml-100k preset
    model.set_params(lambda_2=3.0)
    assert model.config()["lambda_2"] == 3.0
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        GLocalKRecommender("ml-100k", n_hidden=3)
    with pytest.raises(ValueError, match="unknown must be one of"):
        GLocalKRecommender("ml-100k", unknown="guess")
    with pytest.raises(ValueError, match="patience needs a validation split"):
        GLocalKRecommender("ml-100k", patience=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict("a", "b")


# -- bad input --------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv.*empty"):
        GLocalKRecommender("ml-100k", **TINY).fit(path)
    path.write_text("user,item,rating\n")
    with pytest.raises(DataError, match=r"empty\.csv.*no data rows"):
        GLocalKRecommender("ml-100k", **TINY).fit(path)


def test_missing_or_misnamed_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,film,rating\na,x,3\nb,y,4\n")
    with pytest.raises(DataError, match=r"r\.csv.*no item column.*available columns: 'user', 'film', 'rating'"):
        GLocalKRecommender("ml-100k", **TINY).fit(path)
    df = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"]})
    with pytest.raises(DataError, match="DataFrame.*no rating column"):
        GLocalKRecommender("ml-100k", **TINY).fit(df)


@pytest.mark.parametrize("value, message", [("good", r"line 3: rating 'good' is not a (finite )?number"),
                                            ("", r"line 3: missing \(empty or NaN\) rating"),
                                            ("NaN", r"line 3: .*rating.*NaN")])
def test_bad_ratings(tmp_path, value, message):
    path = tmp_path / "r.csv"
    path.write_text(f"user,item,rating\na,x,3\nb,y,{value}\nc,z,5\n")
    with pytest.raises(DataError, match=r"r\.csv: " + message):
        GLocalKRecommender("ml-100k", **TINY).fit(path)


def test_ratings_outside_the_scale(tmp_path, data):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\na,x,3\nb,y,7\n")
    with pytest.raises(DataError, match=r"r\.csv: line 3: rating 7 is outside the rating scale 1\.\.5"):
        GLocalKRecommender("ml-100k", rating_scale=(1, 5), **TINY).fit(path)
    train, test = data
    model = GLocalKRecommender("ml-100k", rating_scale=(1, 5), **TINY).fit(train)
    bad = test.assign(rating=test["rating"].where(test.index != 2, 6.0))
    with pytest.raises(DataError, match="row 2.*rating 6 is outside the rating scale"):
        model.evaluate(bad)


def test_duplicates(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\na,x,1\nb,x,4\na,y,2\na,x,3\nb,y,5\n")
    with pytest.raises(DataError, match=r"duplicate rating for user 'a' and item 'x' at line 2 and line 5"):
        GLocalKRecommender("ml-100k", **TINY).fit(path)
    last = GLocalKRecommender("ml-100k", duplicates="last", **TINY).fit(path)
    mean = GLocalKRecommender("ml-100k", duplicates="mean", **TINY).fit(path)
    assert last.model_.seen.nnz == mean.model_.seen.nnz == 4
    assert last.model_.seen[0, 0] == 3.0 and mean.model_.seen[0, 0] == 2.0  # item x, user a




def test_rating_matrix_roundtrip_keeps_validation(tmp_path, data):
    train, _ = data
    rm = RatingMatrix(to_rating_matrix(read_ratings(train)).train).with_validation(0.2, seed=1)
    model = GLocalKRecommender("ml-100k", **TINY).fit(rm)
    model.save(tmp_path / "m")
    loaded = GLocalKRecommender.load(tmp_path / "m")
    assert loaded.model_.seen.nnz == rm.train.nnz + rm.val.nnz
    assert np.array_equal(loaded.scorer_.factors[0][0], model.scorer_.factors[0][0])


# -- defect 1: a NaN prediction is an error naming the model, never a skipped pair --------------------


def test_nan_predictions_are_an_error_naming_the_model(tmp_path, fitted, data):
    _, test = data
    saved = fitted.save(tmp_path / "m")
    tensors = load_file(str(saved / "weights.safetensors"))
    u = int(np.flatnonzero(fitted.user_ids_ == test["user"].iloc[0])[0])
    tensors["member0.out.b"][u] = float("nan")  # every prediction for that user becomes NaN
    save_file(tensors, str(saved / "weights.safetensors"))
    model = GLocalKRecommender.load(saved)
    for unknown in ("skip", "error", "baseline"):
        with pytest.raises(CheckpointError, match=f"the model in {saved} gives NaN or infinite predictions"):
            model.evaluate(test, unknown=unknown)
    with pytest.raises(CheckpointError, match=f"{saved}.*first: user {test['user'].iloc[0]!r}"):
        model.predict(test["user"], test["item"])
    with pytest.raises(CheckpointError, match=str(saved)):
        model.recommend(test["user"].iloc[0])
    # In memory (no directory), the same: the fitted model is named.
    broken = copy.copy(fitted)
    broken.scorer_ = copy.copy(fitted.scorer_)
    broken.scorer_.factors = [(h, w, np.full_like(b, np.nan)) for h, w, b in fitted.scorer_.factors]
    with pytest.raises(TrainingError, match="the fitted model gives NaN"):
        broken.evaluate(test)


# -- defect 5: metrics in the user's units, whatever the scale -------------------------------------------


def _ndcg_by_hand(users, pred, truth) -> float:
    """The paper's NDCG written as plainly as possible: per user (>= 2 ratings), sort by prediction."""
    scores = []
    for user in dict.fromkeys(users):
        rows = [k for k, x in enumerate(users) if x == user]
        if len(rows) < 2:
            continue
        def dcg(order):
            return sum((2.0 ** truth[k] - 1) / np.log2(rank + 2) for rank, k in enumerate(order))
        by_pred = sorted(rows, key=lambda k: -pred[k])  # ties: row order (the items are distinct floats here)
        ideal = sorted(rows, key=lambda k: -truth[k])
        scores.append(dcg(by_pred) / dcg(ideal))
    return float(np.mean(scores))


def test_ndcg_gains_are_on_the_scale_mapped_onto_1_to_5_on_a_0_to_10_scale(data):
    # Issue 10: NDCG's gains 2^r - 1 use r on the scale mapped onto the model's 1..5 (0..10 -> 1 + 0.4 r),
    # so NDCG does not change under r -> a r + b; RMSE stays in the user's units. (Issue 9 had the gains
    # in the user's units; that rule is superseded.)
    train, test = data
    to_ten = {1.0: 0.0, 2.0: 2.5, 3.0: 5.0, 4.0: 7.5, 5.0: 10.0}
    train, test = (df.assign(rating=df["rating"].map(to_ten)) for df in (train, test))
    model = GLocalKRecommender("ml-100k", **TINY).fit(train, test=test)
    assert model.offset_ == 1.0 and model.rating_scale_ == (0.0, 10.0)
    pred = model.predict(test["user"], test["item"])
    truth = test["rating"].to_numpy()
    expected = _ndcg_by_hand(list(test["user"]), 1 + 0.4 * pred, 1 + 0.4 * truth)
    assert model.metrics_["ndcg"] == pytest.approx(expected, rel=1e-9)
    assert model.metrics_["rmse"] == pytest.approx(np.sqrt(np.mean((pred - truth) ** 2)), rel=1e-9)
    in_users_units = _ndcg_by_hand(list(test["user"]), pred, truth)
    assert abs(in_users_units - expected) > 1e-4, "test setup: the units must matter here"


# -- model directories written before the restructure still load ------------------------------------------

LEGACY = Path(__file__).parent / "data"


def test_a_model_directory_written_before_issue_9_loads_and_predicts_the_same():
    # Written by glocalk at commit 651c8e6 (before estimator.py was split), with its predict/recommend output.
    model = GLocalKRecommender.load(LEGACY / "model-before-issue-9")
    outputs = LEGACY / "model-before-issue-9-outputs"
    pairs = pd.read_csv(outputs / "pairs.csv")
    expected = pd.read_csv(outputs / "predict.csv")
    np.testing.assert_allclose(model.predict(pairs["user"], pairs["item"]), expected["prediction"], rtol=1e-6)
    rec = pd.read_csv(outputs / "recommend.csv")
    got = model.recommend("u001", 3)
    assert list(got["item"]) == list(rec["item"])
    np.testing.assert_allclose(got["score"], rec["score"], rtol=1e-6)
