"""GLocal-K sharded over users: one rank's part of a pass, with torch.distributed collectives.

The parameters that grow with the number of users -- the first layer's W rows and u, the output
layer's W columns, v and b -- are split into contiguous user blocks, one per rank. Everything else
(the middle layers, the first layer's v and b, the output layer's u, the global kernel's C) is
replicated. A rank's shard is itself a ``GLocalK`` over its ``n_local`` users: exactly these shapes.

One pass (docs/DISTRIBUTED.md):
- first layer: each rank computes R[:, U_r] @ (W*K)[U_r, :], one all-reduce of (n_items, n_hid)
  gives every rank the full pre-activation; the middle layers run replicated;
- stage 2: the global kernel's item means are a partial sum over owned output columns plus an
  all-reduce of n_hid + 1 numbers; the 3x3 convolution reads one fixed halo column on each side;
- output: each rank computes its own users' predictions and its part of the loss.

Backward follows by itself: the all-reduce's backward is an all-reduce of the gradient, so the
owned parameters' gradients come out exact on their rank. The replicated parameters' gradients
are each rank's part of the sum; ``ShardedGLocalK.value_and_grad`` all-reduces them, so replicas
stay identical. The maths is ``GLocalK.loss``'s (tests/test_distributed.py compares every gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.nn.functional as F

from glocalk.errors import DataError
from glocalk.inputs import CONV_DENSE_MAX_ENTRIES, CONV_DENSE_MIN_DENSITY
from glocalk.model import GLocalK, Stage
from glocalk.sparse import ConvPlan, SparsePattern, spmm

# Parameters of a shard (state_dict names of its local GLocalK) that hold user columns, and the
# dimension along which they are split; every other parameter is replicated.
USER_DIMS = {"hidden.0.W": 0, "hidden.0.u": 0, "out.W": 1, "out.v": 1, "out.b": 0}


@dataclass(frozen=True)
class Shard:
    """Rank ``rank`` of ``world`` owns the users [lo, hi) of ``n_users``."""

    rank: int
    world: int
    lo: int
    hi: int
    n_users: int

    @classmethod
    def of(cls, n_users: int, rank: int, world: int) -> Shard:
        """Contiguous, as even as possible: the first n_users % world ranks hold one user more."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        if n_users < world:
            raise DataError(f"cannot shard {n_users} users over {world} processes: fewer users than processes")
        bounds = user_bounds(n_users, world)
        return cls(rank, world, int(bounds[rank]), int(bounds[rank + 1]), n_users)

    @property
    def n_local(self) -> int:
        return self.hi - self.lo


