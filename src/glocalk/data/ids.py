"""Raw ids <-> matrix indices (:class:`IdMap`) and :class:`Ratings` -> :class:`RatingMatrix`.

Rows of the matrix are items and columns users (SPEC.md); ids are sorted, so a matrix built
from the same ratings is always the same. Ids read with another type are matched by their
canonical text (int id 7 matches ``"7"``, never ``"007"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from glocalk.data.matrix import RatingMatrix
from glocalk.data.options import option
from glocalk.data.ratings import INT_ID, Ratings, show_value
from glocalk.errors import DataError

__all__ = ["IdMap", "build_matrix", "to_rating_matrix"]


@dataclass(eq=False)
class IdMap:
    """Raw user / item ids <-> contiguous 0-based indices (sorted unique raw ids, so deterministic).

    Attributes:
        user_ids: index -> raw user id.
        item_ids: index -> raw item id.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    _index: dict[str, pd.Index] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.user_ids = np.asarray(self.user_ids)
        self.item_ids = np.asarray(self.item_ids)
        self._index = {"user": pd.Index(self.user_ids), "item": pd.Index(self.item_ids)}
        for kind, idx in self._index.items():
            if not idx.is_unique:
                raise DataError(f"IdMap: duplicate {kind} ids")

    @classmethod
    def from_ratings(cls, ratings: Ratings) -> IdMap:
        """The ids occurring in ``ratings``, each kind sorted."""
        return cls(user_ids=_sorted_unique(ratings.df["user"], ratings.source, "user"),
                   item_ids=_sorted_unique(ratings.df["item"], ratings.source, "item"))

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def lookup(self, raw: Any, kind: Literal["user", "item"] = "user") -> np.ndarray:
        """Indices of ``raw`` ids (array-like), -1 for unknown ones.

        Ids read with another type are matched by their canonical text: int id 7 matches ``"7"``
        (never ``"007"``), in both directions.
        """
        idx = self._get(kind)
        vals = np.asarray(raw)
        if vals.dtype.kind in "US":
            vals = vals.astype(object)
        if len(vals) == 0 or len(idx) == 0:
            return np.full(len(vals), -1, dtype=np.int64)
        if idx.dtype.kind in "iu" and vals.dtype.kind == "O":
            text = pd.Series(vals, dtype=object)
            ok = text.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
            ok = ok & text.astype(str).str.fullmatch(INT_ID).to_numpy(dtype=bool)
            out = idx.get_indexer(vals).astype(np.int64)  # ints inside an object array
            if ok.any():
                try:
                    out[ok] = idx.get_indexer(text[ok].astype(np.int64).to_numpy())
                except (OverflowError, ValueError):
                    pass  # beyond int64: cannot be a known id
            return out
        if idx.dtype.kind not in "iuf" and vals.dtype.kind in "iu":
            vals = vals.astype(str).astype(object)
        return idx.get_indexer(vals).astype(np.int64)

    def to_index(self, raw: Any, kind: Literal["user", "item"] = "user") -> int | np.ndarray:
        """Index of one raw id (an int) or of an array of them.

        Raises:
            DataError: for ids not in the map, listing a few of them.
        """
        scalar = np.ndim(raw) == 0
        vals = np.asarray([raw] if scalar else raw)
        pos = self.lookup(vals, kind)
        bad = pos < 0
        if bad.any():
            unknown = pd.unique(vals[bad])
            known = self.user_ids if kind == "user" else self.item_ids
            raise DataError(f"unknown {kind} id(s): {_examples(unknown)} ({len(unknown)} in all); known {kind} ids "
                            f"({len(known)}, {known.dtype}) are e.g. {_examples(known)}")
        return int(pos[0]) if scalar else pos

    def to_raw(self, index: Any, kind: Literal["user", "item"] = "user") -> Any:
        """Raw id(s) of 0-based index / indices."""
        self._get(kind)
        return (self.user_ids if kind == "user" else self.item_ids)[index]

    def _get(self, kind: str) -> pd.Index:
        if kind not in self._index:
            raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
        return self._index[kind]


def _examples(values: Sequence[Any] | np.ndarray, n: int = 5) -> str:
    shown = ", ".join(show_value(v) for v in list(values[:n]))
    return shown + (", ..." if len(values) > n else "")


def _sorted_unique(col: pd.Series, source: str, kind: str) -> np.ndarray:
    try:
        _, uniques = pd.factorize(col, sort=True)
    except TypeError as e:
        raise DataError(f"{source}: {kind} ids of mixed, unorderable types ({e}); convert them to one type") from e
    out = uniques.to_numpy()
    return out.astype(object) if out.dtype.kind not in "biuf" else out


