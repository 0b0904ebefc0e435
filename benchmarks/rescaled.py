"""ML-100K in other rating units: does GLocal-K still beat the user + item bias model?

Issue 10's own cases (the held-out public sets are not in ../shared): the u1 split of ML-100K with
every rating r mapped to 20 r + 5 (25..105, a 1..100-like scale) and to r / 2 (half stars,
0.5..2.5), trained through the benchmark harness (GLocal-K with the ML-100K preset and the user +
item bias model on the same validation split, seed 1, 5% of the training ratings held out), and
written to docs/benchmarks/rescaled/ (table.md and results.json per variant, summary.md).

    python benchmarks/rescaled.py [--data-dir DIR] [--seed 1] [--out docs/benchmarks/rescaled]

With scale invariance the GLocal-K rows are the 1..5 run's figures times the unit factor.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import scipy.sparse as sp

from glocalk.compare.harness import BenchmarkConfig, run_benchmark
from glocalk.data.datasets import load_dataset
from glocalk.data.matrix import RatingMatrix

VARIANTS = {"1..5": (1.0, 0.0), "x20+5": (20.0, 5.0), "half": (0.5, 0.0)}


def rescaled(data: RatingMatrix, factor: float, shift: float, name: str) -> RatingMatrix:
    """``data`` with every rating r as factor * r + shift (0 stays 'missing')."""
    def f(m: sp.csr_matrix | None) -> sp.csr_matrix | None:
        if m is None:
            return None
        out = m.copy()
        out.data = out.data * factor + shift
        return out

    lo, hi = data.rating_scale
    return replace(data, train=f(data.train), test=f(data.test), val=f(data.val),
                   rating_scale=(lo * factor + shift, hi * factor + shift), name=name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", default="docs/benchmarks/rescaled")
    args = p.parse_args()
    base = load_dataset("ml-100k", data_dir=args.data_dir)
    rows = []
    for name in args.variants:
        factor, shift = VARIANTS[name]
        data = rescaled(base, factor, shift, f"ml-100k {name}")
        out = Path(args.out) / name
        res = run_benchmark(data, BenchmarkConfig(models=["biases", "glocalk"], seeds=args.seed, val_frac=0.05,
                                                  out_dir=out, dataset="ml-100k", plots=False,
                                                  params_overrides={"threads": args.threads}))
        for model in ("biases", "glocalk"):
            m = res["summary"][model]["mean"]
            rows.append((name, factor, model, m["rmse"], m["rmse"] / factor, m["ndcg"]))
    lines = ["| variant | model | test RMSE (its units) | RMSE / factor (1..5 units) | NDCG |", "|---|---|---|---|---|"]
    lines += [f"| {v} | {mod} | {r:.4f} | {r1:.4f} | {n:.4f} |" for v, _, mod, r, r1, n in rows]
    Path(args.out, "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"seeds": args.seed}))


if __name__ == "__main__":
    main()
