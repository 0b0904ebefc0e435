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
``predictions/MODEL-seed-N.npy`` (each run's test predictions, CSR order). While a GLocal-K
run is unfinished its resume state lives in ``state/MODEL-seed-N`` (``glocalk.protocol``'s
layout); it is removed once the run is recorded in results.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from glocalk.baselines import BASELINES, entries, make_baseline
from glocalk.compare.report import markdown_table, plot_bars, plot_curves
from glocalk.data.matrix import RatingMatrix
from glocalk.errors import ConfigError, DataError, TrainingError
from glocalk.presets import GLOCALK_VARIANTS, PAPER_RESULTS, PRESETS, split_config
from glocalk.protocol import RunOptions, ensemble_metrics, options_or_fields, saved_state, train_run
from glocalk.store import device_description, json_default, versions, write_json_atomic
from glocalk.train import summarise

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


def run_glocalk(variant: str, split: RatingMatrix, params: dict, seed: int,
                options: RunOptions | None = None, device: str = "cpu"
                ) -> tuple[dict, np.ndarray | None, tuple[dict, np.ndarray | None] | None]:
    """Train one GLocal-K family member with ``glocalk.protocol.train_run``.

    Returns (run record, clipped test predictions of the handed-over model, derived). ``options``:
    the runner's state folder, epoch log, resume and callback (``predict_test`` is always on). With
    ``options.select_pretraining``, ``derived`` is the ``glocalk-pretrain`` run (record, predictions)
    read off this run's pre-training epochs: the same computation as a separate ``epoch_f = 0`` run
    of the same seed (same initialisation, split and stage-1 updates), selected on validation among
    the pre-training epochs, without paying for it twice. The runner's state keeps those weights
    across an interrupt; a run continued from a ``glocalk train`` state (``--from-train``) has none:
    its derived run then carries metrics but no predictions (None; it leaves the ensembles).
    Without ``select_pretraining`` ``derived`` is None.
    """
    model_config, train_config = split_config({**params, **GLOCALK_VARIANTS[variant], "seed": seed,
                                               "device": device})
    options = replace(options or RunOptions(), predict_test=True)
    record = train_run(split, model_config, train_config, options)
    wall = max(record.wall_time_s, record.seconds)  # resumed: the restored epochs' time counts too
    info = {"path": record.path, "model_config": model_config.to_dict(), "train_config": train_config.to_dict()}
    run = {"model": variant, "seed": seed, "wall_time_s": wall, "epochs_run": len(record.history),
           "val_selected": record.val_selected, "final": record.final, "best": record.best,
           "info": info, "history": record.history}
    stage1 = [r for r in record.history if r["stage"] == 1]
    derived = None
    if options.select_pretraining and stage1:
        best, final, val_sel = summarise(stage1)
        pre = {"model": "glocalk-pretrain", "seed": seed,
               "wall_time_s": float(sum(r["seconds"] + r["eval_seconds"] for r in stage1)),
               "epochs_run": len(stage1), "val_selected": val_sel, "final": final, "best": best,
               "info": {**info, "train_config": {**info["train_config"], "epoch_f": 0}, "shared_with": variant,
                        "note": f"the pre-training epochs of this seed's {variant} run (the same computation)"},
               "history": stage1}
        derived = (pre, _clipped(record.pretraining and record.pretraining.test_predictions, split))
    return run, _clipped(record.model.test_predictions, split), derived


def _clipped(predictions: np.ndarray | None, split: RatingMatrix) -> np.ndarray | None:
    return None if predictions is None else np.clip(predictions, *split.rating_scale)


def _jsonable(obj: object) -> object:
    """``obj`` as it reads back from JSON (tuples as lists, NumPy scalars as numbers), so that a
    resumed benchmark compares its options with the ones in results.json; the one JSON encoder."""
    return json.loads(json.dumps(obj, default=json_default))


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


@dataclass
class BenchmarkConfig:
    """What ``run_benchmark`` trains, how, and where its outputs go."""

    models: list[str]
    """Names from ``MODELS``."""
    seeds: list[int]
    """One split and one training run per model per seed."""
    val_frac: float = 0.05
    """Fraction of the training ratings held out for selection."""
    out_dir: str | Path = "runs/benchmark"
    params_overrides: dict | None = None
    """GLocal-K hyperparameters over the dataset's preset (``patience``, ``threads``, ``optimizer``,
    ``path`` are accepted too)."""
    dataset: str | None = None
    """Preset / paper-results key (default: ``data.name``)."""
    ensemble: bool = False
    """Also evaluate the mean of the seeds' test predictions for each stochastic model."""
    baseline_options: dict | None = None
    """Per-baseline constructor options, e.g. ``{"biased-mf": {"factors": 32}}``."""
    device: str = "cpu"
    """Torch device for the GLocal-K family and biased MF."""
    quick: bool = False
    """A smoke run (``QUICK_PARAMS``, ``QUICK_BASELINE_OPTIONS``)."""
    resume: bool = False
    """Reuse the finished (model, seed) runs of a previous results.json in ``out_dir`` and continue its
    interrupted GLocal-K runs (TrainingError if it was made with other data or another configuration)."""
    plots: bool = True
    """Write curves.png and bars.png."""
    share_pretraining: bool = True
    """When both ``glocalk`` and ``glocalk-pretrain`` run, take the latter from the former's pre-training
    epochs (the same computation; see ``run_glocalk``); its wall time is the sum of those epochs'."""
    from_train: str | Path | None = None
    """The output folder of a ``glocalk train --val-frac VAL_FRAC --seed ...`` run with the same data and
    hyperparameters: the ``glocalk`` run of each seed it holds is continued from its training state
    (``seed-N/state``, copied, never modified), so a finished one costs only its evaluation. ``glocalk
    train --val-frac F --seed N`` holds out the very split that this benchmark's seed N does; the runner
    refuses a state whose configuration or training data differ."""
    train: bool = True
    """False: train nothing; tabulate and plot the finished runs of ``out_dir``'s results.json (implies
    ``resume``); (model, seed) pairs without a finished run are left out."""
    on_epoch: Callable[[str, int, dict], None] | None = None
    """Called with (model, seed, epoch record) after every GLocal-K epoch."""
    on_run: Callable[[dict], None] | None = None
    """Called with each finished run record."""
    command: list[str] | None = None
    """The command line to record (default ``sys.argv``)."""


def run_benchmark(data: RatingMatrix, config: BenchmarkConfig | None = None, **config_values) -> dict:
    """Train every model on every seed's shared split; write results.json, table.md and the plots.

    ``data``: train / test ratings (``data.val`` is replaced by each seed's validation split).
    ``config`` (or its fields as keywords): see ``BenchmarkConfig``. Returns the content of results.json.
    """
    bench = _Benchmark(data, options_or_fields(config, BenchmarkConfig, config_values))
    for seed in bench.seeds:
        bench.run_seed(seed)
    results = bench.write(complete=True)
    out_dir = bench.out_dir
    (out_dir / "table.md").write_text(markdown_table(results))
    if bench.config.plots:
        plot_curves(results, out_dir / "curves.png")
        plot_bars(results, out_dir / "bars.png")
    return results


class _Benchmark:
    """One benchmark invocation: its validated configuration, finished runs and outputs."""

    def __init__(self, data: RatingMatrix, config: BenchmarkConfig) -> None:
        c = self.config = config
        unknown = [m for m in c.models if m not in MODELS]
        if unknown:
            raise ConfigError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
        if data.test is None or not data.test.nnz:
            raise DataError("the benchmark needs a test split")
        if not c.seeds:
            raise ConfigError("the benchmark needs at least one seed (--seed)")
        if c.from_train is not None and not Path(c.from_train).is_dir():
            raise DataError(f"--from-train: no such folder {c.from_train}")
        self.data = data
        self.models, self.seeds = list(dict.fromkeys(c.models)), list(dict.fromkeys(c.seeds))
        key = _dataset_key(data, c.dataset)
        self.params = benchmark_params(key, c.params_overrides, c.quick)
        split_config(self.params)[1].validate()  # fail on unknown or invalid hyperparameters before any training
        self.options = _baseline_options(c)
        self.out_dir = Path(c.out_dir)
        identity = {"dataset": key or data.name, "fingerprint": data.fingerprint(), "val_frac": c.val_frac,
                    "params": self.params, "variants": GLOCALK_VARIANTS, "baseline_options": _jsonable(self.options),
                    "quick": c.quick, "device": c.device}
        self.header = {**identity, **_header_extra(data, key, self.params, self.models, self.seeds, c)}
        self.previous = _previous_runs(self.out_dir, identity) if c.resume or not c.train else {}
        if not c.train and not self.previous:
            raise DataError(f"nothing to tabulate: no finished runs in {self.out_dir / 'results.json'}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.kept = [r for (m, s), r in self.previous.items() if m not in self.models or s not in self.seeds]
        self.runs: list[dict] = []
        self.preds: dict[tuple[str, int], np.ndarray | None] = {}
        self.splits_info: list[dict] = []
        self.share = c.share_pretraining and "glocalk" in self.models and "glocalk-pretrain" in self.models
        self.order = list(self.models)
        if self.share:  # glocalk-pretrain comes out of the glocalk run: train that first
            self.order.remove("glocalk-pretrain")
            self.order.insert(self.order.index("glocalk") + 1, "glocalk-pretrain")
        self.t0 = time.perf_counter()

    def run_seed(self, seed: int) -> None:
        """Every model on this seed's split; results.json is rewritten after each run."""
        split = benchmark_split(self.data, self.config.val_frac, seed)
        self.splits_info.append({"seed": seed, "n_train": int(split.train.nnz), "n_val": int(split.val.nnz),
                                 "train_fingerprint": split.fingerprint()})
        derived: dict[str, tuple[dict, np.ndarray | None]] = {}
        for model in self.order:
            done = self._finished(model, seed)
            if done is None and not self.config.train:
                continue
            run, p = done if done is not None else self._train(model, seed, split, derived)
            self.runs.append(run)
            self.runs.sort(key=lambda r: (self.seeds.index(r["seed"]), self.models.index(r["model"])))
            self.preds[(model, seed)] = p
            self.write(complete=False)  # after every run, so an interrupted benchmark keeps what it finished
            if self.config.on_run is not None:
                self.config.on_run(run)

    def _finished(self, model: str, seed: int) -> tuple[dict, np.ndarray | None] | None:
        done = self.previous.get((model, seed))
        pred_path = self._pred_path(model, seed)
        if done is None or not (pred_path.exists() or done.get("predictions") is False):
            return None
        return done, np.load(pred_path) if pred_path.exists() else None

    def _pred_path(self, model: str, seed: int) -> Path:
        return self.out_dir / "predictions" / f"{model}-seed-{seed}.npy"

    def _train(self, model: str, seed: int, split: RatingMatrix,
               derived: dict[str, tuple[dict, np.ndarray | None]]) -> tuple[dict, np.ndarray | None]:
        log_path = self.out_dir / "runs" / model / f"seed-{seed}.jsonl"
        if model in derived:
            run, p = derived.pop(model)
        elif model in GLOCALK_VARIANTS:
            run, p = self._train_glocalk(model, seed, split, log_path, derived)
        else:
            run, p = run_baseline(model, split, seed, self.config.device, self.options[model])
        if model not in GLOCALK_VARIANTS or run["info"].get("shared_with"):
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in run["history"]))
        run["predictions"] = p is not None
        if p is not None:
            self._pred_path(model, seed).parent.mkdir(parents=True, exist_ok=True)
            np.save(self._pred_path(model, seed), p)
        return run, p

    def _train_glocalk(self, model: str, seed: int, split: RatingMatrix, log_path: Path,
                       derived: dict[str, tuple[dict, np.ndarray | None]]) -> tuple[dict, np.ndarray | None]:
        c = self.config
        on_epoch = None if c.on_epoch is None else (lambda rec: c.on_epoch(model, seed, rec))
        state_dir = self.out_dir / "state" / f"{model}-seed-{seed}"
        imported = _import_train_state(c.from_train, model, seed, state_dir)
        share = self.share and model == "glocalk" and ("glocalk-pretrain", seed) not in self.previous
        options = RunOptions(state_dir=state_dir, log_path=log_path, resume=c.resume or imported,
                             on_epoch=on_epoch, select_pretraining=share)
        run, p, pretrain = run_glocalk(model, split, self.params, seed, options, c.device)
        if imported:
            run["info"]["continued_from"] = str(Path(c.from_train) / f"seed-{seed}" / "state")
        _remove_state(state_dir)  # finished: results and predictions are kept
        if pretrain is not None:
            derived["glocalk-pretrain"] = pretrain
        return run, p

    def write(self, complete: bool) -> dict:
        """Write results.json (this invocation's runs plus the kept ones of other models or seeds)."""
        c = self.config
        # Tabulating only: the total is that of the runs tabulated, not of this invocation.
        wall = time.perf_counter() - self.t0 if c.train else sum(r["wall_time_s"] for r in self.runs)
        results = {**self.header, "complete": complete, "wall_time_s": wall,
                   "splits": self.splits_info, "summary": aggregate_runs(self.runs, self.models)}
        if c.ensemble:
            results["ensembles"] = {}
            for model in self.models:
                member_seeds = [s for s in self.seeds if self.preds.get((model, s)) is not None]
                if _is_stochastic(model) and len(member_seeds) > 1:
                    results["ensembles"][model] = {
                        **ensemble_metrics(self.data, [self.preds[(model, s)] for s in member_seeds]),
                        "seeds": member_seeds}
        # Finished runs of other models or seeds in the folder stay in results.json (an invocation on
        # a subset never drops them); the table and plots use only this invocation's models and seeds.
        results["runs"] = self.runs + self.kept
        write_json_atomic(self.out_dir / "results.json", _jsonable(results))
        return results


