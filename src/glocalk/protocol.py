"""THE runner: one (configuration, seed) run with resume state, epoch log and handed-over model;
several seeds with mean ± std, ensembles and summary.json. ``glocalk train``, ``fit``, ``benchmark``
and ``tune`` all train through ``train_run``; nothing else builds a ``Trainer``.

The one on-disk layout of a run's resume state (``RunOptions.state_dir``)::

    STATE_DIR/last/            written after every epoch by store.save_dir (atomic: a crash leaves the
      weights.safetensors      previous epoch's folder, or ``.last.old`` between its two renames)
        the model's weights, ``selected.*``: the weights of the val-selected epoch so far, and with
        ``select_pretraining`` ``pretraining.*``: those of the val-selected pre-training epoch
      model.json
        kind "glocalk-training-state", epoch, history, path, model_config, train_config,
        fingerprint, val_fingerprint, [pretraining_val_rmse], and finished: true once the run has ended

A resumed run continues after the last saved epoch; a finished one is not re-entered (its record
is rebuilt from the state). ``glocalk train`` states of earlier versions (the same folder without
``finished`` or ``val_fingerprint``) resume too.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from glocalk.data.matrix import RatingMatrix
from glocalk.distributed import ShardedTrainer, current_group
from glocalk.errors import ConfigError, TrainingError
from glocalk.metrics import evaluate
from glocalk.model import GLocalKConfig
from glocalk.model_dir import Member
from glocalk.presets import split_config
from glocalk.store import device_description, load_dir, save_dir, versions, write_json_atomic
from glocalk.train import SELECTED, TrainConfig, Trainer, check_identity, summarise, training_identity

PROTOCOLS = ("best", "final", "val_selected")
METRICS = ("rmse", "mae", "ndcg")
LAST = "last"
PRE = "pretraining."  # tensors of the val-selected pre-training epoch (with select_pretraining)


@dataclass
class RunOptions:
    """How one run is driven and where its files go; the defaults train in memory and write nothing."""

    state_dir: Path | None = None
    """Resume state (the layout above); None: none is kept."""
    log_path: Path | None = None
    """The per-epoch log (JSON lines), rewritten from the restored history on resume."""
    resume: bool = False
    """Continue the state in ``state_dir`` (False: a state found there is discarded)."""
    on_epoch: Callable[[dict], None] | None = None
    """Called with each newly trained epoch's record, after the log and the state are written."""
    predict_test: bool = False
    """Also return the handed-over model's (unclipped) test predictions, CSR order of ``data.test``."""
    select_pretraining: bool = False
    """Also hand over the pre-training epoch with the lowest validation RMSE (see ``RunRecord.pretraining``)."""


@dataclass
class HandedOver:
    """A model a run hands over: its weights (CPU), stage and epoch, and its test predictions if asked."""

    state: dict[str, torch.Tensor]
    stage: int
    epoch: int
    test_predictions: np.ndarray | None = None


@dataclass
class RunRecord:
    """What one run produced."""

    history: list[dict]
    best: dict | None
    final: dict | None
    val_selected: dict | None
    model: HandedOver
    """The val-selected epoch's model, else the last epoch's."""
    path: str
    seconds: float
    """Training and evaluation time of all its epochs (restored ones included)."""
    wall_time_s: float
    """This call's wall time."""
    pretraining: HandedOver | None = None
    """With ``select_pretraining``: the val-selected pre-training epoch (None if the state it was resumed
    from did not keep it, e.g. a ``glocalk train`` state)."""
    finished_before: bool = False
    """True if the state was already finished: nothing was trained or restored into a trainer."""


def saved_state(state_dir: str | Path) -> Path | None:
    """The folder holding the run state in ``state_dir`` (``last``, or ``.last.old`` after a crash
    between save_dir's two renames), or None."""
    state_dir = Path(state_dir)
    return next((p for p in (state_dir / LAST, state_dir / f".{LAST}.old") if p.is_dir()), None)


