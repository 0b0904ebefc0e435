"""Own-data commands: ``glocalk fit``, ``evaluate`` and ``predict`` (``recommend`` and ``fold-in``: cli/recommend.py).

Argument parsing and printing only: ``glocalk fit`` is ``compare.validation.fit_and_report``
(which documents the output folder and its ``MODEL_DIR.partial/`` training state); the other
commands call ``GLocalKRecommender``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from glocalk.autoconfig import AUTO
from glocalk.cli.options import (
    add_budget,
    add_nproc,
    add_reader_options,
    add_training_run,
    auto_lines,
    comparison_lines,
    execution,
    overrides,
    process_group,
    progress,
    reader_kwargs,
    write_csv,
)
from glocalk.compare.report import mean_std
from glocalk.compare.validation import REPORT, TEST_FRAC, FitConfig, fit_and_report, partial_dir
from glocalk.comparison import FALLBACKS
from glocalk.data.readers import Ratings, read_pairs
from glocalk.errors import ConfigError, DataError
from glocalk.estimator import GLocalKRecommender
from glocalk.presets import PRESETS
from glocalk.store import write_json_atomic

__all__ = ["REPORT", "TEST_FRAC", "cmd_evaluate", "cmd_fit", "cmd_predict", "partial_dir", "register"]


def _fmt_metrics(m: dict) -> str:
    parts = [f"RMSE {m['rmse']:.4f}", f"MAE {m['mae']:.4f}", f"NDCG {m['ndcg']:.4f}"]
    if "n_rated" in m:
        parts.append(f"on {m['n_rated']:,} ratings")
        if m.get("n_skipped"):
            parts.append(f"({m['n_skipped']:,} skipped: user or item not in the training data)")
    return ", ".join(parts)


# -- glocalk fit ------------------------------------------------------------------------------


def _estimator(args: argparse.Namespace, hyperparameters: dict) -> GLocalKRecommender:
    """The estimator the model flags describe (--seed and --ensemble checked together)."""
    seeds = list(args.seed)
    if len(seeds) > 1 and args.ensemble is None:
        raise ConfigError(f"{len(seeds)} seeds train {len(seeds)} models: add --ensemble to average their "
                         "predictions, or give one seed")
    n_ensemble = None
    if args.ensemble is not None:
        if len(seeds) == 1:
            n_ensemble = args.ensemble or 0
            if n_ensemble < 2:
                raise ConfigError("--ensemble needs several seeds (--seed 1 2 3 --ensemble) or a count "
                                 "(--ensemble 3: seeds SEED, SEED+1, SEED+2)")
            seeds = seeds[0]
        elif args.ensemble and args.ensemble != len(seeds):
            raise ConfigError(f"--ensemble {args.ensemble} but {len(seeds)} seeds were given")
    return GLocalKRecommender(
        args.preset, seed=seeds, n_ensemble=n_ensemble, val_frac=args.val_frac, patience=args.patience,
        rating_scale=tuple(args.rating_scale) if args.rating_scale else None, duplicates=args.duplicates,
        device=args.device, fallback=args.fallback, budget=args.budget, **execution(args), **hyperparameters)


def _print_ratings(ratings: Ratings) -> None:
    print(f"{ratings.source}: {len(ratings):,} ratings, {ratings.n_users:,} users, {ratings.n_items:,} items, "
          f"scale {ratings.rating_scale[0]:g}..{ratings.rating_scale[1]:g}", file=sys.stderr)


def cmd_fit(args: argparse.Namespace) -> int:
    """``glocalk fit``: train, evaluate and save. Under torchrun (or in a process ``--nproc`` spawned) every
    process runs this, sharded over users; rank 0 alone prints and writes the model directory."""
    est = _estimator(args, overrides(args))  # bad flags fail before any process group is joined
    with process_group(args) as group:
        # --threads may have been filled in for the processes: the estimator runs with it.
        est.set_params(threads=args.threads)
        return _fit(args, est, group.writer)


def _fit(args: argparse.Namespace, est: GLocalKRecommender, writer: bool) -> int:
    config = FitConfig(ratings=args.ratings, out=args.out, test=args.test, split=args.split, test_frac=args.test_frac,
                       folds=args.folds, refit=not args.no_refit, split_seed=args.split_seed, force=args.force,
                       resume=args.resume, read_options=reader_kwargs(args), command=["glocalk", *sys.argv[1:]])
    params = est.config()
    on_epoch, close = progress(params["epoch_p"] + params["epoch_f"], len(est.seeds()), args.quiet)
    try:
        result = fit_and_report(est, config, on_epoch=on_epoch, on_ratings=None if args.quiet else _print_ratings)
    finally:
        close()
    if writer:
        _print_fit(result.report, result.out, result.model is not None, result.comparison)
    return 0


def _print_fit(report: dict, out: Path, saved: bool, comparison: dict | None = None) -> None:
    lines = []
    cv = report.get("cross_validation")
    if cv:
        lines.append(f"{cv['folds']}-fold cross-validation (mean ± std over folds):")
        for key in ("rmse", "mae", "ndcg"):
            lines.append(f"  {key.upper():<5} {mean_std(cv['mean'][key], cv['std'][key])}")
    if report.get("metrics"):
        lines.append(f"test ({report['split']['kind']}): {_fmt_metrics(report['metrics'])}")
    if report.get("members"):
        sel = ", ".join(f"seed {m['seed']}: epoch {m['epoch']} (stage {m['stage']})" for m in report["members"])
        lines.append(f"model: {sel}" + (" -- an ensemble, predictions averaged" if report["ensemble"] else ""))
    if report.get("auto"):
        lines += auto_lines(report["auto"])
    if comparison is not None:
        lines += comparison_lines(comparison)
    lines.append(f"written: {out}/" + (" (model and report.json)" if saved else REPORT))
    print("\n".join(lines))


# -- glocalk evaluate / predict / recommend -----------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = GLocalKRecommender.load(args.model_dir)
    metrics = model.evaluate(args.test_file, unknown=args.unknown, **reader_kwargs(args))
    print(f"{args.test_file}: {_fmt_metrics(metrics)}")
    if args.json:
        write_json_atomic(args.json, {"model": str(args.model_dir), "test": str(args.test_file), **metrics})
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = GLocalKRecommender.load(args.model_dir)
    kw = reader_kwargs(args)
    pairs = read_pairs(args.pairs_file, **kw)
    try:
        pred = model.predict(pairs, unknown=args.unknown)
    except DataError as e:
        raise DataError(f"{args.pairs_file}: {e}") from e
    write_csv(pairs.assign(prediction=pred), args.output)
    return 0


# -- the parsers --------------------------------------------------------------------------------


def register(sub) -> None:
    """Add fit, evaluate and predict to the ``glocalk`` sub-command parser."""
    _register_fit(sub)
    _register_serving(sub)


def _register_fit(sub) -> None:
    p = sub.add_parser(
        "fit", help="train GLocal-K on your own ratings file and save the model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train GLocal-K on RATINGS (CSV, TSV, '::' .dat, whitespace-separated or Parquet; columns "
                    "user, item, rating[, timestamp]) and save the model directory --out.\n\n"
                    "Evaluation (optional): --test FILE, or --split random|user|time (a holdout of RATINGS), or "
                    "--split kfold (cross-validation: mean ± std over the folds, then by default the model is "
                    "refit on all ratings). MODEL_DIR/report.json records the data, split, hyperparameters, "
                    "metrics and versions.\n\n"
                    "Interrupted runs (Ctrl-C, kill) keep their per-epoch state in MODEL_DIR.partial/; rerun the "
                    "same command with --resume to continue from the last completed epoch (same result as an "
                    "uninterrupted run).",
        epilog="example: glocalk fit ratings.csv --split user --val-frac 0.1 --n-hid 100 --out my-model")
    p.add_argument("ratings", metavar="RATINGS", help="the ratings file")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write (required)")
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    e = p.add_argument_group("evaluation")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--test", metavar="FILE", help="a test file in the same format, used only for reporting")
    src.add_argument("--split", choices=["random", "user", "time", "kfold"],
                     help="hold out part of RATINGS: random (a seeded random --test-frac, default 0.1), user (a "
                          "seeded --test-frac of every user's ratings, default 0.2), time (the latest --test-frac "
                          "of all ratings, default 0.2; needs timestamps), kfold (--folds-fold cross-validation)")
    e.add_argument("--test-frac", type=float, default=None, help="fraction held out by --split random/user/time")
    e.add_argument("--folds", type=int, default=None, help="number of folds for --split kfold (default 5)")
    e.add_argument("--no-refit", action="store_true",
                   help="with --split kfold: only cross-validate (write MODEL_DIR/report.json), do not train "
                        "the final model on all ratings")
    e.add_argument("--split-seed", type=int, default=None, help="seed of the random splits (default: the first --seed)")
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=[*sorted(PRESETS), AUTO], default=None,
                   help="default (no --preset): the own-data default: --preset auto on a --val-frac validation "
                        "split (default 0.1) with --fallback blend. A paper preset (ml-100k, ml-1m, douban): its "
                        "published hyperparameters, no validation split unless --val-frac, no fallback unless "
                        "--fallback. auto: try ml-100k's preset, then stronger regularisation and smaller hidden "
                        "layers, each on the same validation split with early stopping, and keep the lowest "
                        "validation RMSE (the test set chooses nothing; recorded in report.json)")
    add_budget(m)
    m.add_argument("--seed", type=int, nargs="+", default=[1],
                   help="seed of the model (default 1); several seeds need --ensemble")
    m.add_argument("--ensemble", type=int, nargs="?", const=0, default=None, metavar="N",
                   help="train one model per --seed and predict with the mean of their predictions; with one "
                        "seed S, --ensemble N uses seeds S..S+N-1")
    m.add_argument("--rating-scale", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="the rating scale predictions are clipped to; ratings outside it are an error (default: the "
                        "min and max of the training ratings)")
    m.add_argument("--fallback", choices=FALLBACKS, default=None,
                   help="every fit with a validation split also fits the user + item bias model on the same "
                        "split and reports both (printed, and in MODEL_DIR/report.json under comparison); "
                        "baseline: the saved model answers with whichever is better on the validation ratings "
                        "(needs a validation split); blend: with alpha x GLocal-K + (1 - alpha) x the bias "
                        "model, alpha in [0, 1] fitted by least squares on the validation ratings (needs a "
                        "validation split); none: GLocal-K answers. Default: blend without --preset, none "
                        "with one")
    add_reader_options(p)
    add_training_run(p)
    add_nproc(p)
    p.set_defaults(func=cmd_fit)


def _register_serving(sub) -> None:
    p = sub.add_parser("evaluate", help="RMSE, MAE and NDCG of a saved model on a test file",
                       description="Evaluate the model in MODEL_DIR on TEST_FILE (same formats as fit; ratings must "
                                   "lie in the --rating-scale given to fit, if one was). Predictions are clipped "
                                   "to the training ratings' range; metrics are in the file's units; NDCG is the "
                                   "paper's (per user with >= 2 test ratings, averaged).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by glocalk fit")
    p.add_argument("test_file", metavar="TEST_FILE", help="ratings to evaluate on")
    p.add_argument("--unknown", choices=["skip", "error", "baseline"], default="skip",
                   help="test ratings of users or items the model has not seen: skip them and count them "
                        "(default), fail, or predict them with the bias baseline")
    p.add_argument("--json", metavar="FILE", help="also write the metrics to this JSON file")
    add_reader_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict ratings for (user, item) pairs; writes a CSV",
                       description="Predict the rating of every (user, item) pair in PAIRS_FILE with the model in "
                                   "MODEL_DIR; writes CSV columns user, item, prediction (in the data's scale).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a directory written by glocalk fit")
    p.add_argument("pairs_file", metavar="PAIRS_FILE",
                   help="a file with user and item columns (other columns, e.g. rating, are ignored)")
    p.add_argument("--output", "-o", metavar="CSV", default=None, help="output CSV file (default: standard output)")
    p.add_argument("--unknown", choices=["error", "baseline"], default="error",
                   help="a user or item not in the training data: an error naming it (default), or the "
                        "baseline's prediction (global mean + item and user biases)")
    add_reader_options(p, ratings=False)
    p.set_defaults(func=cmd_predict)


