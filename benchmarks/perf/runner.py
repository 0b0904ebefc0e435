"""Starts workers in fresh subprocesses of ``run.py --worker`` under a memory and time watchdog."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import PHASE_MARK, RESULT_MARK, RUN_SCRIPT
from .machine import mem_available_mb, proc_rss_mb


def log(text: str) -> None:
    """A time-stamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def parse_worker_output(stdout: str, stderr: str, returncode: int, killed: str | None) -> dict:
    """The worker's result, or {"error": ...} naming why it failed and its last phase."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_MARK)]
    phases = [ln[len(PHASE_MARK):] for ln in stderr.splitlines() if ln.startswith(PHASE_MARK)]
    if killed is None and returncode == 0 and lines:
        return json.loads(lines[-1][len(RESULT_MARK):])
    other = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(PHASE_MARK)][-4:]
    why = killed or ("killed by a signal (out of memory?)" if returncode < 0 else f"exit {returncode}")
    detail = why + (f"; last phase: {phases[-1]}" if phases else "") + (
        " / " + " / ".join(other) if other and not killed else "")
    return {"error": detail.replace("|", "/")}  # it ends up in Markdown table cells


class Runner:
    """Starts workers in fresh subprocesses and collects their results, with progress lines.

    A watchdog polls each worker: it is killed when its resident memory passes ``--mem-cap-gb``
    or when the machine's available memory falls under ``--min-free-gb`` (so a measurement that
    does not fit fails alone instead of dragging the machine, and other people's jobs, into swap
    or the OOM killer), and after ``--worker-timeout`` seconds.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def spec(self, kind: str, **kw) -> dict:
        """A worker spec: the run's device, threads, seed, data folder and optimiser, plus ``kw``."""
        a = self.args
        return {"kind": kind, "device": a.device, "threads": a.threads, "seed": a.seed,
                "data_dir": a.data_dir, "optimizer": a.optimizer, **kw}

    def kill_reason(self, rss: float, elapsed: float) -> str | None:
        """Why the watchdog should kill a worker at resident memory ``rss`` MB, or None."""
        a = self.args
        avail = mem_available_mb()
        if a.mem_cap_gb and rss > a.mem_cap_gb * 1024:
            return f"killed by the watchdog: resident memory passed --mem-cap-gb {a.mem_cap_gb:g}"
        if avail is not None and avail < a.min_free_gb * 1024:
            return (f"killed by the watchdog: the machine's available memory fell to {avail:,.0f} MB "
                    f"(worker at {rss:,.0f} MB; --min-free-gb {a.min_free_gb:g})")
        if a.worker_timeout and elapsed > a.worker_timeout:
            return f"killed by the watchdog: ran past --worker-timeout {a.worker_timeout:g} s"
        return None

    def watch(self, proc: subprocess.Popen, t0: float) -> tuple[str | None, float]:
        """Poll a worker until it ends or is killed: (why it was killed or None, peak resident MB)."""
        peak = 0.0
        while proc.poll() is None:
            rss = proc_rss_mb(proc.pid)
            peak = max(peak, rss)
            killed = self.kill_reason(rss, time.perf_counter() - t0)
            if killed:
                proc.kill()
                proc.wait()
                return killed, peak
            time.sleep(0.2)
        return None, peak

    def run(self, label: str, spec: dict) -> dict:
        """Run one worker; returns its result plus ``process_s`` and ``watched_peak_rss_mb``, or {"error": ...}."""
        log(f"{label} ...")
        cmd = [sys.executable, str(RUN_SCRIPT), "--worker", json.dumps(spec)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="glocalk-bench-") as tmp:
            out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
            with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
                proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env)
                killed, peak = self.watch(proc, t0)
            res = parse_worker_output(out_path.read_text(), err_path.read_text(), proc.returncode, killed)
        res["process_s"] = time.perf_counter() - t0
        res["watched_peak_rss_mb"] = peak
        status = "FAILED: " + res["error"] if "error" in res else f"{res['process_s']:.1f} s, peak {peak:,.0f} MB"
        log(f"  {label}: {status}")
        return res
