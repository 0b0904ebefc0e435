"""Baseline rating predictors for the benchmark harness: global mean, user + item biases, biased MF.

Each baseline has the same small interface (scikit-learn / Surprise habits)::

    model = Biases()
    history = model.fit(data)          # per-epoch dicts: epoch, train_rmse, val_*, test_*
    model.selected                     # the history record chosen on VALIDATION data
    model.predict(items, users)        # predictions at (item row, user column), clipped

Every choice a baseline makes (regularisation from a grid, the epoch, early stopping)
reads only ``data.val``; test metrics are recorded per epoch for the curves and the
report, never used to choose anything. Without a validation split a baseline falls
back to its documented default and its last epoch. Predictions are always clipped
to ``data.rating_scale``, as GLocal-K's are.

Prediction models (mu: mean of the training ratings):

- ``GlobalMean``: r_hat = mu.
- ``Biases``: r_hat = mu + b_i + b_u, minimising
  sum_(i,u) (r - mu - b_i - b_u)^2 + reg_item * sum b_i^2 + reg_user * sum b_u^2
  by alternating closed-form updates (block coordinate descent, exact per block):
  b_i = sum_{u in R(i)} (r_iu - mu - b_u) / (reg_item + |R(i)|), then
  b_u = sum_{i in R(u)} (r_iu - mu - b_i) / (reg_user + |R(u)|).
- ``BiasedMF``: r_hat = mu + b_i + b_u + q_i . p_u, trained with mini-batch Adam on the
  observed training entries, loss = mean over the batch of
  (r - r_hat)^2 + reg * (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2) (the per-rating L2 of SGD
  matrix factorisation, Koren et al. 2009).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from glocalk.data.matrix import RatingMatrix
from glocalk.errors import ConfigError
from glocalk.metrics import evaluate, rmse

SPLITS = ("train", "val", "test")


def entries(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, users, ratings) of a sparse split, in CSR (row-major, sorted) order."""
    coo = sp.csr_matrix(m).tocoo()
    order = np.lexsort((coo.col, coo.row))
    return coo.row[order].astype(np.int64), coo.col[order].astype(np.int64), coo.data[order].astype(np.float64)


