"""Synthetic ratings: every generator of toy and scale-test data lives here.

* :func:`make_ratings`: a split ``RatingMatrix`` of any size with power-law popularity, for scale
  tests where no public file is at hand (described below).
* :func:`example_ratings`: a small (train, test) pair of DataFrames with string ids, as a user's
  own CSV files look (the README's walk-through).
* :func:`bias_ratings`: a tiny dense-drawn ``RatingMatrix`` of item and user biases (plus an
  optional low-rank part) and noise, on which the tests train (baselines must beat the mean on it).

``make_ratings`` draws a split ``RatingMatrix`` (rows are items, columns users, as everywhere
in glocalk) with the three properties that matter for the cost and the behaviour of GLocal-K:

* **who rates what**: item popularity and user activity follow power laws. Item ``i`` gets the
  weight ``(1 + rank_i) ** -zipf_items`` (ranks are a random permutation, so popular items are
  scattered over the rows as in real id orders; the same for users). The observed cells are a
  weighted sample WITHOUT replacement of the (item, user) cells with probability proportional to
  ``w_item * w_user`` (successive sampling: the next cell is drawn among those not yet chosen).
  Popular items therefore saturate (at most ``n_users`` ratings each) instead of duplicating.
* **what the ratings are**: a rank-``rank`` signal ``s = u_user . v_item`` (unit variance) plus
  Gaussian noise of standard deviation ``noise`` (relative to the signal), standardised over the
  observed cells and mapped to the rating scale with mean ``lo + 0.625 (hi - lo)`` and standard
  deviation ``(hi - lo) / 4`` (3.5 and 1.0 on a 1..5 scale, close to MovieLens), then clipped to
  the scale and rounded to its ``step`` grid (1 for whole stars, 0.5 for half stars, ...).
* **the split**: a seeded random ``test_frac`` of the ratings is the test set.

The defaults (exponents 0.7 and 0.6) are the rank-frequency slopes of ML-100K and ML-1M (items
about -0.71, users about -0.56 to -0.61; Douban's 3000 x 3000 subset is flatter, about -0.23).

Sampling cost: for matrices of at most ``EXACT_MAX_CELLS`` cells the sample is drawn exactly with
Gumbel top-k keys over all cells; beyond that, i.i.d. weighted draws are deduplicated keeping first
occurrences (which is the same successive sampling) and topped up until there are enough, so the
work is O(n_ratings log n_ratings), never O(n_items * n_users). 10M ratings at ML-10M's shape
(10,681 x 69,878) take about half a minute and under 2 GB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from glocalk.data.matrix import RatingMatrix

__all__ = ["EXACT_MAX_CELLS", "BiasSignal", "SyntheticSpec", "bias_ratings", "example_ratings", "make_ratings",
           "sample_cells", "true_scores"]

EXACT_MAX_CELLS = 2**24  # up to this many cells the exact Gumbel top-k sampler is used (~200 MB)
_CHUNK = 1 << 20  # entries per chunk when computing scores (bounds the temporaries)


def _power_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Normalised power-law weights (1 + rank) ** -exponent, ranks a random permutation of 0..n-1."""
    ranks = rng.permutation(n)
    w = (ranks + 1.0) ** (-float(exponent))
    return w / w.sum()


