"""The scoring core behind ``GLocalKRecommender``: a trained model reduced to what scoring needs.

Integer indices in, unclipped scores in the matrices' units out; raw ids, the unknown-id policy,
clipping and the user's units are the estimator's (the shell's) business. Each member becomes
(H, W*K, b): the last hidden layer of the training matrix (n_items, n_hid), the output layer's
effective weights (n_hid, n_users) and bias (n_users), so a score is H[i] . (W*K)[:, u] + b[u].
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from glocalk.baselines import entries, fit_biases
from glocalk.errors import CheckpointError, ConfigError
from glocalk.inputs import CONV_DENSE_MAX_ENTRIES, choose_execution, prepare_input
from glocalk.model import GLocalK, GLocalKConfig
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
    model answers everything: ``scores``, ``user_scores`` and the unknown-id ``baseline``.
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
        for m in model.members:
            net = _model_with(m.state, model.input.shape, config)
            h, weights = net.hidden_representation(data, m.stage)
            w, b = weights[-1]
            # Fortran order: a user's column w[:, u] is contiguous, which makes one user's scores (h @ w[:, u])
            # several times faster; the same numbers.
            self.factors.append((h.numpy(), np.asfortranarray(w.detach().numpy()), b.detach().numpy()))
        seen = model.seen
        items, users, ratings = entries(seen)
        self.mu, self.b_item, self.b_user = fit_biases(items, users, ratings, seen.shape,
                                                       (BASELINE_REG, BASELINE_REG), BASELINE_SWEEPS)
        self.biases_answer = False
        if model.fallback is not None and model.fallback.answer == "biases":
            self._use_biases(model.fallback)

    def _use_biases(self, fallback: Fallback) -> None:
        self.biases_answer = True
        self.mu, self.b_item, self.b_user = fallback.mu, fallback.b_item, fallback.b_user

    def answering_with(self, fallback: Fallback) -> Scorer:
        """A copy of this scorer whose answers are ``fallback``'s bias model (the members are shared)."""
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
        return self.rating_map.to_user(out / len(self.factors))

    def user_scores(self, u: int) -> np.ndarray:
        """The members' mean score of every item for user index ``u``: (n_items,)."""
        if self.biases_answer:
            return self.mu + self.b_item + self.b_user[u]
        return self.rating_map.to_user(np.mean([h @ w[:, u] + b[u] for h, w, b in self.factors], axis=0,
                                               dtype=np.float64))

    def baseline(self, items: np.ndarray, users: np.ndarray) -> np.ndarray:
        """mu + b_item + b_user, leaving out the bias of an unknown (-1) index."""
        return (self.mu + np.where(items >= 0, self.b_item[np.maximum(items, 0)], 0.0)
                + np.where(users >= 0, self.b_user[np.maximum(users, 0)], 0.0))


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
