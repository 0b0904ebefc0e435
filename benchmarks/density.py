"""Where does GLocal-K stop helping? A paper dataset with its training ratings subsampled (seeded).

Issue 10, item 4: the training ratings are subsampled to each fraction (the test set unchanged).
For every seed ONE validation split of the subsampled training ratings (``harness.benchmark_split``:
``val_frac`` of them, drawn with the seed) is shared by every model; each model is selected on it
and its test RMSE reported, mean ± std over the seeds. Models:

- the harness's models (``biases``, ``biased-mf``, and ``glocalk``: the dataset's paper preset),
  through ``glocalk.compare.harness.run_benchmark``;
- ``glocalk-default``: what ``glocalk train --mat FILE --seed S`` runs without ``--preset`` (the
  own-data default, ``autoconfig.own_data_defaults``): ``autoconfig.search`` (``--preset auto``,
  the budgeted validated search with early stopping) on that seed's split, then
  ``comparison.compare_runs`` with ``--fallback baseline``: the user + item bias model fitted on
  the same split, and the answer is the better of the two on validation ("answer" columns).

The script checks that the default's split is the harness's (the same training fingerprint per
seed: both are drawn from the same subsampled matrix, so the same training part means the same
validation part). Outputs in OUT: FRACTION/results.json (written after every run, so an
interrupted run keeps what it finished; a rerun reuses the finished runs of the same
configuration), summary.md (the table) and density.png (test RMSE against density). The
harness's own files (results.json, predictions) go to WORK/FRACTION.

    python benchmarks/density.py --dataset ml-1m --data-dir ../shared/data --fractions 0.3 0.1 0.03 0.01 \\
        --seed 1 2 3 --budget 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from glocalk.autoconfig import OWN_DATA_VAL_FRAC, base_params, search
from glocalk.compare.harness import CURVE_KEYS, MODELS, BenchmarkConfig, benchmark_split, run_benchmark
from glocalk.comparison import compare_runs
from glocalk.data.datasets import load_dataset
from glocalk.data.matrix import RatingMatrix
from glocalk.store import json_default, write_json_atomic

SUBSAMPLE_SEED = 1234
DEFAULT = "glocalk-default"
ANSWER = "answer"  # the default's answer with --fallback baseline
OPTIMIZER = "lbfgsb"
LABELS = {"biases": "user + item biases", "biased-mf": "biased MF", "glocalk": "GLocal-K (paper preset)",
          DEFAULT: "GLocal-K default (auto)", ANSWER: "answer with fallback"}


def subsampled(data: RatingMatrix, fraction: float, seed: int = SUBSAMPLE_SEED) -> RatingMatrix:
    """``data`` keeping a seeded ``fraction`` of its training ratings (test unchanged, same scale)."""
    coo = data.train.tocoo()
    keep = np.random.default_rng(seed).random(coo.nnz) < fraction
    train = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=data.train.shape)
    return replace(data, train=train, name=f"{data.name} {fraction:g}")


@dataclass(frozen=True)
class Setup:
    """What every fraction runs with."""

    dataset: str
    seeds: list[int]
    models: list[str]
    val_frac: float
    budget: float
    threads: int
    out: Path
    work: Path

    def identity(self) -> dict:
        """The settings a finished default run must share to be reused."""
        return {"val_frac": self.val_frac, "budget_minutes": self.budget, "optimizer": OPTIMIZER}


def default_run(data: RatingMatrix, seed: int, setup: Setup) -> dict:
    """``glocalk train --mat FILE --seed SEED`` without --preset, on ``data``: the search, then the comparison."""
    split = benchmark_split(data, setup.val_frac, seed)  # the harness's split for this seed
    params = {**base_params(), "optimizer": OPTIMIZER, "threads": setup.threads, "seed": seed}
    t0 = time.perf_counter()
    auto = search(split, params, set(), setup.budget, _progress(f"seed {seed}"), keep_test=True)  # as train
    selected = auto.record.val_selected
    comparison = compare_runs(data, setup.val_frac, [{"seed": seed, "val_selected": selected}], "baseline")
    return {"model": DEFAULT, "seed": seed, **setup.identity(), "train_fingerprint": split.fingerprint(),
            "n_train": int(split.train.nnz), "n_val": int(split.val.nnz), "val_selected": selected,
            "auto": auto.json_entry(), "comparison": comparison, "wall_time_s": time.perf_counter() - t0,
            "load_avg": os.getloadavg(),
            "history": [{k: rec[k] for k in CURVE_KEYS if k in rec} for rec in auto.record.history]}


def _progress(label: str):
    """A plain log line per epoch of the search (the script runs in the background, into a log)."""
    def on_epoch(k: int, rec: dict) -> None:
        figures = " ".join(f"{key} {rec[key]:.4f}" for key in ("train_rmse", "val_rmse", "test_rmse") if key in rec)
        print(f"{time.strftime('%H:%M:%S')} {label} candidate {k} stage {rec['stage']} epoch {rec['epoch']}: "
              f"{figures}", flush=True)
    return on_epoch


def harness_runs(data: RatingMatrix, fraction: float, setup: Setup) -> tuple[list[dict], list[dict]]:
    """The harness's models on every seed's split (resumed from WORK/FRACTION): (runs, splits)."""
    models = [m for m in setup.models if m in MODELS]
    if not models:
        return [], []
    res = run_benchmark(data, BenchmarkConfig(
        models=models, seeds=setup.seeds, val_frac=setup.val_frac, out_dir=setup.work / f"{fraction:g}",
        dataset=setup.dataset, plots=False, resume=True,
        on_run=lambda r: print(f"{time.strftime('%H:%M:%S')} {fraction:g} {r['model']} seed {r['seed']}: test "
                               f"{r['val_selected']['rmse']:.4f} ({r['wall_time_s']:.0f} s)", flush=True),
        params_overrides={"threads": setup.threads, "optimizer": OPTIMIZER}))
    return [r for r in res["runs"] if r["model"] in models and r["seed"] in setup.seeds], res["splits"]


def _mean_std(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def per_seed_rows(harness: list[dict], defaults: list[dict]) -> dict[str, list[dict]]:
    """Each model's per-seed figures (validation RMSE, test metrics of the validation-selected state)."""
    rows: dict[str, list[dict]] = {}
    for run in harness:
        sel = run["val_selected"]
        rows.setdefault(run["model"], []).append({"seed": run["seed"], "val_rmse": sel["val_rmse"],
                                                  **{k: sel[k] for k in ("rmse", "mae", "ndcg")},
                                                  "wall_time_s": run["wall_time_s"]})
    for run in defaults:
        c, sel = run["comparison"], run["val_selected"]
        rows.setdefault(DEFAULT, []).append({"seed": run["seed"], "val_rmse": sel["val_rmse"],
                                             **{k: sel[k] for k in ("rmse", "mae", "ndcg")},
                                             "wall_time_s": run["wall_time_s"],
                                             "chosen": run["auto"]["chosen_params"]})
        rows.setdefault(ANSWER, []).append({"seed": run["seed"], "answer": c["answer"],
                                            "val_rmse": c[c["answer"]]["val"]["rmse"], **c["answer_test"],
                                            "biases_val_rmse": c["biases"]["val"]["rmse"],
                                            "biases_test_rmse": c["biases"]["test"]["rmse"]})
    return rows


