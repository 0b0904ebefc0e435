"""Paper-protocol experiments: run seeds, aggregate mean ± std, write summary.json and epoch logs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from glocalk.data.matrix import RatingMatrix
from glocalk.metrics import evaluate
from glocalk.presets import split_config
from glocalk.store import device_description, versions, write_json_atomic
from glocalk.train import Trainer, TrainResult

PROTOCOLS = ("best", "final", "val_selected")
METRICS = ("rmse", "mae", "ndcg")


def aggregate(runs: list[dict]) -> dict:
    """Means (under ``best``/``final``/``val_selected``) and stds (under ``std``) over runs."""
    out: dict = {"std": {}}
    for protocol in PROTOCOLS:
        entries = [r[protocol] for r in runs if r.get(protocol)]
        if len(entries) != len(runs) or not entries:
            continue
        keys = [k for k in entries[0] if all(k in e for e in entries)]
        values = {k: np.array([e[k] for e in entries], dtype=float) for k in keys}
        out[protocol] = {k: float(v.mean()) for k, v in values.items()}
        out["std"][protocol] = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return out


def selected_test_predictions(trainer: Trainer, result: TrainResult) -> np.ndarray:
    """Test predictions of the model a run hands over: the val-selected epoch's weights, else the last."""
    if result.selected_state is not None:
        trainer.model.load_state_dict(result.selected_state)
        return trainer.predictions(result.selected_stage)["test"]
    return trainer.predictions(result.history[-1]["stage"])["test"]


def ensemble_metrics(data: RatingMatrix, predictions: list[np.ndarray], selection: str | None = None) -> dict:
    """Metrics of the mean of several models' test predictions (CSR order of ``data.test``)."""
    test = data.test.tocoo()
    mean = np.mean(predictions, axis=0)
    out = {**evaluate(mean, test.data, test.col, test.row, data.rating_scale), "n_models": len(predictions)}
    if selection is not None:
        out["selection"] = selection
    return out


def run_seed(data: RatingMatrix, params: dict, seed: int, out_dir: Path, val_frac: float | None = None,
             on_epoch: Callable[[dict], None] | None = None, resume: bool = False,
             keep_predictions: bool = False) -> tuple[dict, TrainResult, np.ndarray | None]:
    """One seed of the protocol; writes ``out_dir/epochs.jsonl`` and ``out_dir/summary.json``.

    With ``keep_predictions`` also returns the handed-over model's test predictions (for ensembles).
    """
    model_config, train_config = split_config({**params, "seed": seed})
    run_data = data.with_validation(val_frac, seed=seed) if val_frac else data
    t0 = time.perf_counter()
    trainer = Trainer(run_data, model_config, train_config)
    result = trainer.run(on_epoch=on_epoch, log_path=out_dir / "epochs.jsonl",
                         checkpoint_dir=out_dir / "state", resume=resume)
    summary = {
        "dataset": data.name, "seed": seed, "path": result.path,
        "wall_time_s": time.perf_counter() - t0, "train_time_s": result.seconds,
        "epochs_run": len(result.history),
        "best": result.best, "final": result.final, "val_selected": result.val_selected,
        "function_evaluations": int(sum(r["nfev"] for r in result.history)),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    preds = None
    if keep_predictions and data.test is not None and data.test.nnz:
        preds = selected_test_predictions(trainer, result)
    return summary, result, preds


def run_experiment(data: RatingMatrix, params: dict, seeds: list[int], out_dir: str | Path,
                   val_frac: float | None = None, device: str = "cpu",
                   on_epoch: Callable[[int, dict], None] | None = None, resume: bool = False,
                   command: list[str] | None = None, ensemble: bool = False) -> dict:
    """Run every seed, write ``out_dir/summary.json`` (means, stds, per-seed runs) and return it.

    ``ensemble``: also average the seeds' test predictions (each seed's val-selected model when
    a validation split is used, else its last epoch) into an ``ensemble`` entry.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {**params, "device": device}
    t0 = time.perf_counter()
    runs, predictions, growth = [], [], []
    header = {
        "dataset": data.name, "seeds": list(seeds), "hyperparameters": params, "val_frac": val_frac,
        "data": {"n_users": data.n_users, "n_items": data.n_items, "n_train": int(data.train.nnz),
                 "n_test": int(data.test.nnz) if data.test is not None else 0,
                 "rating_scale": list(data.rating_scale), "fingerprint": data.fingerprint()},
        "versions": versions(), "device": device_description(device, params.get("threads")),
        "command": command if command is not None else sys.argv,
    }
    for seed in seeds:
        callback = None if on_epoch is None else (lambda rec, seed=seed: on_epoch(seed, rec))
        seed_dir = out_dir / f"seed-{seed}"
        summary, _, preds = run_seed(data, params, seed, seed_dir, val_frac, callback, resume, ensemble)
        summary["epoch_log"] = str((seed_dir / "epochs.jsonl").relative_to(out_dir))
        runs.append(summary)
        extra = {}
        if preds is not None:
            predictions.append(preds)
            extra["ensemble"] = ensemble_metrics(data, predictions, "val_selected" if val_frac else "final")
            # RMSE of the ensemble of the first k seeds, k = 1..n: how much each member adds.
            growth.append(extra["ensemble"]["rmse"])
            extra["ensemble"]["rmse_by_members"] = list(growth)
        # Rewritten after each seed, so an interrupted multi-seed run keeps what it finished.
        write_json_atomic(out_dir / "summary.json", {
            **header, "wall_time_s": time.perf_counter() - t0, "complete": len(runs) == len(seeds),
            **aggregate(runs), **extra, "runs": runs})
    return json.loads((out_dir / "summary.json").read_text())
