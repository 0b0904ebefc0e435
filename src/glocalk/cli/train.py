"""``glocalk train`` (the paper's protocol on a benchmark) and ``glocalk report`` (Markdown tables of runs)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from glocalk.autoconfig import AUTO, SearchResult, base_params, own_data_defaults, search
from glocalk.cli.options import (
    add_budget,
    add_data_location,
    add_nproc,
    add_training_run,
    auto_lines,
    comparison_lines,
    execution,
    overrides,
    positive_int,
    process_group,
    progress,
)
from glocalk.compare.report import epoch_table, load_summary, mean_std, results_table
from glocalk.comparison import FALLBACKS, TRAIN_BLEND, compare_runs
from glocalk.data import datasets
from glocalk.data.matrix import RatingMatrix
from glocalk.distributed import ProcessGroup
from glocalk.errors import ConfigError
from glocalk.presets import PRESETS, preset
from glocalk.protocol import run_experiment
from glocalk.store import write_json_atomic

SUMMARY_ROWS = {"best": "paper (best fine-tuning epoch, test)", "final": "final epoch",
                "val_selected": "validation-selected epoch", "ensemble": "ensemble of the seeds"}


def _cell(summary: dict, protocol: str, key: str) -> str:
    if protocol not in summary or key not in summary[protocol]:
        return "-"
    std = summary.get("std", {}).get(protocol, {}).get(key)
    return mean_std(summary[protocol][key], std if len(summary["seeds"]) > 1 else None)


def print_summary(summary: dict, out: Path) -> None:
    """The closing table of a training run."""
    lines = [f"\n{summary['dataset']}: {len(summary['seeds'])} seed(s) {summary['seeds']}, "
             f"wall time {summary['wall_time_s']:.1f} s"]
    lines.append(f"{'protocol':<34} {'RMSE':>18} {'MAE':>18} {'NDCG':>18}")
    for protocol, label in SUMMARY_ROWS.items():
        if protocol in summary:
            lines.append(f"{label:<34} {_cell(summary, protocol, 'rmse'):>18} "
                         f"{_cell(summary, protocol, 'mae'):>18} {_cell(summary, protocol, 'ndcg'):>18}")
    if "comparison" in summary:
        lines += comparison_lines(summary["comparison"])
    lines.append(f"written: {out / 'summary.json'}")
    print("\n".join(lines))


def data_and_params(args: argparse.Namespace) -> tuple[RatingMatrix, dict]:
    """The dataset named by --dataset or --mat and its hyperparameters: preset, then the flags given."""
    if args.mat:
        data = datasets.load_monti(args.mat)
        params = preset(args.preset) if args.preset != AUTO else base_params()
    else:
        data = datasets.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
        params = preset(args.preset or args.dataset) if args.preset != AUTO else base_params()
    params.update(overrides(args))
    run = execution(args)
    params.update(path=run["path"], optimizer=run["optimizer"], patience=args.patience, threads=run["threads"])
    return data, params


def cmd_train(args: argparse.Namespace) -> int:
    """``glocalk train``: run the seeds, write OUT/summary.json and the epoch logs, print the summary.

    Under torchrun (or in a process ``--nproc`` spawned) every process runs this, sharded over users;
    rank 0 alone prints and writes.
    """
    _own_data_defaults(args)
    if args.patience is not None and not args.val_frac:
        raise ConfigError("--patience needs a validation split (--val-frac)")
    if args.fallback == "blend":  # before any training: the per-seed comparison cannot fit a blend
        raise ConfigError(TRAIN_BLEND)
    if args.fallback == "baseline" and not args.val_frac:
        raise ConfigError("--fallback baseline chooses on validation ratings: it needs a validation split (--val-frac)")
    _check_auto(args)
    if ProcessGroup.from_env().sharded and (args.preset == AUTO or args.ensemble):
        raise ConfigError("--preset auto and --ensemble are not available in glocalk train with several "
                          "processes yet; train them with one process (glocalk fit --nproc supports both)")
    with process_group(args) as group:
        # The default folder is named by the time: rank 0's for every rank.
        return _train(args, group.writer, group.broadcast(time.strftime('%Y%m%d-%H%M%S')))


def _train(args: argparse.Namespace, writer: bool = True, stamp: str | None = None) -> int:
    data, params = data_and_params(args)
    out = Path(args.out or f"runs/{data.name}-{stamp or time.strftime('%Y%m%d-%H%M%S')}")
    if not args.quiet:
        print(data.summary(), file=sys.stderr)
    on_epoch, close = progress(params["epoch_p"] + params["epoch_f"], len(args.seed), args.quiet)
    auto, t0 = None, time.perf_counter()
    try:
        if args.preset == AUTO:
            auto = _search(args, data, params, on_epoch)
            params = {k: v for k, v in auto.params.items() if k != "seed"}
        # The chosen candidate was trained on the first seed's split with these parameters: it is that seed's run.
        trained = {} if auto is None else {args.seed[0]: auto.record}
        summary = run_experiment(data, params, args.seed, out, val_frac=args.val_frac, device=args.device,
                                 on_epoch=on_epoch, resume=args.resume, command=["glocalk", *sys.argv[1:]],
                                 ensemble=args.ensemble, trained=trained)
    finally:
        close()
    if auto is not None:  # the search's record, next to the runs of its choice
        summary["auto"] = auto.json_entry()
        summary["wall_time_s"] = time.perf_counter() - t0  # the search included (it trained the first seed)
    if args.val_frac and summary.get("runs"):  # never silently worse than a bias model (issue 10, item 3)
        summary["comparison"] = compare_runs(data, args.val_frac, summary["runs"], args.fallback)
    if not writer:
        return 0
    if auto is not None or "comparison" in summary:
        write_json_atomic(out / "summary.json", summary)
    if auto is not None:
        print("\n".join(auto_lines(summary["auto"])))
    print_summary(summary, out)
    return 0


def _own_data_defaults(args: argparse.Namespace) -> None:
    """--mat without --preset: the own-data default (autoconfig.own_data_defaults); a paper dataset
    (--dataset) or a named preset: exactly as given (its preset; no validation split or fallback unless asked)."""
    if args.mat:
        # train cannot blend (comparison.TRAIN_BLEND): its own-data default answers with the better of the two.
        fallback = "baseline" if args.fallback is None and args.preset is None else args.fallback
        run = own_data_defaults(args.preset, args.val_frac, fallback)
        args.preset, args.val_frac, args.fallback = run.preset, run.val_frac, run.fallback
    elif args.fallback is None:
        args.fallback = "none"


def _check_auto(args: argparse.Namespace) -> None:
    if args.preset == AUTO and not args.val_frac:
        raise ConfigError("--preset auto chooses on validation ratings: it needs a validation split (--val-frac)")
    if args.budget is not None and args.preset != AUTO:
        raise ConfigError("--budget applies to --preset auto only")


def _search(args: argparse.Namespace, data: RatingMatrix, params: dict,
            on_epoch: Callable[[object, dict], None]) -> SearchResult:
    """--preset auto: the search on the first seed's validation split (its test split removed)."""
    seed = args.seed[0]

    def label(k: int, rec: dict) -> None:
        on_epoch(f"{seed} (candidate {k})", rec)

    return search(data.with_validation(args.val_frac, seed=seed), {**params, "seed": seed}, set(overrides(args)),
                  args.budget, label, keep_test=True)


