"""Seeded, deterministic train / test splits of :class:`glocalk.data.readers.Ratings`.

Every function returns ``(train, test)`` Ratings (``kfold`` yields them), with the parent's
rating scale and offset and the rows in their original order; with ``return_indices=True``
they return sorted 0-based row positions into ``ratings.df`` instead. The same input and seed
always give the same split (numpy's ``default_rng``).

Rounding: a fraction ``f`` of ``n`` ratings is ``floor(f * n + 0.5)`` (half up).

Cold start: the splits do not try to keep every test user / item in the training part (a
random holdout can move all ratings of a rare item to test). :func:`unseen_in_train` counts
such ratings, and :func:`glocalk.data.readers.to_rating_matrix` raises for them or, with
``unknown="drop"``, drops them and records how many.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from glocalk.data.ids import IdMap
from glocalk.data.options import COLUMN_ALIASES
from glocalk.data.ratings import Ratings
from glocalk.data.sampling import random_mask
from glocalk.errors import DataError

__all__ = [
    "kfold",
    "per_user_holdout",
    "random_holdout",
    "time_holdout",
    "unseen_in_train",
    "validation_split",
]

Split = tuple[Ratings, Ratings] | tuple[np.ndarray, np.ndarray]


def _n_of(frac: float, n: int) -> int:
    return int(np.floor(frac * n + 0.5))


def _check_frac(frac: float, name: str) -> None:
    if not 0.0 < frac < 1.0:
        raise DataError(f"{name} (--{name.replace('_', '-')}) must be in (0, 1), got {frac}")


def _finish(r: Ratings, is_test: np.ndarray, return_indices: bool, what: str) -> Split:
    test_idx = np.flatnonzero(is_test)
    train_idx = np.flatnonzero(~is_test)
    if len(test_idx) == 0 or len(train_idx) == 0:
        empty = "test" if len(test_idx) == 0 else "training"
        raise DataError(f"{r.source}: {what} of {len(r)} ratings leaves the {empty} part empty; "
                        "change the fraction or use more data")
    if return_indices:
        return train_idx, test_idx
    return r.take(train_idx), r.take(test_idx)


def _random_split(r: Ratings, frac: float, seed: int, return_indices: bool, name: str, what: str) -> Split:
    _check_frac(frac, name)
    return _finish(r, random_mask(len(r), _n_of(frac, len(r)), seed), return_indices, f"a {frac:g} {what}")


def random_holdout(r: Ratings, test_frac: float = 0.1, seed: int = 0, *, return_indices: bool = False) -> Split:
    """Move a seeded random ``test_frac`` of all ratings to test."""
    return _random_split(r, test_frac, seed, return_indices, "test_frac", "random holdout")


def validation_split(r: Ratings, frac: float = 0.1, seed: int = 0, *, return_indices: bool = False) -> Split:
    """Split (training) ratings into ``(train, val)``: a seeded random ``frac`` goes to val.

    Apply it to the training part of an earlier split so that validation never sees test data.
    The draw is the one of :meth:`glocalk.data.RatingMatrix.with_validation`
    (:func:`glocalk.data.sampling.random_mask`), over the table's rows.
    """
    return _random_split(r, frac, seed, return_indices, "frac", "validation split")


def _rank_within(codes: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """0-based rank of each row within its group ``codes``, ordered by ``keys`` (last key primary)."""
    order = np.lexsort((*keys, codes))
    counts = np.bincount(codes)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(codes)) - starts[codes[order]]
    return rank


def _per_user_counts(codes: np.ndarray, test_frac: float | None, n_test: int | None, min_train: int) -> np.ndarray:
    n_u = np.bincount(codes)
    k = np.full(len(n_u), n_test, dtype=np.int64) if n_test is not None else np.floor(test_frac * n_u + 0.5)
    k = k.astype(np.int64)
    k[n_u - k < min_train] = 0  # too few ratings: the user keeps them all in train
    return k


def _check_per_user(test_frac: float | None, n_test: int | None, min_train: int) -> None:
    if n_test is None:
        _check_frac(test_frac, "test_frac")
    elif n_test < 1:
        raise DataError(f"n_test must be >= 1, got {n_test}")
    if min_train < 0:
        raise DataError(f"min_train must be >= 0, got {min_train}")


def per_user_holdout(r: Ratings, test_frac: float = 0.2, n_test: int | None = None, seed: int = 0,
                     min_train: int = 1, *, return_indices: bool = False) -> Split:
    """Per user, move a seeded random ``test_frac`` of their ratings (or exactly ``n_test``) to test.

    Users for whom that would leave fewer than ``min_train`` training ratings keep all of them in
    train.
    """
    _check_per_user(test_frac, n_test, min_train)
    codes = pd.factorize(r.df["user"])[0]
    rand = np.random.default_rng(seed).random(len(r))
    k = _per_user_counts(codes, test_frac, n_test, min_train)
    is_test = _rank_within(codes, rand) < k[codes]
    label = f"{n_test} per user" if n_test is not None else f"{test_frac:g} per user"
    return _finish(r, is_test, return_indices, f"a holdout of {label}")


def _time_key(r: Ratings) -> np.ndarray:
    if not r.has_timestamp:
        raise DataError(
            f"{r.source}: the time-based holdout needs a timestamp column, but these ratings have none; read them "
            f"with --time-col NAME (Python: time_col='<column name>' or a 0-based position) (recognised names: "
            f"{', '.join(COLUMN_ALIASES['timestamp'])})")
    # A dense rank orders numbers, datetimes and tz-aware datetimes alike; ties stay ties.
    return r.df["timestamp"].rank(method="dense").to_numpy(dtype=np.float64)


def time_holdout(r: Ratings, test_frac: float = 0.2, per_user: bool = False, min_train: int = 1, *,
                 return_indices: bool = False) -> Split:
    """Move the latest ``test_frac`` of ratings to test: over all ratings, or per user.

    Ties in time are broken by row order (later rows count as later). With ``per_user``, users
    for whom the holdout would leave fewer than ``min_train`` training ratings keep them all.

    Raises:
        DataError: the ratings have no timestamp column.
    """
    t = _time_key(r)
    pos = np.arange(len(r))
    if per_user:
        _check_per_user(test_frac, None, min_train)
        codes = pd.factorize(r.df["user"])[0]
        k = _per_user_counts(codes, test_frac, None, min_train)
        is_test = _rank_within(codes, -pos, -t) < k[codes]  # rank 0 = the user's latest rating
        return _finish(r, is_test, return_indices, f"a time holdout of the latest {test_frac:g} per user")
    _check_frac(test_frac, "test_frac")
    n_test = _n_of(test_frac, len(r))
    is_test = np.zeros(len(r), dtype=bool)
    if n_test:
        is_test[np.lexsort((pos, t))[-n_test:]] = True
    return _finish(r, is_test, return_indices, f"a time holdout of the latest {test_frac:g}")


def kfold(r: Ratings, k: int = 5, seed: int = 0, *, return_indices: bool = False) -> Iterator[Split]:
    """Yield ``k`` (train, test) pairs; every rating is in exactly one test fold.

    Folds are a seeded random partition with sizes differing by at most one.
    """
    if not 2 <= k <= len(r):  # checked here, not on the first next(), so bad calls fail at once
        raise DataError(f"kfold: k must be between 2 and the number of ratings ({len(r)}), got {k}")
    folds = np.array_split(np.random.default_rng(seed).permutation(len(r)), k)

    def gen() -> Iterator[Split]:
        for fold in folds:
            is_test = np.zeros(len(r), dtype=bool)
            is_test[fold] = True
            yield _finish(r, is_test, return_indices, f"a {k}-fold split")

    return gen()


def unseen_in_train(train: Ratings, test: Ratings) -> dict[str, int]:
    """Count the ``test`` users / items absent from ``train`` and the test ratings they touch.

    Returns:
        ``{"users": ..., "items": ..., "ratings": ...}``.
    """
    ids = IdMap.from_ratings(train)
    u = ids.lookup(test.df["user"].to_numpy(), "user")
    i = ids.lookup(test.df["item"].to_numpy(), "item")
    return {
        "users": int(pd.unique(test.df["user"].to_numpy()[u < 0]).size),
        "items": int(pd.unique(test.df["item"].to_numpy()[i < 0]).size),
        "ratings": int(((u < 0) | (i < 0)).sum()),
    }
