"""The ``glocalk`` parser, built from the command modules, and THE error mapping (``main``).

A user's error (``glocalk.errors.GlocalkError``, or a file the system refuses) becomes one line
``glocalk: error: MESSAGE`` and exit status 2; Ctrl-C exits 130; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

import torch.multiprocessing as mp

from glocalk.cli import compare, fit, recommend, serve, train
from glocalk.distributed import ProcessGroup, free_port, local_env
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
    """Entry point of the ``glocalk`` command: run one subcommand, map user errors to messages.

    ``--nproc N`` (N > 1) outside torchrun: start N processes that each run this command as torchrun's
    ranks would (``launch_local``).
    """
    args = build_parser().parse_args(argv)
    if getattr(args, "nproc", None) and args.nproc > 1 and not ProcessGroup.from_env().sharded:
        return launch_local(list(sys.argv[1:] if argv is None else argv), args.nproc)
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


def _rank_main(rank: int, argv: list[str], world: int, port: int) -> None:
    os.environ.update(local_env(rank, world, port))
    code = main(argv)
    if code:
        sys.exit(code)


def launch_local(argv: list[str], nproc: int) -> int:
    """Run ``glocalk ARGV`` in ``nproc`` processes on this machine, as ``torchrun --nproc-per-node`` would.

    A process that fails (its error is printed by it) ends the others; the exit status is then its own.
    """
    try:
        mp.spawn(_rank_main, args=(argv, nproc, free_port()), nprocs=nproc)
    except mp.ProcessExitedException as e:
        print(f"glocalk: error: process {e.error_index} of {nproc} ended with exit status {e.exit_code}; "
              "the others were stopped", file=sys.stderr)
        return e.exit_code if e.exit_code and e.exit_code > 0 else USER_ERROR
    except mp.ProcessRaisedException as e:
        print(f"glocalk: error: process {e.error_index} of {nproc} failed:\n{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
