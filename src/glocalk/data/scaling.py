"""The one affine map between a matrix's rating units and the model's units (issue 10, item 1).

The paper's hyperparameters were made for ratings 1..5: the ratings enter sigmoid layers
unscaled and the regularisation strengths assume that range. So the training ratings' scale
``lo..hi`` (``RatingMatrix.rating_scale``: the training ratings' min..max, or the scale the user
declared) is mapped affinely onto ``MODEL_SCALE`` = 1..5 before training, and predictions are
mapped back::

    model = 1 + 4 * (r - lo) / (hi - lo)        r = lo + (model - 1) * (hi - lo) / 4

Zero stays "not rated": every training rating lies in lo..hi, so it maps into 1..5 (> 0).
A scale of exactly 1..5 (the paper's three datasets) is the identity, and then NO arithmetic is
applied: the same float32 matrix object is trained on, so those runs are bit for bit what they
were before the map existed. A scale with ``lo == hi`` (one distinct training rating) has no
affine map onto 1..5 and is a ``DataError`` (``RatingMatrix`` refuses it already).

Consequences, documented in docs/DESIGN.md ("Evaluation", "Own data"): RMSE and MAE are reported
in the matrix's units (they scale by ``unit = (hi - lo) / 4``); clipping to the model's 1..5
equals clipping to lo..hi; NDCG's gains ``2^r - 1`` are computed on the model units, so NDCG is
the same under any r -> a r + b (a > 0) and, on 1..5 data, exactly the paper's NDCG.

For own data read with a shift (``Ratings.offset``, scales with a minimum <= 0) the matrix's units
are the user's plus ``offset``; the map removes that shift again (``lo`` includes it), so the
model's units do not depend on it either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from glocalk.errors import DataError

MODEL_SCALE = (1.0, 5.0)
"""The rating range the paper's presets were made for: every training matrix enters the model in it."""


@dataclass(frozen=True)
class RatingMap:
    """The affine map of ratings ``lo..hi`` onto ``MODEL_SCALE`` (identity for 1..5)."""

    lo: float = MODEL_SCALE[0]
    hi: float = MODEL_SCALE[1]

    def __post_init__(self) -> None:
        lo, hi = float(self.lo), float(self.hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise DataError(f"the rating scale {lo:g}..{hi:g} cannot be mapped onto the model's "
                            f"{MODEL_SCALE[0]:g}..{MODEL_SCALE[1]:g}: it needs finite min < max (a training set "
                            "with a single distinct rating has no scale; give the scale explicitly)")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @classmethod
    def of(cls, rating_scale: tuple[float, float]) -> RatingMap:
        """The map of a rating scale ``(lo, hi)``."""
        return cls(float(rating_scale[0]), float(rating_scale[1]))

    @property
    def is_identity(self) -> bool:
        """True for exactly 1..5: then nothing is converted."""
        return (self.lo, self.hi) == MODEL_SCALE

    @property
    def unit(self) -> float:
        """One model unit in the matrix's units, ``(hi - lo) / 4``: the factor of RMSE and MAE."""
        return (self.hi - self.lo) / (MODEL_SCALE[1] - MODEL_SCALE[0])

    def to_model(self, ratings: np.ndarray) -> np.ndarray:
        """Ratings in the matrix's units -> the model's units (float64; the identity returns its input)."""
        if self.is_identity:
            return ratings
        return MODEL_SCALE[0] + (np.asarray(ratings, dtype=np.float64) - self.lo) / self.unit

    def to_user(self, scores: np.ndarray) -> np.ndarray:
        """Scores in the model's units -> the matrix's units (float64; the identity returns its input)."""
        if self.is_identity:
            return scores
        return self.lo + (np.asarray(scores, dtype=np.float64) - MODEL_SCALE[0]) * self.unit

    def matrix_to_model(self, m: sp.csr_matrix, what: str = "training") -> sp.csr_matrix:
        """A float32 CSR matrix of ratings in the model's units (the identity returns ``m`` itself).

        Raises DataError if a rating would not be > 0 (it lies below the scale and would read as
        "not rated"): only a matrix built by hand with a ``rating_scale`` narrower than its ratings.
        """
        if self.is_identity:
            return m
        out = sp.csr_matrix(m, dtype=np.float32, copy=True)
        out.data = self.to_model(out.data).astype(np.float32)
        if out.nnz and out.data.min() <= 0:
            raise DataError(f"a {what} rating lies below the rating scale {self.lo:g}..{self.hi:g} "
                            f"(it would map to {out.data.min():g} <= 0, which a matrix reads as 'not rated')")
        return out

    def to_json(self) -> dict[str, float]:
        """``{"lo": ..., "hi": ...}``: how summary.json, report.json and model.json record the map."""
        return {"lo": self.lo, "hi": self.hi}

    def json_entry(self, shift: float = 0.0) -> dict[str, dict[str, float]]:
        """``{"rating_map": {"lo": lo - shift, "hi": hi - shift}}``: the entry summary.json, results.json,
        report.json and model.json carry (a model.json without it was written before the map: identity).
        ``shift``: an offset to remove, to record the map in the user's units."""
        return {"rating_map": {"lo": self.lo - shift, "hi": self.hi - shift}}
