"""Each training pass against the machine's limit: FLOPs, achieved GFLOP/s and the dense-GEMM peak.

    python benchmarks/passes.py --tree before=/tmp/old/src --tree after=src --threads 1,2 --out docs/PASSES.md

Times one loss + gradient of stage 1 and of stage 2 (the sparse execution, the default ``auto``) and
the evaluation after an epoch on a paper dataset (default ML-1M), for each source tree named by
``--tree NAME=DIR`` (DIR holds the ``glocalk`` package; check an old commit out with
``git worktree add /tmp/old COMMIT``), so before/after figures come from one run. Workers of the
trees alternate round after round (``--rounds``), which spreads a busy machine's load over both.
Each worker also measures the machine's dense-GEMM peak (``torch.mm`` of two 4096 x 4096 float32
matrices, best of 3) at the same thread count, just before its passes.

Times are medians; "wall" is elapsed time, "cpu" the process's CPU time. On a machine shared with
other jobs, wall time inflates with the load; with one thread the CPU time barely does, so it is
the figure to compare there (with 2+ threads CPU time also counts the threads' spin-waits).

FLOPs are counted from the shapes (2 per multiply-add, products only; the element-wise work of the
activations, the local kernel's clamp and the loss is not counted, so GFLOP/s is a lower bound on
the arithmetic rate). With n = n_hid, L hidden layers, d = n_dim, I items, U users, z = nnz(R),
S = nnz of the convolution's shift matrix and P = nnz of R_hat (the 3x3 dilation of R's pattern):

- kernel layers, every pass: K by one (n_in x d) @ (d x n_out) product, its backward by two:
  ``kern = 6 d (U n + (L - 1) n^2 + n U)``;
- stage 1: first layer R @ W1 and its weight gradient R^T @ G (2 z n each), L - 1 dense hidden layers
  forward and two backward products (6 (L - 1) I n^2), the output at R's entries (an SDDMM with the
  bias as one more hidden unit) and its two backward products (6 z (n + 1)):
  ``F1 = 4 z n + 6 (L - 1) I n^2 + 6 z (n + 1) + kern``;
- stage 2: the same network on R_hat, plus the encoding of R for the item means and its backward
  (4 z n + 6 (L - 1) I n^2), the convolution and its backward (4 S), and R_hat's first layer: three
  dense GEMMs (forward, weight gradient, input gradient: 6 I U n) when R_hat is materialised
  (``conv_dense``), else three sparse products (6 P n):
  ``F2 = first + 4 z n + 12 (L - 1) I n^2 + 6 z (n + 1) + 4 S + kern`` (first = 6 I U n or 6 P n).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from perf.trees import add_tree_arguments, alternate, trees_of

# A worker runs with its tree first on PYTHONPATH, so these are that tree's modules (the old API
# used here is unchanged since the sparse execution came in).
from glocalk.data.datasets import load_dataset
from glocalk.inputs import prepare_input
from glocalk.model import GLocalK
from glocalk.presets import preset, split_config
from glocalk.sparse import SparsePattern

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "PASSES-RESULT "


def pass_flops(shape: tuple[int, int], z: int, n_hid: int, n_layers: int, n_dim: int,
               conv: tuple[int, int, bool] | None = None) -> float:
    """FLOPs of one loss + gradient (module docstring): stage 1 without ``conv``, stage 2 with
    ``conv`` = (S, P, materialised)."""
    n_items, n_users = shape
    n, hidden = n_hid, n_layers - 1
    kern = 6 * n_dim * (n_users * n + hidden * n * n + n * n_users)
    flops = 4 * z * n + 6 * hidden * n_items * n * n + 6 * z * (n + 1) + kern
    if conv is not None:
        s, p, materialised = conv
        first = 6 * n_items * n_users * n if materialised else 6 * p * n
        flops += first + 4 * z * n + 6 * hidden * n_items * n * n + 4 * s
    return float(flops)


def gemm_peak(size: int = 4096, reps: int = 3) -> dict:
    """Best GFLOP/s of a float32 ``torch.mm`` of two size x size matrices (wall and CPU time)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    flops = 2.0 * size**3
    return {"size": size, "gflops_wall": flops / min(walls) / 1e9, "gflops_cpu": flops / min(cpus) / 1e9}


