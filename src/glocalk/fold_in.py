"""Fold-in: scores for users and items absent from training, without retraining (issue 12).

GLocal-K is item-based: an item is a sample (a row of R), a user is an input feature of the first
layer and an output unit of the last. Everything trained stays frozen here; the maths is written out
in docs/DESIGN.md ("Fold-in"). For one trained member with last hidden layer H (n_items, n_hid):

New users. A new user j is a new output column: weights w (n_hid), kernel vector v (d), bias b. With
S the items j rated and r their ratings (model units), fold-in solves the part of the training loss
that involves this column, everything else fixed::

    minimise over (w, v, b):  1/2 sum_{i in S} (r_i - H_i . (w * k(v)) - b)^2 + lambda_2/2 |w|^2 + lambda_s/2 |k(v)|^2
    k(v)_h = max(0, 1 - |u_h - v|^2)        (u: the output layer's trained kernel vectors)

Without the local kernel (k = 1) this is ridge regression on the features [H_S, 1] with an
unpenalised bias, solved in closed form (``ridge_column``). With it, v starts at the mean of the
trained users' v, the ridge solution for that fixed k(v) gives (w, b) exactly, and ``LBFGS_STEPS``
L-BFGS iterations (strong Wolfe line search) then refine (w, v, b) jointly. Each user is solved on
its own: a user's column depends only on that user's ratings, never on who else is folded in.

New items. A new item is a new row: the autoencoder's own inductive path encodes it from its rating
vector x (n_users, model units; only ratings by trained users, who are the input features). In stage
2 the network reads R_hat = relu(conv2d(R, g)); a new item has no place among the rows, so it is
convolved as a row of its own (zero rows above and below, as at the matrix's border), with g as
trained (from the trained items' means). ``encode_items`` returns its last hidden layer.

The bias model (mu + b_item + b_user) is folded in the same way: with mu and the trained biases
fixed, b = sum(r - mu - other bias) / (reg + n), the exact minimiser of its regularised loss
(``fold_biases``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from glocalk.model import GLocalK, local_kernel

LBFGS_STEPS = 20
"""L-BFGS iterations refining a new user's (w, v, b) after the closed-form start (local kernel on)."""


@dataclass
class MemberFold:
    """What fold-in needs of one trained member (frozen, on the CPU)."""

    hidden: list[tuple[torch.Tensor, torch.Tensor]]
    """The hidden layers' effective weights W*K and biases, in order."""
    g: torch.Tensor | None
    """The trained global kernel (gk_size, gk_size) when the member reads R_hat (stage 2), else None."""
    out_u: torch.Tensor | None
    """The output layer's kernel vectors u (n_hid, d); None without the local kernel."""
    v0: torch.Tensor | None
    """A new user's starting kernel vector: the mean of the trained users' v (d,); None without the kernel."""
    lambda_2: float
    lambda_s: float


@torch.no_grad()
def member_fold(net: GLocalK, data, uses_conv: bool, weights) -> MemberFold:
    """The ``MemberFold`` of a trained ``net`` over its prepared training input ``data`` (``inputs.TrainingInput``).

    ``uses_conv``: the member reads R_hat (stage 2 with the global kernel); ``weights``: ``net.weights()``'s layers.
    """
    g = None
    if uses_conv:
        x = (data.pattern, data.values) if data.is_sparse else data.dense
        g = net.global_kernel(net.item_means(net.encode(x, weights), weights)).detach()
    c = net.config
    hidden = [(w.detach(), b.detach()) for w, b in weights[: len(net.hidden)]]
    if not c.local_kernel:
        return MemberFold(hidden, g, None, None, c.lambda_2, c.lambda_s)
    u = net.out.u.detach().squeeze(1).double()  # (n_hid, d)
    v0 = net.out.v.detach().squeeze(0).double().mean(0)  # (d,)
    return MemberFold(hidden, g, u, v0, c.lambda_2, c.lambda_s)


@torch.no_grad()
def encode_items(fold: MemberFold, x: np.ndarray) -> np.ndarray:
    """Last hidden layer (n_new, n_hid), float32, of new items with rating rows ``x`` (n_new, n_users), model units.

    Each row is encoded alone: in stage 2 it is convolved with zero rows above and below.
    """
    h = torch.from_numpy(np.asarray(x, dtype=np.float32))  # (n_new, n_users)
    if fold.g is not None and len(h):
        h = torch.cat([GLocalK.global_conv(row[None], fold.g) for row in h])  # (n_new, n_users)
    for w, b in fold.hidden:
        h = torch.sigmoid(h @ w + b)  # (n_new, n_hid)
    return h.numpy()


# -- new users ----------------------------------------------------------------------------------


def ridge_column(features: np.ndarray, ratings: np.ndarray, lambda_2: float) -> tuple[np.ndarray, float]:
    """argmin over (w, b) of 1/2 |r - F w - b|^2 + lambda_2/2 |w|^2 (b unpenalised): (w (n_hid,), b).

    ``features`` F (n_rated, n_hid). Normal equations, solved exactly; a singular system (lambda_2 = 0
    and fewer ratings than features) gets the minimum-norm least-squares solution.
    """
    x = np.hstack([features, np.ones((len(features), 1))])  # (n_rated, n_hid + 1)
    a = x.T @ x
    a[np.arange(features.shape[1]), np.arange(features.shape[1])] += lambda_2  # not on the bias
    rhs = x.T @ ratings
    try:
        theta = np.linalg.solve(a, rhs) if lambda_2 > 0 else np.linalg.lstsq(x, ratings, rcond=None)[0]
    except np.linalg.LinAlgError:
        theta = np.linalg.lstsq(x, ratings, rcond=None)[0]
    return theta[:-1], float(theta[-1])


