"""Sharded GLocal-K: time per pass and memory per rank versus the number of processes.

For each P, P processes (gloo, one torch thread each) build the sharded trainer on the dataset and time
its loss + gradient pass in both stages (every rank in step, collectives included), then one L-BFGS-B
epoch of a few iterations. Per rank it records the peak resident memory (ru_maxrss) and the bytes of the
tensors the rank holds: its parameters (owned and replicated), the optimiser's state and its training input.
It also computes the per-rank memory of a larger shape from docs/DISTRIBUTED.md's formula.

    python benchmarks/distributed.py [--dataset ml-1m] [--nproc 1 2 4] [--repeat 3]
                                     [--out docs/benchmarks/distributed.json]

The figures go to --out (JSON) with the machine's load average (the machine is shared: compare the
ratios between P, measured in one run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glocalk.data import datasets
from glocalk.distributed import ProcessGroup, ShardedTrainer
from glocalk.model import Stage
from glocalk.optim import LBFGSB, LBFGSBOptions
from glocalk.presets import preset, split_config

M = 10  # L-BFGS memory pairs


def _bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _input_bytes(data) -> int:
    tensors = [data.values, data.conv_keep, data.conv.shift_values]
    for pattern in (data.pattern, data.conv_output, data.conv.output, data.conv.shifts):
        tensors += [pattern.crow, pattern.col, pattern.row, pattern.t_perm, pattern.t_col, pattern.t_crow]
    return _bytes(t for t in tensors if t is not None)


def _time_pass(trainer: ShardedTrainer, stage: Stage, repeat: int) -> float:
    params = trainer.optimiser_parameters(int(stage))
    times = []
    for _ in range(repeat + 1):  # the first is a warm-up
        dist.barrier()
        t0 = time.perf_counter()
        trainer.sharded.value_and_grad(trainer.input, stage, params)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _worker(rank: int, world: int, store: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    data = datasets.load_dataset(args.dataset)
    params = {**preset(args.dataset), "path": "sparse", "optimizer": "lbfgsb", "seed": 1}
    model_config, train_config = split_config(params)
    trainer = ShardedTrainer(data, model_config, train_config, ProcessGroup(rank, world))
    row = {"rank": rank, "n_local_users": trainer.shard.n_local}
    row["pass_s"] = {f"stage{int(s)}": _time_pass(trainer, s, args.repeat) for s in (Stage.PRETRAIN, Stage.FINETUNE)}
    params = trainer.optimiser_parameters(2)
    owned = [p for p in params if not trainer.sharded.is_replicated(p)]
    replicated = [p for p in params if trainer.sharded.is_replicated(p)]
    n_local = sum(p.numel() for p in params)
    row["bytes"] = {"owned_parameters": _bytes(owned), "replicated_parameters": _bytes(replicated),
                    # x, g, d, t, r and the m (s, y) pairs (glocalk.optim), float32
                    "optimiser_state": 4 * n_local * (5 + 2 * M), "training_input": _input_bytes(trainer.input)}
    t0 = time.perf_counter()
    opt = LBFGSB(params, options=LBFGSBOptions(maxiter=args.iters, m=M))
    result = opt.step(lambda: trainer.sharded.value_and_grad(trainer.input, Stage.FINETUNE, params)[0])
    opt.release()
    row["epoch_s"] = time.perf_counter() - t0
    row["epoch_nfev"] = result.nfev
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out, f"rank-{rank}.json").write_text(json.dumps(row))
    dist.destroy_process_group()


def per_rank_bytes(n_items: int, n_users: int, nnz: int, world: int, n_hid: int = 500, n_layers: int = 2,
                   n_dim: int = 5, m: int = M, conv_fill: float = 8.0) -> dict[str, float]:
    """docs/DISTRIBUTED.md's memory per rank (float32 values, int64 indices), by part.

    User-sized: the rank's U/P users in the first and output layers (W, u; W, v, b) plus the fused kernel
    weight's saved K and W*K for both (forward and backward); the optimiser's 5 + 2m copies of every local
    parameter and the gradient. Replicated: the middle layers and the n_items x n_hid activations (about 8
    of them alive in a stage-2 backward). Data: the rank's nnz/P ratings (values and a CSR pattern with its
    transpose: 4 int64 per entry) and the convolution plan: its output pattern (``conv_fill`` x nnz/P entries:
    two patterns and an index, 9 int64) and its 9 x nnz/P shifted ratings (a value and a pattern each).
    """
    users = n_users / world
    owned = users * (2 * n_hid + 2 * n_dim + 1)
    replicated = (n_layers - 1) * (n_hid * n_hid + 2 * n_hid * n_dim + n_hid) + 2 * n_hid * n_dim + n_hid \
        + 9 * n_items
    params = owned + replicated
    ratings = nnz / world
    return {
        "parameters_and_gradient": 4 * 2 * params,
        "optimiser_state": 4 * (5 + 2 * m) * params,
        "kernel_weights": 4 * 4 * users * n_hid,
        "activations": 4 * 8 * n_items * n_hid,
        "training_input": ratings * (4 + 32) + conv_fill * ratings * 72 + 9 * ratings * 36,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--iters", type=int, default=3, help="L-BFGS-B iterations of the timed epoch")
    p.add_argument("--out", default="docs/benchmarks/distributed.json")
    args = p.parse_args()
    flags = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in vars(args).items())
    report = {"command": f"python benchmarks/distributed.py {flags}", "load_average_before": os.getloadavg(),
              "runs": {}}
    for world in args.nproc:
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_worker, args=(world, f"{tmp}/store", args, tmp), nprocs=world)
            report["runs"][str(world)] = [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in range(world)]
        rank0 = report["runs"][str(world)][0]
        print(f"P={world}: pass stage 1 {rank0['pass_s']['stage1'] * 1e3:.0f} ms, stage 2 "
              f"{rank0['pass_s']['stage2'] * 1e3:.0f} ms; rank 0 peak RSS {rank0['peak_rss_mib']:.0f} MiB, "
              f"owned parameters {rank0['bytes']['owned_parameters'] / 2**20:.1f} MiB", flush=True)
    report["load_average_after"] = os.getloadavg()
    netflix = {str(w): per_rank_bytes(17_770, 480_189, 100_480_507, w) for w in (1, 8)}
    data = datasets.load_dataset(args.dataset)
    mine = {str(w): per_rank_bytes(data.n_items, data.n_users, data.train.nnz, w) for w in args.nproc}
    report["computed_per_rank_mib"] = {w: {k: v / 2**20 for k, v in parts.items()} for w, parts in mine.items()}
    report["computed_netflix_per_rank_gib"] = {w: {k: v / 2**30 for k, v in parts.items()} | {
        "total": sum(parts.values()) / 2**30} for w, parts in netflix.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["computed_netflix_per_rank_gib"], indent=1))


if __name__ == "__main__":
    main()