def sample_cells(p_rows: np.ndarray, p_cols: np.ndarray, n: int, rng: np.random.Generator,
                 exact_max_cells: int = EXACT_MAX_CELLS, max_rounds: int = 200) -> np.ndarray:
    """``n`` distinct cells of an (len(p_rows), len(p_cols)) matrix, sampled without replacement.

    Cell (r, c) has weight ``p_rows[r] * p_cols[c]``; returns sorted linear keys ``r * n_cols + c``
    (row-major, i.e. CSR order). Small matrices (at most ``exact_max_cells`` cells) use Gumbel top-k
    keys over every cell; larger ones draw i.i.d. pairs, keep the first occurrence of each cell and
    top up. Both are successive sampling without replacement, so their distributions agree.
    """
    n_rows, n_cols = len(p_rows), len(p_cols)
    n_cells = n_rows * n_cols
    if not 0 <= n <= n_cells:
        raise ValueError(f"cannot draw {n} distinct cells from a {n_rows} x {n_cols} matrix")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n_cells <= exact_max_cells:
        with np.errstate(divide="ignore"):  # weight 0 -> key -inf, chosen last
            log_w = (np.log(p_rows)[:, None] + np.log(p_cols)[None, :]).ravel()
        keys = log_w + rng.gumbel(size=n_cells)  # (n_cells,)
        if n == n_cells:
            return np.arange(n_cells, dtype=np.int64)
        chosen = np.argpartition(-keys, n - 1)[:n]
        return np.sort(chosen).astype(np.int64)
    cdf_rows, cdf_cols = np.cumsum(p_rows), np.cumsum(p_cols)
    kept = np.zeros(0, dtype=np.int64)  # distinct keys, in order of first draw
    acceptance = 1.0
    for _ in range(max_rounds):
        deficit = n - len(kept)
        m = int(min(deficit / max(acceptance, 1e-3) * 1.1, 20 * n)) + 1024
        # Inverse-CDF draws (what Generator.choice(p=...) does, without its per-call checks).
        rows = np.minimum(np.searchsorted(cdf_rows, rng.random(m) * cdf_rows[-1], side="right"), n_rows - 1)
        cols = np.minimum(np.searchsorted(cdf_cols, rng.random(m) * cdf_cols[-1], side="right"), n_cols - 1)
        drawn = np.concatenate([kept, rows.astype(np.int64) * n_cols + cols])
        _, first = np.unique(drawn, return_index=True)
        first.sort()  # first occurrences in draw order: the earlier picks stay picked
        new = len(first) - len(kept)
        kept = drawn[first[:n]]
        if len(kept) == n:
            return np.sort(kept)
        acceptance = max(new / m, 1e-6)
    raise RuntimeError(
        f"could not draw {n} distinct cells in {max_rounds} rounds: the power laws concentrate the "
        "weight on too few cells for this density; use smaller exponents or fewer ratings"
    )


def true_scores(data: RatingMatrix, items: np.ndarray, users: np.ndarray) -> np.ndarray:
    """The noiseless low-rank signal u_user . v_item of a ``make_ratings`` matrix at (items, users)."""
    try:
        v, u = data.meta["item_factors"], data.meta["user_factors"]
    except KeyError:
        raise ValueError(f"{data.name} was not made by glocalk.data.synthetic.make_ratings") from None
    return _scores(v, u, np.asarray(items), np.asarray(users))


