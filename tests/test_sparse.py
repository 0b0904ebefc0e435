"""The sparse building blocks against dense NumPy / SciPy references.

- ``SparsePattern``: CSR structure and its transpose against scipy.sparse;
- ``spmm`` / ``sampled_mm``: forward against dense products, backward by
  ``torch.autograd.gradcheck`` in float64 and against dense autograd;
- ``torch.sparse.sampled_addmm`` supports float64 on CPU (the float64 gradchecks need it);
- ``ConvPlan``: equals a direct k x k "same" cross-correlation (scipy.signal.correlate2d and an
  explicit TF-SAME loop) at every entry, is zero-free outside its pattern, and its pattern is
  exactly the k x k dilation of R's pattern;
- its CSR calls leave the caller's warning filters alone.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.signal
import scipy.sparse as sp
import torch

from glocalk.sparse import ConvPlan, SparsePattern, index_dtype, sampled_mm, spmm

pytestmark = [pytest.mark.filterwarnings("ignore:Sparse"), pytest.mark.usefixtures("one_torch_thread")]


def random_csr(n_rows, n_cols, density, seed, empty_rows=(), empty_cols=(), low=1, high=5):
    """A random CSR matrix with integer values in [low, high] and some rows/columns left empty."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n_rows, n_cols)) < density, rng.integers(low, high + 1, (n_rows, n_cols)), 0)
    dense[list(empty_rows), :] = 0
    dense[:, list(empty_cols)] = 0
    m = sp.csr_matrix(dense.astype(np.float64))
    m.sort_indices()
    return m


def tf_same_correlate(r, g):
    """TF/torch conv2d with 'SAME' padding (the smaller half of the padding first), by explicit loops."""
    k = g.shape[0]
    before = (k - 1) // 2
    after = k - 1 - before
    padded = np.pad(r, ((before, after), (before, after)))
    out = np.zeros_like(r, dtype=np.float64)
    for p in range(r.shape[0]):
        for q in range(r.shape[1]):
            out[p, q] = (padded[p:p + k, q:q + k] * g).sum()
    return out


# --------------------------------------------------------------------------- pattern


def test_pattern_structure_matches_scipy():
    m = random_csr(7, 6, 0.4, seed=1, empty_rows=(0, 4), empty_cols=(2, 5))
    p = SparsePattern.from_scipy(m)
    coo = m.tocoo()
    assert p.shape == (7, 6) and p.nnz == m.nnz
    np.testing.assert_array_equal(p.row.numpy(), coo.row, err_msg="row index per CSR entry")
    np.testing.assert_array_equal(p.col.numpy(), coo.col, err_msg="col index per CSR entry")
    values = torch.from_numpy(m.data.copy())
    np.testing.assert_array_equal(p.matrix(values).to_dense().numpy(), m.toarray())
    np.testing.assert_array_equal(p.matrix_t(values).to_dense().numpy(), m.toarray().T,
                                  err_msg="matrix_t must be the exact transpose")
    # t_crow / t_col form a valid CSR of the transpose (sorted within rows).
    mt = sp.csr_matrix(m.T)
    mt.sort_indices()
    np.testing.assert_array_equal(p.t_crow.numpy(), mt.indptr)
    np.testing.assert_array_equal(p.t_col.numpy(), mt.indices)


def test_from_scipy_sorts_unsorted_indices():
    # CSR with unsorted column indices inside a row.
    m = sp.csr_matrix((np.array([3.0, 1.0, 2.0]), np.array([2, 0, 1]), np.array([0, 3, 3])), shape=(2, 3))
    assert not m.has_sorted_indices
    p = SparsePattern.from_scipy(m)
    assert p.col.tolist() == [0, 1, 2], f"pattern columns must be sorted, got {p.col.tolist()}"


# --------------------------------------------------------------------------- spmm / sampled_mm forward


