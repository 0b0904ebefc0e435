"""Several source trees of glocalk timed in one run: each worker is a fresh subprocess of the calling
script with one tree first on PYTHONPATH, and hands its result back as one marked JSON line on stdout.

Used by ``passes.py`` and ``optimizer_overhead.py`` (``--tree NAME=DIR``), whose workers of the trees
alternate round after round, so before/after figures come from the same run and the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def run_worker(script: str, src: str, spec: dict, mark: str) -> dict:
    """Run ``script --worker SPEC`` with ``src`` first on PYTHONPATH; the JSON after ``mark`` in its output."""
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    proc = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], env=env, text=True,
                          capture_output=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(mark):
            return json.loads(line[len(mark):])
    raise SystemExit(f"worker for {src} failed:\n{proc.stderr[-3000:]}")


def alternate(script: str, trees: dict[str, str], spec: dict, mark: str, rounds: int) -> dict[str, list[dict]]:
    """``rounds`` workers per tree, the trees taking turns within each round (a drifting load is shared);
    each tree's results in order."""
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(rounds):
        for name, src in trees.items():
            print(f"round {r + 1}: {name} (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
            runs[name].append(run_worker(script, src, spec, mark))
    return runs


def add_tree_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tree NAME=DIR`` (repeatable) and the hidden ``--worker SPEC`` of a script that times trees."""
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                        help="a source tree to time (DIR holds the glocalk package); repeatable (default: this one)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def trees_of(args: argparse.Namespace, default_src: Path) -> dict[str, str]:
    """The ``--tree`` arguments as {name: dir}, or this checkout's source as "this"."""
    return dict(t.split("=", 1) for t in args.tree) or {"this": str(default_src)}
