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
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("ml-100k", "douban", "ml-1m")
ML10M_SHAPE = (10_681, 69_878)  # (n_items, n_users) of MovieLens 10M
SCALING_NNZ = (100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)
QUICK_SHAPE = (3_706, 6_040)  # --quick: ML-1M's shape, so the smoke check stays small
QUICK_SCALING_NNZ = (30_000, 100_000, 300_000)
TF_ML100K_SECONDS = 171.0  # the original TensorFlow code's ML-100K protocol on this 2-core machine (issue 3)
TARGETS = {"ml1m_protocol_s": 600.0, "rmse_gap": 0.002, "ml100k_speedup": 3.0, "slope": 1.0, "epoch10m_gb": 24.0}
SECTIONS = ("passes", "protocols", "scaling", "epoch10m")
NOTES_BEGIN, NOTES_END = "<!-- BEGIN NOTES -->", "<!-- END NOTES -->"
RESULT_MARK = "@@RESULT@@ "
PHASE_MARK = "@@PHASE@@ "


# =============================================================================== worker side

def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def _peak_rss_mb() -> float:
    """High-water mark of this process's resident set, MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _phase(text: str) -> None:
    """Progress line on stderr; the orchestrator quotes the last one when a worker fails."""
    print(f"{PHASE_MARK}{text} (rss {_rss_mb():,.0f} MB)", file=sys.stderr, flush=True)


def _load(spec: dict):
    """The RatingMatrix a worker spec names: a paper dataset or a synthetic one."""
    if "synthetic" in spec:
        from glocalk.data.synthetic import make_ratings

        return make_ratings(**spec["synthetic"])
    from glocalk.data.datasets import load_dataset

    return load_dataset(spec["dataset"], data_dir=spec.get("data_dir"))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_pass(model, inp, stage: int, params: list, device) -> tuple[float, float]:
    """(seconds, loss) of one loss + gradient, as the optimiser asks for it."""
    for p in params:
        p.grad = None
    _sync(device)
    t = time.perf_counter()
    loss = model.loss(inp, stage)
    loss.backward()
    value = loss.item()  # what the optimiser needs; also synchronises
    _sync(device)
    return time.perf_counter() - t, value


def _worker_passes(spec: dict) -> dict:
    """Time loss + gradient of the requested stages on one dataset and path."""
    import torch

    from glocalk.inputs import prepare_input
    from glocalk.model import GLocalK
    from glocalk.presets import preset, split_config
    from glocalk.train import _assign, _flat

    device = torch.device(spec["device"])
    rss_import = _rss_mb()
    t0 = time.perf_counter()
    data = _load(spec)
    load_s = time.perf_counter() - t0
    _phase("data loaded")
    model_config, _ = split_config({k: v for k, v in preset(spec.get("preset") or spec["dataset"]).items()})
    torch.manual_seed(spec.get("seed", 1))
    model = GLocalK(data.n_items, data.n_users, model_config).to(device)
    t0 = time.perf_counter()
    inp = prepare_input(data.train, spec["path"] == "sparse", model_config.gk_size, device)
    _sync(device)
    prepare_s = time.perf_counter() - t0
    _phase("input prepared")
    out = {"shape": list(data.shape), "nnz": int(data.train.nnz), "load_s": load_s, "prepare_s": prepare_s,
           "rss_import_mb": rss_import, "rss_setup_mb": _rss_mb(), "threads": torch.get_num_threads(),
           "loadavg_start": list(os.getloadavg()), "stages": {}}
    if inp.is_sparse:
        out.update(conv_nnz=inp.conv.output.nnz, conv_dense=bool(inp.conv_dense))
    for stage in spec["stages"]:
        params = model.network_parameters() if stage == 1 else model.finetune_parameters()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        for _ in range(spec["warmup"]):
            _one_pass(model, inp, stage, params, device)
        runs = [_one_pass(model, inp, stage, params, device) for _ in range(spec["reps"])]
        times = [t for t, _ in runs]
        grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)))
        # The optimiser's side of one evaluation: parameters from and gradients to float64 numpy.
        t = time.perf_counter()
        x = _flat(params)
        _assign(params, x)
        _flat([p.grad for p in params if p.grad is not None])
        _sync(device)
        io_s = time.perf_counter() - t
        rec = {"times_s": times, "median_s": statistics.median(times), "min_s": min(times),
               "loss": runs[-1][1], "grad_norm": grad_norm, "lbfgs_io_s": io_s,
               "peak_rss_mb": _peak_rss_mb()}
        if device.type == "cuda":
            rec["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["stages"][str(stage)] = rec
        _phase(f"stage {stage} timed")
    out["loadavg_end"] = list(os.getloadavg())
    return out


def _worker_train(spec: dict) -> dict:
    """One training run (a paper protocol, or a short synthetic one) with the Trainer."""
    import torch

    from glocalk.presets import preset, split_config
    from glocalk.train import Trainer

    device = torch.device(spec["device"])
    t_start = time.perf_counter()
    data = _load(spec)
    load_s = time.perf_counter() - t_start
    _phase("data loaded")
    params = preset(spec.get("preset") or spec["dataset"])
    params.update(spec.get("overrides", {}))
    params.update(path=spec["path"], seed=spec["seed"], device=spec["device"], optimizer=spec["optimizer"])
    if spec.get("threads"):
        params["threads"] = spec["threads"]
    model_config, train_config = split_config(params)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    trainer = Trainer(data, model_config, train_config)
    _sync(device)
    setup_s = time.perf_counter() - t0
    _phase("trainer set up")
    loadavg_start = list(os.getloadavg())
    result = trainer.run(on_epoch=lambda rec: _phase(f"epoch {rec['epoch']} (stage {rec['stage']}, "
                                                      f"{rec['nfev']} evaluations, {rec['seconds']:.1f} s)"))
    total_s = time.perf_counter() - t_start
    hist = result.history

    def stage_sum(key: str, stage: int) -> float:
        return float(sum(r[key] for r in hist if r["stage"] == stage))

    out = {"shape": list(data.shape), "nnz": int(data.train.nnz), "path": result.path, "load_s": load_s,
           "setup_s": setup_s, "train_s": result.seconds, "total_s": total_s, "epochs": len(hist),
           "nfev": {"1": int(stage_sum("nfev", 1)), "2": int(stage_sum("nfev", 2))},
           "opt_s": {"1": stage_sum("seconds", 1), "2": stage_sum("seconds", 2)},
           "eval_s": float(sum(r["eval_seconds"] for r in hist)),
           "best": result.best, "final": result.final, "hyperparameters": params,
           "threads": torch.get_num_threads(), "peak_rss_mb": _peak_rss_mb(),
           "loadavg_start": loadavg_start, "loadavg_end": list(os.getloadavg())}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def worker_main(spec: dict) -> None:
    """Entry of ``--worker``: run one measurement and print its JSON after RESULT_MARK."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    kind = spec["kind"]
    out = _worker_passes(spec) if kind == "passes" else _worker_train(spec)
    print(RESULT_MARK + json.dumps(out), flush=True)