def timed(fn, reps: int, warmup: int) -> dict:
    """Median wall and CPU seconds of ``fn()`` over ``reps`` calls after ``warmup``; its last value."""
    for _ in range(warmup):
        fn()
    walls, cpus, value = [], [], None
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        value = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "value": value}


def worker(spec: dict) -> dict:
    """Inside one subprocess (the tree's glocalk first on sys.path): peak and passes per thread count."""
    d = load_dataset(spec["dataset"], spec["data_dir"])
    config, _ = split_config(preset(spec["dataset"]))
    torch.manual_seed(1)
    model = GLocalK(d.n_items, d.n_users, config)
    t0 = time.perf_counter()
    inp = prepare_input(d.train, True, config.gk_size)
    out = {"prepare_s": time.perf_counter() - t0, "shape": list(d.shape), "nnz": int(d.train.nnz),
           "conv_nnz": inp.conv.output.nnz, "shift_nnz": inp.conv.shift_values.numel(),
           "conv_dense": bool(inp.conv_dense),
           "loadavg_start": list(os.getloadavg()), "threads": {}}
    splits = [SparsePattern.from_scipy(m) for m in (d.train, d.test)]
    arch = (config.n_hid, config.n_layers, config.n_dim)
    flops = {1: pass_flops(d.shape, d.train.nnz, *arch),
             2: pass_flops(d.shape, d.train.nnz, *arch, conv=(inp.conv.shift_values.numel(), inp.conv.output.nnz,
                                                                 bool(inp.conv_dense)))}

    def loss_and_grad(stage: int, params: list) -> float:
        for p in params:
            p.grad = None
        loss = model.loss(inp, stage)
        loss.backward()
        return loss.item()

    def evaluation() -> float:
        with torch.no_grad():
            h, weights = model.hidden_representation(inp, 2)
            return float(sum(model.decode_at(h, weights, s).sum() for s in splits))

    for threads in spec["threads"]:
        torch.set_num_threads(threads)
        rec = {"gemm": gemm_peak()}
        for stage in (1, 2):
            params = model.network_parameters() if stage == 1 else model.finetune_parameters()
            rec[f"stage{stage}"] = {**timed(lambda s=stage, p=params: loss_and_grad(s, p), spec["reps"],
                                            spec["warmup"]), "flops": flops[stage]}
        rec["eval"] = timed(evaluation, spec["reps"], 1)
        out["threads"][str(threads)] = rec
    out["loadavg_end"] = list(os.getloadavg())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def median_of(runs: list[dict], threads: str, key: str, field: str) -> float:
    """Median over rounds of one timed figure."""
    return statistics.median(r["threads"][threads][key][field] for r in runs)


def summarise(runs: dict[str, list[dict]], threads: list[int]) -> list[dict]:
    """One row per (tree, threads, what): median times, GFLOP/s and the fraction of the GEMM peak."""
    rows = []
    for tree, rs in runs.items():
        for t in map(str, threads):
            peak_wall = statistics.median(r["threads"][t]["gemm"]["gflops_wall"] for r in rs)
            peak_cpu = statistics.median(r["threads"][t]["gemm"]["gflops_cpu"] for r in rs)
            for key in ("stage1", "stage2", "eval"):
                row = {"tree": tree, "threads": int(t), "what": key,
                       "wall_ms": 1e3 * median_of(rs, t, key, "wall_s"), "cpu_ms": 1e3 * median_of(rs, t, key, "cpu_s"),
                       "peak_wall": peak_wall, "peak_cpu": peak_cpu}
                flops = rs[0]["threads"][t][key].get("flops")
                if flops:
                    row.update(gflop=flops / 1e9, gflops_wall=flops / row["wall_ms"] / 1e6,
                               gflops_cpu=flops / row["cpu_ms"] / 1e6)
                rows.append(row)
    return rows


