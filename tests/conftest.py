"""Shared test fixtures and the tiny rating matrix several test modules train on."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from glocalk.data.matrix import RatingMatrix


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
    rng = np.random.default_rng(seed)
    signal = 3 + rng.normal(0, 0.8, (n_items, 1)) + rng.normal(0, 0.5, (1, n_users))
    r = np.clip(np.rint(signal + rng.normal(0, 0.4, signal.shape)), 1, 5)
    observed = rng.random(r.shape) < density
    is_test = observed & (rng.random(r.shape) < 0.2)
    return RatingMatrix(sp.csr_matrix(np.where(observed & ~is_test, r, 0.0)),
                        sp.csr_matrix(np.where(is_test, r, 0.0)), rating_scale=(1.0, 5.0), name=name)
