"""Top-N recommendation from a scoring core: one user's ranking and every user's, in blocks.

The estimator's ``recommend`` and ``recommend_all`` are thin shells over these functions: they
translate raw ids to indices and back; the ranking rules live here, once. Indices and scores are
the scorer's (internal units, unclipped); ``clip`` is the training scale in those units.

Ranking rule (both functions): descending clipped score, then descending unclipped score, then
ascending item index; items the user rated in training are left out when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from glocalk.errors import ConfigError
from glocalk.scoring import Scorer, top_k

# Checks the scores of a block before ranking: (raw scores, user indices) -> None or an exception.
CheckScores = Callable[[np.ndarray, np.ndarray], None]


def check_k(k: object) -> None:
    """A ConfigError unless ``k`` (how many items to recommend) is a positive integer."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k (-k) must be a positive integer, got {k!r}")


def rank_items(raw: np.ndarray, exclude: np.ndarray | None, k: int, clip: tuple[float, float]) -> np.ndarray:
    """The indices of the ``k`` best items of one user's ``raw`` scores (n_items,), best first;
    ``exclude``: indices left out (the user's rated items), or None."""
    keep = np.ones(len(raw), dtype=bool)
    if exclude is not None:
        keep[exclude] = False
    candidates = np.flatnonzero(keep)
    if k < len(candidates):
        # Only items scoring at least the k-th best raw score can be in the top k (clipping keeps the order):
        # sort those alone (a request of the HTTP service is several times cheaper).
        kth = np.partition(raw[candidates], len(candidates) - k)[len(candidates) - k]
        candidates = candidates[raw[candidates] >= kth]
    clipped = np.clip(raw, *clip)
    # lexsort: last key primary -> descending clipped rating, then descending raw score, then item index.
    return candidates[np.lexsort((candidates, -raw[candidates], -clipped[candidates]))][:k]


@dataclass
class Block:
    """The top ``k`` of a block of users, flattened: one row per (user, rank), users in index order."""

    users: np.ndarray  # user index per row
    items: np.ndarray  # item index per row
    scores: np.ndarray  # unclipped score per row
    ranks: np.ndarray  # 1..k per row
    n_users: int  # users in the block (a user with every item rated has no rows)


def rank_all(scorer: Scorer, n_users: int, seen_t: sp.csr_matrix | None, k: int, block: int,
             check: CheckScores | None = None) -> Iterator[Block]:
    """The top ``k`` items of user indices 0..``n_users`` - 1, ``block`` users at a time.

    One matrix product per member and block (``Scorer.block_scores``); ``seen_t`` (n_users, n_items)
    marks each user's rated items to leave out (None: keep them). The same ranking as ``rank_items``
    up to floating-point rounding: items whose scores agree to ~1e-6 may swap. A user with fewer
    unrated items than ``k`` gets fewer rows.
    """
    for start in range(0, n_users, block):
        u = np.arange(start, min(start + block, n_users))
        raw = scorer.block_scores(u)  # (n_block, n_items)
        if check is not None:
            check(raw, u)
        if seen_t is not None:
            rows, cols = seen_t[u].nonzero()
            raw[rows, cols] = -np.inf
        top = top_k(raw, k)  # (n_block, k); the clipped order is the raw order, ties aside
        scores = raw[np.arange(len(u))[:, None], top]
        valid = np.isfinite(scores)  # fewer unseen items than k: no more rows
        yield Block(users=np.repeat(u, top.shape[1])[valid.ravel()], items=top[valid], scores=scores[valid],
                    ranks=np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)[valid], n_users=len(u))