def train_run(data: RatingMatrix, model_config: GLocalKConfig, train_config: TrainConfig,
              options: RunOptions | None = None) -> RunRecord:
    """Train one run of GLocal-K on ``data``; its ``val`` split, if any, selects the epoch handed over.

    ``options`` (default: in memory, no files): the state folder (the layout above), the epoch log,
    ``resume``, a per-epoch callback, and whether to predict the test split. A resumed run continues
    after its last saved epoch and equals an uninterrupted one; a finished state is not re-entered.
    Raises ConfigError for invalid options, CheckpointError for a state that is corrupt or was made
    with other data or options ("cannot resume from ..."), TrainingError for a diverged run (the
    message names the epoch log, which keeps the epochs before it).
    """
    o = options or RunOptions()
    t0 = time.perf_counter()
    train_config.validate()
    found = saved_state(o.state_dir) if o.state_dir is not None else None
    group = current_group()  # sharded over processes: every rank runs this, rank 0 alone writes
    if group.sharded and (o.predict_test or o.select_pretraining):
        raise ConfigError("ensembles and pre-training selection are not available in a run sharded over "
                          f"{group.world} processes yet; train with one process")
    if found is not None and not o.resume:
        if group.writer:
            _discard(Path(o.state_dir))  # a fresh run must not pick up an old state
        found = None
    saved = load_dir(found) if found is not None else None
    if saved is not None and saved[1].get("finished"):
        check_identity(saved[1], training_identity(data, model_config, train_config), str(found))
        _write_log(o.log_path, saved[1]["history"])
        return _finished_record(data, model_config, train_config, saved, o, t0)
    trainer = ShardedTrainer(data, model_config, train_config, group) if group.sharded else Trainer(
        data, model_config, train_config)
    pretraining = _PretrainingSnapshot() if o.select_pretraining else None
    if saved is not None:
        tensors, meta = saved
        trainer.restore({k: v for k, v in tensors.items() if not k.startswith(PRE)}, meta, source=str(found))
        if pretraining is not None:
            pretraining.restore(tensors, meta)
    return _train(trainer, o, t0, pretraining)


def _train(trainer: Trainer, o: RunOptions, t0: float, pretraining: _PretrainingSnapshot | None) -> RunRecord:
    log = _open_log(o.log_path, trainer.history) if current_group().writer else None

    def after_epoch(rec: dict) -> None:
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if pretraining is not None:
            pretraining.see(rec, trainer.model)
        if o.state_dir is not None:
            _save(trainer, o.state_dir, False, pretraining)
        if o.on_epoch is not None:
            o.on_epoch(rec)

    try:
        result = trainer.run(after_epoch)
    except TrainingError as e:
        if log is None:
            raise
        raise TrainingError(f"{e} (epochs up to {len(trainer.history)} are logged in {o.log_path})") from e
    finally:
        if log is not None:
            log.close()
    if o.state_dir is not None:
        _save(trainer, o.state_dir, True, pretraining)
    handed = _handed_over(result.history, result.val_selected, result.selected_state or result.model.state_dict())
    record = RunRecord(history=list(result.history), best=result.best, final=result.final,
                       val_selected=result.val_selected, model=handed, path=result.path, seconds=result.seconds,
                       wall_time_s=0.0, pretraining=pretraining and pretraining.handed_over(result.history))
    return _with_predictions(record, trainer, o, t0)


def _finished_record(data: RatingMatrix, model_config: GLocalKConfig, train_config: TrainConfig,
                     saved: tuple[dict, dict], o: RunOptions, t0: float) -> RunRecord:
    tensors, meta = saved
    history = list(meta["history"])
    best, final, val_sel = summarise(history)
    selected = {k[len(SELECTED):]: v for k, v in tensors.items() if k.startswith(SELECTED)}
    weights = selected or {k: v for k, v in tensors.items() if not k.startswith((SELECTED, PRE))}
    pretraining = None
    if o.select_pretraining:
        pretraining = _PretrainingSnapshot()
        pretraining.restore(tensors, meta)
    record = RunRecord(history=history, best=best, final=final, val_selected=val_sel,
                       model=_handed_over(history, val_sel, weights), path=meta.get("path", ""),
                       seconds=sum(r["seconds"] + r["eval_seconds"] for r in history), wall_time_s=0.0,
                       pretraining=pretraining and pretraining.handed_over(history), finished_before=True)
    trainer = Trainer(data, model_config, train_config) if o.predict_test else None
    return _with_predictions(record, trainer, o, t0)


def _with_predictions(record: RunRecord, trainer: Trainer | None, o: RunOptions, t0: float) -> RunRecord:
    """Add the handed-over models' test predictions (if asked) and the wall time."""
    if o.predict_test and trainer is not None:
        for handed in (record.model, record.pretraining):
            if handed is not None:
                handed.test_predictions = _test_predictions(trainer, handed)
    record.wall_time_s = time.perf_counter() - t0
    return record


def _handed_over(history: list[dict], val_selected: dict | None, state: dict[str, torch.Tensor]) -> HandedOver:
    chosen = history[-1] if val_selected is None else next(r for r in history if r["epoch"] == val_selected["epoch"])
    return HandedOver({k: v.detach().cpu().clone() for k, v in state.items()}, int(chosen["stage"]),
                      int(chosen["epoch"]))


def _test_predictions(trainer: Trainer, handed: HandedOver) -> np.ndarray | None:
    if "test" not in trainer.splits:
        return None
    trainer.model.load_state_dict(handed.state)
    return trainer.predictions(handed.stage)["test"]


