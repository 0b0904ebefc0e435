"""GLocal-K performance benchmark: dense versus sparse path, paper protocols, scaling with nnz.

One command measures, in the same run and on one device::

    python benchmarks/run.py --data-dir ../shared/data                 # CPU, writes docs/PERFORMANCE.md
    python benchmarks/run.py --data-dir ../shared/data --device cuda   # the same on a GPU
    python benchmarks/run.py --quick                                   # smoke check, minutes

Sections (``--sections``, all by default):

``passes``
    ML-100K, Douban, ML-1M: time of one loss + gradient (forward, backward, ``loss.item()``) of
    stage 1 and stage 2, dense and sparse path, the paper's hyperparameters, the same initial
    weights; median of ``--reps`` repetitions after ``--warmup`` untimed ones. Also the two
    paths' loss values (they must agree: same mathematics) and the peak memory.
``protocols``
    The whole paper protocol (``glocalk.presets``; L-BFGS epochs plus the evaluation after every
    epoch), seed ``--seed``: sparse path on all three, dense path on ML-100K and Douban, median
    of ``--protocol-reps`` runs (``--protocol-reps-ml1m`` for ML-1M). The dense ML-1M protocol
    takes most of an hour on 2 cores, so without ``--full`` its time is EXTRAPOLATED from the
    dense per-pass times and the sparse run's function-evaluation counts, and labelled so.
    ``--reuse ml-1m:sparse=runs/ml-1m-paper`` takes a protocol figure from a ``glocalk train``
    run instead of repeating it (its summary.json and seed-N/epochs.jsonl; also labelled).
``scaling``
    Sparse path on synthetic data (``glocalk.data.synthetic``) of ML-10M's shape, 10,681 items x
    69,878 users, with 1e5 ... 1e7 ratings: time per loss + gradient of both stages, the
    log-log slope (over all points and over the top decade) and a PNG. The shape is FIXED so
    that only nnz varies; the O(n_items n_hid^2 + n_users n_hid) dense parts are then a
    constant floor that bends the curve at small nnz (hence the top-decade slope too).
``epoch10m``
    Real training at ML-10M's size (10M ratings): one stage-1 epoch (iter_p 5) and one stage-2
    epoch (iter_f 5), with evaluation, once per optimiser of ``--epoch10m-optimizers`` (SciPy's
    L-BFGS-B alone holds a 15 GB float64 workspace for the 71M parameters there; torch's LBFGS
    about 6 GB); peak memory against 24 GB.

Every configuration runs in a fresh subprocess of this script (``--worker``) so that peak
memory (``ru_maxrss``; on CUDA ``torch.cuda.max_memory_allocated``) belongs to it alone. A
watchdog kills a worker that passes ``--mem-cap-gb`` or leaves the machine under
``--min-free-gb`` of available memory, and reports it as failed. ``--quick`` runs everything
small (ML-1M's shape for the synthetic parts) and writes to a temporary folder.
Outputs: ``--out`` (docs/PERFORMANCE.md), next to it ``perf_results.json`` (raw figures, one
entry per device kind, so a CPU and a CUDA run live side by side) and ``perf_scaling.png``
(``perf_scaling_cuda.png``). Text between ``<!-- BEGIN NOTES -->`` and ``<!-- END NOTES -->``
in an existing --out file is kept, so the analysis written there survives re-runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from perf.common import (
    DATASETS,
    ML10M_SHAPE,
    QUICK_SCALING_NNZ,
    QUICK_SHAPE,
    REPO,
    SCALING_NNZ,
    SECTIONS,
)
from perf.derive import derive
from perf.machine import machine_description
from perf.render import fmt, plot_scaling, png_name, read_notes, render
from perf.runner import Runner
from perf.sections import section_epoch10m, section_passes, section_protocols, section_scaling
from perf.workers import worker_main

from glocalk.data.datasets import find_dataset_dir
from glocalk.errors import DataError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--data-dir", default=None, help="folder with the paper datasets (default: $GLOCALK_DATA, "
                                                    "else ~/.cache/glocalk)")
    p.add_argument("--out", default=None, help="report to write (default docs/PERFORMANCE.md; with --quick a "
                                               "temporary folder, so the real report is not overwritten)")
    p.add_argument("--quick", action="store_true", help="smoke check in minutes: 2 repetitions, 1 + 1 epoch "
                                                       "protocols on ML-100K only, synthetic at ML-1M's shape up "
                                                       "to 3e5 ratings")
    p.add_argument("--full", action="store_true", help="also run the dense ML-1M protocol (~1 h on 2 cores) "
                                                      "instead of extrapolating it")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}; the others are kept from the existing "
                        "results of the same device (their own dates are shown)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="paper datasets to measure")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per pass (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up passes (default 2)")
    p.add_argument("--protocol-reps", type=int, default=3, help="protocol runs on ML-100K and Douban (default 3)")
    p.add_argument("--protocol-reps-ml1m", type=int, default=1, help="protocol runs on ML-1M (default 1)")
    p.add_argument("--reuse", action="append", default=[], metavar="DATASET:PATH=RUN",
                   help="take a protocol figure from a glocalk train run (folder or summary.json) instead of "
                        "running it, e.g. ml-1m:sparse=runs/ml-1m-paper; repeatable")
    p.add_argument("--scaling-nnz", default=None, help="comma-separated nnz list (default 1e5,3e5,1e6,3e6,1e7)")
    p.add_argument("--seed", type=int, default=1, help="seed of the protocols and initial weights (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every worker (default torch's)")
    p.add_argument("--optimizer", choices=["scipy", "torch"], default="scipy", help="as glocalk train (default scipy)")
    p.add_argument("--epoch10m-optimizers", default="scipy,torch",
                   help="optimisers of the ML-10M-size epoch (default scipy,torch: SciPy's L-BFGS-B alone needs "
                        "~16 GB there, torch's LBFGS ~6 GB)")
    p.add_argument("--mem-cap-gb", type=float, default=24.0,
                   help="kill a worker whose resident memory passes this (default 24, the ML-10M target)")
    p.add_argument("--min-free-gb", type=float, default=1.0,
                   help="kill a worker when the machine's available memory falls under this (default 1)")
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds before a worker is abandoned")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite the report (and plots) from the existing perf_results.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def parse_lists(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, str]]:
    """The sections, datasets and --reuse runs the command line names, checked."""
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    datasets = [s.strip() for s in args.datasets.split(",") if s.strip()]
    reuse = {}
    for item in args.reuse:
        key, _, path = item.partition("=")
        if key.count(":") != 1 or not path or key.split(":")[1] not in ("dense", "sparse"):
            raise SystemExit(f"--reuse expects DATASET:PATH=RUN (PATH dense or sparse), got {item!r}")
        reuse[key] = path
    return sections, datasets, reuse


def report_path(args: argparse.Namespace) -> Path:
    """--out, else a temporary folder with --quick (never the real report), else docs/PERFORMANCE.md."""
    if args.out:
        return Path(args.out)
    if args.quick:
        return Path(tempfile.gettempdir()) / "glocalk-perf-quick" / "PERFORMANCE.md"
    return REPO / "docs" / "PERFORMANCE.md"


def write_outputs(all_results: dict, out: Path, json_path: Path, plot: tuple[str, str] | None) -> None:
    """perf_results.json and the report; with ``plot`` = (device kind, device) that kind's scaling PNG too."""
    if plot:
        key, device = plot
        plot_scaling(all_results[key]["scaling"], out.parent / png_name(key), device)
    json_path.write_text(json.dumps(all_results, indent=1, default=str) + "\n")
    out.write_text(render(all_results, read_notes(out)))


