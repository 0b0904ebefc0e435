"""Training sharded over processes: the process group, the optimiser's space, and the sharded trainer.

``glocalk.sharded`` computes one rank's part of a pass; this module trains with it:

- ``ProcessGroup`` reads the launch environment (torchrun's RANK / WORLD_SIZE / LOCAL_RANK /
  MASTER_ADDR / MASTER_PORT, which ``glocalk train --nproc P`` sets for the P processes it spawns) and
  starts torch.distributed (gloo on CPU, NCCL on CUDA) with a timeout, so a rank that dies or hangs
  ends every other rank's next collective with an error instead of a silent hang;
- ``ShardedSpace`` is the L-BFGS-B optimiser's space over the sharded vector: local dot products and
  norms plus one all-reduce, replicated entries counted once (rank 0's);
- ``ShardedTrainer`` is ``glocalk.train.Trainer`` on a shard: the same epochs, evaluation and
  history (identical on every rank, so every rank takes the same decisions), the optimiser on the
  rank's parameters, and ``state()`` gathered into the single-process format on rank 0.

docs/DISTRIBUTED.md describes the design and how to launch.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist

from glocalk.data.matrix import RatingMatrix
from glocalk.epoch import any_nonfinite
from glocalk.errors import CheckpointError, ConfigError, GlocalkError, TrainingError
from glocalk.inputs import choose_execution
from glocalk.model import GLocalK, GLocalKConfig, Stage
from glocalk.optim import LBFGSB, LBFGSBOptions
from glocalk.sharded import USER_DIMS, Shard, ShardedGLocalK, prepare_shard_input, user_bounds
from glocalk.sparse import SparsePattern
from glocalk.train import (
    SELECTED,
    STATE_KIND,
    OnEpoch,
    TrainConfig,
    Trainer,
    TrainResult,
    check_identity,
    resolve_device,
    training_mean,
)

# Seconds a collective waits for the other ranks before it fails (GLOCALK_DIST_TIMEOUT overrides).
DEFAULT_TIMEOUT_S = 600.0
# Optimisers a sharded run can use: glocalk.optim's L-BFGS-B (SciPy's own keeps the whole vector on one host).
SHARDABLE_OPTIMIZERS = ("lbfgsb",)
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")


class PeerFailure(TrainingError):
    """Another process of a sharded run died or stopped answering: the whole run ends (nothing retries)."""


# --------------------------------------------------------------------------- the process group


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in a sharded run: ``rank`` of ``world``, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict | None = None) -> ProcessGroup:
        """The group torchrun (or ``glocalk train --nproc``) describes in the environment; one process if none."""
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local_rank = int(env.get("LOCAL_RANK", rank))
        except (KeyError, ValueError) as e:
            raise ConfigError(f"the torchrun environment is incomplete or malformed ({e}): RANK and WORLD_SIZE "
                              "must be integers") from e
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"torchrun environment: RANK={rank} is not in WORLD_SIZE={world}")
        return cls(rank, world, local_rank)

    @property
    def sharded(self) -> bool:
        """True when more than one process trains."""
        return self.world > 1

    @property
    def writer(self) -> bool:
        """True for the one process that writes logs, summaries and models (rank 0)."""
        return self.rank == 0

    def device(self, name: str) -> str:
        """This rank's device: "cuda" becomes its own GPU, cuda:LOCAL_RANK."""
        return f"cuda:{self.local_rank}" if self.sharded and name == "cuda" else name

    def start(self, device: str, timeout_s: float | None = None) -> None:
        """Join the group (gloo on CPU, NCCL on CUDA); collectives then fail after ``timeout_s`` seconds."""
        if not self.sharded or dist.is_initialized():
            return
        if timeout_s is None:
            timeout_s = collective_timeout()
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend, rank=self.rank, world_size=self.world,
                                timeout=datetime.timedelta(seconds=timeout_s))

    def broadcast(self, value: object) -> object:
        """Rank 0's ``value`` on every rank (a small picklable object)."""
        if not self.sharded:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_writer(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0 alone; every rank returns its (small, picklable) result, or raises its
        error (a GlocalkError as it is, anything else as a TrainingError naming it), so that the other
        ranks never wait for an answer that is not coming."""
        if not self.sharded:
            return work()
        outcome: object = None
        if self.writer:
            try:
                outcome = work()
            except Exception as e:
                self.broadcast(e if isinstance(e, GlocalkError) else TrainingError(
                    f"rank 0 of {self.world} failed: {type(e).__name__}: {e}"))
                raise
        outcome = self.broadcast(outcome)
        if isinstance(outcome, GlocalkError):
            raise outcome
        return outcome

    def stop(self) -> None:
        """Leave the group (if this process joined one)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def backend_for(device: str) -> str:
    """The torch.distributed backend of a device: NCCL for CUDA ("cuda", "cuda:N"), gloo for the CPU."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def collective_timeout(env: dict | None = None) -> float:
    """Seconds a collective waits for the other ranks: $GLOCALK_DIST_TIMEOUT, else ``DEFAULT_TIMEOUT_S``."""
    text = (os.environ if env is None else env).get("GLOCALK_DIST_TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"GLOCALK_DIST_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def current_group() -> ProcessGroup:
    """The group this process has joined (one process if none)."""
    if not dist.is_initialized():
        return ProcessGroup()
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def collective_failure(e: BaseException) -> bool:
    """True if ``e`` is a collective that failed because another rank died or hung past the timeout."""
    text = str(e)
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection closed by peer", "Timed out", "Connection reset"))


def free_port() -> int:
    """A TCP port free on this machine now (for the rendezvous of locally spawned processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The torchrun variables of process ``rank`` of ``world`` on this machine."""
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


# --------------------------------------------------------------------------- the optimiser's space


class ShardedSpace:
    """Dot products and norms of a vector whose first ``n_owned`` entries are this rank's own and whose
    rest is replicated: local sums plus one all-reduce, the replicated part counted on rank 0 only."""

    def __init__(self, n_owned: int, rank: int, group=None) -> None:
        self.n_owned, self.rank, self.group = n_owned, rank, group

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` over the whole sharded vector (a: (n,) or (k, n); b: (n,) or (n, j)), one all-reduce."""
        if self.rank != 0:
            a, b = a[..., : self.n_owned], b[: self.n_owned]
        out = torch.matmul(a, b)
        flat = out.reshape(-1).contiguous()
        dist.all_reduce(flat, group=self.group)
        return flat.reshape(out.shape)

    def any_true(self, flag: bool, like: torch.Tensor) -> bool:
        """Whether ``flag`` holds on any rank (one all-reduce of a number on ``like``'s device)."""
        t = torch.tensor([1.0 if flag else 0.0], dtype=like.dtype, device=like.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item() > 0)

    def norm_inf(self, a: torch.Tensor) -> torch.Tensor:
        """max |a_i| over the whole vector (NaN if any rank holds a NaN)."""
        local = a.abs().amax()
        stats = torch.stack([torch.nan_to_num(local, nan=0.0), local.isnan().to(local.dtype)])
        dist.all_reduce(stats, op=dist.ReduceOp.MAX, group=self.group)
        return stats[0] if stats[1] == 0 else stats[1] * math.nan


# --------------------------------------------------------------------------- evaluation splits


class _ShardSplit:
    """One evaluation split: the global entries (for the metrics) and this rank's columns (to predict)."""

    def __init__(self, m: sp.csr_matrix, shard: Shard, device: torch.device) -> None:
        m = sp.csr_matrix(m)
        m.sort_indices()
        coo = m.tocoo()
        self.items, self.users, self.truth = coo.row, coo.col, coo.data.astype(np.float64)
        bounds = user_bounds(shard.n_users, shard.world)
        # Positions (in the split's CSR order) of each rank's entries; that order restricted to a column
        # block is still row-major, i.e. the CSR order of the block.
        self.positions = [np.flatnonzero((coo.col >= bounds[r]) & (coo.col < bounds[r + 1]))
                          for r in range(shard.world)]
        own = self.positions[shard.rank]
        local = sp.csr_matrix((np.ones(len(own), np.float32), (coo.row[own], coo.col[own] - shard.lo)),
                              shape=(m.shape[0], shard.n_local))
        self.pattern = SparsePattern.from_scipy(local, device)

    def assemble(self, local: torch.Tensor, group=None) -> np.ndarray:
        """Every rank's predictions (``local`` is this rank's, in its CSR order) in the split's CSR order."""
        size = max(len(p) for p in self.positions)
        padded = torch.zeros(size, dtype=local.dtype, device=local.device)
        padded[: local.numel()] = local
        parts = [torch.empty_like(padded) for _ in self.positions]
        dist.all_gather(parts, padded, group=group)
        out = np.empty(len(self.truth), dtype=np.float64)
        for pos, part in zip(self.positions, parts, strict=True):
            out[pos] = part[: len(pos)].double().cpu().numpy()
        return out


# --------------------------------------------------------------------------- the trainer


class ShardedTrainer(Trainer):
    """``Trainer`` on one rank's shard; every rank of the group must build and run it together.

    The model starts from the single-process initialisation (built whole, then sliced: the same seed
    gives the same run at any number of processes); ``model`` is the rank's local ``GLocalK``.
    The history is identical on every rank. ``state()`` and the result's model are the full model in
    the single-process format on rank 0 (gathered); other ranks get their shard only.
    """

    def __init__(self, data: RatingMatrix, model_config: GLocalKConfig | None = None,
                 train_config: TrainConfig | None = None, group: ProcessGroup | None = None) -> None:
        self.group = group or current_group()
        self.data = data
        self.model_config = model_config or GLocalKConfig()
        self.config = (train_config or TrainConfig()).validate()
        c = self.config
        if c.optimizer not in SHARDABLE_OPTIMIZERS:
            raise ConfigError(f"optimizer (--optimizer) {c.optimizer!r} cannot be sharded over processes (SciPy "
                              f"keeps the whole vector on one host); use {' or '.join(SHARDABLE_OPTIMIZERS)}")
        self.device = resolve_device(self.group.device(c.device))
        self.path = choose_execution(data.shape, data.train.nnz, c.path)
        self.shard = Shard.of(data.n_users, self.group.rank, self.group.world)
        torch.manual_seed(c.seed)
        full = GLocalK(data.n_items, data.n_users, self.model_config)  # the single-process initialisation
        full.init_output_bias(training_mean(data))
        self.sharded = ShardedGLocalK.from_full(full, self.shard)
        del full
        self.sharded.local.to(self.device)
        self.model = self.sharded.local
        self.rating_map = data.rating_map
        self.input = prepare_shard_input(self.rating_map.matrix_to_model(data.train), self.shard,
                                         self.path == "sparse", self.model_config.gk_size, self.device)
        self.splits = {"train": _ShardSplit(data.train, self.shard, self.device)}
        for name in ("val", "test"):
            m = getattr(data, name)
            if m is not None and m.nnz:
                self.splits[name] = _ShardSplit(m, self.shard, self.device)
        self.history: list[dict] = []
        self.selected_state: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def predictions(self, stage: int) -> dict[str, np.ndarray]:
        """Unclipped predictions at each split's entries (all ranks'), in the matrix's units, on every rank."""
        s = self.sharded
        weights, _ = s.weights()
        h = s.encode(s.network_input(self.input, Stage(stage), weights), weights)
        out = {}
        for name, split in self.splits.items():
            local = self.model.decode_at(h, weights, split.pattern)
            out[name] = self.rating_map.to_user(split.assemble(local))
        return out

    def optimiser_parameters(self, stage: int) -> list[torch.nn.Parameter]:
        """The stage's parameters, owned ones first: the optimiser's space counts the rest once."""
        params = self.model.network_parameters() if stage == 1 else self.model.finetune_parameters()
        owned = [p for p in params if not self.sharded.is_replicated(p)]
        return owned + [p for p in params if self.sharded.is_replicated(p)]

    def _epoch(self, epoch: int) -> dict:
        """One L-BFGS-B epoch over the sharded parameters, every rank in step, and its evaluation record."""
        c = self.config
        stage, stage_epoch = self.stage_of(epoch)
        params = self.optimiser_parameters(stage)
        n_owned = sum(p.numel() for p in params if not self.sharded.is_replicated(p))
        t0 = time.perf_counter()
        opt = LBFGSB(params, options=LBFGSBOptions(maxiter=c.iter_p if stage == 1 else c.iter_f, m=10),
                     space=ShardedSpace(n_owned, self.group.rank))

        def closure() -> torch.Tensor:
            total, grads = self.sharded.value_and_grad(self.input, Stage(stage), params)
            # As the single-process optimiser: a step that overflowed gets f = inf (the line search backs
            # off). Decided on every rank alike: a non-finite owned gradient on one rank counts for all.
            bad = any_nonfinite([total.detach(), *grads])
            flag = bad.to(total.dtype).reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0:
                for g in grads:
                    g.zero_()
                return torch.tensor(math.inf)
            return total

        result = opt.step(closure)
        opt.release()
        t1 = time.perf_counter()
        if not math.isfinite(result.fun):
            raise TrainingError(
                f"non-finite loss ({result.fun}) in stage {stage} epoch {stage_epoch}: the "
                "optimisation diverged; try a larger lambda_2 or a smaller dot_scale")
        rec = {"epoch": epoch, "stage": stage, "stage_epoch": stage_epoch,
               "loss": float(result.fun), "nfev": int(result.nfev), "nit": int(result.nit), **self.evaluate(stage)}
        rec["seconds"] = t1 - t0
        rec["eval_seconds"] = time.perf_counter() - t1
        return rec

    def run(self, on_epoch: OnEpoch | Sequence[OnEpoch] | None = None) -> TrainResult:
        """``Trainer.run``; the result's model and selected state are the full model's on rank 0 (gathered)."""
        try:
            result = super().run(on_epoch)
        except RuntimeError as e:
            if not collective_failure(e):
                raise
            raise PeerFailure(
                f"rank {self.group.rank} of {self.group.world}: another process of the sharded run died or stopped "
                f"answering ({str(e).splitlines()[0][:200]}); the completed epochs are saved (continue with "
                "--resume)") from e
        full = self.sharded.gather_state()
        selected = None if self.selected_state is None else self.sharded.gather_state(self.selected_state)
        if self.group.writer:
            model = GLocalK(self.data.n_items, self.data.n_users, self.model_config)
            model.load_state_dict(full)
            result.model, result.selected_state = model, selected
        return result

    # -- resumable state: the single-process format, gathered on rank 0 ---------------------

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """As ``Trainer.state`` on rank 0; ({}, meta) on the others. Every rank must call it (it gathers)."""
        tensors = self.sharded.gather_state()
        if self.selected_state is not None:
            selected = self.sharded.gather_state(self.selected_state)
            if tensors is not None:
                tensors.update({SELECTED + k: v for k, v in selected.items()})
        epoch = self.history[-1]["epoch"] if self.history else 0
        return tensors or {}, {"kind": STATE_KIND, "epoch": epoch, "history": self.history, "path": self.path,
                               **self.identity()}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict, source: str = "the saved state") -> None:
        """Continue from a state in the single-process format (written by any number of processes): each
        rank cuts its user blocks out of it."""
        check_identity(meta, self.identity(), source)
        weights = {k: v for k, v in tensors.items() if not k.startswith(SELECTED)}
        selected = {k[len(SELECTED):]: v for k, v in tensors.items() if k.startswith(SELECTED)}
        try:
            n_users = {t.shape[USER_DIMS[k]] for part in (weights, selected) for k, t in part.items()
                       if k in USER_DIMS}
            local = {**self.sharded.local_state(weights),
                     **{SELECTED + k: v for k, v in self.sharded.local_state(selected).items()}}
        except (RuntimeError, IndexError) as e:
            raise CheckpointError(f"{source}: weights do not fit the model: {e}") from e
        if n_users != {self.data.n_users}:
            raise CheckpointError(f"{source}: weights do not fit the model: {sorted(n_users)} users, "
                                  f"not {self.data.n_users}")
        super().restore(local, meta, source)
