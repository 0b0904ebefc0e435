"""Hyperparameter search for GLocal-K on a validation split (Optuna, seeded TPE sampler).

Search space (``SEARCH_SPACE``; a hyperparameter given as a fixed value is left out of it):

==========  ====================  =========================================================
name        distribution          note
==========  ====================  =========================================================
lambda_2    log-uniform [1, 200]  L2 penalty on W (paper: 10 to 70)
lambda_s    log-uniform [1e-3,    penalty on the local kernel (paper: 0.006 to 0.022)
            0.1]
dot_scale   log-uniform [0.25,    scale of the global kernel (paper: 0.5 to 2)
            4]
n_hid       {250, 500}            hidden units per layer (paper: 500)
iter_f      {5, 10}               L-BFGS iterations per fine-tuning epoch (paper: 5 or 10)
==========  ====================  =========================================================

Trial 0 is the preset's own values of the searched hyperparameters (``preset_first``), so the
best trial is never worse on validation than the paper's configuration; TPE starts modelling
after ``min(10, n_trials // 3)`` random trials.

Everything else comes from the dataset's preset (``glocalk.presets``): n_dim, n_layers,
gk_size, iter_p, epoch_p, and epoch_f as the fine-tuning budget, cut short by early
stopping after ``patience`` fine-tuning epochs without a better validation RMSE.

Protocol:

- One split, ``data.with_validation(val_frac, seed)``, is used by every trial, with its test
  split REMOVED: the search cannot look at the test set.
- Objective: the lowest validation RMSE over the fine-tuning epochs (the epoch the trainer
  would hand over). With ``prune``, Optuna's median pruner stops a trial whose validation
  RMSE at an epoch is worse than the median of earlier trials at that epoch.
- Trials that diverge (non-finite loss) are recorded as failed and the search goes on.
- After the search the best trial's own model (its weights at its validation-selected
  epoch, kept in memory) is evaluated on the test split, once, without retraining, so the
  figure is exactly the model the search chose. (For the paper protocol's figure, train
  the chosen configuration with ``glocalk train``.)

Outputs in ``out_dir``: ``trials.json`` and ``trials.csv`` (every trial: number, state,
validation RMSE, parameters, selected epoch, seconds), ``best.json`` (search space, best
trial, its full hyperparameters, the final test metrics, versions).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from glocalk.data.matrix import RatingMatrix
from glocalk.errors import TrainingError
from glocalk.presets import PRESETS, split_config
from glocalk.protocol import RunOptions, evaluate_state, options_or_fields, train_run
from glocalk.store import versions, write_json_atomic

# name -> (kind, arguments): "log" (low, high), "float" (low, high), "int" (low, high), "categorical" (choices)
SEARCH_SPACE: dict[str, tuple] = {
    "lambda_2": ("log", 1.0, 200.0),
    "lambda_s": ("log", 1e-3, 0.1),
    "dot_scale": ("log", 0.25, 4.0),
    "n_hid": ("categorical", (250, 500)),
    "iter_f": ("categorical", (5, 10)),
}
DEFAULT_PATIENCE = 10


def describe_space(space: dict[str, tuple]) -> dict[str, str]:
    """A readable description of each dimension of a search space."""
    out = {}
    for name, (kind, *args) in space.items():
        if kind == "categorical":
            out[name] = "one of {" + ", ".join(str(c) for c in args[0]) + "}"
        else:
            label = {"log": "log-uniform", "float": "uniform", "int": "integer uniform"}[kind]
            out[name] = f"{label} [{args[0]:g}, {args[1]:g}]"
    return out


def suggest(trial, space: dict[str, tuple]) -> dict:
    """Draw one point of ``space`` from an Optuna trial."""
    params = {}
    for name, (kind, *args) in space.items():
        if kind == "log":
            params[name] = trial.suggest_float(name, args[0], args[1], log=True)
        elif kind == "float":
            params[name] = trial.suggest_float(name, args[0], args[1])
        elif kind == "int":
            params[name] = trial.suggest_int(name, args[0], args[1])
        elif kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(args[0]))
        else:
            raise ValueError(f"unknown kind {kind!r} for {name} in the search space")
    return params


def preset_point(preset: dict, space: dict[str, tuple]) -> dict:
    """The preset's values of the searched hyperparameters that lie inside ``space`` (a trial to enqueue)."""
    point = {}
    for name, (kind, *args) in space.items():
        if name not in preset:
            continue
        value = preset[name]
        inside = value in args[0] if kind == "categorical" else args[0] <= value <= args[1]
        if inside:
            point[name] = value
    return point


