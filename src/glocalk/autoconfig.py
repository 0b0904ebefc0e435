"""``preset="auto"``: a small, budgeted configuration search on the validation ratings (issue 10, item 2).

The paper presets were made for ratings 1..5 at 1-6% density; on sparser data ML-100K's preset
overfits (BENCHMARKS.md, "Sparser data": at 0.5% density the training RMSE falls to 0.80 while
validation stays at 1.12-1.15). So for one's own data the search tries, in a fixed order, the
preset (ml-100k's values, candidate 0), then the output bias started at the training mean
(``output_bias="mean"``), stronger L2 regularisation (lambda_2) and smaller hidden layers (n_hid).
Every candidate is trained through ``protocol.train_run`` on the SAME data (its validation split
selects the epoch, with early stopping), no new candidate is started once
``budget_minutes`` have passed, and the one with the lowest validation RMSE is chosen. The data's
test split, if any, chooses nothing: it is removed before the search. The chosen candidate's
handed-over weights are the model; further seeds are trained with its configuration.

Sharded over processes (``glocalk.distributed``): every rank runs the search in step; rank 0's clock
decides when the budget is spent (its decision is broadcast), and a rank that dies ends the search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from glocalk.data.matrix import RatingMatrix
from glocalk.distributed import PeerFailure, current_group
from glocalk.errors import ConfigError, TrainingError
from glocalk.presets import preset, split_config
from glocalk.protocol import RunOptions, RunRecord, train_run

AUTO = "auto"
BASE_PRESET = "ml-100k"  # candidate 0: the preset made for ratings 1..5
DEFAULT_BUDGET_MINUTES = 10.0
OWN_DATA_VAL_FRAC = 0.1  # the validation split of the own-data default when none is given
# The own-data default's answer: the validation-weighted blend of GLocal-K and the bias model (comparison.py),
# chosen over the better of the two by BENCHMARKS.md's "Blend or better-of-two (issue 10)".
OWN_DATA_FALLBACK = "blend"
AUTO_PATIENCE = 5  # early stopping on validation when no --patience is given
# Overrides of the preset, tried in this order after it: the output bias started at the training mean
# (users without training ratings are then predicted the mean: ML-1M at 1% of its ratings, test RMSE
# 1.70 -> 1.21; mixed at 0.5% density, worse from 1.5% up, so validation decides; BENCHMARKS.md),
# stronger lambda_2 (the sparse-data finding), alone and with it, then smaller hidden layers.
CANDIDATES: tuple[dict, ...] = (
    {},
    {"output_bias": "mean"},
    {"lambda_2": 50.0},
    {"output_bias": "mean", "lambda_2": 50.0},
    {"lambda_2": 100.0},
    {"lambda_2": 50.0, "n_hid": 250},
    {"lambda_2": 100.0, "n_hid": 250},
    {"lambda_2": 200.0, "n_hid": 250},
    {"lambda_2": 100.0, "n_hid": 100},
    {"lambda_2": 200.0, "n_hid": 100},
)


@dataclass
class Candidate:
    """One tried configuration: its overrides of the preset and how it did on validation."""

    params: dict
    val_rmse: float | None
    epochs: int
    seconds: float
    error: str | None = None
    record: RunRecord | None = field(default=None, repr=False)

    def json_entry(self) -> dict:
        out = {"params": self.params, "val_rmse": self.val_rmse, "epochs": self.epochs, "seconds": self.seconds}
        return out if self.error is None else {**out, "error": self.error}


@dataclass
class SearchResult:
    """The search's record: every candidate tried, the chosen one's index, and whether the budget ended it."""

    candidates: list[Candidate]
    chosen: int
    budget_minutes: float
    stopped_by_budget: bool
    params: dict
    """The full hyperparameters of the chosen candidate (the preset, its overrides, patience)."""

    @property
    def record(self) -> RunRecord:
        """The chosen candidate's run (its handed-over weights are the model)."""
        return self.candidates[self.chosen].record

    def json_entry(self) -> dict:
        """report.json's "auto"."""
        return {"candidates": [c.json_entry() for c in self.candidates], "chosen": self.chosen,
                "chosen_params": self.candidates[self.chosen].params, "budget_minutes": self.budget_minutes,
                "stopped_by_budget": self.stopped_by_budget}


def candidate_overrides(fixed: set[str]) -> list[dict]:
    """``CANDIDATES`` without the hyperparameters the user fixed, duplicates dropped (the preset first)."""
    out: list[dict] = []
    for cand in CANDIDATES:
        free = {k: v for k, v in cand.items() if k not in fixed}
        if free not in out:
            out.append(free)
    return out