# =============================================================================== orchestration

def _proc_rss_mb(pid: int) -> float:
    """Resident set of another process, MB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _mem_available_mb() -> float | None:
    """The kernel's estimate of memory available to new work, MB (None where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**10
    except (OSError, ValueError):
        pass
    return None


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
        a = self.args
        return {"kind": kind, "device": a.device, "threads": a.threads, "seed": a.seed,
                "data_dir": a.data_dir, "optimizer": a.optimizer, **kw}

    def run(self, label: str, spec: dict) -> dict:
        """Run one worker; returns its result plus ``process_s`` and ``watched_peak_rss_mb``, or {"error": ...}."""
        a = self.args
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        cap_mb = a.mem_cap_gb * 1024 if a.mem_cap_gb else None
        killed, peak = None, 0.0
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="glocalk-bench-") as tmp:
            out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
            with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
                proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env)
                while proc.poll() is None:
                    rss = _proc_rss_mb(proc.pid)
                    peak = max(peak, rss)
                    avail = _mem_available_mb()
                    if cap_mb and rss > cap_mb:
                        killed = f"killed by the watchdog: resident memory passed --mem-cap-gb {a.mem_cap_gb:g}"
                    elif avail is not None and avail < a.min_free_gb * 1024:
                        killed = (f"killed by the watchdog: the machine's available memory fell to {avail:,.0f} MB "
                                  f"(worker at {rss:,.0f} MB; --min-free-gb {a.min_free_gb:g})")
                    elif a.worker_timeout and time.perf_counter() - t0 > a.worker_timeout:
                        killed = f"killed by the watchdog: ran past --worker-timeout {a.worker_timeout:g} s"
                    if killed:
                        proc.kill()
                        proc.wait()
                        break
                    time.sleep(0.2)
            stdout, stderr = out_path.read_text(), err_path.read_text()
        lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_MARK)]
        phases = [ln[len(PHASE_MARK):] for ln in stderr.splitlines() if ln.startswith(PHASE_MARK)]
        if killed is None and proc.returncode == 0 and lines:
            res = json.loads(lines[-1][len(RESULT_MARK):])
        else:
            other = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(PHASE_MARK)][-4:]
            why = killed or ("killed by a signal (out of memory?)" if proc.returncode < 0
                             else f"exit {proc.returncode}")
            detail = why + (f"; last phase: {phases[-1]}" if phases else "") + (
                " / " + " / ".join(other) if other and not killed else "")
            res = {"error": detail.replace("|", "/")}  # it ends up in Markdown table cells
        res["process_s"] = time.perf_counter() - t0
        res["watched_peak_rss_mb"] = peak
        status = "FAILED: " + res["error"] if "error" in res else f"{res['process_s']:.1f} s, peak {peak:,.0f} MB"
        print(f"[{time.strftime('%H:%M:%S')}]   {label}: {status}", file=sys.stderr, flush=True)
        return res


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def section_passes(r: Runner, datasets: list[str]) -> dict:
    a = r.args
    out: dict = {}
    for name in datasets:
        out[name] = {}
        for path in ("dense", "sparse"):
            out[name][path] = r.run(f"passes {name} {path}", r.spec(
                "passes", dataset=name, path=path, stages=[1, 2], reps=a.reps, warmup=a.warmup))
    return out


def _summarise_protocol(runs: list[dict]) -> dict:
    ok = [x for x in runs if "error" not in x]
    if not ok:
        return {"error": runs[0]["error"] if runs else "not run", "runs": runs}
    first = ok[0]
    rmse = [x["best"]["rmse"] for x in ok if x.get("best")]
    return {
        "reps": len(ok), "process_s": _median([x.get("process_s") for x in ok]),
        "total_s": _median([x["total_s"] for x in ok]), "train_s": _median([x["train_s"] for x in ok]),
        "best": first["best"], "final": first["final"], "nfev": first["nfev"],
        "opt_s": {k: _median([x["opt_s"][k] for x in ok]) for k in ("1", "2")},
        "eval_s": _median([x["eval_s"] for x in ok]), "setup_s": _median([x["setup_s"] for x in ok]),
        "peak_rss_mb": max(x["peak_rss_mb"] for x in ok),
        "cuda_peak_mb": max((x.get("cuda_peak_mb") or 0.0) for x in ok) or None,
        "rmse_spread": (max(rmse) - min(rmse)) if rmse else None,
        "source": first.get("source", "measured"), "runs": runs,
    }