def user_bounds(n_users: int, world: int) -> np.ndarray:
    """Block boundaries (world + 1,): rank r owns users [bounds[r], bounds[r + 1])."""
    sizes = np.full(world, n_users // world, dtype=np.int64)
    sizes[: n_users % world] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


# --------------------------------------------------------------------------- collectives


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x. Every rank's loss depends on y, so dL/dx = sum over ranks of dL_r/dy."""

    @staticmethod
    def forward(ctx, x, group):  # noqa: D102
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        out = grad.contiguous().clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum of ``x`` over the ranks, differentiable (its backward all-reduces the gradient)."""
    return _AllReduceSum.apply(x, group)


def all_reduce_flat(tensors: list[torch.Tensor], group=None) -> None:
    """Sum each tensor over the ranks in place, in one all-reduce of their concatenation."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def gather_users(t: torch.Tensor, dim: int, shard: Shard, group=None) -> torch.Tensor | None:
    """Rank 0 gets the full tensor, the owned blocks of every rank concatenated along ``dim``; others None.

    Blocks differ by at most one user; they are padded to the largest for the collective.
    """
    bounds = user_bounds(shard.n_users, shard.world)
    size = int((bounds[1:] - bounds[:-1]).max())
    pad_shape = list(t.shape)
    pad_shape[dim] = size - t.shape[dim]
    padded = torch.cat([t.detach(), t.new_zeros(pad_shape)], dim).contiguous()
    parts = [torch.empty_like(padded) for _ in range(shard.world)] if shard.rank == 0 else None
    dist.gather(padded, parts, dst=0, group=group)
    if shard.rank != 0:
        return None
    return torch.cat([p.narrow(dim, 0, int(bounds[r + 1] - bounds[r])) for r, p in enumerate(parts)], dim)


# --------------------------------------------------------------------------- a rank's training input


@dataclass
class ShardInput:
    """A rank's columns of the training matrix in the form its pass needs (cf. ``glocalk.inputs.TrainingInput``).

    Sparse execution: ``pattern``/``values`` of R[:, U_r]; the convolution plan ``conv`` runs on the
    halo-extended block R[:, lo - left : hi + right] and ``conv_keep`` picks its outputs in owned
    columns, laid out by ``conv_output``. Dense execution: ``dense``/``mask`` of R[:, U_r] and
    ``dense_ext``, the halo-extended block, whose owned columns start at ``ext_offset``.
    """

    shape: tuple[int, int]
    pattern: SparsePattern | None = None
    values: torch.Tensor | None = None
    conv: ConvPlan | None = None
    conv_keep: torch.Tensor | None = None
    conv_output: SparsePattern | None = None
    conv_dense: bool = False
    dense: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    dense_ext: torch.Tensor | None = None
    ext_offset: int = 0

    @property
    def is_sparse(self) -> bool:
        """True for sparse execution."""
        return self.pattern is not None


def halo_columns(shard: Shard, gk_size: int) -> tuple[int, int]:
    """[start, stop) of the halo-extended block: the columns the owned outputs of a k x k 'same'
    convolution read (k - 1 split as TF's SAME padding splits it), clipped to the matrix."""
    left = (gk_size - 1) // 2
    right = gk_size - 1 - left
    return max(0, shard.lo - left), min(shard.n_users, shard.hi + right)


def prepare_shard_input(train: sp.csr_matrix, shard: Shard, sparse: bool, gk_size: int = 3,
                        device: torch.device | str = "cpu") -> ShardInput:
    """Rank ``shard.rank``'s part of the (model-unit) training matrix, prepared once per run.

    R is fixed, so the halo is cut once here and never exchanged during training.
    """
    train = sp.csr_matrix(train, dtype=np.float32)
    train.eliminate_zeros()
    train.sort_indices()
    if train.nnz and train.data.min() < 0:
        raise DataError("ratings must be positive: 0 means 'not rated' and negative values break the mask R > 0")
    start, stop = halo_columns(shard, gk_size)
    own = sp.csr_matrix(train[:, shard.lo: shard.hi])
    ext = sp.csr_matrix(train[:, start:stop])
    offset = shard.lo - start
    shape = (train.shape[0], shard.n_local)
    if not sparse:
        dense = torch.from_numpy(own.toarray()).to(device)
        return ShardInput(shape, dense=dense, mask=(dense > 0).to(dense.dtype),
                          dense_ext=torch.from_numpy(ext.toarray()).to(device), ext_offset=offset)
    coo = ext.tocoo()
    conv = ConvPlan(coo.row, coo.col, coo.data, ext.shape, gk_size, device)
    out_row, out_col = conv.output.row.cpu().numpy(), conv.output.col.cpu().numpy()
    keep = np.flatnonzero((out_col >= offset) & (out_col < offset + shard.n_local))
    conv_output = sp.csr_matrix((np.ones(len(keep), np.float32), (out_row[keep], out_col[keep] - offset)),
                                shape=shape)
    n_entries = shape[0] * shape[1]
    # As glocalk.inputs decides, on this rank's block: R_hat[:, U_r] only feeds this rank's product.
    conv_dense = len(keep) >= CONV_DENSE_MIN_DENSITY * n_entries and n_entries <= CONV_DENSE_MAX_ENTRIES
    return ShardInput(shape, pattern=SparsePattern.from_scipy(own, device),
                      values=torch.from_numpy(own.data.copy()).to(device), conv=conv,
                      conv_keep=torch.from_numpy(keep).to(device),
                      conv_output=SparsePattern.from_scipy(conv_output, device), conv_dense=conv_dense)


# --------------------------------------------------------------------------- the sharded model


class ShardedGLocalK:
    """One rank's part of GLocal-K: ``local``, a ``GLocalK`` over the rank's users, and the collectives.

    ``loss`` is this rank's part L_r of the loss (its users' errors, its blocks' regulariser, and the
    replicated layers' regulariser on rank 0 only), so that sum_r L_r is ``GLocalK.loss``.
    """

    def __init__(self, local: GLocalK, shard: Shard, group=None) -> None:
        if local.n_users != shard.n_local:
            raise ValueError(f"the local model has {local.n_users} users, the shard {shard.n_local}")
        self.local = local
        self.shard = shard
        self.group = group
        self._owned_ids = {id(p) for name, p in local.named_parameters() if name in USER_DIMS}

    @classmethod
    def from_full(cls, model: GLocalK, shard: Shard, group=None) -> ShardedGLocalK:
        """The shard of a full model: its user blocks sliced out, the rest copied."""
        local = GLocalK(model.n_items, shard.n_local, model.config).to(model.gk_weight.device)
        sharded = cls(local, shard, group)
        local.load_state_dict(sharded.local_state(model.state_dict()))
        return sharded

    def gather_state(self, local_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
        """The full model's state_dict on rank 0 (the single-process format), None on the other ranks.

        ``local_state``: a state_dict of the local model (default: its current one). Every rank must call it.
        """
        local_state = self.local.state_dict() if local_state is None else local_state
        out = {}
        for name, t in local_state.items():
            dim = USER_DIMS.get(name)
            out[name] = t.detach().clone() if dim is None else gather_users(t, dim, self.shard, self.group)
        return out if self.shard.rank == 0 else None

    def local_state(self, full_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's part of a full model's state_dict (any process count wrote it): its user blocks cut out."""
        out = {}
        for name, t in full_state.items():
            dim = USER_DIMS.get(name)
            out[name] = t if dim is None else t.narrow(dim, self.shard.lo, self.shard.n_local)
        return out

    def is_replicated(self, p: torch.Tensor) -> bool:
        """True for a parameter every rank holds whole (its gradient is summed over the ranks)."""
        return id(p) not in self._owned_ids

    # -- a pass ---------------------------------------------------------------------

    def weights(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Each layer's (W * K, b) and this rank's part of the regulariser.

        The first and output layers' W and K are user blocks (each rank adds its own); the middle
        layers are replicated, so only rank 0 adds theirs.
        """
        c = self.local.config
        layers, reg = [], 0.0
        n_layers = len(self.local.layers)
        for i, layer in enumerate(self.local.layers):
            w_eff, r = layer.weight_and_regulariser(c.lambda_s, c.lambda_2)
            layers.append((w_eff, layer.b))
            if i in (0, n_layers - 1) or self.shard.rank == 0:
                reg = reg + r
        return layers, reg

    def encode(self, x, weights) -> torch.Tensor:
        """Last hidden layer (n_items, n_hid), the same on every rank: one all-reduce of the first
        layer's partial pre-activation R[:, U_r] @ (W*K)[U_r, :], then the replicated layers."""
        (w1, b1), *rest = weights[: len(self.local.hidden)]
        if isinstance(x, tuple):
            pattern, values = x
            z = spmm(values, w1, pattern)  # (n_items, n_hid), this rank's users only
        else:
            z = x @ w1
        h = torch.sigmoid(all_reduce_sum(z, self.group) + b1)
        for w, b in rest:
            h = torch.sigmoid(h @ w + b)  # (n_items, n_hid)
        return h

    def item_means(self, h: torch.Tensor, weights) -> torch.Tensor:
        """Mean over all users of the output, (n_items,): mean_j W[:, j] and mean_j b[j] as partial sums."""
        w, b = weights[-1]
        sums = all_reduce_sum(torch.cat([w.sum(1), b.sum()[None]]), self.group) / self.shard.n_users
        return h @ sums[:-1] + sums[-1]

    def network_input(self, data: ShardInput, stage: Stage, weights):
        """This rank's columns of x: R, or R_hat = relu(conv2d(R, g)) in stage 2 (read from the halo block)."""
        model = self.local
        if Stage(stage) == Stage.PRETRAIN or not model.config.global_kernel:
            return (data.pattern, data.values) if data.is_sparse else data.dense
        r = (data.pattern, data.values) if data.is_sparse else data.dense
        g = model.global_kernel(self.item_means(self.encode(r, weights), weights))
        if not data.is_sparse:
            return model.global_conv(data.dense_ext, g)[:, data.ext_offset: data.ext_offset + data.shape[1]]
        values = F.relu(data.conv(g)[data.conv_keep])  # (owned conv nnz,)
        out = data.conv_output
        if data.conv_dense:
            return torch.zeros(data.shape, dtype=values.dtype, device=values.device).index_put(
                (out.row, out.col), values)
        return (out, values)

    def loss(self, data: ShardInput, stage: Stage) -> torch.Tensor:
        """This rank's part L_r of ``GLocalK.loss``; sum_r L_r is the loss. Every rank must call it."""
        weights, reg = self.weights()
        h = self.encode(self.network_input(data, stage, weights), weights)
        if data.is_sparse:
            err = data.values - self.local.decode_at(h, weights, data.pattern)  # (local nnz,)
        else:
            err = data.mask * (data.dense - self.local.decode(h, weights))
        return 0.5 * (err * err).sum() + reg

    def value_and_grad(self, data: ShardInput, stage: Stage,
                       params: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the full loss, identical on every rank; this rank's gradients of ``params``).

        Owned parameters get their exact gradient; replicated ones the sum over ranks (all-reduced
        in one collective), so every replica takes the same step.
        """
        for p in params:
            p.grad = None
        part = self.loss(data, stage)
        part.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        total = part.detach().clone()
        replicated = [g for p, g in zip(params, grads, strict=True) if self.is_replicated(p)]
        all_reduce_flat([total[None], *replicated], self.group)
        return total, grads
