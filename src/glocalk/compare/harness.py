"""The model comparison harness: several models, the same splits, honest selection, table and plots.

For every seed one validation split is drawn from the TRAINING ratings
(``data.with_validation(val_frac, seed)``) and shared by every model; the test split is
the dataset's own and is never used to choose anything. Every model picks its epoch
(and the baselines their regularisation) on that validation split; the table reports
the test metrics of that choice, mean ± std over the seeds. For the GLocal-K family the
paper's protocol (the best test epoch) is reported too, in its own, labelled column.

Models (``MODELS``):

- ``global-mean``, ``biases``, ``biased-mf``: see ``glocalk.baselines``.
- ``i-autorec``: the same autoencoder with the local kernel disabled (K = 1), pre-training
  only (``epoch_f = 0``): I-AutoRec (Sedhain et al. 2015) trained by the paper's L-BFGS.
- ``glocalk-pretrain``: GLocal-K's pre-training stage only (``epoch_f = 0``). When ``glocalk``
  runs too it is read off that run's pre-training epochs (the same computation: same seed,
  initialisation, split and stage-1 updates) instead of being trained twice; with
  ``patience`` it then sees all ``epoch_p`` epochs rather than stopping early.
- ``glocalk-no-gk``: fine-tuning without the global kernel: stage 2 keeps training on R
  for the same epoch budget.
- ``glocalk``: the full model.

The GLocal-K family uses the dataset's preset hyperparameters (``glocalk.presets``) plus
any overrides. ``ensemble``: also the average of the seeds' (clipped) test predictions of
each stochastic model's validation-selected epoch.

Outputs in ``out_dir``: ``results.json`` (configuration, per-run results and curves,
aggregates), ``table.md``, ``curves.png`` (train / validation / test RMSE per epoch, one
panel per model, first seed), ``bars.png`` (test RMSE with std error bars),
``runs/MODEL/seed-N.jsonl`` (each run's per-epoch history) and
``predictions/MODEL-seed-N.npy`` (each run's test predictions, CSR order).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from glocalk.baselines import BASELINES, entries, make_baseline
from glocalk.data.matrix import RatingMatrix
from glocalk.errors import TrainingError
from glocalk.presets import GLOCALK_VARIANTS, LABELS, PAPER_RESULTS, PRESETS, split_config
from glocalk.protocol import ensemble_metrics
from glocalk.store import device_description, versions, write_json_atomic
from glocalk.train import Trainer, summarise

MODELS: tuple[str, ...] = (*BASELINES, *GLOCALK_VARIANTS)
# --quick: a smoke run, minutes instead of hours; its numbers mean nothing.
QUICK_PARAMS: dict = {"epoch_p": 2, "epoch_f": 2, "iter_p": 5, "iter_f": 5, "n_hid": 100}
QUICK_BASELINE_OPTIONS: dict[str, dict] = {"biases": {"sweeps": 3}, "biased-mf": {"epochs": 3, "regs": (0.1,)}}
METRICS = ("rmse", "mae", "ndcg")
CURVE_KEYS = ("epoch", "stage", "train_rmse", "val_rmse", "test_rmse")


def benchmark_split(data: RatingMatrix, val_frac: float, seed: int) -> RatingMatrix:
    """The split every model of one seed shares: ``val_frac`` of the training ratings held out."""
    return data.with_validation(val_frac, seed=seed)


def benchmark_params(dataset: str | None, overrides: dict | None = None, quick: bool = False) -> dict:
    """GLocal-K hyperparameters: the dataset's preset (if it has one), then --quick, then overrides."""
    params = dict(PRESETS.get(dataset or "", {}))
    if quick:
        params.update(QUICK_PARAMS)
    params.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return params


def _summary_of(rec: dict) -> dict:
    out = {"epoch": rec["epoch"]}
    if "val_rmse" in rec:
        out["val_rmse"] = rec["val_rmse"]
    if "test_rmse" in rec:
        out.update(rmse=rec["test_rmse"], mae=rec["test_mae"], ndcg=rec["test_ndcg"])
    return out


