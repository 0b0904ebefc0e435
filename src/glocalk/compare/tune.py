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
from dataclasses import replace
from pathlib import Path

from glocalk.data.matrix import RatingMatrix
from glocalk.errors import TrainingError
from glocalk.presets import PRESETS, split_config
from glocalk.store import versions, write_json_atomic
from glocalk.train import Trainer

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


def tune(data: RatingMatrix, n_trials: int, out_dir: str | Path, *, dataset: str | None = None,
         val_frac: float = 0.05, seed: int = 0, timeout: float | None = None,
         patience: int | None = DEFAULT_PATIENCE, fixed: dict | None = None, space: dict[str, tuple] | None = None,
         prune: bool = True, device: str = "cpu", evaluate_test: bool = True, preset_first: bool = True,
         on_trial: Callable[[dict], None] | None = None, command: list[str] | None = None) -> dict:
    """Search GLocal-K's hyperparameters on a validation split; write trials and best params; return best.json.

    Args:
        data: train (and test) ratings; the test split is removed for the search.
        n_trials: number of trials (the search also ends at ``timeout`` seconds, if given).
        out_dir: output folder.
        dataset: preset key (default ``data.name``); unknown names use the model's defaults.
        val_frac, seed: the validation split (also the sampler's and the models' seed).
        patience: early stopping on the validation RMSE during fine-tuning (None: full budget).
        fixed: hyperparameters held fixed (over the preset); they leave the search space.
        space: the search space (default ``SEARCH_SPACE``).
        prune: stop unpromising trials early (median pruner on the per-epoch validation RMSE).
        device: torch device.
        evaluate_test: evaluate the best trial's selected model on the test split, once.
        preset_first: make trial 0 the preset's own values of the searched hyperparameters (those
            inside the space), so the search starts from the paper's configuration and its best
            trial is never worse on validation than the paper's settings.
        on_trial: called with each finished trial's record.
        command: the command line to record.
    """
    import optuna

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = (dataset or data.name or "").lower()
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    base = {**PRESETS.get(key, {}), **fixed, "patience": patience, "device": device}
    space = {k: v for k, v in (space or SEARCH_SPACE).items() if k not in fixed}
    # Unknown names and invalid ranges fail before any training (each dimension at its first value).
    split_config({**base, **{k: a[0][0] if kind == "categorical" else a[0] for k, (kind, *a) in space.items()}})
    split = data.with_validation(val_frac, seed=seed)
    search_data = replace(split, test=None)  # the search never sees the test set
    kept: dict = {}  # the best trial so far: its validation-selected weights

    def objective(trial) -> float:
        params = {**base, **suggest(trial, space), "seed": seed}
        model_config, train_config = split_config(params)
        trainer = Trainer(search_data, model_config, train_config)

        def on_epoch(rec: dict) -> None:
            trial.report(rec["val_rmse"], rec["epoch"])
            if prune and trial.should_prune():
                raise optuna.TrialPruned()

        result = trainer.run(on_epoch=on_epoch)
        value = float(result.val_selected["val_rmse"])
        trial.set_user_attr("selected_epoch", result.val_selected["epoch"])
        trial.set_user_attr("epochs_run", len(result.history))
        if kept.get("value", math.inf) > value:
            # The chosen trial's own selected weights are what gets tested at the end (retraining
            # is not bit-reproducible on the multi-threaded sparse path).
            kept.update(value=value, number=trial.number, state=result.selected_state,
                        stage=result.selected_stage, epoch=result.val_selected["epoch"])
        return value

    epoch_p = base.get("epoch_p", 30)
    # TPE models the good and bad trials only after n_startup_trials random ones (Optuna's default 10);
    # a short search of ~10-20 trials would otherwise be almost pure random search.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, n_trials // 3)))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=epoch_p) if prune
              else optuna.pruners.NopPruner())

    def callback(study, trial) -> None:
        _write_trials(study, out_dir, space)  # after every trial, so an interrupted search keeps its trials
        if on_trial is not None:
            on_trial(_trial_record(trial))

    t0 = time.perf_counter()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per trial: on_trial reports them
    try:
        study = optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)
        start = preset_point(PRESETS.get(key, {}), space) if preset_first else {}
        if start:
            study.enqueue_trial(start)
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(TrainingError,),
                       callbacks=[callback])
    finally:
        optuna.logging.set_verbosity(verbosity)
    _write_trials(study, out_dir, space)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TrainingError("no trial completed (all failed or were pruned); see trials.json")
    best_trial = min(complete, key=lambda t: t.value)
    best_params = {**base, **best_trial.params}
    report = {
        "dataset": key or data.name, "n_trials": len(study.trials), "n_complete": len(complete),
        "search_space": describe_space(space), "fixed": {k: v for k, v in base.items() if k not in ("device",)},
        "val_frac": val_frac, "seed": seed, "patience": patience, "prune": prune,
        "best_trial": best_trial.number, "best_val_rmse": best_trial.value,
        "best_params": dict(best_trial.params), "params": best_params,
        "search_seconds": time.perf_counter() - t0, "test": None,
        "versions": versions(), "command": command if command is not None else sys.argv,
        "trials_file": "trials.json",
    }
    if evaluate_test and split.test is not None and split.test.nnz:
        report["test"] = _test_once(split, best_params, seed, kept)
        report["test_note"] = ("test metrics of the chosen trial's own validation-selected model, computed once, "
                               "after the search")
    write_json_atomic(out_dir / "best.json", report)
    return report


def _test_once(split: RatingMatrix, params: dict, seed: int, kept: dict) -> dict:
    """Test metrics of the best trial's validation-selected weights (no retraining)."""
    model_config, train_config = split_config({**params, "seed": seed})
    trainer = Trainer(split, model_config, train_config)
    trainer.model.load_state_dict(kept["state"])
    metrics = trainer.evaluate(kept["stage"])
    return {"trial": kept["number"], "epoch": kept["epoch"], "stage": kept["stage"],
            "val_rmse": metrics["val_rmse"], "rmse": metrics["test_rmse"], "mae": metrics["test_mae"],
            "ndcg": metrics["test_ndcg"]}
