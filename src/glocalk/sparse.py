"""Sparse building blocks for the O(nnz) sparse execution.

Two autograd functions carry the whole sparse execution:

- ``spmm(values, dense, pattern)``: (sparse matrix with ``pattern`` and ``values``) @ dense,
  differentiable in both the values and the dense operand;
- ``sampled_mm(a, b, pattern)``: (a @ b) evaluated only at the entries of ``pattern``
  (an SDDMM), differentiable in ``a`` and ``b``.

Each backward is again one of the two products, so no (nnz x n_hid) tensor is ever
materialised: ``torch.sparse.sampled_addmm`` computes the sampled dot products in place
and CSR @ dense handles the rest, on CPU and CUDA alike.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def _csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # CSR tensors are "beta" in torch; the ops used here (CSR @ dense, sampled_addmm) are stable. The
    # warning is silenced here only, never by a filter installed at import (a library leaves those alone).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class SparsePattern:
    """The fixed CSR sparsity pattern of an (n_rows, n_cols) matrix, with its transpose.

    Values live outside the pattern (as a 1-D tensor in CSR order), so one pattern serves
    many value vectors (ratings, errors, gradients) without rebuilding indices.
    """

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, shape: tuple[int, int]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.crow = crow.to(torch.int64)
        self.col = col.to(torch.int64)
        counts = self.crow[1:] - self.crow[:-1]
        self.row = torch.repeat_interleave(torch.arange(self.shape[0], device=crow.device), counts)
        # Transpose: entries re-ordered by (col, row); t_perm maps transpose order -> CSR order.
        key = self.col * self.shape[0] + self.row
        self.t_perm = torch.argsort(key, stable=True)
        self.t_col = self.row[self.t_perm]
        t_counts = torch.bincount(self.col, minlength=self.shape[1])
        self.t_crow = torch.zeros(self.shape[1] + 1, dtype=torch.int64, device=crow.device)
        self.t_crow[1:] = torch.cumsum(t_counts, 0)
        self._zeros: torch.Tensor | None = None

    @classmethod
    def from_scipy(cls, m: sp.csr_matrix, device: torch.device | str = "cpu") -> SparsePattern:
        """Pattern of a scipy CSR matrix (its indices must be sorted)."""
        m = sp.csr_matrix(m)
        m.sort_indices()
        return cls(
            torch.from_numpy(m.indptr.astype(np.int64)).to(device),
            torch.from_numpy(m.indices.astype(np.int64)).to(device),
            m.shape,
        )

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @property
    def device(self) -> torch.device:
        return self.col.device

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse CSR tensor with this pattern and ``values`` (in CSR order)."""
        return _csr_tensor(self.crow, self.col, values, self.shape)

    def matrix_t(self, values: torch.Tensor) -> torch.Tensor:
        """The transpose, as a CSR tensor of shape (n_cols, n_rows)."""
        return _csr_tensor(self.t_crow, self.t_col, values[self.t_perm], (self.shape[1], self.shape[0]))

    def zeros_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        if self._zeros is None or self._zeros.dtype != dtype:
            self._zeros = torch.zeros(self.nnz, dtype=dtype, device=self.device)
        return self.matrix(self._zeros)


def sampled_values(pattern: SparsePattern, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Values of (a @ b) at the entries of ``pattern``, in CSR order (no autograd)."""
    if pattern.nnz == 0:
        return a.new_zeros(0)
    out = torch.sparse.sampled_addmm(pattern.zeros_matrix(a.dtype), a, b, beta=0.0)
    return out.values()


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, dense, pattern):  # noqa: D102
        ctx.save_for_backward(values, dense)
        ctx.pattern = pattern
        return pattern.matrix(values) @ dense  # (n_rows, k)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        values, dense = ctx.saved_tensors
        pattern = ctx.pattern
        grad = grad.contiguous()
        g_values = g_dense = None
        if ctx.needs_input_grad[0]:
            # d/d values[p] = grad[row_p] . dense[col_p]: an SDDMM, never (nnz x k) in memory.
            g_values = sampled_values(pattern, grad, dense.T)
        if ctx.needs_input_grad[1]:
            g_dense = pattern.matrix_t(values) @ grad
        return g_values, g_dense, None


class _SampledMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, pattern):  # noqa: D102
        ctx.save_for_backward(a, b)
        ctx.pattern = pattern
        return sampled_values(pattern, a, b)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        a, b = ctx.saved_tensors
        pattern = ctx.pattern
        grad = grad.contiguous()
        g_a = g_b = None
        if ctx.needs_input_grad[0]:
            g_a = pattern.matrix(grad) @ b.T  # (n_rows, k)
        if ctx.needs_input_grad[1]:
            g_b = (pattern.matrix_t(grad) @ a).T  # (k, n_cols)
        return g_a, g_b, None


def spmm(values: torch.Tensor, dense: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
    """(sparse(pattern, values) @ dense), differentiable in ``values`` and ``dense``."""
    return _SpMM.apply(values, dense, pattern)


def sampled_mm(a: torch.Tensor, b: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
    """(a @ b) at the entries of ``pattern`` (CSR order), differentiable in ``a`` and ``b``."""
    return _SampledMM.apply(a, b, pattern)


class ConvPlan:
    """A k x k "same" cross-correlation of a fixed sparse matrix, as a sparse linear map of the kernel.

    out[p, q] = sum_{a,b} g[a, b] * R[p + a - left, q + b - left] is non-zero only on the
    dilation of R's pattern (at most k^2 * nnz entries). With ``shifts`` the (|P| x k^2)
    sparse matrix of shifted ratings, the output values are ``shifts @ g.flatten()``.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int],
                 k: int, device: torch.device | str = "cpu") -> None:
        n_rows, n_cols = shape
        left = (k - 1) // 2  # TF/torch "same" padding puts the smaller half first
        out_keys, shift_ids, src_vals = [], [], []
        rows = rows.astype(np.int64)
        cols = cols.astype(np.int64)
        for a in range(k):
            for b in range(k):
                # R[i, j] contributes g[a, b] * R[i, j] to out[i - a + left, j - b + left].
                orow, ocol = rows - a + left, cols - b + left
                ok = (orow >= 0) & (orow < n_rows) & (ocol >= 0) & (ocol < n_cols)
                out_keys.append(orow[ok] * n_cols + ocol[ok])
                shift_ids.append(np.full(int(ok.sum()), a * k + b, dtype=np.int64))
                src_vals.append(vals[ok])
        keys = np.concatenate(out_keys)
        uniq, inverse = np.unique(keys, return_inverse=True)  # row-major order = CSR order
        out_rows, out_cols = uniq // n_cols, uniq % n_cols
        self.output = SparsePattern.from_scipy(
            sp.csr_matrix((np.ones(len(uniq), np.float32), (out_rows, out_cols)), shape=shape), device
        )
        shifts = sp.csr_matrix(
            (np.concatenate(src_vals).astype(np.float32), (inverse, np.concatenate(shift_ids))),
            shape=(len(uniq), k * k),
        )
        shifts.sort_indices()
        self.shifts = SparsePattern.from_scipy(shifts, device)
        self.shift_values = torch.from_numpy(shifts.data.astype(np.float32)).to(device)

    def __call__(self, kernel: torch.Tensor) -> torch.Tensor:
        """Values of conv(R, kernel) on ``self.output`` (before any activation)."""
        flat = kernel.reshape(-1, 1)
        return spmm(self.shift_values.to(flat.dtype), flat, self.shifts).squeeze(1)
