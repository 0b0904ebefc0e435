"""The four sections as plans of worker runs, and what each makes of its workers' results.

``passes`` and ``scaling`` time loss + gradient; ``protocols`` runs (or reuses) whole paper
protocols; ``epoch10m`` trains one epoch per stage at ML-10M size.
"""

from __future__ import annotations

import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from glocalk.presets import preset

from .common import epoch_totals
from .runner import Runner


def median(values: list[float | None]) -> float | None:
    """Median of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def section_passes(r: Runner, datasets: list[str]) -> dict:
    """Dense and sparse loss + gradient timings of both stages on each dataset."""
    a = r.args
    out: dict = {}
    for name in datasets:
        out[name] = {}
        for path in ("dense", "sparse"):
            out[name][path] = r.run(f"passes {name} {path}", r.spec(
                "passes", dataset=name, path=path, stages=[1, 2], reps=a.reps, warmup=a.warmup))
    return out


def summarise_protocol(runs: list[dict]) -> dict:
    """Medians of the times over the repetitions of one protocol, the first run's RMSE and their spread."""
    ok = [x for x in runs if "error" not in x]
    if not ok:
        return {"error": runs[0]["error"] if runs else "not run", "runs": runs}
    first = ok[0]
    rmse = [x["best"]["rmse"] for x in ok if x.get("best")]
    return {
        "reps": len(ok), "process_s": median([x.get("process_s") for x in ok]),
        "total_s": median([x["total_s"] for x in ok]), "train_s": median([x["train_s"] for x in ok]),
        "best": first["best"], "final": first["final"], "nfev": first["nfev"],
        "opt_s": {k: median([x["opt_s"][k] for x in ok]) for k in ("1", "2")},
        "eval_s": median([x["eval_s"] for x in ok]), "setup_s": median([x["setup_s"] for x in ok]),
        "peak_rss_mb": max(x["peak_rss_mb"] for x in ok),
        "cuda_peak_mb": max((x.get("cuda_peak_mb") or 0.0) for x in ok) or None,
        "rmse_spread": (max(rmse) - min(rmse)) if rmse else None,
        "source": first.get("source", "measured"), "runs": runs,
    }


def reused_summary(path: str, dataset: str, device: str) -> tuple[Path, dict]:
    """(summary.json path, its content) of a ``glocalk train`` run, checked to be the paper protocol."""
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
    return summary_file, s


def load_reused(path: str, dataset: str, run_path: str, seed: int, device: str) -> dict:
    """A protocol record from a ``glocalk train`` run (its summary.json and epoch log)."""
    summary_file, s = reused_summary(path, dataset, device)
    hp = s["hyperparameters"]
    runs = [x for x in s.get("runs", []) if x.get("path") == run_path]
    if not runs:
        raise SystemExit(f"--reuse: {summary_file} holds no complete run on the {run_path} path")
    same_seed = [x for x in runs if x.get("seed") == seed]
    chosen = (same_seed or runs)[0]
    hist = [json.loads(ln) for ln in (summary_file.parent / chosen["epoch_log"]).read_text().splitlines() if ln]
    n_epochs = hp["epoch_p"] + hp["epoch_f"]
    if len(hist) < n_epochs:
        raise SystemExit(f"--reuse: {summary_file}: the run is incomplete ({len(hist)} of {n_epochs} epochs)")
    when = datetime.fromtimestamp(summary_file.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {
        "path": run_path, "train_s": chosen["train_time_s"], "total_s": chosen["wall_time_s"], "process_s": None,
        "setup_s": chosen["wall_time_s"] - chosen["train_time_s"], "epochs": len(hist), **epoch_totals(hist),
        "best": chosen["best"], "final": chosen["final"], "peak_rss_mb": None, "seed": chosen.get("seed"),
        "source": f"reused: {summary_file} (seed {chosen.get('seed')}, written {when}, device {s.get('device')})",
    }


def protocol_paths(r: Runner, name: str, reuse: dict[str, str]) -> list[str]:
    """The paths whose protocol a dataset gets: dense ML-1M only with --full or a reused run."""
    paths = ["sparse", "dense"] if (name != "ml-1m" or r.args.full) else ["sparse"]
    return paths + [p for p in ("dense",) if f"{name}:{p}" in reuse and p not in paths]


def run_protocol(r: Runner, name: str, path: str, quick: bool) -> dict:
    """Repetitions of one dataset's protocol on one path, summarised."""
    a = r.args
    reps = 1 if quick else (a.protocol_reps_ml1m if name == "ml-1m" else a.protocol_reps)
    overrides = {"epoch_p": 1, "epoch_f": 1} if quick else {}
    runs = [r.run(f"protocol {name} {path} ({i + 1}/{reps})",
                  r.spec("train", dataset=name, path=path, overrides=overrides)) for i in range(reps)]
    return summarise_protocol(runs)


def section_protocols(r: Runner, datasets: list[str], available: list[str], reuse: dict[str, str],
                      quick: bool) -> dict:
    """Whole paper protocols (run, or reused from ``--reuse``) per dataset and path."""
    a = r.args
    out: dict = {}
    for name in datasets:
        out[name] = {}
        for path in protocol_paths(r, name, reuse):
            key = f"{name}:{path}"
            if key in reuse:
                out[name][path] = summarise_protocol([load_reused(reuse[key], name, path, a.seed, a.device)])
            elif name in available:
                out[name][path] = run_protocol(r, name, path, quick)
        if quick:
            out[name]["note"] = "smoke check: 1 + 1 epochs, not the paper protocol"
    return out


def section_scaling(r: Runner, nnz_list: list[int], shape: tuple[int, int]) -> dict:
    """Sparse-path pass times on synthetic data of a fixed shape and growing nnz, with log-log slopes."""
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


def fit_line(sel: list[tuple[int, float]]) -> dict:
    """Least-squares line of log(time) on log(nnz) through (nnz, time) points."""
    x, y = np.log([q[0] for q in sel]), np.log([q[1] for q in sel])
    slope, icpt = np.polyfit(x, y, 1)
    return {"slope": float(slope), "intercept": float(icpt), "n_points": len(sel),
            "nnz_range": [int(min(q[0] for q in sel)), int(max(q[0] for q in sel))]}


def fit_slopes(points: list[dict]) -> dict:
    """Least-squares slope of log(time) on log(nnz) per stage, over all points and the top decade."""
    out = {}
    for stage in ("1", "2"):
        pts = [(p["nnz"], p["stages"][stage]["median_s"]) for p in points if "error" not in p]
        top = [q for q in pts if q[0] >= max(x for x, _ in pts) / 10.5] if pts else []
        out[stage] = {label: fit_line(sel) for label, sel in (("all", pts), ("top_decade", top)) if len(sel) >= 2}
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
    """One stage-1 and one stage-2 epoch on ``n_ratings`` synthetic ratings, once per optimiser."""
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