def run_baseline(name: str, split: RatingMatrix, seed: int, device: str = "cpu",
                 options: dict | None = None) -> tuple[dict, np.ndarray | None]:
    """Fit one baseline; (run record, clipped test predictions of its selected state)."""
    t0 = time.perf_counter()
    model = make_baseline(name, seed=seed, device=device, **(options or {}))
    history = model.fit(split)
    wall = time.perf_counter() - t0
    preds = None
    if split.test is not None and split.test.nnz:
        items, users, _ = entries(split.test)
        preds = model.predict(items, users)
    run = {"model": name, "seed": seed, "wall_time_s": wall, "epochs_run": len(history),
           "val_selected": _summary_of(model.selected), "final": _summary_of(history[-1]), "best": None,
           "info": _jsonable(model.info), "history": history}
    return run, preds


def run_glocalk(variant: str, split: RatingMatrix, params: dict, seed: int, device: str = "cpu",
                log_path: str | Path | None = None, on_epoch: Callable[[dict], None] | None = None,
                pretrain_out: dict | None = None, checkpoint_dir: str | Path | None = None,
                resume: bool = False) -> tuple[dict, np.ndarray | None]:
    """Train one GLocal-K family member with ``glocalk.train.Trainer``.

    Returns (run record, clipped test predictions of the validation-selected epoch's weights).
    With ``pretrain_out`` (a dict, filled in): also the ``glocalk-pretrain`` run derived from this
    run's pre-training epochs, under ``"run"`` and ``"preds"``. It is the same computation as a
    separate ``epoch_f = 0`` run of the same seed (same initialisation, split and stage-1 updates),
    selected on validation among the pre-training epochs, without paying for it twice.

    ``checkpoint_dir``: the trainer's per-epoch state; with ``resume`` a state found there is
    continued (``Trainer.run`` checks that its configuration and data match). A run restored past
    its pre-training has no pre-training weights left: its derived ``glocalk-pretrain`` run then
    carries metrics but no test predictions (``None``; it leaves the ensembles).
    """
    model_config, train_config = split_config({**params, **GLOCALK_VARIANTS[variant], "seed": seed,
                                               "device": device})
    t0 = time.perf_counter()
    trainer = Trainer(split, model_config, train_config)
    snapshot: dict = {}

    def hook(rec: dict) -> None:
        if pretrain_out is not None and rec["stage"] == 1 and rec.get("val_rmse", math.inf) < snapshot.get(
                "val_rmse", math.inf):
            snapshot.update(val_rmse=rec["val_rmse"],
                            state={k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        if on_epoch is not None:
            on_epoch(rec)

    result = trainer.run(on_epoch=hook, log_path=log_path, checkpoint_dir=checkpoint_dir, resume=resume)
    wall = max(time.perf_counter() - t0, result.seconds)  # resumed: the restored epochs' time counts too
    has_test = "test" in trainer.splits
    stage1 = [r for r in result.history if r["stage"] == 1]
    if pretrain_out is not None and stage1:
        best, final, val_sel = summarise(stage1)
        if "state" in snapshot and snapshot["val_rmse"] == val_sel["val_rmse"]:
            trainer.model.load_state_dict(snapshot["state"])
            pretrain_out["preds"] = np.clip(trainer.predictions(1)["test"], *split.rating_scale) if has_test else None
        else:  # its selected epoch was restored from a checkpoint, not trained here: no weights
            pretrain_out["preds"] = None
        pretrain_out["run"] = {
            "model": "glocalk-pretrain", "seed": seed,
            "wall_time_s": float(sum(r["seconds"] + r["eval_seconds"] for r in stage1)),
            "epochs_run": len(stage1), "val_selected": val_sel, "final": final, "best": best,
            "info": {"path": result.path, "model_config": model_config.to_dict(),
                     "train_config": {**train_config.to_dict(), "epoch_f": 0},
                     "shared_with": variant,
                     "note": f"the pre-training epochs of this seed's {variant} run (the same computation)"},
            "history": stage1}
    preds = None
    if has_test:
        if result.selected_state is not None:
            trainer.model.load_state_dict(result.selected_state)
            stage = result.selected_stage
        else:
            stage = result.history[-1]["stage"]
        preds = np.clip(trainer.predictions(stage)["test"], *split.rating_scale)
    run = {"model": variant, "seed": seed, "wall_time_s": wall, "epochs_run": len(result.history),
           "val_selected": result.val_selected, "final": result.final, "best": result.best,
           "info": {"path": result.path, "model_config": model_config.to_dict(),
                    "train_config": train_config.to_dict()},
           "history": result.history}
    return run, preds


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def aggregate_runs(runs: list[dict], models: list[str]) -> dict[str, dict]:
    """Per model: mean and std over seeds of the val-selected test metrics, the paper protocol's, wall time."""
    out: dict[str, dict] = {}
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        if not mine:
            continue
        entry: dict = {"n_seeds": len(mine), "seeds": [r["seed"] for r in mine], "mean": {}, "std": {}}
        for protocol in ("val_selected", "best"):
            recs = [r.get(protocol) for r in mine]
            if not all(recs):
                continue
            for key in (*METRICS, "val_rmse", "epoch"):
                if all(key in rec for rec in recs):
                    name = key if protocol == "val_selected" else f"best_{key}"
                    entry["mean"][name], entry["std"][name] = _mean_std([rec[key] for rec in recs])
        entry["mean"]["wall_time_s"], entry["std"]["wall_time_s"] = _mean_std([r["wall_time_s"] for r in mine])
        entry["mean"]["epochs_run"], entry["std"]["epochs_run"] = _mean_std([r["epochs_run"] for r in mine])
        out[model] = entry
    return out


def _dataset_key(data: RatingMatrix, dataset: str | None) -> str | None:
    key = (dataset or data.name or "").lower()
    return key if key in PRESETS or key in PAPER_RESULTS else None


def run_benchmark(data: RatingMatrix, models: list[str], seeds: list[int], val_frac: float = 0.05,
                  out_dir: str | Path = "runs/benchmark", params_overrides: dict | None = None, *,
                  dataset: str | None = None, ensemble: bool = False, baseline_options: dict | None = None,
                  device: str = "cpu", quick: bool = False, resume: bool = False, plots: bool = True,
                  share_pretraining: bool = True, from_train: str | Path | None = None, train: bool = True,
                  on_epoch: Callable[[str, int, dict], None] | None = None,
                  on_run: Callable[[dict], None] | None = None, command: list[str] | None = None) -> dict:
    """Train every model on every seed's shared split; write results.json, table.md and the plots.

    Args:
        data: train / test ratings (``data.val`` is replaced by each seed's validation split).
        models: names from ``MODELS``.
        seeds: one split and one training run per model per seed.
        val_frac: fraction of the training ratings held out for selection.
        out_dir: output folder.
        params_overrides: GLocal-K hyperparameters over the dataset's preset (``patience``,
            ``threads``, ``optimizer``, ``path`` are accepted too).
        dataset: preset / paper-results key (default: ``data.name``).
        ensemble: also evaluate the mean of the seeds' test predictions for each stochastic model.
        baseline_options: per-baseline constructor options, e.g. ``{"biased-mf": {"factors": 32}}``.
        device: torch device for the GLocal-K family and biased MF.
        quick: a smoke run (``QUICK_PARAMS``, ``QUICK_BASELINE_OPTIONS``).
        resume: reuse the finished (model, seed) runs of a previous results.json in ``out_dir``
            (TrainingError if it was made with other data or another configuration).
        plots: write curves.png and bars.png.
        share_pretraining: when both ``glocalk`` and ``glocalk-pretrain`` run, take the latter from
            the former's pre-training epochs (the same computation; see ``run_glocalk``) instead
            of training it again. Its wall time is then the sum of those epochs' times.
        from_train: the output folder of a ``glocalk train --val-frac VAL_FRAC --seed ...`` run with
            the same data and hyperparameters: the ``glocalk`` run of each seed it holds is continued
            from its training state (``seed-N/state``, copied, never modified) instead of being
            trained again, so a finished one costs only its evaluation. ``glocalk train --val-frac
            F --seed N`` holds out the very split that this benchmark's seed N does; the trainer
            refuses a state whose configuration or training data differ.
        train: False: train nothing; tabulate and plot the finished runs of ``out_dir``'s
            results.json (implies ``resume``); (model, seed) pairs without a finished run are left
            out, and the table says which seeds each row averages.
        on_epoch: called with (model, seed, epoch record) after every GLocal-K epoch.
        on_run: called with each finished run record.
        command: the command line to record.

    Returns the content of results.json.
    """
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise KeyError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if data.test is None or not data.test.nnz:
        raise ValueError("the benchmark needs a test split")
    if not seeds:
        raise ValueError("the benchmark needs at least one seed")
    models, seeds = list(dict.fromkeys(models)), list(dict.fromkeys(seeds))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = _dataset_key(data, dataset)
    params = benchmark_params(key, params_overrides, quick)
    split_config(params)  # fail on unknown hyperparameters before any training
    options = {name: dict(QUICK_BASELINE_OPTIONS.get(name, {})) if quick else {} for name in BASELINES}
    for name, opts in (baseline_options or {}).items():
        if name not in BASELINES:
            raise KeyError(f"options for unknown baseline {name!r}")
        options[name].update(opts)
    config = {"dataset": key or data.name, "fingerprint": data.fingerprint(), "val_frac": val_frac,
              "params": params, "variants": GLOCALK_VARIANTS, "baseline_options": _jsonable(options),
              "quick": quick, "device": device}
    header = {
        **config, "models": models, "seeds": seeds, "ensemble": ensemble,
        "data": {"name": data.name, "n_users": data.n_users, "n_items": data.n_items,
                 "n_train": int(data.train.nnz), "n_test": int(data.test.nnz),
                 "rating_scale": list(data.rating_scale)},
        "paper": PAPER_RESULTS.get(key or ""), "versions": versions(),
        "device_description": device_description(device, params.get("threads")),
        "command": command if command is not None else sys.argv,
    }
    previous = _previous_runs(out_dir, config) if resume or not train else {}
    if not train and not previous:
        raise FileNotFoundError(f"nothing to tabulate: no finished runs in {out_dir / 'results.json'}")
    kept = [r for (m, s), r in previous.items() if m not in models or s not in seeds]
    if from_train is not None and not Path(from_train).is_dir():
        raise FileNotFoundError(f"--from-train: no such folder {from_train}")
    runs: list[dict] = []
    preds: dict[tuple[str, int], np.ndarray] = {}
    splits_info = []
    t0 = time.perf_counter()

    def write(complete: bool) -> dict:
        # Tabulating only: the total is that of the runs tabulated, not of this invocation.
        wall = time.perf_counter() - t0 if train else sum(r["wall_time_s"] for r in runs)
        results = {**header, "complete": complete, "wall_time_s": wall,
                   "splits": splits_info, "summary": aggregate_runs(runs, models)}
        if ensemble:
            results["ensembles"] = {}
            for model in models:
                member_seeds = [s for s in seeds if preds.get((model, s)) is not None]
                if _is_stochastic(model) and len(member_seeds) > 1:
                    results["ensembles"][model] = {
                        **ensemble_metrics(data, [preds[(model, s)] for s in member_seeds]), "seeds": member_seeds}
        # Finished runs of other models or seeds in the folder stay in results.json (an invocation on
        # a subset never drops them); the table and plots use only this invocation's models and seeds.
        results["runs"] = runs + kept
        write_json_atomic(out_dir / "results.json", _jsonable(results))
        return results

    share = share_pretraining and "glocalk" in models and "glocalk-pretrain" in models
    order = list(models)
    if share:  # glocalk-pretrain comes out of the glocalk run: train that first
        order.remove("glocalk-pretrain")
        order.insert(order.index("glocalk") + 1, "glocalk-pretrain")
    for seed in seeds:
        split = benchmark_split(data, val_frac, seed)
        splits_info.append({"seed": seed, "n_train": int(split.train.nnz), "n_val": int(split.val.nnz),
                            "train_fingerprint": split.fingerprint()})
        derived: dict = {}
        for model in order:
            pred_path = out_dir / "predictions" / f"{model}-seed-{seed}.npy"
            log_path = out_dir / "runs" / model / f"seed-{seed}.jsonl"
            done = previous.get((model, seed))
            if done is not None and (pred_path.exists() or done.get("predictions") is False):
                run = done
                p = np.load(pred_path) if pred_path.exists() else None
            elif not train:
                continue
            else:
                if model in derived:
                    run, p = derived.pop(model)
                elif model in GLOCALK_VARIANTS:
                    cb = None if on_epoch is None else (lambda rec, m=model, s=seed: on_epoch(m, s, rec))
                    pretrain_out = {} if share and model == "glocalk" and (
                        ("glocalk-pretrain", seed) not in previous) else None
                    state_dir = out_dir / "state" / f"{model}-seed-{seed}"
                    imported = _import_train_state(from_train, model, seed, state_dir)
                    run, p = run_glocalk(model, split, params, seed, device, log_path, cb, pretrain_out,
                                         checkpoint_dir=state_dir, resume=resume or imported)
                    if imported:
                        run["info"]["continued_from"] = str(Path(from_train) / f"seed-{seed}" / "state")
                    _remove_state(state_dir)  # finished: results and predictions are kept
                    if pretrain_out:
                        derived["glocalk-pretrain"] = (pretrain_out["run"], pretrain_out["preds"])
                else:
                    run, p = run_baseline(model, split, seed, device, options[model])
                if model not in GLOCALK_VARIANTS or run["info"].get("shared_with"):
                    log_path.parent.mkdir(parents=True, exist_ok=True)
                    log_path.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in run["history"]))
                run["predictions"] = p is not None
                if p is not None:
                    pred_path.parent.mkdir(parents=True, exist_ok=True)
                    np.save(pred_path, p)
            runs.append(run)
            runs.sort(key=lambda r: (seeds.index(r["seed"]), models.index(r["model"])))
            preds[(model, seed)] = p
            write(complete=False)  # after every run, so an interrupted benchmark keeps what it finished
            if on_run is not None:
                on_run(run)
    results = write(complete=True)
    (out_dir / "table.md").write_text(markdown_table(results))
    if plots:
        plot_curves(results, out_dir / "curves.png")
        plot_bars(results, out_dir / "bars.png")
    return results


