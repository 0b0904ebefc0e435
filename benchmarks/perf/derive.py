"""Figures derived from one device's results: ratios, the ML-1M dense extrapolation, target checks."""

from __future__ import annotations

from .common import TARGETS, TF_ML100K_SECONDS


def pass_figures(passes: dict) -> dict:
    """Dense / sparse time ratio and the relative loss and gradient-norm differences per dataset and stage."""
    d: dict = {}
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
    return d


def protocol_figures(prot: dict) -> dict:
    """Dense / sparse protocol time ratio and the RMSE gap (best and final epoch) per dataset."""
    d: dict = {}
    for name, by_path in prot.items():
        dense, sparse = by_path.get("dense", {}), by_path.get("sparse", {})
        if dense.get("train_s") and sparse.get("train_s"):
            d.setdefault("protocol_ratio", {})[name] = dense["train_s"] / sparse["train_s"]
        if dense.get("best") and sparse.get("best"):
            d.setdefault("rmse_gap", {})[name] = {
                "best": abs(dense["best"]["rmse"] - sparse["best"]["rmse"]),
                "final": abs(dense["final"]["rmse"] - sparse["final"]["rmse"])}
    return d


def ml1m_dense_extrapolated(passes: dict, prot: dict) -> dict | None:
    """The dense ML-1M protocol's time when it was not run: the sparse run's evaluation counts times
    the dense per-pass times, plus the sparse run's optimiser overhead, evaluation and setup."""
    sp1m, ps1m = prot.get("ml-1m", {}).get("sparse", {}), passes.get("ml-1m", {})
    if "dense" in prot.get("ml-1m", {}) or not sp1m.get("nfev") or "error" in ps1m.get("dense", {"error": 1}):
        return None
    try:
        td = {k: ps1m["dense"]["stages"][k]["median_s"] for k in ("1", "2")}
        ts = {k: ps1m["sparse"]["stages"][k]["median_s"] for k in ("1", "2")}
        nfev = sp1m["nfev"]
        overhead = max(0.0, sum(sp1m["opt_s"][k] - nfev[k] * ts[k] for k in ("1", "2")))
        est = sum(nfev[k] * td[k] for k in ("1", "2")) + overhead + sp1m["eval_s"]
    except KeyError:
        return None
    return {"train_s": est, "ratio": est / sp1m["train_s"], "nfev": nfev, "dense_pass_s": td,
            "sparse_pass_s": ts, "optimiser_overhead_s": overhead, "eval_s": sp1m["eval_s"]}


def derive(res: dict) -> dict:
    """Ratios, the ML-1M dense extrapolation and the target checks, from one device's results."""
    passes, prot = res.get("passes", {}), res.get("protocols", {})
    d = {**pass_figures(passes), **protocol_figures(prot)}
    ext = ml1m_dense_extrapolated(passes, prot)
    if ext is not None:
        d["ml1m_dense_extrapolated"] = ext
    d["targets"] = check_targets(res, d)
    return d


def target_row(name: str, value: float | None, limit: float, unit: str, quick: bool,
               lower_is_better: bool = True, note: str = "") -> dict:
    """One target: measured value, limit, met or not (None when unmeasured or quick), and by how much."""
    note = note.strip().removeprefix(";").strip()
    if value is None or quick:  # the quick run's sizes and schedules are not the targets' ones
        return {"target": name, "value": value, "limit": limit, "unit": unit, "met": None, "note": note}
    met = value <= limit if lower_is_better else value >= limit
    by = (value - limit) if lower_is_better else (limit - value)
    return {"target": name, "value": value, "limit": limit, "unit": unit, "met": bool(met),
            "missed_by": None if met else by, "note": note}


def protocol_targets(res: dict, d: dict, quick: bool) -> list[dict]:
    """The ML-1M protocol time, the ML-1M RMSE gap and the ML-100K speed-up over the TF code."""
    prot = res.get("protocols", {})
    q_note = "; quick: not the paper protocol" if quick else ""
    sp1m = prot.get("ml-1m", {}).get("sparse", {})
    t1m = sp1m.get("process_s") or sp1m.get("total_s")
    note = ("" if not sp1m else "whole process (imports, loading, training, evaluation)" if sp1m.get("process_s")
            else "setup + training + evaluation of the reused run")
    note += f"; {sp1m['source']}" if sp1m.get("source", "measured") != "measured" else ""
    rows = [target_row("ML-1M paper protocol, sparse path (the auto path)", t1m, TARGETS["ml1m_protocol_s"], "s",
                       quick, note=note + q_note)]
    gap = d.get("rmse_gap", {}).get("ml-1m")
    rows.append(target_row(
        "ML-1M RMSE gap, abs(dense - sparse) (paper protocol, best epoch)", gap["best"] if gap else None,
        TARGETS["rmse_gap"], "", quick,
        note="" if gap else "dense ML-1M protocol not run (use --full or --reuse ml-1m:dense=RUN); "
                            "the per-pass loss of the two paths is compared in the passes table"))
    sp100 = prot.get("ml-100k", {}).get("sparse", {})
    t100 = sp100.get("process_s") or sp100.get("total_s")
    rows.append(target_row(
        "ML-100K protocol speed-up over the original TF code (171 s)", TF_ML100K_SECONDS / t100 if t100 else None,
        TARGETS["ml100k_speedup"], "x", quick, lower_is_better=False,
        note="whole process (imports, loading, training, evaluation), sparse = the auto path" + q_note))
    return rows


def scaling_targets(res: dict, quick: bool) -> list[dict]:
    """The log-log slope of time per pass against nnz, per stage."""
    fit = res.get("scaling", {}).get("fit", {})
    rows = []
    for stage in ("1", "2"):
        f = fit.get(stage, {}).get("all")
        top = fit.get(stage, {}).get("top_decade")
        rows.append(target_row(f"time per pass vs nnz, stage {stage}: log-log slope", f["slope"] if f else None,
                               TARGETS["slope"], "", quick, note=f"top-decade slope {top['slope']:.2f}" if top else ""))
    return rows


def epoch10m_targets(res: dict, quick: bool) -> list[dict]:
    """The peak memory of one epoch at ML-10M size, per optimiser."""
    rows = []
    for opt, run in res.get("epoch10m", {}).get("runs", {}).items():
        label = "SciPy L-BFGS-B, as the paper" if opt == "scipy" else "torch.optim.LBFGS"
        peak = run.get("cuda_peak_mb") or run.get("peak_rss_mb")
        note = ("GPU memory (max allocated)" if run.get("cuda_peak_mb") else "peak RSS of the training process")
        if "error" in run:
            peak = None
            note = f"failed: {run['error']}; the watchdog saw {run['watched_peak_rss_mb'] / 1024:.1f} GB"
        note += "; quick: 100k ratings at ML-1M's shape" if quick else ""
        rows.append(target_row(f"one epoch at ML-10M size (10M ratings), {label}: peak memory",
                               peak / 1024 if peak else None, TARGETS["epoch10m_gb"], "GB", quick, note=note))
    return rows


def check_targets(res: dict, d: dict) -> list[dict]:
    """The issue's targets: measured value, limit, met or not, and by how much."""
    quick = res.get("quick", False)
    return protocol_targets(res, d, quick) + scaling_targets(res, quick) + epoch10m_targets(res, quick)
