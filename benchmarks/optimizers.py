"""--optimizer scipy against --optimizer lbfgsb (glocalk.optim) on a paper protocol, in the same run.

    python benchmarks/optimizers.py --data-dir ../shared/data                      # ML-100K, seed 1
    python benchmarks/optimizers.py --data-dir ../shared/data --seeds 1 2 --threads 1
    python benchmarks/optimizers.py --data-dir ../shared/data --quick              # smoke check, to /tmp
    python benchmarks/optimizers.py --tabulate runs.jsonl   # the files again from the runs' printed lines

Each (seed, optimizer) is one ``python -m glocalk train`` process on the dataset's paper preset; the order
of the optimisers alternates between seeds so a drift in the machine's load does not favour one. Records
per run: wall time, the optimiser's and the evaluation's time (summed from epochs.jsonl), function
evaluations and iterations, best (paper protocol) and final test RMSE, and the 1-minute load average
before and after. Writes DATASET[-quick].json and .md under --out-dir (docs/benchmarks/optimizers) after
every run, so an interrupted benchmark keeps what it measured; each run is also printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--epoch-p", "2", "--epoch-f", "2"]


def run_one(args: argparse.Namespace, seed: int, optimizer: str, work: Path) -> dict:
    """One training process; its figures from summary.json and epochs.jsonl."""
    out = work / f"{args.dataset}-seed{seed}-{optimizer}"
    cmd = [sys.executable, "-m", "glocalk", "train", "--dataset", args.dataset, "--seed", str(seed),
           "--threads", str(args.threads), "--optimizer", optimizer, "--device", args.device, "--quiet",
           "--out", str(out)] + (["--data-dir", args.data_dir] if args.data_dir else []) + (QUICK if args.quick else [])
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    epochs = [json.loads(line) for line in (out / f"seed-{seed}" / "epochs.jsonl").read_text().splitlines()]
    return {"seed": seed, "optimizer": optimizer, "wall_s": wall,
            "optimizer_s": sum(r["seconds"] for r in epochs), "eval_s": sum(r["eval_seconds"] for r in epochs),
            "nfev": sum(r["nfev"] for r in epochs), "nit": sum(r["nit"] for r in epochs), "epochs": len(epochs),
            "best_rmse": summary["best"]["rmse"], "final_rmse": summary["final"]["rmse"],
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "command": " ".join(["python"] + cmd[1:]).replace(str(out), "OUT")}


def render(report: dict) -> str:
    """The Markdown table: one row per run, then scipy / lbfgsb ratios per seed."""
    lines = [f"# --optimizer scipy vs lbfgsb: {report['dataset']} paper protocol", "",
             f"Measured {report['date']} on {report['machine']}, {report['threads']} torch thread(s), "
             f"device {report['device']}; one process per run, order alternating by seed.", "",
             f"Command: `{report['command']}`", ""] + ([report["note"], ""] if report.get("note") else []) + [
             "| seed | optimizer | wall s | optimiser s | eval s | nfev | nit | best RMSE | final RMSE "
             "| load before/after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['seed']} | {r['optimizer']} | {r['wall_s']:.1f} | {r['optimizer_s']:.1f} | "
                     f"{r['eval_s']:.1f} | {r['nfev']} | {r['nit']} | {r['best_rmse']:.4f} | {r['final_rmse']:.4f} | "
                     f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    lines += ["", "| seed | wall scipy / lbfgsb | optimiser-time scipy / lbfgsb | best RMSE lbfgsb - scipy | "
              "final RMSE lbfgsb - scipy |", "|---|---|---|---|---|"]
    for seed in report["seeds"]:
        by = {r["optimizer"]: r for r in report["runs"] if r["seed"] == seed}
        if {"scipy", "lbfgsb"} <= set(by):
            s, b = by["scipy"], by["lbfgsb"]
            lines.append(f"| {seed} | {s['wall_s'] / b['wall_s']:.2f}x | {s['optimizer_s'] / b['optimizer_s']:.2f}x | "
                         f"{b['best_rmse'] - s['best_rmse']:+.4f} | {b['final_rmse'] - s['final_rmse']:+.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--optimizers", nargs="+", default=["scipy", "lbfgsb"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="2 + 2 epochs, written to a temporary folder")
    p.add_argument("--out-dir", default=str(REPO / "docs" / "benchmarks" / "optimizers"))
    p.add_argument("--tabulate", default=None, help="write the files from these printed run lines (JSON lines)")
    p.add_argument("--note", default="", help="a sentence for the report (e.g. how the tabulated runs were made)")
    args = p.parse_args(argv)
    out_dir = Path(tempfile.mkdtemp()) if args.quick else Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"dataset": args.dataset, "seeds": args.seeds, "threads": args.threads, "device": args.device,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{os.cpu_count()} cores", "quick": args.quick, "note": args.note,
              "command": "python benchmarks/optimizers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "runs": []}
    if args.tabulate:
        report["runs"] = [json.loads(line) for line in Path(args.tabulate).read_text().splitlines()
                          if line.startswith("{")]
        report["seeds"] = sorted({r["seed"] for r in report["runs"]})
        write(report, out_dir)
        return
    with tempfile.TemporaryDirectory() as work:
        for i, seed in enumerate(args.seeds):
            for optimizer in (args.optimizers if i % 2 == 0 else args.optimizers[::-1]):
                report["runs"].append(run_one(args, seed, optimizer, Path(work)))
                print(json.dumps(report["runs"][-1]), flush=True)
                write(report, out_dir)


def write(report: dict, out_dir: Path) -> None:
    """DATASET[-quick].json and .md under ``out_dir``."""
    stem = report["dataset"] + ("-quick" if report["quick"] else "")
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(render(report))
    print(f"written: {out_dir / stem}.json, .md", flush=True)

if __name__ == "__main__":
    main()
