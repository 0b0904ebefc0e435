"""The in-memory representation of a split rating matrix.

Layout follows the paper (SPEC.md): rows are ITEMS (the autoencoder's samples),
columns are USERS (its input features); 0 means "not rated". Every split is a
``scipy.sparse.csr_matrix`` of shape (n_items, n_users), float32, with explicit
zeros removed, so ratings of 0 cannot be represented (scales must be > 0;
readers shift scales that include 0 — see ``readers``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from glocalk.data.sampling import random_mask
from glocalk.data.scaling import RatingMap
from glocalk.errors import DataError


def _as_csr(m: sp.spmatrix | np.ndarray, shape: tuple[int, int] | None = None) -> sp.csr_matrix:
    out = sp.csr_matrix(m, dtype=np.float32, shape=shape)
    out.eliminate_zeros()
    out.sort_indices()
    return out


@dataclass
class RatingMatrix:
    """Train / test (and optional validation) ratings of one dataset, items x users.

    Attributes:
        train: (n_items, n_users) training ratings; the model's input and target.
        test: (n_items, n_users) test ratings, or None; never used for training or selection.
        val: (n_items, n_users) validation ratings held out of the training data, or None.
        item_ids: raw id of each item row (index -> raw id).
        user_ids: raw id of each user column.
        rating_scale: (min, max) used to clip predictions, and mapped onto the model's 1..5 (``rating_map``).
        name: a label for reports.
    """

    train: sp.csr_matrix
    test: sp.csr_matrix | None = None
    val: sp.csr_matrix | None = None
    item_ids: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    rating_scale: tuple[float, float] | None = None
    name: str = "ratings"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train = _as_csr(self.train)
        shape = self.train.shape
        if self.test is not None:
            self.test = _as_csr(self.test, shape)
        if self.val is not None:
            self.val = _as_csr(self.val, shape)
        if self.item_ids is None:
            self.item_ids = np.arange(shape[0])
        if self.user_ids is None:
            self.user_ids = np.arange(shape[1])
        if len(self.item_ids) != shape[0] or len(self.user_ids) != shape[1]:
            raise DataError(
                f"id maps do not match the matrix: {len(self.item_ids)} item ids and "
                f"{len(self.user_ids)} user ids for a {shape[0]} x {shape[1]} matrix"
            )
        if self.train.nnz == 0:
            raise DataError(f"{self.name}: the training split holds no ratings")
        for label, m in (("train", self.train), ("test", self.test), ("val", self.val)):
            if m is not None and m.nnz and not np.all(np.isfinite(m.data)):
                raise DataError(f"{self.name}: the {label} split holds non-finite ratings")
            if m is not None and m.nnz and m.data.min() < 0:
                raise DataError(
                    f"{self.name}: the {label} split holds negative ratings (min {m.data.min():g}); the matrix "
                    "needs ratings > 0 because 0 means 'not rated' (read files with glocalk.data.readers, which "
                    "shifts such scales)")
        if self.rating_scale is None:
            self.rating_scale = (float(self.train.data.min()), float(self.train.data.max()))
        lo, hi = self.rating_scale
        if not lo < hi:
            raise DataError(f"{self.name}: rating scale must have min < max, got {self.rating_scale}")

    @property
    def rating_map(self) -> RatingMap:
        """The affine map of ``rating_scale`` onto the model's 1..5 (``glocalk.data.scaling``)."""
        return RatingMap.of(self.rating_scale)

    @property
    def n_items(self) -> int:
        return self.train.shape[0]

    @property
    def n_users(self) -> int:
        return self.train.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return self.train.shape

    def with_validation(self, frac: float, seed: int = 0) -> RatingMatrix:
        """Move a seeded random ``frac`` of the TRAINING ratings into ``val``.

        The test split is untouched, so selecting epochs on ``val`` never sees it. The draw is
        :func:`glocalk.data.sampling.random_mask` over the ratings in row-major (CSR) order, as
        :func:`glocalk.data.splits.validation_split` draws over a table's rows; the count is
        ``round(frac * nnz)`` (Python's round, kept so that published runs reproduce).
        """
        if not 0.0 < frac < 1.0:
            raise DataError(f"validation fraction must be in (0, 1), got {frac}")
        coo = self.train.tocoo()
        n_val = int(round(frac * coo.nnz))
        if n_val == 0 or n_val == coo.nnz:
            raise DataError(f"validation fraction {frac} leaves an empty train or validation split")
        is_val = random_mask(coo.nnz, n_val, seed)

        def pick(mask: np.ndarray) -> sp.csr_matrix:
            return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=self.shape)

        return replace(self, train=pick(~is_val), val=pick(is_val))

    def fingerprint(self) -> str:
        """sha256 of the training matrix (shape, pattern and values): ties models and resumes to their data."""
        h = hashlib.sha256()
        h.update(np.asarray(self.shape, dtype=np.int64).tobytes())
        for arr in (self.train.indptr, self.train.indices, self.train.data):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    def summary(self) -> str:
        parts = [f"{self.name}: {self.n_users} users x {self.n_items} items", f"train {self.train.nnz:,}"]
        if self.val is not None:
            parts.append(f"val {self.val.nnz:,}")
        if self.test is not None:
            parts.append(f"test {self.test.nnz:,}")
        parts.append(f"scale {self.rating_scale[0]:g}..{self.rating_scale[1]:g}")
        return ", ".join(parts)
