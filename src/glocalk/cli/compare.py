"""``glocalk benchmark`` and ``glocalk tune``: argument parsing and printing only.

The work happens in ``glocalk.compare.harness`` (the model comparison harness) and ``glocalk.compare.tune``
(the Optuna search on a validation split).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from glocalk.cli import options
from glocalk.compare.harness import MODELS, QUICK_BASELINE_OPTIONS, QUICK_PARAMS, BenchmarkConfig, run_benchmark
from glocalk.compare.tune import DEFAULT_PATIENCE, SEARCH_SPACE, TuneConfig, describe_space, tune
from glocalk.data import datasets


def _overrides(args: argparse.Namespace) -> dict:
    """Hyperparameters and execution options given on the command line (those not given stay out, so a
    resumed benchmark compares equal to the run it continues)."""
    given = {key: getattr(args, key) for key in options.EXECUTION_KEYS if getattr(args, key) is not None}
    return {**options.overrides(args), **given}


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


# -- glocalk benchmark -----------------------------------------------------------------


def cmd_benchmark(args: argparse.Namespace) -> int:
    data = datasets.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    overrides = _overrides(args)
    if args.patience is not None:
        overrides["patience"] = args.patience
    baseline_options: dict[str, dict] = {"biased-mf": {}}
    if args.mf_factors is not None:
        baseline_options["biased-mf"]["factors"] = args.mf_factors
    if args.mf_epochs is not None:
        baseline_options["biased-mf"]["epochs"] = args.mf_epochs
    out = Path(args.out or f"runs/benchmark-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    total = len(args.models) * len(args.seed)
    done = [0]

    def on_run(run: dict) -> None:
        done[0] += 1
        if args.quiet:
            return
        sel = run["val_selected"] or {}
        print(f"[{done[0]}/{total}] {run['model']} seed {run['seed']}: test RMSE {_fmt(sel.get('rmse'))} "
              f"MAE {_fmt(sel.get('mae'))} at epoch {sel.get('epoch')} (val RMSE {_fmt(sel.get('val_rmse'))}), "
              f"{run['wall_time_s']:.1f} s", file=sys.stderr, flush=True)

    def on_epoch(model: str, seed: int, rec: dict) -> None:
        if args.verbose:
            print(f"  {model} seed {seed} epoch {rec['epoch']} (stage {rec['stage']}): train {rec['train_rmse']:.4f} "
                  f"val {rec.get('val_rmse', float('nan')):.4f} test {rec.get('test_rmse', float('nan')):.4f}",
                  file=sys.stderr, flush=True)

    if not args.quiet:
        print(data.summary(), file=sys.stderr)
        print(f"{len(args.models)} models x {len(args.seed)} seeds -> {out}", file=sys.stderr)
    run_benchmark(data, BenchmarkConfig(
        models=args.models, seeds=args.seed, val_frac=args.val_frac, out_dir=out, params_overrides=overrides,
        dataset=args.dataset, ensemble=args.ensemble, baseline_options=baseline_options, device=args.device,
        quick=args.quick, resume=args.resume, plots=not args.no_plots, from_train=args.from_train,
        train=not args.tabulate_only, on_epoch=on_epoch, on_run=on_run, command=["glocalk", *sys.argv[1:]]))
    print((out / "table.md").read_text())
    written = ["results.json", "table.md"] + ([] if args.no_plots else ["curves.png", "bars.png"])
    print("written: " + ", ".join(str(out / f) for f in written))
    return 0


# -- glocalk tune ----------------------------------------------------------------------


def cmd_tune(args: argparse.Namespace) -> int:
    data = datasets.load_dataset(args.dataset, data_dir=args.data_dir, download=args.download)
    fixed = _overrides(args)
    space = {k: v for k, v in SEARCH_SPACE.items() if k not in fixed}
    out = Path(args.out or f"runs/tune-{data.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.quiet:
        print(data.summary(), file=sys.stderr)
        print("search space (validation split only; the test set is not used by the search):", file=sys.stderr)
        for name, text in describe_space(space).items():
            print(f"  {name:<10} {text}", file=sys.stderr)

    def on_trial(rec: dict) -> None:
        if args.quiet:
            return
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec["params"].items())
        value = "-" if rec["val_rmse"] is None else f"{rec['val_rmse']:.4f}"
        seconds = "" if rec["seconds"] is None else f", {rec['seconds']:.0f} s"
        print(f"trial {rec['number']} {rec['state'].lower()}: val RMSE {value} ({params}{seconds})",
              file=sys.stderr, flush=True)

    patience = None if args.patience is not None and args.patience <= 0 else args.patience
    report = tune(data, TuneConfig(
        n_trials=args.trials, out_dir=out, dataset=args.dataset, val_frac=args.val_frac, seed=args.seed,
        timeout=args.timeout, patience=patience, fixed=fixed, prune=not args.no_prune,
        preset_first=not args.no_preset_trial, device=args.device, command=["glocalk", *sys.argv[1:]],
        on_trial=on_trial))
    lines = [f"\nbest: trial {report['best_trial']} of {report['n_trials']} ({report['n_complete']} complete), "
             f"validation RMSE {report['best_val_rmse']:.4f}"]
    lines += [f"  {k} = {v}" for k, v in report["best_params"].items()]
    test = report.get("test")
    if test:
        lines.append(f"test (once, the chosen trial's validation-selected model, epoch {test['epoch']}): "
                     f"RMSE {test['rmse']:.4f}  MAE {test['mae']:.4f}  NDCG {test['ndcg']:.4f}")
    flags = {key: flag for flag, key, _, _ in options.HYPERPARAMETERS}
    chosen = " ".join(f"{flags[k]} {v:.6g}" if isinstance(v, float) else f"{flags[k]} {v}"
                      for k, v in report["params"].items() if k in flags)
    lines.append(f"train it: glocalk train --dataset {args.dataset} {chosen} --val-frac {args.val_frac:g}"
                 + (f" --patience {patience}" if patience else ""))
    lines.append(f"written: {out / 'best.json'}, {out / 'trials.json'}, {out / 'trials.csv'}")
    print("\n".join(lines))
    return 0


def register(sub) -> None:
    """Add the ``benchmark`` and ``tune`` subcommands to the ``glocalk`` parser."""
    _register_benchmark(sub)
    _register_tune(sub)


def _register_benchmark(sub) -> None:
    p = sub.add_parser(
        "benchmark", help="compare GLocal-K, its ablations and baselines on the same splits",
        description="Train several models on the same validation splits (one per seed, drawn from the "
                    "training ratings), select each model's epoch on validation, and write OUT/table.md "
                    "(test metrics mean ± std over seeds, wall time, the paper's numbers), OUT/results.json, "
                    "OUT/curves.png and OUT/bars.png. Models: " + ", ".join(MODELS) + ".")
    options.add_data(p)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), metavar="MODEL",
                   help="models to run (default all): " + ", ".join(MODELS))
    p.add_argument("--seed", type=int, nargs="+", default=[1, 2, 3], help="seeds (default 1 2 3)")
    p.add_argument("--val-frac", type=float, default=0.05,
                   help="fraction of the training ratings held out for selection (default 0.05)")
    p.add_argument("--out", default=None, help="output folder (default runs/benchmark-DATASET-TIME)")
    p.add_argument("--ensemble", action="store_true",
                   help="also report, per trained model, the mean of the seeds' test predictions")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: GLocal-K {QUICK_PARAMS}, baselines {QUICK_BASELINE_OPTIONS}; "
                        "the numbers mean nothing")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished (model, seed) runs of an interrupted benchmark in --out and "
                        "continue its interrupted GLocal-K runs from their last epoch")
    p.add_argument("--tabulate-only", action="store_true",
                   help="train nothing: rewrite table.md and the plots from the finished runs in --out for the "
                        "given --models and --seed (missing runs are left out; the table lists each row's seeds)")
    p.add_argument("--from-train", default=None, metavar="DIR",
                   help="take the glocalk model's runs from a 'glocalk train --val-frac F --seed ...' output "
                        "folder with the same data, hyperparameters and --val-frac (continued from its training "
                        "states, which are copied, not modified) instead of training them again")
    p.add_argument("--no-plots", action="store_true", help="skip curves.png and bars.png")
    p.add_argument("--patience", type=int, default=None,
                   help="GLocal-K early stopping: end after N epochs without a better validation RMSE "
                        "(default: the full epoch budget)")
    p.add_argument("--mf-factors", type=int, default=None, help="biased MF: latent factors (default 64)")
    p.add_argument("--mf-epochs", type=int, default=None, help="biased MF: maximum epochs (default 100)")
    options.add_hyperparameters(p, "GLocal-K hyperparameters (default: the dataset's preset)")
    e = options.add_execution(p)
    e.add_argument("--verbose", action="store_true", help="print every GLocal-K epoch")
    p.set_defaults(func=cmd_benchmark)


def _register_tune(sub) -> None:
    space = "; ".join(f"{k}: {v}" for k, v in describe_space(SEARCH_SPACE).items())
    t = sub.add_parser(
        "tune", help="search GLocal-K's hyperparameters on a validation split (Optuna)",
        description="Optuna (seeded TPE) search of GLocal-K's hyperparameters on a validation split drawn "
                    "from the training ratings; the test set is removed during the search and the chosen "
                    f"trial's model is tested once at the end. Search space: {space}. A hyperparameter given "
                    "below is held fixed and leaves the search. Writes OUT/trials.json, OUT/trials.csv and "
                    "OUT/best.json.")
    options.add_data(t)
    t.add_argument("--trials", type=int, required=True, help="number of trials")
    t.add_argument("--timeout", type=float, default=None, help="stop starting new trials after S seconds")
    t.add_argument("--val-frac", type=float, default=0.05, help="validation fraction (default 0.05)")
    t.add_argument("--seed", type=int, default=0, help="seed of the split, the sampler and the models (default 0)")
    t.add_argument("--patience", type=int, default=DEFAULT_PATIENCE,
                   help=f"early stopping after N fine-tuning epochs without a better validation RMSE "
                        f"(default {DEFAULT_PATIENCE}; 0: full budget)")
    t.add_argument("--no-prune", action="store_true", help="never stop a trial early (median pruner off)")
    t.add_argument("--no-preset-trial", action="store_true",
                   help="do not start from the preset: by default trial 0 is the dataset's paper hyperparameters")
    t.add_argument("--out", default=None, help="output folder (default runs/tune-DATASET-TIME)")
    options.add_hyperparameters(t, "fixed hyperparameters (default: the dataset's preset, searched ones excepted)")
    options.add_execution(t)
    t.set_defaults(func=cmd_tune)
