"""The synthetic rating generator: sizes, uniqueness, scale and grid, power laws, determinism, signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from glocalk.data.matrix import RatingMatrix
from glocalk.data.synthetic import BiasSignal, bias_ratings, example_ratings, make_ratings, sample_cells, true_scores


def _all(data: RatingMatrix) -> sp.csr_matrix:
    return (data.train + data.test).tocsr() if data.test is not None else data.train


@pytest.fixture(scope="module")
def data() -> RatingMatrix:
    return make_ratings(n_users=600, n_items=400, n_ratings=20_000, rank=5, noise=0.3, seed=3)


def test_shape_and_sizes_are_exact(data):
    assert isinstance(data, RatingMatrix)
    assert data.shape == (400, 600)  # rows are items
    assert data.train.nnz + data.test.nnz == 20_000
    assert data.test.nnz == 2_000
    assert data.rating_scale == (1.0, 5.0)


def test_no_duplicate_cells_and_train_test_disjoint(data):
    overlap = data.train.multiply(data.test)
    assert overlap.nnz == 0
    both = _all(data)
    assert both.nnz == 20_000  # a duplicate would have merged into one entry


def test_ratings_on_the_scale_and_the_step_grid():
    d = make_ratings(300, 200, 5_000, rating_scale=(0.5, 5.0), step=0.5, seed=1)
    values = _all(d).data
    assert values.min() >= 0.5 and values.max() <= 5.0
    np.testing.assert_allclose(values * 2, np.round(values * 2))
    assert len(np.unique(values)) > 5  # the half stars are used
    assert 3.0 < values.mean() < 4.0  # centred at lo + 0.625 (hi - lo) = 3.3125 before clipping


def test_power_law_popularity_and_activity(data):
    both = _all(data)
    per_item = np.diff(both.indptr)
    per_user = np.bincount(both.indices, minlength=both.shape[1])
    assert per_item.max() > 8 * np.median(per_item)
    assert per_user.max() > 5 * np.median(per_user)
    flat = _all(make_ratings(600, 400, 20_000, zipf_items=0.0, zipf_users=0.0, seed=3))
    flat_items = np.diff(flat.indptr)
    assert flat_items.max() < 2 * np.median(flat_items)  # exponent 0: uniform


def test_deterministic_by_seed(data):
    again = make_ratings(n_users=600, n_items=400, n_ratings=20_000, rank=5, noise=0.3, seed=3)
    for a, b in ((data.train, again.train), (data.test, again.test)):
        assert (a != b).nnz == 0
    other = make_ratings(n_users=600, n_items=400, n_ratings=20_000, rank=5, noise=0.3, seed=4)
    assert (data.train != other.train).nnz > 0


def test_ratings_carry_the_low_rank_signal(data):
    coo = _all(data).tocoo()
    signal = true_scores(data, coo.row, coo.col)
    assert np.corrcoef(signal, coo.data)[0, 1] > 0.7  # noise 0.3 on a unit-variance signal
    pure_noise = make_ratings(600, 400, 20_000, noise=50.0, seed=3)
    c = _all(pure_noise).tocoo()
    assert abs(np.corrcoef(true_scores(pure_noise, c.row, c.col), c.data)[0, 1]) < 0.1


def test_low_rank_svd_beats_the_mean():
    # A rank-5 SVD of the (mean-filled) training matrix predicts the test ratings better than the mean.
    data = make_ratings(200, 150, 12_000, rank=5, noise=0.3, zipf_items=0.3, zipf_users=0.3, seed=2)
    train = data.train.toarray()
    mask = train > 0
    mean = train[mask].mean()
    filled = np.where(mask, train - mean, 0.0) / mask.mean()
    u, s, vt = np.linalg.svd(filled, full_matrices=False)
    approx = (u[:, :5] * s[:5]) @ vt[:5] + mean
    test = data.test.tocoo()
    truth = test.data
    rmse_svd = np.sqrt(np.mean((np.clip(approx[test.row, test.col], 1, 5) - truth) ** 2))
    rmse_mean = np.sqrt(np.mean((mean - truth) ** 2))
    assert rmse_svd < 0.8 * rmse_mean


def test_streaming_sampler_matches_the_exact_one_in_distribution():
    rng = np.random.default_rng(0)
    p_rows = np.arange(1, 41, dtype=float) ** -1.0
    p_cols = np.arange(1, 51, dtype=float) ** -0.5
    p_rows, p_cols = p_rows / p_rows.sum(), p_cols / p_cols.sum()
    exact = [sample_cells(p_rows, p_cols, 300, rng) for _ in range(40)]
    streamed = [sample_cells(p_rows, p_cols, 300, rng, exact_max_cells=0) for _ in range(40)]
    for keys in exact + streamed:
        assert len(keys) == 300 and len(np.unique(keys)) == 300 and np.all(np.diff(keys) > 0)
    row_freq_exact = np.bincount(np.concatenate(exact) // 50, minlength=40) / 40
    row_freq_stream = np.bincount(np.concatenate(streamed) // 50, minlength=40) / 40
    # Same successive-sampling distribution: per-row counts agree within sampling noise.
    np.testing.assert_allclose(row_freq_exact, row_freq_stream, atol=4.0)
    assert row_freq_stream[0] > 3 * row_freq_stream[-1]


def test_dense_request_and_full_matrix():
    d = make_ratings(20, 10, 200, test_frac=0.0, seed=0)  # every cell
    assert d.train.nnz == 200 and d.test is None
    rng = np.random.default_rng(0)
    keys = sample_cells(np.full(10, 0.1), np.full(20, 0.05), 190, rng, exact_max_cells=0)
    assert len(np.unique(keys)) == 190


@pytest.mark.parametrize("kwargs", [
    {"rating_scale": (0, 5)}, {"step": 0.3}, {"n_ratings": 10**6}, {"test_frac": 1.0}, {"rank": 0},
    {"zipf_items": -1.0},
])
def test_invalid_arguments(kwargs):
    args = {"n_users": 30, "n_items": 20, "n_ratings": 100, **kwargs}
    with pytest.raises(ValueError):
        make_ratings(**args)


def test_true_scores_needs_a_synthetic_matrix():
    plain = RatingMatrix(train=sp.csr_matrix(np.array([[1.0, 2.0]], dtype=np.float32)))
    with pytest.raises(ValueError):
        true_scores(plain, np.array([0]), np.array([0]))


# --------------------------------------------------------------------------- toy data


def test_example_ratings_look_like_a_users_files():
    train, test = example_ratings(n_users=20, n_items=30, density=0.5, seed=2)
    assert list(train.columns) == ["user", "item", "rating", "timestamp"]
    assert train["user"].str.fullmatch(r"u\d{3}").all() and train["item"].str.fullmatch(r"m\d{4}").all()
    assert set(test["user"]) <= set(train["user"]) and set(test["item"]) <= set(train["item"])
    both = pd.concat([train, test])
    assert not both.duplicated(["user", "item"]).any() and both["timestamp"].is_unique
    assert len(both) <= 300 and len(test) <= round(0.2 * 300)  # test keeps only known ids
    assert set(both["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_bias_ratings_follow_their_biases():
    n_items, n_users = 80, 60
    d = bias_ratings(n_items, n_users, density=0.5, seed=4, signal=BiasSignal(item_sd=1.0, user_sd=0.0, noise=0.1))
    assert d.shape == (n_items, n_users) and d.train.multiply(d.test).nnz == 0
    both = _all(d)
    assert set(np.unique(both.data)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert abs(both.nnz / (n_items * n_users) - 0.5) < 0.05 and abs(d.test.nnz / both.nnz - 0.2) < 0.05
    # No user bias and little noise: every item's ratings (nearly) agree with each other.
    dense = both.toarray()
    spread = [np.ptp(row[row > 0]) for row in dense if (row > 0).sum() > 1]
    assert np.mean(np.array(spread) <= 1) > 0.95
    again = bias_ratings(n_items, n_users, density=0.5, seed=4, signal=BiasSignal(item_sd=1.0, user_sd=0.0, noise=0.1))
    assert (again.train != d.train).nnz == 0
