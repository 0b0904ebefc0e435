"""glocalk.topn: the ranking rules, against hand-worked examples and a brute-force sort."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from glocalk.topn import rank_all, rank_items


def test_rank_items_orders_by_clipped_then_raw_score_then_item_index():
    # Scale 1..5: items 0 and 3 both clip to 5 (raw 6 beats raw 5.5); items 1 and 4 tie exactly at 4.0
    # (the lower index first); item 2 is excluded although it scores highest.
    raw = np.array([5.5, 4.0, 9.0, 6.0, 4.0, 2.0])
    assert rank_items(raw, np.array([2]), 4, (1.0, 5.0)).tolist() == [3, 0, 1, 4]
    assert rank_items(raw, None, 2, (1.0, 5.0)).tolist() == [2, 3]
    # Fewer candidates than k: all of them.
    assert rank_items(raw, np.array([0, 1, 2, 3]), 10, (1.0, 5.0)).tolist() == [4, 5]


class _Scores:
    """A stand-in scoring core: block_scores from a fixed (n_users, n_items) matrix."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    def block_scores(self, users: np.ndarray) -> np.ndarray:
        return self.matrix[users].copy()


def test_rank_all_equals_a_stable_sort_per_user_with_seen_items_left_out():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(3.0, 1.0, (7, 12)), 1)  # rounded: many exact ties
    seen = sp.random(7, 12, density=0.4, random_state=1, format="csr")
    seen.data[:] = 1.0
    seen[6, :] = 1.0  # a user who rated everything gets no rows
    seen = sp.csr_matrix(seen)
    blocks = list(rank_all(_Scores(scores), 7, seen, k=5, block=3))
    assert [b.n_users for b in blocks] == [3, 3, 1]
    users = np.concatenate([b.users for b in blocks])
    items = np.concatenate([b.items for b in blocks])
    ranks = np.concatenate([b.ranks for b in blocks])
    got_scores = np.concatenate([b.scores for b in blocks])
    for u in range(7):
        unseen = [i for i in range(12) if seen[u, i] == 0]
        expected = sorted(unseen, key=lambda i: (-scores[u, i], i))[:5]
        assert items[users == u].tolist() == expected
        assert ranks[users == u].tolist() == list(range(1, len(expected) + 1))
        assert np.array_equal(got_scores[users == u], scores[u, expected])
    # Without exclusion every user has k rows.
    assert all(len(b.users) == 5 * b.n_users for b in rank_all(_Scores(scores), 7, None, k=5, block=4))
