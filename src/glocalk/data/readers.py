"""Reading users' own rating files into :class:`Ratings` and :class:`glocalk.data.RatingMatrix`.

Inputs: delimited text (CSV, TSV, MovieLens-style ``::`` ``.dat``, whitespace or ``;``
separated; optionally ``.gz`` / ``.bz2`` / ``.xz`` compressed), Parquet (by the extension
``.parquet`` / ``.pq`` or the ``PAR1`` magic bytes) and pandas DataFrames.

Everything wrong with the input raises :class:`glocalk.data.DataError` naming the source and,
for text files, the 1-based file line (counting the header line; one record per line assumed),
for Parquet files and DataFrames the 0-based row position.

Ids. Raw ids are kept as they are, never renumbered or reinterpreted: in delimited text an id
column becomes ``int64`` only when every value is a canonical integer (``"42"``, ``"-3"``, not
``"007"`` or ``"4.0"``), otherwise it stays a string column, so ``"007"`` and ``"7"`` remain two
different ids. Parquet and DataFrame id columns keep their dtype, except that whole-number
floats (ids that went through a float column) become ``int64``.

Offset. The matrix representation uses 0 for "not rated", so ratings must be > 0 there. When
the rating scale's minimum is <= 0 (e.g. 0..10 or -10..10), :attr:`Ratings.offset` is set to
``1 - min`` and :func:`to_rating_matrix` stores ``rating + offset`` (so the scale starts at 1);
consumers subtract ``offset`` from predictions (it is in ``RatingMatrix.meta["offset"]``).
:attr:`Ratings.df` and :attr:`Ratings.rating_scale` always stay in the user's units.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp

from glocalk.data.matrix import RatingMatrix
from glocalk.errors import DataError

__all__ = [
    "COLUMN_ALIASES",
    "IdMap",
    "ReaderOptions",
    "Ratings",
    "build_matrix",
    "open_text",
    "option",
    "read_pairs",
    "read_ratings",
    "read_users",
    "to_rating_matrix",
]

# Recognised column names per role, matched case-insensitively, first match wins.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "uid", "u", "customer_id", "reviewerid"),
    "item": ("item", "item_id", "itemid", "movieid", "movie_id", "movie", "iid", "i", "product_id", "asin",
             "isbn", "book_id"),
    "rating": ("rating", "ratings", "score", "stars", "overall", "r", "value", "book-rating"),
    "timestamp": ("timestamp", "time", "ts", "date", "datetime", "unix_time"),
}
_ROLES = ("user", "item", "rating", "timestamp")
_OPTION = {"user": "user_col", "item": "item_col", "rating": "rating_col", "timestamp": "time_col"}
_DUPLICATE_POLICIES = ("error", "last", "first", "mean")
_INT_ID = r"-?(?:0|[1-9][0-9]*)"
_OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

Column = str | int | None


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


# --------------------------------------------------------------------------- reading

# The CLI flag of each reader option, so that messages name what a command-line user can type.
_FLAGS = {"sep": "--sep", "header": "--header / --no-header", "user_col": "--user-col", "item_col": "--item-col",
          "rating_col": "--rating-col", "time_col": "--time-col", "duplicates": "--duplicates",
          "encoding": "--encoding", "rating_scale": "--rating-scale"}


def option(name: str, value: Any = None) -> str:
    """How to set a reader option, for messages: the CLI flag and the Python keyword.

    ``option("duplicates", "last")`` is ``"--duplicates last (duplicates='last')"``.
    """
    if value is None:
        return f"{_FLAGS[name]} ({name}=)"
    if name == "header":
        return f"{'--header' if value else '--no-header'} (header={value!r})"
    if name == "time_col" and value is False:
        return "--no-time (time_col=False)"
    return f"{_FLAGS[name]} {value} ({name}={value!r})"


@dataclass(frozen=True)
class ReaderOptions:
    """How to read a delimited text, Parquet or DataFrame source (the CLI's "reading the files" flags).

    Attributes:
        sep: field separator (``--sep``); None sniffs the first line: ``::`` if present, else tab,
            else comma, else ``;``, else whitespace.
        header: whether the first line names the columns (``--header`` / ``--no-header``);
            ``"infer"`` decides from the first line (see :func:`read_ratings`, :func:`read_pairs`).
        user_col, item_col, rating_col: column name (case-insensitive) or 0-based position; None
            recognises common names (``COLUMN_ALIASES``), or without a header takes positions 0, 1, 2.
        time_col: like the others; None uses a recognised name, or without a header position 3
            when present; False ignores timestamps (``--no-time``).
        duplicates: several ratings of one (user, item) pair: ``"error"``, keep the ``"last"`` or
            ``"first"``, or ``"mean"`` (average ratings, latest timestamp).
        encoding: text encoding of delimited files (a UTF-8 byte-order mark is dropped).
    """

    sep: str | None = None
    header: Literal["infer"] | bool = "infer"
    user_col: Column = None
    item_col: Column = None
    rating_col: Column = None
    time_col: Column | Literal[False] = None
    duplicates: Literal["error", "last", "first", "mean"] = "error"
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        if self.duplicates not in _DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {_DUPLICATE_POLICIES}, got {self.duplicates!r}")
        if self.header not in ("infer", True, False):
            raise ValueError(f"header must be 'infer', True or False, got {self.header!r}")

    def columns(self, roles: Sequence[str] = ("user", "item", "rating", "timestamp")) -> dict[str, Any]:
        """The column choice of each of ``roles``."""
        spec = {"user": self.user_col, "item": self.item_col, "rating": self.rating_col, "timestamp": self.time_col}
        return {role: spec[role] for role in roles}


def _options(options: ReaderOptions | None, kwargs: dict[str, Any]) -> ReaderOptions:
    """``options`` with keyword overrides; unknown keywords are a TypeError, as for a plain call."""
    try:
        return replace(options, **kwargs) if options is not None else ReaderOptions(**kwargs)
    except TypeError as e:
        raise TypeError(f"unknown reader option: {e}; known: {', '.join(_FLAGS)}") from None


def read_ratings(source: str | Path | pd.DataFrame | Ratings, options: ReaderOptions | None = None, *,
                 rating_scale: tuple[float, float] | None = None, offset: float | None = None,
                 **kwargs: Any) -> Ratings:
    """Read ratings from a file or DataFrame into normalised :class:`Ratings`.

    Args:
        source: path to a CSV / TSV / ``::`` / whitespace / ``;`` separated text file or a
            Parquet file, or a DataFrame (or Ratings, re-validated).
        options: how to read it (:class:`ReaderOptions`); its fields may also be given as
            keywords (``sep=``, ``header=``, ``user_col=``, ``item_col=``, ``rating_col=``,
            ``time_col=``, ``duplicates=``, ``encoding=``), which override ``options``.
            ``header="infer"`` takes the first line as a header when its rating field is not a
            number (or when columns are chosen by name).
        rating_scale: (min, max); ratings outside it are an error. None takes the data's range.
        offset: the shift into matrix units (see :class:`Ratings`); None derives it. Pass the
            training data's offset when reading its test file on its own.

    Raises:
        DataError: anything wrong with the input, naming the source and the line or row.
    """
    opts = _options(options, kwargs)
    if rating_scale is not None:
        rating_scale = _check_scale(rating_scale)
    from_text = False
    if isinstance(source, Ratings):
        label = source.source
        raw, where = _select_frame(source.df, dict.fromkeys(_ROLES), label), _row_loc
        rating_scale = source.rating_scale if rating_scale is None else rating_scale
        offset = source.offset if offset is None else offset
    elif isinstance(source, pd.DataFrame):
        label = "DataFrame"
        raw, where = _select_frame(source, opts.columns(), label), _row_loc
    elif isinstance(source, (str, Path)):
        label = str(source)
        raw, where, from_text = _read_source(_existing(source, "ratings"), opts, opts.columns(), _RATINGS)
    else:
        raise TypeError(f"read_ratings: source must be a path or a pandas DataFrame, got {type(source).__name__}")
    return _normalise(raw, where, label, rating_scale, opts.duplicates, offset, ids_are_text=from_text)


def read_pairs(source: str | Path | pd.DataFrame, options: ReaderOptions | None = None,
               **kwargs: Any) -> pd.DataFrame:
    """(user, item) pairs to predict from a delimited text or Parquet file or a DataFrame.

    Read as :func:`read_ratings` reads (same separators, compression, byte-order mark handling
    and column choice by ``user_col`` / ``item_col``); other columns are ignored.
    ``header="infer"`` takes the first line as a header when it names a user and an item column
    (or when columns are chosen by name). Ids from text are kept as text (they are matched to a
    model's ids as :meth:`IdMap.lookup` does).

    Returns:
        A DataFrame with columns ``user`` and ``item``, in file order.

    Raises:
        DataError: anything wrong with the input, naming the source and the line or row.
    """
    opts = _options(options, kwargs)
    cols = opts.columns(("user", "item"))
    if isinstance(source, pd.DataFrame):
        label = "DataFrame"
        raw, where = _select_frame(source, cols, label, what="pairs"), _row_loc
    elif isinstance(source, (str, Path)):
        label = str(source)
        raw, where, _ = _read_source(_existing(source, "pairs"), opts, cols, _PAIRS)
    else:
        raise TypeError(f"read_pairs: source must be a path or a pandas DataFrame, got {type(source).__name__}")
    _check_ids(raw, where, label)
    return pd.DataFrame({role: raw[role].to_numpy() for role in ("user", "item")})


def read_users(path: str | Path, encoding: str = "utf-8") -> list[str]:
    """User ids from a text file, one per line (blank lines skipped), for batch recommendations.

    An optional first line ``user`` / ``user_id`` / ``userid`` (any case) is a header. Read with
    the same line reader as :func:`read_ratings` (compression by extension, byte-order mark dropped).

    Raises:
        DataError: a missing or unreadable file, or one without user ids.
    """
    path = _existing(path, "users")
    with open_text(path, encoding) as f:
        users = [line.strip() for line in f if line.strip()]
    if users and users[0].casefold() in ("user", "user_id", "userid"):
        users = users[1:]
    if not users:
        raise DataError(f"{path}: no user ids (one per line expected)")
    return users


def _existing(source: str | Path, what: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise DataError(f"{what} file not found: {path}")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


def _check_scale(scale: Iterable[float]) -> tuple[float, float]:
    vals = tuple(float(v) for v in scale)
    if len(vals) != 2 or not np.all(np.isfinite(vals)) or not vals[0] < vals[1]:
        raise DataError(f"rating_scale must be (min, max) with finite min < max, got {tuple(scale)} "
                        f"({option('rating_scale')})")
    return vals  # type: ignore[return-value]


def _row_loc(pos: int) -> str:
    return f"row {pos} (0-based)"


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _opener(path: Path) -> Callable[..., Any]:
    return _OPENERS.get(path.suffix.lower(), open)


def _text_encoding(encoding: str) -> str:
    # utf-8-sig drops a byte-order mark that would otherwise stick to the first header name or id.
    return "utf-8-sig" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else encoding


@contextmanager
def open_text(path: Path, encoding: str = "utf-8") -> Iterator[TextIO]:
    """The one way text inputs are opened: decompressed by extension (``.gz``, ``.bz2``, ``.xz``),
    decoded with ``encoding`` (a UTF-8 byte-order mark dropped), line endings kept.

    Raises:
        DataError: the file cannot be read or decoded (also while iterating over it).
    """
    try:
        with _opener(path)(path, "rt", encoding=_text_encoding(encoding), newline="") as f:
            yield f
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: cannot be decoded as {encoding} text ({e}); pass {option('encoding')}") from e
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"{path}: cannot be read: {e}") from e


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sniff(line: str) -> str:
    for cand in ("::", "\t", ",", ";"):
        if cand in line:
            return cand
    return r"\s+"


def _split_line(line: str, sep: str) -> list[str]:
    if sep == r"\s+":
        return line.split()
    if len(sep) == 1:
        return [f.strip() for f in next(csv.reader([line], delimiter=sep))]
    if sep == "::":
        return [f.strip() for f in line.split("::")]
    return [f.strip() for f in re.split(sep, line)]  # pandas also treats longer separators as regexes


@dataclass(frozen=True)
class _Layout:
    """What a kind of file holds: a label for messages and the rule whether the first line is a header."""

    what: str
    infer_header: Callable[[list[str], dict[str, Any]], bool]


def _first_lines(path: Path, encoding: str) -> tuple[str | None, int, int]:
    """The first non-blank line and the 0-based numbers of the first two non-blank lines (-1: none)."""
    first, first_idx, second_idx = None, -1, -1
    with open_text(path, encoding) as f:
        for i, line in enumerate(f):
            if line.strip():
                if first is not None:
                    second_idx = i
                    break
                first, first_idx = line.rstrip("\r\n"), i
    return first, first_idx, second_idx


def _read_source(path: Path, opts: ReaderOptions, cols: dict[str, Any],
                 layout: _Layout) -> tuple[pd.DataFrame, Callable[[int], str], bool]:
    """Raw columns (named by role) of a Parquet or text file, the row -> location function, and
    whether the ids came from text."""
    if _is_parquet(path):
        return _read_parquet(path, cols, layout), _row_loc, False
    return (*_read_text(path, opts, cols, layout), True)


def _read_text(path: Path, opts: ReaderOptions, cols: dict[str, Any],
               layout: _Layout) -> tuple[pd.DataFrame, Callable[[int], str]]:
    # The parse starts at the first non-blank line, since pandas takes the column count from its first row.
    first, first_idx, second_idx = _first_lines(path, opts.encoding)
    if first is None:
        raise DataError(f"{path}: the file is empty (no {layout.what})")
    sep = opts.sep or _sniff(first)
    fields = _split_line(first, sep)
    inferred = opts.header == "infer"
    has_header = layout.infer_header(fields, cols) if inferred else bool(opts.header)
    names = fields if has_header else None
    pos = _resolve_columns(names, len(fields), cols, str(path), inferred_header=inferred)
    if has_header and second_idx < 0:
        raise DataError(f"{path}: no {layout.what}: the file has a header line but no data rows")
    skip = second_idx if has_header else first_idx
    df = _parse_table(path, sep, skip, {pos['user'], pos['item']}, opts.encoding)
    df = df[[p for p in pos.values() if p is not None]]
    df.columns = [r for r, p in pos.items() if p is not None]
    for role in ("user", "item"):  # stray spaces around ids (e.g. "u1\t m1") are never part of them
        df[role] = df[role].str.strip()
    df = df[df.notna().any(axis=1)]  # blank lines
    if len(df) == 0:
        what = "has a header line but no data rows" if has_header else "has no data rows"
        raise DataError(f"{path}: no {layout.what}: the file {what}")

    def where(row: int) -> str:
        return f"line {row + skip + 1}"

    return df, where


def _parse_table(path: Path, sep: str, skip: int, id_pos: set[int], encoding: str) -> pd.DataFrame:
    """All fields of the rows after ``skip`` lines; ids (``id_pos``) as text, empty fields NaN."""
    kw: dict[str, Any] = {
        # No usecols: with it pandas silently ignores surplus fields, which usually mean a shifted record.
        "header": None, "skiprows": skip, "dtype": {p: str for p in id_pos},
        "skip_blank_lines": False,  # keeps row -> line arithmetic exact; blank rows are dropped later
        "keep_default_na": False, "na_values": [""],  # ids such as "NA" or "null" stay ids
        "low_memory": False, "encoding": _text_encoding(encoding),
    }
    if sep in (",", ";"):
        kw["skipinitialspace"] = True
    try:
        if sep == "::":
            return _read_double_colon(path, kw)
        kw["sep"] = sep
        if len(sep) > 1 and sep != r"\s+":
            kw.pop("low_memory")  # not an option of the python engine, which regex separators need
            kw["engine"] = "python"
        return pd.read_csv(path, compression="infer", **kw)
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: malformed line: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: cannot be decoded as {encoding} text ({e}); pass {option('encoding')}") from e
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: the file has no data rows") from e
    except ValueError as e:
        raise DataError(f"{path}: cannot be parsed: {e}") from e


def _read_double_colon(path: Path, kw: dict[str, Any]) -> pd.DataFrame:
    """``::`` files through the fast C parser: the separator becomes one unused control byte."""
    with _opener(path)(path, "rb") as f:
        data = f.read()
    for byte in (b"\x1f", b"\x1e", b"\x1d", b"\t", b"|"):
        if byte not in data:
            return pd.read_csv(io.BytesIO(data.replace(b"::", byte)), sep=byte.decode(), **kw)
    kw = {k: v for k, v in kw.items() if k != "low_memory"}
    return pd.read_csv(io.BytesIO(data), sep="::", engine="python", **kw)


def _ratings_header(fields: list[str], cols: dict[str, Any]) -> bool:
    """Whether the first line of a ratings file is a header: its rating field (where a header-less
    read would look for it) is not a number, or columns are chosen by name."""
    if any(isinstance(c, str) for c in cols.values()):
        return True
    try:
        rpos = _resolve_columns(None, len(fields), cols, "")["rating"]
    except DataError:
        rpos = None
    if rpos is None:
        return any(not _is_number(f) for f in fields)
    return not _is_number(fields[rpos])


def _pairs_header(fields: list[str], cols: dict[str, Any]) -> bool:
    """Whether the first line of a pairs file is a header: it names a user and an item column,
    or columns are chosen by name (ids need not be numbers, so no number test)."""
    if any(isinstance(c, str) for c in cols.values()):
        return True
    folded = {f.casefold() for f in fields}
    return all(any(a in folded for a in COLUMN_ALIASES[role]) for role in ("user", "item"))


_RATINGS = _Layout("ratings", _ratings_header)
_PAIRS = _Layout("pairs", _pairs_header)


def _resolve_columns(names: list[str] | None, ncols: int, cols: dict[str, Any], source: str, *,
                     inferred_header: bool = False) -> dict[str, int | None]:
    """0-based position of each role in ``cols`` (timestamp may be None).

    Explicit choices are resolved first, so defaults never claim a column the caller named.
    """
    note = ""
    if inferred_header and names is not None:
        note = (" (the first line was taken as a header since it does not look like data; pass "
                f"{option('header', False)} if it is data)")
    out: dict[str, int | None] = {}
    for role, spec in cols.items():
        if spec is not None:
            out[role] = _explicit_column(role, spec, names, ncols, source, note)
    chosen = {r: p for r, p in out.items() if p is not None}
    if len(set(chosen.values())) != len(chosen):
        raise DataError(f"{source}: several of {', '.join(_FLAGS[_OPTION[r]] for r in chosen)} name the same "
                        f"column: { {_OPTION[r]: cols[r] for r in chosen} }")
    for role in cols:
        if role not in out:
            out[role] = _default_column(role, names, ncols, out, source, note)
    return out


def _explicit_column(role: str, spec: Any, names: list[str] | None, ncols: int, source: str,
                     note: str) -> int | None:
    opt = _OPTION[role]
    if role == "timestamp" and spec is False:
        return None
    if isinstance(spec, bool):
        raise DataError(f"{source}: {opt}={spec!r} is not a column name or position")
    if isinstance(spec, (int, np.integer)):
        if not 0 <= spec < ncols:
            raise DataError(f"{source}: {option(opt, int(spec))} is out of range: the data has {ncols} column(s), "
                            f"0-based positions 0..{ncols - 1}")
        return int(spec)
    if not isinstance(spec, str):
        raise DataError(f"{source}: {opt} must be a column name, a 0-based position or None, got {spec!r}")
    if names is None:
        raise DataError(f"{source}: {option(opt, spec)} names a column, but the data is read without a header "
                        f"line; choose columns by 0-based position instead (or pass {option('header', True)})")
    hit = [k for k, n in enumerate(names) if n == spec] or \
          [k for k, n in enumerate(names) if n.casefold() == spec.casefold()]
    if not hit:
        avail = ", ".join(repr(n) for n in names)
        raise DataError(f"{source}: column {spec!r} ({_FLAGS[opt]}, {opt}) not found; available columns: "
                        f"{avail}{note}")
    return hit[0]


def _default_column(role: str, names: list[str] | None, ncols: int, out: dict[str, int | None], source: str,
                    note: str) -> int | None:
    """A recognised column name, or without a header the next free position."""
    taken = {p for p in out.values() if p is not None}
    if names is not None:
        folded = [n.casefold() for n in names]
        hit = [k for a in COLUMN_ALIASES[role] for k, n in enumerate(folded) if n == a and k not in taken]
    else:
        hit = [p for p in range(ncols) if p not in taken]
    if hit:
        return hit[0]
    if role == "timestamp":
        return None
    how = ("Choose columns with --user-col, --item-col, --rating-col (and --time-col) or in Python user_col=, "
           "item_col=, rating_col=, time_col=, by name or by 0-based position")
    needed = ", ".join(r for r in out if r != "timestamp") + (", " if out else "") + role
    if names is not None:
        opt = _OPTION[role]
        raise DataError(f"{source}: no {role} column found; looked for {', '.join(COLUMN_ALIASES[role])} "
                        f"(any case); available columns: {', '.join(repr(n) for n in names)}{note}. {how}, "
                        f"e.g. {_FLAGS[opt]} {names[0]} or {opt}=0")
    raise DataError(f"{source}: no {role} column: the data has only {ncols} column(s) (need {needed}). {how}")


def _select_frame(frame: pd.DataFrame, cols: dict[str, Any], source: str, what: str = "ratings") -> pd.DataFrame:
    cols_idx = frame.columns
    # Columns labelled 0..n-1 (e.g. built from a numpy array) act like a header-less file.
    positional = list(cols_idx) == list(range(len(cols_idx)))
    names = None if positional else [str(c) for c in cols_idx]
    pos = _resolve_columns(names, len(cols_idx), cols, source)
    take = {role: p for role, p in pos.items() if p is not None}
    out = pd.DataFrame({role: frame.iloc[:, p].reset_index(drop=True) for role, p in take.items()})
    if len(out) == 0:
        raise DataError(f"{source}: no {what}: the data has no rows")
    return out


def _read_parquet(path: Path, cols: dict[str, Any], layout: _Layout) -> pd.DataFrame:
    try:
        names = list(pq.read_schema(path).names)
        names = [n for n in names if not n.startswith("__index_level_")]  # pandas' stored index
        pos = _resolve_columns(names, len(names), cols, str(path))
        want = {role: names[p] for role, p in pos.items() if p is not None}
        frame = pd.read_parquet(path, columns=list(want.values()))
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path}: cannot be read as Parquet: {e}") from e
    out = pd.DataFrame({role: frame[name].reset_index(drop=True) for role, name in want.items()})
    if len(out) == 0:
        raise DataError(f"{path}: no {layout.what}: the file has no rows")
    return out


def _check_ids(df: pd.DataFrame, where: Callable[[int], str], source: str) -> None:
    for role in ("user", "item"):
        bad = df[role].isna().to_numpy()
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(f"{source}: {where(int(df.index[k]))}: missing {role} id "
                            f"({int(bad.sum())} row(s) without one)")


def _normalise(df: pd.DataFrame, where: Callable[[int], str], source: str, rating_scale: tuple[float, float] | None,
               duplicates: str, offset: float | None, *, ids_are_text: bool) -> Ratings:
    """Validate raw columns (index = position for ``where``) and build Ratings."""
    _check_ids(df, where, source)

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
        raise DataError(f"{source}: {where(int(df.index[k]))}: rating {_show(raw.iloc[k])} is not a finite number "
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
        if col.str.fullmatch(_INT_ID).all():
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
        raise DataError(f"{source}: {where(int(col.index[k]))}: timestamp {_show(col.iloc[k])} is neither a number nor "
                        f"a date; {hint}")
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
            f"{source}: duplicate rating for user {_show(u)} and item {_show(i)} at {at} ({int(later.sum())} "
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


# --------------------------------------------------------------------------- id maps and matrices


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
            ok = ok & text.astype(str).str.fullmatch(_INT_ID).to_numpy(dtype=bool)
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


def _show(value: Any) -> str:
    """repr without numpy's type wrapper (``1``, not ``np.int64(1)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _examples(values: Sequence[Any] | np.ndarray, n: int = 5) -> str:
    shown = ", ".join(_show(v) for v in list(values[:n]))
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
                        f"{option('rating_scale', '(MIN MAX)')} to read_ratings")
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
