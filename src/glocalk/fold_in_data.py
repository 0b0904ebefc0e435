"""The fold-in ratings as the scoring core takes them: raw ids sorted into new users and new items.

``GLocalKRecommender.fold_in`` reads ratings (user, item, rating; the one parser, ``data.readers``)
and this module turns them into a matrix over the extended index spaces (``batch``): a new item is
a row past the known ones, a new user a column past them, in order of first appearance. What a
rating may be:

- a new user's rating of any item (known, or new in the same call): the user is fitted to it;
- a trained user's rating of a new item: it describes the item (the network's input) and is
  not used otherwise (the trained user's own column stays as trained);
- a rating of an item absent from the model that no trained user rated in the same call is
  skipped (nothing describes the item; ``Batch.n_skipped`` counts them, the model's ``fold_in_``
  reports them), as ``evaluate`` skips unknown ids;
- anything else is a DataError naming it: a pair of known ids (retrain to change training
  ratings), or a new item rated by a user who was folded in before (such a user is no input
  feature of the network); and so is a call left with nothing to fold in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from glocalk.data.ratings import INT_ID
from glocalk.data.readers import IdMap
from glocalk.errors import DataError
from glocalk.model_dir import Folded


@dataclass
class Batch:
    """New ratings over the extended index spaces (internal units) and the raw ids they add."""

    ratings: sp.csr_matrix  # (n_items + len(item_ids), n_users + len(user_ids)): only the new ratings
    item_ids: np.ndarray
    user_ids: np.ndarray
    n_skipped: int = 0  # ratings of items nothing describes (module docstring)


def _examples(values: np.ndarray) -> str:
    shown = ", ".join(repr(v) for v in list(dict.fromkeys(values.tolist()))[:5])
    return shown + (", ..." if len(set(values.tolist())) > 5 else "")


def _typed(ids: np.ndarray, like: np.ndarray, label: str) -> np.ndarray:
    """New raw ids in the type of the model's ids (integers or text), or DataError naming the misfit."""
    if like.dtype.kind in "iu":
        text = pd.Series(ids, dtype=object).astype(str)
        ok = text.str.fullmatch(INT_ID).to_numpy(dtype=bool)
        if not ok.all():
            raise DataError(f"fold-in: the model's {label} ids are integers, but {_examples(ids[~ok])} is not")
        return text.astype(np.int64).to_numpy()
    out = np.empty(len(ids), dtype=object)
    out[:] = [str(v) for v in ids]
    return out


def batch(df: pd.DataFrame, ids: IdMap, n_trained_users: int, offset: float) -> Batch:
    """``df`` (user, item, rating in the user's units) as a ``Batch``; DataError for ratings fold-in cannot use."""
    users, items = df["user"].to_numpy(), df["item"].to_numpy()
    u, i = ids.lookup(users, "user"), ids.lookup(items, "item")
    if ((u >= 0) & (i >= 0)).any():
        k = np.flatnonzero((u >= 0) & (i >= 0))
        raise DataError(f"fold-in: {len(k)} ratings pair a user and an item the model knows already (first: user "
                        f"{users[k[0]]!r}, item {items[k[0]]!r}); fold-in adds users and items absent from the "
                        "model: retrain to change its training ratings")
    folded_user = (u >= n_trained_users) & (i < 0)
    if folded_user.any():
        raise DataError(f"fold-in: new items rated by users folded in before ({_examples(users[folded_user])}) "
                        "cannot be used: such users are no input of the network")
    described = set(items[(i < 0) & (u >= 0)].tolist())
    keep = (i >= 0) | np.array([v in described for v in items.tolist()], dtype=bool)
    if not keep.any():
        raise DataError(f"fold-in: nothing to fold in: the {len(df)} ratings are all of items absent from the model "
                        "that no user it was trained with rated (a new item is encoded from such ratings)")
    df, users, items, u, i = df[keep], users[keep], items[keep], u[keep], i[keep]
    new_items = pd.unique(items[i < 0])
    new_users = pd.unique(users[u < 0])
    i = np.where(i >= 0, i, ids.n_items + pd.Index(new_items).get_indexer(items))
    u = np.where(u >= 0, u, ids.n_users + pd.Index(new_users).get_indexer(users))
    shape = (ids.n_items + len(new_items), ids.n_users + len(new_users))
    ratings = sp.csr_matrix((df["rating"].to_numpy(dtype=np.float64) + offset, (i, u)), shape=shape)
    return Batch(ratings, _typed(np.asarray(new_items), ids.item_ids, "item"),
                 _typed(np.asarray(new_users), ids.user_ids, "user"), int((~keep).sum()))


def merged(old: Folded | None, new: Batch, columns: list[tuple[np.ndarray, np.ndarray]],
           biases: tuple[np.ndarray, np.ndarray], info: dict) -> Folded:
    """The model's fold-in part after adding ``new`` (with its fitted ``columns`` and ``biases``) to ``old``."""
    if old is None:
        return Folded(new.user_ids, new.item_ids, sp.csr_matrix(new.ratings, dtype=np.float32),
                      columns, biases[0], biases[1], info)
    padded = sp.csr_matrix(old.ratings, dtype=np.float32).copy()
    padded.resize(new.ratings.shape)
    return Folded(np.concatenate([old.user_ids, new.user_ids]), np.concatenate([old.item_ids, new.item_ids]),
                  sp.csr_matrix(padded + new.ratings, dtype=np.float32),
                  [(np.hstack([w0, w1]), np.concatenate([b0, b1]))
                   for (w0, b0), (w1, b1) in zip(old.columns, columns, strict=True)],
                  np.concatenate([old.b_item, biases[0]]), np.concatenate([old.b_user, biases[1]]), info)
