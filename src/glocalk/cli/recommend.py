"""``glocalk recommend`` (one user, a file of users, or all users at once) and ``glocalk fold-in``.

Argument parsing and output only: the work is ``GLocalKRecommender.recommend``, ``recommend_many``,
``recommend_all`` (batch top-N, in blocks of users) and ``fold_in`` (new users and items).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from glocalk.cli.options import add_reader_options, reader_kwargs, write_csv
from glocalk.data.readers import read_users
from glocalk.errors import DataError, OutputError
from glocalk.estimator import GLocalKRecommender
from glocalk.store import write_atomic

__all__ = ["cmd_fold_in", "cmd_recommend", "register"]

TABLE_FORMATS = (".csv", ".parquet")


def _with_ratings(model: GLocalKRecommender, args: argparse.Namespace) -> GLocalKRecommender:
    """The model, with the users and items of ``--ratings`` folded in when it is given."""
    if args.ratings is None:
        return model
    try:
        return model.fold_in(args.ratings, **reader_kwargs(args))
    except DataError as e:
        raise DataError(f"{args.ratings}: {e}") from e


def write_table(df: pd.DataFrame, output: str | None) -> None:
    """CSV on standard output, or ``output`` as Parquet (``.parquet``) or CSV (any other name), atomically."""
    if output not in (None, "-") and Path(output).suffix.lower() == ".parquet":
        write_atomic(output, lambda tmp: df.to_parquet(tmp, index=False))
    else:
        write_csv(df, output)


def cmd_recommend(args: argparse.Namespace) -> int:
    model = _with_ratings(GLocalKRecommender.load(args.model_dir), args)
    if args.all_users:
        total = len(model.user_ids_)
        with tqdm(total=total, unit="user", desc="recommend", file=sys.stderr,
                  disable=args.quiet or not sys.stderr.isatty()) as bar:
            recs = model.recommend_all(args.k, exclude_seen=not args.include_seen, on_block=bar.update)
        if not sys.stderr.isatty() and not args.quiet:
            print(f"recommended {args.k} items to each of {total:,} users", file=sys.stderr)
    else:
        users = [args.user] if args.user is not None else read_users(args.users_file)
        recs = model.recommend_many(users, k=args.k, exclude_seen=not args.include_seen, unknown=args.unknown)
    write_table(recs, args.output)
    return 0


def cmd_fold_in(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.resolve() == Path(args.model_dir).resolve():
        raise OutputError(f"--out {out}: give a new directory; fold-in never replaces the model it reads")
    if out.exists() and not args.force:
        raise OutputError(f"--out {out} exists; --force replaces it (only if it holds a glocalk model and "
                          "nothing else)")
    model = GLocalKRecommender.load(args.model_dir)
    try:
        folded = model.fold_in(args.ratings, **reader_kwargs(args))
    except DataError as e:
        raise DataError(f"{args.ratings}: {e}") from e
    folded.save(out)
    f = folded.fold_in_
    skipped = f" ({f['n_skipped']:,} skipped: items no trained user rated)" if f["n_skipped"] else ""
    print(f"{out}: {args.model_dir} plus {f['n_users']:,} users and {f['n_items']:,} items folded in from "
          f"{f['n_ratings']:,} ratings{skipped}")
    return 0


# -- the parsers --------------------------------------------------------------------------------


def register(sub) -> None:
    """Add recommend and fold-in to the ``glocalk`` sub-command parser."""
    p = sub.add_parser("recommend", help="top-k items for a user, a file of users or all users; writes a table",
                       description="The k items with the highest predicted rating for each user, by default "
                                   "excluding the items the user rated in the training data. Writes columns "
                                   "user, item, score (predicted rating), rank: CSV, or Parquet for an --output "
                                   "ending in .parquet. With --ratings FILE, the users and items of FILE absent "
                                   "from the model are folded in first (nothing is saved).",
                       epilog="examples: glocalk recommend my-model --user 42 -k 5; glocalk recommend my-model "
                              "--user new1 --ratings new1.csv; glocalk recommend my-model --all-users -k 10 "
                              "--output recs.parquet")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by glocalk fit (or fold-in)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="ID", help="the user's raw id, as in the ratings file")
    who.add_argument("--users-file", metavar="FILE",
                     help="a text file of user ids, one per line (a first line 'user' is a header)")
    who.add_argument("--all-users", action="store_true",
                     help="every user the model knows, computed in blocks of users (a progress bar on a terminal)")
    p.add_argument("--ratings", metavar="FILE", default=None,
                   help="ratings (user, item, rating) of users (and items) absent from the model: fold them in "
                        "first, e.g. a new user's ratings with --user ID")
    p.add_argument("-k", type=int, default=10, help="number of items per user (default 10)")
    p.add_argument("--include-seen", action="store_true", help="also recommend items the user already rated")
    p.add_argument("--unknown", choices=["error", "baseline"], default="error",
                   help="a user not in the training data: an error (default), or the items in baseline order "
                        "(global mean + item bias)")
    p.add_argument("--output", "-o", metavar="FILE", default=None,
                   help="output file: .parquet for Parquet, else CSV (default: CSV on standard output)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_reader_options(p, title="reading --ratings")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("fold-in", help="add users and items absent from a model, without retraining",
                       description="Fold the users and items of RATINGS (user, item, rating; the formats fit reads) "
                                   "that MODEL_DIR does not know into a copy of the model, written to --out: a new "
                                   "user's output weights are fitted to their ratings, a new item is encoded by the "
                                   "network from its ratings by trained users; nothing trained changes "
                                   "(docs/DESIGN.md, Fold-in).",
                       epilog="example: glocalk fold-in my-model new-ratings.csv --out my-model-2")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by glocalk fit (or fold-in)")
    p.add_argument("ratings", metavar="RATINGS", help="the new users' (and items') ratings")
    p.add_argument("--out", required=True, metavar="NEW_MODEL_DIR", help="model directory to write (required)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out that holds a glocalk model and nothing else")
    add_reader_options(p, title="reading RATINGS")
    p.set_defaults(func=cmd_fold_in)
