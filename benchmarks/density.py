"""Where does GLocal-K stop helping? A paper dataset with its training ratings subsampled (seeded).

Issue 10, item 4: the training ratings are subsampled to each fraction (the test set unchanged),
then GLocal-K (the dataset's preset) and the baselines run through the benchmark harness on the
same validation split (validation-selected, test reported). Outputs: OUT/FRACTION/{table.md,
results.json} and OUT/summary.md.

    python benchmarks/density.py --dataset ml-1m --fractions 0.3 0.1 0.03 0.01 --seed 1 2 3
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from glocalk.compare.harness import BenchmarkConfig, run_benchmark
from glocalk.data.datasets import load_dataset
from glocalk.data.matrix import RatingMatrix

SUBSAMPLE_SEED = 1234


def subsampled(data: RatingMatrix, fraction: float, seed: int = SUBSAMPLE_SEED) -> RatingMatrix:
    """``data`` keeping a seeded ``fraction`` of its training ratings (test unchanged, same scale)."""
    coo = data.train.tocoo()
    keep = np.random.default_rng(seed).random(coo.nnz) < fraction
    train = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=data.train.shape)
    return replace(data, train=train, name=f"{data.name} {fraction:g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.1])
    p.add_argument("--models", nargs="+", default=["biases", "biased-mf", "glocalk"])
    p.add_argument("--seed", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    base = load_dataset(args.dataset, data_dir=args.data_dir)
    out_root = Path(args.out or f"docs/benchmarks/density-{args.dataset}")
    lines = ["| training ratings kept | density | model | test RMSE (val-selected) | NDCG |", "|---|---|---|---|---|"]
    for fraction in args.fractions:
        data = subsampled(base, fraction)
        density = data.train.nnz / (data.n_items * data.n_users)
        res = run_benchmark(data, BenchmarkConfig(models=args.models, seeds=args.seed, val_frac=0.05,
                                                  out_dir=out_root / f"{fraction:g}", dataset=args.dataset,
                                                  plots=False, params_overrides={"threads": args.threads}))
        for model in args.models:
            m, s = res["summary"][model]["mean"], res["summary"][model]["std"]
            lines.append(f"| {fraction:g} | {density:.2%} | {model} | {m['rmse']:.4f} ± {s['rmse']:.4f} | "
                         f"{m['ndcg']:.4f} |")
        (out_root / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
