"""Sharded GLocal-K: time per pass and memory per rank versus the number of processes.

For each P, P processes (gloo, one torch thread each) build the sharded trainer on the dataset and time
its loss + gradient pass in both stages (every rank in step, collectives included), then (``--iters`` > 0)
one L-BFGS-B epoch of a few iterations. Per rank it records the peak resident memory (VmHWM, after set-up
and at the end) and the bytes of the tensors the rank holds: its parameters (owned and replicated), the
optimiser's state and its training input. The optimiser's state is COMPUTED from the rank's parameter
counts (x, g, d, t, r and m = 10 (s, y) pairs of float32, glocalk.optim), not allocated: it is what an
epoch adds to the passes' peak. It also computes the per-rank memory of larger shapes from
docs/DISTRIBUTED.md's formula.

    python benchmarks/distributed.py [--dataset ml-1m] [--nproc 1 2 4] [--repeat 3]
                                     [--out docs/benchmarks/distributed.json]
    python benchmarks/distributed.py --synthetic ml-20m --nproc 1 --repeat 1 --iters 0 \\
                                     --out docs/benchmarks/distributed_ml-20m.json

``--synthetic ml-20m``: ``glocalk.data.synthetic.make_ratings`` at ML-20M's shape (26,744 items x 138,493
users, 20M ratings, 10% test; ML-1M's preset), generated once by the parent process and read by every
rank from a temporary .npz. ``--nproc`` values run one after the other; ``--merge`` adds the runs to an
existing --out (so that each P can run alone on a machine with little free memory). The figures go to
--out (JSON) with the machine's load average (the machine is shared: compare the ratios between P).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glocalk.data import datasets
from glocalk.data.matrix import RatingMatrix
from glocalk.data.synthetic import make_ratings
from glocalk.distributed import ProcessGroup, ShardedTrainer
from glocalk.model import Stage
from glocalk.optim import LBFGSB, LBFGSBOptions
from glocalk.presets import preset, split_config

M = 10  # L-BFGS memory pairs
SYNTHETIC = {"ml-20m": (26_744, 138_493, 20_000_000)}  # n_items, n_users, ratings (train + test)
NETFLIX = (17_770, 480_189, 100_480_507)


def status_mib(field: str) -> float:
    """VmRSS or VmHWM (the peak resident memory) of this process in MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tensor_bytes(obj, seen: set | None = None) -> int:
    """Bytes of the distinct tensors reachable from ``obj`` (attributes, lists, tuples, dicts)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.untyped_storage().nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return key[1]
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(x, seen) for x in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(x, seen) for x in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(tensor_bytes(x, seen) for x in vars(obj).values())
    return 0


def _bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def _time_pass(trainer: ShardedTrainer, stage: Stage, repeat: int) -> dict:
    """The first pass (it builds the transposes it needs) and the median of ``repeat`` more."""
    params = trainer.optimiser_parameters(int(stage))
    times = []
    for _ in range(repeat + 1):
        dist.barrier()
        t0 = time.perf_counter()
        trainer.sharded.value_and_grad(trainer.input, stage, params)
        times.append(time.perf_counter() - t0)
    for q in params:
        q.grad = None
    return {"first_s": times[0], "median_s": statistics.median(times[1:]) if repeat else times[0]}


def _load(args: argparse.Namespace, data_file: str | None) -> RatingMatrix:
    if data_file is None:
        return datasets.load_dataset(args.dataset)
    with open(data_file, "rb") as f:
        train = sp.load_npz(f)
    with open(data_file.replace("train", "test"), "rb") as f:
        test = sp.load_npz(f)
    return RatingMatrix(train, test=test, rating_scale=(1.0, 5.0), name=f"synthetic-{args.synthetic}")


def _worker(rank: int, world: int, store: str, args: argparse.Namespace, out: str, data_file: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    t0 = time.perf_counter()
    data = _load(args, data_file)
    params = {**preset("ml-1m" if args.synthetic else args.dataset), "path": "sparse", "optimizer": "lbfgsb",
              "seed": 1}
    model_config, train_config = split_config(params)
    trainer = ShardedTrainer(data, model_config, train_config, ProcessGroup(rank, world))
    del data
    row = {"rank": rank, "n_local_users": trainer.shard.n_local, "setup_s": time.perf_counter() - t0,
           "after_setup_mib": {"rss": status_mib("VmRSS"), "peak": status_mib("VmHWM")}}
    row["passes"] = {f"stage{int(s)}": _time_pass(trainer, s, args.repeat) for s in (Stage.PRETRAIN, Stage.FINETUNE)}
    row["pass_s"] = {k: v["median_s"] for k, v in row["passes"].items()}
    params = trainer.optimiser_parameters(2)
    owned = [p for p in params if not trainer.sharded.is_replicated(p)]
    replicated = [p for p in params if trainer.sharded.is_replicated(p)]
    n_local = sum(p.numel() for p in params)
    row["n_local_parameters"] = n_local
    row["bytes"] = {"owned_parameters": _bytes(owned), "replicated_parameters": _bytes(replicated),
                    # computed, not allocated: x, g, d, t, r and the m (s, y) pairs (glocalk.optim), float32
                    "optimiser_state": 4 * n_local * (5 + 2 * M), "training_input": tensor_bytes(trainer.input)}
    if args.iters:
        t0 = time.perf_counter()
        opt = LBFGSB(params, options=LBFGSBOptions(maxiter=args.iters, m=M))
        result = opt.step(lambda: trainer.sharded.value_and_grad(trainer.input, Stage.FINETUNE, params)[0])
        opt.release()
        row["epoch_s"] = time.perf_counter() - t0
        row["epoch_nfev"] = result.nfev
    row["peak_rss_mib"] = status_mib("VmHWM")
    row["load_average"] = os.getloadavg()
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


def _synthetic_file(args: argparse.Namespace, tmp: str) -> tuple[str, dict]:
    """Generate the synthetic set once; every rank reads it (the train and test CSR matrices)."""
    n_items, n_users, n_ratings = SYNTHETIC[args.synthetic]
    t0 = time.perf_counter()
    data = make_ratings(n_users, n_items, n_ratings, seed=0, test_frac=0.1)
    path = str(Path(tmp, "train.npz"))
    sp.save_npz(path, data.train, compressed=False)
    sp.save_npz(path.replace("train", "test"), data.test, compressed=False)
    info = {"shape": [n_items, n_users], "n_ratings": n_ratings, "train_nnz": int(data.train.nnz),
            "generated_s": time.perf_counter() - t0}
    return path, info


def _run(world: int, args: argparse.Namespace, data_file: str | None) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, f"{tmp}/store", args, tmp, data_file), nprocs=world)
        return [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in range(world)]


def render(report: dict) -> str:
    """The Markdown table of a report: per P, the ranks' memory and rank 0's pass times."""
    mib = 2**20
    lines = [f"`{c}`" for c in report.get("commands", [report.get("command", "")])]
    if "synthetic" in report:
        syn = report["synthetic"]
        lines += ["", f"Synthetic ratings (`glocalk.data.synthetic.make_ratings`, seed 0): {syn['shape'][0]:,} items x "
                      f"{syn['shape'][1]:,} users, {syn['n_ratings']:,} ratings, {syn['train_nnz']:,} for training; "
                      "ML-1M's preset (n_hid 500), sparse execution, gloo, one torch thread per process."]
    lines += ["", "| P | users per rank | peak RSS per rank (VmHWM) | owned parameters | optimiser state "
              "(computed) | training input | set-up | stage-1 pass (first / next) | stage-2 pass (first / next) "
              "| load average before / after |", "|" + "---|" * 10]
    for world, ranks in sorted(report["runs"].items(), key=lambda kv: int(kv[0])):
        r0, peaks = ranks[0], [r["peak_rss_mib"] for r in ranks]
        peak = f"{min(peaks):,.0f}-{max(peaks):,.0f} MiB" if len(peaks) > 1 else f"{peaks[0]:,.0f} MiB"
        b = r0["bytes"]
        passes = {k: f"{v['first_s']:.1f} / {v['median_s']:.1f} s" for k, v in r0["passes"].items()}
        load = [report.get(f"load_average_{w}", {}).get(world, [float("nan")])[0] for w in ("before", "after")]
        lines.append(f"| {world} | {r0['n_local_users']:,} | {peak} | {b['owned_parameters'] / mib:,.0f} MiB | "
                     f"{b['optimiser_state'] / mib:,.0f} MiB | {b['training_input'] / mib:,.0f} MiB | "
                     f"{r0['setup_s']:.0f} s | {passes['stage1']} | {passes['stage2']} | "
                     f"{load[0]:.1f} / {load[1]:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--synthetic", choices=sorted(SYNTHETIC), default=None,
                   help="instead of --dataset: synthetic ratings at this dataset's shape")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeat", type=int, default=3, help="timed passes per stage after the first")
    p.add_argument("--iters", type=int, default=3, help="L-BFGS-B iterations of the timed epoch (0: none)")
    p.add_argument("--merge", action="store_true", help="add the runs to an existing --out")
    p.add_argument("--render-only", action="store_true", help="only write --out's Markdown table (OUT.md)")
    p.add_argument("--out", default="docs/benchmarks/distributed.json")
    args = p.parse_args()
    if args.render_only:
        Path(args.out).with_suffix(".md").write_text(render(json.loads(Path(args.out).read_text())))
        return
    flags = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in vars(args).items() if v is not None and v is not False and k != "render_only"
                     and not (k == "dataset" and args.synthetic))
    command = f"python benchmarks/distributed.py {flags}".replace("--merge True", "--merge")
    out = Path(args.out)
    report = json.loads(out.read_text()) if args.merge and out.exists() else {"runs": {}}
    report.setdefault("commands", []).append(command)
    report.setdefault("load_average_before", {})
    report.setdefault("load_average_after", {})
    with tempfile.TemporaryDirectory() as tmp:
        data_file = None
        if args.synthetic:
            data_file, report["synthetic"] = _synthetic_file(args, tmp)
        for world in args.nproc:
            report["load_average_before"][str(world)] = os.getloadavg()
            report["runs"][str(world)] = _run(world, args, data_file)
            report["load_average_after"][str(world)] = os.getloadavg()
            rank0 = report["runs"][str(world)][0]
            print(f"P={world}: pass stage 1 {rank0['pass_s']['stage1'] * 1e3:.0f} ms, stage 2 "
                  f"{rank0['pass_s']['stage2'] * 1e3:.0f} ms; peak RSS per rank "
                  f"{[round(r['peak_rss_mib']) for r in report['runs'][str(world)]]} MiB", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1))
    if args.synthetic:
        n_items, n_users, n_ratings = SYNTHETIC[args.synthetic]
        nnz = report["synthetic"]["train_nnz"]
    else:
        data = datasets.load_dataset(args.dataset)
        n_items, n_users, nnz = data.n_items, data.n_users, data.train.nnz
    worlds = sorted({1, 2, 4, *map(int, report["runs"])})
    report["computed_per_rank_mib"] = {str(w): {k: v / 2**20 for k, v in per_rank_bytes(
        n_items, n_users, nnz, w).items()} for w in worlds}
    report["computed_netflix_per_rank_gib"] = {str(w): {k: v / 2**30 for k, v in parts.items()} | {
        "total": sum(parts.values()) / 2**30} for w, parts in ((w, per_rank_bytes(*NETFLIX, w)) for w in (1, 8))}
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(render(report))
    print(json.dumps(report["computed_per_rank_mib"], indent=1))


if __name__ == "__main__":
    main()
