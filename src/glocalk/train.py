"""The two-stage GLocal-K training engine: per-epoch L-BFGS, evaluation and selection, no file I/O.

A ``Trainer`` holds the model and its per-epoch history; ``Trainer.state`` exposes what a resume
needs as plain data and ``Trainer.restore`` takes it back (``glocalk.protocol`` writes it to disk).

Optimiser semantics follow the original TF code, which drove SciPy's L-BFGS-B through
``tf.contrib.opt.ScipyOptimizerInterface``: every epoch is one fresh ``minimize`` call
(history 10, at most ``iter`` iterations, SciPy's default tolerances and line search),
so curvature history is dropped between epochs. Loss and gradient come from PyTorch in
float32 and are handed to SciPy in float64, exactly as TF did (``optimizer="scipy"``, the
reference). The default, ``optimizer="lbfgsb"``, runs the same L-BFGS-B (``glocalk.optim``:
SciPy's iterates) in torch on the parameters' device, with float32 state and no host copies.
``optimizer="torch"`` uses ``torch.optim.LBFGS`` with a strong-Wolfe line search instead (keeps
everything on the GPU; same algorithm family, not bit-identical numbers).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from glocalk import denormals
from glocalk.data.matrix import RatingMatrix
from glocalk.epoch import DEFAULT_OPTIMIZER, OPTIMIZERS, lbfgs_epoch
from glocalk.errors import CheckpointError, ConfigError, TrainingError, option_name
from glocalk.inputs import TrainingInput, choose_execution, prepare_input
from glocalk.metrics import evaluate, rmse
from glocalk.model import GLocalK, GLocalKConfig
from glocalk.sparse import SparsePattern

PATHS = ("auto", "dense", "sparse")
STATE_KIND = "glocalk-training-state"
SELECTED = "selected."  # prefix of the val-selected epoch's tensors in ``Trainer.state``
OnEpoch = Callable[[dict], None]


@dataclass
class TrainConfig:
    """Optimisation schedule and execution options (defaults are ML-100K's)."""

    epoch_p: int = 30
    epoch_f: int = 60
    iter_p: int = 5
    iter_f: int = 5
    seed: int = 0
    device: str = "cpu"
    path: str = "auto"  # "dense", "sparse" or "auto" (by size and density)
    optimizer: str = DEFAULT_OPTIMIZER  # "lbfgsb" (SciPy's L-BFGS-B on the device), "scipy" (the original's) or "torch"
    patience: int | None = None  # stop fine-tuning after this many epochs without a better val RMSE
    threads: int | None = None  # torch intra-op threads (None: torch's default)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the first invalid option; returns self."""
        for name in ("epoch_p", "epoch_f", "iter_p", "iter_f", "seed"):
            value = getattr(self, name)
            if not _is_int(value) or (name != "seed" and value < 0):
                raise ConfigError(f"{option_name(name)} must be an integer >= 0, got {value!r}")
        if self.epoch_p + self.epoch_f == 0:
            raise ConfigError("nothing to train: epoch_p and epoch_f are both 0")
        for name in ("patience", "threads"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"{option_name(name)} must be an integer >= 1 (or None), got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer (--optimizer) must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.path not in PATHS:
            raise ConfigError(f"path (--path) must be one of {', '.join(PATHS)}, got {self.path!r}")
        return self


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass
class TrainResult:
    """What a run produced: the model (last epoch), the per-epoch history and the summaries."""

    model: GLocalK
    history: list[dict]
    best: dict | None  # paper protocol: best fine-tuning epoch on test, per metric
    final: dict | None  # the last epoch
    val_selected: dict | None  # the fine-tuning epoch with the lowest validation RMSE
    selected_state: dict[str, torch.Tensor] | None  # weights at the val-selected epoch
    selected_stage: int | None
    seconds: float
    path: str
    data: TrainingInput = field(repr=False, default=None)


def resolve_device(name: str) -> torch.device:
    """A torch device, with a clear error when CUDA is asked for but missing."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} requested but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise TrainingError(f"unknown device {name!r}: {e}") from e


class _Split:
    """One evaluation split (test, val or train) in both forms the paths need."""

    def __init__(self, m: sp.csr_matrix, device: torch.device) -> None:
        m = sp.csr_matrix(m)
        m.sort_indices()
        coo = m.tocoo()
        self.items, self.users, self.truth = coo.row, coo.col, coo.data.astype(np.float64)
        self.pattern = SparsePattern.from_scipy(m, device)
        self.rows_t = torch.from_numpy(coo.row.astype(np.int64)).to(device)
        self.cols_t = torch.from_numpy(coo.col.astype(np.int64)).to(device)


def training_mean(data: RatingMatrix) -> float:
    """The mean of the training ratings in the model's units (``GLocalK.init_output_bias``)."""
    return float(np.mean(data.rating_map.to_model(data.train.data))) if data.train.nnz else 0.0


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch CPU threads (None: as they are) and give the caller its own back:
    the thread count is process-wide, and a library call must not leave it changed."""
    saved = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class Trainer:
    """Runs the paper's protocol on one ``RatingMatrix``; ``glocalk.protocol.train_run`` is the usual entry point."""

    def __init__(self, data: RatingMatrix, model_config: GLocalKConfig | None = None,
                 train_config: TrainConfig | None = None) -> None:
        self.data = data
        self.model_config = model_config or GLocalKConfig()
        self.config = (train_config or TrainConfig()).validate()
        c = self.config
        self.device = resolve_device(c.device)
        self.path = choose_execution(data.shape, data.train.nnz, c.path)
        torch.manual_seed(c.seed)
        self.model = GLocalK(data.n_items, data.n_users, self.model_config).to(self.device)
        self.rating_map = data.rating_map  # the model trains on 1..5 (identity for 1..5 data: no arithmetic)
        self.model.init_output_bias(training_mean(data))
        self.input = prepare_input(self.rating_map.matrix_to_model(data.train), self.path == "sparse",
                                   self.model_config.gk_size, self.device)
        self.splits = {"train": _Split(data.train, self.device)}
        for name in ("val", "test"):
            m = getattr(data, name)
            if m is not None and m.nnz:
                self.splits[name] = _Split(m, self.device)
        self.history: list[dict] = []
        self.selected_state: dict[str, torch.Tensor] | None = None
        # Within an epoch: the last training pass's hidden layer and output weights (detached); kept for the
        # evaluation after it only when the epoch ends at that pass's parameters (then it only decodes).
        self._last_pass: tuple[torch.Tensor, list] | None = None

    def _training_loss(self, stage: int) -> torch.Tensor:
        """One training pass's loss; keeps its hidden layer and output weights for the evaluation."""
        self._last_pass = None  # never two passes' tensors alive at once
        loss, h, weights = self.model.loss_and_hidden(self.input, stage)
        w, b = weights[-1]
        self._last_pass = (h.detach(), [(w.detach(), b.detach())])
        return loss

    # -- evaluation ------------------------------------------------------------------

    def _hidden(self, stage: int) -> tuple[torch.Tensor, list]:
        """The last hidden layer and weights for prediction: the last pass's when it was at the current
        parameters (an epoch of ``lbfgsb`` usually ends at the point it evaluated last), else encoded anew."""
        if self._last_pass is not None:
            return self._last_pass
        return self.model.hidden_representation(self.input, stage)

    @torch.no_grad()
    def predictions(self, stage: int) -> dict[str, np.ndarray]:
        """Unclipped predictions at each split's entries, in the matrix's units (``data.rating_map.to_user``)."""
        h, weights = self._hidden(stage)
        out = {}
        if self.input.is_sparse:
            for name, s in self.splits.items():
                out[name] = self.rating_map.to_user(self.model.decode_at(h, weights, s.pattern).double().cpu().numpy())
        else:
            dense = self.model.decode(h, weights)
            for name, s in self.splits.items():
                out[name] = self.rating_map.to_user(dense[s.rows_t, s.cols_t].double().cpu().numpy())
        return out

    def evaluate(self, stage: int) -> dict[str, float]:
        """Metrics of the current weights on every split, keyed ``train_rmse``, ``val_rmse``, ``test_ndcg``, ..."""
        preds = self.predictions(stage)
        scale = self.data.rating_scale
        row = {}
        for name, s in self.splits.items():
            if name == "train":  # RMSE only: NDCG sorts every training rating, ~0.2 s per epoch on ML-1M
                metrics = {"rmse": rmse(np.clip(preds[name], *scale), s.truth)}
            else:
                metrics = evaluate(preds[name], s.truth, s.users, s.items, scale, self.rating_map.to_model)
            row.update({f"{name}_{k}": v for k, v in metrics.items()})
        return row

    # -- the loop --------------------------------------------------------------------

    def stage_of(self, epoch: int) -> tuple[int, int]:
        """(stage, epoch within the stage) of a global epoch number (1-based)."""
        c = self.config
        return (1, epoch) if epoch <= c.epoch_p else (2, epoch - c.epoch_p)

    @property
    def finished(self) -> bool:
        """True once the epoch budget is spent or early stopping has ended the run."""
        c = self.config
        return bool(self.history) and (self.history[-1]["epoch"] >= c.epoch_p + c.epoch_f
                                       or self._should_stop(self.history[-1]))

    def run(self, on_epoch: OnEpoch | Sequence[OnEpoch] | None = None) -> TrainResult:
        """Train both stages from the current epoch (after ``restore``: the next one); evaluate after every
        epoch, then call each ``on_epoch(record)``; return summaries and the model."""
        callbacks = [] if on_epoch is None else [on_epoch] if callable(on_epoch) else list(on_epoch)
        t_start = time.perf_counter() - sum(r["seconds"] + r["eval_seconds"] for r in self.history)
        with torch_threads(self.config.threads), denormals.flushed():
            while not self.finished:
                rec = self._epoch(len(self.history) + 1)
                self.history.append(rec)
                if self._is_selected(rec):
                    self.selected_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                for callback in callbacks:
                    callback(rec)
        best, final, val_sel = summarise(self.history)
        return TrainResult(
            model=self.model, history=self.history, best=best, final=final, val_selected=val_sel,
            selected_state=self.selected_state,
            selected_stage=None if val_sel is None else self.stage_of(val_sel["epoch"])[0],
            seconds=time.perf_counter() - t_start, path=self.path, data=self.input,
        )

    def _epoch(self, epoch: int) -> dict:
        """One optimiser epoch and its evaluation record."""
        c = self.config
        stage, stage_epoch = self.stage_of(epoch)
        params = self.model.network_parameters() if stage == 1 else self.model.finetune_parameters()
        t0 = time.perf_counter()
        try:
            opt = lbfgs_epoch(params, lambda: self._training_loss(stage), c.iter_p if stage == 1 else c.iter_f,
                              c.optimizer)
            if not opt.pop("at_last_pass", False):
                self._last_pass = None  # the parameters moved after it (or the optimiser cannot tell)
            t1 = time.perf_counter()
            if not math.isfinite(opt["loss"]):
                raise TrainingError(
                    f"non-finite loss ({opt['loss']}) in stage {stage} epoch {stage_epoch}: the "
                    "optimisation diverged; try a larger lambda_2 or a smaller dot_scale")
            rec = {"epoch": epoch, "stage": stage, "stage_epoch": stage_epoch, **opt, **self.evaluate(stage)}
        finally:  # the kept pass serves this evaluation only: the parameters may change after it
            self._last_pass = None
        rec["seconds"] = t1 - t0
        rec["eval_seconds"] = time.perf_counter() - t1
        return rec

    def _is_selected(self, rec: dict) -> bool:
        if "val_rmse" not in rec:
            return False
        pool = _selection_pool(self.history)
        return rec in pool and min(pool, key=lambda r: r["val_rmse"]) is rec

    def _should_stop(self, rec: dict) -> bool:
        c = self.config
        if c.patience is None or "val_rmse" not in rec or rec["stage"] != (2 if c.epoch_f else 1):
            return False
        best = min(_selection_pool(self.history), key=lambda r: r["val_rmse"])
        return rec["epoch"] - best["epoch"] >= c.patience

    # -- resumable state (plain data; the protocol stores it) ------------------------

    def identity(self) -> dict:
        """What a saved state must match to be resumed here: configurations and data fingerprints."""
        return training_identity(self.data, self.model_config, self.config)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, meta) to resume from: current and val-selected weights, history, epoch, identity."""
        tensors = dict(self.model.state_dict())
        if self.selected_state is not None:
            tensors.update({SELECTED + k: v for k, v in self.selected_state.items()})
        epoch = self.history[-1]["epoch"] if self.history else 0
        return tensors, {"kind": STATE_KIND, "epoch": epoch, "history": self.history, "path": self.path,
                         **self.identity()}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict, source: str = "the saved state") -> None:
        """Continue from ``state()``'s output (``source`` names it in errors); ``run`` then trains the rest.

        Raises CheckpointError if it is no training state, or was made with other data or options.
        """
        check_identity(meta, self.identity(), source)
        selected = {k[len(SELECTED):]: v for k, v in tensors.items() if k.startswith(SELECTED)}
        weights = {k: v for k, v in tensors.items() if not k.startswith(SELECTED)}
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(f"{source}: weights do not fit the model: {e}") from e
        self.selected_state = {k: v.to(self.device) for k, v in selected.items()} or None
        self.history = list(meta["history"])


def training_identity(data: RatingMatrix, model_config: GLocalKConfig, train_config: TrainConfig) -> dict:
    """The configuration and data a training state belongs to (device and threads never change results)."""
    return {"model_config": model_config.to_dict(),
            "train_config": {k: v for k, v in train_config.to_dict().items() if k not in ("device", "threads")},
            "fingerprint": data.fingerprint(),
            "val_fingerprint": None if data.val is None else _csr_digest(data.val),
            # The units the weights are in: a state trained before the map (or on another scale) must not
            # resume under it. None for 1..5 (the identity), which is what a state without it reads as.
            "rating_map": None if data.rating_map.is_identity else data.rating_map.to_json()}


def check_identity(meta: dict, identity: dict, source: str) -> None:
    """CheckpointError unless ``meta`` is a training state of ``identity`` (as made by ``training_identity``).

    A state written before validation splits were fingerprinted (no ``val_fingerprint``) is accepted on
    the other keys: its training fingerprint already depends on the split.
    """
    if not isinstance(meta, dict) or meta.get("kind") != STATE_KIND:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise CheckpointError(f"{source} is not a training state (kind={kind!r})")
    for key, mine in identity.items():
        if key == "val_fingerprint" and key not in meta:
            continue
        if meta.get(key) != mine:
            raise CheckpointError(
                f"cannot resume from {source}: it was trained with other data or parameters (its {key} "
                f"differs from this run's: {meta.get(key)} vs {mine}); use the same data and options, "
                "or a new output folder")


def _csr_digest(m: sp.csr_matrix) -> str:
    m = sp.csr_matrix(m)
    m.sort_indices()
    h = hashlib.sha256(np.asarray(m.shape, dtype=np.int64).tobytes())
    for arr in (m.indptr, m.indices, m.data):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _selection_pool(history: list[dict]) -> list[dict]:
    """The epochs a protocol may choose among: the fine-tuning epochs (pre-training if there are none)."""
    finetune = [r for r in history if r["stage"] == 2]
    return finetune or [r for r in history if r["stage"] == 1]


def summarise(history: list[dict]) -> tuple[dict | None, dict | None, dict | None]:
    """(best, final, val_selected) test metrics from a run's per-epoch history.

    best: the paper protocol -- for each metric its best value over the fine-tuning epochs,
    chosen on the TEST set (``epoch`` is the RMSE-best epoch). final: the last epoch.
    val_selected: the fine-tuning epoch with the lowest validation RMSE, its test metrics.
    """
    if not history or "test_rmse" not in history[-1]:
        final = None if not history else {"epoch": history[-1]["epoch"]}
        best = None
    else:
        last = history[-1]
        final = {"rmse": last["test_rmse"], "mae": last["test_mae"], "ndcg": last["test_ndcg"],
                 "epoch": last["epoch"]}
        pool = _selection_pool(history)
        by_rmse = min(pool, key=lambda r: r["test_rmse"])
        by_mae = min(pool, key=lambda r: r["test_mae"])
        by_ndcg = max(pool, key=lambda r: r["test_ndcg"] if math.isfinite(r["test_ndcg"]) else -1)
        best = {"rmse": by_rmse["test_rmse"], "mae": by_mae["test_mae"], "ndcg": by_ndcg["test_ndcg"],
                "epoch": by_rmse["epoch"], "rmse_epoch": by_rmse["epoch"], "mae_epoch": by_mae["epoch"],
                "ndcg_epoch": by_ndcg["epoch"]}
    val_sel = None
    if history and "val_rmse" in history[-1]:
        chosen = min(_selection_pool(history), key=lambda r: r["val_rmse"])
        val_sel = {"epoch": chosen["epoch"], "val_rmse": chosen["val_rmse"]}
        if "test_rmse" in chosen:
            val_sel.update(rmse=chosen["test_rmse"], mae=chosen["test_mae"], ndcg=chosen["test_ndcg"])
    return best, final, val_sel


def train(data: RatingMatrix, model_config: GLocalKConfig | None = None,
          train_config: TrainConfig | None = None, on_epoch: OnEpoch | Sequence[OnEpoch] | None = None
          ) -> TrainResult:
    """Train GLocal-K on ``data`` (both stages) in memory and return the result; see ``Trainer.run``.

    For resume state, epoch logs, several seeds and ensembles use ``glocalk.protocol``.
    """
    return Trainer(data, model_config, train_config).run(on_epoch)