def test_spmm_forward_equals_dense_product():
    m = random_csr(9, 7, 0.35, seed=2, empty_rows=(3,), empty_cols=(0,))
    p = SparsePattern.from_scipy(m)
    rng = np.random.default_rng(3)
    dense = rng.standard_normal((7, 4))
    out = spmm(torch.from_numpy(m.data.copy()), torch.from_numpy(dense), p)
    np.testing.assert_allclose(out.numpy(), m.toarray() @ dense, rtol=1e-12, atol=1e-12)


def test_sampled_mm_forward_equals_dense_product_at_pattern():
    m = random_csr(8, 10, 0.3, seed=4, empty_rows=(1, 7), empty_cols=(9,))
    p = SparsePattern.from_scipy(m)
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((8, 3)), rng.standard_normal((3, 10))
    coo = m.tocoo()
    out = sampled_mm(torch.from_numpy(a), torch.from_numpy(b), p)
    np.testing.assert_allclose(out.numpy(), (a @ b)[coo.row, coo.col], rtol=1e-12, atol=1e-12)


def test_sampled_addmm_supports_float64_on_cpu():
    """The float64 gradchecks of sparse execution rely on torch.sparse.sampled_addmm in float64 on CPU."""
    rng = np.random.default_rng(6)
    m = random_csr(5, 4, 0.5, seed=6)
    coo = m.tocoo()
    a, b = torch.from_numpy(rng.standard_normal((5, 3))), torch.from_numpy(rng.standard_normal((3, 4)))
    zeros = torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                    torch.from_numpy(m.indices.astype(np.int64)),
                                    torch.zeros(m.nnz, dtype=torch.float64), m.shape)
    out = torch.sparse.sampled_addmm(zeros, a, b, beta=0.0)
    assert out.dtype == torch.float64, f"sampled_addmm returned {out.dtype} for float64 inputs"
    np.testing.assert_allclose(out.values().numpy(), (a.numpy() @ b.numpy())[coo.row, coo.col], rtol=1e-12)


def test_empty_pattern():
    p = SparsePattern.from_scipy(sp.csr_matrix((4, 3)))
    a, b = torch.randn(4, 2), torch.randn(2, 3)
    assert sampled_mm(a, b, p).shape == (0,)
    out = spmm(torch.zeros(0), torch.randn(3, 2), p)
    assert out.shape == (4, 2) and torch.all(out == 0), "an empty sparse matrix times anything is zero"


# --------------------------------------------------------------------------- gradients


def test_spmm_gradcheck_float64():
    m = random_csr(6, 5, 0.4, seed=7, empty_rows=(2,), empty_cols=(4,))
    p = SparsePattern.from_scipy(m)
    values = torch.from_numpy(m.data.copy()).requires_grad_(True)
    dense = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, d: spmm(v, d, p), (values, dense), eps=1e-6, atol=1e-7)


def test_sampled_mm_gradcheck_float64():
    m = random_csr(6, 7, 0.4, seed=8, empty_rows=(0,), empty_cols=(3,))
    p = SparsePattern.from_scipy(m)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: sampled_mm(x, y, p), (a, b), eps=1e-6, atol=1e-7)


def test_sampled_mm_with_bias_equals_dense_affine_map_and_gradchecks():
    """bias adds bias[j] to every entry of column j: against the dense (a @ b + bias) at the pattern, and the
    bias's gradient (the gradient's column sums) by gradcheck, empty rows and columns included."""
    m = random_csr(6, 7, 0.4, seed=10, empty_rows=(0,), empty_cols=(3,))
    p = SparsePattern.from_scipy(m)
    coo = m.tocoo()
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)
    out = sampled_mm(a, b, p, bias=bias)
    dense = a.detach().numpy() @ b.detach().numpy() + bias.detach().numpy()[None, :]
    np.testing.assert_allclose(out.detach().numpy(), dense[coo.row, coo.col], rtol=1e-12, atol=1e-12)
    weights = torch.randn(m.nnz, dtype=torch.float64, generator=gen)
    (out * weights).sum().backward()
    expected = np.bincount(coo.col, weights=weights.numpy(), minlength=7)  # column sums, by hand
    np.testing.assert_allclose(bias.grad.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, y, z: sampled_mm(x, y, p, bias=z), (a, b, bias), eps=1e-6, atol=1e-7)


