"""The training matrix in the form a pass needs, and the choice of execution (dense or sparse).

The mathematics lives in ``model.py``; this module decides only how the ratings are held:
dense (n_items, n_users) tensors, or CSR patterns with value vectors and the plan of the
sparse global convolution. Both executions compute the same loss, gradients and predictions
(tests/test_model.py); only their cost differs (O(n_items n_users) versus O(nnz)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from glocalk.errors import ConfigError, DataError
from glocalk.sparse import ConvPlan, SparsePattern

EXECUTIONS = ("dense", "sparse")
# Auto: dense execution only above this density of the training matrix (see choose_execution).
SPARSE_MAX_DENSITY = 0.25
# Sparse execution: R_hat enters the first layer densely when the pattern of the convolution's output
# (the gk_size x gk_size dilation of R's) is at least this dense ...
CONV_DENSE_MIN_DENSITY = 0.10
# ... and the dense matrix fits in 1 GiB of float32; beyond that R_hat stays sparse whatever its density.
CONV_DENSE_MAX_ENTRIES = 2**28


def choose_execution(shape: tuple[int, int], nnz: int, requested: str = "auto") -> str:
    """'dense' or 'sparse' (the CLI's ``--path``). Auto: sparse unless the matrix is small and dense enough.

    Sparse execution costs O(nnz * n_hid) per pass and dense O(n_items * n_users * n_hid) at a far
    better FLOP rate; measured on CPU (docs/PERFORMANCE.md) sparse wins at every density of the
    paper's datasets (1.3%-6.3%), so dense is kept only above 25% density, where the dilated 3x3
    convolution pattern is nearly full anyway.
    """
    if requested in EXECUTIONS:
        return requested
    if requested != "auto":
        raise ConfigError(f"path (--path) must be 'dense', 'sparse' or 'auto', got {requested!r}")
    density = nnz / float(shape[0] * shape[1])
    return "dense" if density > SPARSE_MAX_DENSITY else "sparse"


@dataclass
class TrainingInput:
    """The training ratings in the form a forward pass needs, prepared once per run.

    Dense execution: ``dense`` R (n_items, n_users) and ``mask`` M = (R > 0). Sparse execution:
    ``pattern`` (CSR) with ``values``, and ``conv`` (the sparse global convolution plan).
    """

    shape: tuple[int, int]
    dense: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    pattern: SparsePattern | None = None
    values: torch.Tensor | None = None
    conv: ConvPlan | None = None
    # Sparse execution only: feed R_hat to the first layer as a dense matrix. Its pattern (the 3x3
    # dilation of R's) is far denser than R; above ~10% density a dense GEMM beats CSR products.
    conv_dense: bool = False

    @property
    def is_sparse(self) -> bool:
        """True for sparse execution."""
        return self.pattern is not None


def prepare_input(train: sp.csr_matrix, sparse: bool, gk_size: int = 3,
                  device: torch.device | str = "cpu", conv_dense: bool | None = None) -> TrainingInput:
    """Build the dense (``sparse=False``) or sparse representation of the training matrix on ``device``.

    ``conv_dense`` (sparse execution): whether R_hat enters the first layer densely; None decides by
    the density of the convolution's output pattern and the matrix size.
    """
    train = sp.csr_matrix(train, dtype=np.float32)
    train.eliminate_zeros()  # a stored 0 means "not rated", as in the dense mask R > 0
    train.sort_indices()
    if train.nnz and train.data.min() < 0:
        raise DataError("ratings must be positive: 0 means 'not rated' and negative values break the mask R > 0")
    if not sparse:
        dense = torch.from_numpy(train.toarray()).to(device)
        return TrainingInput(train.shape, dense=dense, mask=(dense > 0).to(dense.dtype))
    coo = train.tocoo()
    conv = ConvPlan(coo.row, coo.col, coo.data, train.shape, gk_size, device)
    n_entries = train.shape[0] * train.shape[1]
    if conv_dense is None:
        conv_dense = conv.output.nnz >= CONV_DENSE_MIN_DENSITY * n_entries and n_entries <= CONV_DENSE_MAX_ENTRIES
    conv.output.materialise = conv_dense
    return TrainingInput(
        train.shape,
        pattern=SparsePattern.from_scipy(train, device),
        values=torch.from_numpy(train.data.copy()).to(device),
        conv=conv,
        conv_dense=conv_dense,
    )