@dataclass(frozen=True)
class Settings:
    """What a fit on own data runs with once the defaults are filled in (``own_data_defaults``)."""

    preset: str
    val_frac: float | None
    fallback: str


def own_data_defaults(preset_name: str | None, val_frac: float | None, fallback: str | None) -> Settings:
    """The own-data default (issue 10, item 2) where no preset is named; a named preset runs as it always did.

    No preset (None): the search (``AUTO``) on a validation split (``OWN_DATA_VAL_FRAC`` of the
    training ratings unless ``val_frac`` is given), and ``fallback="blend"`` (``OWN_DATA_FALLBACK``):
    the model answers with alpha * GLocal-K + (1 - alpha) * the user + item bias model, alpha in
    [0, 1] fitted on the validation ratings, so a default fit is never worse on validation than
    either model. A named preset (including "auto"): exactly the given ``val_frac`` and ``fallback``
    ("none" unless given), as before the default existed.
    """
    if preset_name is None:
        return Settings(AUTO, OWN_DATA_VAL_FRAC if val_frac is None else val_frac,
                        OWN_DATA_FALLBACK if fallback is None else fallback)
    return Settings(preset_name, val_frac, "none" if fallback is None else fallback)


def check_budget(budget_minutes: float | None) -> float:
    """The budget in minutes (default ``DEFAULT_BUDGET_MINUTES``); ConfigError if negative or not finite."""
    budget = DEFAULT_BUDGET_MINUTES if budget_minutes is None else float(budget_minutes)
    if not math.isfinite(budget) or budget < 0:
        raise ConfigError(f"budget (--budget) must be a number of minutes >= 0, got {budget_minutes!r}")
    return budget


def search(data: RatingMatrix, params: dict, fixed: set[str], budget_minutes: float | None = None,
           on_epoch: Callable[[int, dict], None] | None = None, keep_test: bool = False) -> SearchResult:
    """Try the candidates on ``data``'s validation split within the budget; the lowest validation RMSE wins.

    ``params``: the flat hyperparameters of candidate 0 (the preset with the user's overrides and
    ``seed``); ``fixed``: the keys the user gave, which the search leaves alone. Without a
    ``patience`` in ``params`` the candidates stop early after ``AUTO_PATIENCE`` epochs.
    ``on_epoch(k, record)`` after every epoch of candidate k. ``keep_test`` (``glocalk train``, whose
    paper rows report every epoch on test): the candidates' epochs also record test metrics, so the
    chosen candidate's run IS the first seed's run; still only validation RMSE chooses anything.
    """
    if data.val is None or not data.val.nnz:
        raise ConfigError("preset 'auto' (--preset auto) chooses on validation ratings: it needs a validation "
                          "split (--val-frac / val_frac)")
    budget = check_budget(budget_minutes)
    if not keep_test:
        data = replace(data, test=None)  # the test set chooses nothing (and is not even seen)
    base = {**params, "patience": params.get("patience") or AUTO_PATIENCE}
    t0 = time.monotonic()
    tried: list[Candidate] = []
    stopped = False
    group = current_group()
    for k, overrides in enumerate(candidate_overrides(fixed)):
        # Sharded: rank 0's clock decides for every rank, so that all train the same candidates.
        if k > 0 and group.broadcast(time.monotonic() - t0 >= budget * 60):
            stopped = True
            break
        callback = None if on_epoch is None else (lambda rec, k=k: on_epoch(k, rec))
        tried.append(_try(data, {**base, **overrides}, overrides, callback))
    scored = [k for k, c in enumerate(tried) if c.val_rmse is not None]
    if not scored:
        raise TrainingError(f"preset 'auto': every candidate failed ({tried[0].error})")
    chosen = min(scored, key=lambda k: tried[k].val_rmse)
    return SearchResult(tried, chosen, budget, stopped, {**base, **tried[chosen].params})


def _try(data: RatingMatrix, params: dict, overrides: dict, on_epoch: Callable[[dict], None] | None) -> Candidate:
    t0 = time.monotonic()
    model_config, train_config = split_config(params)
    try:
        record = train_run(data, model_config, train_config, RunOptions(on_epoch=on_epoch))
    except PeerFailure:
        raise  # not this candidate's fault: the sharded run itself has ended
    except TrainingError as e:  # a diverged candidate loses; the others still count
        return Candidate(dict(overrides), None, 0, time.monotonic() - t0, error=str(e))
    val = record.val_selected["val_rmse"] if record.val_selected else None
    val = val if val is not None and math.isfinite(val) else None
    return Candidate(dict(overrides), val, len(record.history), time.monotonic() - t0, record=record)


def base_params() -> dict:
    """Candidate 0's hyperparameters: the ``BASE_PRESET``."""
    return preset(BASE_PRESET)
