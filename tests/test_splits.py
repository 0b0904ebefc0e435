"""Seeded train / test splits of Ratings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from glocalk.data.readers import Ratings, read_ratings, to_rating_matrix
from glocalk.data.splits import (
    kfold,
    per_user_holdout,
    random_holdout,
    time_holdout,
    unseen_in_train,
    validation_split,
)
from glocalk.errors import DataError


def make(n_users: int = 20, per_user: int = 10, seed: int = 1, timestamps: bool = True) -> Ratings:
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{k}" for k in range(n_users)], per_user)
    items = np.tile(np.arange(per_user), n_users)
    df = pd.DataFrame({"user": users, "item": items, "rating": rng.integers(1, 6, len(users)).astype(float)})
    if timestamps:
        df["timestamp"] = rng.permutation(len(df))
    return read_ratings(df, rating_scale=(1, 5))


def keys(r: Ratings) -> set[tuple]:
    return set(r.df[["user", "item"]].itertuples(index=False, name=None))


def check_partition(whole: Ratings, train: Ratings, test: Ratings) -> None:
    assert len(train) + len(test) == len(whole)
    assert keys(train).isdisjoint(keys(test))
    assert keys(train) | keys(test) == keys(whole)
    for part in (train, test):
        assert part.rating_scale == whole.rating_scale and part.offset == whole.offset


def test_random_holdout_sizes_partition_and_determinism():
    r = make()
    train, test = random_holdout(r, test_frac=0.1, seed=3)
    assert len(test) == 20
    check_partition(r, train, test)
    again = random_holdout(r, test_frac=0.1, seed=3)
    pd.testing.assert_frame_equal(test.df, again[1].df)
    other = random_holdout(r, test_frac=0.1, seed=4)[1]
    assert keys(other) != keys(test)
    tr_idx, te_idx = random_holdout(r, test_frac=0.1, seed=3, return_indices=True)
    assert np.all(np.diff(te_idx) > 0) and len(np.intersect1d(tr_idx, te_idx)) == 0
    pd.testing.assert_frame_equal(r.df.iloc[te_idx].reset_index(drop=True), test.df)


def test_holdout_fraction_validation():
    r = make(2, 2)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(DataError, match=r"test_frac \(--test-frac\) must be in"):
            random_holdout(r, test_frac=bad)
    with pytest.raises(DataError, match="leaves the test part empty"):
        random_holdout(r, test_frac=0.1)  # round(0.4) = 0 test ratings


def test_validation_split_on_train():
    r = make()
    train, test = random_holdout(r, 0.2, seed=0)
    fit, val = validation_split(train, frac=0.25, seed=1)
    assert len(val) == 40 and len(fit) == 120
    check_partition(train, fit, val)
    assert keys(val).isdisjoint(keys(test))
    pd.testing.assert_frame_equal(val.df, validation_split(train, frac=0.25, seed=1)[1].df)


def test_validation_split_of_a_table_draws_as_the_matrix_split():
    # One draw: the table's rows in the matrix's row-major order (item, then user) give the same validation set.
    r = make(n_users=9, per_user=7)
    table = Ratings(r.df.sort_values(["item", "user"], ignore_index=True), rating_scale=r.rating_scale)
    m = to_rating_matrix(table)
    for seed in (0, 5):
        _, val = validation_split(table, frac=0.3, seed=seed)
        coo = m.with_validation(0.3, seed=seed).val.tocoo()
        by_matrix = {(m.user_ids[u], m.item_ids[i]) for i, u in zip(coo.row, coo.col, strict=True)}
        assert len(val) == round(0.3 * 63) == 19
        assert keys(val) == by_matrix


def test_per_user_holdout_fractions_and_small_users():
    df = pd.DataFrame({"user": ["a"] * 10 + ["b"] * 5 + ["c"] * 2 + ["d"],
                       "item": list(range(10)) + list(range(5)) + [0, 1] + [0],
                       "rating": 3.0})
    r = read_ratings(df, rating_scale=(1, 5))
    train, test = per_user_holdout(r, test_frac=0.2, seed=0)
    check_partition(r, train, test)
    n_test = test.df["user"].value_counts().to_dict()
    # a: 2 of 10; b: floor(1.0 + 0.5) = 1 of 5; c: floor(0.4 + 0.5) = 0; d (1 rating) keeps it
    assert n_test == {"a": 2, "b": 1}
    assert set(train.df["user"]) == {"a", "b", "c", "d"}

    train, test = per_user_holdout(r, n_test=2, seed=0)
    assert test.df["user"].value_counts().to_dict() == {"a": 2, "b": 2}  # c would keep none: all in train
    train, test = per_user_holdout(r, n_test=1, seed=0, min_train=0)
    assert test.df["user"].value_counts().to_dict() == {"a": 1, "b": 1, "c": 1, "d": 1}
    with pytest.raises(DataError, match="n_test must be >= 1"):
        per_user_holdout(r, n_test=0)


def test_per_user_holdout_is_seeded():
    r = make()
    a = per_user_holdout(r, 0.3, seed=5)[1]
    b = per_user_holdout(r, 0.3, seed=5)[1]
    c = per_user_holdout(r, 0.3, seed=6)[1]
    pd.testing.assert_frame_equal(a.df, b.df)
    assert keys(a) != keys(c)
    assert (a.df["user"].value_counts() == 3).all() and a.df["user"].nunique() == 20


def test_time_holdout_global_takes_latest():
    df = pd.DataFrame({"user": ["a", "a", "b", "b", "c"], "item": [1, 2, 1, 3, 2],
                       "rating": [1.0, 2.0, 3.0, 4.0, 5.0], "timestamp": [50, 10, 40, 30, 20]})
    r = read_ratings(df)
    train, test = time_holdout(r, test_frac=0.4)
    check_partition(r, train, test)
    assert sorted(test.df["timestamp"]) == [40, 50]
    assert sorted(train.df["timestamp"]) == [10, 20, 30]


def test_time_holdout_per_user_and_ties():
    df = pd.DataFrame({"user": ["a"] * 4 + ["b"] * 3 + ["c"],
                       "item": [1, 2, 3, 4, 1, 2, 3, 1],
                       "rating": 3.0,
                       "timestamp": [5, 9, 1, 7, 100, 100, 50, 1]})
    r = read_ratings(df)
    train, test = time_holdout(r, test_frac=0.5, per_user=True)
    check_partition(r, train, test)
    got = sorted(test.df[["user", "item"]].itertuples(index=False, name=None))
    # a: two latest (9, 7); b: floor(1.5 + 0.5) = 2 latest, the tie at 100 is both; c: one rating, kept in train
    assert got == [("a", 2), ("a", 4), ("b", 1), ("b", 2)]
    ties = read_ratings(pd.DataFrame({"user": [1, 2, 3], "item": [1, 1, 1], "rating": [1.0, 2, 3],
                                      "timestamp": [7, 7, 7]}))
    assert time_holdout(ties, test_frac=0.34)[1].df["user"].tolist() == [3]  # later row wins a tie


def test_time_holdout_with_dates(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("user,item,rating,date\na,x,1,2021-03-01\na,y,2,2020-01-01\nb,x,3,2022-07-15\nb,y,4,2019-12-31\n")
    train, test = time_holdout(read_ratings(p), test_frac=0.5)
    assert sorted(test.df["rating"]) == [1.0, 3.0]


def test_time_holdout_needs_timestamps():
    r = make(timestamps=False)
    with pytest.raises(DataError, match=r"time-based holdout needs a timestamp column.*time_col="):
        time_holdout(r)


def test_kfold_partitions():
    r = make(5, 7)  # 35 ratings into 4 folds of 9, 9, 9, 8
    folds = list(kfold(r, k=4, seed=2))
    assert [len(te) for _, te in folds] == [9, 9, 9, 8]
    seen: set[tuple] = set()
    for train, test in folds:
        check_partition(r, train, test)
        assert seen.isdisjoint(keys(test))
        seen |= keys(test)
    assert seen == keys(r)
    again = [te.df for _, te in kfold(r, k=4, seed=2)]
    for (_, te), df in zip(folds, again, strict=True):
        pd.testing.assert_frame_equal(te.df, df)
    idx = [te for _, te in kfold(r, k=4, seed=2, return_indices=True)]
    np.testing.assert_array_equal(np.sort(np.concatenate(idx)), np.arange(len(r)))
    with pytest.raises(DataError, match="k must be between 2"):
        kfold(r, k=1)


def test_unseen_in_train_and_matrix_handling():
    df = pd.DataFrame({"user": ["a", "a", "b", "c"], "item": ["x", "y", "x", "z"], "rating": [1.0, 2, 3, 4]})
    r = read_ratings(df)
    train, test = r.take([0, 1, 2]), r.take([3])
    assert unseen_in_train(train, test) == {"users": 1, "items": 1, "ratings": 1}
    with pytest.raises(DataError, match="1 unknown user"):
        to_rating_matrix(train, test)
    m = to_rating_matrix(train, r.take([2, 3]), unknown="drop")
    assert m.meta["dropped_test"] == 1 and m.test.nnz == 1


def test_split_then_matrix_keeps_offset():
    df = pd.DataFrame({"user": np.repeat(np.arange(10), 4), "item": np.tile(np.arange(4), 10),
                       "rating": np.tile([0.0, 4.0, 7.0, 10.0], 10)})
    r = read_ratings(df)
    train, test = per_user_holdout(r, n_test=1, seed=0)
    assert train.offset == test.offset == 1.0
    m = to_rating_matrix(train, test)
    assert m.train.data.min() >= 1.0 and m.test.nnz == 10
    assert set(np.round(m.test.data - m.meta["offset"], 6)) <= {0.0, 4.0, 7.0, 10.0}
