"""--output-bias glorot (the paper) against mean on a paper dataset with its training ratings subsampled.

Issue 10, item 4: which change helps GLocal-K itself on sparse data, decided on validation. Each run:
the dataset's training ratings subsampled (``density.subsampled``, seeded; test unchanged), a seeded
validation split of them, the dataset's preset, one process per run (``--threads``); the
validation-selected epoch's validation and test RMSE, and the paper's best-epoch and final test RMSE.
Outputs OUT/results.json (one record per run, kept across invocations) and OUT/table.md.

    python benchmarks/output_bias.py --data-dir ../shared/data --fractions 1 0.3 0.1 --seed 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from density import subsampled

from glocalk.data.datasets import load_dataset
from glocalk.presets import preset, split_config
from glocalk.train import train

MODES = ("glorot", "mean")


def run(dataset: str, data_dir: str | None, fraction: float, mode: str, seed: int, val_frac: float,
        threads: int) -> dict:
    """One training run; its selected, best and final figures."""
    base = load_dataset(dataset, data_dir=data_dir)
    data = subsampled(base, fraction) if fraction < 1 else base
    model_config, train_config = split_config({**preset(dataset), "output_bias": mode, "seed": seed,
                                               "threads": threads})
    t0 = time.perf_counter()
    result = train(data.with_validation(val_frac, seed=seed), model_config, train_config)
    sel = result.val_selected
    return {"dataset": dataset, "fraction": fraction, "output_bias": mode, "seed": seed, "val_frac": val_frac,
            "val_rmse": sel["val_rmse"], "test_rmse": sel["rmse"], "epoch": sel["epoch"],
            "best_test_rmse": result.best["rmse"], "final_test_rmse": result.final["rmse"],
            "seconds": time.perf_counter() - t0, "load_avg": os.getloadavg()}


def table(records: list[dict]) -> str:
    lines = ["| training ratings kept | seed | output bias | val RMSE (selected) | test RMSE (val-selected) | "
             "test RMSE best epoch † | final | minutes | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (-r["fraction"], r["seed"], r["output_bias"])):
        lines.append(f"| {r['fraction']:.0%} | {r['seed']} | {r['output_bias']} | {r['val_rmse']:.4f} | "
                     f"{r['test_rmse']:.4f} | {r['best_test_rmse']:.4f} | {r['final_test_rmse']:.4f} | "
                     f"{r['seconds'] / 60:.1f} | {r['load_avg'][0]:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.3, 0.1])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--seed", type=int, nargs="+", default=[1])
    p.add_argument("--val-frac", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/benchmarks/output-bias")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    records = json.loads(path.read_text()) if path.exists() else []
    for fraction in args.fractions:
        for seed in args.seed:
            for mode in args.modes:
                rec = run(args.dataset, args.data_dir, fraction, mode, seed, args.val_frac, args.threads)
                key = (rec["dataset"], rec["fraction"], rec["output_bias"], rec["seed"], rec["val_frac"])
                records = [r for r in records if (r["dataset"], r["fraction"], r["output_bias"], r["seed"],
                                                  r["val_frac"]) != key] + [rec]
                path.write_text(json.dumps(records, indent=1))
                (out / "table.md").write_text(table(records))
                print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
