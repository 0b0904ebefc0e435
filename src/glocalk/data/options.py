"""Reader options: how a rating, pairs or users file is read, and the CLI flag of each option.

:class:`ReaderOptions` holds the choices of the CLI's "reading the files" flags; :func:`option`
phrases an option for messages as both the flag and the Python keyword, because the readers are
called from the command line and from Python alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from glocalk.errors import ConfigError

__all__ = ["COLUMN_ALIASES", "DUPLICATE_POLICIES", "FLAGS", "OPTION_OF_ROLE", "ROLES", "Column", "ReaderOptions",
           "option"]

# Recognised column names per role, matched case-insensitively, first match wins.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "uid", "u", "customer_id", "reviewerid"),
    "item": ("item", "item_id", "itemid", "movieid", "movie_id", "movie", "iid", "i", "product_id", "asin",
             "isbn", "book_id"),
    "rating": ("rating", "ratings", "score", "stars", "overall", "r", "value", "book-rating"),
    "timestamp": ("timestamp", "time", "ts", "date", "datetime", "unix_time"),
}
ROLES = ("user", "item", "rating", "timestamp")
OPTION_OF_ROLE = {"user": "user_col", "item": "item_col", "rating": "rating_col", "timestamp": "time_col"}
DUPLICATE_POLICIES = ("error", "last", "first", "mean")

Column = str | int | None

# The CLI flag of each reader option, so that messages name what a command-line user can type.
FLAGS = {"sep": "--sep", "header": "--header / --no-header", "user_col": "--user-col", "item_col": "--item-col",
         "rating_col": "--rating-col", "time_col": "--time-col", "duplicates": "--duplicates",
         "encoding": "--encoding", "rating_scale": "--rating-scale"}


def option(name: str, value: Any = None) -> str:
    """How to set a reader option, for messages: the CLI flag and the Python keyword.

    ``option("duplicates", "last")`` is ``"--duplicates last (duplicates='last')"``.
    """
    if value is None:
        return f"{FLAGS[name]} ({name}=)"
    if name == "header":
        return f"{'--header' if value else '--no-header'} (header={value!r})"
    if name == "time_col" and value is False:
        return "--no-time (time_col=False)"
    return f"{FLAGS[name]} {value} ({name}={value!r})"


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
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {self.duplicates!r}")
        if self.header not in ("infer", True, False):
            raise ConfigError(f"header must be 'infer', True or False, got {self.header!r}")

    def columns(self, roles: Sequence[str] = ("user", "item", "rating", "timestamp")) -> dict[str, Any]:
        """The column choice of each of ``roles``."""
        spec = {"user": self.user_col, "item": self.item_col, "rating": self.rating_col, "timestamp": self.time_col}
        return {role: spec[role] for role in roles}
