"""GLocal-K: global and local kernels for recommender systems.

References:
- S. C. Han, T. Lim, S. Long, B. Burgstaller, J. Poon, "GLocal-K: Global and Local
  Kernels for Recommender Systems", CIKM 2021 (arXiv 2108.12184).
- The authors' TensorFlow 1.x code, github.com/usydnlp/Glocal_K (the semantics below
  follow it: TF ``l2_regularizer`` scaling, Glorot-uniform biases, truncated normals).
- L. Muller, J. Martel, G. Indiveri, "Kernelized synaptic weight matrices", ICML 2018
  (the local kernel).

Layout: R is (n_items, n_users); rows are items (the autoencoder's samples), columns
are users (its input features). The model never reads files; it takes a
``TrainingInput`` (dense or sparse) built by ``prepare_input``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from glocalk.sparse import ConvPlan, SparsePattern, sampled_mm, spmm


@dataclass
class GLocalKConfig:
    """Architecture and loss hyperparameters (SPEC.md; defaults are ML-100K's)."""

    n_hid: int = 500
    n_dim: int = 5
    n_layers: int = 2
    gk_size: int = 3
    lambda_2: float = 20.0
    lambda_s: float = 0.006
    dot_scale: float = 1.0
    # "paper": g = (p @ C) * dot_scale, as published. "sqrt": additionally divide by
    # sqrt(n_items), so the kernel's magnitude no longer grows with the number of items
    # (see docs/RESULTS.md, the ML-1M fine-tuning collapse).
    gk_norm: str = "paper"
    # Ablations: local_kernel=False gives K = 1 (plain AutoRec layers, no lambda_s term);
    # global_kernel=False makes stage 2 keep training on R instead of R_hat.
    local_kernel: bool = True
    global_kernel: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _truncated_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    # TF's truncated_normal re-draws values beyond two standard deviations.
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-2 * std, b=2 * std)


class _KernelWeight(torch.autograd.Function):
    """(W * K, lambda_s/2 sum K^2 + lambda_2/2 sum W^2) with K = max(0, 1 - ||u_i - v_j||^2), fused.

    The same values and gradients as the dozen elementwise autograd ops it replaces, in a few
    passes over the (n_in x n_out) matrices: this is the fixed cost of every pass when there are
    many users (benchmarks/micro_kernel_layer.py: 1.5-2.2x faster on this layer).
    """

    @staticmethod
    def forward(ctx, w, u, v, lambda_s: float, lambda_2: float):  # noqa: D102
        # u (n_in, d), v (n_out, d): ||u_i - v_j||^2 = |u_i|^2 + |v_j|^2 - 2 u_i.v_j in one addmm.
        k = torch.addmm((u * u).sum(1, keepdim=True) + (v * v).sum(1), u, v.T, alpha=-2.0)
        k.neg_().add_(1.0).clamp_(min=0.0)  # K, (n_in, n_out)
        kf, wf = k.reshape(-1), w.reshape(-1)
        reg = 0.5 * lambda_s * torch.dot(kf, kf) + 0.5 * lambda_2 * torch.dot(wf, wf)
        ctx.save_for_backward(w, u, v, k)
        ctx.lambdas = (lambda_s, lambda_2)
        return w * k, reg

    @staticmethod
    def backward(ctx, g_wk, g_reg):  # noqa: D102
        w, u, v, k = ctx.saved_tensors
        lambda_s, lambda_2 = ctx.lambdas
        g_w = torch.addcmul(w * (lambda_2 * g_reg), g_wk, k)
        g_k = torch.addcmul(k * (lambda_s * g_reg), g_wk, w)
        g_k.mul_(k > 0)  # no gradient where the kernel is clamped at 0
        # K = 1 - dist2 where positive, so d/d dist2 = -g_k; d dist2 / d u_i = 2 (u_i - v_j).
        g_u = -2.0 * (u * g_k.sum(1, keepdim=True) - g_k @ v)
        g_v = -2.0 * (v * g_k.sum(0).unsqueeze(1) - g_k.T @ u)
        return g_w, g_u, g_v, None, None


