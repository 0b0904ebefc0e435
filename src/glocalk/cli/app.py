"""Command-line interface: argument parsing and printing only; the work happens in the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from glocalk.errors import CheckpointError, DataError, TrainingError
from glocalk.presets import PRESETS, preset

# Hyperparameters every training command accepts as overrides: (flag, key, type, help).
HYPERPARAMETERS = [
    ("--n-hid", "n_hid", int, "hidden units per kernel layer (paper: 500)"),
    ("--n-dim", "n_dim", int, "dimension of the local kernel's u, v vectors (paper: 5)"),
    ("--n-layers", "n_layers", int, "number of sigmoid hidden layers (paper: 2)"),
    ("--gk-size", "gk_size", int, "side of the global convolution kernel (paper: 3)"),
    ("--lambda-2", "lambda_2", float, "L2 penalty on W (lambda_2/2 * sum W^2)"),
    ("--lambda-s", "lambda_s", float, "penalty on the local kernel (lambda_s/2 * sum K^2)"),
    ("--dot-scale", "dot_scale", float, "scale of the global kernel's dot product"),
    ("--gk-norm", "gk_norm", str, "'paper' (as published) or 'sqrt' (divide the global kernel by "
                                  "sqrt(n_items); fixes the ML-1M fine-tuning collapse)"),
    ("--iter-p", "iter_p", int, "L-BFGS iterations per pre-training epoch"),
    ("--iter-f", "iter_f", int, "L-BFGS iterations per fine-tuning epoch"),
    ("--epoch-p", "epoch_p", int, "pre-training epochs"),
    ("--epoch-f", "epoch_f", int, "fine-tuning epochs"),
]


def _add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("hyperparameters (default: the preset's)")
    for flag, key, typ, text in HYPERPARAMETERS:
        g.add_argument(flag, dest=key, type=typ, default=None, help=text)
    e = p.add_argument_group("execution")
    e.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    e.add_argument("--path", choices=["auto", "dense", "sparse"], default="auto",
                   help="execution path: dense O(items*users) or sparse O(nnz) maths, same results "
                        "(default auto: by size and density)")
    e.add_argument("--optimizer", choices=["scipy", "torch"], default="scipy",
                   help="scipy: L-BFGS-B as the original code (default); torch: torch.optim.LBFGS "
                        "with strong Wolfe line search (stays on the GPU)")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    e.add_argument("--val-frac", type=float, default=None,
                   help="hold out this seeded fraction of the TRAINING ratings to select the epoch "
                        "honestly (the test set is then only reported)")
    e.add_argument("--patience", type=int, default=None,
                   help="early stopping: end fine-tuning after N epochs without a better validation "
                        "RMSE (needs --val-frac)")
    e.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last completed epoch")
    e.add_argument("--quiet", action="store_true", help="no progress bar")


def _overrides(args: argparse.Namespace) -> dict:
    return {key: getattr(args, key) for _, key, _, _ in HYPERPARAMETERS if getattr(args, key) is not None}


def _progress(total_epochs: int, n_seeds: int, quiet: bool):
    """An on_epoch callback showing a tqdm bar per seed with the current RMSEs."""
    from tqdm import tqdm

    bars: dict[int, tqdm] = {}

    def on_epoch(seed: int, rec: dict) -> None:
        if quiet:
            return
        if seed not in bars:
            for bar in bars.values():
                bar.close()
            bars[seed] = tqdm(total=total_epochs, desc=f"seed {seed}", unit="epoch", file=sys.stderr,
                              dynamic_ncols=True)
        post = {"stage": rec["stage"], "train": f"{rec['train_rmse']:.4f}"}
        if "val_rmse" in rec:
            post["val"] = f"{rec['val_rmse']:.4f}"
        if "test_rmse" in rec:
            post["test"] = f"{rec['test_rmse']:.4f}"
        bars[seed].set_postfix(post)
        bars[seed].update(1)
        if bars[seed].n >= total_epochs:
            bars[seed].close()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return on_epoch, close


def _fmt(summary: dict, protocol: str, key: str) -> str:
    if protocol not in summary or key not in summary[protocol]:
        return "-"
    mean = summary[protocol][key]
    std = summary.get("std", {}).get(protocol, {}).get(key)
    return f"{mean:.4f} ± {std:.4f}" if std is not None and len(summary["seeds"]) > 1 else f"{mean:.4f}"


def print_summary(summary: dict, out: Path) -> None:
    """The closing table of a training run."""
    lines = [f"\n{summary['dataset']}: {len(summary['seeds'])} seed(s) {summary['seeds']}, "
             f"wall time {summary['wall_time_s']:.1f} s"]
    lines.append(f"{'protocol':<34} {'RMSE':>18} {'MAE':>18} {'NDCG':>18}")
    names = {"best": "paper (best fine-tuning epoch, test)", "final": "final epoch",
             "val_selected": "validation-selected epoch", "ensemble": "ensemble of the seeds"}
    for protocol, label in names.items():
        if protocol in summary:
            lines.append(f"{label:<34} {_fmt(summary, protocol, 'rmse'):>18} "
                         f"{_fmt(summary, protocol, 'mae'):>18} {_fmt(summary, protocol, 'ndcg'):>18}")
    lines.append(f"written: {out / 'summary.json'}")
    print("\n".join(lines))


def cmd_train(args: argparse.Namespace) -> int:
    from glocalk.data.datasets import load_dataset, load_monti
    from glocalk.protocol import run_experiment

    if args.mat:
        data = load_monti(args.mat)
        params = preset(args.preset or "douban")
    else:
        data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
        params = preset(args.preset or args.dataset)
    params.update(_overrides(args))
    params.update(path=args.path, optimizer=args.optimizer, patience=args.patience, threads=args.threads)
    if args.patience is not None and not args.val_frac:
        raise SystemExit("error: --patience needs a validation split (--val-frac)")
    out = Path(args.out or f"runs/{data.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.quiet:
        print(data.summary(), file=sys.stderr)
    on_epoch, close = _progress(params["epoch_p"] + params["epoch_f"], len(args.seed), args.quiet)
    try:
        summary = run_experiment(data, params, args.seed, out, val_frac=args.val_frac, device=args.device,
                                 on_epoch=on_epoch, resume=args.resume, command=["glocalk", *sys.argv[1:]],
                                 ensemble=args.ensemble)
    finally:
        close()
    print_summary(summary, out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from glocalk.compare.report import epoch_table, load_summary, results_table

    if args.epochs:
        print(epoch_table(args.epochs, every=args.every), end="")
        return 0
    try:
        summaries = [load_summary(p) for p in args.runs]
    except FileNotFoundError as e:
        raise DataError(str(e)) from e
    print(results_table(summaries, with_paper=not args.no_paper), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glocalk", description=(
        "GLocal-K (global and local kernels for recommender systems, CIKM 2021) in PyTorch."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate on a paper benchmark (ML-100K, ML-1M, Douban)",
                       description="Train GLocal-K with the paper's protocol on a benchmark dataset and "
                                   "write OUT/summary.json and per-epoch logs.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=sorted(PRESETS), help="a paper benchmark dataset")
    src.add_argument("--mat", help="any Monti et al. HDF5 .mat file (M, Otraining, Otest)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="hyperparameter preset (default: the dataset's; douban's for --mat)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default: $GLOCALK_DATA, else ~/.cache/glocalk)")
    p.add_argument("--download", action="store_true",
                   help="download the canonical files (checksum-verified) if they are missing")
    p.add_argument("--seed", type=int, nargs="+", default=[1], help="one or more seeds (default 1)")
    p.add_argument("--out", default=None, help="output folder (default runs/DATASET-TIME)")
    p.add_argument("--ensemble", action="store_true",
                   help="also report the ensemble: the mean of the seeds' predictions (each seed's "
                        "validation-selected model with --val-frac, else its last epoch)")
    _add_training_options(p)
    p.set_defaults(func=cmd_train)

    r = sub.add_parser("report", help="Markdown table from the summary.json of glocalk train runs",
                       description="Print a Markdown table (paper protocol, final epoch, validation-selected "
                                   "and ensemble rows, mean ± std over seeds, wall time, command) from runs "
                                   "written by glocalk train, next to the paper's numbers.")
    r.add_argument("runs", nargs="*", help="run folders (or their summary.json files)")
    r.add_argument("--no-paper", action="store_true", help="leave out the paper's rows")
    r.add_argument("--epochs", default=None, help="instead: print the per-epoch table of one epochs.jsonl")
    r.add_argument("--every", type=int, default=1, help="with --epochs: print every N-th epoch (and the last)")
    r.set_defaults(func=cmd_report)

    # Own-data commands (fit/evaluate/predict/recommend) and the model comparison harness.
    from glocalk.cli import compare as cli_benchmark
    from glocalk.cli import fit as cli_fit

    cli_fit.register(sub)
    cli_benchmark.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``glocalk`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (DataError, CheckpointError, TrainingError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"glocalk: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glocalk: interrupted; completed epochs are saved (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