def _scores(v: np.ndarray, u: np.ndarray, items: np.ndarray, users: np.ndarray) -> np.ndarray:
    out = np.empty(len(items), dtype=np.float32)
    for s in range(0, len(items), _CHUNK):
        e = s + _CHUNK
        out[s:e] = np.einsum("ij,ij->i", v[items[s:e]], u[users[s:e]])  # (chunk, rank) -> (chunk,)
    return out


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`make_ratings` draws, beyond the sizes.

    Attributes:
        rank: rank of the signal u . v (u, v with i.i.d. normal entries, unit-variance products).
        noise: standard deviation of the Gaussian noise added to the unit-variance signal.
        rating_scale: (lo, hi), lo > 0 (0 means "not rated"); ratings are clipped to it.
        step: rating granularity; (hi - lo) must be a multiple of it.
        zipf_items: power-law exponent of item popularity (0: uniform).
        zipf_users: power-law exponent of user activity (0: uniform).
        test_frac: fraction of the ratings in the test split (exactly round(test_frac * n_ratings)).
    """

    rank: int = 10
    noise: float = 0.5
    rating_scale: tuple[float, float] = (1.0, 5.0)
    step: float = 1.0
    zipf_items: float = 0.7
    zipf_users: float = 0.6
    test_frac: float = 0.1

    def check(self, n_users: int, n_items: int, n_ratings: int) -> int:
        """Raise ValueError for an impossible request; return the number of test ratings."""
        lo, hi = float(self.rating_scale[0]), float(self.rating_scale[1])
        if n_users < 1 or n_items < 1:
            raise ValueError(f"need at least one user and one item, got {n_users} x {n_items}")
        if not 0 < lo < hi:
            raise ValueError(f"rating_scale must be (lo, hi) with 0 < lo < hi (0 means unrated), got "
                             f"{self.rating_scale}")
        n_steps = (hi - lo) / self.step if self.step > 0 else math.nan
        if not (self.step > 0 and abs(n_steps - round(n_steps)) < 1e-6):
            raise ValueError(f"step must be > 0 and divide the scale's width {hi - lo:g}, got {self.step}")
        if self.rank < 1 or self.noise < 0:
            raise ValueError(f"need rank >= 1 and noise >= 0, got rank={self.rank}, noise={self.noise}")
        if self.zipf_items < 0 or self.zipf_users < 0:
            raise ValueError("power-law exponents must be >= 0")
        if not 0.0 <= self.test_frac < 1.0:
            raise ValueError(f"test_frac must be in [0, 1), got {self.test_frac}")
        n_test = int(round(self.test_frac * n_ratings))
        if n_ratings - n_test < 1:
            raise ValueError(f"{n_ratings} ratings with test_frac={self.test_frac} leave no training rating")
        return n_test


def make_ratings(n_users: int, n_items: int, n_ratings: int, spec: SyntheticSpec | None = None, *,
                 seed: int = 0, name: str | None = None, **kwargs: Any) -> RatingMatrix:
    """A synthetic (n_items, n_users) ``RatingMatrix`` with ``n_ratings`` ratings (train + test).

    Args:
        n_users, n_items: the matrix shape is (n_items, n_users): rows are items.
        n_ratings: distinct observed cells, split into train and test.
        spec: what to draw (:class:`SyntheticSpec`); its fields may also be given as keywords
            (``rank=``, ``noise=``, ``rating_scale=``, ``step=``, ``zipf_items=``, ``zipf_users=``,
            ``test_frac=``), which override ``spec``.
        seed: everything is a deterministic function of the arguments.
        name: label of the matrix (default describes the size).

    ``meta`` holds the generator's arguments and the factors (``item_factors`` (n_items, rank),
    ``user_factors`` (n_users, rank)); ``true_scores`` evaluates the noiseless signal from them.
    """
    spec = replace(spec or SyntheticSpec(), **kwargs)
    n_test = spec.check(n_users, n_items, n_ratings)
    lo, hi = float(spec.rating_scale[0]), float(spec.rating_scale[1])
    rng = np.random.default_rng(seed)
    p_items = _power_weights(n_items, spec.zipf_items, rng)
    p_users = _power_weights(n_users, spec.zipf_users, rng)
    keys = sample_cells(p_items, p_users, n_ratings, rng)  # (n_ratings,) item * n_users + user
    items, users = keys // n_users, keys % n_users
    del keys

    # Signal u . v with unit variance: entries N(0, rank^-1/2), so var(u . v) = rank * (rank^-1/2)^2 = 1.
    std = spec.rank ** -0.25
    v = rng.normal(0.0, std, size=(n_items, spec.rank)).astype(np.float32)
    u = rng.normal(0.0, std, size=(n_users, spec.rank)).astype(np.float32)
    ratings = _to_scale(_scores(v, u, items, users), spec, rng)

    is_test = np.zeros(n_ratings, dtype=bool)
    is_test[rng.permutation(n_ratings)[:n_test]] = True

    def pick(mask: np.ndarray) -> sp.csr_matrix:
        # Keys were sorted, so (items, users) is already CSR order: build the CSR arrays directly.
        indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(items[mask], minlength=n_items), out=indptr[1:])
        return sp.csr_matrix((ratings[mask], users[mask], indptr), shape=(n_items, n_users))

    params = {"n_users": n_users, "n_items": n_items, "n_ratings": n_ratings, "rank": spec.rank,
              "noise": spec.noise, "rating_scale": [lo, hi], "step": spec.step, "zipf_items": spec.zipf_items,
              "zipf_users": spec.zipf_users, "test_frac": spec.test_frac, "seed": seed}
    return RatingMatrix(
        train=pick(~is_test), test=pick(is_test) if n_test else None, rating_scale=(lo, hi),
        name=name or f"synthetic-{n_items}x{n_users}-{n_ratings}",
        meta={"dataset": "synthetic", "generator": params, "item_factors": v, "user_factors": u},
    )


def _to_scale(z: np.ndarray, spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Signal plus noise, standardised and mapped onto the rating scale's ``step`` grid (float32)."""
    lo, hi = float(spec.rating_scale[0]), float(spec.rating_scale[1])
    z += (spec.noise * rng.standard_normal(len(z), dtype=np.float32)).astype(np.float32)
    mean, sd = float(z.mean(dtype=np.float64)), float(z.std(dtype=np.float64)) or 1.0
    center, spread = lo + 0.625 * (hi - lo), (hi - lo) / 4.0
    z -= mean
    z *= spread / sd
    z += center - lo  # now rating - lo
    np.clip(z, 0.0, hi - lo, out=z)
    return (lo + np.round(z / spec.step) * spec.step).astype(np.float32)