class Baseline:
    """Common interface: ``fit(data) -> history``, ``predict(items, users)``, ``selected``."""

    #: short name used by the benchmark harness
    name = "baseline"
    #: True when different seeds give different models (an ensemble over seeds makes sense)
    stochastic = False

    def __init__(self) -> None:
        self.history: list[dict] = []
        self.selected: dict | None = None
        self.rating_scale: tuple[float, float] = (-math.inf, math.inf)
        self.info: dict = {}

    def fit(self, data: RatingMatrix) -> list[dict]:
        """Train on ``data.train``, select on ``data.val``; return the per-epoch history."""
        raise NotImplementedError

    def _raw_predict(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        """Predicted ratings at (item row, user column) pairs, clipped to the rating scale."""
        items = np.asarray(items, dtype=np.int64)
        users = np.asarray(users, dtype=np.int64)
        lo, hi = self.rating_scale
        return np.clip(self._raw_predict(items, users), lo, hi)

    # -- shared helpers --------------------------------------------------------------

    def _prepare(self, data: RatingMatrix) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        self.rating_scale = tuple(data.rating_scale)
        self.to_model = data.rating_map.to_model  # NDCG's gains in the model's units (data.scaling)
        self.history, self.selected = [], None
        out = {}
        for name in SPLITS:
            m = getattr(data, name)
            if m is not None and m.nnz:
                out[name] = entries(m)
        return out

    def _metrics(self, splits: dict, predict=None) -> dict[str, float]:
        """train RMSE and val/test RMSE, MAE, NDCG of the current parameters."""
        predict = predict or self.predict
        row = {}
        for name, (items, users, truth) in splits.items():
            pred = predict(items, users)
            if name == "train":
                row["train_rmse"] = rmse(pred, truth)
            else:
                metrics = evaluate(pred, truth, users, items, self.rating_scale, self.to_model)
                row.update({f"{name}_{k}": v for k, v in metrics.items()})
        return row


class GlobalMean(Baseline):
    """r_hat = mean of the training ratings (nothing to select)."""

    name = "global-mean"

    def fit(self, data: RatingMatrix) -> list[dict]:
        t0 = time.perf_counter()
        splits = self._prepare(data)
        self.mu = float(data.train.data.mean())
        rec = {"epoch": 1, "stage": 1, **self._metrics(splits), "seconds": time.perf_counter() - t0}
        self.history = [rec]
        self.selected = rec
        return self.history

    def _raw_predict(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        return np.full(items.shape, self.mu, dtype=np.float64)


def fit_biases(items: np.ndarray, users: np.ndarray, ratings: np.ndarray, shape: tuple[int, int],
               regs: tuple[float, float], sweeps: int = 1, *, mu: float | None = None,
               b_user: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """``sweeps`` rounds of the alternating closed-form bias updates; returns (mu, b_item, b_user).

    ``shape``: (n_items, n_users); ``regs``: (reg_item, reg_user).

    Starts from ``b_user`` (zeros by default); each round solves for all b_i given b_u,
    then for all b_u given b_i (see the module docstring).
    """
    (n_items, n_users), (reg_item, reg_user) = shape, regs
    mu = float(ratings.mean()) if mu is None else mu
    n_i = np.bincount(items, minlength=n_items).astype(np.float64)
    n_u = np.bincount(users, minlength=n_users).astype(np.float64)
    b_u = np.zeros(n_users) if b_user is None else np.array(b_user, dtype=np.float64)
    b_i = np.zeros(n_items)
    resid = ratings - mu
    for _ in range(sweeps):
        b_i = np.bincount(items, weights=resid - b_u[users], minlength=n_items) / (reg_item + n_i)
        b_u = np.bincount(users, weights=resid - b_i[items], minlength=n_users) / (reg_user + n_u)
    return mu, b_i, b_u


class Biases(Baseline):
    """r_hat = mu + b_i + b_u, ridge-regularised, by alternating closed-form (ALS) updates.

    (reg_item, reg_user) is chosen from ``regs x regs`` by the validation RMSE after
    ``sweeps`` rounds; the reported history is the chosen pair's, one record per round,
    and the round with the lowest validation RMSE is selected. Without a validation
    split: ``default_reg`` for both and the last round.
    """

    name = "biases"

    def __init__(self, regs: tuple[float, ...] = (1.0, 3.0, 10.0, 25.0, 50.0), sweeps: int = 15,
                 default_reg: float = 10.0) -> None:
        super().__init__()
        self.regs, self.sweeps, self.default_reg = tuple(regs), sweeps, default_reg

    def fit(self, data: RatingMatrix) -> list[dict]:
        t0 = time.perf_counter()
        splits = self._prepare(data)
        items, users, ratings = splits["train"]
        shape = data.shape
        if "val" in splits:
            vi, vu, vr = splits["val"]
            lo, hi = self.rating_scale
            grid = []
            for reg_i, reg_u in itertools.product(self.regs, self.regs):
                mu, b_i, b_u = fit_biases(items, users, ratings, shape, (reg_i, reg_u), self.sweeps)
                grid.append({"reg_item": reg_i, "reg_user": reg_u,
                             "val_rmse": rmse(np.clip(mu + b_i[vi] + b_u[vu], lo, hi), vr)})
            chosen = min(grid, key=lambda g: g["val_rmse"])
            self.info = {"grid": grid, "reg_item": chosen["reg_item"], "reg_user": chosen["reg_user"]}
        else:
            self.info = {"reg_item": self.default_reg, "reg_user": self.default_reg}
        reg_i, reg_u = self.info["reg_item"], self.info["reg_user"]
        b_u, states = None, []
        for sweep in range(1, self.sweeps + 1):
            t_sweep = time.perf_counter()
            self.mu, self.b_item, b_u = fit_biases(items, users, ratings, shape, (reg_i, reg_u), 1, b_user=b_u)
            self.b_user = b_u
            states.append((self.b_item, self.b_user))
            self.history.append({"epoch": sweep, "stage": 1, **self._metrics(splits),
                                 "seconds": time.perf_counter() - t_sweep})
        self.info["seconds"] = time.perf_counter() - t0
        self.selected = _select(self.history)
        self.b_item, self.b_user = states[self.selected["epoch"] - 1]
        return self.history

    def _raw_predict(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        return self.mu + self.b_item[items] + self.b_user[users]


def _select(history: list[dict]) -> dict:
    """The record with the lowest validation RMSE (the last one when there is no validation)."""
    if "val_rmse" not in history[-1]:
        return history[-1]
    return min(history, key=lambda r: r["val_rmse"])


@dataclass
class MFOptions:
    """Hyperparameters and execution of ``BiasedMF`` (the defaults are the benchmark's)."""

    factors: int = 64
    epochs: int = 100
    """Maximum epochs per regularisation strength."""
    patience: int = 10
    """Early stopping: epochs without a better validation RMSE."""
    lr: float = 5e-3
    regs: tuple[float, ...] = (0.05, 0.1, 0.2)
    """The grid of L2 strengths, chosen on validation."""
    default_reg: float = 0.1
    """The strength used without a validation split."""
    batch_size: int = 1024
    init_std: float = 0.01
    seed: int = 0
    device: str = "cpu"
    threads: int | None = 1
    """Torch CPU threads while fitting (None: torch's setting)."""


class BiasedMF(Baseline):
    """Biased matrix factorisation (mu + b_i + b_u + q_i . p_u), mini-batch Adam in PyTorch.

    For each ``reg`` in ``regs`` a model is trained for at most ``epochs`` epochs with early
    stopping (``patience`` epochs without a better validation RMSE); the reg and the epoch
    with the lowest validation RMSE are kept, and the reported history is that reg's run.
    Without a validation split: ``default_reg`` and all epochs, the last one kept.
    ``threads``: torch CPU threads while fitting (the ops are tiny: one thread is fastest,
    and far faster than several on a busy machine); None keeps torch's setting.
    """

    name = "biased-mf"
    stochastic = True

    def __init__(self, options: MFOptions | None = None, **fields) -> None:
        super().__init__()
        if options is not None and fields:
            raise TypeError("give either an MFOptions or its fields as keywords, not both")
        o = options or MFOptions(**fields)
        self.threads = o.threads
        self.factors, self.epochs, self.patience, self.lr = o.factors, o.epochs, o.patience, o.lr
        self.regs, self.default_reg, self.batch_size = tuple(o.regs), o.default_reg, o.batch_size
        self.init_std, self.seed, self.device = o.init_std, o.seed, torch.device(o.device)

    def fit(self, data: RatingMatrix) -> list[dict]:
        splits = self._prepare(data)
        self.mu = float(data.train.data.mean())
        regs = self.regs if "val" in splits else (self.default_reg,)
        runs = []
        saved_threads = torch.get_num_threads()
        if self.threads and self.device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            for reg in regs:
                history, state = self._train_one(data, splits, reg)
                runs.append((reg, history, state))
        finally:
            torch.set_num_threads(saved_threads)
        reg, history, state = min(runs, key=lambda r: _select(r[1]).get("val_rmse", 0.0))
        self.info = {"reg": reg, "grid": [{"reg": r, "val_rmse": _select(h).get("val_rmse"),
                                           "epoch": _select(h)["epoch"]} for r, h, _ in runs]}
        self.history, self.state = history, state
        self.selected = _select(history)
        return self.history

    def _train_one(self, data: RatingMatrix, splits: dict, reg: float) -> tuple[list[dict], dict]:
        gen = torch.Generator().manual_seed(self.seed)
        dev = self.device
        k = self.factors
        params = {
            "q": (torch.randn(data.n_items, k, generator=gen) * self.init_std).to(dev).requires_grad_(),
            "p": (torch.randn(data.n_users, k, generator=gen) * self.init_std).to(dev).requires_grad_(),
            "b_item": torch.zeros(data.n_items, device=dev, requires_grad=True),
            "b_user": torch.zeros(data.n_users, device=dev, requires_grad=True),
        }
        opt = torch.optim.Adam(params.values(), lr=self.lr)
        items, users, ratings = (torch.from_numpy(a).to(dev) for a in splits["train"])
        ratings = ratings.float()
        n = ratings.numel()
        history: list[dict] = []
        best_state, best = None, None
        for epoch in range(1, self.epochs + 1):
            t_ep = time.perf_counter()
            order = torch.randperm(n, generator=gen).to(dev)
            for start in range(0, n, self.batch_size):
                idx = order[start: start + self.batch_size]
                i, u, r = items[idx], users[idx], ratings[idx]
                q, p, bi, bu = params["q"][i], params["p"][u], params["b_item"][i], params["b_user"][u]
                err = r - (self.mu + bi + bu + (q * p).sum(1))
                penalty = (q * q).sum(1) + (p * p).sum(1) + bi * bi + bu * bu
                loss = (err * err + reg * penalty).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            state = {name: t.detach().cpu().double().numpy().copy() for name, t in params.items()}
            rec = {"epoch": epoch, "stage": 1, "reg": reg,
                   **self._metrics(splits, lambda it, us, s=state: self._predict_with(s, it, us)),
                   "seconds": time.perf_counter() - t_ep}
            history.append(rec)
            if best is None or "val_rmse" not in rec or rec["val_rmse"] < best["val_rmse"]:
                best, best_state = rec, state
            elif epoch - best["epoch"] >= self.patience:
                break
        return history, best_state

    def _predict_with(self, state: dict, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        raw = self.mu + state["b_item"][items] + state["b_user"][users] + \
            np.einsum("nk,nk->n", state["q"][items], state["p"][users])
        return np.clip(raw, *self.rating_scale)

    def _raw_predict(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        return self._predict_with(self.state, items, users)


BASELINES: dict[str, type[Baseline]] = {cls.name: cls for cls in (GlobalMean, Biases, BiasedMF)}


def make_baseline(name: str, seed: int = 0, device: str = "cpu", **options) -> Baseline:
    """A baseline by its short name; ``seed`` and ``device`` reach the models that use them."""
    try:
        cls = BASELINES[name]
    except KeyError:
        raise ConfigError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}") from None
    if cls is BiasedMF:
        options = {"seed": seed, "device": device, **options}
    return cls(**options)
