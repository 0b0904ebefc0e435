"""What ``GLocalKRecommender.fit`` is given, in the forms the estimator works on.

Training data (a DataFrame, a path, a ``readers.Ratings`` or a ``RatingMatrix``) becomes matrices
with their raw ids and scale (``Prepared``); test ratings become a user, item, rating table in the
user's units; and an unknown id gets one message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from glocalk.data.matrix import RatingMatrix
from glocalk.data.readers import read_ratings, to_rating_matrix
from glocalk.errors import ConfigError


@dataclass
class Prepared:
    """Training data in matrix form plus what is needed to map raw ids and ratings back."""

    train: sp.csr_matrix  # (n_items, n_users), internal (offset) scale
    item_ids: np.ndarray
    user_ids: np.ndarray
    rating_scale: tuple[float, float]  # internal scale
    offset: float
    val: sp.csr_matrix | None = None
    test: pd.DataFrame | None = None  # user, item, rating (raw ids, the user's units)
    name: str = "ratings"


def prepare(data: Any, test: Any, rating_scale: tuple[float, float] | None, duplicates: str) -> Prepared:
    """``data`` (and ``test``, if given) as a ``Prepared``; ``rating_scale`` and ``duplicates`` as the estimator's."""
    if isinstance(data, RatingMatrix):
        return _prepare_matrix(data, test, rating_scale, duplicates)
    if isinstance(test, RatingMatrix):
        raise TypeError("fit: test must be a DataFrame, a path or a readers.Ratings, not a RatingMatrix")
    ratings = read_ratings(data, rating_scale=rating_scale, duplicates=duplicates)
    rm = to_rating_matrix(ratings)
    prep = Prepared(train=rm.train, item_ids=rm.item_ids, user_ids=rm.user_ids,
                    rating_scale=tuple(rm.rating_scale), offset=float(rm.meta["offset"]), name=rm.name)
    if test is not None:
        prep.test = read_test(test, rating_scale, duplicates)
    return prep


def _prepare_matrix(data: RatingMatrix, test: Any, rating_scale: tuple[float, float] | None,
                    duplicates: str) -> Prepared:
    if test is not None and data.test is not None:
        raise ConfigError("fit: the RatingMatrix already has a test split; do not pass test as well")
    offset = float(data.meta.get("offset", 0.0))
    prep = Prepared(train=data.train, item_ids=np.asarray(data.item_ids), user_ids=np.asarray(data.user_ids),
                    rating_scale=tuple(data.rating_scale), offset=offset, val=data.val, name=data.name)
    if data.test is not None and data.test.nnz:
        coo = data.test.tocoo()
        prep.test = pd.DataFrame({"user": prep.user_ids[coo.col], "item": prep.item_ids[coo.row],
                                  "rating": coo.data.astype(np.float64) - offset})
    elif test is not None:
        prep.test = read_test(test, rating_scale, duplicates)
    return prep


def read_test(test: Any, rating_scale: tuple[float, float] | None, duplicates: str, **read_options: Any
              ) -> pd.DataFrame:
    """Test ratings as user, item, rating (the user's units); outside a given ``rating_scale``: an error."""
    options = {"duplicates": duplicates, **read_options}
    r = read_ratings(test, rating_scale=rating_scale, **options)
    return pd.DataFrame({"user": r.df["user"].to_numpy(), "item": r.df["item"].to_numpy(),
                         "rating": r.df["rating"].to_numpy(dtype=np.float64)})


def unknown_message(users: np.ndarray, items: np.ndarray, bad_u: np.ndarray, bad_i: np.ndarray) -> str:
    """The error for (user, item) pairs whose ids were not in the training data, naming the first few."""
    parts = []
    for label, ids, bad in (("user", users, bad_u), ("item", items, bad_i)):
        if bad.any():
            pos = np.flatnonzero(bad)
            uniq = list(dict.fromkeys(ids[pos].tolist()))
            example = ", ".join(repr(v) for v in uniq[:5]) + (", ..." if len(uniq) > 5 else "")
            parts.append(f"unknown {label}{'s' if len(uniq) > 1 else ''} {example} (first at pair {pos[0] + 1})")
    return "; ".join(parts) + (": not in the training data (--unknown baseline, in Python unknown='baseline', "
                               "falls back to a user/item bias model)")
