"""Metrics against hand values and a brute-force re-implementation of the original NDCG loop.

The reference ``original_ndcg`` follows the authors' code: per user, the test items in ascending
item order, ``sorted(..., key=score, reverse=True)`` (Python's stable sort keeps the original,
ascending-item order among equal scores), DCG with gains 2^r - 1 and discounts log2(i + 2) over
all of the user's test items, divided by the ideal DCG; users with fewer than 2 test ratings are
skipped.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from glocalk.metrics import evaluate, mae, ndcg, rmse


def original_ndcg(pred, truth, users, items):
    """Brute force, plain Python: the original per-user sorted() loop."""
    by_user = {}
    for p, t, u, i in zip(pred, truth, users, items, strict=True):
        by_user.setdefault(u, []).append((i, float(p), float(t)))
    total, count = 0.0, 0
    for u in sorted(by_user):
        entries = sorted(by_user[u])  # ascending item, as np.where over the user's row gives them
        if len(entries) < 2:
            continue
        score_label = [[p, t] for _, p, t in entries]
        ranked = sorted(score_label, key=lambda d: d[0], reverse=True)
        ideal = sorted(ranked, key=lambda d: d[1], reverse=True)
        dcg = sum((2 ** s[1] - 1) / math.log2(2 + i) for i, s in enumerate(ranked))
        norm = sum((2 ** s[1] - 1) / math.log2(2 + i) for i, s in enumerate(ideal))
        total += dcg / norm
        count += 1
    return total / count


# --------------------------------------------------------------------------- RMSE / MAE


def test_rmse_mae_hand_values():
    pred, truth = np.array([1.0, 2.0, 3.0, 4.5]), np.array([1.0, 3.0, 5.0, 4.0])
    # errors 0, -1, -2, .5: squares sum 5.25, abs sum 3.5.
    assert rmse(pred, truth) == pytest.approx(math.sqrt(5.25 / 4), rel=1e-12)
    assert mae(pred, truth) == pytest.approx(3.5 / 4, rel=1e-12)
    assert rmse([2.0], [2.0]) == 0.0 and mae([2.0], [2.0]) == 0.0
    assert isinstance(rmse(pred, truth), float) and isinstance(mae(pred, truth), float)


def test_metrics_accept_float32_and_2d_input():
    pred = np.array([[1.5, 2.5]], dtype=np.float32)
    truth = np.array([[1.0, 3.0]], dtype=np.float32)
    assert rmse(pred, truth) == pytest.approx(0.5) and mae(pred, truth) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [rmse, mae])
def test_empty_and_mismatched_input_raise(fn):
    with pytest.raises(ValueError, match="no ratings"):
        fn(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="differ in length"):
        fn(np.array([1.0, 2.0]), np.array([1.0]))


def test_ndcg_empty_and_no_eligible_user_raise():
    with pytest.raises(ValueError):
        ndcg(np.array([]), np.array([]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="at least one user"):
        ndcg(np.array([3.0, 4.0]), np.array([3.0, 5.0]), users=np.array([0, 1]), items=np.array([0, 0]))


# --------------------------------------------------------------------------- NDCG


def test_ndcg_hand_value_with_tie():
    # One user, items 0, 1, 2; predictions tie on items 0 and 1 -> item 0 (ascending) first.
    # Ranked truths 1, 5, 3: DCG = 1/1 + 31/log2(3) + 7/2. Ideal 5, 3, 1: 31/1 + 7/log2(3) + 1/2.
    dcg = 1 + 31 / math.log2(3) + 7 / 2
    idcg = 31 + 7 / math.log2(3) + 1 / 2
    got = ndcg(np.array([3.0, 3.0, 1.0]), np.array([1.0, 5.0, 3.0]), np.zeros(3, int), np.array([0, 1, 2]))
    assert got == pytest.approx(dcg / idcg, rel=1e-12), "ties must keep ascending item order"
    # The same entries given in a different order: the tie still resolves by item id, not input position.
    got2 = ndcg(np.array([1.0, 3.0, 3.0]), np.array([3.0, 5.0, 1.0]), np.zeros(3, int), np.array([2, 1, 0]))
    assert got2 == pytest.approx(dcg / idcg, rel=1e-12), "tie-break must use item ids, not input order"


def test_ndcg_perfect_and_averaged_over_users():
    truth = np.array([5.0, 3.0, 1.0, 4.0, 2.0])
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([0, 1, 2, 0, 1])
    assert ndcg(truth.copy(), truth, users, items) == pytest.approx(1.0)
    # User 1 reversed: DCG = 3/1 + 15/log2(3), ideal 15 + 3/log2(3); user 0 perfect.
    pred = np.array([5.0, 3.0, 1.0, 1.0, 2.0])
    u1 = (3 + 15 / math.log2(3)) / (15 + 3 / math.log2(3))
    assert ndcg(pred, truth, users, items) == pytest.approx((1.0 + u1) / 2, rel=1e-12)
    # A third user with a single rating is skipped (does not count as 1 or 0).
    pred3, truth3 = np.append(pred, 4.0), np.append(truth, 1.0)
    users3, items3 = np.append(users, 2), np.append(items, 7)
    assert ndcg(pred3, truth3, users3, items3) == pytest.approx((1.0 + u1) / 2, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ndcg_matches_original_loop(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 25
    mask = rng.random((n_items, n_users)) < 0.3
    mask[:, 0] = False
    mask[3, 0] = True  # user 0 has a single rating: skipped
    mask[:, 1] = False  # user 1 has none
    items, users = np.nonzero(mask)
    truth = rng.integers(1, 6, items.size).astype(float)
    # Coarse predictions: many ties, including ties that span different true ratings.
    pred = np.round(rng.uniform(0.5, 5.5, items.size) * 2) / 2
    order = rng.permutation(items.size)  # entries in arbitrary order
    args = (pred[order], truth[order], users[order], items[order])
    ref = original_ndcg(*args)
    assert ndcg(*args) == pytest.approx(ref, rel=1e-12, abs=1e-12), "NDCG differs from the original loop"
    clipped = np.clip(pred, 1, 5)[order]
    assert evaluate(pred[order], *args[1:], (1.0, 5.0))["ndcg"] == pytest.approx(
        original_ndcg(clipped, *args[1:]), rel=1e-12), "evaluate's NDCG is on the clipped predictions"


def test_ndcg_items_default_is_input_order():
    # Without item ids the tie-break falls back to the input order.
    got = ndcg(np.array([2.0, 2.0]), np.array([1.0, 5.0]), np.array([0, 0]))
    assert got == pytest.approx((1 + 31 / math.log2(3)) / (31 + 1 / math.log2(3)), rel=1e-12)


# --------------------------------------------------------------------------- evaluate (clipping)


def test_evaluate_clips_to_rating_scale():
    pred = np.array([0.0, 6.0, 3.0, -2.0])
    truth = np.array([1.0, 5.0, 3.0, 1.0])
    users, items = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    out = evaluate(pred, truth, users, items, (1.0, 5.0))
    assert out["rmse"] == pytest.approx(0.0, abs=1e-12) and out["mae"] == pytest.approx(0.0, abs=1e-12), out
    assert out["ndcg"] == pytest.approx(1.0)
    # Without clipping the errors would be 1, 1, 0, 3.
    assert rmse(pred, truth) == pytest.approx(math.sqrt(11 / 4))
    # Other scales clip to their own bounds.
    out = evaluate(np.array([0.2, 12.0]), np.array([0.5, 10.0]), np.array([0, 1]), np.array([0, 0]), (0.5, 10.0))
    assert out["rmse"] == pytest.approx(0.0, abs=1e-12) and out["mae"] == pytest.approx(0.0, abs=1e-12)


def test_evaluate_clipping_changes_ndcg_ranking():
    # Unclipped, item 1 (pred 6, truth 4) ranks first; clipped both are 5 and the tie keeps item 0
    # (truth 5) first, the ideal order.
    pred, truth = np.array([5.5, 6.0]), np.array([5.0, 4.0])
    users, items = np.array([0, 0]), np.array([0, 1])
    assert ndcg(pred, truth, users, items) < 1.0
    assert evaluate(pred, truth, users, items, (1.0, 5.0))["ndcg"] == pytest.approx(1.0)


def test_evaluate_ndcg_nan_without_eligible_user():
    out = evaluate(np.array([3.0, 4.0]), np.array([3.0, 5.0]), np.array([0, 1]), np.array([0, 0]), (1.0, 5.0))
    assert math.isnan(out["ndcg"]) and out["rmse"] == pytest.approx(math.sqrt(0.5))
