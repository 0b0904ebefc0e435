"""Shared test fixtures and the tiny rating matrix several test modules train on."""

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
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


def write_mat(path: Path, df: pd.DataFrame, is_test: np.ndarray) -> None:
    """A Monti et al. HDF5 .mat of ``df`` (users u<k>, items i<k>), MATLAB's column-major layout."""
    users = df["user"].str[1:].astype(int).to_numpy()
    items = df["item"].str[1:].astype(int).to_numpy()
    m = np.zeros((users.max() + 1, items.max() + 1))
    m[users, items] = df["rating"].to_numpy()
    o_train, o_test = np.zeros_like(m), np.zeros_like(m)
    o_train[users[~is_test], items[~is_test]] = 1
    o_test[users[is_test], items[is_test]] = 1
    with h5py.File(path, "w") as f:
        for name, a in (("M", m), ("Otraining", o_train), ("Otest", o_test)):
            f.create_dataset(name, data=a.T)