def render(res: dict) -> str:
    """The markdown report."""
    first = next(iter(res["runs"].values()))[0]
    lines = [
        "# Passes near the limit", "",
        f"Written by `{res['command']}` on {res['started']} ({res['rounds']} rounds, trees alternating; "
        f"{res['reps']} timed passes per worker after {res['warmup']} warm-up). Machine: {res['machine']}. "
        f"Load average (1 min) over the workers: {res['load_min']:.1f}-{res['load_max']:.1f} on "
        f"{os.cpu_count()} cores. Raw figures: [passes_results.json](passes_results.json).", "",
        f"{res['dataset']}: {first['shape'][0]:,} x {first['shape'][1]:,}, {first['nnz']:,} training ratings; "
        f"R_hat has {first['conv_nnz']:,} entries ({'materialised: dense GEMMs' if first['conv_dense'] else 'sparse'}),"
        f" the shift matrix {first['shift_nnz']:,}. FLOPs by the formulas of `benchmarks/passes.py`'s docstring; "
        "'% of peak': achieved GFLOP/s over the dense-GEMM peak measured by the same worker at the same "
        "thread count. Evaluation: the encoding of R_hat and the predictions at the train and test entries.", "",
        "| tree | threads | what | GFLOP | wall ms | cpu ms | GFLOP/s (wall) | GFLOP/s (cpu) "
        "| GEMM peak wall / cpu | % of peak (wall / cpu) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        g = r.get("gflop")
        perf = (f"{g:.2f} | {r['wall_ms']:.0f} | {r['cpu_ms']:.0f} | {r['gflops_wall']:.1f} | {r['gflops_cpu']:.1f} | "
                f"{r['peak_wall']:.0f} / {r['peak_cpu']:.0f} | "
                f"{100 * r['gflops_wall'] / r['peak_wall']:.0f}% / {100 * r['gflops_cpu'] / r['peak_cpu']:.0f}%"
                if g else f"- | {r['wall_ms']:.0f} | {r['cpu_ms']:.0f} | - | - | "
                          f"{r['peak_wall']:.0f} / {r['peak_cpu']:.0f} | -")
        lines.append(f"| {r['tree']} | {r['threads']} | {r['what']} | {perf} |")
    lines += ["", "| tree | setup s (prepare_input) | peak RSS MB |", "|---|---|---|"]
    for tree, rs in res["runs"].items():
        lines.append(f"| {tree} | {statistics.median(r['prepare_s'] for r in rs):.2f} | "
                     f"{max(r['peak_rss_mb'] for r in rs):,.0f} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    """CPU model, torch version."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    """Alternate the trees' workers, then write the report and the raw JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_tree_arguments(p)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--data-dir", default=os.environ.get("GLOCALK_DATA"))
    p.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=None, help="markdown report (default: print it)")
    args = p.parse_args(argv)
    if args.worker:
        print(RESULT_MARK + json.dumps(worker(json.loads(args.worker))))
        return 0
    trees = trees_of(args, REPO / "src")
    threads = [int(t) for t in args.threads.split(",")]
    spec = {"dataset": args.dataset, "data_dir": args.data_dir, "threads": threads, "reps": args.reps,
            "warmup": args.warmup}
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = alternate(__file__, trees, spec, RESULT_MARK, args.rounds)
    loads = [x for rs in runs.values() for r in rs for x in (r["loadavg_start"][0], r["loadavg_end"][0])]
    res = {"command": "python benchmarks/passes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": started, "machine": machine(), "dataset": args.dataset, "rounds": args.rounds,
           "reps": args.reps, "warmup": args.warmup, "trees": trees, "load_min": min(loads), "load_max": max(loads),
           "runs": runs, "rows": summarise(runs, threads)}
    text = render(res)
    if args.out:
        out = Path(args.out)
        out.write_text(text)
        (out.parent / "passes_results.json").write_text(json.dumps(res, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
