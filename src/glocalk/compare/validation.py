"""Evaluating an estimator on one's own ratings: holdout splits, k-fold cross-validation, and
``fit_and_report`` -- the whole of ``glocalk fit`` (read, split, cross-validate, train, report, save).

The estimator is anything with ``GLocalKRecommender``'s interface (``clone``, ``fit``, ``save``,
``seeds``, ``config``, ``rating_scale``, ``duplicates``, ``val_frac``); this module does not import it.

Clip range. Unless the estimator was given a ``rating_scale``, the scale a model clips to is
the min..max of the ratings it is TRAINED on (SPEC.md): each training part of a split or fold
derives its own, so no test rating leaks into it.

Output folder. ``OUT`` holds the model (``model.json``, ``weights.safetensors``) and
``report.json``; while training, the per-epoch state lives in ``OUT.partial/`` (``fit/``, ``cv/``),
deleted once ``OUT`` is written. ``force`` replaces a model directory, never a folder holding
anything else: a file glocalk did not write (say the ratings file) makes it an OutputError
before training starts, and nothing is deleted.

Comparison with the bias model. Every fit with a validation split also fits the user + item bias
model on the same split (``glocalk.comparison``); report.json's "comparison" (and
``FitResult.comparison``) holds the record, or says that there was no validation split.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glocalk.data import splits
from glocalk.data.readers import Ratings, read_ratings
from glocalk.distributed import current_group
from glocalk.errors import ConfigError, DataError
from glocalk.store import META, WEIGHTS, check_replaceable, json_default, remove_dir, replace_dir, versions

TEST_FRAC = {"random": 0.1, "user": 0.2, "time": 0.2}
SPLITS = ("random", "user", "time", "kfold")
REPORT = "report.json"
OUT_FILES = (META, WEIGHTS, REPORT)  # everything fit_and_report writes into OUT
STATE_DIRS = ("fit", "cv")  # everything it writes into OUT.partial

OnEpoch = Callable[[Any, dict], None]


def partial_dir(out: str | Path) -> Path:
    """Where ``glocalk fit --out OUT`` keeps its resumable training state: ``OUT.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def training_part(train: Ratings, estimator: Any) -> Ratings:
    """``train`` with the rating scale (and offset) of its own ratings, unless the estimator fixes the scale."""
    if estimator.rating_scale is not None:
        return train
    return Ratings(train.df, source=train.source)


def _read_options(estimator: Any, options: dict | None) -> dict:
    """``readers.read_ratings`` keywords: the estimator's duplicates policy unless ``options`` name one."""
    return {"duplicates": estimator.duplicates, **(options or {})}


# -- cross-validation ----------------------------------------------------------------------------


def cross_validate(estimator: Any, data: Any, folds: int = 5, seed: int = 0, *,
                   on_epoch: Callable[[int, int, dict], None] | None = None,
                   checkpoint_dir: str | Path | None = None, resume: bool = False,
                   read_options: dict | None = None) -> dict:
    """k-fold cross-validation: fit a clone of ``estimator`` per fold, return per-fold and mean ± std metrics.

    ``data`` is anything ``fit`` reads except a RatingMatrix (``read_options`` go to
    ``readers.read_ratings`` for a file). Folds are ``splits.kfold(ratings, folds, seed)``; a
    fold's test ratings whose user or item is absent from its training part are skipped
    (``n_skipped``). ``on_epoch(fold, seed, record)``; ``checkpoint_dir/fold-K`` keeps each
    fold's training state for ``resume``. Returns ``{"folds", "seed", "per_fold": [...],
    "mean": {...}, "std": {...}}`` (std with ddof=1 over the folds; NaN NDCGs are left out of
    its mean and std).
    """
    ratings = read_ratings(data, rating_scale=estimator.rating_scale, **_read_options(estimator, read_options))
    per_fold = []
    for k, (train, test) in enumerate(splits.kfold(ratings, folds, seed), start=1):
        callback = None if on_epoch is None else (lambda s, rec, k=k: on_epoch(k, s, rec))
        fold_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"fold-{k}"
        model = estimator.clone().fit(training_part(train, estimator), test=test, on_epoch=callback,
                                      checkpoint_dir=fold_dir, resume=resume)
        per_fold.append({"fold": k, "n_train": len(train), "n_test": len(test), **model.metrics_})
    out: dict = {"folds": folds, "seed": seed, "per_fold": per_fold, "mean": {}, "std": {}}
    for key in ("rmse", "mae", "ndcg"):
        v = np.array([f[key] for f in per_fold], dtype=np.float64)
        v = v[np.isfinite(v)]
        out["mean"][key] = float(v.mean()) if len(v) else float("nan")
        out["std"][key] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return out