def load_reused(path: str, dataset: str, run_path: str, seed: int, device: str) -> dict:
    """A protocol record from a ``glocalk train`` run (its summary.json and epoch log)."""
    from glocalk.presets import preset

    p = Path(path)
    summary_file = p / "summary.json" if p.is_dir() else p
    s = json.loads(summary_file.read_text())
    if s.get("dataset") != dataset:
        raise SystemExit(f"--reuse: {summary_file} is a {s.get('dataset')!r} run, not {dataset!r}")
    hp = s.get("hyperparameters", {})
    differ = {k: (hp.get(k), v) for k, v in preset(dataset).items() if hp.get(k) != v}
    if differ:
        raise SystemExit(f"--reuse: {summary_file} did not use the paper preset: {differ}")
    if not str(hp.get("device", "cpu")).startswith(device.split(":")[0]):
        raise SystemExit(f"--reuse: {summary_file} ran on {hp.get('device')!r}, this benchmark on {device!r}")
    runs = [x for x in s.get("runs", []) if x.get("path") == run_path]
    if not runs:
        raise SystemExit(f"--reuse: {summary_file} holds no complete run on the {run_path} path")
    same_seed = [x for x in runs if x.get("seed") == seed]
    chosen = (same_seed or runs)[0]
    hist = [json.loads(ln) for ln in (summary_file.parent / chosen["epoch_log"]).read_text().splitlines() if ln]

    def stage_sum(key: str, stage: int) -> float:
        return float(sum(r[key] for r in hist if r["stage"] == stage))

    n_epochs = hp["epoch_p"] + hp["epoch_f"]
    if len(hist) < n_epochs:
        raise SystemExit(f"--reuse: {summary_file}: the run is incomplete ({len(hist)} of {n_epochs} epochs)")
    when = datetime.fromtimestamp(summary_file.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    record = {
        "path": run_path, "train_s": chosen["train_time_s"], "total_s": chosen["wall_time_s"], "process_s": None,
        "setup_s": chosen["wall_time_s"] - chosen["train_time_s"], "epochs": len(hist),
        "nfev": {"1": int(stage_sum("nfev", 1)), "2": int(stage_sum("nfev", 2))},
        "opt_s": {"1": stage_sum("seconds", 1), "2": stage_sum("seconds", 2)},
        "eval_s": float(sum(r["eval_seconds"] for r in hist)), "best": chosen["best"], "final": chosen["final"],
        "peak_rss_mb": None, "seed": chosen.get("seed"),
        "source": f"reused: {summary_file} (seed {chosen.get('seed')}, written {when}, device {s.get('device')})",
    }
    return record


def section_protocols(r: Runner, datasets: list[str], available: list[str], reuse: dict[str, str],
                      quick: bool) -> dict:
    a = r.args
    out: dict = {}
    for name in datasets:
        out[name] = {}
        paths = ["sparse", "dense"] if (name != "ml-1m" or a.full) else ["sparse"]
        paths += [p for p in ("dense",) if f"{name}:{p}" in reuse and p not in paths]
        for path in paths:
            key = f"{name}:{path}"
            if key in reuse:
                out[name][path] = _summarise_protocol([load_reused(reuse[key], name, path, a.seed, a.device)])
                continue
            if name not in available:
                continue
            reps = 1 if quick else (a.protocol_reps_ml1m if name == "ml-1m" else a.protocol_reps)
            overrides = {"epoch_p": 1, "epoch_f": 1} if quick else {}
            runs = [r.run(f"protocol {name} {path} ({i + 1}/{reps})",
                          r.spec("train", dataset=name, path=path, overrides=overrides)) for i in range(reps)]
            out[name][path] = _summarise_protocol(runs)
        if quick:
            out[name]["note"] = "smoke check: 1 + 1 epochs, not the paper protocol"
    return out


def section_scaling(r: Runner, nnz_list: list[int], shape: tuple[int, int]) -> dict:
    a = r.args
    points = []
    for nnz in nnz_list:
        synth = {"n_items": shape[0], "n_users": shape[1], "n_ratings": int(round(nnz / 0.9)),
                 "test_frac": 0.1, "seed": 0}
        reps = a.reps if nnz <= 1_000_000 else max(3, a.reps // 2)
        res = r.run(f"scaling nnz={nnz:,}", r.spec(
            "passes", synthetic=synth, preset="ml-1m", path="sparse", stages=[1, 2], reps=reps, warmup=1))
        points.append({"target_nnz": nnz, **res})
    return {"shape": list(shape), "hyperparameters": "ml-1m preset (n_hid 500, n_dim 5, 2 layers, 3x3)",
            "points": points, "fit": fit_slopes(points)}


def fit_slopes(points: list[dict]) -> dict:
    """Least-squares slope of log(time) on log(nnz) per stage, over all points and the top decade."""
    import numpy as np

    out = {}
    for stage in ("1", "2"):
        pts = [(p["nnz"], p["stages"][stage]["median_s"]) for p in points if "error" not in p]
        fits = {}
        for label, sel in (("all", pts), ("top_decade", [q for q in pts if q[0] >= max(x for x, _ in pts) / 10.5]
                                           if pts else [])):
            if len(sel) >= 2:
                x, y = np.log([q[0] for q in sel]), np.log([q[1] for q in sel])
                slope, icpt = np.polyfit(x, y, 1)
                fits[label] = {"slope": float(slope), "intercept": float(icpt), "n_points": len(sel),
                               "nnz_range": [int(min(q[0] for q in sel)), int(max(q[0] for q in sel))]}
        out[stage] = fits
    return out


def parameter_count(n_items: int, n_users: int, n_hid: int = 500, n_dim: int = 5, n_layers: int = 2,
                    gk_size: int = 3) -> int:
    """Trainable scalars of GLocal-K in stage 2: each kernel layer's W, b, u, v, plus C."""
    sizes = [n_users] + [n_hid] * n_layers + [n_users]
    layers = sum(i * o + o + (i + o) * n_dim for i, o in zip(sizes[:-1], sizes[1:], strict=True))
    return layers + n_items * gk_size**2


def optimiser_memory_gb(n: int, history: int = 10) -> dict:
    """What the optimisers hold besides the model, GB: SciPy's L-BFGS-B (float64 workspace
    ``wa`` of (2m + 5) n + 11 m^2 + 8 m, ``iwa`` 3 n int32, plus x and g in float64) and
    torch.optim.LBFGS (2 m float32 history vectors plus about 4 more of n: flat gradient, direction,
    previous gradient, the step's copy)."""
    scipy_b = (2 * history + 5) * n * 8 + 3 * n * 4 + 2 * n * 8
    torch_b = (2 * history + 4) * n * 4
    return {"n_params": n, "scipy_lbfgsb_gb": scipy_b / 2**30, "torch_lbfgs_gb": torch_b / 2**30}


def section_epoch10m(r: Runner, shape: tuple[int, int], n_ratings: int, optimizers: list[str]) -> dict:
    synth = {"n_items": shape[0], "n_users": shape[1], "n_ratings": n_ratings, "test_frac": 0.1, "seed": 0}
    overrides = {"epoch_p": 1, "epoch_f": 1, "iter_p": 5, "iter_f": 5}
    runs = {}
    for opt in optimizers:
        spec = r.spec("train", synthetic=synth, preset="ml-1m", path="sparse", overrides=overrides)
        spec["optimizer"] = opt
        runs[opt] = r.run(f"one-epoch training, {n_ratings:,} ratings at {shape[0]:,} x {shape[1]:,}, "
                          f"optimizer {opt}", spec)
    return {"synthetic": synth, "overrides": overrides, "runs": runs,
            "analytic": optimiser_memory_gb(parameter_count(*shape))}


def machine_description(device: str) -> dict:
    """CPU model, cores, RAM, load, library versions and threads, GPU if any."""
    import numpy as np
    import scipy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = int(line.split()[1]) / 2**20
    except OSError:
        pass
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gb": props.total_memory / 2**30, "count": torch.cuda.device_count(),
               "cuda": torch.version.cuda}
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "ram_gb": ram_gb, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "torch_threads": torch.get_num_threads(),
            "mkl": bool(torch.backends.mkl.is_available()), "gpu": gpu, "device": device,
            "loadavg_start": list(os.getloadavg())}


