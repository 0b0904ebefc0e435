"""The L-BFGS-B optimiser's own work per iteration (glocalk.optim), old code against new in one run.

    python benchmarks/optimizer_overhead.py --tree before=/tmp/optold/src --tree after=src \
        --sizes 1.2M,6.3M --threads 2 --out docs/benchmarks/optimizer_overhead   # writes threads2.md / .json

Runs ``minimize_lbfgsb`` for ``--iters`` iterations (float32, m = 10) on a cheap separable function,
f(x) = sum(0.5 a (x - b)^2 + 0.1 log1p((x - b)^2)) with curvatures a from 0.01 to 100 and the
stopping tests off (factr = pgtol = 0), at each size n (1.2M and 6.3M are the parameter
counts of GLocal-K on ML-100K and ML-1M), and reports the time spent outside the function, divided
by the iterations: what the optimiser itself costs per iteration (direction, line search, memory
update). Each tree named by ``--tree NAME=DIR`` (DIR holds the ``glocalk`` package; make an old one
with ``git worktree add --detach /tmp/optold main``) runs in its own subprocess; the trees alternate
round after round (``--rounds``) so a busy machine's load falls on both. Figures are medians over
the rounds; the load average (``os.getloadavg``) is recorded before and after each worker, and the
report keeps the machine's ``uptime`` line from the start and the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from perf.trees import add_tree_arguments, alternate, trees_of

# A worker runs with its tree first on PYTHONPATH, so this is that tree's optimiser.
from glocalk.optim import minimize_lbfgsb

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "OVERHEAD-RESULT "


def parse_size(text: str) -> int:
    """'1.2M' -> 1200000, '6300000' -> 6300000."""
    text = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6}.get(text[-1:], 1)
    return int(round(float(text.rstrip("KM")) * scale))


class CheapFunction:
    """f and g of the separable test function, timing its own work."""

    def __init__(self, n: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.a = 10.0 ** (4 * torch.rand(n, generator=gen) - 2)  # curvatures 0.01..100: many iterations
        self.b = torch.randn(n, generator=gen)
        self.g = torch.empty(n)
        self.seconds, self.calls = 0.0, 0

    def __call__(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        r = x - self.b
        r2 = r * r
        f = float((0.5 * self.a * r2 + 0.1 * torch.log1p(r2)).sum())
        torch.addcdiv(self.a * r, r, r2.add_(1.0), value=0.2, out=self.g)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return f, self.g


def worker(spec: dict) -> dict:
    """Inside one subprocess: per size, one warm-up run and ``reps`` timed runs; the median overhead."""
    torch.set_num_threads(spec["threads"])
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg_start": list(os.getloadavg()),
           "sizes": {}}
    for n in spec["sizes"]:
        fun = CheapFunction(n)
        x0 = torch.zeros(n)
        minimize_lbfgsb(fun, x0, maxiter=3, factr=0.0, pgtol=0.0)  # warm-up: allocator, threads, page faults
        runs = []
        for _ in range(spec["reps"]):
            fun.seconds, fun.calls = 0.0, 0
            start = time.perf_counter()
            res = minimize_lbfgsb(fun, x0, maxiter=spec["iters"], factr=0.0, pgtol=0.0)
            total = time.perf_counter() - start
            runs.append({"total_s": total, "fun_s": fun.seconds, "nit": res.nit, "nfev": res.nfev,
                         "overhead_ms_per_iter": 1e3 * (total - fun.seconds) / max(res.nit, 1),
                         "fun_ms_per_eval": 1e3 * fun.seconds / max(fun.calls, 1), "f": res.fun})
        out["sizes"][str(n)] = {"runs": runs, "overhead_ms_per_iter": statistics.median(
            r["overhead_ms_per_iter"] for r in runs)}
    out["loadavg_end"] = list(os.getloadavg())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def uptime() -> str:
    """The machine's ``uptime`` line (load averages)."""
    try:
        return subprocess.run(["uptime"], text=True, capture_output=True, check=False).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def render(res: dict) -> str:
    """The markdown report: per size, each tree's median overhead per iteration and the ratio to the first."""
    names = list(res["trees"])
    lines = ["# L-BFGS-B optimiser overhead per iteration", "",
             f"Command: `{res['command']}`", "",
             f"Started {res['started']}; torch {res['torch']}, {res['threads']} thread(s), "
             f"{res['iters']} iterations x {res['reps']} runs x {res['rounds']} rounds per tree; "
             f"machine: {res['machine']}.", "",
             f"- `uptime` at the start: `{res['uptime_start']}`",
             f"- `uptime` at the end: `{res['uptime_end']}`", "",
             "Time outside the function per iteration in ms: median of all runs (in brackets the fastest run, "
             "the least disturbed by other jobs on a shared machine); the function's own time is subtracted. "
             "nit / nfev are those of one run.", "",
             "| n | " + " | ".join(f"{name} (ms/iter)" for name in names)
             + "".join(f" | {name} / {names[0]}" for name in names[1:]) + " | nit | nfev |",
             "|---|" + "---|" * (2 * len(names) - 1 + 2)]
    for row in res["rows"]:
        ms = [row[name] for name in names]
        best = [row[name + " min"] for name in names]
        ratios = [f"{m / ms[0]:.2f} ({b / best[0]:.2f})" for m, b in zip(ms[1:], best[1:], strict=True)]
        lines.append(f"| {row['n']:,} | " + " | ".join(f"{m:.1f} ({b:.1f})" for m, b in zip(ms, best, strict=True))
                     + (" | " + " | ".join(ratios) if ratios else "") + f" | {row['nit']} | {row['nfev']} |")
    lines += ["", "Trees: " + ", ".join(f"{k} = `{v}`" for k, v in res["trees"].items()), ""]
    return "\n".join(lines)


def summarise(runs: dict[str, list[dict]], sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        row = {"n": n}
        for name, rs in runs.items():
            values = [r["overhead_ms_per_iter"] for w in rs for r in w["sizes"][str(n)]["runs"]]
            row[name], row[name + " min"] = statistics.median(values), min(values)
            last = rs[-1]["sizes"][str(n)]["runs"][-1]
            row["nit"], row["nfev"] = last["nit"], last["nfev"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Alternate the trees' workers, then write the markdown report and the raw JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_tree_arguments(p)
    p.add_argument("--sizes", default="1.2M,6.3M", help="comma-separated vector lengths (default 1.2M,6.3M)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--iters", type=int, default=40, help="L-BFGS-B iterations per run (default 40)")
    p.add_argument("--reps", type=int, default=2, help="timed runs per size and worker (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="workers per tree, alternating (default 2)")
    p.add_argument("--out", default=None, help="folder for threads<T>.md and threads<T>.json (default: print)")
    args = p.parse_args(argv)
    if args.worker:
        print(RESULT_MARK + json.dumps(worker(json.loads(args.worker))))
        return 0
    trees = trees_of(args, REPO / "src")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    spec = {"sizes": sizes, "threads": args.threads, "iters": args.iters, "reps": args.reps}
    res = {"command": "python benchmarks/optimizer_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "uptime_start": uptime(),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "torch": torch.__version__, "threads": args.threads, "iters": args.iters, "reps": args.reps,
           "rounds": args.rounds, "trees": trees}
    runs = alternate(__file__, trees, spec, RESULT_MARK, args.rounds)
    res.update(uptime_end=uptime(), runs=runs, rows=summarise(runs, sizes))
    text = render(res)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"threads{args.threads}.md").write_text(text)
        (out / f"threads{args.threads}.json").write_text(json.dumps(res, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
