"""Shared test fixtures and the tiny rating matrix several test modules train on."""

import pytest
import torch

from glocalk.data.matrix import RatingMatrix
from glocalk.data.synthetic import bias_ratings


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's small problems on one torch thread: more threads only add overhead (and contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_ratings(n_items: int = 40, n_users: int = 30, density: float = 0.4, seed: int = 0,
                 name: str = "tiny") -> RatingMatrix:
    """Item + user biases plus noise, rounded to 1..5; ``density`` observed, 20% of those are test."""
    return bias_ratings(n_items, n_users, density, seed, name=name)
