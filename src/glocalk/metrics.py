"""Rating-prediction metrics as plain vectorised functions on NumPy arrays.

Every function takes the predictions and the true ratings of the same observed entries
(1-D arrays of equal length). Predictions are clipped to the rating scale by ``evaluate``,
as the original code does before every metric.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _check(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"predictions and ratings differ in length: {pred.size} vs {truth.size}")
    if pred.size == 0:
        raise ValueError("no ratings to evaluate")
    return pred, truth


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """sqrt(mean((pred - truth)^2))."""
    pred, truth = _check(pred, truth)
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def mae(pred: np.ndarray, truth: np.ndarray) -> float:
    """mean(|pred - truth|)."""
    pred, truth = _check(pred, truth)
    return float(np.mean(np.abs(pred - truth)))


def ndcg(pred: np.ndarray, truth: np.ndarray, users: np.ndarray, items: np.ndarray | None = None) -> float:
    """The paper's NDCG: per user, over all of that user's test items, averaged over users.

    For every user with at least 2 rated entries, rank the entries by predicted score
    (ties keep ascending item order, as Python's stable sort in the original code does),
    DCG = sum_i (2^rating_i - 1) / log2(i + 2), divided by the DCG of the ideal order.
    """
    pred, truth = _check(pred, truth)
    users = np.asarray(users).ravel()
    items = np.arange(pred.size) if items is None else np.asarray(items).ravel()
    _, user_idx, counts = np.unique(users, return_inverse=True, return_counts=True)
    n_groups = counts.size
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def dcg(order: np.ndarray) -> np.ndarray:
        grouped_users = user_idx[order]
        position = np.arange(order.size) - starts[grouped_users]  # rank within the user, from 0
        gains = (np.exp2(truth[order]) - 1.0) / np.log2(position + 2.0)
        return np.bincount(grouped_users, weights=gains, minlength=n_groups)

    # lexsort: last key is primary -> by user, then descending score, then ascending item.
    actual = dcg(np.lexsort((items, -pred, user_idx)))
    ideal = dcg(np.lexsort((items, -truth, user_idx)))
    keep = counts >= 2
    if not keep.any():
        raise ValueError("NDCG needs at least one user with 2 or more rated entries")
    return float(np.mean(actual[keep] / ideal[keep]))


def evaluate(pred: np.ndarray, truth: np.ndarray, users: np.ndarray, items: np.ndarray,
             rating_scale: tuple[float, float],
             gain_units: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    """RMSE, MAE and NDCG of predictions clipped to ``rating_scale``.

    ``gain_units`` (e.g. ``RatingMap.to_model``) converts the clipped predictions and the ratings
    before NDCG, whose gains 2^r - 1 depend on the units (converted ratings below 0 count as 0);
    RMSE and MAE stay in the given units.
    """
    clipped = np.clip(np.asarray(pred, dtype=np.float64), rating_scale[0], rating_scale[1])
    out = {"rmse": rmse(clipped, truth), "mae": mae(clipped, truth)}
    if gain_units is not None:
        # A test rating far below the training scale maps below 0: it gains nothing, not a negative gain
        # (1..5 data never have one, so this changes nothing there).
        clipped, truth = gain_units(clipped), np.maximum(gain_units(np.asarray(truth, dtype=np.float64)), 0.0)
    try:
        out["ndcg"] = ndcg(clipped, truth, users, items)
    except ValueError:
        out["ndcg"] = float("nan")  # no user with two entries (tiny splits)
    return out
