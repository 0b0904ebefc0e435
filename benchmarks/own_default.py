"""The own-data default on rating sets built from ML-100K in other units and densities (issue 10).

The held-out public sets of issue 10 are not in ../shared, so this builds its own cases from
ML-100K's u1 split: every rating r mapped to a r + b (a 1..100 scale: 24.75 r - 23.75; half-star
units: r / 2) and, for the sparse rows, a seeded fraction of the training ratings kept (test
unchanged). Each case is run as a new user would run it, with the defaults and nothing else:

    glocalk train --mat CASE.mat --seed 1 --budget B           (the .mat cases)
    glocalk fit CASE.csv --split random --seed 1 --budget B    (the CSV case: all 100k ratings, random 90/10)

(the default: ``--preset auto`` on a 10% validation split with early stopping, and ``--fallback
baseline``: the answer is the better on validation of GLocal-K and the user + item bias model; since
"Blend or better-of-two" in BENCHMARKS.md, ``glocalk fit``'s default is ``--fallback blend``, while
``glocalk train --mat`` keeps ``baseline``: results.json and table.md were made before that).
The table shows both models on test, which one validation chose, and the answer's test RMSE.

    python benchmarks/own_default.py [--data-dir DIR] [--budget 5] [--out docs/benchmarks/own-default]

``--blend`` (issue 10: blend or better-of-two) runs every case through ``glocalk fit`` with
``--fallback blend`` instead (``glocalk train`` cannot blend; a .mat case becomes a training CSV and a
``--test`` CSV of the same ratings), and tabulates GLocal-K, the bias model, the better-of-two answer
(``--fallback baseline``: the winner on validation) and the blend on validation and on test, all from
the one fit's comparison record; written to blend.json and blend.md (results.json, table.md untouched):

    python benchmarks/own_default.py --blend --budget 0 --cases 0 [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from glocalk.data.datasets import load_dataset
from glocalk.data.matrix import RatingMatrix

SUBSAMPLE_SEED = 1234


@dataclass(frozen=True)
class Case:
    """One rating set: ML-100K's ratings as a r + b, keeping ``fraction`` of the training ratings."""

    name: str
    a: float
    b: float
    fraction: float = 1.0
    kind: str = "mat"  # "mat": glocalk train --mat; "csv": glocalk fit --split random on train + test


CASES = (
    Case("1..100, full (5.0% dense)", 24.75, -23.75),
    Case("1..100, 10% of train (0.5% dense)", 24.75, -23.75, 0.1),
    Case("half-star units r/2, 30% of train (1.5% dense)", 0.5, 0.0, 0.3),
    Case("half-star units r/2, 10% of train (0.5% dense)", 0.5, 0.0, 0.1),
    Case("CSV of 100k half-star-unit ratings, fit --split random", 0.5, 0.0, 1.0, "csv"),
)


def _rescaled(m: sp.csr_matrix, case: Case, keep: np.ndarray | None = None) -> sp.csr_matrix:
    coo = m.tocoo()
    keep = np.ones(coo.nnz, dtype=bool) if keep is None else keep
    data = coo.data[keep].astype(np.float64) * case.a + case.b
    return sp.csr_matrix((data, (coo.row[keep], coo.col[keep])), shape=m.shape)


def build(data: RatingMatrix, case: Case, folder: Path) -> Path:
    """Write the case's file (a Monti .mat, or a CSV of all ratings) and return its path."""
    keep = None
    if case.fraction < 1.0:
        keep = np.random.default_rng(SUBSAMPLE_SEED).random(data.train.nnz) < case.fraction
    train, test = _rescaled(data.train, case, keep), _rescaled(data.test, case)
    slug = "".join(c if c.isalnum() else "-" for c in case.name).strip("-")
    if case.kind == "csv":
        both = (train + test).tocoo()  # items x users
        path = folder / f"{slug}.csv"
        pd.DataFrame({"user": both.col + 1, "item": both.row + 1, "rating": both.data}).to_csv(path, index=False)
        return path
    path = folder / f"{slug}.mat"
    with h5py.File(path, "w") as f:  # Monti et al.: M, Otraining, Otest (users x items), MATLAB's layout
        f.create_dataset("M", data=(train + test).toarray())
        f.create_dataset("Otraining", data=(train != 0).toarray().astype(np.float64))
        f.create_dataset("Otest", data=(test != 0).toarray().astype(np.float64))
    return path