def cmd_report(args: argparse.Namespace) -> int:
    """``glocalk report``: the Markdown table of runs, or of one epoch log."""
    if args.epochs:
        print(epoch_table(args.epochs, every=args.every), end="")
    elif not args.runs:
        raise ConfigError("nothing to report: give run folders (or their summary.json), or --epochs FILE")
    else:
        summaries = [load_summary(p) for p in args.runs]
        print(results_table(summaries, with_paper=not args.no_paper), end="")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``report`` subcommands to the ``glocalk`` parser."""
    p = sub.add_parser("train", help="train and evaluate on a paper benchmark (ML-100K, ML-1M, Douban)",
                       description="Train GLocal-K with the paper's protocol on a benchmark dataset and "
                                   "write OUT/summary.json and per-epoch logs.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=sorted(PRESETS), help="a paper benchmark dataset")
    src.add_argument("--mat", help="any Monti et al. HDF5 .mat file (M, Otraining, Otest)")
    p.add_argument("--preset", choices=[*sorted(PRESETS), AUTO],
                   help="hyperparameter preset (default: the dataset's, exactly as published; for --mat the "
                        "own-data default: --preset auto on a --val-frac split (default 0.1) with --fallback "
                        "baseline); auto: ml-100k's preset, then stronger regularisation and smaller hidden "
                        "layers, chosen on the first seed's --val-frac validation split (needs --val-frac; "
                        "recorded in summary.json)")
    p.add_argument("--fallback", choices=FALLBACKS, default=None,
                   help="with a validation split, every run is compared with the user + item bias model fitted "
                        "on the same split (summary.json's comparison); baseline: the answer is whichever is "
                        "better on validation (comparison.answer_test); blend (glocalk fit only): refused here, "
                        "as train keeps no validation predictions to fit the blend's weight to. Default: baseline "
                        "for --mat without --preset, else none")
    add_budget(p)
    add_data_location(p)
    p.add_argument("--seed", type=int, nargs="+", default=[1], help="one or more seeds (default 1)")
    p.add_argument("--out", default=None, help="output folder (default runs/DATASET-TIME)")
    p.add_argument("--ensemble", action="store_true",
                   help="also report the ensemble: the mean of the seeds' predictions (each seed's "
                        "validation-selected model with --val-frac, else its last epoch)")
    add_training_run(p)
    add_nproc(p)
    p.set_defaults(func=cmd_train)

    r = sub.add_parser("report", help="Markdown table from the summary.json of glocalk train runs",
                       description="Print a Markdown table (paper protocol, final epoch, validation-selected "
                                   "and ensemble rows, mean ± std over seeds, wall time, command) from runs "
                                   "written by glocalk train, next to the paper's numbers.")
    r.add_argument("runs", nargs="*", help="run folders (or their summary.json files)")
    r.add_argument("--no-paper", action="store_true", help="leave out the paper's rows")
    r.add_argument("--epochs", default=None, help="instead: print the per-epoch table of one epochs.jsonl")
    r.add_argument("--every", type=positive_int, default=1,
                   help="with --epochs: print every N-th epoch (and the last)")
    r.set_defaults(func=cmd_report)