class KernelLayer(nn.Module):
    """y = act(x @ (W * K) + b) with the local kernel K[i, j] = max(0, 1 - ||u_i - v_j||^2)."""

    def __init__(self, n_in: int, n_out: int, n_dim: int, activation: str, use_kernel: bool = True) -> None:
        super().__init__()
        self.activation = activation
        self.use_kernel = use_kernel
        self.W = nn.Parameter(torch.empty(n_in, n_out))
        self.b = nn.Parameter(torch.empty(n_out))
        self.u = nn.Parameter(torch.empty(n_in, 1, n_dim))
        self.v = nn.Parameter(torch.empty(1, n_out, n_dim))
        nn.init.xavier_uniform_(self.W)
        # TF's default initialiser for a 1-D variable is Glorot-uniform with fan_in = fan_out = n.
        bound = math.sqrt(3.0 / n_out)
        nn.init.uniform_(self.b, -bound, bound)
        _truncated_normal_(self.u, 1e-3)
        _truncated_normal_(self.v, 1e-3)

    def local_kernel(self) -> torch.Tensor:
        """K (n_in, n_out) = max(0, 1 - ||u_i - v_j||^2)."""
        u, v = self.u.squeeze(1), self.v.squeeze(0)  # (n_in, d), (n_out, d)
        # Expanded square: (n_in x n_out) memory instead of (n_in x n_out x d).
        dist2 = (u * u).sum(1, keepdim=True) + (v * v).sum(1) - 2.0 * (u @ v.T)
        return torch.clamp(1.0 - dist2, min=0.0)

    def weight_and_regulariser(self, lambda_s: float, lambda_2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(W * K, lambda_s/2 * sum(K^2) + lambda_2/2 * sum(W^2)) -- TF l2_regularizer scaling."""
        if not self.use_kernel:
            return self.W, 0.5 * lambda_2 * (self.W * self.W).sum()
        wk, reg = _KernelWeight.apply(self.W, self.u.squeeze(1), self.v.squeeze(0), lambda_s, lambda_2)
        return wk, reg

    def act(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z) if self.activation == "sigmoid" else z


@dataclass
class TrainingInput:
    """The training ratings in the form a forward pass needs, prepared once per run.

    Dense path: ``dense`` (n_items, n_users) and ``mask``. Sparse path: ``pattern`` (CSR) with
    ``values``, and ``conv`` (the sparse global convolution plan). Both paths compute the same
    mathematics; only their cost differs (O(n_items n_users) versus O(nnz)).
    """

    shape: tuple[int, int]
    dense: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    pattern: SparsePattern | None = None
    values: torch.Tensor | None = None
    conv: ConvPlan | None = None
    # Sparse path only: feed R_hat to the first layer as a dense matrix. Its pattern (the 3x3
    # dilation of R's) is far denser than R; above ~10% density a dense GEMM beats CSR products.
    conv_dense: bool = False

    @property
    def is_sparse(self) -> bool:
        return self.pattern is not None


CONV_DENSE_MIN_DENSITY = 0.10
CONV_DENSE_MAX_ENTRIES = 2**28  # 1 GiB of float32: beyond this R_hat stays sparse whatever its density


def prepare_input(train: sp.csr_matrix, sparse: bool, gk_size: int = 3,
                  device: torch.device | str = "cpu", conv_dense: bool | None = None) -> TrainingInput:
    """Build the dense or sparse representation of the training matrix on ``device``.

    ``conv_dense`` (sparse path): whether R_hat enters the first layer densely; None decides by the
    density of the convolution's output pattern and the matrix size.
    """
    train = sp.csr_matrix(train, dtype=np.float32)
    train.eliminate_zeros()  # a stored 0 means "not rated", as in the dense mask R > 0
    train.sort_indices()
    if train.nnz and train.data.min() < 0:
        raise ValueError("ratings must be positive: 0 means 'not rated' and negative values break the mask R > 0")
    if not sparse:
        dense = torch.from_numpy(train.toarray()).to(device)
        return TrainingInput(train.shape, dense=dense, mask=(dense > 0).to(dense.dtype))
    coo = train.tocoo()
    conv = ConvPlan(coo.row, coo.col, coo.data, train.shape, gk_size, device)
    n_entries = train.shape[0] * train.shape[1]
    if conv_dense is None:
        conv_dense = conv.output.nnz >= CONV_DENSE_MIN_DENSITY * n_entries and n_entries <= CONV_DENSE_MAX_ENTRIES
    return TrainingInput(
        train.shape,
        pattern=SparsePattern.from_scipy(train, device),
        values=torch.from_numpy(train.data.copy()).to(device),
        conv=conv,
        conv_dense=conv_dense,
    )


class GLocalK(nn.Module):
    """The GLocal-K network: kernel layers (local kernel) plus the global convolution kernel.

    Stage 1 (pre-training) trains the autoencoder f on R; stage 2 (fine-tuning) feeds it
    R_hat = relu(conv2d(R, g)), where the 3x3 kernel g is built from the item means of f(R)
    and the trainable matrix C (``gk_weight``). Both stages share all parameters.
    """

    def __init__(self, n_items: int, n_users: int, config: GLocalKConfig | None = None) -> None:
        super().__init__()
        self.config = config or GLocalKConfig()
        c = self.config
        if c.gk_norm not in ("paper", "sqrt"):
            raise ValueError(f"gk_norm must be 'paper' or 'sqrt', got {c.gk_norm!r}")
        self.n_items, self.n_users = n_items, n_users
        sizes = [n_users] + [c.n_hid] * c.n_layers
        self.hidden = nn.ModuleList(
            KernelLayer(sizes[i], sizes[i + 1], c.n_dim, "sigmoid", c.local_kernel) for i in range(c.n_layers)
        )
        self.out = KernelLayer(c.n_hid, n_users, c.n_dim, "identity", c.local_kernel)
        # C: (n_items, gk_size^2), truncated normal std 0.1; trained in stage 2 only.
        self.gk_weight = nn.Parameter(_truncated_normal_(torch.empty(n_items, c.gk_size**2), 0.1))

    # -- parameters of each stage -------------------------------------------------------

    def network_parameters(self) -> list[nn.Parameter]:
        """Stage-1 variables: every kernel layer's W, b (and u, v when the local kernel is on)."""
        layers = [*self.hidden, self.out]
        if self.config.local_kernel:
            return [p for layer in layers for p in layer.parameters()]
        return [p for layer in layers for p in (layer.W, layer.b)]

    def finetune_parameters(self) -> list[nn.Parameter]:
        """Stage-2 variables: the network's plus the global kernel matrix C (when it is used)."""
        return self.network_parameters() + ([self.gk_weight] if self.config.global_kernel else [])

    # -- the forward pieces --------------------------------------------------------------

    def weights(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Each layer's (W * K, b) and the sum of all layers' regularisers."""
        c = self.config
        layers, reg = [], 0.0
        for layer in [*self.hidden, self.out]:
            w_eff, r = layer.weight_and_regulariser(c.lambda_s, c.lambda_2)
            layers.append((w_eff, layer.b))
            reg = reg + r
        return layers, reg

    def encode(self, x: torch.Tensor | tuple[SparsePattern, torch.Tensor], weights) -> torch.Tensor:
        """Last hidden layer (n_items, n_hid) for a dense input or a sparse (pattern, values) input."""
        (w1, b1), *rest = weights[: len(self.hidden)]
        if isinstance(x, tuple):
            pattern, values = x
            z = spmm(values, w1, pattern)  # (n_items, n_hid), O(nnz * n_hid)
        else:
            z = x @ w1
        h = torch.sigmoid(z + b1)
        for w, b in rest:
            h = torch.sigmoid(h @ w + b)  # (n_items, n_hid)
        return h

    def decode(self, h: torch.Tensor, weights) -> torch.Tensor:
        """Dense output (n_items, n_users) of the identity output layer."""
        w, b = weights[-1]
        return h @ w + b

    def decode_at(self, h: torch.Tensor, weights, pattern: SparsePattern) -> torch.Tensor:
        """Output only at the entries of ``pattern`` (CSR order): an SDDMM, O(nnz * n_hid)."""
        w, b = weights[-1]
        # The bias rides along as an extra hidden unit fixed at 1: its gradient then comes out of
        # the (deterministic) CSR product, not a multithreaded scatter-add over nnz entries.
        ones = torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)
        return sampled_mm(torch.cat([h, ones], 1), torch.cat([w, b[None, :]], 0), pattern)

    def item_means(self, h: torch.Tensor, weights) -> torch.Tensor:
        """Mean over users of the output, (n_items,), without the dense output.

        mean_j (h @ W + b)[:, j] = h @ mean_j W[:, j] + mean_j b[j].
        """
        w, b = weights[-1]
        return h @ w.mean(1) + b.mean()

    def global_kernel(self, item_means: torch.Tensor) -> torch.Tensor:
        """g (gk_size, gk_size) = (p @ C) * dot_scale: average pooling, then scaled dot product."""
        c = self.config
        g = (item_means @ self.gk_weight) * c.dot_scale
        if c.gk_norm == "sqrt":
            g = g / math.sqrt(self.n_items)
        return g.reshape(c.gk_size, c.gk_size)

    @staticmethod
    def global_conv(r: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """relu(conv2d(R, g)): R as one single-channel image, stride 1, 'same' zero padding."""
        k = g.shape[0]
        left = (k - 1) // 2  # TF "SAME": the smaller half of the padding first
        x = F.pad(r[None, None], (left, k - 1 - left, left, k - 1 - left))
        return F.relu(F.conv2d(x, g[None, None]))[0, 0]

    # -- losses and predictions --------------------------------------------------------

    def _conv_input(self, data: TrainingInput, weights):
        """The fine-tuning input R_hat, dense or as (pattern, values)."""
        if data.is_sparse:
            h0 = self.encode((data.pattern, data.values), weights)
            g = self.global_kernel(self.item_means(h0, weights))
            values = F.relu(data.conv(g))
            if data.conv_dense:
                out = data.conv.output
                return torch.zeros(data.shape, dtype=values.dtype, device=values.device).index_put(
                    (out.row, out.col), values)
            return (data.conv.output, values)
        y_dash = self.decode(self.encode(data.dense, weights), weights)  # f(R), (n_items, n_users)
        g = self.global_kernel(y_dash.mean(1))
        return self.global_conv(data.dense, g)

    def loss(self, data: TrainingInput, stage: int) -> torch.Tensor:
        """1/2 sum over observed entries of (R - f(x))^2 + regularisers.

        x = R in stage 1 (pre-training) and R_hat = relu(conv2d(R, g)) in stage 2.
        """
        weights, reg = self.weights()
        if stage == 1 or not self.config.global_kernel:
            x = (data.pattern, data.values) if data.is_sparse else data.dense
        else:
            x = self._conv_input(data, weights)
        h = self.encode(x, weights)
        if data.is_sparse:
            err = data.values - self.decode_at(h, weights, data.pattern)
        else:
            err = data.mask * (data.dense - self.decode(h, weights))
        return 0.5 * (err * err).sum() + reg

    @torch.no_grad()
    def hidden_representation(self, data: TrainingInput, stage: int) -> tuple[torch.Tensor, list]:
        """The last hidden layer for prediction: f's encoding of R (stage 1) or of R_hat (stage 2)."""
        weights, _ = self.weights()
        if stage == 1 or not self.config.global_kernel:
            x = (data.pattern, data.values) if data.is_sparse else data.dense
        else:
            x = self._conv_input(data, weights)
        return self.encode(x, weights), weights

    @torch.no_grad()
    def predict_dense(self, data: TrainingInput, stage: int) -> torch.Tensor:
        """All predictions (n_items, n_users), unclipped."""
        h, weights = self.hidden_representation(data, stage)
        return self.decode(h, weights)

    @torch.no_grad()
    def predict_at(self, data: TrainingInput, stage: int, pattern: SparsePattern) -> torch.Tensor:
        """Predictions at the entries of ``pattern`` only (CSR order), unclipped."""
        h, weights = self.hidden_representation(data, stage)
        return self.decode_at(h, weights, pattern)
