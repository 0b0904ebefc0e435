"""Fold-in of new users and items (glocalk.fold_in, GLocalKRecommender.fold_in) against independent references."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from glocalk.data.synthetic import BiasSignal, bias_ratings, example_ratings
from glocalk.errors import CheckpointError, DataError
from glocalk.estimator import GLocalKRecommender
from glocalk.fold_in import MemberFold, fit_user, fold_biases, refine_user, ridge_column, user_loss
from glocalk.scoring import top_k

TINY = dict(n_hid=8, n_dim=3, epoch_p=2, epoch_f=2, iter_p=3, iter_f=3, threads=1)
# Enough training for GLocal-K to beat the bias model on a biases + rank-2 signal (~10 s on a shared core).
LEARNS = dict(n_hid=32, n_dim=3, epoch_p=12, epoch_f=0, iter_p=20, lambda_2=1.0, threads=1)


def _frame(m) -> pd.DataFrame:
    coo = m.tocoo()
    return pd.DataFrame({"user": coo.col.astype(np.int64), "item": coo.row.astype(np.int64),
                         "rating": coo.data.astype(np.float64)})


@pytest.fixture(scope="module")
def held_out():
    """Ratings with 10 users held out entirely; their ratings split into a first and a second half (seeded)."""
    df = _frame(bias_ratings(60, 80, 0.5, seed=1, signal=BiasSignal(rank=2), test_frac=0.0).train)
    rng = np.random.default_rng(0)
    held = rng.choice(df["user"].unique(), 10, replace=False)
    rest = df[df["user"].isin(held)].sample(frac=1, random_state=0)
    pos, size = rest.groupby("user").cumcount(), rest.groupby("user")["user"].transform("size")
    return df[~df["user"].isin(held)], rest[pos < size // 2], rest[pos >= size // 2]


@pytest.fixture(scope="module")
def base(held_out):
    return GLocalKRecommender("ml-100k", **LEARNS).fit(held_out[0])


@pytest.fixture(scope="module")
def folded(base, held_out):
    return base.fold_in(held_out[1])


def _rmse(pred, truth) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred) - np.asarray(truth)) ** 2)))


# -- the maths, against numpy ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_ridge_column_is_the_stacked_least_squares_solution(seed):
    rng = np.random.default_rng(seed)
    n, d, lam = int(rng.integers(1, 13)), int(rng.integers(1, 7)), float(rng.choice([0.5, 3.0, 20.0]))
    f, r = rng.random((n, d)), rng.uniform(1, 5, n)
    w, b = ridge_column(f, r, lam)
    # Independent: lstsq of [F 1; sqrt(lam) I 0] theta = [r; 0] (the bias is not penalised).
    a = np.vstack([np.hstack([f, np.ones((n, 1))]), np.hstack([np.sqrt(lam) * np.eye(d), np.zeros((d, 1))])])
    theta = np.linalg.lstsq(a, np.concatenate([r, np.zeros(d)]), rcond=None)[0]
    assert np.allclose(w, theta[:-1], atol=1e-8) and b == pytest.approx(theta[-1], abs=1e-8)


def test_ridge_without_penalty_and_few_ratings_is_the_minimum_norm_fit():
    rng = np.random.default_rng(0)
    f, r = rng.random((3, 6)), np.array([1.0, 4.0, 2.0])
    w, b = ridge_column(f, r, 0.0)
    expected = np.linalg.pinv(np.hstack([f, np.ones((3, 1))])) @ r
    assert np.allclose(np.append(w, b), expected) and np.allclose(f @ w + b, r)


def _kernel_fold(rng, n_hid=6, d=2) -> MemberFold:
    u = torch.from_numpy(rng.normal(0, 0.4, (n_hid, d)))
    return MemberFold([], None, u, torch.zeros(d, dtype=torch.float64), lambda_2=0.5, lambda_s=0.1)


def test_with_the_local_kernel_the_refined_column_lowers_the_objective_and_is_ridge_optimal_for_its_v():
    rng = np.random.default_rng(1)
    fold = _kernel_fold(rng)
    h, r = rng.random((15, 6)), rng.integers(1, 6, 15).astype(np.float64)
    k0 = np.maximum(0, 1 - ((fold.out_u.numpy() - fold.v0.numpy()) ** 2).sum(1))
    w0, b0 = ridge_column(h * k0, r, fold.lambda_2)
    w, v, b = refine_user(h, r, fold, w0, b0, steps=300)

    def loss(w_, v_, b_):
        return float(user_loss(torch.from_numpy(h), torch.from_numpy(r), torch.as_tensor(w_), torch.as_tensor(v_),
                               torch.as_tensor(b_, dtype=torch.float64), fold))

    assert loss(w, v, b) < loss(w0, fold.v0, b0)
    # At convergence (w, b) is the ridge solution for the final kernel vector: a closed form, computed here.
    k = np.maximum(0, 1 - ((fold.out_u.numpy() - v.numpy()) ** 2).sum(1))
    w_ref, b_ref = ridge_column(h * k, r, fold.lambda_2)
    assert np.allclose(w.numpy(), w_ref, atol=1e-4) and b == pytest.approx(b_ref, abs=1e-4)
    # fit_user returns the effective weights W*K of that solution.
    w_eff, b_fit = fit_user(h, r, fold, steps=300)
    assert np.allclose(w_eff, w_ref * k, atol=1e-4) and b_fit == pytest.approx(b_ref, abs=1e-4)


def test_fold_biases_by_hand():
    # 2 trained items, 2 trained users; new item 2 and new user 2. mu = 3, regs (1, 2).
    b_item, b_user = np.array([0.5, -0.5]), np.array([0.2, -0.2])
    m = np.zeros((3, 3))
    m[2, 0], m[2, 1] = 4.0, 5.0   # the new item rated by both trained users
    m[0, 2], m[2, 2] = 2.0, 3.0   # the new user rated trained item 0 and the new item
    new_items, new_users = fold_biases(3.0, b_item, b_user, sp.coo_matrix(m), 2, (1.0, 2.0))
    item = ((4 - 3 - 0.2) + (5 - 3 + 0.2)) / (1 + 2)  # the new user's rating does not describe the item
    user = ((2 - 3 - 0.5) + (3 - 3 - item)) / (2 + 2)
    assert new_items == pytest.approx([item]) and new_users == pytest.approx([user])


# -- the estimator: new users ---------------------------------------------------------------------


def test_folded_in_users_beat_the_bias_models_fold_in_on_their_other_half(base, folded, held_out):
    _, first, second = held_out
    pred = folded.predict(second["user"], second["item"])
    # The bias model's fold-in (the unknown-id baseline, with the new users' biases folded in).
    items = pd.Index(folded.item_ids_).get_indexer(second["item"])
    users = pd.Index(folded.user_ids_).get_indexer(second["user"])
    biases = np.clip(folded.scorer_.baseline(items, users), 1, 5)
    truth = second["rating"]
    assert _rmse(pred, truth) < _rmse(biases, truth) < _rmse(np.full(len(truth), first["rating"].mean()), truth)
    assert set(second["user"]) <= set(folded.user_ids_) and not set(second["user"]) & set(base.user_ids_)


def test_fold_in_leaves_the_model_unchanged_and_the_known_users_predictions_too(base, folded, held_out):
    train = held_out[0]
    before = base.predict(train["user"], train["item"])
    assert np.array_equal(folded.predict(train["user"], train["item"]), before)
    with pytest.raises(DataError, match="unknown user"):
        base.predict(held_out[1]["user"].iloc[0], 0)


def test_a_folded_in_user_is_recommended_unseen_items_only(folded, held_out):
    first = held_out[1]
    user = first["user"].iloc[0]
    rated = set(first.loc[first["user"] == user, "item"])
    recs = folded.recommend(user, k=200)
    assert not rated & set(recs["item"]) and len(recs) == len(folded.item_ids_) - len(rated)
    assert set(folded.recommend(user, k=200, exclude_seen=False)["item"]) >= rated


def test_without_the_local_kernel_a_new_user_is_ridge_on_the_hidden_layer():
    train, _ = example_ratings(n_users=30, n_items=40, density=0.35, seed=3)
    model = GLocalKRecommender("ml-100k", local_kernel=False, **TINY).fit(train[train["user"] != "u001"])
    new = train[train["user"] == "u001"]
    out = model.fold_in(new)
    h = model.scorer_.factors[0][0].astype(np.float64)  # (n_items, n_hid): the trained last hidden layer
    rows = pd.Index(model.item_ids_).get_indexer(new["item"])
    w, b = ridge_column(h[rows], new["rating"].to_numpy(), model.model_.hyperparameters["lambda_2"])
    expected = np.clip(h @ w + b, 1, 5)  # the scale is 1..5: the model's units
    assert np.allclose(out.predict(["u001"] * 40, model.item_ids_), expected, atol=1e-4)


# -- new items -------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_", [dict(epoch_f=0), dict(gk_size=1)], ids=["stage-1", "stage-2-gk1"])
def test_a_new_item_with_a_trained_items_ratings_is_scored_as_that_item(settings_):
    """The network encodes an item from its row: a copy of a trained item's training row gives the same
    scores (stage 1, and stage 2 with a 1x1 global kernel, which reads no neighbouring rows)."""
    train, _ = example_ratings(n_users=30, n_items=40, density=0.35, seed=3)
    model = GLocalKRecommender("ml-100k", **{**TINY, **settings_}).fit(train)
    row = train[train["item"] == "m0007"]
    out = model.fold_in(row.assign(item="copy"))
    users = model.user_ids_
    a = out.scorer_.user_scores  # unclipped, so the comparison is not blurred by clipping
    known = np.array([a(u)[list(model.item_ids_).index("m0007")] for u in range(len(users))])
    new = np.array([a(u)[-1] for u in range(len(users))])
    assert np.allclose(new, known, atol=1e-5)
    assert out.item_ids_[-1] == "copy" and out.predict(users[0], "copy") == pytest.approx(
        model.predict(users[0], "m0007"), abs=1e-5)


def test_new_items_and_new_users_together_and_saved(tmp_path):
    train, _ = example_ratings(n_users=30, n_items=40, density=0.35, seed=3)
    model = GLocalKRecommender("ml-100k", **TINY).fit(train)
    new = pd.DataFrame({"user": ["u001", "u002", "zz1", "zz1", "zz2"], "item": ["new1", "new1", "new1", "m0003",
                                                                               "m0004"],
                        "rating": [4.0, 5.0, 3.0, 2.0, 1.0]})
    out = model.fold_in(new)
    assert list(out.user_ids_[-2:]) == ["zz1", "zz2"] and out.item_ids_[-1] == "new1"
    assert "new1" in set(out.recommend("u003", k=41)["item"])
    out.save(tmp_path / "m")
    back = GLocalKRecommender.load(tmp_path / "m")
    pairs = pd.DataFrame({"user": ["zz1", "zz2", "u005", "zz1"], "item": ["m0009", "new1", "new1", "new1"]})
    assert np.array_equal(back.predict(pairs), out.predict(pairs))
    pd.testing.assert_frame_equal(back.recommend("zz1", k=5), out.recommend("zz1", k=5))
    # A second fold-in adds to the first, and still saves and loads.
    again = back.fold_in(pd.DataFrame({"user": ["zz3"], "item": ["new1"], "rating": [5.0]}))
    again.save(tmp_path / "m2")
    assert GLocalKRecommender.load(tmp_path / "m2").predict("zz3", "m0001") == pytest.approx(
        again.predict("zz3", "m0001"))
    assert np.array_equal(again.predict(pairs), out.predict(pairs))


# -- bad input -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    train, _ = example_ratings(n_users=30, n_items=40, density=0.35, seed=3)
    return GLocalKRecommender("ml-100k", **TINY).fit(train)


@pytest.mark.parametrize("rows, message", [
    ([("u001", "m0001", 4.0)], "a user and an item the model knows"),
    ([("new", "newitem", 4.0)], "nothing to fold in"),
    ([("new", "m0001", 9.0)], "outside the model's rating scale"),
])
def test_ratings_fold_in_cannot_use_are_errors_naming_them(tiny_model, rows, message):
    with pytest.raises(DataError, match=message):
        tiny_model.fold_in(pd.DataFrame(rows, columns=["user", "item", "rating"]))


def test_ratings_of_items_nothing_describes_are_skipped_and_counted(tiny_model):
    out = tiny_model.fold_in(pd.DataFrame({"user": ["a", "a", "a"], "item": ["m0001", "m0002", "nobody"],
                                           "rating": [3.0, 4.0, 5.0]}))
    assert out.fold_in_ == {"n_users": 1, "n_items": 0, "n_ratings": 2, "n_skipped": 1}
    assert "nobody" not in set(out.item_ids_)


def test_new_items_rated_by_a_folded_in_user_are_an_error(tiny_model):
    once = tiny_model.fold_in(pd.DataFrame({"user": ["a"], "item": ["m0001"], "rating": [3.0]}))
    with pytest.raises(DataError, match="folded in before"):
        once.fold_in(pd.DataFrame({"user": ["a", "u001"], "item": ["x", "x"], "rating": [3.0, 4.0]}))


def test_integer_ids_of_a_model_refuse_text_ids(tmp_path):
    df = _frame(bias_ratings(20, 15, 0.5, seed=2, test_frac=0.0).train)
    model = GLocalKRecommender("ml-100k", **TINY).fit(df)
    with pytest.raises(DataError, match="ids are integers"):
        model.fold_in(pd.DataFrame({"user": ["abc"], "item": [1], "rating": [3.0]}))
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n100,1,4\n100,2,5\n")
    out = model.fold_in(path)  # a file, read by the one parser
    assert out.user_ids_[-1] == 100 and out.predict(100, 3) == pytest.approx(out.predict("100", 3))


def test_a_corrupt_fold_in_part_is_refused_on_load(tiny_model, tmp_path):
    out = tiny_model.fold_in(pd.DataFrame({"user": ["a", "a"], "item": ["m0001", "m0002"], "rating": [3.0, 4.0]}))
    out.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["folded"]["user_ids"] = ["u001"]  # repeats a trained user
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="folded-in user ids"):
        GLocalKRecommender.load(tmp_path / "m")


# -- batch top-N -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_top_k_is_the_head_of_a_stable_descending_sort(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (9, 15)).astype(np.float64)  # many ties
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    k = int(rng.integers(1, 16))
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert np.array_equal(top_k(scores, k), expected)


def same_top_k(batch: pd.DataFrame, one_by_one: pd.DataFrame, model: GLocalKRecommender) -> None:
    """Each user's ranked scores agree, and every item the batch recommends has that score for the user:
    the same top-k up to floating-point rounding (block products and per-user products round differently,
    so items whose scores agree to ~1e-6 may swap)."""
    assert list(batch["user"]) == list(one_by_one["user"]) and list(batch["rank"]) == list(one_by_one["rank"])
    assert np.allclose(batch["score"], one_by_one["score"], atol=1e-5)
    assert np.allclose(model.predict(batch["user"], batch["item"]), batch["score"], atol=1e-5)


def test_recommend_all_is_recommend_for_each_user_including_folded_in_ones(tiny_model):
    out = tiny_model.fold_in(pd.DataFrame({"user": ["a", "a", "u001"], "item": ["m0001", "new", "new"],
                                           "rating": [3.0, 4.0, 2.0]}))
    for exclude in (True, False):
        batch = out.recommend_all(5, exclude_seen=exclude, block=7)
        same_top_k(batch, out.recommend_many(out.user_ids_, k=5, exclude_seen=exclude), out)
    every = out.recommend_all(50)
    assert not {"m0001", "new"} & set(every.loc[every["user"] == "a", "item"])
    assert len(every[every["user"] == "a"]) == len(out.item_ids_) - 2