# -- glocalk fit ------------------------------------------------------------------------------------


@dataclass
class FitConfig:
    """What ``glocalk fit`` is asked to do (its flags, as data); the model itself is the estimator's."""

    ratings: str | Path
    """The ratings file to train on."""
    out: str | Path
    """The model directory to write."""
    test: str | Path | None = None
    """A test file in the same format, used only for reporting."""
    split: str | None = None
    """Hold out part of ``ratings``: "random", "user", "time" or "kfold" (cross-validation)."""
    test_frac: float | None = None
    """Fraction held out by the random, user and time splits (default ``TEST_FRAC``)."""
    folds: int | None = None
    """Folds of the kfold split (default 5)."""
    refit: bool = True
    """With kfold: also train the final model on all ratings (else write only report.json)."""
    split_seed: int | None = None
    """Seed of the random splits (default: the estimator's first seed)."""
    force: bool = False
    """Replace an existing model directory ``out``."""
    resume: bool = False
    """Continue an interrupted run from ``OUT.partial``."""
    read_options: dict = field(default_factory=dict)
    """Keywords of ``readers.read_ratings`` (sep, header, columns, duplicates, encoding)."""
    command: list[str] = field(default_factory=list)
    """The command line, recorded in report.json."""

    def check(self) -> None:
        """ConfigError for options that do not go together (named by their ``glocalk fit`` flags)."""
        if self.split is not None and self.split not in SPLITS:
            raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.split is not None and self.test is not None:
            raise ConfigError("--test and --split exclude each other")
        if self.split != "kfold" and (self.folds is not None or not self.refit):
            raise ConfigError("--folds and --no-refit apply to --split kfold only")
        if self.test_frac is not None and self.split not in TEST_FRAC:
            raise ConfigError("--test-frac applies to --split random, user or time only")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"--folds must be >= 2, got {self.folds}")


@dataclass
class FitResult:
    """What ``fit_and_report`` did: the report (as in report.json), the fitted model (None with
    kfold and no refit) and the directory written."""

    report: dict
    model: Any
    out: Path
    comparison: dict | None = None
    """GLocal-K against the bias model on the same split (``glocalk.comparison``); None without a model."""


