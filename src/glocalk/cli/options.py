"""Option groups shared by the ``glocalk`` commands, with ONE set of defaults, and the progress bars.

A command module calls ``add_hyperparameters``, ``add_execution`` and ``add_data`` on its parser and reads
the parsed namespace back with ``overrides`` and ``execution``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import pandas as pd
from tqdm import tqdm

from glocalk.autoconfig import DEFAULT_BUDGET_MINUTES
from glocalk.data.options import DUPLICATE_POLICIES
from glocalk.distributed import SHARDABLE_OPTIMIZERS, ProcessGroup
from glocalk.errors import ConfigError
from glocalk.presets import PRESETS
from glocalk.store import write_atomic
from glocalk.train import DEFAULT_OPTIMIZER, resolve_device

# Hyperparameters every training command accepts as overrides of a preset: (flag, key, type, help).
HYPERPARAMETERS: list[tuple[str, str, type, str]] = [
    ("--n-hid", "n_hid", int, "hidden units per kernel layer (paper: 500)"),
    ("--n-dim", "n_dim", int, "dimension of the local kernel's u, v vectors (paper: 5)"),
    ("--n-layers", "n_layers", int, "number of sigmoid hidden layers (paper: 2)"),
    ("--gk-size", "gk_size", int, "side of the global convolution kernel (paper: 3)"),
    ("--lambda-2", "lambda_2", float, "L2 penalty on W (lambda_2/2 * sum W^2)"),
    ("--lambda-s", "lambda_s", float, "penalty on the local kernel (lambda_s/2 * sum K^2)"),
    ("--dot-scale", "dot_scale", float, "scale of the global kernel's dot product"),
    ("--gk-norm", "gk_norm", str, "'paper' (as published) or 'sqrt' (divide the global kernel by "
                                  "sqrt(n_items); fixes the ML-1M fine-tuning collapse)"),
    ("--output-bias", "output_bias", str, "initial output bias: 'glorot' (as published) or 'mean' (the training "
                                          "mean: users without training ratings start at the mean)"),
    ("--iter-p", "iter_p", int, "L-BFGS iterations per pre-training epoch"),
    ("--iter-f", "iter_f", int, "L-BFGS iterations per fine-tuning epoch"),
    ("--epoch-p", "epoch_p", int, "pre-training epochs"),
    ("--epoch-f", "epoch_f", int, "fine-tuning epochs"),
]
# Execution choices (not hyperparameters: they never change what is computed, only how).
EXECUTION_KEYS = ("path", "optimizer", "threads")

ProgressCallbacks = tuple[Callable[[int, dict], None], Callable[[], None]]


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_hyperparameters(p: argparse.ArgumentParser, title: str = "hyperparameters (default: the preset's)") -> None:
    """The ``HYPERPARAMETERS`` flags, all defaulting to None (= the preset's value)."""
    g = p.add_argument_group(title)
    for flag, key, typ, text in HYPERPARAMETERS:
        g.add_argument(flag, dest=key, type=typ, default=None, help=text)


def add_execution(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """--device, --path, --optimizer, --threads and --quiet; returns the group for command-specific additions.

    Defaults are None for --path/--optimizer/--threads: "not given", so the library's own default applies
    (auto, scipy, torch's threads) and a benchmark resumed without them compares equal.
    """
    e = p.add_argument_group("execution")
    e.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    e.add_argument("--path", choices=["auto", "dense", "sparse"], default=None,
                   help="execution path: dense O(items*users) or sparse O(nnz) maths, same results "
                        "(default auto: by size and density)")
    e.add_argument("--optimizer", choices=["scipy", "lbfgsb", "torch"], default=None,
                   help="lbfgsb: SciPy's L-BFGS-B (its iterates) in torch on --device, float32 state, no host "
                        "copies (default); scipy: SciPy's L-BFGS-B on the host in float64, as the original "
                        "code; torch: torch.optim.LBFGS "
                        "with strong Wolfe line search (stays on the GPU)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    return e


def add_training_run(p: argparse.ArgumentParser) -> None:
    """Hyperparameters, execution, and the protocol options of one training run (train, fit)."""
    add_hyperparameters(p)
    e = add_execution(p)
    e.add_argument("--val-frac", type=float, default=None,
                   help="hold out this seeded fraction of the TRAINING ratings to select the epoch "
                        "honestly (the test set is then only reported)")
    e.add_argument("--patience", type=int, default=None,
                   help="early stopping: end fine-tuning after N epochs without a better validation "
                        "RMSE (needs --val-frac)")
    e.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last completed epoch")


def add_nproc(p: argparse.ArgumentParser) -> None:
    """--nproc: train sharded over users in N local processes (``glocalk.cli.app`` spawns them)."""
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="train sharded over users in N local processes (torch.distributed; each holds ~1/N of "
                        "the user-sized weights; needs --optimizer lbfgsb, the default); on several machines "
                        "launch with torchrun instead (docs/DISTRIBUTED.md)")


@contextmanager
def process_group(args: argparse.Namespace) -> Iterator[ProcessGroup]:
    """The command's process group: one process, or (under torchrun, or in a process ``--nproc``
    spawned) the sharded run's group, joined for the block and left after it.

    Sharded: the flags are checked before joining (--nproc against torchrun's count, an optimiser
    that can be sharded, the device), only rank 0 prints (``args.quiet`` on the others), and without
    --threads each process gets its machine's cores divided by its processes there.
    """
    group = ProcessGroup.from_env()
    if not group.sharded:
        yield group
        return
    if args.nproc is not None and args.nproc != group.world:
        raise ConfigError(f"--nproc {args.nproc} disagrees with the {group.world} processes torchrun started; "
                          "give one or the other")
    optimizer = execution(args)["optimizer"]
    if optimizer not in SHARDABLE_OPTIMIZERS:
        raise ConfigError(f"--optimizer {optimizer} cannot be sharded over processes "
                          f"(SciPy keeps the whole vector on one host); use --optimizer "
                          f"{' or '.join(SHARDABLE_OPTIMIZERS)} with --nproc or torchrun")
    resolve_device(group.device(args.device))  # no CUDA here: say so before joining an NCCL group
    group.start(group.device(args.device))
    try:
        args.quiet = args.quiet or not group.writer
        if args.threads is None:  # the machine's cores shared among its processes, not each taking all
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", group.world))
            args.threads = max(1, (os.cpu_count() or 1) // local_world)
        yield group
    finally:
        group.stop()


def add_data(p: argparse.ArgumentParser) -> None:
    """--dataset (a paper benchmark, by name or folder name), --data-dir and --download."""
    p.add_argument("--dataset", required=True, help="a paper benchmark dataset: " + ", ".join(PRESETS))
    add_data_location(p)


def add_data_location(p: argparse.ArgumentParser) -> None:
    """--data-dir and --download (for commands whose dataset flag is defined otherwise)."""
    p.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: $GLOCALK_DATA, else ~/.cache/glocalk)")
    p.add_argument("--download", action="store_true",
                   help="download the canonical files (checksum-verified) if they are missing")


# -- reading and writing users' files ----------------------------------------------------------------


def column(text: str) -> str | int:
    """A column given on the command line: a 0-based position if it is a number, else a name."""
    return int(text) if text.isdigit() else text


def add_reader_options(p: argparse.ArgumentParser, ratings: bool = True, title: str = "reading the files") -> None:
    """--sep, --header, the column flags, --duplicates and --encoding: how the one parser reads a file."""
    what = "rating files are" if ratings else "the pairs file is"
    g = p.add_argument_group(title, f"how {what} parsed (CSV, TSV, '::' .dat, whitespace, Parquet)")
    inferred = ("a header when its rating field is not a number, or when columns are chosen by name" if ratings
                else "a header when it names a user and an item column, or when columns are chosen by name")
    g.add_argument("--sep", default=None,
                   help="field separator, e.g. ',' '\\t' '::' ';' (default: sniffed from the first line)")
    hdr = g.add_mutually_exclusive_group()
    hdr.add_argument("--header", dest="header", action="store_const", const=True, default="infer",
                     help=f"the first line names the columns (default: inferred -- {inferred})")
    hdr.add_argument("--no-header", dest="header", action="store_const", const=False,
                     help="the first line is data (e.g. MovieLens ratings.dat)")
    g.add_argument("--user-col", type=column, default=None,
                   help="user id column: a name or a 0-based position (default: a column named user, user_id, "
                        "userId, ... or position 0 without a header)")
    g.add_argument("--item-col", type=column, default=None,
                   help="item id column: a name or 0-based position (default: item, item_id, movieId, ... or "
                        "position 1)")
    if ratings:
        g.add_argument("--rating-col", type=column, default=None,
                       help="rating column: a name or 0-based position (default: rating, score, stars, ... or "
                            "position 2)")
        g.add_argument("--time-col", type=column, default=None,
                       help="timestamp column, needed by --split time (default: timestamp, time, ts, date, ... or "
                            "position 3 when present)")
        g.add_argument("--no-time", action="store_true", help="ignore any timestamp column")
        g.add_argument("--duplicates", choices=DUPLICATE_POLICIES, default="error",
                       help="several ratings of one (user, item) pair: an error naming the lines (default), or "
                            "keep the last, the first, or their mean")
    g.add_argument("--encoding", default="utf-8", help="text encoding of the files (default utf-8)")


def reader_kwargs(args: argparse.Namespace) -> dict:
    """The reader options of ``add_reader_options`` as ``readers.read_ratings`` keywords."""
    sep = args.sep.encode().decode("unicode_escape") if args.sep else None  # lets '\t' be typed literally
    kw = {"sep": sep, "header": args.header, "user_col": args.user_col, "item_col": args.item_col,
          "encoding": args.encoding}
    if hasattr(args, "rating_col"):
        kw.update(rating_col=args.rating_col, time_col=False if args.no_time else args.time_col,
                  duplicates=args.duplicates)
    return kw


def write_csv(df: pd.DataFrame, output: str | None) -> None:
    """``df`` as CSV on standard output (``output`` None or "-") or written atomically to ``output``."""
    if output in (None, "-"):
        df.to_csv(sys.stdout, index=False)
    else:
        write_atomic(output, lambda tmp: df.to_csv(tmp, index=False))


def overrides(args: argparse.Namespace) -> dict:
    """The hyperparameters given on the command line (those not given are left to the preset)."""
    return {key: getattr(args, key) for _, key, _, _ in HYPERPARAMETERS if getattr(args, key) is not None}


def execution(args: argparse.Namespace) -> dict:
    """--path, --optimizer and --threads with the library's defaults filled in where not given."""
    return {"path": args.path or "auto", "optimizer": args.optimizer or DEFAULT_OPTIMIZER, "threads": args.threads}


def epoch_summary(rec: dict) -> dict[str, str]:
    """The figures a progress display shows for one epoch record: stage and the RMSEs it has."""
    out = {"stage": str(rec["stage"]), "train": f"{rec['train_rmse']:.4f}"}
    for split in ("val", "test"):
        if f"{split}_rmse" in rec:
            out[split] = f"{rec[f'{split}_rmse']:.4f}"
    return out


def progress(total_epochs: int, n_seeds: int, quiet: bool, stream: TextIO | None = None) -> ProgressCallbacks:
    """(on_epoch, close): per-epoch progress on ``stream`` (default stderr) with the current RMSEs.

    On a terminal, a tqdm bar per seed; otherwise (a log file, a pipe, CI) one plain line per epoch,
    because a bar's carriage-return updates make a redirected log unreadable.
    """
    stream = sys.stderr if stream is None else stream
    if quiet:
        return (lambda seed, rec: None), (lambda: None)
    if not stream.isatty():
        return _line_per_epoch(total_epochs, stream), (lambda: None)
    return _bars(total_epochs, stream)


def _line_per_epoch(total_epochs: int, stream: TextIO) -> Callable[[object, dict], None]:
    def on_epoch(seed: object, rec: dict) -> None:
        figures = " ".join(f"{k} {v}" for k, v in epoch_summary(rec).items())
        seconds = rec.get("seconds", 0.0) + rec.get("eval_seconds", 0.0)
        print(f"seed {seed}: epoch {rec['epoch']}/{total_epochs} {figures} ({seconds:.1f} s)", file=stream,
              flush=True)

    return on_epoch


def _bars(total_epochs: int, stream: TextIO) -> ProgressCallbacks:
    bars: dict[object, tqdm] = {}

    def on_epoch(seed: object, rec: dict) -> None:
        if seed not in bars:
            for bar in bars.values():
                bar.close()
            bars[seed] = tqdm(total=total_epochs, desc=f"seed {seed}", unit="epoch", file=stream,
                              dynamic_ncols=True)
        bars[seed].set_postfix(epoch_summary(rec))
        bars[seed].update(1)
        if bars[seed].n >= total_epochs:
            bars[seed].close()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return on_epoch, close


# -- --preset auto ----------------------------------------------------------------------------------


def add_budget(group: argparse._ArgumentGroup) -> None:
    """The ``--budget`` flag of ``--preset auto`` (fit, train)."""
    group.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                       help=f"with --preset auto: start no new candidate after MINUTES (default "
                            f"{DEFAULT_BUDGET_MINUTES:g}); the preset is always tried")


def auto_lines(auto: dict) -> list[str]:
    """The --preset auto search as printed: one row per candidate, the chosen one marked."""
    lines = [f"--preset auto: {len(auto['candidates'])} candidates on the validation split (budget "
             f"{auto['budget_minutes']:g} min{', reached' if auto['stopped_by_budget'] else ''}):"]
    labels = [", ".join(f"{key}={value:g}" if isinstance(value, (int, float)) else f"{key}={value}"
                        for key, value in c["params"].items()) or "the preset (ml-100k)" for c in auto["candidates"]]
    width = max(map(len, labels), default=0)
    for k, (c, params) in enumerate(zip(auto["candidates"], labels, strict=True)):
        val = "failed" if c["val_rmse"] is None else f"{c['val_rmse']:.4f}"
        mark = " <- chosen" if k == auto["chosen"] else ""
        lines.append(f"  {k}: {params:<{width}}  val RMSE {val}, {c['epochs']} epochs, {c['seconds']:.0f} s{mark}")
    return lines


# -- GLocal-K against the bias model (fit, train) ---------------------------------------------


def comparison_lines(comparison: dict) -> list[str]:
    """The comparison with the bias model (``glocalk.comparison``), as fit and train print it."""
    if not comparison["validation"]:
        return [f"note: {comparison['note']}"]
    lines = ["GLocal-K vs the user + item bias model (same split; chosen on validation only):"]
    for name, label in (("glocalk", "GLocal-K"), ("biases", "biases")):
        figures = comparison[name]
        text = f"  {label:<8} validation {_metric_text(figures['val'])}"
        if "test" in figures:
            text += f"; test RMSE {figures['test']['rmse']:.4f}"
        lines.append(text)
    if "blend" in comparison:  # a fit's record: the validation-weighted blend of the two
        blend = comparison["blend"]
        text = f"  blend    validation {_metric_text(blend['val'])} ({blend['alpha']:.3f} x GLocal-K)"
        if "test" in blend:
            text += f"; test RMSE {blend['test']['rmse']:.4f}"
        lines.append(text)
    if "warning" in comparison:
        lines.append(f"WARNING: {comparison['warning']}")
    else:
        lines.append("GLocal-K beats the bias model on validation")
    return lines


def _metric_text(m: dict) -> str:
    parts = [f"{label} {m[key]:.4f}" for key, label in (("rmse", "RMSE"), ("mae", "MAE"), ("ndcg", "NDCG")) if key in m]
    if "n_rated" in m:
        parts.append(f"on {m['n_rated']:,} ratings")
    return ", ".join(parts)