class _PretrainingSnapshot:
    """The weights of the pre-training epoch with the lowest validation RMSE (kept in the state too)."""

    def __init__(self) -> None:
        self.val_rmse = float("inf")
        self.state: dict[str, torch.Tensor] | None = None

    def see(self, rec: dict, model: torch.nn.Module) -> None:
        if rec["stage"] == 1 and rec.get("val_rmse", float("inf")) < self.val_rmse:
            self.val_rmse = rec["val_rmse"]
            self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.state is None else {PRE + k: v for k, v in self.state.items()}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        state = {k[len(PRE):]: v for k, v in tensors.items() if k.startswith(PRE)}
        if state and "pretraining_val_rmse" in meta:
            self.state, self.val_rmse = state, float(meta["pretraining_val_rmse"])

    def handed_over(self, history: list[dict]) -> HandedOver | None:
        stage1 = [r for r in history if r["stage"] == 1]
        val_sel = summarise(stage1)[2] if stage1 else None
        if self.state is None or val_sel is None or val_sel["val_rmse"] != self.val_rmse:
            return None  # restored from a state without it (e.g. a glocalk train run): no weights
        return HandedOver(self.state, 1, int(val_sel["epoch"]))


def _save(trainer: Trainer, state_dir: Path, finished: bool, pretraining: _PretrainingSnapshot | None) -> None:
    tensors, meta = trainer.state()  # sharded: every rank takes part (it gathers), rank 0 writes
    if not current_group().writer:
        return
    if pretraining is not None and pretraining.state is not None:
        tensors = {**tensors, **pretraining.tensors()}
        meta = {**meta, "pretraining_val_rmse": pretraining.val_rmse}
    save_dir(Path(state_dir) / LAST, tensors, {**meta, "finished": finished})


def _discard(state_dir: Path) -> None:
    """Remove the run state this module wrote in ``state_dir`` (and nothing else)."""
    for name in (LAST, f".{LAST}.old"):
        if (state_dir / name).is_dir():
            shutil.rmtree(state_dir / name)


def _open_log(path: Path | None, history: list[dict]) -> IO[str] | None:
    """The epoch log, rewritten from ``history`` so it never holds epochs the restored state did not see."""
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w")  # noqa: SIM115 -- closed by the caller after the run
    f.write("".join(json.dumps(rec) + "\n" for rec in history))
    f.flush()
    return f


def _write_log(path: Path | None, history: list[dict]) -> None:
    f = _open_log(path, history)
    if f is not None:
        f.close()


def evaluate_state(data: RatingMatrix, model_config: GLocalKConfig, train_config: TrainConfig,
                   handed: HandedOver) -> dict[str, float]:
    """Metrics of handed-over weights on every split of ``data`` (as in an epoch record), without training."""
    trainer = Trainer(data, model_config, train_config)
    trainer.model.load_state_dict(handed.state)
    return trainer.evaluate(handed.stage)


def train_member(data: RatingMatrix, params: dict, seed: int, options: RunOptions | None = None) -> Member:
    """Train one seed of an estimator's ensemble with ``train_run`` (hyperparameters as flat ``params``)."""
    model_config, train_config = split_config({**params, "seed": seed})
    return member_of(train_run(data, model_config, train_config, options), seed)


def member_of(record: RunRecord, seed: int) -> Member:
    """The handed-over model of a run as a saved model's ensemble member."""
    history = [{**rec, "path": record.path} for rec in record.history]
    return Member(seed, record.model.stage, record.model.epoch, record.model.state, history)


# -- several seeds ----------------------------------------------------------------------


def options_or_fields(options: Any, cls: type, values: dict) -> Any:
    """``options`` if given, else ``cls(**values)``: the two ways to pass an options dataclass."""
    if options is None:
        return cls(**values)
    if values:
        raise TypeError(f"give either a {cls.__name__} or its fields as keywords, not both "
                        f"({', '.join(values)})")
    return options


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


def ensemble_metrics(data: RatingMatrix, predictions: list[np.ndarray], selection: str | None = None) -> dict:
    """Metrics of the mean of several models' test predictions (CSR order of ``data.test``)."""
    test = data.test.tocoo()
    mean = np.mean(predictions, axis=0)
    metrics = evaluate(mean, test.data, test.col, test.row, data.rating_scale, data.rating_map.to_model)
    out = {**metrics, "n_models": len(predictions)}
    if selection is not None:
        out["selection"] = selection
    return out


