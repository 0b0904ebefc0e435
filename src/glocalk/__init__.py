"""glocalk: GLocal-K (Han et al., CIKM 2021) in PyTorch.

Python API: ``GLocalKRecommender`` (fit / predict / recommend / save / load) for your own
ratings; ``load_dataset`` + ``train`` for the paper's benchmarks.
"""

from glocalk.data.datasets import load_dataset
from glocalk.data.matrix import RatingMatrix
from glocalk.data.readers import read_ratings
from glocalk.errors import DataError
from glocalk.estimator import GLocalKRecommender
from glocalk.model import GLocalK, GLocalKConfig
from glocalk.train import TrainConfig, TrainResult, train
from glocalk.version import __version__

__all__ = ["DataError", "GLocalK", "GLocalKConfig", "GLocalKRecommender", "RatingMatrix", "TrainConfig",
           "TrainResult", "__version__", "load_dataset", "read_ratings", "train"]