def render_only(out: Path, json_path: Path) -> int:
    """--render-only: recompute the derived figures, plots and report from perf_results.json."""
    if not json_path.exists():
        raise SystemExit(f"--render-only: {json_path} does not exist")
    all_results = json.loads(json_path.read_text())
    for k, res in all_results.items():
        res["derived"] = derive(res)
        if res.get("scaling"):
            plot_scaling(res["scaling"], out.parent / png_name(k), res["device"])
    write_outputs(all_results, out, json_path, None)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def available_datasets(args: argparse.Namespace, datasets: list[str], res: dict) -> list[str]:
    """The datasets found under --data-dir; the missing ones are recorded in ``res`` and warned about."""
    available = []
    for name in datasets:
        try:
            find_dataset_dir(name, args.data_dir)
            available.append(name)
        except DataError:
            res.setdefault("missing_datasets", []).append(name)
            print(f"warning: {name} not found (--data-dir {args.data_dir}); its measurements are skipped",
                  file=sys.stderr)
    return available


def warn_if_busy() -> None:
    """Warn when the machine is busy at the start: the times will be inflated."""
    la = os.getloadavg()[0]
    if la > 0.5:
        print(f"warning: load average {la:.1f} at start: the machine is busy and the times will be inflated "
              "(threads compete; see the report's load figures)", file=sys.stderr)