def user_loss(h_rated: torch.Tensor, ratings: torch.Tensor, w: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
              fold: MemberFold) -> torch.Tensor:
    """The fold-in objective of one user (module docstring) at (w, v, b); ``h_rated``: H's rows of the rated items."""
    k = local_kernel(fold.out_u, v[None, :])[:, 0]  # (n_hid,)
    err = ratings - h_rated @ (w * k) - b  # (n_rated,)
    return 0.5 * (err @ err) + 0.5 * fold.lambda_2 * (w @ w) + 0.5 * fold.lambda_s * (k @ k)


def refine_user(h_rated: np.ndarray, ratings: np.ndarray, fold: MemberFold, w0: np.ndarray, b0: float,
                steps: int = LBFGS_STEPS) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(W, v, b) after ``steps`` L-BFGS iterations on the fold-in objective from (w0, fold.v0, b0); float64."""
    h_t = torch.from_numpy(np.asarray(h_rated, dtype=np.float64))
    r_t = torch.from_numpy(np.asarray(ratings, dtype=np.float64))
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    v = fold.v0.clone().requires_grad_(True)
    b = torch.tensor([b0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, v, b], max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = user_loss(h_t, r_t, w, v, b[0], fold)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), v.detach(), float(b.detach()[0])


def fit_user(h_rated: np.ndarray, ratings: np.ndarray, fold: MemberFold, steps: int = LBFGS_STEPS
             ) -> tuple[np.ndarray, float]:
    """One new user's output column (W*K (n_hid,), b) from H's rows of the rated items and the ratings (model units)."""
    h64 = np.asarray(h_rated, dtype=np.float64)
    r64 = np.asarray(ratings, dtype=np.float64)
    if fold.out_u is None:
        return ridge_column(h64, r64, fold.lambda_2)
    k0 = local_kernel(fold.out_u, fold.v0[None, :])[:, 0].numpy()  # (n_hid,)
    w0, b0 = ridge_column(h64 * k0, r64, fold.lambda_2)  # exact for v = v0
    w, v, b = refine_user(h64, r64, fold, w0, b0, steps)
    k = local_kernel(fold.out_u, v[None, :])[:, 0]
    return (w * k).numpy(), b


def fit_users(h: np.ndarray, targets: sp.csc_matrix, fold: MemberFold, steps: int = LBFGS_STEPS
              ) -> tuple[np.ndarray, np.ndarray]:
    """Every new user's column: ``targets`` (n_rows, n_new) holds their ratings (model units) over H's rows.

    Returns W*K (n_hid, n_new) float32 and b (n_new,) float32, the layout of the trained output layer.
    """
    targets = sp.csc_matrix(targets)
    n_new = targets.shape[1]
    w_out = np.zeros((h.shape[1], n_new), dtype=np.float32)
    b_out = np.zeros(n_new, dtype=np.float32)
    for j in range(n_new):
        lo, hi = targets.indptr[j], targets.indptr[j + 1]
        w_j, b_j = fit_user(h[targets.indices[lo:hi]], targets.data[lo:hi], fold, steps)
        w_out[:, j], b_out[j] = w_j, b_j
    return w_out, b_out


# -- the bias model -----------------------------------------------------------------------------


def fold_biases(mu: float, b_item: np.ndarray, b_user: np.ndarray, ratings: sp.coo_matrix,
                n_trained_users: int, regs: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """New items' and new users' biases (internal units) with mu and the known biases fixed.

    ``ratings`` (n_items_all, n_users_all), internal units: the new ratings, indexed past the known
    ``b_item`` / ``b_user``. A new item's bias reads its ratings by trained users (the users that
    describe items, as in the network's input); a new user's bias reads all their ratings, of known
    and new items. ``regs``: (reg_item, reg_user). Returns (new b_item, new b_user).
    """
    coo = sp.coo_matrix(ratings)
    n_new_items, n_new_users = coo.shape[0] - len(b_item), coo.shape[1] - len(b_user)
    rows, cols, r = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float64)
    by_trained = (rows >= len(b_item)) & (cols < n_trained_users)
    item = rows[by_trained] - len(b_item)
    resid = r[by_trained] - mu - b_user[cols[by_trained]]
    new_items = (np.bincount(item, weights=resid, minlength=n_new_items)
                 / (regs[0] + np.bincount(item, minlength=n_new_items)))
    all_items = np.concatenate([b_item, new_items])
    of_new = cols >= len(b_user)
    user = cols[of_new] - len(b_user)
    resid = r[of_new] - mu - all_items[rows[of_new]]
    new_users = (np.bincount(user, weights=resid, minlength=n_new_users)
                 / (regs[1] + np.bincount(user, minlength=n_new_users)))
    return new_items, new_users
