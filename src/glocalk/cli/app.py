"""The ``glocalk`` parser, built from the command modules, and THE error mapping (``main``).

A user's error (``glocalk.errors.GlocalkError``, or a file the system refuses) becomes one line
``glocalk: error: MESSAGE`` and exit status 2; Ctrl-C exits 130; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys

from glocalk.cli import compare, fit, recommend, serve, train
from glocalk.errors import GlocalkError

USER_ERROR = 2
INTERRUPTED = 130
# What the terse system reasons mean for a path given on the command line.
OS_ERROR_HINTS = {
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder is there; give a file name",
    errno.EEXIST: "a file is there where a folder is needed",
    errno.EACCES: "check the permissions of the path and its folder",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "the disk is full",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``glocalk`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="glocalk", description=(
        "GLocal-K (global and local kernels for recommender systems, CIKM 2021) in PyTorch."))
    sub = parser.add_subparsers(dest="command", required=True)
    train.register(sub)
    fit.register(sub)
    compare.register(sub)
    serve.register(sub)
    recommend.register(sub)
    return parser


def describe_os_error(e: OSError) -> str:
    """A path the system refused, named: ``PATH: reason (hint)``; for a rename, its destination (the user's path)."""
    where = e.filename2 if e.filename2 is not None else e.filename
    hint = OS_ERROR_HINTS.get(e.errno)
    return f"{where}: {e.strerror or e.__class__.__name__}" + (f" ({hint})" if hint else "")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glocalk`` command: run one subcommand, map user errors to messages."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GlocalkError as e:
        message = str(e)
    except OSError as e:
        # Unwritable or unreadable paths (read-only folder, a directory given as a file, a path under a
        # file, a full disk) are the user's to fix; an OSError without a path is not explained this way.
        if e.filename is None:
            raise
        message = describe_os_error(e)
    except KeyboardInterrupt:
        print("glocalk: interrupted; completed epochs are saved (continue with --resume)", file=sys.stderr)
        return INTERRUPTED
    print(f"glocalk: error: {message}", file=sys.stderr)
    return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