def measure(args: argparse.Namespace, sections: list[str], datasets: list[str], reuse: dict[str, str],
            res: dict) -> None:
    """Run the requested sections, each result into ``res`` under its name."""
    runner = Runner(args)
    available = available_datasets(args, datasets, res) if {"passes", "protocols"} & set(sections) else []
    nnz_list = ([int(float(x)) for x in args.scaling_nnz.split(",")] if args.scaling_nnz
                else list(QUICK_SCALING_NNZ if args.quick else SCALING_NNZ))
    shape = QUICK_SHAPE if args.quick else ML10M_SHAPE
    warn_if_busy()
    if "passes" in sections:
        res["passes"] = section_passes(runner, available)
    if "protocols" in sections:
        wanted = ["ml-100k"] if args.quick else datasets
        res["protocols"] = section_protocols(
            runner, [n for n in wanted if n in available or any(k.startswith(n + ":") for k in reuse)],
            available, reuse, args.quick)
    if "scaling" in sections:
        res["scaling"] = section_scaling(runner, nnz_list, shape)
    if "epoch10m" in sections:
        opts = [o.strip() for o in args.epoch10m_optimizers.split(",") if o.strip()]
        res["epoch10m"] = section_epoch10m(runner, shape, 100_000 if args.quick else 10_000_000, opts)


def keep_previous(res: dict, previous: dict | None, sections: list[str], quick: bool) -> None:
    """Carry the sections not re-run over from the same device's previous results (same quick-ness)."""
    if previous and previous.get("quick") == quick:
        for s in SECTIONS:
            if s not in sections and s in previous:
                res[s] = previous[s]
                res.setdefault("measured_at", {})[s] = previous.get("measured_at", {}).get(s, previous["started"])


def print_targets(targets: list[dict]) -> None:
    """The target checks on stderr, one line each."""
    for t in targets:
        state = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"  {state:>6}  {t['target']}: {fmt(t['value'], '{:.4g}')} (limit {t['limit']:g})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Measure the requested sections, merge them into perf_results.json and write the report."""
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return 0
    sections, datasets, reuse = parse_lists(args)
    if args.quick:
        args.reps, args.warmup = min(args.reps, 2), min(args.warmup, 1)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    out = report_path(args)
    json_path = out.parent / "perf_results.json"
    key = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.render_only:
        return render_only(out, json_path)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    cmd = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res: dict = {"device": args.device, "command": cmd.strip(), "started": started, "quick": args.quick,
                 "args": {k: v for k, v in vars(args).items() if k != "worker"},
                 "machine": machine_description(args.device)}
    measure(args, sections, datasets, reuse, res)
    for s in sections:
        res.setdefault("measured_at", {})[s] = started
    res["elapsed_s"] = time.perf_counter() - t0
    res["loadavg_end"] = list(os.getloadavg())
    all_results = json.loads(json_path.read_text()) if json_path.exists() else {}
    keep_previous(res, all_results.get(key), sections, args.quick)
    res["derived"] = derive(res)
    all_results[key] = res
    out.parent.mkdir(parents=True, exist_ok=True)
    write_outputs(all_results, out, json_path, (key, args.device) if res.get("scaling") else None)
    print(f"wrote {out}, {json_path}" + (f", {out.parent / png_name(key)}" if res.get("scaling") else ""),
          file=sys.stderr)
    print_targets(res["derived"]["targets"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