def _trial_record(t) -> dict:
    return {"number": t.number, "state": t.state.name, "val_rmse": t.value, "params": dict(t.params),
            **{k: v for k, v in t.user_attrs.items()},
            "seconds": t.duration.total_seconds() if t.duration is not None else None}


def _write_trials(study, out_dir: Path, space: dict[str, tuple]) -> list[dict]:
    records = [_trial_record(t) for t in study.trials]
    write_json_atomic(out_dir / "trials.json", {"search_space": describe_space(space), "trials": records})
    fields = ["number", "state", "val_rmse", *space, "selected_epoch", "epochs_run", "seconds"]
    with open(out_dir / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({**r, **r["params"]})
    return records


@dataclass
class TuneConfig:
    """What ``tune`` searches, how, and where its outputs go."""

    n_trials: int
    """Number of trials (the search also ends at ``timeout`` seconds, if given)."""
    out_dir: str | Path
    dataset: str | None = None
    """Preset key (default ``data.name``); unknown names use the model's defaults."""
    val_frac: float = 0.05
    seed: int = 0
    """Seed of the validation split, the sampler and the models."""
    timeout: float | None = None
    patience: int | None = DEFAULT_PATIENCE
    """Early stopping on the validation RMSE during fine-tuning (None: full budget)."""
    fixed: dict | None = None
    """Hyperparameters held fixed (over the preset); they leave the search space."""
    space: dict[str, tuple] | None = None
    """The search space (default ``SEARCH_SPACE``)."""
    prune: bool = True
    """Stop unpromising trials early (median pruner on the per-epoch validation RMSE)."""
    device: str = "cpu"
    evaluate_test: bool = True
    """Evaluate the best trial's selected model on the test split, once."""
    preset_first: bool = True
    """Make trial 0 the preset's own values of the searched hyperparameters (those inside the space), so
    the search starts from the paper's configuration and its best trial is never worse on validation."""
    on_trial: Callable[[dict], None] | None = None
    """Called with each finished trial's record."""
    command: list[str] | None = None
    """The command line to record (default ``sys.argv``)."""


@dataclass
class _Search:
    """The fixed parts of one search: hyperparameters, space, split and the best trial's model so far."""

    config: TuneConfig
    key: str
    base: dict
    space: dict[str, tuple]
    split: RatingMatrix
    kept: dict = field(default_factory=dict)

    def objective(self, trial) -> float:
        """Train one trial on the split without its test set; its lowest fine-tuning validation RMSE."""
        import optuna

        c = self.config
        model_config, train_config = split_config({**self.base, **suggest(trial, self.space), "seed": c.seed})

        def on_epoch(rec: dict) -> None:
            trial.report(rec["val_rmse"], rec["epoch"])
            if c.prune and trial.should_prune():
                raise optuna.TrialPruned()

        search_data = replace(self.split, test=None)  # the search never sees the test set
        record = train_run(search_data, model_config, train_config, RunOptions(on_epoch=on_epoch))
        value = float(record.val_selected["val_rmse"])
        trial.set_user_attr("selected_epoch", record.val_selected["epoch"])
        trial.set_user_attr("epochs_run", len(record.history))
        if self.kept.get("value", math.inf) > value:
            # The chosen trial's own selected weights are what gets tested at the end (retraining
            # is not bit-reproducible on the multi-threaded sparse path).
            self.kept.update(value=value, number=trial.number, model=record.model)
        return value


def tune(data: RatingMatrix, config: TuneConfig | None = None, **config_values) -> dict:
    """Search GLocal-K's hyperparameters on a validation split; write trials and best params; return best.json.

    ``data``: train (and test) ratings; the test split is removed for the search. ``config`` (or its
    fields as keywords): see ``TuneConfig``.
    """
    c = options_or_fields(config, TuneConfig, config_values)
    out_dir = Path(c.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = (c.dataset or data.name or "").lower()
    fixed = {k: v for k, v in (c.fixed or {}).items() if v is not None}
    base = {**PRESETS.get(key, {}), **fixed, "patience": c.patience, "device": c.device}
    space = {k: v for k, v in (c.space or SEARCH_SPACE).items() if k not in fixed}
    # Unknown names and invalid ranges fail before any training (each dimension at its first value).
    split_config({**base, **{k: a[0][0] if kind == "categorical" else a[0] for k, (kind, *a) in space.items()}})
    search = _Search(c, key, base, space, data.with_validation(c.val_frac, seed=c.seed))
    t0 = time.perf_counter()
    study = _optimize(search, out_dir)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise TrainingError("no trial completed (all failed or were pruned); see trials.json")
    best_trial = min(complete, key=lambda t: t.value)
    best_params = {**base, **best_trial.params}
    report = {
        "dataset": key or data.name, "n_trials": len(study.trials), "n_complete": len(complete),
        "search_space": describe_space(space), "fixed": {k: v for k, v in base.items() if k not in ("device",)},
        "val_frac": c.val_frac, "seed": c.seed, "patience": c.patience, "prune": c.prune,
        "best_trial": best_trial.number, "best_val_rmse": best_trial.value,
        "best_params": dict(best_trial.params), "params": best_params,
        "search_seconds": time.perf_counter() - t0, "test": None,
        "versions": versions(), "command": c.command if c.command is not None else sys.argv,
        "trials_file": "trials.json",
    }
    if c.evaluate_test and search.split.test is not None and search.split.test.nnz:
        report["test"] = _test_once(search.split, best_params, c.seed, search.kept)
        report["test_note"] = ("test metrics of the chosen trial's own validation-selected model, computed once, "
                               "after the search")
    write_json_atomic(out_dir / "best.json", report)
    return report


def _optimize(search: _Search, out_dir: Path):
    """Run the Optuna study (seeded TPE, median pruner); trials.json is rewritten after every trial."""
    import optuna

    c = search.config
    epoch_p = search.base.get("epoch_p", 30)
    # TPE models the good and bad trials only after n_startup_trials random ones (Optuna's default 10);
    # a short search of ~10-20 trials would otherwise be almost pure random search.
    sampler = optuna.samplers.TPESampler(seed=c.seed, n_startup_trials=max(1, min(10, c.n_trials // 3)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=epoch_p) if c.prune
              else optuna.pruners.NopPruner())

    def callback(study, trial) -> None:
        _write_trials(study, out_dir, search.space)  # after every trial, so an interrupted search keeps its trials
        if c.on_trial is not None:
            c.on_trial(_trial_record(trial))

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per trial: on_trial reports them
    try:
        study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
        start = preset_point(PRESETS.get(search.key, {}), search.space) if c.preset_first else {}
        if start:
            study.enqueue_trial(start)
        study.optimize(search.objective, n_trials=c.n_trials, timeout=c.timeout, catch=(TrainingError,),
                       callbacks=[callback])
    finally:
        optuna.logging.set_verbosity(verbosity)
    _write_trials(study, out_dir, search.space)
    return study


def _test_once(split: RatingMatrix, params: dict, seed: int, kept: dict) -> dict:
    """Test metrics of the best trial's validation-selected weights (no retraining)."""
    model_config, train_config = split_config({**params, "seed": seed})
    handed = kept["model"]
    metrics = evaluate_state(split, model_config, train_config, handed)
    return {"trial": kept["number"], "epoch": handed.epoch, "stage": handed.stage,
            "val_rmse": metrics["val_rmse"], "rmse": metrics["test_rmse"], "mae": metrics["test_mae"],
            "ndcg": metrics["test_ndcg"]}
