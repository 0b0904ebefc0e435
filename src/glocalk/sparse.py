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


def index_dtype(*sizes: int) -> torch.dtype:
    """int32 when every index and offset (< each of ``sizes``) fits in it, else int64.

    int32 CSR indices halve the index memory and take MKL's (and cuSPARSE's) 32-bit kernels, about
    2-3x faster for CSR @ dense and the SDDMM on this CPU than with int64 (docs/PERFORMANCE.md).
    """
    return torch.int32 if max(sizes, default=0) < 2**31 else torch.int64


class SparsePattern:
    """The fixed CSR sparsity pattern of an (n_rows, n_cols) matrix; its transpose is built on first use.

    Values live outside the pattern (as a 1-D tensor in CSR order), so one pattern serves
    many value vectors (ratings, errors, gradients) without rebuilding indices. Indices are
    int32 where they fit (``index_dtype``). Patterns that are only read forward (the evaluation
    splits) never build the transpose, which costs three further index vectors.

    ``materialise``: products with this pattern run as a dense GEMM on the matrix scattered into a
    dense buffer kept with the pattern (``spmm``); set it for patterns so dense (the 3x3 dilation of
    R's, on small matrices) that a GEMM at the machine's peak beats CSR products.
    """

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, shape: tuple[int, int]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        dtype = index_dtype(col.numel(), *self.shape)
        self.crow = crow.to(dtype)
        self.col = col.to(dtype)
        self.materialise = False
        self._transpose: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._zeros: torch.Tensor | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._t_values: tuple[torch.Tensor, int, torch.Tensor] | None = None

    @classmethod
    def from_scipy(cls, m: sp.csr_matrix, device: torch.device | str = "cpu") -> SparsePattern:
        """Pattern of a scipy CSR matrix (its indices must be sorted)."""
        m = sp.csr_matrix(m)
        m.sort_indices()
        return cls(torch.from_numpy(m.indptr).to(device), torch.from_numpy(m.indices).to(device), m.shape)

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @property
    def device(self) -> torch.device:
        return self.col.device

    @property
    def row(self) -> torch.Tensor:
        """Row index of each entry in CSR order (computed on each call; nothing kept)."""
        counts = self.crow[1:] - self.crow[:-1]
        rows = torch.arange(self.shape[0], dtype=self.col.dtype, device=self.device)
        return torch.repeat_interleave(rows, counts, output_size=self.nnz)  # output_size: no device sync

    def _transposed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._transpose is None:
            # CSR order is (row, col)-sorted, so a stable sort by column gives the (col, row) order.
            t_perm = torch.argsort(self.col, stable=True).to(self.col.dtype)  # transpose order -> CSR order
            t_col = self.row[t_perm]
            t_crow = torch.zeros(self.shape[1] + 1, dtype=self.col.dtype, device=self.device)
            t_crow[1:] = torch.cumsum(torch.bincount(self.col, minlength=self.shape[1]), 0)
            self._transpose = (t_crow, t_col, t_perm)
        return self._transpose

    @property
    def transpose_built(self) -> bool:
        """Whether the transpose's indices exist (they are built by the first product that needs them)."""
        return self._transpose is not None

    @property
    def t_crow(self) -> torch.Tensor:
        """Row offsets of the transpose's CSR (n_cols + 1)."""
        return self._transposed()[0]

    @property
    def t_col(self) -> torch.Tensor:
        """Column indices of the transpose's CSR (the rows of this pattern, in transpose order)."""
        return self._transposed()[1]

    @property
    def t_perm(self) -> torch.Tensor:
        """Position in CSR order of each entry of the transpose."""
        return self._transposed()[2]

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse CSR tensor with this pattern and ``values`` (in CSR order)."""
        return _csr_tensor(self.crow, self.col, values, self.shape)

    def matrix_t(self, values: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """The transpose, as a CSR tensor of shape (n_cols, n_rows).

        ``keep``: ``values`` is a constant (the training ratings): its transposed
        values are kept for the next call with the same, unchanged tensor instead of gathered again.
        """
        t_crow, t_col, t_perm = self._transposed()
        cached = self._t_values
        if keep and cached is not None and cached[0] is values and cached[1] == values._version:
            t_values = cached[2]
        else:
            t_values = values.index_select(0, t_perm)  # takes int32 indices as they are ([] converts them)
            if keep:
                self._t_values = (values, values._version, t_values)
        return _csr_tensor(t_crow, t_col, t_values, (self.shape[1], self.shape[0]))

    def zeros_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        if self._zeros is None or self._zeros.dtype != dtype:
            self._zeros = torch.zeros(self.nnz, dtype=dtype, device=self.device)
        return self.matrix(self._zeros)

    def buffer(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """A dense (n_rows, n_cols) buffer kept with the pattern, zero on creation (``materialise``)."""
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype:
            buf = self._buffers[name] = torch.zeros(self.shape, dtype=dtype, device=self.device)
        return buf

    def flat_index(self) -> torch.Tensor:
        """row * n_cols + col of each entry (CSR order): where the entries sit in a dense row-major matrix.

        Always int64: indexing and ``index_put_`` convert any other index dtype to int64 on every call
        (a copy of the whole index, ~17 ms per use at ML-1M's R_hat), and a materialised pattern's dense
        buffer costs 4-8 times its index anyway."""
        idx = self._buffers.get("flat_index")
        if idx is None:
            idx = self._buffers["flat_index"] = self.row.long() * self.shape[1] + self.col.long()
        return idx


def sampled_values(pattern: SparsePattern, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Values of (a @ b) at the entries of ``pattern``, in CSR order (no autograd)."""
    if pattern.nnz == 0:
        return a.new_zeros(0)
    out = torch.sparse.sampled_addmm(pattern.zeros_matrix(a.dtype), a, b, beta=0.0)
    return out.values()


# CSR @ dense on the CPU in blocks of CSR_MM_BLOCK dense columns when the dense operand is larger
# than the cache (CSR_MM_BLOCK_MIN_BYTES) but one block of it (n_rows x 32 floats) fits a core's L2
# (CSR_MM_BLOCK_MAX_BYTES): the sparse rows then gather from cache. Measured on ML-1M (one thread):
# about 1.3x faster passes; on ML-100K, whose operands fit the cache, blocking only adds calls, and
# at ML-10M's 69,878 users one block no longer fits, so every block would re-read the indices
# (docs/PASSES.md). Each output entry is the same sum in the same order: the result is unchanged.
CSR_MM_BLOCK = 32
CSR_MM_BLOCK_MIN_BYTES = 4 * 2**20
CSR_MM_BLOCK_MAX_BYTES = 2**20


def csr_mm(m: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """CSR tensor @ dense matrix, column-blocked on the CPU where that keeps a block in cache; else one product."""
    k = dense.shape[1]
    size = dense.element_size()
    if (dense.device.type != "cpu" or k <= CSR_MM_BLOCK or dense.numel() * size < CSR_MM_BLOCK_MIN_BYTES
            or dense.shape[0] * CSR_MM_BLOCK * size > CSR_MM_BLOCK_MAX_BYTES):
        return _csr_product(m, dense)
    return torch.cat([_csr_product(m, dense[:, i: i + CSR_MM_BLOCK].contiguous()) for i in range(0, k, CSR_MM_BLOCK)],
                     1)


def _csr_product(m: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """m @ dense, written into a fresh buffer: ``addmm_`` with beta 0 ignores the buffer's contents (rows
    without entries come out 0), while ``m @ dense`` zero-fills a result and copies it once more around the
    sparse product (~1 ms per (1682 x 500) product, several per pass). Bit for bit the same values."""
    out = torch.empty((m.shape[0], dense.shape[1]), dtype=dense.dtype, device=dense.device)
    return out.addmm_(m, dense, beta=0.0)


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, dense, pattern):  # noqa: D102
        ctx.save_for_backward(values, dense)
        ctx.pattern = pattern
        return csr_mm(pattern.matrix(values), dense)  # (n_rows, k)

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
            g_dense = csr_mm(pattern.matrix_t(values, keep=not ctx.needs_input_grad[0]), grad)
        return g_values, g_dense, None


class _MaterialisedSpMM(torch.autograd.Function):
    """``_SpMM`` for a ``materialise`` pattern: the matrix scattered into the pattern's dense buffer, then
    dense GEMMs. The buffer is reused pass after pass (its zeros outside the pattern never change), so a
    pass allocates no (n_rows x n_cols) matrix."""

    @staticmethod
    def forward(ctx, values, dense, pattern):  # noqa: D102
        x = _scatter(pattern, values)
        ctx.save_for_backward(values, dense)
        ctx.pattern, ctx.version = pattern, x._version
        return x @ dense  # (n_rows, k)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        values, dense = ctx.saved_tensors
        pattern = ctx.pattern
        x = pattern.buffer("input", values.dtype)
        if x._version != ctx.version:  # another forward since this one (gradcheck does that): restore
            x = _scatter(pattern, values)
        g_values = g_dense = None
        if ctx.needs_input_grad[1]:
            g_dense = x.T @ grad  # (n_cols, k)
        if ctx.needs_input_grad[0]:
            # grad @ dense.T at the pattern's entries; the product is written into a kept buffer.
            g_x = pattern.buffer("grad", grad.dtype)
            torch.mm(grad, dense.T, out=g_x)
            g_values = g_x.view(-1)[pattern.flat_index()]
        return g_values, g_dense, None


def _scatter(pattern: SparsePattern, values: torch.Tensor) -> torch.Tensor:
    """The pattern's dense input buffer holding ``values`` (zero outside the pattern)."""
    x = pattern.buffer("input", values.dtype)  # (n_rows, n_cols)
    x.view(-1).index_put_((pattern.flat_index(),), values)
    return x


class _SampledMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, bias, pattern):  # noqa: D102
        # b as a row-major (k, n_cols)^T copy: the SDDMM reads b by columns and the backward's CSR product
        # needs b^T contiguous; one transpose here serves both (torch would otherwise copy inside each).
        b_t = b.T.contiguous()  # (n_cols, k)
        ctx.save_for_backward(a, b_t)
        ctx.pattern, ctx.has_bias = pattern, bias is not None
        out = sampled_values(pattern, a, b_t.T)
        if bias is not None:
            out = out.add_(bias.index_select(0, pattern.col))  # bias[col] per entry
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        a, b_t = ctx.saved_tensors
        pattern = ctx.pattern
        grad = grad.contiguous()
        g_a = g_b = g_bias = None
        if ctx.needs_input_grad[0]:
            g_a = csr_mm(pattern.matrix(grad), b_t)  # (n_rows, k)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            m_t = pattern.matrix_t(grad)  # (n_cols, n_rows)
            if ctx.needs_input_grad[1]:
                # Row-major (k, n_cols) like b: the elementwise backward ops downstream (the kernel layer's)
                # would otherwise walk a transposed view, several times slower than one copy here.
                g_b = csr_mm(m_t, a).T.contiguous()  # (k, n_cols)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                # Column sums of the gradient by a CSR product (deterministic, unlike a scatter-add over nnz).
                g_bias = torch.mv(m_t, torch.ones(pattern.shape[0], dtype=grad.dtype, device=grad.device))
        return g_a, g_b, g_bias, None


def spmm(values: torch.Tensor, dense: torch.Tensor, pattern: SparsePattern) -> torch.Tensor:
    """(sparse(pattern, values) @ dense), differentiable in ``values`` and ``dense``.

    CSR products, or dense GEMMs on the materialised matrix when ``pattern.materialise`` is set.
    """
    if pattern.materialise:
        return _MaterialisedSpMM.apply(values, dense, pattern)
    return _SpMM.apply(values, dense, pattern)


def sampled_mm(a: torch.Tensor, b: torch.Tensor, pattern: SparsePattern,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """(a @ b + bias) at the entries of ``pattern`` (CSR order), differentiable in ``a``, ``b`` and ``bias``.

    ``bias``: one value per column of the product (n_cols,), added to every entry of its column.
    """
    return _SampledMM.apply(a, b, bias, pattern)


class ConvPlan:
    """A k x k "same" cross-correlation of a fixed sparse matrix, as a sparse linear map of the kernel.

    out[p, q] = sum_{a,b} g[a, b] * R[p + a - left, q + b - left] is non-zero only on the
    dilation of R's pattern (at most k^2 * nnz entries), ``output``. Each shift (a, b) of R lands
    on some of those entries: ``shift_index[offsets[s]:offsets[s + 1]]`` (increasing) are their
    positions in ``output``'s CSR order and ``shift_values`` the ratings that land there, for
    s = a * k + b. The output values are sum_s g_s * (shift s scattered), and the gradient of g_s is a
    dot product over shift s: no (|P| x k^2) matrix and no transpose is kept.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int],
                 k: int, device: torch.device | str = "cpu") -> None:
        n_rows, n_cols = shape
        left = (k - 1) // 2  # TF/torch "same" padding puts the smaller half first
        order = np.lexsort((cols, rows))  # CSR order, so that every shifted copy is sorted too
        rows, cols = np.asarray(rows, np.int64)[order], np.asarray(cols, np.int64)[order]
        vals = np.asarray(vals, np.float32)[order]
        # R[i, j] contributes g[a, b] * R[i, j] to out[i - a + left, j - b + left]: per shift (a, b), the
        # (sorted) output keys row * n_cols + col of R's entries that land inside the matrix.
        shifted = []
        for a in range(k):
            for b in range(k):
                orow, ocol = rows - a + left, cols - b + left
                ok = (orow >= 0) & (orow < n_rows) & (ocol >= 0) & (ocol < n_cols)
                shifted.append((orow[ok] * n_cols + ocol[ok], vals[ok]))
        del rows, cols, vals
        keys = _union_sorted([key for key, _ in shifted])  # the output pattern, row-major = CSR order
        self.output = SparsePattern(*_csr_of_keys(keys, shape, device), shape)
        idx = _np_index(index_dtype(len(keys)))
        self.offsets = [0, *np.cumsum([len(key) for key, _ in shifted]).tolist()]
        self.shift_index = torch.from_numpy(
            np.concatenate([np.searchsorted(keys, key).astype(idx) for key, _ in shifted])).to(device)
        self.shift_values = torch.from_numpy(np.concatenate([v for _, v in shifted])).to(device)

    def __call__(self, kernel: torch.Tensor) -> torch.Tensor:
        """Values of conv(R, kernel) on ``self.output`` (before any activation)."""
        flat = kernel.reshape(-1)
        return _Conv.apply(flat, self.shift_values.to(flat.dtype), self)


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, values, plan):  # noqa: D102
        ctx.save_for_backward(values)
        ctx.plan = plan
        out = values.new_zeros(plan.output.nnz)
        for s in range(len(plan.offsets) - 1):
            lo, hi = plan.offsets[s], plan.offsets[s + 1]
            # Positions within one shift are distinct, so the scatter is deterministic on every device.
            out.index_add_(0, plan.shift_index[lo:hi], values[lo:hi] * g[s])
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (values,) = ctx.saved_tensors
        plan = ctx.plan
        parts = []
        for s in range(len(plan.offsets) - 1):
            lo, hi = plan.offsets[s], plan.offsets[s + 1]
            parts.append(torch.dot(values[lo:hi], grad.index_select(0, plan.shift_index[lo:hi])))
        return torch.stack(parts), None, None


def _np_index(dtype: torch.dtype) -> type:
    """The NumPy integer type of a torch index dtype."""
    return np.int32 if dtype == torch.int32 else np.int64


def _union_sorted(arrays: list[np.ndarray]) -> np.ndarray:
    """Sorted union of int64 arrays: one in-place sort of their concatenation, then its distinct values."""
    keys = np.concatenate(arrays)
    keys.sort()
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    return keys[first]


def _csr_of_keys(keys: np.ndarray, shape: tuple[int, int],
                 device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow, col) of the CSR pattern whose entries are the sorted keys row * n_cols + col."""
    idx = _np_index(index_dtype(len(keys), *shape))
    rows = keys // shape[1]
    crow = np.zeros(shape[0] + 1, dtype=idx)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
    del rows
    col = (keys % shape[1]).astype(idx)
    return torch.from_numpy(crow).to(device), torch.from_numpy(col).to(device)
