"""The scoring core behind ``GLocalKRecommender``: a trained model reduced to what scoring needs.

Integer indices in, unclipped scores in the matrices' units out; raw ids, the unknown-id policy,
clipping and the user's units are the estimator's (the shell's) business. Each member becomes
(H, W*K, b): the last hidden layer of the training matrix (n_items, n_hid), the output layer's
effective weights (n_hid, n_users) and bias (n_users), so a score is H[i] . (W*K)[:, u] + b[u].
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from glocalk.baselines import entries, fit_biases
from glocalk.errors import CheckpointError, ConfigError
from glocalk.fold_in import LBFGS_STEPS, MemberFold, encode_items, fit_users, fold_biases, member_fold
from glocalk.inputs import CONV_DENSE_MAX_ENTRIES, choose_execution, prepare_input
from glocalk.model import GLocalK, GLocalKConfig, Stage
from glocalk.model_dir import Fallback, SavedModel
from glocalk.presets import split_config

# The unknown-id fallback: baselines.Biases without a validation split (its default_reg, sweeps).
BASELINE_REG = 10.0
BASELINE_SWEEPS = 15
_CHUNK = 65536  # pairs per block in Scorer.scores, bounding memory at _CHUNK * n_hid floats


class Scorer:
    """Unclipped scores of a trained model at (item index, user index) pairs, in the matrices' units.

    Built once from a ``model_dir.SavedModel``: each member becomes (H, W*K, b) on the CPU (so
    save -> load scores identically), and a regularised bias model of all training ratings is
    the fallback for unknown ids (``baseline``; index -1 marks an unknown id there). When the
    model's ``fallback`` chose the bias model (``answer == "biases"``), that validation-chosen bias
    model answers everything: ``scores``, ``user_scores`` and the unknown-id ``baseline``. When it
    chose the blend (``answer == "blend"``), ``scores``, ``user_scores`` and ``block_scores`` are
    alpha * the members' mean + (1 - alpha) * that bias model, each clipped to the training scale
    first (``glocalk.comparison``), and the bias model alone answers unknown ids.

    Fold-in (``fold_in``, ``glocalk.fold_in``) extends the index spaces: new items are rows past the
    trained ones, new users columns past them; a model's stored ``folded`` part is re-applied on load.
    """

    def __init__(self, model: SavedModel) -> None:
        config, _ = split_config({k: v for k, v in model.hyperparameters.items() if k != "seed"})
        requested = model.hyperparameters.get("path", "auto")
        self.execution = model.execution or choose_execution(model.input.shape, model.input.nnz, requested)
        if self.execution == "dense" and model.input.shape[0] * model.input.shape[1] > CONV_DENSE_MAX_ENTRIES:
            # Same maths either way; a dense matrix over 1 GiB is never built from a file's say-so.
            self.execution = "sparse"
        # The members were trained on the input in the model's units: map it there, and scores back.
        self.rating_map = model.rating_map
        data = prepare_input(self.rating_map.matrix_to_model(model.input), self.execution == "sparse",
                             config.gk_size, "cpu")
        self.factors: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.folds: list[MemberFold] = []
        for m in model.members:
            net = _model_with(m.state, model.input.shape, config)
            h, weights = net.hidden_representation(data, m.stage)
            w, b = weights[-1]
            # Fortran order: a user's column w[:, u] is contiguous, which makes one user's scores (h @ w[:, u])
            # several times faster; the same numbers.
            self.factors.append((h.numpy(), np.asfortranarray(w.detach().numpy()), b.detach().numpy()))
            uses_conv = Stage(m.stage) == Stage.FINETUNE and config.global_kernel
            self.folds.append(member_fold(net, data, uses_conv, weights))
        self.n_trained_users = model.input.shape[1]
        seen = model.seen
        items, users, ratings = entries(seen)
        self.mu, self.b_item, self.b_user = fit_biases(items, users, ratings, seen.shape,
                                                       (BASELINE_REG, BASELINE_REG), BASELINE_SWEEPS)
        self.biases_answer = False
        self.alpha: float | None = None  # the blend's weight of GLocal-K; None: no blend
        self.clip = tuple(float(x) for x in model.rating_scale)  # internal units: the blend's parts are clipped
        self.bias_regs = (BASELINE_REG, BASELINE_REG)
        if model.fallback is not None and model.fallback.answer in ("biases", "blend"):
            self._use_biases(model.fallback)
        if model.folded is not None:
            f = model.folded
            self._extend(self._encoded(f.ratings, len(f.item_ids)), f.columns, (f.b_item, f.b_user))

    def _use_biases(self, fallback: Fallback) -> None:
        """Answer with ``fallback``: its bias model alone, or blended with the members (answer "blend")."""
        self.biases_answer = fallback.answer != "blend"
        self.alpha = fallback.alpha if fallback.answer == "blend" else None
        self.mu, self.b_item, self.b_user = fallback.mu, fallback.b_item, fallback.b_user
        self.bias_regs = (float(fallback.info.get("reg_item", BASELINE_REG)),
                          float(fallback.info.get("reg_user", BASELINE_REG)))

    @property
    def shape(self) -> tuple[int, int]:
        """(n_items, n_users) the scorer knows: trained plus folded in."""
        return len(self.b_item), len(self.b_user)

    def fold_in(self, ratings: sp.csr_matrix, steps: int = LBFGS_STEPS
                ) -> tuple[Scorer, list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
        """A scorer that also knows new items and users: (scorer, users' columns per member, (new b_item, b_user)).

        ``ratings`` (internal units) has the shape of the extended index spaces and holds only the new
        ratings: rows past ``shape[0]`` are new items (encoded from their ratings by trained users),
        columns past ``shape[1]`` new users (fitted to all their ratings, ``glocalk.fold_in``). This
        scorer is unchanged.
        """
        ratings = sp.csr_matrix(ratings, dtype=np.float64)
        n_new_items = ratings.shape[0] - self.shape[0]
        new_h = self._encoded(ratings, n_new_items)
        targets = ratings[:, self.shape[1]:].tocsc()
        targets.data = self.rating_map.to_model(targets.data)
        columns = [fit_users(np.vstack([h, extra]), targets, fold, steps)
                   for (h, _, _), fold, extra in zip(self.factors, self.folds, new_h, strict=True)]
        biases = fold_biases(self.mu, self.b_item, self.b_user, ratings, self.n_trained_users, self.bias_regs)
        other = copy.copy(self)
        other._extend(new_h, columns, biases)
        return other, columns, biases

    def _encoded(self, ratings: sp.csr_matrix, n_new_items: int) -> list[np.ndarray]:
        """Each member's last hidden layer (n_new_items, n_hid) of the last ``n_new_items`` rows of ``ratings``,
        read over the trained users (model units)."""
        x = sp.csr_matrix(ratings)[ratings.shape[0] - n_new_items:, : self.n_trained_users].toarray()
        x = self.rating_map.to_model(x) * (x > 0)  # an unrated entry stays 0 under any rating map
        return [encode_items(fold, x) for fold in self.folds]

    def _extend(self, new_h: list[np.ndarray], columns: list[tuple[np.ndarray, np.ndarray]],
                biases: tuple[np.ndarray, np.ndarray]) -> None:
        """Append new items' hidden rows, new users' output columns and both biases (new arrays: copies of
        this scorer share the old ones)."""
        self.factors = [(np.vstack([h, extra]), np.asfortranarray(np.hstack([w, cw])), np.concatenate([b, cb]))
                        for (h, w, b), extra, (cw, cb) in zip(self.factors, new_h, columns, strict=True)]
        self.b_item = np.concatenate([self.b_item, biases[0]])
        self.b_user = np.concatenate([self.b_user, biases[1]])

    def answering_with(self, fallback: Fallback) -> Scorer:
        """A copy of this scorer whose answers are ``fallback``'s bias model, or with answer "blend" its
        blend with the members (the members are shared)."""
        other = copy.copy(self)
        other._use_biases(fallback)
        return other

    def scores(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        """The members' mean score at each (item, user) index pair: (n_pairs,)."""
        if self.biases_answer:
            return self.baseline(items, users)
        out = np.zeros(len(items), dtype=np.float64)
        for start in range(0, len(items), _CHUNK):
            i, u = items[start: start + _CHUNK], users[start: start + _CHUNK]
            for h, w, b in self.factors:
                out[start: start + len(i)] += np.einsum("nh,hn->n", h[i], w[:, u]) + b[u]
        return self._blended(self.rating_map.to_user(out / len(self.factors)), lambda: self.baseline(items, users))

    def user_scores(self, u: int) -> np.ndarray:
        """The members' mean score of every item for user index ``u``: (n_items,)."""
        if self.biases_answer:
            return self.mu + self.b_item + self.b_user[u]
        mean = self.rating_map.to_user(np.mean([h @ w[:, u] + b[u] for h, w, b in self.factors], axis=0,
                                               dtype=np.float64))
        return self._blended(mean, lambda: self.mu + self.b_item + self.b_user[u])

    def block_scores(self, users: np.ndarray) -> np.ndarray:
        """The members' mean score of every item for each user index in ``users``: (len(users), n_items).

        ``user_scores`` for a block of users at once: one matrix product per member.
        """
        if self.biases_answer:
            return self.mu + self.b_item[None, :] + self.b_user[users, None]
        out = np.zeros((len(users), len(self.b_item)), dtype=np.float64)
        for h, w, b in self.factors:
            out += (h @ w[:, users]).T + b[users, None]  # (n_users_block, n_items)
        return self._blended(self.rating_map.to_user(out / len(self.factors)),
                             lambda: self.mu + self.b_item[None, :] + self.b_user[users, None])

    def _blended(self, members: np.ndarray, biases: Callable[[], np.ndarray]) -> np.ndarray:
        """``members`` as they are, or with a blend alpha * members + (1 - alpha) * ``biases()``, both clipped."""
        if self.alpha is None:
            return members
        lo, hi = self.clip
        return self.alpha * np.clip(members, lo, hi) + (1.0 - self.alpha) * np.clip(biases(), lo, hi)

    def baseline(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        """mu + b_item + b_user, leaving out the bias of an unknown (-1) index."""
        return (self.mu + np.where(items >= 0, self.b_item[np.maximum(items, 0)], 0.0)
                + np.where(users >= 0, self.b_user[np.maximum(users, 0)], 0.0))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``scores`` (n_rows, n_cols), the column indices of the ``k`` highest scores in descending
    order, ties by ascending column: a row's first ``k`` of a stable sort by descending score. (n_rows, k)

    An argpartition, then a sort of the ``k`` chosen; a row whose ``k``-th score is tied with unchosen
    columns is sorted in full, so ties are broken exactly as the stable sort breaks them.
    """
    k = min(k, scores.shape[1])
    if k == scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    rows = np.arange(len(scores))[:, None]
    chosen = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (n_rows, k), unordered
    values = scores[rows, chosen]
    kth = values.min(1, keepdims=True)
    tied = (scores == kth).sum(1) != (values == kth).sum(1)
    order = np.lexsort((chosen, -values), axis=1)
    out = chosen[rows, order]
    if tied.any():
        out[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
    return out


def _model_with(state: dict[str, torch.Tensor], shape: tuple[int, int], config: GLocalKConfig) -> GLocalK:
    """A CPU GLocal-K holding ``state``; leaves torch's RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        model = GLocalK(shape[0], shape[1], config)
    model.load_state_dict(state)
    return model


def check_weights(model: SavedModel, path: Path) -> None:
    """Every member's weights against the network model.json describes, built on the meta device
    (shapes only, nothing allocated), so that no real network is built from a mismatched file."""
    where = path / "model.json"
    try:
        config, _ = split_config({k: v for k, v in model.hyperparameters.items() if k != "seed"})
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{where}: incompatible hyperparameters: {e.args[0]}") from e
    with torch.device("meta"):
        net = GLocalK(model.input.shape[0], model.input.shape[1], config)
    expected = {name: (tuple(t.shape), t.dtype) for name, t in net.state_dict().items()}
    for k, member in enumerate(model.members):
        label = f"{path / 'weights.safetensors'}: member {k}"
        odd = sorted(set(member.state) ^ set(expected))
        if odd:
            raise CheckpointError(f"{label}: weights do not fit the model in {where} "
                                  f"(missing or unexpected: {odd[:5]})")
        for name, t in member.state.items():
            if (tuple(t.shape), t.dtype) != expected[name]:
                raise CheckpointError(f"{label}: weights do not fit the model in {where}: {name} is {t.dtype} "
                                      f"{tuple(t.shape)}, expected {expected[name][1]} {expected[name][0]}")