def example_ratings(n_users: int = 60, n_items: int = 80, density: float = 0.25, test_frac: float = 0.2,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A small synthetic ratings set as (train, test) DataFrames of user, item, rating, timestamp.

    :func:`make_ratings` (a rank-2 signal plus noise, uniform popularity, 1..5 stars) with string
    ids (``u001``, ``m0001``) and distinct timestamps; the test part keeps only ratings whose user
    and item occur in the training part. Used by the README's own-data walk-through and the tests.
    """
    m = make_ratings(n_users, n_items, int(round(density * n_users * n_items)), rank=2, noise=0.2,
                     zipf_items=0.0, zipf_users=0.0, test_frac=test_frac, seed=seed)
    rng = np.random.default_rng(seed)
    frames = []
    for split in (m.train, m.test):
        coo = split.tocoo()
        frames.append(pd.DataFrame({"user": [f"u{u + 1:03d}" for u in coo.col],
                                    "item": [f"m{i + 1:04d}" for i in coo.row], "rating": coo.data.astype(float)}))
    stamps = 1_700_000_000 + 60 * rng.permutation(len(frames[0]) + len(frames[1]))
    train, test = (f.assign(timestamp=t).sort_values(["user", "item"], ignore_index=True)
                   for f, t in zip(frames, np.split(stamps, [len(frames[0])]), strict=True))
    known = test["user"].isin(train["user"]) & test["item"].isin(train["item"])
    return train, test[known].reset_index(drop=True)


@dataclass(frozen=True)
class BiasSignal:
    """The rating model of :func:`bias_ratings`: ``3 + b_item + b_user (+ f_item . g_user) + noise``.

    Attributes:
        item_sd: standard deviation of the item biases.
        user_sd: standard deviation of the user biases.
        noise: standard deviation of the per-cell noise.
        rank: rank of the optional low-rank part (0: none).
        factor_sd: standard deviation of the low-rank factors' entries.
    """

    item_sd: float = 0.8
    user_sd: float = 0.5
    noise: float = 0.4
    rank: int = 0
    factor_sd: float = 0.6


def bias_ratings(n_items: int = 40, n_users: int = 30, density: float = 0.4, seed: int = 0,
                 signal: BiasSignal = BiasSignal(), test_frac: float = 0.2, name: str = "tiny") -> RatingMatrix:
    """A tiny (n_items, n_users) ``RatingMatrix`` on the 1..5 scale: ``signal`` rounded and clipped.

    Each cell is observed with probability ``density`` and an observed cell is a test rating with
    probability ``test_frac`` (independent draws over the dense matrix, so only for small shapes).
    Deterministic in its arguments.
    """
    rng = np.random.default_rng(seed)
    score = 3 + rng.normal(0, signal.item_sd, (n_items, 1)) + rng.normal(0, signal.user_sd, (1, n_users))
    if signal.rank:
        score = score + rng.normal(0, signal.factor_sd, (n_items, signal.rank)) \
            @ rng.normal(0, signal.factor_sd, (signal.rank, n_users))  # (n_items, n_users)
    r = np.clip(np.rint(score + rng.normal(0, signal.noise, score.shape)), 1, 5)
    observed = rng.random(r.shape) < density
    is_test = observed & (rng.random(r.shape) < test_frac)
    return RatingMatrix(sp.csr_matrix(np.where(observed & ~is_test, r, 0.0)),
                        sp.csr_matrix(np.where(is_test, r, 0.0)), rating_scale=(1.0, 5.0), name=name)