def fit_and_report(estimator: Any, config: FitConfig, *, on_epoch: OnEpoch | None = None,
                   on_ratings: Callable[[Ratings], None] | None = None) -> FitResult:
    """``glocalk fit``: train ``estimator`` on ``config.ratings``, evaluate as configured, save to ``config.out``.

    Writes the model directory with ``report.json`` (or only ``report.json`` for kfold without
    refit), atomically. ``on_epoch(label, record)`` after every epoch (label: the seed, or
    "SEED (fold K)"); ``on_ratings(ratings)`` once the ratings are read.
    """
    config.check()
    out, state = Path(config.out), partial_dir(config.out)
    _prepare_out(out, state, config)
    t0 = time.perf_counter()
    ratings = read_ratings(config.ratings, rating_scale=estimator.rating_scale,
                           **_read_options(estimator, config.read_options))
    if on_ratings is not None:
        on_ratings(ratings)
    seeds = estimator.seeds()
    split_seed = seeds[0] if config.split_seed is None else config.split_seed
    report: dict = {"command": list(config.command), "ratings": str(config.ratings), "n_ratings": len(ratings),
                    "hyperparameters": estimator.config(), "seeds": seeds, "ensemble": len(seeds) > 1,
                    "val_frac": estimator.settings().val_frac, "preset": estimator.settings().preset,
                    "versions": versions()}
    model = None
    if config.split == "kfold":
        folds = config.folds or 5
        report["split"] = {"kind": "kfold", "folds": folds, "seed": split_seed}
        fold_epoch = None if on_epoch is None else (lambda k, s, rec: on_epoch(f"{s} (fold {k})", rec))
        report["cross_validation"] = cross_validate(estimator, ratings, folds, split_seed, on_epoch=fold_epoch,
                                                    checkpoint_dir=state / "cv", resume=config.resume)
    if config.split != "kfold" or config.refit:
        train, test = _evaluation_data(estimator, ratings, config, split_seed, report)
        model = estimator.fit(train, test=test, on_epoch=on_epoch, checkpoint_dir=state / "fit",
                              resume=config.resume)
    if not current_group().writer:  # sharded: the other ranks have trained their blocks; rank 0 writes
        return FitResult(report, model, out)
    auto = None if model is None else getattr(model, "auto_", None)
    if auto is not None:  # preset "auto": the search's record, and the hyperparameters it chose
        report["auto"] = auto.json_entry()
        report["hyperparameters"] = model.model_.hyperparameters
    comparison = None if model is None else model.comparison_
    if comparison is not None:
        report["comparison"] = comparison
    report["wall_time_s"] = time.perf_counter() - t0
    _write(out, report, model)
    remove_dir(state, STATE_DIRS, "training state folder")
    return FitResult(report, model, out, comparison)


def _prepare_out(out: Path, state: Path, config: FitConfig) -> None:
    """Refuse an ``out`` that is not ours, or ours without force; set up the state folder."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a directory")
    # Refuse before training: a folder holding anything glocalk did not write is never replaced.
    check_replaceable(out, OUT_FILES, "model directory")
    if out.exists() and any(out.iterdir()) and not (config.force or config.resume):
        raise DataError(f"--out {out} already holds a model; pass --force to replace it")
    if config.resume and not state.exists():
        raise DataError(f"--resume: no interrupted run to continue ({state} does not exist)")
    if not config.resume and current_group().writer:
        remove_dir(state, STATE_DIRS, "training state folder")  # an old run this one does not continue


def _evaluation_data(estimator: Any, ratings: Ratings, config: FitConfig, split_seed: int,
                     report: dict) -> tuple[Ratings, Ratings | None]:
    """(training ratings, test ratings or None) as configured; records the split in ``report``."""
    if config.split in TEST_FRAC:
        frac = TEST_FRAC[config.split] if config.test_frac is None else config.test_frac
        if config.split == "random":
            train, test = splits.random_holdout(ratings, frac, split_seed)
        elif config.split == "user":
            train, test = splits.per_user_holdout(ratings, frac, seed=split_seed)
        else:
            train, test = splits.time_holdout(ratings, frac)
        report["split"] = {"kind": config.split, "test_frac": frac, "seed": split_seed,
                           "n_train": len(train), "n_test": len(test)}
        return training_part(train, estimator), test
    if config.test is not None:
        test = read_ratings(config.test, rating_scale=estimator.rating_scale,
                            **_read_options(estimator, config.read_options))
        report["split"] = {"kind": "file", "test": str(config.test), "n_test": len(test)}
        return ratings, test
    return ratings, None


def _write(out: Path, report: dict, model: Any) -> None:
    """The model directory with report.json, or report.json alone; atomically, replacing only our files."""
    if model is not None:
        report.update(metrics=model.metrics_, members=model.members_, fingerprint=model.fingerprint_)
        # The scale mapped onto the model's 1..5, in the user's units (model.json: internal).
        report.update(model.rating_map_.json_entry(shift=model.offset_))
    text = json.dumps(report, indent=2, default=json_default) + "\n"
    if model is not None:
        model.save(out, extra_files={REPORT: text}, owned=OUT_FILES)
    else:
        replace_dir(out, lambda tmp: (tmp / REPORT).write_text(text), OUT_FILES, "model directory")