def test_sparse_backward_equals_dense_autograd():
    """Gradients of a scalar built from both products equal those of the dense masked computation."""
    m = random_csr(10, 8, 0.3, seed=9, empty_rows=(5,), empty_cols=(1, 6))
    p = SparsePattern.from_scipy(m)
    coo = m.tocoo()
    gen = torch.Generator().manual_seed(2)
    vals = torch.from_numpy(m.data.copy()).requires_grad_(True)
    w = torch.randn(8, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    w2 = torch.randn(4, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    h = torch.tanh(spmm(vals, w, p))
    loss = (sampled_mm(h, w2, p) ** 2).sum()
    g_sparse = torch.autograd.grad(loss, (vals, w, w2))

    vals_d = vals.detach().clone().requires_grad_(True)
    w_d, w2_d = w.detach().clone().requires_grad_(True), w2.detach().clone().requires_grad_(True)
    rows, cols = torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))
    dense = torch.zeros(10, 8, dtype=torch.float64).index_put((rows, cols), vals_d)
    mask = torch.zeros(10, 8, dtype=torch.float64).index_put((rows, cols), torch.ones(m.nnz, dtype=torch.float64))
    h_d = torch.tanh(dense @ w_d)
    loss_d = ((mask * (h_d @ w2_d)) ** 2).sum()
    g_dense = torch.autograd.grad(loss_d, (vals_d, w_d, w2_d))
    assert torch.allclose(loss, loss_d, rtol=1e-12)
    for name, gs, gd in zip(("values", "w", "w2"), g_sparse, g_dense, strict=True):
        assert torch.allclose(gs, gd, rtol=1e-10, atol=1e-12), f"gradient of {name} differs from dense autograd"


# --------------------------------------------------------------------------- ConvPlan


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_conv_plan_equals_dense_correlation(k):
    # Ratings in corners and on the border exercise the padding.
    m = random_csr(9, 11, 0.25, seed=10 + k, empty_rows=(4,), empty_cols=(6,)).tolil()
    m[0, 0], m[8, 10], m[0, 10], m[8, 0] = 5.0, 4.0, 3.0, 2.0
    m = sp.csr_matrix(m)
    m.sort_indices()
    coo = m.tocoo()
    plan = ConvPlan(coo.row, coo.col, coo.data, m.shape, k)
    rng = np.random.default_rng(k)
    g = rng.standard_normal((k, k))
    r = m.toarray()

    ref = scipy.signal.correlate2d(r, g, mode="same")
    np.testing.assert_allclose(ref, tf_same_correlate(r, g), atol=1e-12,
                               err_msg="scipy 'same' and TF 'SAME' alignments should agree")

    values = plan(torch.from_numpy(g).float()).double().numpy()
    out = plan.output
    rows, cols = out.row.numpy(), out.col.numpy()
    np.testing.assert_allclose(values, ref[rows, cols], rtol=1e-5, atol=1e-5,
                               err_msg=f"ConvPlan values differ from the dense correlation (k={k})")
    in_pattern = np.zeros(m.shape, dtype=bool)
    in_pattern[rows, cols] = True
    assert np.all(ref[~in_pattern] == 0), f"dense correlation is non-zero outside the plan's pattern (k={k})"
    # The pattern is exactly the k x k dilation of R's pattern.
    dilation = scipy.signal.correlate2d((r > 0).astype(float), np.ones((k, k)), mode="same") > 0.5
    np.testing.assert_array_equal(in_pattern, dilation, err_msg=f"plan pattern is not the k x k dilation (k={k})")
    # The output pattern is a valid, sorted CSR pattern.
    keys = rows.astype(np.int64) * m.shape[1] + cols
    assert np.all(np.diff(keys) > 0), "output entries must be in strictly increasing CSR order"


