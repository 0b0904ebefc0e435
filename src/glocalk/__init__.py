"""glocalk: GLocal-K (Han et al., CIKM 2021) in PyTorch.

Python API: ``GLocalKRecommender`` (fit / predict / recommend / save / load) for your own
ratings; ``load_dataset`` + ``train`` for the paper's benchmarks.
"""

from glocalk.data.datasets import load_dataset
from glocalk.data.matrix import DataError, RatingMatrix
from glocalk.data.readers import read_ratings
from glocalk.estimator import GLocalKRecommender
from glocalk.model import GLocalK, GLocalKConfig
from glocalk.train import TrainConfig, TrainResult, train

__version__ = "0.1.0"

__all__ = ["DataError", "GLocalK", "GLocalKConfig", "GLocalKRecommender", "RatingMatrix", "TrainConfig",
           "TrainResult", "__version__", "load_dataset", "read_ratings", "train"]
