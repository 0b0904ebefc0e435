"""The one seeded random draw behind every random holdout: validation splits of a matrix
(:meth:`RatingMatrix.with_validation`) and of a ratings table (:mod:`glocalk.data.splits`)."""

from __future__ import annotations

import numpy as np

__all__ = ["random_mask"]


def random_mask(n: int, n_held: int, seed: int) -> np.ndarray:
    """Boolean mask over ``n`` entries with ``n_held`` True: the first ``n_held`` positions of a
    seeded permutation (numpy's ``default_rng(seed)``), so one seed always picks the same entries."""
    is_held = np.zeros(n, dtype=bool)
    is_held[np.random.default_rng(seed).permutation(n)[:n_held]] = True
    return is_held
