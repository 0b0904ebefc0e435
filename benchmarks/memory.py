"""Peak memory of training at MovieLens-10M / 20M size, phase by phase (synthetic ratings).

    python benchmarks/memory.py --size ml-10m [--epoch --optimizer torch] [--out docs/memory_ml-10m.json]

Builds ``glocalk.data.synthetic.make_ratings`` at the size's shape and rating count (ML-10M:
10,681 x 69,878, 10M ratings; ML-20M: 26,744 x 138,493, 20M; 10% test), sets up the ``Trainer``
(ML-1M preset, sparse execution), then either times one stage-1 and one stage-2 loss + gradient and
the evaluation (default), or runs one stage-1 epoch and one stage-2 epoch (``--epoch``, iter 5 each)
with the named optimiser. Reports the resident memory after each phase and each phase's peak
(Linux: the peak is reset between phases through /proc/self/clear_refs), and the optimiser state
the model size implies (L-BFGS with m = 10 pairs: 2m + 5 vectors of the parameters' size;
SciPy's in float64, torch's in float32), so an epoch's peak can be read off without running it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from glocalk.data.synthetic import make_ratings
from glocalk.presets import preset, split_config
from glocalk.train import Trainer

SIZES = {"ml-10m": (10_681, 69_878, 10_000_000), "ml-20m": (26_744, 138_493, 20_000_000)}


def status_mb(field: str) -> float:
    """VmRSS or VmHWM (the peak) of this process in MB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Start a new peak (VmHWM) at the current resident size (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class Phases:
    """Records each phase's seconds, resident MB at its end and peak MB during it."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.t = time.perf_counter()
        reset_peak()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        row = {"phase": name, "seconds": now - self.t, "rss_mb": status_mb("VmRSS"), "peak_mb": status_mb("VmHWM"),
               "load": os.getloadavg()[0]}
        self.rows.append(row)
        print(f"{name}: {row['seconds']:.1f} s, rss {row['rss_mb']:,.0f} MB, peak {row['peak_mb']:,.0f} MB "
              f"(load {row['load']:.1f})", file=sys.stderr, flush=True)
        reset_peak()
        self.t = time.perf_counter()


def optimiser_state_gb(n_params: int, history: int = 10) -> dict:
    """L-BFGS state for ``n_params`` variables: SciPy's (2m + 5) n float64 workspace and torch's float32 pairs."""
    return {"scipy_float64_gb": (2 * history + 5) * n_params * 8 / 1e9,
            "float32_pairs_gb": (2 * history + 5) * n_params * 4 / 1e9}


def one_pass(trainer: Trainer, stage: int) -> float:
    """One loss + gradient of a stage, as the optimiser asks for it."""
    model = trainer.model
    params = model.network_parameters() if stage == 1 else model.finetune_parameters()
    for p in params:
        p.grad = None
    loss = model.loss(trainer.input, stage)
    loss.backward()
    value = loss.item()
    for p in params:
        p.grad = None
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the phases and print (or write) the record."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="ml-10m")
    p.add_argument("--epoch", action="store_true", help="run one epoch per stage instead of single passes")
    p.add_argument("--optimizer", default="torch", help="with --epoch: the training optimiser (default torch)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON record to write")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_items, n_users, n_ratings = SIZES[args.size]
    phases = Phases()
    data = make_ratings(n_users, n_items, n_ratings, seed=0, test_frac=0.1)
    phases.done("data generated")
    params = {**preset("ml-1m"), "path": "sparse", "epoch_p": 1, "epoch_f": 1, "iter_p": 5, "iter_f": 5,
              "optimizer": args.optimizer}
    model_config, train_config = split_config(params)
    trainer = Trainer(data, model_config, train_config)
    phases.done("trainer set up (input, splits, model)")
    if args.epoch:
        trainer.run()
        phases.done(f"one epoch per stage ({args.optimizer}), with evaluation")
    else:
        for stage in (1, 2):
            one_pass(trainer, stage)
            phases.done(f"stage-{stage} loss + gradient")
        trainer.evaluate(2)
        phases.done("evaluation (stage 2)")
    n_params = sum(q.numel() for q in trainer.model.parameters())
    rec = {"command": "python benchmarks/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "size": args.size, "shape": [n_items, n_users], "n_ratings": n_ratings, "train_nnz": int(data.train.nnz),
           "conv_nnz": trainer.input.conv.output.nnz, "n_params": n_params, "threads": torch.get_num_threads(),
           "phases": phases.rows, "peak_mb": max(r["peak_mb"] for r in phases.rows),
           "optimiser_state": optimiser_state_gb(n_params)}
    text = json.dumps(rec, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