def _baseline_options(c: BenchmarkConfig) -> dict[str, dict]:
    options = {name: dict(QUICK_BASELINE_OPTIONS.get(name, {})) if c.quick else {} for name in BASELINES}
    for name, opts in (c.baseline_options or {}).items():
        if name not in BASELINES:
            raise ConfigError(f"options for unknown baseline {name!r}")
        options[name].update(opts)
    return options


def _header_extra(data: RatingMatrix, key: str | None, params: dict, models: list[str], seeds: list[int],
                  c: BenchmarkConfig) -> dict:
    return {"models": models, "seeds": seeds, "ensemble": c.ensemble,
            "data": {"name": data.name, "n_users": data.n_users, "n_items": data.n_items,
                     "n_train": int(data.train.nnz), "n_test": int(data.test.nnz),
                     "rating_scale": list(data.rating_scale)},
            **data.rating_map.json_entry(),  # the scale mapped onto the model's 1..5
            "paper": PAPER_RESULTS.get(key or ""), "versions": versions(),
            "device_description": device_description(c.device, params.get("threads")),
            "command": c.command if c.command is not None else sys.argv}


def _import_train_state(from_train: str | Path | None, model: str, seed: int, state_dir: Path) -> bool:
    """Copy a ``glocalk train`` run's training state of ``seed`` to ``state_dir``; True if there was one."""
    if from_train is None or model != "glocalk" or state_dir.exists():
        return False
    source = Path(from_train) / f"seed-{seed}" / "state"
    if saved_state(source) is None:
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