def _import_train_state(from_train: str | Path | None, model: str, seed: int, state_dir: Path) -> bool:
    """Copy a ``glocalk train`` run's training state of ``seed`` to ``state_dir``; True if there was one."""
    if from_train is None or model != "glocalk" or state_dir.exists():
        return False
    source = Path(from_train) / f"seed-{seed}" / "state"
    if not source.is_dir() or not any(d.is_dir() for d in (source / "last", source / ".last.old")):
        return False
    shutil.copytree(source, state_dir)
    return True


def _remove_state(state_dir: Path) -> None:
    """Delete a finished run's training state, and the ``state`` folder once it is empty."""
    shutil.rmtree(state_dir, ignore_errors=True)
    if state_dir.parent.is_dir() and not any(state_dir.parent.iterdir()):
        state_dir.parent.rmdir()


def _is_stochastic(model: str) -> bool:
    return model in GLOCALK_VARIANTS or BASELINES[model].stochastic


def _previous_runs(out_dir: Path, config: dict) -> dict[tuple[str, int], dict]:
    """The finished runs of an earlier benchmark in ``out_dir``, which must have the same configuration."""
    path = out_dir / "results.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())

    def comparable(key: str, value):
        value = _jsonable(value)
        if key == "params" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "threads"}  # threads never change results
        return value

    for key, value in config.items():
        if comparable(key, old.get(key)) != comparable(key, value):
            raise TrainingError(f"cannot resume the benchmark in {out_dir}: its {key} differs from this run's "
                                f"({old.get(key)} vs {value}); use the same data and options, or a new --out")
    return {(r["model"], r["seed"]): r for r in old.get("runs", [])}