@dataclass
class ExperimentOptions:
    """Options of a multi-seed experiment (``run_experiment``)."""

    val_frac: float | None = None
    """Hold out this fraction of the training ratings per seed for epoch selection (None: no validation)."""
    device: str = "cpu"
    on_epoch: Callable[[int, dict], None] | None = None
    """Called as ``on_epoch(seed, record)`` after every trained epoch."""
    resume: bool = False
    """Continue each seed's state in ``OUT/seed-N/state``; finished seeds are not trained again."""
    command: list[str] | None = None
    """The command line to record (default ``sys.argv``)."""
    ensemble: bool = False
    """Also average the seeds' handed-over models' test predictions into an ``ensemble`` entry."""
    trained: dict[int, RunRecord] = field(default_factory=dict)
    """Runs already trained on the same split and parameters, by seed (``--preset auto``'s chosen
    candidate): used as they are, with their epoch log written, instead of training the seed again."""


def run_seed(data: RatingMatrix, params: dict, seed: int, out_dir: Path,
             options: ExperimentOptions) -> tuple[dict, RunRecord]:
    """One seed: ``out_dir/epochs.jsonl``, ``out_dir/summary.json`` and the state in ``out_dir/state``."""
    model_config, train_config = split_config({**params, "seed": seed})
    run_data = data.with_validation(options.val_frac, seed=seed) if options.val_frac else data
    callback = None if options.on_epoch is None else (lambda rec: options.on_epoch(seed, rec))
    has_test = data.test is not None and data.test.nnz > 0
    if seed in options.trained and not options.ensemble:  # an ensemble needs the run's test predictions
        record = options.trained[seed]
        if current_group().writer:
            _write_log(out_dir / "epochs.jsonl", record.history)
    else:
        record = train_run(run_data, model_config, train_config, RunOptions(
            state_dir=out_dir / "state", log_path=out_dir / "epochs.jsonl", resume=options.resume,
            on_epoch=callback, predict_test=options.ensemble and has_test))
    summary = {
        "dataset": data.name, "seed": seed, "path": record.path,
        "wall_time_s": record.wall_time_s, "train_time_s": record.seconds,
        "epochs_run": len(record.history),
        "best": record.best, "final": record.final, "val_selected": record.val_selected,
        "function_evaluations": int(sum(r["nfev"] for r in record.history)),
    }
    if current_group().writer:
        write_json_atomic(out_dir / "summary.json", summary)
    return summary, record


def run_experiment(data: RatingMatrix, params: dict, seeds: list[int], out_dir: str | Path,
                   options: ExperimentOptions | None = None, **option_values) -> dict:
    """Run every seed, write ``out_dir/summary.json`` (means, stds, per-seed runs) and return it.

    ``options`` (or its fields as keywords): see ``ExperimentOptions``. With ``ensemble`` the entry
    ``ensemble`` holds the metrics of the mean of the seeds' test predictions (each seed's
    val-selected model with a validation split, else its last epoch) and ``rmse_by_members``, the
    RMSE of the ensemble of the first k seeds, k = 1..n. summary.json is rewritten after each seed,
    so an interrupted multi-seed run keeps what it finished.
    """
    o = options_or_fields(options, ExperimentOptions, option_values)
    params = {**params, "device": o.device}
    split_config(params)[1].validate()  # bad options fail before any training, and before any output
    out_dir = Path(out_dir)
    writer = current_group().writer  # sharded over processes: rank 0 alone writes
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    header = _experiment_header(data, params, seeds, o)
    runs, predictions, growth = [], [], []
    for seed in seeds:
        seed_dir = out_dir / f"seed-{seed}"
        summary, record = run_seed(data, params, seed, seed_dir, o)
        summary["epoch_log"] = str((seed_dir / "epochs.jsonl").relative_to(out_dir))
        runs.append(summary)
        extra = {}
        if record.model.test_predictions is not None:
            predictions.append(record.model.test_predictions)
            extra["ensemble"] = ensemble_metrics(data, predictions, "val_selected" if o.val_frac else "final")
            growth.append(extra["ensemble"]["rmse"])  # how much each member adds
            extra["ensemble"]["rmse_by_members"] = list(growth)
        summary = {**header, "wall_time_s": time.perf_counter() - t0, "complete": len(runs) == len(seeds),
                   **aggregate(runs), **extra, "runs": runs}
        if writer:
            write_json_atomic(out_dir / "summary.json", summary)
    return json.loads((out_dir / "summary.json").read_text()) if writer else summary


def _experiment_header(data: RatingMatrix, params: dict, seeds: list[int], o: ExperimentOptions) -> dict:
    return {
        "dataset": data.name, "seeds": list(seeds), "hyperparameters": params, "val_frac": o.val_frac,
        "data": {"n_users": data.n_users, "n_items": data.n_items, "n_train": int(data.train.nnz),
                 "n_test": int(data.test.nnz) if data.test is not None else 0,
                 "rating_scale": list(data.rating_scale), "fingerprint": data.fingerprint()},
        **data.rating_map.json_entry(),
        "versions": versions(), "device": device_description(o.device, params.get("threads")),
        "command": o.command if o.command is not None else sys.argv,
    }

