"""One behaviour test with a known answer, run on every model (GLocal-K and each baseline).

The ratings are a block matrix: items fall in two groups (A, B), users in two groups (X, Y), and a
rating is its block's value, A-X 5, A-Y 3, B-X 1, B-Y 2. Every user has two A and two B ratings
withheld. What each model must answer there follows from the construction and from what the model
can represent, never from running the code:

- "block" (GLocal-K, biased MF): the blocks are a rank-2 matrix, so each withheld prediction lies
  within 0.5 of its block value -- nearer to it than to any other block value;
- "additive" (user + item biases): the best item + user fit of the full block matrix, row mean +
  column mean - grand mean (A-X 4.25, A-Y 3.75, B-X 1.75, B-Y 1.25), within 0.5. It misses the
  interaction of 0.75 in every block, so the two answers tell the model classes apart;
- "constant" (global mean): the mean of the training ratings, everywhere.

Every user prefers A items (5 > 1 and 3 > 2, also in the additive fit), so every model but the
constant one must rank the user's two withheld A items first: its top-2 among the withheld items.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from glocalk.baselines import BASELINES, make_baseline
from glocalk.data.matrix import RatingMatrix
from glocalk.model import GLocalKConfig, Stage
from glocalk.train import TrainConfig, train

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse"), pytest.mark.usefixtures("one_torch_thread")]

N_ITEMS, N_USERS = 60, 60  # enough ratings per row and column that the biases' ridge hardly shrinks
BLOCKS = np.array([[5.0, 3.0], [1.0, 2.0]])  # rows: item group A, B; columns: user group X, Y
SCALE = (1.0, 5.0)
ITEM_GROUP = (np.arange(N_ITEMS) >= N_ITEMS // 2).astype(int)  # 0 = A, 1 = B
USER_GROUP = (np.arange(N_USERS) >= N_USERS // 2).astype(int)  # 0 = X, 1 = Y


def block_ratings() -> tuple[RatingMatrix, np.ndarray]:
    """The block matrix with two A and two B items withheld per user; returns (data, full matrix)."""
    full = BLOCKS[ITEM_GROUP[:, None], USER_GROUP[None, :]]
    withheld = np.zeros(full.shape, dtype=bool)
    half = N_ITEMS // 2
    for u in range(N_USERS):
        for k in range(2):
            withheld[(7 * u + 3 * k) % half, u] = True  # an A item
            withheld[half + (5 * u + 4 * k) % half, u] = True  # a B item
    assert withheld.sum() == 4 * N_USERS, "test setup: four distinct withheld items per user"
    data = RatingMatrix(sp.csr_matrix(np.where(withheld, 0.0, full)), sp.csr_matrix(np.where(withheld, full, 0.0)),
                        rating_scale=SCALE, name="blocks")
    return data, full


def expected(kind: str, data: RatingMatrix, full: np.ndarray) -> np.ndarray:
    """What a model of this kind must predict on the whole matrix, from the construction."""
    if kind == "block":
        return full
    if kind == "additive":
        fit = full.mean(1, keepdims=True) + full.mean(0, keepdims=True) - full.mean()
        return np.clip(fit, *SCALE)
    return np.full(full.shape, data.train.data.mean())  # constant


def fit_glocalk(data: RatingMatrix):
    # Small and short (a few seconds): n_hid 20, 12 + 12 epochs, one thread.
    result = train(data, GLocalKConfig(n_hid=20, lambda_2=3.0, lambda_s=0.006),
                   TrainConfig(epoch_p=12, epoch_f=12, seed=0, threads=1))
    dense = result.model.predict_dense(result.data, Stage.FINETUNE).double().numpy()
    return lambda items, users: np.clip(dense[items, users], *SCALE)


def fit_baseline(name: str, data: RatingMatrix):
    model = make_baseline(name, seed=0)
    model.fit(data)
    return model.predict


MODELS = {"glocalk": ("block", fit_glocalk), "biased-mf": ("block", None), "biases": ("additive", None),
          "global-mean": ("constant", None)}


def test_every_baseline_is_covered():
    assert set(BASELINES) <= set(MODELS), f"add the new baseline(s) to MODELS: {set(BASELINES) - set(MODELS)}"


@pytest.mark.parametrize("name", list(MODELS))
def test_withheld_blocks_come_back(name):
    data, full = block_ratings()
    kind, fit = MODELS[name]
    predict = fit(data) if fit else fit_baseline(name, data)
    items, users = data.test.nonzero()
    pred = predict(items, users)
    want = expected(kind, data, full)[items, users]
    tol = 1e-9 if kind == "constant" else 0.5
    worst = np.abs(pred - want).max()
    assert worst < tol, f"{name}: a withheld prediction is {worst:.3f} away from its known {kind} answer"
    if kind == "constant":
        return  # a constant cannot rank
    for u in range(N_USERS):
        mine = users == u
        # Ties break towards B items, so a model that cannot tell the groups apart fails.
        order = np.lexsort((-ITEM_GROUP[items[mine]], -pred[mine]))
        top2 = items[mine][order[:2]]
        assert (ITEM_GROUP[top2] == 0).all(), f"{name}: user {u}'s top-2 withheld items {top2} are not both A items"
