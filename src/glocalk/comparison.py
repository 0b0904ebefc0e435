"""Never silently worse than a bias model: GLocal-K against ``baselines.Biases`` on the same split.

Every fit with a validation split also fits the user + item bias model on the SAME training
ratings, its regularisation chosen on the SAME validation ratings, and both are scored on the
validation ratings (and on the test ratings, when there are any) through the same clipping and
units. Only validation decides anything (``winner_on_validation``, the ``fallback="baseline"``
answer, the blend's weight); test figures are reported, never used. Without a validation split there is nothing
honest to compare on: the record says so and nothing is compared on test.

The record (the estimator's ``comparison_``; report.json's "comparison")::

    {"validation": true, "glocalk": {"val": {rmse, mae, ndcg}, "test": {...}},
     "biases": {"val": ..., "test": ..., "reg_item": .., "reg_user": .., "sweep": ..},
     "winner_on_validation": "glocalk" | "biases", "warning": "..." (only when GLocal-K loses),
     "fallback": "none" | "baseline" | "blend", "answer": "glocalk" | "biases" | "blend",
     "blend": {"alpha": a, "val": ..., "test": ...} (a fit's record: the blend ``fallback="blend"`` answers with),
     "answer_test": the answer's test metrics (when there is a test set)}

The blend (``fallback="blend"``) answers alpha * GLocal-K + (1 - alpha) * biases, each clipped to the
training scale first (so the blend stays in range), alpha in [0, 1] the least-squares weight on the
validation ratings (``blend_alpha``): alpha = 0 and alpha = 1 are candidates, so its validation RMSE
is never above either model's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from glocalk.baselines import Biases, entries
from glocalk.data.matrix import RatingMatrix
from glocalk.data.scaling import RatingMap
from glocalk.errors import ConfigError
from glocalk.metrics import evaluate
from glocalk.model_dir import Fallback

FALLBACKS = ("none", "baseline", "blend")
NO_VALIDATION = ("no validation split: GLocal-K was not compared with the user + item bias model (a test set "
                 "never chooses anything); add --val-frac (val_frac in Python) to compare them and to allow "
                 "--fallback baseline")

TRAIN_BLEND = ("--fallback blend is for glocalk fit (and GLocalKRecommender): glocalk train compares each seed "
               "from its summary, which keeps GLocal-K's validation RMSE but not the validation predictions the "
               "blend's weight is fitted to; use --fallback baseline with glocalk train")

# Scores at (item index, user index) pairs, unclipped, internal units.
Scores = Callable[[np.ndarray, np.ndarray], np.ndarray]


def fit_bias_model(data: RatingMatrix) -> Fallback:
    """``baselines.Biases`` on ``data.train``, its regularisation and sweep chosen on ``data.val``,
    as a ``Fallback`` answering with it (internal units)."""
    biases = Biases()
    biases.fit(RatingMatrix(data.train, val=data.val, rating_scale=data.rating_scale))
    info = {"reg_item": float(biases.info["reg_item"]), "reg_user": float(biases.info["reg_user"]),
            "sweep": int(biases.selected["epoch"])}
    return Fallback("biases", float(biases.mu), np.asarray(biases.b_item, dtype=np.float64),
                    np.asarray(biases.b_user, dtype=np.float64), info)


def split_metrics(scores: Scores, ratings: sp.csr_matrix, clip: tuple[float, float], offset: float) -> dict:
    """RMSE, MAE and NDCG of ``scores`` on the entries of ``ratings`` (internal units), clipped to
    ``clip``; RMSE and MAE in the user's units, NDCG's gains on the scale mapped onto 1..5 (data.scaling)."""
    items, users, truth = entries(ratings)
    pred = np.clip(scores(items, users), *clip) - offset
    scale = (clip[0] - offset, clip[1] - offset)
    out = evaluate(pred, truth - offset, users, items, scale, RatingMap.of(scale).to_model)
    out["n_rated"] = len(truth)
    return out


def blend_alpha(glocalk: np.ndarray, biases: np.ndarray, truth: np.ndarray) -> float:
    """The weight alpha in [0, 1] minimising sum((alpha * glocalk + (1 - alpha) * biases - truth) ** 2).

    The residual is alpha * d - (truth - biases) with d = glocalk - biases, so the unconstrained
    optimum is <d, truth - biases> / <d, d>; the objective is a parabola in alpha, so clipping that
    to [0, 1] gives the constrained optimum. Identical predictions (d = 0): alpha = 1 (GLocal-K).
    """
    d = np.asarray(glocalk, dtype=np.float64) - np.asarray(biases, dtype=np.float64)
    den = float(d @ d)
    if den <= 0.0:
        return 1.0
    return float(np.clip(d @ (np.asarray(truth, dtype=np.float64) - biases) / den, 0.0, 1.0))


def summarise(glocalk: dict, biases: dict, policy: str, bias_info: dict | None = None,
              blend: dict | None = None) -> dict:
    """The comparison record from both models' metrics ({"val": ..., "test": ...}); the winner and
    the answer are chosen on validation RMSE only (a tie keeps GLocal-K). ``bias_info``: the bias
    model's chosen regularisation and sweep, recorded beside its metrics. ``blend``: the blend's
    {"alpha", "val"[, "test"]}, recorded as "blend" (and the answer with ``policy="blend"``)."""
    winner = "biases" if biases["val"]["rmse"] < glocalk["val"]["rmse"] else "glocalk"
    answers = {"baseline": winner, "blend": "blend"}
    if policy == "blend" and blend is None:
        raise ValueError("fallback 'blend' needs the blend's figures")
    out = {"validation": True, "glocalk": glocalk, "biases": {**biases, **(bias_info or {})},
           "winner_on_validation": winner, "fallback": policy, "answer": answers.get(policy, "glocalk")}
    if blend is not None:
        out["blend"] = blend
    if winner == "biases":
        out["warning"] = loses_message(out)
    answered = out[out["answer"]]
    if "test" in answered:
        out["answer_test"] = answered["test"]
    return out


def loses_message(record: dict) -> str:
    """The plain sentence a fit prints when GLocal-K loses to the bias model on validation."""
    g, b = record["glocalk"]["val"]["rmse"], record["biases"]["val"]["rmse"]
    then = {"biases": "the model answers with the bias model (--fallback baseline)",
            "blend": (f"the model answers with a blend of the two, {record.get('blend', {}).get('alpha', 0.0):.3f} "
                      "x GLocal-K (--fallback blend)")
            }.get(record["answer"], "GLocal-K still answers; --fallback baseline would answer with the bias model")
    return (f"GLocal-K loses to the user + item bias model on validation: RMSE {g:.4f} vs {b:.4f}; {then}")


def not_compared() -> dict:
    """The record of a fit without a validation split."""
    return {"validation": False, "note": NO_VALIDATION}


def compare_runs(data: RatingMatrix, val_frac: float, runs: list[dict], policy: str = "none") -> dict:
    """``glocalk train``'s comparison: for every seed, the bias model fitted on THAT seed's split
    (``data.with_validation(val_frac, seed)``) against GLocal-K's validation-selected epoch of that
    seed (``runs``: summary.json's per-seed entries). Same record as a fit's, with means over the
    seeds and a "per_seed" list; the winner is chosen on the mean validation RMSE, and "answer_test"
    holds the test metrics of the answer (the winner with ``policy="baseline"``, else GLocal-K).
    ``policy="blend"`` is refused (ConfigError): summary.json holds each seed's validation RMSE, not the
    validation predictions a blend's weight is fitted to.
    """
    if policy == "blend":
        raise ConfigError(TRAIN_BLEND)
    clip = tuple(data.rating_scale)
    per_seed = []
    for run in runs:
        split = data.with_validation(val_frac, seed=run["seed"])
        fallback = fit_bias_model(split)
        biases = {"val": split_metrics(_bias_scores(fallback), split.val, clip, 0.0)}
        if data.test is not None and data.test.nnz:
            biases["test"] = split_metrics(_bias_scores(fallback), data.test, clip, 0.0)
        selected = run["val_selected"]
        glocalk = {"val": {"rmse": selected["val_rmse"]}, "test": {k: selected[k] for k in ("rmse", "mae", "ndcg")}}
        per_seed.append({"seed": run["seed"], "glocalk": glocalk, "biases": {**biases, **fallback.info}})
    mean = {name: {part: _mean_metrics([s[name][part] for s in per_seed]) for part in per_seed[0][name]
                   if part in ("val", "test")} for name in ("glocalk", "biases")}
    out = summarise(mean["glocalk"], mean["biases"], policy)
    out["per_seed"] = per_seed
    return out


def _bias_scores(fallback: Fallback) -> Scores:
    return lambda items, users: fallback.mu + fallback.b_item[items] + fallback.b_user[users]


def _mean_metrics(figures: list[dict]) -> dict:
    """The mean of each metric the figures share (one seed: its own figures)."""
    keys = [k for k in ("rmse", "mae", "ndcg") if all(k in f for f in figures)]
    return {k: float(np.mean([f[k] for f in figures])) for k in keys}