def run(case: Case, path: Path, out: Path, budget: float) -> dict:
    """The default command on the case; its comparison record and wall time."""
    if case.kind == "csv":
        cmd = ["fit", str(path), "--split", "random", "--seed", "1", "--budget", str(budget), "--threads", "1",
               "--quiet", "--force", "--out", str(out)]
    else:
        cmd = ["train", "--mat", str(path), "--seed", "1", "--budget", str(budget), "--threads", "1", "--quiet",
               "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "glocalk", *cmd], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    record = json.loads((out / ("report.json" if case.kind == "csv" else "summary.json")).read_text())
    return {"case": case.name, "command": "glocalk " + " ".join(cmd[:2] + cmd[2:]), "seconds": seconds,
            "load_avg": os.getloadavg(), "comparison": record["comparison"], "auto": record["auto"],
            "metrics": record.get("metrics")}


def run_blend(case: Case, data: RatingMatrix, folder: Path, budget: float, threads: int, seed: int = 1) -> dict:
    """``glocalk fit --fallback blend`` on the case; its comparison record, wall time and load average."""
    out = folder / (f"blend-s{seed}-" + "".join(c if c.isalnum() else "-" for c in case.name).strip("-"))
    out.mkdir(parents=True, exist_ok=True)
    common = ["--seed", str(seed), "--budget", str(budget), "--fallback", "blend", "--optimizer", "lbfgsb",
              "--threads", str(threads), "--quiet", "--force", "--out", str(out / "model")]
    keep = None
    if case.fraction < 1.0:
        keep = np.random.default_rng(SUBSAMPLE_SEED).random(data.train.nnz) < case.fraction
    files = []
    for label, m in (("train", _rescaled(data.train, case, keep)), ("test", _rescaled(data.test, case))):
        coo = m.tocoo()  # items x users
        files.append(out / f"{label}.csv")
        pd.DataFrame({"user": coo.col + 1, "item": coo.row + 1, "rating": coo.data}).to_csv(files[-1], index=False)
    if case.kind == "csv":
        both = pd.concat([pd.read_csv(f) for f in files])
        both.to_csv(files[0], index=False)
        cmd = ["fit", str(files[0]), "--split", "random", *common]
    else:
        cmd = ["fit", str(files[0]), "--test", str(files[1]), *common]
    load_before, t0 = os.getloadavg(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "glocalk", *cmd], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    for f in files:
        f.unlink()  # the rating files are ML-100K's data: not kept
    report = json.loads((out / "model" / "report.json").read_text())
    return {"case": case.name, "command": "glocalk " + " ".join(cmd), "seconds": seconds,
            "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
            "comparison": report["comparison"], "auto": report.get("auto"), "metrics": report.get("metrics")}


def blend_row(result: dict) -> list[str]:
    """One case: val and test RMSE of GLocal-K, the bias model, the better of two, the blend; alpha."""
    c = result["comparison"]
    better = c[c["winner_on_validation"]]
    cells = [result["case"]]
    for part in ("val", "test"):
        cells += [f"{m[part]['rmse']:.4f}" for m in (c["glocalk"], c["biases"], better, c["blend"])]
    blend_wins = "yes" if c["blend"]["val"]["rmse"] < better["val"]["rmse"] else "tie"
    test_wins = "yes" if c["blend"]["test"]["rmse"] <= better["test"]["rmse"] else "**no**"
    return cells + [f"{c['blend']['alpha']:.3f}", c["winner_on_validation"], blend_wins, test_wins,
                    f"{result['seconds'] / 60:.1f}", "{:.2f}/{:.2f}".format(result["load_avg_before"][0],
                                                                        result["load_avg_after"][0])]


BLEND_HEADER = ["rating set", "GLocal-K val", "biases val", "better-of-two val", "blend val", "GLocal-K test",
                "biases test", "better-of-two test", "blend test", "alpha", "better of two (on val)",
                "blend < better on val", "blend <= better on test", "minutes", "load (1 min) before/after"]


def row(result: dict) -> list[str]:
    c = result["comparison"]
    g, b = c["glocalk"], c["biases"]
    answer_test = c.get("answer_test") or result.get("metrics") or {}
    chosen = result["auto"]["candidates"][result["auto"]["chosen"]]["params"] or "preset"
    return [result["case"], f"{g['val']['rmse']:.4f}", f"{b['val']['rmse']:.4f}", f"{g['test']['rmse']:.4f}",
            f"{b['test']['rmse']:.4f}", c["answer"], f"{answer_test.get('rmse', float('nan')):.4f}",
            "yes" if answer_test.get("rmse", np.inf) <= b["test"]["rmse"] + 1e-12 else "**no**",
            str(chosen), f"{result['seconds'] / 60:.1f}"]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--budget", type=float, default=5.0, help="--budget of each run, minutes")
    p.add_argument("--cases", type=int, nargs="+", default=list(range(len(CASES))), help="indices into CASES")
    p.add_argument("--out", default="docs/benchmarks/own-default")
    p.add_argument("--blend", action="store_true", help="blend or better-of-two: glocalk fit --fallback blend")
    p.add_argument("--threads", type=int, default=1, help="--threads of each run (with --blend)")
    p.add_argument("--seed", type=int, default=1,
                   help="--seed of each run (with --blend; also seeds the random split of the CSV case); "
                        "other than 1: written to blend-seedN.json / .md")
    args = p.parse_args()
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    data = load_dataset("ml-100k", data_dir=args.data_dir)
    if args.blend:
        blend_main(args, data, out)
        return
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for k in args.cases:
        case = CASES[k]
        path = build(data, case, out / "runs")
        results[case.name] = run(case, path, out / "runs" / path.stem, args.budget)
        path.unlink()  # the rating files are ML-100K's data: not kept
        results_path.write_text(json.dumps(results, indent=1))
    header = ["rating set", "GLocal-K val", "biases val", "GLocal-K test", "biases test", "answer (chosen on val)",
              "answer test", "answer <= biases on test", "auto's choice", "minutes"]
    rows = [row(results[c.name]) for c in CASES if c.name in results]
    (out / "table.md").write_text(markdown(header, rows))
    print(markdown(header, rows))


def blend_main(args: argparse.Namespace, data: RatingMatrix, out: Path) -> None:
    """--blend: run the cases through glocalk fit --fallback blend; blend.json and blend.md."""
    stem = "blend" if args.seed == 1 else f"blend-seed{args.seed}"
    results_path = out / f"{stem}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for k in args.cases:
        case = CASES[k]
        results[case.name] = run_blend(case, data, out / "runs", args.budget, args.threads, args.seed)
        results_path.write_text(json.dumps(results, indent=1))
    rows = [blend_row(results[c.name]) for c in CASES if c.name in results]
    (out / f"{stem}.md").write_text(markdown(BLEND_HEADER, rows))
    print(markdown(BLEND_HEADER, rows))


if __name__ == "__main__":
    main()
