"""Reading rating, pairs and users files: the one parser of users' own data.

Inputs: delimited text (CSV, TSV, MovieLens-style ``::`` ``.dat``, whitespace or ``;``
separated; optionally ``.gz`` / ``.bz2`` / ``.xz`` compressed; a UTF-8 byte-order mark is
dropped), Parquet (by the extension ``.parquet`` / ``.pq`` or the ``PAR1`` magic bytes) and
pandas DataFrames. :func:`read_ratings`, :func:`read_pairs` and :func:`read_users` share the
opening (:func:`open_text`), separator sniffing, header rules and column choice
(:class:`ReaderOptions`); ratings are then validated by :func:`glocalk.data.ratings.normalise`.

Everything wrong with the input raises :class:`glocalk.data.DataError` naming the source and,
for text files, the 1-based file line (counting the header line; one record per line assumed),
for Parquet files and DataFrames the 0-based row position; options are named by their CLI flag
and Python keyword.

Ids. Raw ids are kept as they are, never renumbered or reinterpreted: in delimited text an id
column becomes ``int64`` only when every value is a canonical integer (``"42"``, ``"-3"``, not
``"007"`` or ``"4.0"``), otherwise it stays a string column, so ``"007"`` and ``"7"`` remain two
different ids. Parquet and DataFrame id columns keep their dtype, except that whole-number
floats (ids that went through a float column) become ``int64``. Spaces around ids in text are
dropped.

This module is also the front of the reading API: :class:`Ratings`, :class:`IdMap`,
:func:`to_rating_matrix` and friends are importable from here as well as from their own modules
(``ratings``, ``ids``, ``options``).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from glocalk.data.ids import IdMap, build_matrix, to_rating_matrix
from glocalk.data.options import COLUMN_ALIASES, FLAGS, OPTION_OF_ROLE, ROLES, ReaderOptions, option
from glocalk.data.ratings import Ratings, check_ids, normalise
from glocalk.errors import DataError

__all__ = [  # the reading functions, and the names of the reading API re-exported from their modules
    "COLUMN_ALIASES",
    "IdMap",
    "Ratings",
    "ReaderOptions",
    "build_matrix",
    "open_text",
    "opener",
    "option",
    "read_pairs",
    "read_ratings",
    "read_users",
    "split_fields",
    "to_rating_matrix",
]

_OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _options(options: ReaderOptions | None, kwargs: dict[str, Any]) -> ReaderOptions:
    """``options`` with keyword overrides; unknown keywords are a TypeError, as for a plain call."""
    try:
        return replace(options, **kwargs) if options is not None else ReaderOptions(**kwargs)
    except TypeError as e:
        raise TypeError(f"unknown reader option: {e}; known: {', '.join(FLAGS)}") from None


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
        raw, where = _select_frame(source.df, dict.fromkeys(ROLES), label), _row_loc
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
    return normalise(raw, where, label, rating_scale, opts.duplicates, offset, ids_are_text=from_text)


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
    check_ids(raw, where, label)
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
                        "(--rating-scale MIN MAX)")
    return vals  # type: ignore[return-value]


def _row_loc(pos: int) -> str:
    return f"row {pos} (0-based)"


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def opener(path: Path) -> Callable[..., Any]:
    """``open`` for plain files, or the decompressing open of a ``.gz`` / ``.bz2`` / ``.xz`` file."""
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
        with opener(path)(path, "rt", encoding=_text_encoding(encoding), newline="") as f:
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


def split_fields(line: str, sep: str | None) -> list[str]:
    """The fields of one text line, stripped: ``sep`` None or ``r"\\s+"`` splits on whitespace, one
    character as CSV (quotes honoured), ``"::"`` literally, anything longer as a regex (as pandas)."""
    if sep is None or sep == r"\s+":
        return line.split()
    if len(sep) == 1:
        return [f.strip() for f in next(csv.reader([line], delimiter=sep))]
    if sep == "::":
        return [f.strip() for f in line.split("::")]
    return [f.strip() for f in re.split(sep, line)]


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
    fields = split_fields(first, sep)
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
    with opener(path)(path, "rb") as f:
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
        raise DataError(f"{source}: several of {', '.join(FLAGS[OPTION_OF_ROLE[r]] for r in chosen)} name the same "
                        f"column: { {OPTION_OF_ROLE[r]: cols[r] for r in chosen} }")
    for role in cols:
        if role not in out:
            out[role] = _default_column(role, names, ncols, out, source, note)
    return out


def _explicit_column(role: str, spec: Any, names: list[str] | None, ncols: int, source: str,
                     note: str) -> int | None:
    opt = OPTION_OF_ROLE[role]
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
        raise DataError(f"{source}: column {spec!r} ({FLAGS[opt]}, {opt}) not found; available columns: "
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
        opt = OPTION_OF_ROLE[role]
        raise DataError(f"{source}: no {role} column found; looked for {', '.join(COLUMN_ALIASES[role])} "
                        f"(any case); available columns: {', '.join(repr(n) for n in names)}{note}. {how}, "
                        f"e.g. {FLAGS[opt]} {names[0]} or {opt}=0")
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




