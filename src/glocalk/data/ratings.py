"""Normalised rating records (:class:`Ratings`) and their validation.

Every reader ends here: :func:`normalise` turns raw user / item / rating (/ timestamp) columns
into :class:`Ratings`, raising :class:`glocalk.errors.DataError` naming the source and the line
or row for missing ids, non-numeric or out-of-scale ratings, ratings a float32 matrix cannot
hold, unparsable timestamps and duplicate (user, item) pairs.

Offset. The matrix representation uses 0 for "not rated", so ratings must be > 0 there. When
the rating scale's minimum is <= 0 (e.g. 0..10 or -10..10), :attr:`Ratings.offset` is set to
``1 - min`` and :func:`glocalk.data.ids.to_rating_matrix` stores ``rating + offset`` (so the scale
starts at 1); consumers subtract ``offset`` from predictions (it is in
``RatingMatrix.meta["offset"]``). :attr:`Ratings.df` and :attr:`Ratings.rating_scale` always stay
in the user's units.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from glocalk.data.options import option
from glocalk.errors import DataError

__all__ = ["INT_ID", "Ratings", "check_ids", "normalise", "show_value"]

INT_ID = r"-?(?:0|[1-9][0-9]*)"  # a canonical integer id: "42", "-3", not "007" or "4.0"


@dataclass
class Ratings:
    """Normalised rating records of one source.

    Attributes:
        df: one row per rating with columns ``user``, ``item`` (raw ids), ``rating`` (float64,
            in the user's units) and, when known, ``timestamp`` (numeric or datetime64).
        source: a label for messages (the file path, or ``"DataFrame"``).
        rating_scale: (min, max) in the user's units; None derives it from the data.
        offset: added to ratings when they are put into a matrix so that the smallest rating is
            >= 1 (0 means "not rated" there); None derives it: ``1 - min`` when the scale's min
            is <= 0, else 0.0. Predictions are shifted back by subtracting it.
    """

    df: pd.DataFrame
    source: str = "ratings"
    rating_scale: tuple[float, float] | None = None
    offset: float | None = None

    def __post_init__(self) -> None:
        missing = [c for c in ("user", "item", "rating") if c not in self.df.columns]
        if missing:
            raise DataError(f"{self.source}: Ratings.df lacks column(s) {missing}; it has {list(self.df.columns)} "
                            "(use read_ratings to read arbitrary layouts)")
        if self.df["rating"].dtype != np.float64:
            self.df = self.df.assign(rating=self.df["rating"].astype(np.float64))
        if self.rating_scale is None:
            if len(self.df) == 0:
                raise DataError(f"{self.source}: no ratings, so no rating scale can be derived")
            self.rating_scale = (float(self.df["rating"].min()), float(self.df["rating"].max()))
        lo, hi = (float(v) for v in self.rating_scale)
        self.rating_scale = (lo, hi)
        if self.offset is None:
            self.offset = 1.0 - lo if lo <= 0 else 0.0
        self.offset = float(self.offset)
        if lo + self.offset <= 0:
            raise DataError(f"{self.source}: offset {self.offset:g} leaves the scale minimum {lo:g} at "
                            f"{lo + self.offset:g}; matrix ratings must be > 0 (0 means 'not rated')")

    def __len__(self) -> int:
        return len(self.df)

    @property
    def n_users(self) -> int:
        return int(self.df["user"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.df["item"].nunique())

    @property
    def has_timestamp(self) -> bool:
        return "timestamp" in self.df.columns

    @property
    def internal_scale(self) -> tuple[float, float]:
        """The rating scale as stored in matrices: ``rating_scale`` shifted by ``offset``."""
        lo, hi = self.rating_scale
        return (lo + self.offset, hi + self.offset)

    def take(self, rows: np.ndarray | Sequence[int]) -> Ratings:
        """The ratings at the given 0-based row positions, with the same scale and offset."""
        sub = self.df.iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)
        return Ratings(sub, source=self.source, rating_scale=self.rating_scale, offset=self.offset)


def check_ids(df: pd.DataFrame, where: Callable[[int], str], source: str) -> None:
    for role in ("user", "item"):
        bad = df[role].isna().to_numpy()
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(f"{source}: {where(int(df.index[k]))}: missing {role} id "
                            f"({int(bad.sum())} row(s) without one)")


def normalise(df: pd.DataFrame, where: Callable[[int], str], source: str, rating_scale: tuple[float, float] | None,
               duplicates: str, offset: float | None, *, ids_are_text: bool) -> Ratings:
    """Validate raw columns (index = position for ``where``) and build Ratings."""
    check_ids(df, where, source)

    raw = df["rating"]
    missing = raw.isna().to_numpy()
    if missing.any():
        k = int(np.argmax(missing))
        raise DataError(f"{source}: {where(int(df.index[k]))}: missing (empty or NaN) rating "
                        f"({int(missing.sum())} row(s) without one)")
    if raw.dtype.kind in "biuf":
        values = raw.to_numpy(dtype=np.float64)
    else:
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(f"{source}: {where(int(df.index[k]))}: rating {show_value(raw.iloc[k])} is not a finite number "
                        f"({int(bad.sum())} such row(s)); ratings must be numeric")
    _check_float32(values, df.index, where, source)
    if rating_scale is not None:
        lo, hi = rating_scale
        out = (values < lo) | (values > hi)
        if out.any():
            k = int(np.argmax(out))
            raise DataError(f"{source}: {where(int(df.index[k]))}: rating {values[k]:g} is outside the rating "
                            f"scale {lo:g}..{hi:g} ({int(out.sum())} such row(s))")
    else:
        # A constant-rating file (e.g. a small test file) is fine here; to_rating_matrix rejects it as training data.
        rating_scale = (float(values.min()), float(values.max()))

    cols: dict[str, Any] = {
        "user": _tidy_ids(df["user"], ids_are_text),
        "item": _tidy_ids(df["item"], ids_are_text),
        "rating": values,
    }
    if "timestamp" in df.columns:
        cols["timestamp"] = _parse_time(df["timestamp"], where, source)
    out = pd.DataFrame(cols, index=df.index)
    out = _dedupe(out, duplicates, where, source)
    return Ratings(out.reset_index(drop=True), source=source, rating_scale=rating_scale, offset=offset)


def _check_float32(values: np.ndarray, index: pd.Index, where: Callable[[int], str],
                   source: str) -> None:
    """Ratings are stored as float32: one that would underflow to 0 (or a subnormal) or overflow to
    infinity there would silently vanish or break training, so it is an error naming the line."""
    info = np.finfo(np.float32)
    size = np.abs(values)
    bad = ((size > 0) & (size < info.tiny)) | (size > info.max)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(f"{source}: {where(int(index[k]))}: rating {values[k]:g} cannot be stored as a "
                        f"float32 (magnitudes from {info.tiny:.3g} to {info.max:.3g}, or 0) ({int(bad.sum())} such "
                        "row(s)); rescale the ratings")


def _tidy_ids(col: pd.Series, from_text: bool) -> pd.Series:
    if from_text:
        # Text ids become int64 only when every one is a canonical integer, so "007" stays "007".
        if col.str.fullmatch(INT_ID).all():
            try:
                if getattr(col.dtype, "storage", None) == "pyarrow":  # arrow's cast is ~20x numpy's object path
                    return pd.Series(col.astype("int64[pyarrow]").to_numpy(dtype=np.int64), index=col.index)
                return col.astype(np.int64)
            except (OverflowError, ValueError, TypeError, ArithmeticError):
                return col  # beyond int64: keep the text
        return col
    if col.dtype.kind == "f":
        vals = col.to_numpy()
        if np.all(vals == np.round(vals)) and np.all(np.abs(vals) < 2**53):
            return col.astype(np.int64)
    return col


def _parse_time(col: pd.Series, where: Callable[[int], str], source: str) -> pd.Series:
    hint = f"pass {option('time_col', False)} to ignore timestamps, or {option('time_col')} to pick another column"
    missing = col.isna().to_numpy()
    if missing.any():
        k = int(np.argmax(missing))
        raise DataError(f"{source}: {where(int(col.index[k]))}: missing timestamp; {hint}")
    if col.dtype.kind in "biufM":
        return col
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().all():
        return num
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when it falls back to per-element format guessing
        parsed = pd.to_datetime(col, errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(f"{source}: {where(int(col.index[k]))}: timestamp {show_value(col.iloc[k])} is neither a "
                        f"number nor a date; {hint}")
    return parsed


def _dedupe(df: pd.DataFrame, policy: str, where: Callable[[int], str], source: str) -> pd.DataFrame:
    key = ["user", "item"]
    later = df.duplicated(key, keep="first").to_numpy()
    if not later.any():
        return df
    if policy == "error":
        j = int(np.argmax(later))
        u, i = df["user"].iloc[j], df["item"].iloc[j]
        same = np.flatnonzero(((df["user"] == u) & (df["item"] == i)).to_numpy())
        at = f"{where(int(df.index[same[0]]))} and {where(int(df.index[j]))}"
        raise DataError(
            f"{source}: duplicate rating for user {show_value(u)} and item {show_value(i)} at {at} ({int(later.sum())} "
            f"duplicate row(s) in all); pass {option('duplicates', 'last')} to keep the last rating of each pair "
            f"or {option('duplicates', 'mean')} to average them")
    if policy in ("last", "first"):
        return df[~df.duplicated(key, keep=policy).to_numpy()]
    # groupby(sort=False) orders groups by first occurrence, as the first-occurrence rows are.
    out = df[~later].copy()
    groups = df.groupby(key, sort=False)
    out["rating"] = groups["rating"].mean().to_numpy()
    if "timestamp" in df.columns:
        out["timestamp"] = groups["timestamp"].max().to_numpy()
    return out


def show_value(value: Any) -> str:
    """repr without numpy's type wrapper (``1``, not ``np.int64(1)``), for messages."""
    return repr(value.item() if isinstance(value, np.generic) else value)