# =============================================================================== derived figures

def _shape_name(shape) -> str:
    """'ML-10M's' or 'ML-1M's' for the shapes this benchmark uses, else the numbers."""
    names = {tuple(ML10M_SHAPE): "ML-10M's", tuple(QUICK_SHAPE): "ML-1M's"}
    return names.get(tuple(shape), f"{shape[0]:,} x {shape[1]:,}")


def derive(res: dict) -> dict:
    """Ratios, the ML-1M dense extrapolation and the target checks, from one device's results."""
    d: dict = {}
    passes = res.get("passes", {})
    for name, by_path in passes.items():
        dense, sparse = by_path.get("dense", {}), by_path.get("sparse", {})
        for stage in ("1", "2"):
            try:
                td, ts = dense["stages"][stage]["median_s"], sparse["stages"][stage]["median_s"]
                ld, ls = dense["stages"][stage]["loss"], sparse["stages"][stage]["loss"]
            except KeyError:
                continue
            d.setdefault("pass_ratio", {}).setdefault(name, {})[stage] = td / ts
            d.setdefault("loss_rel_diff", {}).setdefault(name, {})[stage] = abs(ld - ls) / max(abs(ld), 1e-30)
            gd, gs = dense["stages"][stage]["grad_norm"], sparse["stages"][stage]["grad_norm"]
            d.setdefault("grad_norm_rel_diff", {}).setdefault(name, {})[stage] = abs(gd - gs) / max(abs(gd), 1e-30)
    prot = res.get("protocols", {})
    for name, by_path in prot.items():
        dense, sparse = by_path.get("dense", {}), by_path.get("sparse", {})
        if dense.get("train_s") and sparse.get("train_s"):
            d.setdefault("protocol_ratio", {})[name] = dense["train_s"] / sparse["train_s"]
        if dense.get("best") and sparse.get("best"):
            d.setdefault("rmse_gap", {})[name] = {
                "best": abs(dense["best"]["rmse"] - sparse["best"]["rmse"]),
                "final": abs(dense["final"]["rmse"] - sparse["final"]["rmse"])}
    # ML-1M dense protocol, extrapolated unless measured: the sparse run's evaluation counts times
    # the dense per-pass times, plus the sparse run's optimiser overhead, evaluation and setup.
    sp1m, ps1m = prot.get("ml-1m", {}).get("sparse", {}), passes.get("ml-1m", {})
    if "dense" not in prot.get("ml-1m", {}) and sp1m.get("nfev") and "error" not in ps1m.get("dense", {"error": 1}):
        try:
            td = {k: ps1m["dense"]["stages"][k]["median_s"] for k in ("1", "2")}
            ts = {k: ps1m["sparse"]["stages"][k]["median_s"] for k in ("1", "2")}
            nfev = sp1m["nfev"]
            overhead = max(0.0, sum(sp1m["opt_s"][k] - nfev[k] * ts[k] for k in ("1", "2")))
            est = sum(nfev[k] * td[k] for k in ("1", "2")) + overhead + sp1m["eval_s"]
            d["ml1m_dense_extrapolated"] = {
                "train_s": est, "ratio": est / sp1m["train_s"], "nfev": nfev, "dense_pass_s": td,
                "sparse_pass_s": ts, "optimiser_overhead_s": overhead, "eval_s": sp1m["eval_s"]}
        except KeyError:
            pass
    d["targets"] = check_targets(res, d)
    return d


