"""GLocal-K for your own ratings: a scikit-learn / Surprise style estimator.

::

    from glocalk.estimator import GLocalKRecommender

    model = GLocalKRecommender(n_hid=100, epoch_p=10, epoch_f=20, val_frac=0.05)
    model.fit("ratings.csv")                     # or a DataFrame, a readers.Ratings, a RatingMatrix
    model.predict(["alice", "bob"], ["m1", "m7"])  # raw ids in, ratings out (in the file's scale)
    model.recommend("alice", k=10)                 # DataFrame: item, score, rank
    model.save("my-model")                         # a directory; GLocalKRecommender.load("my-model")

Serving. After ``fit`` (or ``load``) the chosen weights -- the validation-selected epoch when
``val_frac`` is set, else the last epoch -- are reduced once to the last hidden layer
H (n_items, n_hid) of the training matrix and the output layer's effective weights
W * K (n_hid, n_users) and bias b (n_users). A prediction is then H[i] . (W*K)[:, u] + b[u],
clipped to the rating scale, and a user's recommendations are one matrix-vector product over
all items. With several seeds (an ensemble) the members' unclipped predictions are averaged.

Unknown ids. ``unknown="error"`` (default) raises DataError naming the id; ``"baseline"``
answers with a regularised bias model fitted on the training ratings
(mu + b_item + b_user; mu + b_item for an unknown user, mu + b_user for an unknown item, mu
when both are unknown); a recommendation for an unknown user is then the item-bias order.

Model directory (``save``; written atomically by ``checkpoint.save_dir``): ``weights.safetensors``
holds each member's weights (``member{k}.{name}``), the training matrix the model reads
(``input.indptr/indices/data``) and the validation ratings held out of it (``val.*``), so the
model is complete without the original file; ``model.json`` holds the hyperparameters, the raw
id maps (with their type), the rating scale and offset, the library versions, the training
data's fingerprint, the members' selected epochs and the metrics. Loading never runs code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from glocalk.baselines import entries, fit_biases
from glocalk.data.matrix import RatingMatrix
from glocalk.data.matrix import _as_csr as _csr  # float32, explicit zeros removed, sorted
from glocalk.data.readers import IdMap, read_ratings, to_rating_matrix
from glocalk.errors import CheckpointError, DataError
from glocalk.inputs import choose_execution, prepare_input
from glocalk.metrics import evaluate as evaluate_metrics
from glocalk.model import GLocalK
from glocalk.presets import MODEL_KEYS, preset, split_config
from glocalk.protocol import RunOptions, train_run
from glocalk.store import load_dir, save_dir

MODEL_KIND = "glocalk-model"
UNKNOWN_POLICIES = ("error", "baseline")
DUPLICATE_POLICIES = ("error", "last", "first", "mean")
# Hyperparameters accepted as keywords besides the explicit constructor arguments.
HYPERPARAMETER_KEYS = tuple(MODEL_KEYS) + ("epoch_p", "epoch_f", "iter_p", "iter_f")
# The unknown-id fallback: baselines.Biases without a validation split (its default_reg, sweeps).
BASELINE_REG = 10.0
BASELINE_SWEEPS = 15
_CHUNK = 65536  # pairs per block in predict, bounding memory at _CHUNK * n_hid floats

OnEpoch = Callable[[int, dict], None]


@dataclass
class _Member:
    """One trained model of the ensemble, reduced for serving."""

    seed: int
    stage: int
    epoch: int
    state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    h: np.ndarray | None = None  # (n_items, n_hid) last hidden layer of the training matrix
    w: np.ndarray | None = None  # (n_hid, n_users) output layer's W * K
    b: np.ndarray | None = None  # (n_users,) output bias


@dataclass
class _Prepared:
    """Training data in matrix form plus what is needed to map raw ids and ratings back."""

    train: sp.csr_matrix  # (n_items, n_users), internal (offset) scale
    item_ids: np.ndarray
    user_ids: np.ndarray
    rating_scale: tuple[float, float]  # internal scale
    offset: float
    val: sp.csr_matrix | None = None
    test: pd.DataFrame | None = None  # user, item, rating (raw ids, internal scale)
    name: str = "ratings"


class GLocalKRecommender:
    """GLocal-K as an estimator: hyperparameters at construction, ``fit``, ``predict``, ``recommend``.

    Args:
        preset: the paper preset whose hyperparameters are the defaults ("ml-100k", "ml-1m", "douban").
        seed: a seed (default 1, as ``glocalk fit``), or a sequence of seeds: one model per seed,
            predictions averaged (an ensemble).
        n_ensemble: train this many models with seeds ``seed, seed+1, ...`` (``seed`` must be an int).
        val_frac: hold out this seeded fraction of the training ratings to choose the epoch
            (the fine-tuning epoch with the lowest validation RMSE); None: use the last epoch.
        patience: stop fine-tuning after this many epochs without a better validation RMSE.
        rating_scale: (min, max) of the ratings in the data's own scale; default: the observed range.
        duplicates: a repeated (user, item) pair is an "error", or keep the "last", the "first" or the "mean".
        unknown: an id not seen in training is an "error" at predict/recommend time, or gets the
            "baseline" (bias model) prediction.
        device, path, optimizer, threads: execution options of ``train.TrainConfig``.
        **hyperparameters: any ``GLocalKConfig`` field (n_hid, n_dim, n_layers, gk_size, lambda_2,
            lambda_s, dot_scale, gk_norm, local_kernel, global_kernel) and epoch_p, epoch_f,
            iter_p, iter_f; unset ones take the preset's value.

    Attributes set by ``fit`` / ``load``: ``user_ids_``, ``item_ids_`` (raw ids, index order),
    ``rating_scale_`` (in the data's scale), ``members_`` (seed, stage, epoch per model),
    ``history_`` (per-member epoch records), ``metrics_`` (test metrics, when a test set was given).
    """

    def __init__(self, preset: str = "ml-100k", *, seed: int | Sequence[int] = 1, n_ensemble: int | None = None,
                 val_frac: float | None = None, patience: int | None = None,
                 rating_scale: tuple[float, float] | None = None, duplicates: str = "error",
                 unknown: str = "error", device: str = "cpu", path: str = "auto", optimizer: str = "scipy",
                 threads: int | None = None, **hyperparameters: Any) -> None:
        self.preset = preset
        self.seed = seed
        self.n_ensemble = n_ensemble
        self.val_frac = val_frac
        self.patience = patience
        self.rating_scale = rating_scale
        self.duplicates = duplicates
        self.unknown = unknown
        self.device = device
        self.path = path
        self.optimizer = optimizer
        self.threads = threads
        bad = sorted(set(hyperparameters) - set(HYPERPARAMETER_KEYS))
        if bad:
            raise TypeError(f"unknown hyperparameter(s) {', '.join(bad)}; known: {', '.join(HYPERPARAMETER_KEYS)}")
        self.hyperparameters = dict(hyperparameters)
        self._check_params()
        self._fitted = False

    # -- scikit-learn conventions ----------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict:
        """The constructor arguments (hyperparameter keywords flattened), as scikit-learn expects."""
        params = {name: getattr(self, name) for name in _EXPLICIT}
        params.update(self.hyperparameters)
        return params

    def set_params(self, **params: Any) -> GLocalKRecommender:
        """Change constructor arguments; the model must be fitted again."""
        for key, value in params.items():
            if key in _EXPLICIT:
                setattr(self, key, value)
            elif key in HYPERPARAMETER_KEYS:
                self.hyperparameters[key] = value
            else:
                raise TypeError(f"unknown parameter {key!r}")
        self._check_params()
        return self

    def clone(self) -> GLocalKRecommender:
        """An unfitted estimator with the same parameters."""
        return GLocalKRecommender(**copy.deepcopy(self.get_params()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v != _DEFAULTS.get(k, object()))
        return f"GLocalKRecommender({args})"

    def _check_params(self) -> None:
        preset(self.preset)  # KeyError naming the known presets
        if self.unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {self.unknown!r}")
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {self.duplicates!r}")
        if self.val_frac is not None and not 0.0 < self.val_frac < 1.0:
            raise ValueError(f"val_frac must be in (0, 1), got {self.val_frac}")
        if self.patience is not None and self.val_frac is None:
            raise ValueError("patience needs a validation split (val_frac)")
        self.seeds()

    def seeds(self) -> list[int]:
        """The seeds of the models to train: one, or several for an ensemble."""
        if isinstance(self.seed, (int, np.integer)):
            n = 1 if self.n_ensemble is None else int(self.n_ensemble)
            if n < 1:
                raise ValueError(f"n_ensemble must be >= 1, got {self.n_ensemble}")
            return [int(self.seed) + k for k in range(n)]
        seeds = [int(s) for s in self.seed]
        if not seeds:
            raise ValueError("seed: give at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seed: repeated seeds in {seeds}")
        if self.n_ensemble is not None and self.n_ensemble != len(seeds):
            raise ValueError(f"n_ensemble={self.n_ensemble} but {len(seeds)} seeds were given")
        return seeds

    def config(self) -> dict:
        """The flat hyperparameters a model is trained with (the preset, then the overrides)."""
        params = preset(self.preset)
        params.update(self.hyperparameters)
        params.update(device=self.device, path=self.path, optimizer=self.optimizer, patience=self.patience,
                      threads=self.threads)
        return params

    # -- fitting --------------------------------------------------------------------------

    def fit(self, data: Any, test: Any = None, *, on_epoch: OnEpoch | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False) -> GLocalKRecommender:
        """Train on ``data``; evaluate on ``test`` if given (``metrics_``). Returns self.

        Args:
            data: a pandas DataFrame (columns user, item, rating[, timestamp]), a path to a ratings
                file, a ``readers.Ratings`` or a ``RatingMatrix`` (whose ``val`` split, if any, is used
                for epoch selection instead of ``val_frac``, and whose ``test`` split is evaluated).
            test: held-out ratings in any of the same forms (not a RatingMatrix); never used in training.
            on_epoch: called as ``on_epoch(seed, record)`` after every epoch of every member.
            checkpoint_dir: keep each member's training state here after every epoch
                (``checkpoint_dir/seed-N``), so an interrupted fit can be resumed.
            resume: continue from the states in ``checkpoint_dir`` (same data and parameters);
                the result equals an uninterrupted fit with the same seeds.
        """
        self._check_params()
        prep = self._prepare(data, test)
        params = self.config()
        full = RatingMatrix(prep.train, item_ids=prep.item_ids, user_ids=prep.user_ids,
                            rating_scale=prep.rating_scale, name=prep.name)
        if prep.val is not None:
            fit_data = RatingMatrix(prep.train, val=prep.val, item_ids=prep.item_ids, user_ids=prep.user_ids,
                                    rating_scale=prep.rating_scale, name=prep.name)
            seen = prep.train + prep.val
        elif self.val_frac:
            # One validation split, drawn with the first seed, shared by all members so that
            # they read the same input matrix at serving time.
            fit_data = full.with_validation(self.val_frac, seed=self.seeds()[0])
            seen = prep.train
        else:
            fit_data, seen = full, prep.train
        if self.patience is not None and fit_data.val is None:
            raise ValueError("patience needs a validation split (val_frac)")
        members = []
        for seed in self.seeds():
            member_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"seed-{seed}"
            callback = None if on_epoch is None else (lambda rec, seed=seed: on_epoch(seed, rec))
            members.append(_train_member(fit_data, params, seed, callback, member_dir, resume))
        self._install(fit_data.train, fit_data.val, _csr(seen), prep, members, params,
                      path=members[0].history[-1].get("path") if members[0].history else None)
        self.metrics_ = None
        if prep.test is not None:
            self.metrics_ = self.evaluate(prep.test, unknown="skip", _internal=True)
        return self

    def _install(self, input_m: sp.csr_matrix, val: sp.csr_matrix | None, seen: sp.csr_matrix, prep: _Prepared,
                 members: list[_Member], params: dict, path: str | None = None) -> None:
        """Set the fitted attributes and the serving caches."""
        self._input = _csr(input_m)
        self._val = None if val is None or val.nnz == 0 else _csr(val)
        self._seen = seen
        self._seen_t = seen.T.tocsr()  # (n_users, n_items): each user's rated items
        self.fingerprint_ = _fingerprint(seen)
        self.item_ids_ = np.asarray(prep.item_ids)
        self.user_ids_ = np.asarray(prep.user_ids)
        self._internal_scale = tuple(float(x) for x in prep.rating_scale)
        self.offset_ = float(prep.offset)
        self.rating_scale_ = (self._internal_scale[0] - self.offset_, self._internal_scale[1] - self.offset_)
        self._params = params
        self._model_config, _ = split_config({k: v for k, v in params.items() if k != "seed"})
        self._path = path or _serving_path(self._input, params.get("path", "auto"))
        self._ids = IdMap(user_ids=self.user_ids_, item_ids=self.item_ids_)
        self._members = members
        self.members_ = [{"seed": m.seed, "stage": m.stage, "epoch": m.epoch} for m in members]
        self.history_ = {m.seed: m.history for m in members}
        self._serve()
        self._fit_baseline()
        self._fitted = True

    def _serve(self) -> None:
        """Reduce every member to (H, W*K, b) on the CPU (so save -> load predicts identically)."""
        data = prepare_input(self._input, self._path == "sparse", self._model_config.gk_size, "cpu")
        for m in self._members:
            model = _model_with(m.state, self._input.shape, self._model_config)
            h, weights = model.hidden_representation(data, m.stage)
            w, b = weights[-1]
            m.h, m.w, m.b = h.numpy(), w.detach().numpy(), b.detach().numpy()

    def _fit_baseline(self) -> None:
        """Regularised biases on all training ratings (internal scale): the fallback for unknown ids."""
        items, users, ratings = entries(self._seen)
        self._mu, self._b_item, self._b_user = fit_biases(items, users, ratings, *self._seen.shape,
                                                          BASELINE_REG, BASELINE_REG, BASELINE_SWEEPS)

    # -- prediction -----------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not getattr(self, "_fitted", False):
            raise RuntimeError("this GLocalKRecommender is not fitted yet: call fit() or load() first")

    def _scores(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        """Unclipped mean prediction of the members at (item index, user index) pairs, internal scale."""
        out = np.zeros(len(items), dtype=np.float64)
        for start in range(0, len(items), _CHUNK):
            i, u = items[start: start + _CHUNK], users[start: start + _CHUNK]
            for m in self._members:
                out[start: start + len(i)] += np.einsum("nh,hn->n", m.h[i], m.w[:, u]) + m.b[u]
        return out / len(self._members)

    def _user_scores(self, u: int) -> np.ndarray:
        """Unclipped mean prediction of every item for user index ``u``: (n_items,)."""
        return np.mean([m.h @ m.w[:, u] + m.b[u] for m in self._members], axis=0, dtype=np.float64)

    def _lookup(self, ids: np.ndarray, kind: str) -> np.ndarray:
        """Indices of raw ids, -1 where unknown (canonical integer text matches integer ids, as in readers)."""
        return self._ids.lookup(np.asarray(ids), kind)

    def predict(self, users: Any, items: Any = None, *, unknown: str | None = None) -> np.ndarray | float:
        """Predicted ratings, in the data's own scale and clipped to it, for (user, item) pairs of raw ids.

        ``users`` and ``items`` are scalars or equal-length sequences; or ``users`` is a DataFrame
        with ``user`` and ``item`` columns and ``items`` is None. Two scalars give a float.
        ``unknown`` overrides the estimator's policy for ids not seen in training ("error" or "baseline").
        """
        self._check_fitted()
        policy = self.unknown if unknown is None else unknown
        if policy not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {policy!r}")
        if isinstance(users, pd.DataFrame) and items is None:
            missing = [c for c in ("user", "item") if c not in users.columns]
            if missing:
                raise DataError(f"predict: the DataFrame has no {' or '.join(missing)} column "
                                f"(columns: {', '.join(map(str, users.columns))})")
            users, items = users["user"].to_numpy(), users["item"].to_numpy()
        elif items is None:
            raise TypeError("predict(users, items): give the items too (or a DataFrame with user and item columns)")
        scalar = np.ndim(users) == 0 and np.ndim(items) == 0
        users_a, items_a = np.atleast_1d(np.asarray(users)), np.atleast_1d(np.asarray(items))
        if users_a.shape != items_a.shape or users_a.ndim != 1:
            raise DataError(f"predict: users and items differ in length ({users_a.size} vs {items_a.size})")
        pred = self._predict_internal(users_a, items_a, policy) - self.offset_
        return float(pred[0]) if scalar else pred

    def _predict_internal(self, users: np.ndarray, items: np.ndarray, policy: str) -> np.ndarray:
        """Clipped predictions in the internal scale; unknown ids by ``policy`` (error/baseline/nan)."""
        u = self._lookup(users, "user")
        i = self._lookup(items, "item")
        bad_u, bad_i = u < 0, i < 0
        if policy == "error" and (bad_u.any() or bad_i.any()):
            raise DataError(_unknown_message(users, items, bad_u, bad_i))
        known = ~(bad_u | bad_i)
        out = np.empty(len(users), dtype=np.float64)
        out[known] = self._scores(i[known], u[known])
        if not known.all():
            if policy == "baseline":
                mu = np.full((~known).sum(), self._mu)
                ui, ii = u[~known], i[~known]
                out[~known] = (mu + np.where(ii >= 0, self._b_item[np.maximum(ii, 0)], 0.0)
                               + np.where(ui >= 0, self._b_user[np.maximum(ui, 0)], 0.0))
            else:  # "nan": the caller skips these pairs
                out[~known] = np.nan
        return np.clip(out, *self._internal_scale)

    def recommend(self, user: Any, k: int = 10, exclude_seen: bool = True, *,
                  unknown: str | None = None) -> pd.DataFrame:
        """The ``k`` items with the highest predicted rating for ``user`` (a raw id).

        Returns a DataFrame with columns ``item`` (raw id), ``score`` (predicted rating in the data's
        scale, clipped) and ``rank`` (1..k), in descending order of score. Ties in the clipped rating
        are broken by the unclipped prediction, then by item order. ``exclude_seen`` drops the items
        the user rated in the training data (including ratings held out for validation).
        """
        self._check_fitted()
        policy = self.unknown if unknown is None else unknown
        if policy not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {policy!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        u = int(self._lookup(np.array([user]), "user")[0])
        if u < 0:
            if policy == "error":
                raise DataError(f"unknown user {user!r}: not in the training data "
                                "(use unknown='baseline' to recommend by item popularity)")
            raw = self._mu + self._b_item
            seen = np.zeros(len(raw), dtype=bool)
        else:
            raw = self._user_scores(u)
            seen = np.zeros(len(raw), dtype=bool)
            if exclude_seen:
                seen[self._seen_t.indices[self._seen_t.indptr[u]: self._seen_t.indptr[u + 1]]] = True
        candidates = np.flatnonzero(~seen)
        clipped = np.clip(raw, *self._internal_scale)
        # lexsort: last key primary -> descending clipped rating, then descending raw score, then item index.
        order = candidates[np.lexsort((candidates, -raw[candidates], -clipped[candidates]))][:k]
        return pd.DataFrame({"item": self.item_ids_[order], "score": clipped[order] - self.offset_,
                             "rank": np.arange(1, len(order) + 1)})

    def recommend_many(self, users: Iterable[Any], k: int = 10, exclude_seen: bool = True, *,
                       unknown: str | None = None) -> pd.DataFrame:
        """``recommend`` for several users: one DataFrame with a leading ``user`` column."""
        frames = []
        for user in users:
            df = self.recommend(user, k, exclude_seen, unknown=unknown)
            df.insert(0, "user", pd.Series([user] * len(df), dtype=object))
            frames.append(df)
        if not frames:
            return pd.DataFrame(columns=["user", "item", "score", "rank"])
        return pd.concat(frames, ignore_index=True)

    def evaluate(self, test: Any, *, unknown: str = "skip", _internal: bool = False) -> dict:
        """RMSE, MAE and NDCG (SPEC.md's definitions) of the clipped predictions on ``test``.

        ``test``: a DataFrame (user, item, rating), a path or a ``readers.Ratings``, in the data's scale
        (a rating outside the model's rating scale is an error).
        Pairs with an id unknown to the model are skipped (``unknown="skip"``, counted in
        ``n_skipped``), predicted by the baseline (``"baseline"``) or an error (``"error"``).
        """
        self._check_fitted()
        if unknown not in ("skip", *UNKNOWN_POLICIES):
            raise ValueError(f"unknown must be 'skip', 'error' or 'baseline', got {unknown!r}")
        df = test if _internal else self._read_test(test, self.rating_scale_, self.offset_)
        users, items = df["user"].to_numpy(), df["item"].to_numpy()
        truth = df["rating"].to_numpy(dtype=np.float64)
        pred = self._predict_internal(users, items, "nan" if unknown == "skip" else unknown)
        keep = ~np.isnan(pred)
        if not keep.any():
            raise DataError(f"evaluate: none of the {len(df)} test ratings has a user and an item "
                            "known to the model")
        u = self._lookup(users, "user")
        i = self._lookup(items, "item")
        # Unknown ids get distinct negative codes so NDCG still groups by user.
        u_codes = np.where(u >= 0, u, -1 - pd.factorize(users)[0])
        i_codes = np.where(i >= 0, i, -1 - pd.factorize(items)[0])
        out = evaluate_metrics(pred[keep], truth[keep], u_codes[keep], i_codes[keep], self._internal_scale)
        out.update(n_rated=int(keep.sum()), n_skipped=int((~keep).sum()))
        return out

    # -- data conversion ------------------------------------------------------------------

    def _prepare(self, data: Any, test: Any) -> _Prepared:
        if isinstance(data, RatingMatrix):
            return self._prepare_matrix(data, test)
        if isinstance(test, RatingMatrix):
            raise TypeError("fit: test must be a DataFrame, a path or a readers.Ratings, not a RatingMatrix")
        ratings = read_ratings(data, rating_scale=self.rating_scale, duplicates=self.duplicates)
        rm = to_rating_matrix(ratings)
        prep = _Prepared(train=rm.train, item_ids=rm.item_ids, user_ids=rm.user_ids,
                         rating_scale=tuple(rm.rating_scale), offset=float(rm.meta["offset"]), name=rm.name)
        if test is not None:
            prep.test = self._read_test(test, ratings.rating_scale, ratings.offset)
        return prep

    def _prepare_matrix(self, data: RatingMatrix, test: Any) -> _Prepared:
        if test is not None and data.test is not None:
            raise ValueError("fit: the RatingMatrix already has a test split; do not pass test as well")
        offset = float(data.meta.get("offset", 0.0))
        prep = _Prepared(train=data.train, item_ids=np.asarray(data.item_ids), user_ids=np.asarray(data.user_ids),
                         rating_scale=tuple(data.rating_scale), offset=offset, val=data.val, name=data.name)
        if data.test is not None and data.test.nnz:
            coo = data.test.tocoo()
            prep.test = pd.DataFrame({"user": prep.user_ids[coo.col], "item": prep.item_ids[coo.row],
                                      "rating": coo.data.astype(np.float64)})
        elif test is not None:
            lo, hi = prep.rating_scale
            prep.test = self._read_test(test, (lo - offset, hi - offset), offset)
        return prep

    def _read_test(self, test: Any, scale: tuple[float, float], offset: float) -> pd.DataFrame:
        """Test ratings (in the model's scale, else an error naming the line) as user, item, internal rating."""
        r = read_ratings(test, rating_scale=scale, duplicates=self.duplicates, offset=offset)
        return pd.DataFrame({"user": r.df["user"].to_numpy(), "item": r.df["item"].to_numpy(),
                             "rating": r.df["rating"].to_numpy(dtype=np.float64) + offset})

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """Write the fitted model as directory ``path`` (atomically; see the module docstring)."""
        self._check_fitted()
        from glocalk.store import versions

        tensors: dict[str, torch.Tensor] = {}
        for k, m in enumerate(self._members):
            tensors.update({f"member{k}.{name}": t for name, t in m.state.items()})
        tensors.update(_csr_tensors("input", self._input))
        if self._val is not None:
            tensors.update(_csr_tensors("val", self._val))
        meta = {
            "kind": MODEL_KIND,
            "hyperparameters": self._params,
            "estimator": self.get_params(),
            "n_items": int(self._input.shape[0]), "n_users": int(self._input.shape[1]),
            "item_ids": _ids_to_json(self.item_ids_), "user_ids": _ids_to_json(self.user_ids_),
            "item_id_type": _id_type(self.item_ids_), "user_id_type": _id_type(self.user_ids_),
            "rating_scale": list(self._internal_scale), "offset": self.offset_,
            "path": self._path,
            "members": [{"seed": m.seed, "stage": m.stage, "epoch": m.epoch} for m in self._members],
            "history": {str(m.seed): m.history for m in self._members},
            "fingerprint": _fingerprint(self._seen),
            "input_fingerprint": _fingerprint(self._input),
            "metrics": self.metrics_,
            "versions": versions(),
        }
        return save_dir(path, tensors, meta, extra_files)

    @classmethod
    def load(cls, path: str | Path) -> GLocalKRecommender:
        """Read a model directory written by ``save``; CheckpointError names the file and the problem."""
        path = Path(path)
        tensors, meta = load_dir(path)
        where = path / "model.json"
        if meta.get("kind") != MODEL_KIND:
            raise CheckpointError(f"{where}: not a glocalk model (kind={meta.get('kind')!r}, expected {MODEL_KIND!r})")
        try:
            est = _restore(cls, path, tensors, meta)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            detail = f"missing entry {e}" if isinstance(e, KeyError) else str(e)
            raise CheckpointError(f"{path} is incompatible or corrupt: {detail}") from e
        return est


_EXPLICIT = ("preset", "seed", "n_ensemble", "val_frac", "patience", "rating_scale", "duplicates", "unknown",
             "device", "path", "optimizer", "threads")
_DEFAULTS = {"preset": "ml-100k", "seed": 1, "n_ensemble": None, "val_frac": None, "patience": None,
             "rating_scale": None, "duplicates": "error", "unknown": "error", "device": "cpu", "path": "auto",
             "optimizer": "scipy", "threads": None}


# -- cross-validation, pair files and example data -------------------------------------------


def cross_validate(estimator: GLocalKRecommender, data: Any, folds: int = 5, seed: int = 0, *,
                   on_epoch: Callable[[int, int, dict], None] | None = None,
                   checkpoint_dir: str | Path | None = None, resume: bool = False) -> dict:
    """k-fold cross-validation: fit a clone of ``estimator`` per fold, return per-fold and mean ± std metrics.

    ``data`` is anything ``fit`` reads except a RatingMatrix. Folds are ``splits.kfold(ratings, folds,
    seed)``; a fold's test ratings whose user or item is absent from its training part are skipped
    (``n_skipped``). ``on_epoch(fold, seed, record)``; ``checkpoint_dir/fold-K`` keeps each fold's
    training state for ``resume``. Returns ``{"folds", "seed", "per_fold": [...], "mean": {...},
    "std": {...}}`` (std with ddof=1 over the folds; NaN NDCGs are left out of its mean and std).
    """
    from glocalk.data.splits import kfold

    ratings = read_ratings(data, rating_scale=estimator.rating_scale, duplicates=estimator.duplicates)
    per_fold = []
    for k, (train, test) in enumerate(kfold(ratings, folds, seed), start=1):
        callback = None if on_epoch is None else (lambda s, rec, k=k: on_epoch(k, s, rec))
        fold_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"fold-{k}"
        model = estimator.clone().fit(train, test=test, on_epoch=callback, checkpoint_dir=fold_dir, resume=resume)
        per_fold.append({"fold": k, "n_train": len(train), "n_test": len(test), **model.metrics_})
    out: dict = {"folds": folds, "seed": seed, "per_fold": per_fold, "mean": {}, "std": {}}
    for key in ("rmse", "mae", "ndcg"):
        v = np.array([f[key] for f in per_fold], dtype=np.float64)
        v = v[np.isfinite(v)]
        out["mean"][key] = float(v.mean()) if len(v) else float("nan")
        out["std"][key] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return out


# -- training one member ---------------------------------------------------------------------


def _train_member(data: RatingMatrix, params: dict, seed: int, on_epoch: Callable[[dict], None] | None,
                  state_dir: Path | None, resume: bool) -> _Member:
    """Train one seed with ``glocalk.protocol.train_run`` (its state in ``state_dir``; a finished one is reused)."""
    model_config, train_config = split_config({**params, "seed": seed})
    record = train_run(data, model_config, train_config,
                       RunOptions(state_dir=state_dir, resume=resume, on_epoch=on_epoch))
    history = [{**rec, "path": record.path} for rec in record.history]
    return _Member(seed, record.model.stage, record.model.epoch, record.model.state, history)


def _model_with(state: dict[str, torch.Tensor], shape: tuple[int, int], config: Any) -> GLocalK:
    """A CPU GLocal-K holding ``state`` (RuntimeError if it does not fit); leaves torch's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        model = GLocalK(shape[0], shape[1], config)
    model.load_state_dict(state)
    return model


def _serving_path(m: sp.csr_matrix, requested: str) -> str:
    return choose_execution(m.shape, m.nnz, requested)


# -- restoring a saved model -----------------------------------------------------------------


def _restore(cls: type[GLocalKRecommender], path: Path, tensors: dict[str, torch.Tensor],
             meta: dict) -> GLocalKRecommender:
    where = path / "model.json"
    n_items, n_users = int(meta["n_items"]), int(meta["n_users"])
    item_ids = _ids_from_json(meta["item_ids"], meta["item_id_type"], f"{where}: item_ids")
    user_ids = _ids_from_json(meta["user_ids"], meta["user_id_type"], f"{where}: user_ids")
    if len(item_ids) != n_items or len(user_ids) != n_users:
        raise CheckpointError(f"{where}: {len(item_ids)} item ids and {len(user_ids)} user ids for a "
                              f"{n_items} x {n_users} model")
    for label, ids in (("item", item_ids), ("user", user_ids)):
        if len(pd.unique(ids)) != len(ids):
            raise CheckpointError(f"{where}: the {label} ids are not unique")
    weights = path / "weights.safetensors"
    input_m = _csr_from_tensors(tensors, "input", (n_items, n_users), weights)
    val = _csr_from_tensors(tensors, "val", (n_items, n_users), weights) if "val.indptr" in tensors else None
    seen = input_m if val is None else _csr(input_m + val)
    if _fingerprint(input_m) != meta["input_fingerprint"] or _fingerprint(seen) != meta["fingerprint"]:
        raise CheckpointError(f"{weights}: the stored training matrix does not match the fingerprint in {where} "
                              "(the files are corrupt or come from different models)")
    params = dict(meta["hyperparameters"])
    try:
        model_config, _ = split_config({k: v for k, v in params.items() if k != "seed"})
    except KeyError as e:
        raise CheckpointError(f"{where}: incompatible hyperparameters: {e.args[0]}") from e
    members = []
    for k, info in enumerate(meta["members"]):
        prefix = f"member{k}."
        state = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{weights}: no weights for member {k} (seed {info.get('seed')})")
        try:
            _model_with(state, (n_items, n_users), model_config)
        except RuntimeError as e:
            raise CheckpointError(f"{weights}: the weights of member {k} do not fit the model in {where}: {e}") from e
        history = meta.get("history", {}).get(str(info["seed"]), [])
        members.append(_Member(int(info["seed"]), int(info["stage"]), int(info["epoch"]), state, history))
    if not members:
        raise CheckpointError(f"{where}: the model has no members")
    scale = tuple(float(x) for x in meta["rating_scale"])
    offset = float(meta["offset"])
    if len(scale) != 2 or not scale[0] < scale[1] or not math.isfinite(offset):
        raise CheckpointError(f"{where}: invalid rating scale {meta['rating_scale']} or offset {meta['offset']}")
    # The constructor arguments as given (the model itself is built from "hyperparameters" above).
    est_params = dict(meta.get("estimator", {}))
    if isinstance(est_params.get("rating_scale"), list):
        est_params["rating_scale"] = tuple(est_params["rating_scale"])
    est = cls(**est_params)
    prep = _Prepared(train=input_m, item_ids=item_ids, user_ids=user_ids, rating_scale=scale, offset=offset)
    est._install(input_m, val, seen, prep, members, params, path=meta.get("path"))
    est.metrics_ = meta.get("metrics")
    return est


# -- helpers -----------------------------------------------------------------------------------


def _fingerprint(m: sp.csr_matrix) -> str:
    return RatingMatrix(_csr(m)).fingerprint()


def _csr_tensors(prefix: str, m: sp.csr_matrix) -> dict[str, torch.Tensor]:
    m = _csr(m)
    return {f"{prefix}.indptr": torch.from_numpy(m.indptr.astype(np.int64)),
            f"{prefix}.indices": torch.from_numpy(m.indices.astype(np.int64)),
            f"{prefix}.data": torch.from_numpy(m.data.astype(np.float32))}


def _csr_from_tensors(tensors: dict[str, torch.Tensor], prefix: str, shape: tuple[int, int],
                      where: Path) -> sp.csr_matrix:
    try:
        indptr, indices, data = (tensors[f"{prefix}.{k}"].numpy() for k in ("indptr", "indices", "data"))
    except KeyError as e:
        raise CheckpointError(f"{where}: the stored training matrix is missing ({e.args[0]})") from e
    ok = (indptr.ndim == indices.ndim == data.ndim == 1 and len(indptr) == shape[0] + 1 and indptr[0] == 0
          and indptr[-1] == len(indices) == len(data) and np.all(np.diff(indptr) >= 0)
          and (len(indices) == 0 or (indices.min() >= 0 and indices.max() < shape[1])))
    if not ok:
        raise CheckpointError(f"{where}: the stored {prefix} matrix is malformed for a {shape[0]} x {shape[1]} model")
    return _csr(sp.csr_matrix((data, indices, indptr), shape=shape))


def _id_type(ids: np.ndarray) -> str:
    values = list(ids)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return "int"
    if all(isinstance(v, str) for v in values):
        return "str"
    raise DataError("ids must be all integers or all strings to be saved "
                    f"(found {sorted({type(v).__name__ for v in values})})")


def _ids_to_json(ids: np.ndarray) -> list:
    return [int(v) for v in ids] if _id_type(ids) == "int" else [str(v) for v in ids]


def _ids_from_json(values: Any, kind: Any, where: str) -> np.ndarray:
    if not isinstance(values, list):
        raise CheckpointError(f"{where} is not a list")
    if kind == "int" and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.int64)
    if kind == "str" and all(isinstance(v, str) for v in values):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    raise CheckpointError(f"{where}: ids do not match their recorded type {kind!r}")


def _unknown_message(users: np.ndarray, items: np.ndarray, bad_u: np.ndarray, bad_i: np.ndarray) -> str:
    parts = []
    for label, ids, bad in (("user", users, bad_u), ("item", items, bad_i)):
        if bad.any():
            pos = np.flatnonzero(bad)
            uniq = list(dict.fromkeys(ids[pos].tolist()))
            example = ", ".join(repr(v) for v in uniq[:5]) + (", ..." if len(uniq) > 5 else "")
            parts.append(f"unknown {label}{'s' if len(uniq) > 1 else ''} {example} (first at pair {pos[0] + 1})")
    return "; ".join(parts) + ": not in the training data (predict with unknown='baseline' to fall back " \
                              "to a user/item bias model)"
