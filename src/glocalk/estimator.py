"""GLocal-K for your own ratings: a scikit-learn / Surprise style estimator.

::

    from glocalk.estimator import GLocalKRecommender

    model = GLocalKRecommender(n_hid=100, epoch_p=10, epoch_f=20, val_frac=0.05)
    model.fit("ratings.csv")                     # or a DataFrame, a readers.Ratings, a RatingMatrix
    model.predict(["alice", "bob"], ["m1", "m7"])  # raw ids in, ratings out (in the file's scale)
    model.recommend("alice", k=10)                 # DataFrame: item, score, rank
    model.save("my-model")                         # a directory; GLocalKRecommender.load("my-model")

A shell around a scoring core, as Surprise's ``AlgoBase.predict`` is around each algorithm's
``estimate``. The shell (``GLocalKRecommender``) maps raw ids to indices, applies the unknown-id
policy, clips to the rating scale and shifts back to the user's units; the core
(``scoring.Scorer``) scores integer indices with the chosen weights (the validation-selected
epoch when ``val_frac`` is set, else the last), averaging an ensemble's members. A NaN or
infinite score is an error naming the model, never a skipped pair.

Unknown ids. ``unknown="error"`` (default) raises DataError naming the id; ``"baseline"``
answers with a regularised bias model fitted on the training ratings
(mu + b_item + b_user; mu + b_item for an unknown user, mu + b_user for an unknown item, mu
when both are unknown); a recommendation for an unknown user is then the item-bias order.

Rating scale. Predictions are clipped to ``rating_scale`` if given, else to the training
ratings' min..max. Test ratings must lie in a given scale; with a derived one they are taken
as they are (a test rating beyond the training range is scored against the clipped prediction).
RMSE and MAE are in the user's units; NDCG's gains on the scale mapped onto 1..5.

Never silently worse than a bias model. With a validation split, ``fit`` also fits the user + item
bias model (``baselines.Biases``) on the same training ratings, chooses its regularisation on the
same validation ratings, and scores both (``comparison_``, see ``glocalk.comparison``);
``fallback="baseline"`` makes the model answer with the one that wins on validation, ``fallback="blend"``
with their validation-weighted blend.

Sharded over processes (torchrun, ``glocalk fit --nproc``; docs/DISTRIBUTED.md): every process calls
``fit`` alike and trains its block of users; rank 0 alone ends fitted (the weights gathered there) and
computes the comparison and the test metrics, which the other processes receive (``metrics_``,
``comparison_``, ``members_``, ``history_``) without becoming fitted.

The model directory format is ``glocalk.model_dir``'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glocalk.answering import UNKNOWN_POLICIES, Answering
from glocalk.autoconfig import AUTO, Settings, base_params, check_budget, own_data_defaults, search
from glocalk.baselines import entries
from glocalk.comparison import FALLBACKS, blend_alpha, fit_bias_model, not_compared, split_metrics, summarise
from glocalk.data.matrix import RatingMatrix
from glocalk.data.options import DUPLICATE_POLICIES
from glocalk.data.readers import IdMap
from glocalk.distributed import current_group
from glocalk.errors import CheckpointError, ConfigError, DataError
from glocalk.fold_in import LBFGS_STEPS
from glocalk.fold_in_data import batch, merged
from glocalk.model_dir import SavedModel, fingerprint, load_model, save_model
from glocalk.own_data import prepare, read_test
from glocalk.presets import MODEL_KEYS, preset
from glocalk.protocol import RunOptions, member_of, train_member
from glocalk.scoring import Scorer, check_weights
from glocalk.train import DEFAULT_OPTIMIZER

# Hyperparameters accepted as keywords besides the explicit constructor arguments.
HYPERPARAMETER_KEYS = tuple(MODEL_KEYS) + ("epoch_p", "epoch_f", "iter_p", "iter_f")

OnEpoch = Callable[[int, dict], None]


# -- the shell -------------------------------------------------------------------------------


class GLocalKRecommender(Answering):
    """GLocal-K as an estimator: hyperparameters at construction, ``fit``, ``predict``, ``recommend``.

    Args:
        preset: None (default): the own-data default (``autoconfig.own_data_defaults``): "auto" on a
            validation split (``val_frac``, default 0.1) with ``fallback="blend"``. Or a paper preset
            whose hyperparameters are the defaults ("ml-100k", "ml-1m", "douban"), exactly as published,
            or "auto": a budgeted search on the validation ratings (``glocalk.autoconfig``; needs ``val_frac``)
            whose first candidate is ml-100k's preset; its record is ``auto_``.
        budget: with preset "auto", start no new candidate after this many minutes (default 10).
        seed: a seed (default 1, as ``glocalk fit``), or a sequence of seeds: one model per seed,
            predictions averaged (an ensemble).
        n_ensemble: train this many models with seeds ``seed, seed+1, ...`` (``seed`` must be an int).
        val_frac: hold out this seeded fraction of the training ratings to choose the epoch
            (the fine-tuning epoch with the lowest validation RMSE); None: use the last epoch (0.1
            when no preset is given).
        patience: stop fine-tuning after this many epochs without a better validation RMSE.
        rating_scale: (min, max) of the ratings in the data's own scale; default: the observed
            range of the training ratings.
        duplicates: a repeated (user, item) pair is an "error", or keep the "last", the "first" or the "mean".
        unknown: an id not seen in training is an "error" at predict/recommend time, or gets the
            "baseline" (bias model) prediction.
        fallback: "none": GLocal-K answers; "baseline": the model answers with the better, on the
            validation ratings, of GLocal-K and the user + item bias model (needs ``val_frac``);
            "blend": with alpha * GLocal-K + (1 - alpha) * the bias model, alpha in [0, 1] the
            least-squares weight on the validation ratings (needs ``val_frac``; ``glocalk.comparison``).
            Default: "blend" when no preset is given, else "none".
        device, path, optimizer, threads: execution options of ``train.TrainConfig`` (optimizer
            "lbfgsb" by default: SciPy's L-BFGS-B in torch; "scipy" is the host reference).
        **hyperparameters: any ``GLocalKConfig`` field (n_hid, n_dim, n_layers, gk_size, lambda_2,
            lambda_s, dot_scale, gk_norm, output_bias, local_kernel, global_kernel) and epoch_p, epoch_f,
            iter_p, iter_f; unset ones take the preset's value.

    Attributes set by ``fit`` / ``load``: ``user_ids_``, ``item_ids_`` (raw ids, index order),
    ``rating_scale_`` (the clip range, in the data's scale), ``offset_``, ``rating_map_`` (internal units
    onto the model's 1..5, ``data.scaling``), ``members_`` (seed, stage, epoch per model), ``history_``
    (per-member epoch records), ``metrics_`` (test metrics, when a test set was given),
    ``fingerprint_`` (of the training ratings),
    ``model_`` (the trained model as a ``model_dir.SavedModel``: matrices, ids, members' weights),
    ``scorer_`` (the scoring core), ``comparison_`` (GLocal-K against the bias model on the same
    split, ``glocalk.comparison``; set by ``fit`` only).
    """

    def __init__(self, preset: str | None = None, *, seed: int | Sequence[int] = 1, n_ensemble: int | None = None,
                 val_frac: float | None = None, patience: int | None = None,
                 rating_scale: tuple[float, float] | None = None, duplicates: str = "error",
                 unknown: str = "error", device: str = "cpu", path: str = "auto", optimizer: str = DEFAULT_OPTIMIZER,
                 threads: int | None = None, fallback: str | None = None, budget: float | None = None,
                 **hyperparameters: Any) -> None:
        self.preset = preset
        self.budget = budget
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
        self.fallback = fallback
        bad = sorted(set(hyperparameters) - set(HYPERPARAMETER_KEYS))
        if bad:
            raise TypeError(f"unknown hyperparameter(s) {', '.join(bad)}; known: {', '.join(HYPERPARAMETER_KEYS)}")
        self.hyperparameters = dict(hyperparameters)
        self._check_params()
        self._fitted = False
        self._source: Path | None = None  # the model directory this was loaded from

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

    def settings(self) -> Settings:
        """The preset, validation fraction and fallback a fit runs with (defaults filled in)."""
        return own_data_defaults(self.preset, self.val_frac, self.fallback)

    def _check_params(self) -> None:
        run = self.settings()
        if run.preset == AUTO:
            check_budget(self.budget)
            if run.val_frac is None:
                raise ConfigError("preset 'auto' (--preset auto) chooses on validation ratings: it needs a "
                                  "validation split (--val-frac / val_frac)")
        elif self.budget is not None:
            raise ConfigError("budget (--budget) applies to preset 'auto' (--preset auto) only")
        else:
            preset(run.preset)  # ConfigError naming the known presets
        if self.unknown not in UNKNOWN_POLICIES:
            raise ConfigError(f"unknown must be one of {UNKNOWN_POLICIES}, got {self.unknown!r}")
        if self.duplicates not in DUPLICATE_POLICIES:
            raise ConfigError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {self.duplicates!r}")
        if run.val_frac is not None and not 0.0 < run.val_frac < 1.0:
            raise ConfigError(f"val_frac (--val-frac) must be in (0, 1), got {run.val_frac}")
        if self.patience is not None and run.val_frac is None:
            raise ConfigError("patience needs a validation split (--val-frac / val_frac)")
        if run.fallback not in FALLBACKS:
            raise ConfigError(f"fallback (--fallback) must be one of {FALLBACKS}, got {run.fallback!r}")
        if run.fallback != "none" and run.val_frac is None:
            raise ConfigError(f"--fallback {run.fallback} (fallback='{run.fallback}') chooses on validation "
                              "ratings: it needs a validation split (--val-frac / val_frac)")
        self.seeds()

    def seeds(self) -> list[int]:
        """The seeds of the models to train: one, or several for an ensemble."""
        if isinstance(self.seed, (int, np.integer)):
            n = 1 if self.n_ensemble is None else int(self.n_ensemble)
            if n < 1:
                raise ConfigError(f"n_ensemble (--ensemble) must be >= 1, got {self.n_ensemble}")
            return [int(self.seed) + k for k in range(n)]
        seeds = [int(s) for s in self.seed]
        if not seeds:
            raise ConfigError("seed: give at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seed (--seed): repeated seeds in {seeds}")
        if self.n_ensemble is not None and self.n_ensemble != len(seeds):
            raise ConfigError(f"n_ensemble={self.n_ensemble} but {len(seeds)} seeds were given")
        return seeds

    def config(self) -> dict:
        """The flat hyperparameters a model is trained with (the preset, then the overrides)."""
        run = self.settings()
        params = base_params() if run.preset == AUTO else preset(run.preset)
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
                The clip range is ``rating_scale``, else the min..max of these ratings.
            test: held-out ratings in any of the same forms (not a RatingMatrix); never used in training.
            on_epoch: called as ``on_epoch(seed, record)`` after every epoch of every member (with preset
                "auto", as ``on_epoch("SEED (candidate K)", record)`` during the search).
            checkpoint_dir: keep each member's training state here after every epoch
                (``checkpoint_dir/seed-N``), so an interrupted fit can be resumed.
            resume: continue from the states in ``checkpoint_dir`` (same data and parameters);
                the result equals an uninterrupted fit with the same seeds.
        """
        self._check_params()
        run = self.settings()
        prep = prepare(data, test, self.rating_scale, self.duplicates)
        params = self.config()
        fit_data = RatingMatrix(prep.train, val=prep.val, item_ids=prep.item_ids, user_ids=prep.user_ids,
                                rating_scale=prep.rating_scale, name=prep.name)
        if prep.val is None and run.val_frac:
            # One validation split, drawn with the first seed, shared by all members so that
            # they read the same input matrix at serving time.
            fit_data = fit_data.with_validation(run.val_frac, seed=self.seeds()[0])
        if self.patience is not None and fit_data.val is None:
            raise ConfigError("patience needs a validation split (--val-frac / val_frac)")
        members = []
        self.auto_ = None
        for seed in self.seeds():
            member_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"seed-{seed}"
            callback = None if on_epoch is None else (lambda rec, seed=seed: on_epoch(seed, rec))
            if run.preset == AUTO and self.auto_ is None:
                label = None if on_epoch is None else (lambda k, rec, s=seed: on_epoch(f"{s} (candidate {k})", rec))
                self.auto_ = search(fit_data, {**params, "seed": seed}, set(self.hyperparameters), self.budget, label)
                params = {k: v for k, v in self.auto_.params.items() if k != "seed"}
                members.append(member_of(self.auto_.record, seed))
                continue
            members.append(train_member(fit_data, params, seed,
                                            RunOptions(state_dir=member_dir, resume=resume, on_epoch=callback)))
        val = fit_data.val if fit_data.val is not None and fit_data.val.nnz else None
        model = SavedModel(
            input=fit_data.train, val=val, item_ids=prep.item_ids, user_ids=prep.user_ids,
            rating_scale=prep.rating_scale, offset=prep.offset, hyperparameters=params, members=members,
            execution=members[0].history[-1].get("path") if members[0].history else None,
            rating_map=fit_data.rating_map)
        # Sharded over processes, the members' weights are whole on rank 0 alone (gathered): it scores,
        # compares and evaluates; the other ranks get the figures and stay unfitted.
        group = current_group()
        self.comparison_, self.metrics_ = group.on_writer(lambda: self._finish(model, fit_data, prep.test))
        if not group.writer:
            self._fitted = False
            self.members_ = [{"seed": m.seed, "stage": m.stage, "epoch": m.epoch} for m in members]
            self.history_ = {m.seed: m.history for m in members}
        return self

    def _finish(self, model: SavedModel, fit_data: RatingMatrix, test: pd.DataFrame | None
                ) -> tuple[dict, dict | None]:
        """Install the trained ``model``; (its comparison with the bias model, its metrics on ``test``)."""
        self._install(model)
        self._source = None
        comparison = self._compare(fit_data, test)  # with fallback "baseline" it may change the scorer
        return comparison, None if test is None else self._evaluate(test, "skip")

    def _compare(self, fit_data: RatingMatrix, test: pd.DataFrame | None) -> dict:
        """GLocal-K against the validation-chosen bias model on the same split (``glocalk.comparison``),
        and their blend with the least-squares weight on validation; with ``fallback="baseline"`` the
        winner on validation becomes the answer, with ``fallback="blend"`` the blend."""
        policy = self.settings().fallback
        if self.model_.val is None:
            if policy != "none":
                raise ConfigError(f"--fallback {policy} (fallback='{policy}') needs a validation split "
                                  "(--val-frac / val_frac)")
            return not_compared()
        fallback = fit_bias_model(replace(fit_data, rating_scale=self._clip))
        scorers = {"glocalk": self.scorer_, "biases": self.scorer_.answering_with(fallback)}
        items, users, truth = entries(self.model_.val)
        parts = (np.clip(scorers[name].scores(items, users), *self._clip) for name in ("glocalk", "biases"))
        blend = replace(fallback, answer="blend", alpha=blend_alpha(*parts, truth))
        scorers["blend"] = self.scorer_.answering_with(blend)
        figures = {"blend": {"alpha": blend.alpha}}
        for name, scorer in scorers.items():
            figures.setdefault(name, {})["val"] = split_metrics(scorer.scores, self.model_.val, self._clip,
                                                                self.offset_)
            if test is not None:
                figures[name]["test"] = self._evaluate(test, "skip", scorer)
        record = summarise(figures["glocalk"], figures["biases"], policy, fallback.info, figures["blend"])
        if policy != "none":
            answer = record["answer"]
            shown = ("glocalk", "biases", "blend") if answer == "blend" else ("glocalk", "biases")
            fallback.info.update(val_rmse={name: figures[name]["val"]["rmse"] for name in shown})
            chosen = blend if answer == "blend" else replace(fallback, answer=answer)
            self.model_ = replace(self.model_, fallback=chosen)
            self.scorer_ = scorers[answer]
        return record

    def _install(self, model: SavedModel, scorer: Scorer | None = None) -> None:
        """Set the fitted attributes and build the scoring core (or take ``scorer``, built for ``model``)."""
        self.scorer_ = scorer or Scorer(model)
        self.model_ = replace(model, execution=self.scorer_.execution)
        seen = model.seen
        self.fingerprint_ = fingerprint(seen)  # of the training ratings, folded-in ones aside
        self.item_ids_, self.user_ids_ = np.asarray(model.item_ids), np.asarray(model.user_ids)
        if model.folded is not None:
            f = model.folded
            seen = seen.copy()
            seen.resize(f.ratings.shape)
            seen = seen + f.ratings
            self.item_ids_ = np.concatenate([self.item_ids_, f.item_ids])
            self.user_ids_ = np.concatenate([self.user_ids_, f.user_ids])
        self._seen_t = seen.T.tocsr()  # (n_users, n_items): each user's rated items
        self._clip = tuple(float(x) for x in model.rating_scale)  # internal units
        self.offset_ = float(model.offset)
        self.rating_map_ = model.rating_map  # internal units -> the model's 1..5 (data.scaling)
        self.rating_scale_ = (self._clip[0] - self.offset_, self._clip[1] - self.offset_)
        self._ids = IdMap(user_ids=self.user_ids_, item_ids=self.item_ids_)
        self.members_ = [{"seed": m.seed, "stage": m.stage, "epoch": m.epoch} for m in model.members]
        self.history_ = {m.seed: m.history for m in model.members}
        self._fitted = True

    # -- fold-in ------------------------------------------------------------------------------

    def fold_in(self, ratings: Any, *, steps: int = LBFGS_STEPS, **read_options: Any) -> GLocalKRecommender:
        """A copy of this model that also knows the users and items of ``ratings``, absent from training.

        ``ratings``: a DataFrame (user, item, rating), a path or a ``readers.Ratings``, in the training
        data's units; ``read_options`` go to ``readers.read_ratings``. A new user's output column is fitted
        to their ratings, a new item is encoded by the network from its ratings by trained users;
        everything trained stays frozen (``glocalk.fold_in``; ``glocalk.fold_in_data`` says which
        ratings may be given). ``steps``: L-BFGS iterations per user when the local kernel is on.
        This model is unchanged; the copy saves and loads like any model. Its ``fold_in_`` counts what
        this call added (users, items, ratings used) and skipped (ratings of items nothing describes).
        """
        self._check_fitted()
        df = read_test(ratings, self.rating_scale, **{"duplicates": self.duplicates, **read_options})
        lo, hi = self.rating_scale_
        bad = ~df["rating"].between(lo, hi).to_numpy()
        if bad.any():
            k = int(np.argmax(bad))
            raise DataError(f"fold-in: rating {df['rating'].iloc[k]:g} (user {df['user'].iloc[k]!r}, item "
                            f"{df['item'].iloc[k]!r}) lies outside the model's rating scale {lo:g}..{hi:g}")
        new = batch(df, self._ids, self.scorer_.n_trained_users, self.offset_)
        scorer, columns, biases = self.scorer_.fold_in(new.ratings, steps)
        info = {"lbfgs_steps": steps, "n_ratings": int(new.ratings.nnz + (
            self.model_.folded.ratings.nnz if self.model_.folded is not None else 0))}
        other = copy.copy(self)
        other._install(replace(self.model_, folded=merged(self.model_.folded, new, columns, biases, info)), scorer)
        other.fold_in_ = {"n_users": len(new.user_ids), "n_items": len(new.item_ids), "n_ratings": int(new.ratings.nnz),
                          "n_skipped": new.n_skipped}
        return other

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path, extra_files: dict[str, str] | None = None,
             owned: tuple[str, ...] = ()) -> Path:
        """Write the fitted model as directory ``path``, atomically (format: ``glocalk.model_dir``).

        An existing ``path`` is replaced only when it holds nothing but a model's files (and
        ``extra_files`` / ``owned`` names); else OutputError and nothing is touched.
        """
        self._check_fitted()
        # The settings as run (defaults filled in): the directory says what was done, and reloads as it.
        run = self.settings()
        estimator = {**self.get_params(), "preset": run.preset, "val_frac": run.val_frac, "fallback": run.fallback}
        model = replace(self.model_, estimator=estimator, metrics=self.metrics_)
        return save_model(path, model, extra_files, owned)

    @classmethod
    def load(cls, path: str | Path) -> GLocalKRecommender:
        """Read a model directory written by ``save``; CheckpointError names the file and the problem."""
        path = Path(path)
        model = load_model(path)
        # The constructor arguments as given (the model itself is built from "hyperparameters").
        params = dict(model.estimator)
        if isinstance(params.get("rating_scale"), list):
            params["rating_scale"] = tuple(params["rating_scale"])
        try:
            est = cls(**params)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path / 'model.json'}: invalid estimator arguments: {e}") from e
        check_weights(model, path)
        est._install(model)
        est.auto_ = None  # the search's record is in report.json
        est.metrics_ = model.metrics
        est._source = path
        return est


_EXPLICIT = ("preset", "seed", "n_ensemble", "val_frac", "patience", "rating_scale", "duplicates", "unknown",
             "device", "path", "optimizer", "threads", "fallback", "budget")
_DEFAULTS = {"preset": None, "seed": 1, "n_ensemble": None, "val_frac": None, "patience": None,
             "rating_scale": None, "duplicates": "error", "unknown": "error", "device": "cpu", "path": "auto",
             "optimizer": DEFAULT_OPTIMIZER, "threads": None, "fallback": None, "budget": None}
