"""Rating data: the matrix the model trains on, file readers, benchmark datasets, splits, synthetic data."""

from glocalk.data.matrix import RatingMatrix
from glocalk.errors import DataError

__all__ = ["DataError", "RatingMatrix"]
