"""Rating data: the matrix the model trains on, file readers, benchmark datasets, splits, synthetic data.

Modules, lowest first: ``matrix`` (RatingMatrix), ``sampling`` (the one seeded random draw),
``options`` (ReaderOptions, CLI flag names), ``ratings`` (Ratings and their validation), ``ids``
(IdMap, Ratings -> RatingMatrix), ``readers`` (the one parser: ratings, pairs and users files),
``splits`` (train / test / validation splits of Ratings), ``download`` (data directory,
checksummed downloads), ``datasets`` (the paper's benchmarks), ``synthetic`` (every generator of
toy and scale-test data).
"""

from glocalk.data.matrix import RatingMatrix
from glocalk.errors import DataError

__all__ = ["DataError", "RatingMatrix"]