def check_targets(res: dict, d: dict) -> list[dict]:
    """The issue's targets: measured value, limit, met or not, and by how much."""
    out = []
    prot = res.get("protocols", {})
    quick = res.get("quick", False)

    def add(name: str, value: float | None, limit: float, unit: str, lower_is_better: bool = True,
            note: str = "") -> None:
        note = note.strip().removeprefix(";").strip()
        if value is None:
            out.append({"target": name, "value": None, "limit": limit, "unit": unit, "met": None, "note": note})
            return
        met = value <= limit if lower_is_better else value >= limit
        by = (value - limit) if lower_is_better else (limit - value)
        if quick:  # the quick run's sizes and schedules are not the targets' ones
            out.append({"target": name, "value": value, "limit": limit, "unit": unit, "met": None, "note": note})
            return
        out.append({"target": name, "value": value, "limit": limit, "unit": unit, "met": bool(met),
                    "missed_by": None if met else by, "note": note})

    sp1m = prot.get("ml-1m", {}).get("sparse", {})
    t1m = sp1m.get("process_s") or sp1m.get("total_s")
    add("ML-1M paper protocol, sparse path (the auto path)", t1m, TARGETS["ml1m_protocol_s"], "s",
        note=("" if not sp1m else "whole process (imports, loading, training, evaluation)" if sp1m.get("process_s")
              else "setup + training + evaluation of the reused run")
        + (f"; {sp1m['source']}" if sp1m.get("source", "measured") != "measured" else "")
        + ("; quick: not the paper protocol" if quick else ""))
    gap = d.get("rmse_gap", {}).get("ml-1m")
    add("ML-1M RMSE gap, abs(dense - sparse) (paper protocol, best epoch)", gap["best"] if gap else None,
        TARGETS["rmse_gap"], "",
        note="" if gap else "dense ML-1M protocol not run (use --full or --reuse ml-1m:dense=RUN); "
                            "the per-pass loss of the two paths is compared in the passes table")
    sp100 = prot.get("ml-100k", {}).get("sparse", {})
    t100 = sp100.get("process_s") or sp100.get("total_s")
    add("ML-100K protocol speed-up over the original TF code (171 s)", TF_ML100K_SECONDS / t100 if t100 else None,
        TARGETS["ml100k_speedup"], "x", lower_is_better=False,
        note="whole process (imports, loading, training, evaluation), sparse = the auto path"
        + ("; quick: not the paper protocol" if quick else ""))
    fit = res.get("scaling", {}).get("fit", {})
    for stage in ("1", "2"):
        f = fit.get(stage, {}).get("all")
        top = fit.get(stage, {}).get("top_decade")
        add(f"time per pass vs nnz, stage {stage}: log-log slope", f["slope"] if f else None, TARGETS["slope"], "",
            note=f"top-decade slope {top['slope']:.2f}" if top else "")
    e = res.get("epoch10m", {})
    for opt, run in e.get("runs", {}).items():
        label = "SciPy L-BFGS-B, as the paper" if opt == "scipy" else "torch.optim.LBFGS"
        peak = run.get("cuda_peak_mb") or run.get("peak_rss_mb")
        note = ("GPU memory (max allocated)" if run.get("cuda_peak_mb") else "peak RSS of the training process")
        if "error" in run:
            peak = None
            note = f"failed: {run['error']}; the watchdog saw {run['watched_peak_rss_mb'] / 1024:.1f} GB"
        add(f"one epoch at ML-10M size (10M ratings), {label}: peak memory", peak / 1024 if peak else None,
            TARGETS["epoch10m_gb"], "GB", note=note + ("; quick: 100k ratings at ML-1M's shape" if quick else ""))
    return out


# =============================================================================== report

