"""glocalk: GLocal-K (Han et al., CIKM 2021) in PyTorch."""

from glocalk.data import DataError, RatingMatrix

__version__ = "0.1.0"

__all__ = ["DataError", "RatingMatrix", "__version__"]
