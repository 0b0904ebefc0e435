"""GLocal-K: global and local kernels for recommender systems.

References:
- S. C. Han, T. Lim, S. Long, B. Burgstaller, J. Poon, "GLocal-K: Global and Local
  Kernels for Recommender Systems", CIKM 2021 (arXiv 2108.12184).
- The authors' TensorFlow 1.x code, github.com/usydnlp/Glocal_K (the semantics below
  follow it: TF ``l2_regularizer`` scaling, Glorot-uniform biases, truncated normals).
- L. Muller, J. Martel, G. Indiveri, "Kernelized synaptic weight matrices", ICML 2018
  (the local kernel).

Layout: R is (n_items, n_users); rows are items (the autoencoder's samples), columns
are users (its input features).

The module reads bottom-up like SPEC.md: the local kernel, ``KernelLayer.forward``, the
network with its global kernel and convolution, and ``GLocalK.forward`` -- the plain dense
predictions and loss. After it come the variants training runs, each tested equal to the
plain forward (tests/test_model.py): the fused kernel weight (``KernelLayer.weight_and_regulariser``)
and the passes over a prepared input in dense or sparse execution (``GLocalK.loss``). The
model never reads files; the prepared input comes from ``glocalk.inputs.prepare_input``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import IntEnum
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn

from glocalk.errors import ConfigError, option_name
from glocalk.sparse import SparsePattern, sampled_mm, spmm

GK_NORMS = ("paper", "sqrt")
OUTPUT_BIASES = ("glorot", "mean")


class Stage(IntEnum):
    """The two training stages (an IntEnum, so callers passing 1 or 2 keep working)."""

    PRETRAIN = 1  # f on R
    FINETUNE = 2  # f on R_hat = relu(conv2d(R, g))


@dataclass
class GLocalKConfig:
    """Architecture and loss hyperparameters (SPEC.md; defaults are ML-100K's). Validated on creation."""

    n_hid: int = 500
    """Hidden units per kernel layer (>= 1)."""
    n_dim: int = 5
    """Dimension of the local kernel's u, v vectors (>= 1)."""
    n_layers: int = 2
    """Number of sigmoid hidden layers (>= 1)."""
    gk_size: int = 3
    """Side of the global convolution kernel (>= 1; even sizes pad as TF "SAME" does)."""
    lambda_2: float = 20.0
    """L2 penalty on W: lambda_2/2 * sum W^2 (finite, >= 0)."""
    lambda_s: float = 0.006
    """Penalty on the local kernel: lambda_s/2 * sum K^2 (finite, >= 0)."""
    dot_scale: float = 1.0
    """Scale of the global kernel's dot product (finite, > 0)."""
    gk_norm: str = "paper"
    """Global kernel scaling: "paper" g = (p @ C) * dot_scale, as published; "sqrt" also divides by
    sqrt(n_items), so g's magnitude no longer grows with the number of items (docs/RESULTS.md, ML-1M)."""
    output_bias: str = "glorot"
    """Initial output-layer bias: "glorot" as published (TF's Glorot-uniform default, close to 0); "mean" the
    training ratings' mean (``GLocalK.init_output_bias``), so a user without training ratings, whose bias no
    rating ever moves, is predicted the mean rather than ~0 (sparse own data: BENCHMARKS.md)."""
    local_kernel: bool = True
    """Ablation: False gives K = 1 (plain AutoRec layers, no lambda_s term)."""
    global_kernel: bool = True
    """Ablation: False makes stage 2 keep training on R instead of R_hat."""

    def __post_init__(self) -> None:
        for name in ("n_hid", "n_dim", "n_layers", "gk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
                raise ConfigError(f"{option_name(name)} must be an integer >= 1, got {value!r}")
        for name, low, inclusive in (("lambda_2", 0.0, True), ("lambda_s", 0.0, True), ("dot_scale", 0.0, False)):
            value = getattr(self, name)
            ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and (
                value >= low if inclusive else value > low)
            if not ok:
                raise ConfigError(f"{option_name(name)} must be a finite number {'>=' if inclusive else '>'} {low:g}, "
                                  f"got {value!r}")
        if self.gk_norm not in GK_NORMS:
            raise ConfigError(f"{option_name('gk_norm')} must be 'paper' or 'sqrt', got {self.gk_norm!r}")
        if self.output_bias not in OUTPUT_BIASES:
            raise ConfigError(f"{option_name('output_bias')} must be 'glorot' or 'mean', got {self.output_bias!r}")
        for name in ("local_kernel", "global_kernel"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """The fields as a plain dict (the ``model_config`` of summaries and model directories)."""
        return asdict(self)


def _truncated_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    # TF's truncated_normal re-draws values beyond two standard deviations.
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-2 * std, b=2 * std)


# --------------------------------------------------------------------------- the local kernel


def local_kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """K[i, j] = max(0, 1 - ||u_i - v_j||^2) for u (n_in, d), v (n_out, d); returns (n_in, n_out).

    The one computation of K: the plain layer differentiates it with autograd, the fused weight
    calls it inside its own forward.
    """
    # -||u_i - v_j||^2 = -(|u_i|^2 + |v_j|^2) + 2 u_i.v_j: (n_in, n_out) memory instead of (n_in, n_out, d).
    # The GEMM accumulates into the broadcast sum in place (no copy of it), and negating C and alpha
    # gives exactly -dist2 (rounding is symmetric), so K is bit for bit that of 1 - (|u|^2 + |v|^2 - 2 u.v).
    neg_dist2 = torch.sub(-(u * u).sum(1, keepdim=True), (v * v).sum(1))  # (n_in, n_out)
    # 1 - dist2 and the clamp in place: no further (n_in, n_out) buffers. Autograd allows it: the
    # backwards of addmm and add do not need their outputs, relu's uses its own.
    return neg_dist2.addmm_(u, v.T, alpha=2.0).add_(1.0).relu_()


class KernelLayer(nn.Module):
    """y = act(x @ (W * K) + b) with the local kernel K[i, j] = max(0, 1 - ||u_i - v_j||^2)."""

    def __init__(self, n_in: int, n_out: int, n_dim: int, activation: str, use_kernel: bool = True) -> None:
        super().__init__()
        if activation not in ("sigmoid", "identity"):
            raise ValueError(f"activation must be 'sigmoid' or 'identity', got {activation!r}")
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
        return local_kernel(self.u.squeeze(1), self.v.squeeze(0))

    def weight(self) -> torch.Tensor:
        """W * K (n_in, n_out): W alone without the local kernel."""
        return self.W * self.local_kernel() if self.use_kernel else self.W

    def regulariser(self, lambda_s: float, lambda_2: float) -> torch.Tensor:
        """lambda_s/2 * sum(K^2) + lambda_2/2 * sum(W^2) (TF ``l2_regularizer`` scaling)."""
        reg = 0.5 * lambda_2 * (self.W * self.W).sum()
        if self.use_kernel:
            k = self.local_kernel()
            reg = reg + 0.5 * lambda_s * (k * k).sum()
        return reg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = act(x @ (W * K) + b): (n_rows, n_in) -> (n_rows, n_out)."""
        z = x @ self.weight() + self.b  # (n_rows, n_out)
        return torch.sigmoid(z) if self.activation == "sigmoid" else z

    # -- the fused variant training runs -------------------------------------------------

    def weight_and_regulariser(self, lambda_s: float, lambda_2: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(``weight()``, ``regulariser(lambda_s, lambda_2)``) in one fused pass over K."""
        if not self.use_kernel:
            return self.W, 0.5 * lambda_2 * (self.W * self.W).sum()
        wk, reg = _KernelWeight.apply(self.W, self.u.squeeze(1), self.v.squeeze(0), lambda_s, lambda_2)
        return wk, reg


class _KernelWeight(torch.autograd.Function):
    """(W * K, lambda_s/2 sum K^2 + lambda_2/2 sum W^2), fused.

    The same values and gradients as the plain layer's dozen elementwise autograd ops, in a few
    passes over the (n_in x n_out) matrices: this is the fixed cost of every pass when there are
    many users (benchmarks/micro_kernel_layer.py: 1.5-2.2x faster on this layer).
    """

    @staticmethod
    def forward(ctx, w, u, v, lambda_s: float, lambda_2: float):  # noqa: D102
        k = local_kernel(u, v)  # (n_in, n_out)
        kf, wf = k.reshape(-1), w.reshape(-1)
        reg = 0.5 * lambda_s * torch.dot(kf, kf) + 0.5 * lambda_2 * torch.dot(wf, wf)
        ctx.save_for_backward(w, u, v, k)
        ctx.lambdas = (lambda_s, lambda_2)
        return w * k, reg

    @staticmethod
    def backward(ctx, g_wk, g_reg):  # noqa: D102
        w, u, v, k = ctx.saved_tensors
        lambda_s, lambda_2 = ctx.lambdas
        # The same arithmetic as addcmul(w * c, g_wk, k), in place: one (n_in, n_out) allocation, not two.
        g_w = torch.mul(w, lambda_2 * g_reg).addcmul_(g_wk, k)
        g_k = torch.mul(k, lambda_s * g_reg).addcmul_(g_wk, w)
        g_k.masked_fill_(k <= 0, 0.0)  # no gradient where the kernel is clamped at 0 (no float copy of the mask)
        # K = 1 - dist2 where positive, so d/d dist2 = -g_k; d dist2 / d u_i = 2 (u_i - v_j).
        g_u = -2.0 * (u * g_k.sum(1, keepdim=True) - g_k @ v)
        g_v = -2.0 * (v * g_k.sum(0).unsqueeze(1) - g_k.T @ u)
        return g_w, g_u, g_v, None, None


# --------------------------------------------------------------------------- the network


class GLocalK(nn.Module):
    """The GLocal-K network: kernel layers (local kernel) plus the global convolution kernel.

    Stage 1 (pre-training) trains the autoencoder f on R; stage 2 (fine-tuning) feeds it
    R_hat = relu(conv2d(R, g)), where the gk_size x gk_size kernel g is built from the item
    means of f(R) and the trainable matrix C (``gk_weight``). Both stages share all parameters.
    """

    def __init__(self, n_items: int, n_users: int, config: GLocalKConfig | None = None) -> None:
        super().__init__()
        self.config = config or GLocalKConfig()
        c = self.config
        self.n_items, self.n_users = n_items, n_users
        sizes = [n_users] + [c.n_hid] * c.n_layers
        self.hidden = nn.ModuleList(
            KernelLayer(sizes[i], sizes[i + 1], c.n_dim, "sigmoid", c.local_kernel) for i in range(c.n_layers)
        )
        self.out = KernelLayer(c.n_hid, n_users, c.n_dim, "identity", c.local_kernel)
        # C: (n_items, gk_size^2), truncated normal std 0.1; trained in stage 2 only.
        self.gk_weight = nn.Parameter(_truncated_normal_(torch.empty(n_items, c.gk_size**2), 0.1))

    def init_output_bias(self, rating_mean: float) -> None:
        """Apply ``config.output_bias`` once the training data are known: with "mean" every output bias
        starts at ``rating_mean`` (the training ratings' mean, model units); "glorot" keeps the paper's.
        The other parameters' draws are unchanged either way."""
        if self.config.output_bias == "mean":
            with torch.no_grad():
                self.out.b.fill_(rating_mean)

    @property
    def layers(self) -> list[KernelLayer]:
        """The kernel layers of f in order: the hidden ones, then the output layer."""
        return [*self.hidden, self.out]

    # -- parameters of each stage -------------------------------------------------------

    def network_parameters(self) -> list[nn.Parameter]:
        """Stage-1 variables: every kernel layer's W, b (and u, v when the local kernel is on)."""
        if self.config.local_kernel:
            return [p for layer in self.layers for p in layer.parameters()]
        return [p for layer in self.layers for p in (layer.W, layer.b)]

    def finetune_parameters(self) -> list[nn.Parameter]:
        """Stage-2 variables: the network's plus the global kernel matrix C (when it is used)."""
        return self.network_parameters() + ([self.gk_weight] if self.config.global_kernel else [])

    # -- the paper, plain and dense -------------------------------------------------------

    def autoencoder(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): the kernel layers in turn, (n_items, n_users) -> (n_items, n_users)."""
        for layer in self.layers:
            x = layer(x)  # (n_items, n_hid), and (n_items, n_users) after the output layer
        return x

    def global_kernel(self, item_means: torch.Tensor) -> torch.Tensor:
        """g (gk_size, gk_size) = (p @ C) * dot_scale: average pooling, then scaled dot product."""
        c = self.config
        g = (item_means @ self.gk_weight) * c.dot_scale  # (gk_size^2,)
        if c.gk_norm == "sqrt":
            g = g / math.sqrt(self.n_items)
        return g.reshape(c.gk_size, c.gk_size)

    @staticmethod
    def global_conv(r: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """relu(conv2d(R, g)): R as one single-channel image, stride 1, 'same' zero padding."""
        k = g.shape[0]
        left = (k - 1) // 2  # TF "SAME": the smaller half of the padding first
        x = F.pad(r[None, None], (left, k - 1 - left, left, k - 1 - left))  # (1, 1, n_items + k - 1, ...)
        return F.relu(F.conv2d(x, g[None, None]))[0, 0]  # (n_items, n_users)

    def regulariser(self) -> torch.Tensor:
        """The sum of every kernel layer's regulariser."""
        c = self.config
        return sum(layer.regulariser(c.lambda_s, c.lambda_2) for layer in self.layers)

    def forward(self, r: torch.Tensor, stage: Stage = Stage.PRETRAIN) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, loss) on the dense training matrix R (n_items, n_users), as SPEC.md writes them.

        Stage 1: f(R). Stage 2: f(R_hat), R_hat = relu(conv2d(R, g)), g from the item means of f(R).
        loss = 1/2 * sum((M * (R - prediction))^2) + the layers' regularisers, with M = (R > 0).
        """
        x = r
        if Stage(stage) == Stage.FINETUNE and self.config.global_kernel:
            p = self.autoencoder(r).mean(1)  # item means of f(R), (n_items,)
            x = self.global_conv(r, self.global_kernel(p))  # R_hat, (n_items, n_users)
        pred = self.autoencoder(x)  # (n_items, n_users)
        err = (r > 0) * (r - pred)  # observed entries only
        return pred, 0.5 * (err * err).sum() + self.regulariser()

    # -- the same computation as training runs it: fused weights, dense or sparse execution --

    def weights(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Each layer's (W * K, b) and the sum of all layers' regularisers: K once per pass, fused."""
        c = self.config
        layers, reg = [], 0.0
        for layer in self.layers:
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
            z = x @ w1  # (n_items, n_hid)
        # In place: the same values with one (n_items, n_hid) allocation per layer instead of three (the
        # products' backwards do not need their outputs; sigmoid's keeps its own).
        h = z.add_(b1).sigmoid_()
        for w, b in rest:
            h = torch.mm(h, w).add_(b).sigmoid_()  # (n_items, n_hid)
        return h

    def decode(self, h: torch.Tensor, weights) -> torch.Tensor:
        """Dense output (n_items, n_users) of the identity output layer."""
        w, b = weights[-1]
        return h @ w + b

    def decode_at(self, h: torch.Tensor, weights, pattern: SparsePattern) -> torch.Tensor:
        """Output only at the entries of ``pattern`` (CSR order), (nnz,): an SDDMM, O(nnz * n_hid)."""
        w, b = weights[-1]
        return sampled_mm(h, w, pattern, bias=b)

    def item_means(self, h: torch.Tensor, weights) -> torch.Tensor:
        """Mean over users of the output, (n_items,), without the dense output.

        mean_j (h @ W + b)[:, j] = h @ mean_j W[:, j] + mean_j b[j].
        """
        w, b = weights[-1]
        return h @ w.mean(1) + b.mean()

    def network_input(self, data, stage: Stage, weights):
        """x of a pass over a prepared input (``glocalk.inputs.TrainingInput``): R, or R_hat in stage 2.

        Dense execution gives a (n_items, n_users) tensor; sparse execution a (pattern, values) pair
        (with ``data.conv_dense`` R_hat's pattern is ``materialise``d: too dense for CSR to pay).
        """
        if Stage(stage) == Stage.PRETRAIN or not self.config.global_kernel:
            return (data.pattern, data.values) if data.is_sparse else data.dense
        if not data.is_sparse:
            y_dash = self.decode(self.encode(data.dense, weights), weights)  # f(R), (n_items, n_users)
            return self.global_conv(data.dense, self.global_kernel(y_dash.mean(1)))
        # Sparse: f(R)'s item means without the dense f(R); R_hat only on the dilation of R's pattern.
        h0 = self.encode((data.pattern, data.values), weights)  # (n_items, n_hid)
        values = data.conv(self.global_kernel(self.item_means(h0, weights))).relu_()  # (conv nnz,)
        # With data.conv_dense the pattern is ``materialise``d: the first layer runs as a dense GEMM.
        return (data.conv.output, values)

    def loss(self, data, stage: Stage) -> torch.Tensor:
        """1/2 sum over observed entries of (R - f(x))^2 + regularisers: ``forward``'s loss, fused.

        x = R in stage 1 (pre-training) and R_hat = relu(conv2d(R, g)) in stage 2.
        """
        return self.loss_and_hidden(data, stage)[0]

    def loss_and_hidden(self, data, stage: Stage) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(``loss``, and the pass's ``hidden_representation``: the last hidden layer and the layers' weights),
        so that a trainer can predict at the weights of its last pass without encoding the input again."""
        weights, reg = self.weights()
        h = self.encode(self.network_input(data, stage, weights), weights)  # (n_items, n_hid)
        if data.is_sparse:
            err = data.values - self.decode_at(h, weights, data.pattern)  # (nnz,)
        else:
            err = data.mask * (data.dense - self.decode(h, weights))  # (n_items, n_users)
        return 0.5 * (err * err).sum() + reg, h, weights

    @torch.no_grad()
    def hidden_representation(self, data, stage: Stage) -> tuple[torch.Tensor, list]:
        """The last hidden layer for prediction: f's encoding of R (stage 1) or of R_hat (stage 2)."""
        weights, _ = self.weights()
        return self.encode(self.network_input(data, stage, weights), weights), weights

    @torch.no_grad()
    def predict_dense(self, data, stage: Stage) -> torch.Tensor:
        """All predictions (n_items, n_users), unclipped."""
        h, weights = self.hidden_representation(data, stage)
        return self.decode(h, weights)

    @torch.no_grad()
    def predict_at(self, data, stage: Stage, pattern: SparsePattern) -> torch.Tensor:
        """Predictions at the entries of ``pattern`` only (CSR order), unclipped."""
        h, weights = self.hidden_representation(data, stage)
        return self.decode_at(h, weights, pattern)
