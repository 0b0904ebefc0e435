"""Answers of a fitted model: predictions, top-N recommendations and evaluation on raw ids.

``Answering`` is the part of ``GLocalKRecommender`` that a fitted model answers with, kept in its own
module so that the estimator's module holds configuration, fitting and persistence. It is a mixin: it
reads the attributes the estimator's ``_install`` sets (``scorer_``, ``user_ids_``, ``item_ids_``,
``offset_``, ``rating_scale_``, ``_ids``, ``_clip``, ``_seen_t``, ``_source``, ``_fitted``) and the
constructor's ``unknown``, ``duplicates`` and ``rating_scale``. The ranking rules are ``glocalk.topn``'s,
the scores ``glocalk.scoring``'s; here raw ids become indices and back, and predictions are clipped to
the training scale in the user's units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from glocalk.data.scaling import RatingMap
from glocalk.errors import CheckpointError, ConfigError, DataError, TrainingError
from glocalk.metrics import evaluate as evaluate_metrics
from glocalk.own_data import read_test, unknown_message
from glocalk.scoring import Scorer
from glocalk.topn import check_k, rank_all, rank_items

UNKNOWN_POLICIES = ("error", "baseline")


class Answering:
    """predict / recommend / recommend_many / recommend_all / evaluate of a fitted ``GLocalKRecommender``."""

    def _check_fitted(self) -> None:
        if not getattr(self, "_fitted", False):
            raise RuntimeError("this GLocalKRecommender is not fitted yet: call fit() or load() first")

    def _policy(self, unknown: str | None) -> str:
        policy = self.unknown if unknown is None else unknown
        if policy not in UNKNOWN_POLICIES:
            raise ConfigError(f"unknown must be one of {UNKNOWN_POLICIES}, got {policy!r}")
        return policy

    def predict(self, users: Any, items: Any = None, *, unknown: str | None = None) -> np.ndarray | float:
        """Predicted ratings, in the data's own scale and clipped to it, for (user, item) pairs of raw ids.

        ``users`` and ``items`` are scalars or equal-length sequences; or ``users`` is a DataFrame
        with ``user`` and ``item`` columns and ``items`` is None. Two scalars give a float.
        ``unknown`` overrides the estimator's policy for ids not seen in training ("error" or "baseline").
        """
        self._check_fitted()
        policy = self._policy(unknown)
        if isinstance(users, pd.DataFrame) and items is None:
            missing = [c for c in ("user", "item") if c not in users.columns]
            if missing:
                raise DataError(f"predict: the DataFrame has no {' or '.join(missing)} column "
                                f"(columns: {', '.join(map(str, users.columns))})")
            users, items = users["user"].to_numpy(), users["item"].to_numpy()
        elif items is None:
            raise TypeError("predict(users, items): give the items too (or a DataFrame with user and item columns)")
        scalar = np.ndim(users) == 0 and np.ndim(items) == 0
        users_a, items_a = np.atleast_1d(np.asarray(users)), np.atleast_1d(np.asarray(items))
        if users_a.shape != items_a.shape or users_a.ndim != 1:
            raise DataError(f"predict: users and items differ in length ({users_a.size} vs {items_a.size})")
        pred = self._predict_raw(users_a, items_a, policy)
        return float(pred[0]) if scalar else pred

    def _predict_raw(self, users: np.ndarray, items: np.ndarray, policy: str, scorer: Scorer | None = None
                     ) -> np.ndarray:
        """Clipped predictions in the user's units; unknown ids by ``policy`` ("error" or "baseline");
        ``scorer``: another scoring core than ``scorer_`` (the comparison's bias model)."""
        scorer = scorer or self.scorer_
        u = self._ids.lookup(np.asarray(users), "user")
        i = self._ids.lookup(np.asarray(items), "item")
        known = (u >= 0) & (i >= 0)
        if policy == "error" and not known.all():
            raise DataError(unknown_message(users, items, u < 0, i < 0))
        out = np.empty(len(users), dtype=np.float64)
        out[known] = self._finite(scorer.scores(i[known], u[known]), users[known], items[known])
        out[~known] = scorer.baseline(i[~known], u[~known])
        return np.clip(out, *self._clip) - self.offset_

    def _finite(self, scores: np.ndarray, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``scores``, or an error naming the model when any is NaN or infinite (never a skipped pair)."""
        bad = ~np.isfinite(scores)
        if bad.any():
            k = int(np.argmax(bad))
            what = f"the model in {self._source}" if self._source is not None else "the fitted model"
            error = CheckpointError if self._source is not None else TrainingError
            raise error(f"{what} gives NaN or infinite predictions for {int(bad.sum())} of {len(scores)} "
                        f"(user, item) pairs (first: user {users[k]!r}, item {items[k]!r}); its weights are "
                        "corrupt or diverged: train it again")
        return scores

    def recommend(self, user: Any, k: int = 10, exclude_seen: bool = True, *,
                  unknown: str | None = None) -> pd.DataFrame:
        """The ``k`` items with the highest predicted rating for ``user`` (a raw id).

        Returns a DataFrame with columns ``item`` (raw id), ``score`` (predicted rating in the data's
        scale, clipped) and ``rank`` (1..k), in descending order of score. Ties in the clipped rating
        are broken by the unclipped prediction, then by item order. ``exclude_seen`` drops the items
        the user rated in the training data (including ratings held out for validation).
        """
        self._check_fitted()
        policy = self._policy(unknown)
        check_k(k)
        u = int(self._ids.lookup(np.array([user]), "user")[0])
        exclude = None
        if u < 0:
            if policy == "error":
                raise DataError(f"unknown user {user!r}: not in the training data "
                                "(use --unknown baseline, in Python unknown='baseline', to rank items by popularity)")
            raw = self.scorer_.mu + self.scorer_.b_item
        else:
            users = np.broadcast_to(np.array(user, dtype=object), self.item_ids_.shape)
            raw = self._finite(self.scorer_.user_scores(u), users, self.item_ids_)
            if exclude_seen:
                exclude = self._seen_t.indices[self._seen_t.indptr[u]: self._seen_t.indptr[u + 1]]
        order = rank_items(raw, exclude, k, self._clip)
        return pd.DataFrame({"item": self.item_ids_[order], "score": np.clip(raw[order], *self._clip) - self.offset_,
                             "rank": np.arange(1, len(order) + 1)})

    def recommend_many(self, users: Iterable[Any], k: int = 10, exclude_seen: bool = True, *,
                       unknown: str | None = None) -> pd.DataFrame:
        """``recommend`` for several users: one DataFrame with a leading ``user`` column."""
        frames = []
        for user in users:
            df = self.recommend(user, k, exclude_seen, unknown=unknown)
            df.insert(0, "user", pd.Series([user] * len(df), dtype=object))
            frames.append(df)
        if not frames:
            return pd.DataFrame(columns=["user", "item", "score", "rank"])
        return pd.concat(frames, ignore_index=True)

    def recommend_all(self, k: int = 10, exclude_seen: bool = True, *, block: int = 1024,
                      on_block: Callable[[int], None] | None = None) -> pd.DataFrame:
        """``recommend`` for every user the model knows (trained and folded in), in blocks of ``block`` users.

        ``recommend``'s answer for each user, from one matrix product per member and block (the same
        ranking up to floating-point rounding: items whose scores agree to ~1e-6 may swap).
        ``on_block(n)`` is called after each block with its number of users (a progress bar).
        Returns columns user, item, score, rank (users in index order).
        """
        self._check_fitted()
        check_k(k)

        def check(raw: np.ndarray, u: np.ndarray) -> None:
            if not np.isfinite(raw).all():
                self._finite(raw.ravel(), np.repeat(self.user_ids_[u], raw.shape[1]), np.tile(self.item_ids_, len(u)))

        frames = []
        for b in rank_all(self.scorer_, len(self.user_ids_), self._seen_t if exclude_seen else None, k, block, check):
            frames.append(pd.DataFrame({"user": self.user_ids_[b.users], "item": self.item_ids_[b.items],
                                        "score": np.clip(b.scores, *self._clip) - self.offset_, "rank": b.ranks}))
            if on_block is not None:
                on_block(b.n_users)
        return pd.concat(frames, ignore_index=True)

    def evaluate(self, test: Any, *, unknown: str = "skip", **read_options: Any) -> dict:
        """RMSE, MAE and NDCG (SPEC.md's definitions) of the clipped predictions on ``test``, in the data's units.

        ``test``: a DataFrame (user, item, rating), a path or a ``readers.Ratings``; ``read_options``
        go to ``readers.read_ratings`` (sep, header, columns, encoding). With a given
        ``rating_scale`` a test rating outside it is an error. Pairs with an id unknown to the
        model are skipped (``unknown="skip"``, counted in ``n_skipped``), predicted by the
        baseline (``"baseline"``) or an error (``"error"``). A NaN prediction is an error.
        """
        self._check_fitted()
        if unknown not in ("skip", *UNKNOWN_POLICIES):
            raise ConfigError(f"unknown must be 'skip', 'error' or 'baseline', got {unknown!r}")
        options = {"duplicates": self.duplicates, **read_options}
        return self._evaluate(read_test(test, self.rating_scale, **options), unknown)

    def _evaluate(self, df: pd.DataFrame, unknown: str, scorer: Scorer | None = None) -> dict:
        users, items = df["user"].to_numpy(), df["item"].to_numpy()
        truth = df["rating"].to_numpy(dtype=np.float64)
        u = self._ids.lookup(users, "user")
        i = self._ids.lookup(items, "item")
        keep = ((u >= 0) & (i >= 0)) if unknown == "skip" else np.ones(len(df), dtype=bool)
        if not keep.any():
            raise DataError(f"evaluate: none of the {len(df)} test ratings has a user and an item "
                            "known to the model")
        pred = self._predict_raw(users[keep], items[keep], "baseline" if unknown == "skip" else unknown, scorer)
        # Unknown ids get distinct negative codes so NDCG still groups by user.
        u_codes = np.where(u >= 0, u, -1 - pd.factorize(users)[0])
        i_codes = np.where(i >= 0, i, -1 - pd.factorize(items)[0])
        # NDCG's gains on the rating scale mapped onto 1..5 (data.scaling), RMSE and MAE in the user's units.
        gains = RatingMap.of(self.rating_scale_).to_model
        out = evaluate_metrics(pred, truth[keep], u_codes[keep], i_codes[keep], self.rating_scale_, gains)
        out.update(n_rated=int(keep.sum()), n_skipped=int((~keep).sum()))
        return out