def check_same_splits(splits: list[dict], defaults: list[dict]) -> None:
    """Raise if a default run's split is not the harness's split of the same seed."""
    harness = {s["seed"]: s["train_fingerprint"] for s in splits}
    for run in defaults:
        if run["seed"] in harness and harness[run["seed"]] != run["train_fingerprint"]:
            raise RuntimeError(f"seed {run['seed']}: the default's validation split differs from the harness's")


def run_fraction(base: RatingMatrix, fraction: float, setup: Setup) -> dict:
    """Every model on one fraction; OUT/FRACTION/results.json rewritten after every run."""
    data = subsampled(base, fraction)
    path = setup.out / f"{fraction:g}" / "results.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    done = {r["seed"]: r for r in old.get("default_runs", [])
            if all(r.get(k) == v for k, v in setup.identity().items())}
    t0, load_start = time.perf_counter(), os.getloadavg()
    header = {"dataset": setup.dataset, "fraction": fraction, "subsample_seed": SUBSAMPLE_SEED,
              "n_users": data.n_users, "n_items": data.n_items, "n_train": int(data.train.nnz),
              "n_test": int(data.test.nnz), "density": data.train.nnz / (data.n_users * data.n_items),
              "seeds": setup.seeds, "models": setup.models, **setup.identity(), "threads": setup.threads,
              "command": sys.argv, "load_avg_start": load_start}
    harness, splits = harness_runs(data, fraction, setup)
    defaults: list[dict] = []

    def write(complete: bool) -> dict:
        check_same_splits(splits, defaults)
        rows = per_seed_rows(harness, defaults)
        summary = {m: {k: _mean_std([r[k] for r in rs]) for k in ("val_rmse", "rmse", "mae", "ndcg")}
                   for m, rs in rows.items()}
        result = {**header, "complete": complete, "minutes": (time.perf_counter() - t0) / 60,
                  "load_avg_end": os.getloadavg(), "splits": splits, "per_seed": rows, "summary": summary,
                  "default_runs": defaults}
        write_json_atomic(path, json.loads(json.dumps(result, default=json_default)))
        return result

    write(False)
    if DEFAULT in setup.models:
        for seed in setup.seeds:
            defaults.append(done.get(seed) or default_run(data, seed, setup))
            write(False)
    return write(True)