def build_matrix(ratings: Ratings, ids: IdMap, *, offset: float | None = None,
                 unknown: Literal["error", "drop"] = "error", what: str = "ratings") -> sp.csr_matrix:
    """Items x users csr matrix of ``ratings`` (plus ``offset``, default ``ratings.offset``) under ``ids``.

    Raises:
        DataError: ids not in ``ids`` (unless ``unknown="drop"``), duplicate pairs, or ratings
            that would not be > 0 after the offset.
    """
    return _build(ratings, ids, ratings.offset if offset is None else float(offset), unknown, what)[0]


def _build(ratings: Ratings, ids: IdMap, offset: float, unknown: str, what: str) -> tuple[sp.csr_matrix, int]:
    if unknown not in ("error", "drop"):
        raise ValueError(f"unknown must be 'error' or 'drop', got {unknown!r}")
    df = ratings.df
    u = ids.lookup(df["user"].to_numpy(), "user")
    i = ids.lookup(df["item"].to_numpy(), "item")
    bad = (u < 0) | (i < 0)
    n_bad = int(bad.sum())
    if n_bad and unknown == "error":
        uu = pd.unique(df["user"].to_numpy()[u < 0])
        ui = pd.unique(df["item"].to_numpy()[i < 0])
        parts = []
        if len(uu):
            parts.append(f"{len(uu)} unknown user(s), e.g. {_examples(uu)}")
        if len(ui):
            parts.append(f"{len(ui)} unknown item(s), e.g. {_examples(ui)}")
        raise DataError(f"{ratings.source}: {n_bad} {what} rating(s) have a user or item absent from the training "
                        f"data ({'; '.join(parts)}); pass unknown='drop' to drop them")
    keep = ~bad
    vals = df["rating"].to_numpy(dtype=np.float64)[keep] + offset
    if len(vals) and vals.min() <= 0:
        raise DataError(f"{ratings.source}: {what} rating {vals.min() - offset:g} is <= 0 after the offset "
                        f"{offset:g}, which a matrix cannot hold (0 means 'not rated'); read the files with a "
                        "rating_scale covering all ratings")
    vals32 = vals.astype(np.float32)
    lost = ~(np.isfinite(vals32) & (vals32 > 0))  # underflow to 0 (or overflow) in the matrix's float32
    if lost.any():
        raise DataError(f"{ratings.source}: {what} rating {vals[lost][0] - offset:g} cannot be stored as a float32 "
                        "matrix entry (it would become 0, i.e. 'not rated', or infinite); rescale the ratings")
    shape = (ids.n_items, ids.n_users)
    m = sp.csr_matrix((vals32, (i[keep], u[keep])), shape=shape)
    if m.nnz != len(vals):  # csr construction silently sums duplicates
        raise DataError(f"{ratings.source}: {what} ratings hold {len(vals) - m.nnz} duplicate (user, item) pair(s); "
                        f"read them with {option('duplicates', 'last')} or {option('duplicates', 'mean')}")
    return m, n_bad


def to_rating_matrix(train: Ratings, test: Ratings | None = None, val: Ratings | None = None, *,
                     name: str | None = None, unknown: Literal["error", "drop"] = "error") -> RatingMatrix:
    """Build a :class:`RatingMatrix` (items x users) with id maps from the TRAINING ratings.

    All splits use ``train.offset`` and the matrix's ``rating_scale`` is ``train.internal_scale``
    (matrix units). Users / items seen only in ``test`` / ``val`` raise DataError, or with
    ``unknown="drop"`` their ratings are dropped and counted in ``meta["dropped_test"]`` /
    ``meta["dropped_val"]``. ``meta`` also holds ``offset``, ``rating_scale_raw`` (user's units)
    and ``source``.
    """
    if unknown not in ("error", "drop"):
        raise ValueError(f"unknown must be 'error' or 'drop', got {unknown!r}")
    lo, hi = train.rating_scale
    if not lo < hi:
        raise DataError(f"{train.source}: every training rating is {lo:g}, so the rating scale is unknown; pass "
                        "--rating-scale MIN MAX (Python: read_ratings(..., rating_scale=(min, max)))")
    ids = IdMap.from_ratings(train)
    off = float(train.offset)
    m_train, _ = _build(train, ids, off, "error", "training")
    meta: dict[str, Any] = {"offset": off, "rating_scale_raw": tuple(train.rating_scale), "source": train.source}
    mats: dict[str, sp.csr_matrix | None] = {"test": None, "val": None}
    for label, r in (("test", test), ("val", val)):
        if r is not None:
            mats[label], dropped = _build(r, ids, off, unknown, label)
            meta[f"dropped_{label}"] = dropped
    if name is None:
        name = Path(train.source).stem or train.source
    return RatingMatrix(train=m_train, test=mats["test"], val=mats["val"], item_ids=ids.item_ids,
                        user_ids=ids.user_ids, rating_scale=train.internal_scale, name=name, meta=meta)