def _f(x: float | None, fmt: str = "{:.3f}", none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ms(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1e3:.1f}" if x < 10 else f"{x * 1e3:,.0f}")


def _mem(rec: dict, stage: str | None = None) -> str:
    src = rec["stages"][stage] if stage else rec
    if src.get("cuda_peak_mb"):
        return f"{src['cuda_peak_mb']:,.0f} (GPU)"
    return _f(src.get("peak_rss_mb"), "{:,.0f}")


def plot_scaling(scaling: dict, png: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pts = [p for p in scaling["points"] if "error" not in p]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    nnz = np.array([p["nnz"] for p in pts], dtype=float)
    for stage, marker in (("1", "o"), ("2", "s")):
        t = np.array([p["stages"][stage]["median_s"] for p in pts])
        f = scaling["fit"].get(stage, {}).get("all")
        label = f"stage {stage}" + (f" (slope {f['slope']:.2f})" if f else "")
        ax.loglog(nnz, t, marker=marker, label=label)
        if f:
            ax.loglog(nnz, np.exp(f["intercept"]) * nnz ** f["slope"], ":", color=ax.lines[-1].get_color(), lw=1)
    t_top = max(p["stages"]["2"]["median_s"] for p in pts)
    ax.loglog(nnz, t_top * nnz / nnz.max(), "k--", lw=0.8, label="slope 1 (linear)")
    ax.set_xlabel("training ratings (nnz)")
    ax.set_ylabel("seconds per loss + gradient")
    ax.set_title(f"Sparse path, {scaling['shape'][0]:,} x {scaling['shape'][1]:,} "
                 f"({_shape_name(scaling['shape'])} shape), {device}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def render_device(key: str, res: dict, png_name: str) -> list[str]:
    m, d = res["machine"], res["derived"]
    L: list[str] = []
    gpu = m.get("gpu")
    L.append(f"## {'GPU' if key == 'cuda' else 'CPU'} run ({res['device']})")
    L.append("")
    if res.get("quick"):
        L += ["> **Quick smoke run** (`--quick`): tiny repetition counts, short protocols (1 + 1 epochs), "
              "small synthetic sizes at ML-1M's shape. These figures only show that the benchmark runs; they are "
              "NOT the performance figures.", ""]
    L.append(f"Command: `{res['command']}`  ")
    L.append(f"Started {res['started']}, took {res['elapsed_s'] / 60:.1f} min.")
    older = {s: t for s, t in res.get("measured_at", {}).items() if t != res["started"]}
    if older:
        L.append("Sections kept from an earlier run: " + ", ".join(f"{s} ({t})" for s, t in older.items()) + ".")
    la0 = m.get("loadavg_start") or [0.0]
    if la0[0] > 0.5:
        L += ["", f"> **The machine was busy** (load average {la0[0]:.1f} on {m['logical_cores']} cores at the "
              "start): other processes competed for the cores, so these times are inflated, multi-threaded ones "
              "most (threads wait for each other); each measurement's load is in perf_results.json."]
    L.append("")
    L.append("| machine | |")
    L.append("|---|---|")
    L.append(f"| CPU | {m['cpu']}, {m['logical_cores']} logical cores |")
    L.append(f"| RAM | {_f(m['ram_gb'], '{:.1f}')} GB |")
    if gpu:
        L.append(f"| GPU | {gpu['name']} ({gpu['memory_gb']:.0f} GB), CUDA {gpu['cuda']} |")
    else:
        L.append("| GPU | none at hand |")
    L.append(f"| software | {m['os']}; Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads, "
             f"MKL {'yes' if m['mkl'] else 'no'}), numpy {m['numpy']}, scipy {m['scipy']} |")
    la0, la1 = m.get("loadavg_start"), res.get("loadavg_end")
    L.append(f"| load average (1/5/15 min) | at start {', '.join(f'{x:.1f}' for x in la0)}; at end "
             f"{', '.join(f'{x:.1f}' for x in la1) if la1 else '-'} |")
    L.append("")

    # -- targets
    L += ["### Targets", "", "| target | measured | limit | met | note |", "|---|---|---|---|---|"]
    for t in d.get("targets", []):
        unit = t["unit"]
        val = "not measured" if t["value"] is None else f"{t['value']:.4g} {unit}".strip()
        met = ("n/a (quick)" if res.get("quick") else "-") if t["met"] is None else (
            "yes" if t["met"] else f"**no** (by {t['missed_by']:.3g} {unit})".strip())
        L.append(f"| {t['target']} | {val} | {t['limit']:g} {unit} | {met} | {t['note']} |".replace("  ", " "))
    L.append("")

    # -- passes
    passes = res.get("passes")
    if passes:
        L += ["### Time per loss + gradient (paper hyperparameters)", "",
              f"Median of {res['args']['reps']} after {res['args']['warmup']} warm-up; milliseconds. "
              "Memory: peak RSS of the measuring process in MB (stage 1 is measured first, so the stage-2 "
              "figure is the peak of both; it includes ~0.3-0.5 GB of Python and torch), or on CUDA the "
              "peak allocated GPU memory. 'loss / gradient rel. diff': |dense - sparse| / dense of the loss and of "
              "the gradient's norm at the same initial weights (float32: ~1e-7 is agreement).", "",
              "| dataset | stage | dense ms | sparse ms | dense / sparse | dense memory | sparse memory | "
              "loss / gradient rel. diff | sparse setup s |",
              "|---|---|---|---|---|---|---|---|---|"]
        for name, by_path in passes.items():
            dn, spr = by_path.get("dense", {}), by_path.get("sparse", {})
            for stage in ("1", "2"):
                if "error" in dn or "error" in spr:
                    L.append(f"| {name} | {stage} | {dn.get('error', '')} | {spr.get('error', '')} | | | | | |")
                    break
                a, b = dn["stages"][stage], spr["stages"][stage]
                L.append(f"| {name} | {stage} | {_ms(a['median_s'])} | {_ms(b['median_s'])} | "
                         f"{_f(d['pass_ratio'][name][stage], '{:.2f}')} | {_mem(dn, stage)} | {_mem(spr, stage)} | "
                         f"{_f(d['loss_rel_diff'][name][stage], '{:.1e}')} / "
                         f"{_f(d['grad_norm_rel_diff'][name][stage], '{:.1e}')} | {_f(spr['prepare_s'], '{:.2f}')} |")
        sp_info = [f"{n}: {p['sparse']['conv_nnz']:,} entries, {'dense' if p['sparse']['conv_dense'] else 'sparse'}"
                   for n, p in passes.items() if "conv_nnz" in p.get("sparse", {})]
        if sp_info:
            L += ["", "Stage-2 input R_hat (the 3x3 dilation of R's pattern) on the sparse path: " + "; ".join(sp_info)
                  + ". Above 10% density it enters the first layer as a dense GEMM (`prepare_input`)."]
        L.append("")

    # -- protocols
    prot = res.get("protocols")
    if prot:
        L += ["### Whole paper protocol", "",
              "Seed " + str(res["args"]["seed"]) + "; all L-BFGS epochs and the evaluation after each. 'process': "
              "the whole subprocess (interpreter, imports, loading, setup, training, evaluation), 'train': "
              "epochs + evaluation only. Times are medians over the repetitions; RMSE of the first "
              "(repetitions agree to the 'spread').", "",
              "| dataset | path | reps | process s | train s | nfev (stage 1 / 2) | best RMSE (epoch) | final RMSE "
              "| spread | peak memory MB | source |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, by_path in prot.items():
            for path in ("dense", "sparse"):
                p = by_path.get(path)
                if p is None:
                    continue
                if "error" in p:
                    L.append(f"| {name} | {path} | failed: {p['error']} | | | | | | | | |")
                    continue
                best, final = p.get("best") or {}, p.get("final") or {}
                mem = (f"{p['cuda_peak_mb']:,.0f} (GPU)" if p.get("cuda_peak_mb")
                       else _f(p.get("peak_rss_mb"), "{:,.0f}"))
                L.append(f"| {name} | {path} | {p['reps']} | {_f(p.get('process_s'), '{:.1f}')} | "
                         f"{_f(p['train_s'], '{:.1f}')} | {p['nfev']['1']} / {p['nfev']['2']} | "
                         f"{_f(best.get('rmse'), '{:.4f}')} ({best.get('epoch', '-')}) | "
                         f"{_f(final.get('rmse'), '{:.4f}')} | {_f(p.get('rmse_spread'), '{:.1e}')} | {mem} | "
                         f"{p.get('source', 'measured')} |")
            if by_path.get("note"):
                L.append(f"| {name} | | | | | | | | | | {by_path['note']} |")
        L.append("")
        rows = []
        for name in prot:
            ratio = d.get("protocol_ratio", {}).get(name)
            gap = d.get("rmse_gap", {}).get(name)
            if ratio or gap:
                rows.append(f"| {name} | {_f(ratio, '{:.2f}')} | {_f(gap and gap['best'], '{:.1e}')} | "
                            f"{_f(gap and gap['final'], '{:.1e}')} | measured |")
        ext = d.get("ml1m_dense_extrapolated")
        if ext:
            rows.append(f"| ml-1m | {ext['ratio']:.2f} (dense {ext['train_s'] / 60:.0f} min) | - | - | "
                        "**extrapolated**: sparse run's nfev x dense per-pass time + the sparse run's optimiser "
                        f"overhead ({ext['optimiser_overhead_s']:.0f} s) and evaluation ({ext['eval_s']:.0f} s) |")
        if rows:
            L += ["| dataset | protocol time dense / sparse | abs RMSE gap, best | abs RMSE gap, final | how |",
                  "|---|---|---|---|---|", *rows, ""]

    # -- scaling
    sc = res.get("scaling")
    if sc:
        L += ["### Time per pass versus nnz (synthetic, sparse path)", "",
              f"`glocalk.data.synthetic.make_ratings` at a fixed {sc['shape'][0]:,} x {sc['shape'][1]:,} shape "
              f"({_shape_name(sc['shape'])}), power-law popularity and activity, rank-10 ratings; "
              f"{sc['hyperparameters']}. The shape is fixed so only nnz varies; the parts that do not depend "
              "on nnz (the n_items x n_hid x n_hid GEMMs, the local kernels of the n_users x n_hid first and "
              "last layers) are a constant floor, which is why the slope over all points is below the "
              "top-decade slope.", "",
              f"![time per pass versus nnz]({png_name})", "",
              "| nnz (train) | R_hat entries | stage 1 s | stage 2 s | setup s | peak memory MB |",
              "|---|---|---|---|---|---|"]
        for p in sc["points"]:
            if "error" in p:
                L.append(f"| {p['target_nnz']:,} | failed: {p['error']} | | | | |")
                continue
            L.append(f"| {p['nnz']:,} | {p.get('conv_nnz', 0):,} | {p['stages']['1']['median_s']:.3f} | "
                     f"{p['stages']['2']['median_s']:.3f} | {p['prepare_s']:.1f} | {_mem(p, '2')} |")
        L.append("")
        for stage in ("1", "2"):
            f = sc["fit"].get(stage, {})
            if f.get("all"):
                top = f.get("top_decade")
                L.append(f"- stage {stage}: slope {f['all']['slope']:.3f} over {f['all']['n_points']} points "
                         f"({f['all']['nnz_range'][0]:,}-{f['all']['nnz_range'][1]:,})"
                         + (f"; {top['slope']:.3f} over the top decade ({top['n_points']} points)" if top else ""))
        L.append("")

    # -- epoch at ML-10M size
    e = res.get("epoch10m")
    if e:
        an = e["analytic"]
        syn = e["synthetic"]
        L += ["### One training epoch at ML-10M size" + ("" if syn["n_ratings"] >= 10**7 else
                                                         f" (here: {syn['n_ratings']:,} ratings only)"), "",
              f"{syn['n_ratings']:,} synthetic ratings (90% train) at {syn['n_items']:,} x {syn['n_users']:,}, "
              f"sparse path, ML-1M hyperparameters; one stage-1 epoch (iter_p {e['overrides']['iter_p']}) and one "
              f"stage-2 epoch (iter_f {e['overrides']['iter_f']}), each followed by the evaluation. The model has "
              f"{an['n_params']:,} parameters (the two n_users x n_hid weight matrices dominate), so the "
              f"optimiser's own state is large: SciPy's L-BFGS-B keeps a float64 workspace of (2m + 5) n "
              f"numbers, {an['scipy_lbfgsb_gb']:.1f} GB here, torch's LBFGS about {an['torch_lbfgs_gb']:.1f} GB "
              "of float32 history.", "",
              "| optimiser | peak memory | stage-1 evaluations, s | stage-2 evaluations, s | evaluation s | "
              "generation + setup s | test RMSE |", "|---|---|---|---|---|---|---|"]
        for opt, run in e["runs"].items():
            if "error" in run:
                L.append(f"| {opt} | failed: {run['error']} (watchdog saw "
                         f"{run['watched_peak_rss_mb'] / 1024:.1f} GB) | | | | | |")
                continue
            mem = (f"{run['cuda_peak_mb'] / 1024:.2f} GB GPU, {run['peak_rss_mb'] / 1024:.2f} GB RSS"
                   if run.get("cuda_peak_mb") else f"{run['peak_rss_mb'] / 1024:.2f} GB RSS")
            L.append(f"| {opt} | **{mem}** | {run['nfev']['1']}, {run['opt_s']['1']:.0f} | {run['nfev']['2']}, "
                     f"{run['opt_s']['2']:.0f} | {run['eval_s']:.0f} | {run['load_s'] + run['setup_s']:.0f} | "
                     f"{_f((run.get('final') or {}).get('rmse'), '{:.4f}')} |")
        L.append("")
    return L


def render(all_results: dict, notes: str, out: Path) -> str:
    L = ["# Performance", "",
         "Written by `benchmarks/run.py` (see `benchmarks/README.md`); raw figures in "
         "[perf_results.json](perf_results.json). Every configuration runs in its own process; times are "
         "medians, memory is the peak of that process.", ""]
    for key in ("cpu", "cuda"):
        res = all_results.get(key)
        if res is None:
            if key == "cuda":
                L += ["## GPU run", "", "No GPU was at hand for the runs recorded here; the same benchmark runs "
                      "on one with `python benchmarks/run.py --device cuda --data-dir DIR`.", ""]
            continue
        L += render_device(key, res, png_name(key))
    L += ["## Notes", "", NOTES_BEGIN, notes.strip("\n"), NOTES_END, ""]
    return "\n".join(L)


def png_name(key: str) -> str:
    return "perf_scaling.png" if key == "cpu" else f"perf_scaling_{key}.png"


def read_notes(out: Path) -> str:
    """The hand-written notes of an existing report (kept across runs)."""
    if out.exists():
        text = out.read_text()
        if NOTES_BEGIN in text and NOTES_END in text:
            return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return "\n(Analysis of the figures, and where a target is missed why, goes here; it is kept across runs.)\n"


# =============================================================================== main

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return 0
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
    if args.quick:
        args.reps, args.warmup = min(args.reps, 2), min(args.warmup, 1)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    out = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "glocalk-perf-quick" / "PERFORMANCE.md" if args.quick
        else REPO / "docs" / "PERFORMANCE.md")
    json_path = out.parent / "perf_results.json"
    key = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.render_only:
        if not json_path.exists():
            raise SystemExit(f"--render-only: {json_path} does not exist")
        all_results = json.loads(json_path.read_text())
        for k, res in all_results.items():
            res["derived"] = derive(res)
            if res.get("scaling"):
                plot_scaling(res["scaling"], out.parent / png_name(k), res["device"])
        json_path.write_text(json.dumps(all_results, indent=1, default=str) + "\n")
        out.write_text(render(all_results, read_notes(out), out))
        print(f"wrote {out}", file=sys.stderr)
        return 0

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    cmd = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res: dict = {"device": args.device, "command": cmd.strip(), "started": started, "quick": args.quick,
                 "args": {k: v for k, v in vars(args).items() if k != "worker"},
                 "machine": machine_description(args.device)}
    runner = Runner(args)
    available = []
    if {"passes", "protocols"} & set(sections):
        from glocalk.data.datasets import find_dataset_dir
        from glocalk.errors import DataError

        for name in datasets:
            try:
                find_dataset_dir(name, args.data_dir)
                available.append(name)
            except DataError:
                res.setdefault("missing_datasets", []).append(name)
                print(f"warning: {name} not found (--data-dir {args.data_dir}); its measurements are skipped",
                      file=sys.stderr)
    nnz_list = ([int(float(x)) for x in args.scaling_nnz.split(",")] if args.scaling_nnz
                else list(QUICK_SCALING_NNZ if args.quick else SCALING_NNZ))
    shape = QUICK_SHAPE if args.quick else ML10M_SHAPE
    la = os.getloadavg()[0]
    if la > 0.5:
        print(f"warning: load average {la:.1f} at start: the machine is busy and the times will be inflated "
              "(threads compete; see the report's load figures)", file=sys.stderr)
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
    for s in sections:
        res.setdefault("measured_at", {})[s] = started
    res["elapsed_s"] = time.perf_counter() - t0
    res["loadavg_end"] = list(os.getloadavg())

    all_results = json.loads(json_path.read_text()) if json_path.exists() else {}
    previous = all_results.get(key)
    if previous and previous.get("quick") == args.quick:  # keep the sections not re-run
        for s in SECTIONS:
            if s not in sections and s in previous:
                res[s] = previous[s]
                res.setdefault("measured_at", {})[s] = previous.get("measured_at", {}).get(s, previous["started"])
    res["derived"] = derive(res)
    all_results[key] = res
    out.parent.mkdir(parents=True, exist_ok=True)
    if res.get("scaling"):
        plot_scaling(res["scaling"], out.parent / png_name(key), args.device)
    json_path.write_text(json.dumps(all_results, indent=1, default=str) + "\n")
    out.write_text(render(all_results, read_notes(out), out))
    print(f"wrote {out}, {json_path}" + (f", {out.parent / png_name(key)}" if res.get("scaling") else ""),
          file=sys.stderr)
    for t in res["derived"]["targets"]:
        state = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"  {state:>6}  {t['target']}: {_f(t['value'], '{:.4g}')} (limit {t['limit']:g})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