def _cell(entry: dict | None, n_seeds: int) -> str:
    if entry is None:
        return "–"
    fewer = f" (n={entry['rmse']['n']})" if entry["rmse"]["n"] != n_seeds else ""  # an unfinished row says so
    return f"{entry['rmse']['mean']:.4f} ± {entry['rmse']['std']:.4f}{fewer}"


def summary_table(results: list[dict], models: list[str]) -> str:
    """Markdown: one row per fraction (densest first), test RMSE (validation-selected), mean ± std over seeds."""
    cols = [m for m in (*models, ANSWER) if m in LABELS and (m != ANSWER or DEFAULT in models)]
    lines = ["| training ratings kept | density | seeds | " + " | ".join(LABELS[m] for m in cols)
             + " | fallback answered with | auto's choice |", "|" + "---|" * (len(cols) + 5)]
    for res in sorted(results, key=lambda r: -r["fraction"]):
        rows = res["per_seed"]
        answers = [r["answer"] for r in rows.get(ANSWER, [])]
        chosen = sorted({json.dumps(r["chosen"]) if r["chosen"] else "preset" for r in rows.get(DEFAULT, [])})
        seeds = sorted({r["seed"] for rs in rows.values() for r in rs})
        lines.append(f"| {res['fraction']:.0%} | {res['density']:.2%} | {','.join(map(str, seeds))}"
                     f"{'' if res['complete'] else ' (unfinished)'} | "
                     + " | ".join(_cell(res["summary"].get(m), len(seeds)) for m in cols)
                     + f" | {', '.join(f'{a} {answers.count(a)}/{len(answers)}' for a in sorted(set(answers)))}"
                     + f" | {'; '.join(chosen)} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], models: list[str], path: Path) -> None:
    """Test RMSE against density (log x), one line per model, ± std error bars; the right panel zooms
    in on the baselines' range (GLocal-K's very sparse rows can lie far above it)."""
    import matplotlib  # optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    results = sorted(results, key=lambda r: r["density"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    zoom: list[float] = []
    for m in (*models, ANSWER):
        pts = [(r["density"], r["summary"][m]["rmse"]) for r in results if m in r["summary"]]
        if m not in LABELS or not pts:
            continue
        if m in ("biases", "biased-mf", ANSWER):
            zoom += [e["mean"] + s * e["std"] for _, e in pts for s in (-1, 1)]
        for ax in axes:
            ax.errorbar([100 * d for d, _ in pts], [e["mean"] for _, e in pts], yerr=[e["std"] for _, e in pts],
                        label=LABELS[m], marker="o", capsize=3, linestyle="--" if m == ANSWER else "-")
    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}%"))
        ax.set_xlabel("density of the training ratings")
        ax.set_ylabel("test RMSE (validation-selected)")
        ax.grid(True, which="both", alpha=0.3)
    if zoom:
        pad = 0.25 * (max(zoom) - min(zoom)) + 0.005
        axes[1].set_ylim(min(zoom) - pad, max(zoom) + pad)
    axes[0].set_title(f"{results[0]['dataset']}, training ratings subsampled")
    axes[1].set_title("zoomed on the baselines (mean ± std over seeds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tabulate(setup: Setup) -> None:
    """summary.md and density.png from every fraction's results.json in OUT."""
    results = [json.loads(p.read_text()) for p in sorted(setup.out.glob("*/results.json"))]
    results = [r for r in results if "per_seed" in r]  # this script's records only
    if not results:
        raise SystemExit(f"no results of this script in {setup.out}/*/results.json")
    (setup.out / "summary.md").write_text(summary_table(results, setup.models))
    plot(results, setup.models, setup.out / "density.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.1])
    p.add_argument("--models", nargs="+", default=["biases", "biased-mf", DEFAULT],
                   choices=[*MODELS, DEFAULT])
    p.add_argument("--seed", type=int, nargs="+", default=[1])
    p.add_argument("--val-frac", type=float, default=OWN_DATA_VAL_FRAC,
                   help="validation fraction of the training ratings, shared by every model (default: the "
                        "own-data default's)")
    p.add_argument("--budget", type=float, default=5.0, help="minutes per auto search (glocalk train --budget)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default docs/benchmarks/density-DATASET")
    p.add_argument("--work", default=None, help="the harness's files; default runs/density-DATASET")
    p.add_argument("--tabulate", action="store_true", help="run nothing: rewrite summary.md and density.png from "
                                                           "OUT's results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup = Setup(args.dataset, args.seed, args.models, args.val_frac, args.budget, args.threads,
                  Path(args.out or f"docs/benchmarks/density-{args.dataset}"),
                  Path(args.work or f"runs/density-{args.dataset}"))
    if not args.tabulate:
        base = load_dataset(args.dataset, data_dir=args.data_dir)
        for fraction in args.fractions:
            run_fraction(base, fraction, setup)
            tabulate(setup)  # after every fraction: an interrupted run keeps its table
    tabulate(setup)
    print((setup.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
