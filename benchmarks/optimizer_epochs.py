"""One L-BFGS-B epoch with --optimizer scipy and with lbfgsb, alternated in one process from the same weights.

    python benchmarks/optimizer_epochs.py --data-dir ../shared/data             # ML-100K, 7 pairs per stage

A whole protocol per optimiser (benchmarks/optimizers.py) takes minutes, over which a shared machine's load
drifts by a factor of two; here each repetition runs the two optimisers back to back (order alternating)
from the same saved weights, with a plain loss + gradient pass timed between them, so load changes hit
both alike. Reports per stage the median epoch time of each optimiser, their ratio, evaluations, and the
optimiser's own time per evaluation (epoch time minus nfev passes, divided by nfev). Writes
DATASET-epochs.json and .md under --out-dir (docs/benchmarks/optimizers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from glocalk.data.datasets import load_dataset
from glocalk.presets import preset, split_config
from glocalk.train import Trainer, lbfgs_epoch

REPO = Path(__file__).resolve().parents[1]
OPTIMIZERS = ("scipy", "lbfgsb")


def timed_pass(trainer: Trainer, params: list, stage: int) -> float:
    """Seconds of one loss + gradient, as an optimiser evaluation runs it (median of 3)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for p in params:
            p.grad = None
        trainer.model.loss(trainer.input, stage).backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_stage(trainer: Trainer, stage: int, reps: int, max_iter: int) -> dict:
    """``reps`` pairs of epochs from the same weights; per optimiser its epoch times, nfev and passes."""
    model = trainer.model
    params = model.network_parameters() if stage == 1 else model.finetune_parameters()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {o: {"epoch_s": [], "nfev": [], "pass_s": []} for o in OPTIMIZERS}
    for rep in range(reps):
        for optimizer in (OPTIMIZERS if rep % 2 == 0 else OPTIMIZERS[::-1]):
            model.load_state_dict(saved)
            out[optimizer]["pass_s"].append(timed_pass(trainer, params, stage))
            model.load_state_dict(saved)
            t0 = time.perf_counter()
            res = lbfgs_epoch(params, lambda: model.loss(trainer.input, stage), max_iter, optimizer)
            out[optimizer]["epoch_s"].append(time.perf_counter() - t0)
            out[optimizer]["nfev"].append(res["nfev"])
    model.load_state_dict(saved)
    for r in out.values():
        epoch, passes = statistics.median(r["epoch_s"]), statistics.median(r["pass_s"])
        nfev = statistics.median(r["nfev"])
        r.update(median_epoch_s=epoch, median_pass_s=passes, median_nfev=nfev,
                 overhead_ms_per_eval=1000 * (epoch - nfev * passes) / nfev)
    out["ratio_scipy_over_lbfgsb"] = out["scipy"]["median_epoch_s"] / out["lbfgsb"]["median_epoch_s"]
    return out


def render(report: dict) -> str:
    lines = [f"# One epoch, --optimizer scipy vs lbfgsb, alternated: {report['dataset']}", "",
             f"Measured {report['date']} on {report['machine']}, {report['threads']} torch thread(s); "
             f"{report['reps']} pairs per stage from the same weights; load average {report['load_before']:.2f} "
             f"before, {report['load_after']:.2f} after.", "", f"Command: `{report['command']}`", "",
             "| stage | optimizer | median epoch s | nfev | median pass s | optimiser ms per evaluation |",
             "|---|---|---|---|---|---|"]
    for stage in ("1", "2"):
        s = report["stages"][stage]
        for o in OPTIMIZERS:
            r = s[o]
            lines.append(f"| {stage} | {o} | {r['median_epoch_s']:.3f} | {r['median_nfev']:g} | "
                         f"{r['median_pass_s']:.3f} | {r['overhead_ms_per_eval']:.1f} |")
        lines.append(f"| {stage} | scipy / lbfgsb | {s['ratio_scipy_over_lbfgsb']:.2f}x | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=str(REPO / "docs" / "benchmarks" / "optimizers"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    model_config, train_config = split_config({**preset(args.dataset), "seed": 1})
    trainer = Trainer(data, model_config, train_config)
    load_before = os.getloadavg()[0]
    stages = {str(s): measure_stage(trainer, s, args.reps, train_config.iter_p if s == 1 else train_config.iter_f)
              for s in (1, 2)}
    report = {"dataset": args.dataset, "threads": args.threads, "reps": args.reps, "stages": stages,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{os.cpu_count()} cores",
              "load_before": load_before, "load_after": os.getloadavg()[0],
              "command": " ".join(["python benchmarks/optimizer_epochs.py", *(sys.argv[1:] if argv is None else argv)])}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.dataset}-epochs.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{args.dataset}-epochs.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
