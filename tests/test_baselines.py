"""Baselines: closed forms, validation-only selection, clipping."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from glocalk.baselines import BiasedMF, Biases, GlobalMean, entries, fit_biases, make_baseline
from glocalk.data.matrix import RatingMatrix
from glocalk.data.synthetic import BiasSignal, bias_ratings
from glocalk.errors import ConfigError
from glocalk.metrics import rmse


def biased_data(n_items: int = 60, n_users: int = 50, density: float = 0.4, seed: int = 0) -> RatingMatrix:
    """Ratings = 3 + strong item and user biases + small noise, rounded to 1..5; 20% test."""
    return bias_ratings(n_items, n_users, density, seed, BiasSignal(item_sd=0.9, user_sd=0.7, noise=0.3),
                        name="biased")


@pytest.fixture(scope="module")
def data() -> RatingMatrix:
    return biased_data().with_validation(0.1, seed=3)


def test_global_mean_predicts_the_training_mean(data):
    m = GlobalMean()
    history = m.fit(data)
    assert len(history) == 1 and m.selected is history[0]
    np.testing.assert_allclose(m.predict([0, 5], [1, 2]), data.train.data.mean())
    items, users, truth = entries(data.test)
    assert history[0]["test_rmse"] == pytest.approx(rmse(np.full(truth.shape, data.train.data.mean()), truth))


def test_biases_beat_the_global_mean_on_biased_data(data):
    mean, biases = GlobalMean(), Biases()
    mean.fit(data)
    biases.fit(data)
    assert biases.selected["val_rmse"] < 0.7 * mean.selected["val_rmse"]
    assert biases.selected["test_rmse"] < 0.7 * mean.selected["test_rmse"]


def test_biases_one_sweep_matches_a_hand_computation():
    # Ratings (item, user, r): (0, 0, 5), (0, 1, 4), (1, 0, 3); mu = 4, reg = 1 for both.
    items, users, r = np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([5.0, 4.0, 3.0])
    mu, b_i, b_u = fit_biases(items, users, r, (2, 2), regs=(1.0, 1.0), sweeps=1)
    assert mu == 4.0
    # b_i0 = (1 + 0) / (1 + 2), b_i1 = -1 / (1 + 1)
    np.testing.assert_allclose(b_i, [1 / 3, -1 / 2])
    # b_u0 = ((5 - 4 - 1/3) + (3 - 4 + 1/2)) / (1 + 2) = 1/18, b_u1 = (4 - 4 - 1/3) / (1 + 1) = -1/6
    np.testing.assert_allclose(b_u, [1 / 18, -1 / 6])


def test_biases_converge_to_the_ridge_solution():
    rng = np.random.default_rng(1)
    n_items, n_users, n = 7, 6, 25
    cells = rng.choice(n_items * n_users, n, replace=False)
    items, users = cells // n_users, cells % n_users
    r = rng.integers(1, 6, n).astype(float)
    reg_i, reg_u = 2.0, 3.0
    mu, b_i, b_u = fit_biases(items, users, r, (n_items, n_users), (reg_i, reg_u), sweeps=500)
    # Normal equations of sum (r - mu - b_i - b_u)^2 + reg_i |b_i|^2 + reg_u |b_u|^2.
    x = np.zeros((n, n_items + n_users))
    x[np.arange(n), items] = 1
    x[np.arange(n), n_items + users] = 1
    penalty = np.diag([reg_i] * n_items + [reg_u] * n_users)
    exact = np.linalg.solve(x.T @ x + penalty, x.T @ (r - mu))
    np.testing.assert_allclose(np.concatenate([b_i, b_u]), exact, atol=1e-8)


def _scrambled_test(data: RatingMatrix) -> RatingMatrix:
    test = data.test.copy()
    test.data = np.random.default_rng(9).integers(1, 6, test.nnz).astype(np.float32)
    return replace(data, test=test)


@pytest.mark.parametrize("make", [lambda: Biases(), lambda: BiasedMF(factors=4, epochs=8, patience=3)])
def test_selection_never_depends_on_the_test_set(data, make):
    a, b = make(), make()
    a.fit(data)
    b.fit(_scrambled_test(data))
    assert a.selected["epoch"] == b.selected["epoch"]
    assert a.selected["val_rmse"] == b.selected["val_rmse"]
    assert {k: v for k, v in a.info.items() if k != "seconds"} == {k: v for k, v in b.info.items() if k != "seconds"}


def test_biases_keep_the_selected_sweep(data):
    m = Biases(sweeps=5)
    history = m.fit(data)
    assert m.selected == min(history, key=lambda r: r["val_rmse"])
    items, users, truth = entries(data.val)
    assert rmse(m.predict(items, users), truth) == pytest.approx(m.selected["val_rmse"])


def test_biased_mf_selects_the_epoch_with_the_lowest_validation_rmse(data):
    m = BiasedMF(factors=8, epochs=30, patience=4, regs=(0.02, 0.1))
    history = m.fit(data)
    best = min(history, key=lambda r: r["val_rmse"])
    assert m.selected is best
    assert len(history) <= best["epoch"] + 4  # early stopping
    items, users, truth = entries(data.val)
    assert rmse(m.predict(items, users), truth) == pytest.approx(best["val_rmse"])
    chosen = min(m.info["grid"], key=lambda g: g["val_rmse"])
    assert m.info["reg"] == chosen["reg"] == best["reg"]
    assert {"train_rmse", "val_rmse", "val_mae", "val_ndcg", "test_rmse", "test_mae", "test_ndcg"} <= set(best)


def test_biased_mf_beats_the_global_mean(data):
    mean, mf = GlobalMean(), BiasedMF(factors=8, epochs=40, patience=5)
    mean.fit(data)
    mf.fit(data)
    assert mf.selected["test_rmse"] < 0.8 * mean.selected["test_rmse"]


def test_without_validation_the_last_epoch_is_kept():
    data = biased_data()
    m = BiasedMF(factors=4, epochs=3)
    history = m.fit(data)
    assert len(history) == 3 and m.selected is history[-1] and m.info["reg"] == m.default_reg
    assert "val_rmse" not in history[-1]


def test_predictions_are_clipped_to_the_rating_scale(data):
    m = Biases()
    m.fit(data)
    m.b_item = m.b_item + 100.0
    assert np.all(m.predict(np.arange(5), np.arange(5)) == 5.0)
    m.b_item = m.b_item - 200.0
    assert np.all(m.predict(np.arange(5), np.arange(5)) == 1.0)


def test_biased_mf_is_seeded(data):
    a = BiasedMF(factors=4, epochs=3, regs=(0.05,), seed=7)
    b = BiasedMF(factors=4, epochs=3, regs=(0.05,), seed=7)
    a.fit(data)
    b.fit(data)
    assert [r["val_rmse"] for r in a.history] == [r["val_rmse"] for r in b.history]


def test_make_baseline():
    assert isinstance(make_baseline("biases"), Biases)
    mf = make_baseline("biased-mf", seed=3, factors=5)
    assert isinstance(mf, BiasedMF) and mf.seed == 3 and mf.factors == 5
    with pytest.raises(ConfigError, match="unknown baseline"):
        make_baseline("svd++")