# -- reports ---------------------------------------------------------------------------


def _pm(entry: dict, key: str, digits: int = 4) -> str:
    if key not in entry["mean"]:
        return "–"
    mean, std = entry["mean"][key], entry["std"][key]
    if not np.isfinite(mean):
        return "–"
    if entry["n_seeds"] == 1:
        return f"{mean:.0f}" if key == "epoch" else f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(results: dict) -> str:
    """The benchmark's Markdown report: one row per model, ensembles and the paper's numbers."""
    seeds = results["seeds"]
    lines = [
        f"## {results['dataset']}: {len(results['models'])} models, {len(seeds)} seed(s) {seeds}",
        "",
        f"Test metrics at the epoch with the lowest validation RMSE (validation: {results['val_frac']:g} "
        "of the training ratings, drawn per seed and shared by all models), mean ± std over seeds."
        + (" **Quick smoke run: few epochs, small network; the numbers mean nothing.**"
           if results.get("quick") else ""),
        "",
        "| model | RMSE | MAE | NDCG | RMSE, paper protocol † | selected epoch | wall time (s) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in results["models"]:
        entry = results["summary"].get(model)
        if entry is None:
            continue
        lines.append(f"| {LABELS[model]} | {_pm(entry, 'rmse')} | {_pm(entry, 'mae')} | {_pm(entry, 'ndcg')} | "
                     f"{_pm(entry, 'best_rmse')} | {_pm(entry, 'epoch', 1)} | {_pm(entry, 'wall_time_s', 1)} | "
                     f"{', '.join(str(s) for s in entry['seeds'])} |")
    for model, ens in (results.get("ensembles") or {}).items():
        wall = sum(r["wall_time_s"] for r in results["runs"]
                   if r["model"] == model and r["seed"] in ens.get("seeds", results["seeds"]))
        lines.append(f"| {LABELS[model]}, ensemble of {ens['n_models']} seeds | {ens['rmse']:.4f} | "
                     f"{ens['mae']:.4f} | {ens['ndcg']:.4f} | – | – | {wall:.1f} | "
                     f"{', '.join(str(s) for s in ens.get('seeds', []))} |")
    paper = results.get("paper")
    if paper:
        lines.append(f"| *GLocal-K as published (Han et al. 2021, Table 2; best test epoch)* | {paper['rmse']:.4f} | "
                     f"{paper['mae']:.4f} | {paper['ndcg']:.4f} | {paper['rmse']:.4f} | – | – | – |")
    lines += ["", "† The paper's protocol: the best test RMSE over the fine-tuning epochs (over the pre-training "
              "epochs for models without fine-tuning), GLocal-K family only. It chooses the epoch on the test set, "
              "so it is optimistic and not an honest estimate; it is what the paper reports."]
    lines += ["", f"Hyperparameters of the GLocal-K family: `{json.dumps(results['params'], sort_keys=True)}`; "
              f"ablations: `{json.dumps(results['variants'])}`. Device: {results['device_description']}. "
              f"Total wall time {results['wall_time_s']:.0f} s.", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: dict, path: str | Path) -> None:
    """Train / validation / test RMSE per epoch, one panel per model, the first seed's runs."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    seed = results["seeds"][0]
    runs = [r for m in results["models"] for r in results["runs"] if r["model"] == m and r["seed"] == seed]
    if not runs:
        return
    ncols = min(4, len(runs))
    nrows = -(-len(runs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    for ax, run in zip(axes.flat, runs, strict=False):
        hist = run["history"]
        epochs = [r["epoch"] for r in hist]
        style = {"marker": "o", "markersize": 3} if len(hist) < 3 else {}
        for key, label in (("train_rmse", "train"), ("val_rmse", "validation"), ("test_rmse", "test")):
            if all(key in r for r in hist):
                ax.plot(epochs, [r[key] for r in hist], label=label, **style)
        sel = run.get("val_selected") or {}
        if "epoch" in sel:
            ax.axvline(sel["epoch"], color="grey", linestyle=":", linewidth=1, label="selected (val)")
        boundary = [r["epoch"] for r in hist if r.get("stage") == 2]
        if boundary:
            ax.axvline(boundary[0] - 0.5, color="black", linestyle="--", linewidth=0.8, label="fine-tuning starts")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.set_title(LABELS[run["model"]], fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("RMSE")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.suptitle(f"{results['dataset']}: RMSE per epoch (seed {seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(results: dict, path: str | Path) -> None:
    """Validation-selected test RMSE per model (mean, std error bars), ensembles, the paper's figure."""
    plt = _pyplot()
    names, means, stds, colors = [], [], [], []
    for model in results["models"]:
        entry = results["summary"].get(model)
        if entry and "rmse" in entry["mean"]:
            names.append(LABELS[model])
            means.append(entry["mean"]["rmse"])
            stds.append(entry["std"]["rmse"])
            colors.append("tab:blue" if model in GLOCALK_VARIANTS else "tab:grey")
    for model, ens in (results.get("ensembles") or {}).items():
        names.append(f"{LABELS[model]}, ensemble")
        means.append(ens["rmse"])
        stds.append(0.0)
        colors.append("tab:green")
    if not names:
        return
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, capsize=4, color=colors)
    for xi, m in zip(x, means, strict=True):
        ax.text(xi, m, f"{m:.4f}", ha="center", va="bottom", fontsize=7)
    paper = results.get("paper")
    values = list(means) + ([paper["rmse"]] if paper else [])
    if paper:
        ax.axhline(paper["rmse"], color="tab:red", linestyle="--", linewidth=1, label="paper (best test epoch)")
        ax.legend(fontsize=8)
    lo, hi = min(values), max(m + s for m, s in zip(means, stds, strict=True))
    pad = 0.1 * (hi - lo) + 0.01
    ax.set_ylim(max(0.0, lo - 3 * pad), hi + pad)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test RMSE (validation-selected epoch)")
    ax.set_title(f"{results['dataset']}: mean ± std over seeds {results['seeds']}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
