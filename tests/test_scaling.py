"""Scale invariance (issue 10, item 1): the training scale is mapped onto the model's 1..5 and back.

The property: every rating r -> a r + b (a > 0) gives the same selected epoch, RMSE and MAE times a,
and the same NDCG; predictions come back as a p + b. 1..5 data are the identity (no arithmetic).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import write_mat

from glocalk import GLocalKRecommender
from glocalk.cli import main
from glocalk.data.datasets import load_dataset
from glocalk.data.matrix import RatingMatrix
from glocalk.data.scaling import RatingMap
from glocalk.errors import CheckpointError, DataError
from glocalk.metrics import evaluate
from glocalk.presets import preset, split_config
from glocalk.protocol import RunOptions, train_run

SHARED = Path(os.environ.get("GLOCALK_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SMALL = dict(n_hid=20, epoch_p=2, epoch_f=3, iter_p=3, iter_f=3, threads=1, seed=1)


# -- the map -----------------------------------------------------------------------------------------


def test_the_map_sends_the_scale_onto_1_to_5_and_back():
    m = RatingMap.of((25.0, 105.0))  # ML-100K under r -> 20 r + 5
    np.testing.assert_allclose(m.to_model(np.array([25.0, 45.0, 65.0, 105.0])), [1.0, 2.0, 3.0, 5.0])
    np.testing.assert_allclose(m.to_user(np.array([1.0, 2.5, 5.0, 6.0])), [25.0, 55.0, 105.0, 125.0])
    assert m.unit == 20.0 and not m.is_identity
    half = RatingMap.of((0.5, 5.0))  # half stars: 0.5 -> 1, 5 -> 5, 2.75 -> 3
    np.testing.assert_allclose(half.to_model(np.array([0.5, 2.75, 5.0])), [1.0, 3.0, 5.0])


def test_1_to_5_is_the_identity_and_converts_nothing():
    m = RatingMap.of((1, 5))
    assert m.is_identity and m.json_entry() == {"rating_map": {"lo": 1.0, "hi": 5.0}}
    x = np.array([0.3, 2.0, 7.0], dtype=np.float32)
    assert m.to_model(x) is x and m.to_user(x) is x  # not even a copy: bit for bit what it was
    train = sp.random(6, 5, density=0.5, format="csr", random_state=0, dtype=np.float32)
    assert m.matrix_to_model(train) is train


@pytest.mark.parametrize("name", ["ml-100k", "ml-1m", "douban"])
def test_the_papers_datasets_train_unmapped(name):
    # Their published figures cannot move: their map is the identity, so the trainer gets the very same matrix.
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set GLOCALK_DATA)")
    data = load_dataset(name, SHARED)
    assert data.rating_scale == (1.0, 5.0) and data.rating_map.is_identity
    assert data.rating_map.matrix_to_model(data.train) is data.train


def test_a_single_distinct_rating_has_no_scale_and_is_a_data_error():
    with pytest.raises(DataError, match=r"min < max|single distinct rating"):
        RatingMatrix(sp.csr_matrix(np.full((3, 2), 4.0)))
    with pytest.raises(DataError, match="single distinct rating"):
        RatingMap.of((4.0, 4.0))
    df = pd.DataFrame({"user": ["a", "b", "c"], "item": ["x", "y", "x"], "rating": [4.0, 4.0, 4.0]})
    with pytest.raises(DataError):
        GLocalKRecommender("ml-100k", n_hid=4, epoch_p=1, epoch_f=0, iter_p=1, threads=1).fit(df)


def test_a_training_rating_below_a_declared_scale_is_a_data_error_not_a_missing_entry():
    # 2 on the scale 3..11 would map to 0.5; 1 would map to exactly 0 and read as "not rated".
    data = RatingMatrix(sp.csr_matrix(np.array([[1.0, 5.0], [7.0, 11.0]])), rating_scale=(3.0, 11.0))
    with pytest.raises(DataError, match="below the rating scale 3..11"):
        train_run(data, *split_config({**preset("ml-100k"), **SMALL}))


def test_test_ratings_below_the_training_scale_are_scored_and_gain_nothing_below_0():
    # Test ratings are never stored in a mapped matrix, so one that maps to exactly 0 (here 1 on the
    # training scale 2..6 -> 1 + 4 (1 - 2) / 4 = 0) or below (-2 -> -3) is scored, not read as missing;
    # its NDCG gain 2^m - 1 is taken at m = max(mapped, 0): no negative gains.
    from_metrics = evaluate(np.array([6.0, 2.0, 4.0, 3.0]), np.array([1.0, 6.0, -2.0, 4.0]),
                            np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]), (2.0, 6.0), RatingMap(2.0, 6.0).to_model)
    # user 0: ranked [item 0 (gain 2^0 - 1 = 0), item 1 (2^5 - 1 = 31)]; ideal [item 1, item 0]
    ndcg0 = (0 + 31 / np.log2(3)) / 31
    # user 1: mapped truths max(-3, 0) = 0 and 3 -> gains 0, 7; ranked by prediction 4 > 3: [item 2, item 3]
    ndcg1 = (0 + 7 / np.log2(3)) / 7
    assert from_metrics["ndcg"] == pytest.approx((ndcg0 + ndcg1) / 2, rel=1e-12)
    assert from_metrics["rmse"] == pytest.approx(np.sqrt((25 + 16 + 36 + 1) / 4), rel=1e-12)


# -- the property on ML-100K -------------------------------------------------------------------------


def _ml100k_subset() -> RatingMatrix:
    if not (SHARED / "movielens-100k").is_dir():
        pytest.skip(f"ML-100K not found under {SHARED} (set GLOCALK_DATA)")
    d = load_dataset("ml-100k", SHARED)
    # The 400 most-rated items keep it to seconds; users and the u1 test split are the real ones.
    keep = np.argsort(-np.diff(d.train.indptr), kind="stable")[:400]
    keep.sort()
    return RatingMatrix(d.train[keep], test=d.test[keep], rating_scale=d.rating_scale, name="ml-100k-400")


def _rescaled(data: RatingMatrix, a: float, b: float) -> RatingMatrix:
    def f(m: sp.csr_matrix) -> sp.csr_matrix:
        out = m.copy()
        out.data = (a * out.data.astype(np.float64) + b).astype(np.float32)
        return out
    # rating_scale None: derived from the training ratings, as for a .mat file or own data
    return RatingMatrix(f(data.train), test=f(data.test), name=f"{data.name} x{a:g}+{b:g}")


@pytest.fixture(scope="module")
def ml100k_runs():
    data = _ml100k_subset()
    assert data.rating_map.is_identity
    configs = split_config({**preset("ml-100k"), **SMALL})
    runs = {}
    for key, (a, b) in {"plain": (1.0, 0.0), "x20+5": (20.0, 5.0), "half": (0.5, 0.0)}.items():
        scaled = data if key == "plain" else _rescaled(data, a, b)
        runs[key] = (a, b, train_run(scaled.with_validation(0.1, seed=1), *configs))
    return runs


@pytest.mark.parametrize("key", ["x20+5", "half"])
def test_ml100k_rescaled_gives_the_same_epoch_rmse_times_a_and_the_same_ndcg(ml100k_runs, key):
    plain = ml100k_runs["plain"][2]
    a, _, scaled = ml100k_runs[key]
    assert scaled.val_selected["epoch"] == plain.val_selected["epoch"]
    for protocol in ("final", "val_selected"):
        got, ref = getattr(scaled, protocol), getattr(plain, protocol)
        assert got["rmse"] == pytest.approx(a * ref["rmse"], rel=1e-3)
        assert got["mae"] == pytest.approx(a * ref["mae"], rel=1e-3)
        assert got["ndcg"] == pytest.approx(ref["ndcg"], rel=1e-6)
    for rec, ref in zip(scaled.history, plain.history, strict=True):
        assert rec["train_rmse"] == pytest.approx(a * ref["train_rmse"], rel=1e-3)
        assert rec["val_rmse"] == pytest.approx(a * ref["val_rmse"], rel=1e-3)
    # Without the map, 2^r - 1 gains of r in 25..105 and sigmoid inputs of ~100 would not give this:
    assert 0.5 < plain.final["ndcg"] < 1.0 and plain.final["rmse"] < 1.2


# -- own data through the estimator --------------------------------------------------------------------


def _own_ratings(seed: int = 0, n_users: int = 40, n_items: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = 3 + rng.normal(0, 0.8, (n_users, 1)) + rng.normal(0, 0.6, (1, n_items))
    r = np.clip(np.rint(score + rng.normal(0, 0.4, score.shape)), 1, 5)
    users, items = np.nonzero(rng.random(r.shape) < 0.4)
    return pd.DataFrame({"user": [f"u{u}" for u in users], "item": [f"i{i}" for i in items],
                         "rating": r[users, items]})


def test_own_data_rescaled_predicts_a_p_plus_b_in_the_users_units(tmp_path):
    df = _own_ratings()
    params = dict(n_hid=10, n_dim=3, epoch_p=2, epoch_f=2, iter_p=3, iter_f=3, threads=1, seed=1)
    plain = GLocalKRecommender("ml-100k", **params).fit(df)
    scaled = GLocalKRecommender("ml-100k", **params).fit(df.assign(rating=20 * df["rating"] + 5))
    assert scaled.rating_scale_ == (25.0, 105.0) and scaled.rating_map_ == RatingMap(25.0, 105.0)
    pairs = df.sample(50, random_state=0)
    want = 20 * plain.predict(pairs["user"], pairs["item"]) + 5
    np.testing.assert_allclose(scaled.predict(pairs["user"], pairs["item"]), want, rtol=1e-3)
    top, top_plain = scaled.recommend("u3", 5), plain.recommend("u3", 5)
    assert list(top["item"]) == list(top_plain["item"])
    np.testing.assert_allclose(top["score"], 20 * top_plain["score"] + 5, rtol=1e-3)
    # The map is saved (model.json "rating_map", internal units) and served again after loading.
    scaled.save(tmp_path / "m")
    assert '"rating_map"' in (tmp_path / "m" / "model.json").read_text()
    loaded = GLocalKRecommender.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.predict(pairs["user"], pairs["item"]),
                               scaled.predict(pairs["user"], pairs["item"]), rtol=1e-6)


def test_own_data_on_a_0_to_10_scale_trains_on_the_same_model_units_as_1_to_5():
    # 0..10 is stored shifted by 1 (offset: 0 means "not rated") and mapped onto 1..5: the offset
    # cancels, so r -> 2.5 (r - 1) trains exactly the 1..5 model; predictions come back as 2.5 (p - 1).
    df = _own_ratings(seed=2)
    params = dict(n_hid=10, n_dim=3, epoch_p=2, epoch_f=1, iter_p=3, iter_f=3, threads=1, seed=1)
    plain = GLocalKRecommender("ml-100k", **params).fit(df)
    ten = GLocalKRecommender("ml-100k", **params).fit(df.assign(rating=2.5 * (df["rating"] - 1)))
    assert ten.offset_ == 1.0 and ten.rating_scale_ == (0.0, 10.0)
    pairs = df.head(40)
    np.testing.assert_allclose(ten.predict(pairs["user"], pairs["item"]),
                               2.5 * (plain.predict(pairs["user"], pairs["item"]) - 1), rtol=1e-3, atol=1e-4)


# -- the command line: glocalk train --mat and glocalk fit ------------------------------------------------

CLI_TINY = ["--preset", "ml-100k",
        "--n-hid", "8", "--n-dim", "3", "--epoch-p", "2", "--epoch-f", "2", "--iter-p", "3", "--iter-f", "3",
            "--threads", "1", "--quiet"]


def test_train_mat_on_a_1_to_100_file_reports_rmse_times_a_and_records_the_map(tmp_path):
    df = _own_ratings(seed=4)
    is_test = np.random.default_rng(0).random(len(df)) < 0.2
    summaries = {}
    for key, (a, b) in {"plain": (1.0, 0.0), "x24.75-23.75": (24.75, -23.75)}.items():  # 1..5 -> 1..100
        write_mat(tmp_path / f"{key}.mat", df.assign(rating=a * df["rating"] + b), is_test)
        assert main(["train", "--mat", str(tmp_path / f"{key}.mat"), *CLI_TINY, "--seed", "3", "--val-frac", "0.2",
                     "--out", str(tmp_path / key)]) == 0
        summaries[key] = json.loads((tmp_path / key / "summary.json").read_text())
    plain, scaled = summaries["plain"], summaries["x24.75-23.75"]
    assert plain["rating_map"] == {"lo": 1.0, "hi": 5.0} and scaled["rating_map"] == {"lo": 1.0, "hi": 100.0}
    assert scaled["data"]["rating_scale"] == [1.0, 100.0]
    assert scaled["val_selected"]["epoch"] == plain["val_selected"]["epoch"]
    for protocol in ("final", "val_selected"):
        assert scaled[protocol]["rmse"] == pytest.approx(24.75 * plain[protocol]["rmse"], rel=1e-3)
        assert scaled[protocol]["ndcg"] == pytest.approx(plain[protocol]["ndcg"], rel=1e-6)


def test_fit_records_the_map_in_the_users_units_in_report_json_and_model_json(tmp_path):
    df = _own_ratings(seed=5)
    df.assign(rating=2.5 * (df["rating"] - 1)).to_csv(tmp_path / "ten.csv", index=False)  # 0..10
    assert main(["fit", str(tmp_path / "ten.csv"), *CLI_TINY, "--split", "random", "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    model = json.loads((tmp_path / "m" / "model.json").read_text())
    lo, hi = 0.0, 10.0  # the training part holds both ends (the data have 41 zeros and 17 tens)
    assert report["rating_map"] == {"lo": lo, "hi": hi}  # the user's units
    assert model["offset"] == 1.0 and model["rating_map"] == {"lo": lo + 1, "hi": hi + 1}  # stored shifted by 1


# -- resume ---------------------------------------------------------------------------------------------


def test_a_state_trained_in_other_units_does_not_resume(tmp_path):
    # The same training matrix with a declared scale 1..9 trains in other model units than with 1..5:
    # its weights must not be continued under the other map.
    train = sp.csr_matrix(np.array([[1.0, 5.0, 0.0], [2.0, 0.0, 4.0], [0.0, 3.0, 5.0]]))
    configs = split_config({**preset("ml-100k"), **dict(n_hid=4, epoch_p=1, epoch_f=1, iter_p=1, iter_f=1,
                                                        threads=1)})
    train_run(RatingMatrix(train, rating_scale=(1.0, 9.0)), *configs, RunOptions(state_dir=tmp_path))
    with pytest.raises(CheckpointError, match="rating_map"):
        train_run(RatingMatrix(train, rating_scale=(1.0, 5.0)), *configs,
                  RunOptions(state_dir=tmp_path, resume=True))