def test_conv_plan_gradcheck_float64():
    m = random_csr(6, 5, 0.4, seed=20)
    coo = m.tocoo()
    plan = ConvPlan(coo.row, coo.col, coo.data, m.shape, 3)
    plan.shift_values = plan.shift_values.double()  # the plan is built in float32; gradcheck needs float64
    g = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert torch.autograd.gradcheck(plan, (g,), eps=1e-6, atol=1e-7)
    # The map is linear in g: its Jacobian column for g[a, b] is the correlation with a unit kernel.
    r = m.toarray()
    rows, cols = plan.output.row.numpy(), plan.output.col.numpy()
    jac = torch.autograd.functional.jacobian(plan, g.detach()).reshape(len(rows), 9).numpy()
    for a in range(3):
        for b in range(3):
            unit = np.zeros((3, 3))
            unit[a, b] = 1.0
            np.testing.assert_allclose(jac[:, a * 3 + b], tf_same_correlate(r, unit)[rows, cols], atol=1e-12)


def test_csr_calls_leave_the_callers_warning_filters_alone():
    """torch's "CSR is beta" warning is silenced only around glocalk's own CSR calls (never by a filter
    installed at import: tests/test_house_rules.py), and those calls restore the caller's filters."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine = list(warnings.filters)
        p = SparsePattern(torch.tensor([0, 1, 2]), torch.tensor([1, 0]), (2, 2))
        assert spmm(torch.ones(2), torch.eye(2), p).tolist() == [[0.0, 1.0], [1.0, 0.0]]
        assert p.matrix_t(torch.ones(2)).to_dense().tolist() == [[0.0, 1.0], [1.0, 0.0]]
        assert warnings.filters == mine, "a CSR call changed the caller's warning filters"


# --------------------------------------------------------------------------- index width, laziness, materialised


def test_indices_are_int32_where_they_fit():
    m = random_csr(7, 6, 0.4, seed=30)
    p = SparsePattern.from_scipy(m)
    assert p.crow.dtype == p.col.dtype == torch.int32, "CSR indices of a small matrix must be int32"
    assert p.t_col.dtype == p.t_perm.dtype == torch.int32
    assert index_dtype(2**31 - 1) == torch.int32 and index_dtype(10, 2**31) == torch.int64
    coo = m.tocoo()
    plan = ConvPlan(coo.row, coo.col, coo.data, m.shape, 3)
    assert plan.shift_index.dtype == plan.output.col.dtype == torch.int32


def test_transpose_is_built_only_for_a_backward():
    m = random_csr(8, 5, 0.5, seed=31)
    p = SparsePattern.from_scipy(m)
    a, b = torch.randn(8, 3), torch.randn(3, 5)
    with torch.no_grad():
        sampled_mm(a, b, p)
        spmm(torch.ones(p.nnz), torch.randn(5, 2), p)
    assert not p.transpose_built, "a forward-only use (evaluation) must not build the transpose"
    b.requires_grad_(True)
    sampled_mm(a, b, p).sum().backward()
    assert p.transpose_built


@pytest.mark.parametrize("forwards", [1, 2])
def test_materialised_spmm_equals_csr(forwards):
    """The dense-GEMM execution of a pattern gives the CSR products' values and gradients, also when a
    second forward (other values) overwrote the shared buffer before the first one's backward."""
    m = random_csr(9, 7, 0.5, seed=32)
    coo = m.tocoo()
    csr, dense_p = SparsePattern.from_scipy(m), SparsePattern.from_scipy(m)
    dense_p.materialise = True
    gen = torch.Generator().manual_seed(4)
    values = torch.rand(m.nnz, dtype=torch.float64, generator=gen).requires_grad_(True)
    w = torch.randn(7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    r = np.zeros(m.shape)
    r[coo.row, coo.col] = values.detach().numpy()
    outs = [spmm(values * (i + 1), w, dense_p) for i in range(forwards)]
    np.testing.assert_allclose(outs[0].detach().numpy(), r @ w.detach().numpy(), rtol=1e-12)
    g_out = torch.randn(9, 3, dtype=torch.float64, generator=gen)
    got = torch.autograd.grad(outs[0], (values, w), g_out)
    want = torch.autograd.grad(spmm(values, w, csr), (values, w), g_out)
    for a, b, what in zip(got, want, ("values", "dense operand"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"gradient in the {what}")
