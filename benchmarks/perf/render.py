"""docs/PERFORMANCE.md and the scaling plot, from the results alone (``--render-only`` measures nothing)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .common import ML10M_SHAPE, NOTES_BEGIN, NOTES_END, QUICK_SHAPE

DEFAULT_NOTES = "\n(Analysis of the figures, and where a target is missed why, goes here; it is kept across runs.)\n"


def fmt(x: float | None, spec: str = "{:.3f}", none: str = "-") -> str:
    """``x`` formatted with ``spec``, or ``none`` for a missing value or NaN."""
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else spec.format(x)


def ms(x: float | None) -> str:
    """Seconds as milliseconds: one decimal under 10 s, thousands separators above."""
    return "-" if x is None else (f"{x * 1e3:.1f}" if x < 10 else f"{x * 1e3:,.0f}")


def mem(rec: dict, stage: str | None = None) -> str:
    """Peak memory of a record (or of one of its stages), MB; GPU memory when measured on CUDA."""
    src = rec["stages"][stage] if stage else rec
    if src.get("cuda_peak_mb"):
        return f"{src['cuda_peak_mb']:,.0f} (GPU)"
    return fmt(src.get("peak_rss_mb"), "{:,.0f}")


def shape_name(shape) -> str:
    """'ML-10M's' or 'ML-1M's' for the shapes this benchmark uses, else the numbers."""
    names = {tuple(ML10M_SHAPE): "ML-10M's", tuple(QUICK_SHAPE): "ML-1M's"}
    return names.get(tuple(shape), f"{shape[0]:,} x {shape[1]:,}")


def png_name(key: str) -> str:
    """File name of a device kind's scaling plot."""
    return "perf_scaling.png" if key == "cpu" else f"perf_scaling_{key}.png"


def read_notes(out: Path) -> str:
    """The hand-written notes of an existing report (kept across runs)."""
    if out.exists():
        text = out.read_text()
        if NOTES_BEGIN in text and NOTES_END in text:
            return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return DEFAULT_NOTES


def plot_scaling(scaling: dict, png: Path, device: str) -> None:
    """Log-log plot of time per pass against nnz, both stages, their fits and a slope-1 guide."""
    import matplotlib  # optional: only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                 f"({shape_name(scaling['shape'])} shape), {device}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def render_header(key: str, res: dict) -> list[str]:
    """Title, quick-run warning, command, dates and a busy-machine warning of one device's run."""
    m = res["machine"]
    L = [f"## {'GPU' if key == 'cuda' else 'CPU'} run ({res['device']})", ""]
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
    return L


def render_machine(res: dict) -> list[str]:
    """The machine table: CPU, RAM, GPU, software, load."""
    m = res["machine"]
    gpu = m.get("gpu")
    gpu_row = (f"| GPU | {gpu['name']} ({gpu['memory_gb']:.0f} GB), CUDA {gpu['cuda']} |" if gpu
               else "| GPU | none at hand |")
    L = ["| machine | |", "|---|---|",
         f"| CPU | {m['cpu']}, {m['logical_cores']} logical cores |",
         f"| RAM | {fmt(m['ram_gb'], '{:.1f}')} GB |",
         gpu_row,
         f"| software | {m['os']}; Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads, "
         f"MKL {'yes' if m['mkl'] else 'no'}), numpy {m['numpy']}, scipy {m['scipy']} |"]
    la0, la1 = m.get("loadavg_start"), res.get("loadavg_end")
    L.append(f"| load average (1/5/15 min) | at start {', '.join(f'{x:.1f}' for x in la0)}; at end "
             f"{', '.join(f'{x:.1f}' for x in la1) if la1 else '-'} |")
    L.append("")
    return L


def render_targets(res: dict) -> list[str]:
    """The targets table: measured value, limit, met."""
    L = ["### Targets", "", "| target | measured | limit | met | note |", "|---|---|---|---|---|"]
    for t in res["derived"].get("targets", []):
        unit = t["unit"]
        val = "not measured" if t["value"] is None else f"{t['value']:.4g} {unit}".strip()
        met = ("n/a (quick)" if res.get("quick") else "-") if t["met"] is None else (
            "yes" if t["met"] else f"**no** (by {t['missed_by']:.3g} {unit})".strip())
        L.append(f"| {t['target']} | {val} | {t['limit']:g} {unit} | {met} | {t['note']} |".replace("  ", " "))
    L.append("")
    return L


def passes_rows(passes: dict, d: dict) -> list[str]:
    """One row per dataset and stage of the passes table (one row for a failed dataset)."""
    L = []
    for name, by_path in passes.items():
        dn, spr = by_path.get("dense", {}), by_path.get("sparse", {})
        for stage in ("1", "2"):
            if "error" in dn or "error" in spr:
                L.append(f"| {name} | {stage} | {dn.get('error', '')} | {spr.get('error', '')} | | | | | |")
                break
            a, b = dn["stages"][stage], spr["stages"][stage]
            L.append(f"| {name} | {stage} | {ms(a['median_s'])} | {ms(b['median_s'])} | "
                     f"{fmt(d['pass_ratio'][name][stage], '{:.2f}')} | {mem(dn, stage)} | {mem(spr, stage)} | "
                     f"{fmt(d['loss_rel_diff'][name][stage], '{:.1e}')} / "
                     f"{fmt(d['grad_norm_rel_diff'][name][stage], '{:.1e}')} | {fmt(spr['prepare_s'], '{:.2f}')} |")
    return L


def render_passes(res: dict) -> list[str]:
    """Time per loss + gradient, dense against sparse, with memory and the two paths' agreement."""
    passes = res.get("passes")
    if not passes:
        return []
    L = ["### Time per loss + gradient (paper hyperparameters)", "",
         f"Median of {res['args']['reps']} after {res['args']['warmup']} warm-up; milliseconds. "
         "Memory: peak RSS of the measuring process in MB (stage 1 is measured first, so the stage-2 "
         "figure is the peak of both; it includes ~0.3-0.5 GB of Python and torch), or on CUDA the "
         "peak allocated GPU memory. 'loss / gradient rel. diff': |dense - sparse| / dense of the loss and of "
         "the gradient's norm at the same initial weights (float32: ~1e-7 is agreement).", "",
         "| dataset | stage | dense ms | sparse ms | dense / sparse | dense memory | sparse memory | "
         "loss / gradient rel. diff | sparse setup s |",
         "|---|---|---|---|---|---|---|---|---|", *passes_rows(passes, res["derived"])]
    sp_info = [f"{n}: {p['sparse']['conv_nnz']:,} entries, {'dense' if p['sparse']['conv_dense'] else 'sparse'}"
               for n, p in passes.items() if "conv_nnz" in p.get("sparse", {})]
    if sp_info:
        L += ["", "Stage-2 input R_hat (the 3x3 dilation of R's pattern) on the sparse path: " + "; ".join(sp_info)
              + ". Above 10% density it enters the first layer as a dense GEMM (`prepare_input`)."]
    L.append("")
    return L


def protocol_row(name: str, path: str, p: dict) -> str:
    """One row of the protocol table."""
    if "error" in p:
        return f"| {name} | {path} | failed: {p['error']} | | | | | | | | |"
    best, final = p.get("best") or {}, p.get("final") or {}
    memory = f"{p['cuda_peak_mb']:,.0f} (GPU)" if p.get("cuda_peak_mb") else fmt(p.get("peak_rss_mb"), "{:,.0f}")
    return (f"| {name} | {path} | {p['reps']} | {fmt(p.get('process_s'), '{:.1f}')} | "
            f"{fmt(p['train_s'], '{:.1f}')} | {p['nfev']['1']} / {p['nfev']['2']} | "
            f"{fmt(best.get('rmse'), '{:.4f}')} ({best.get('epoch', '-')}) | "
            f"{fmt(final.get('rmse'), '{:.4f}')} | {fmt(p.get('rmse_spread'), '{:.1e}')} | {memory} | "
            f"{p.get('source', 'measured')} |")


def comparison_rows(prot: dict, d: dict) -> list[str]:
    """Dense / sparse protocol time and RMSE gap, measured or (ML-1M) extrapolated."""
    rows = []
    for name in prot:
        ratio = d.get("protocol_ratio", {}).get(name)
        gap = d.get("rmse_gap", {}).get(name)
        if ratio or gap:
            rows.append(f"| {name} | {fmt(ratio, '{:.2f}')} | {fmt(gap and gap['best'], '{:.1e}')} | "
                        f"{fmt(gap and gap['final'], '{:.1e}')} | measured |")
    ext = d.get("ml1m_dense_extrapolated")
    if ext:
        rows.append(f"| ml-1m | {ext['ratio']:.2f} (dense {ext['train_s'] / 60:.0f} min) | - | - | "
                    "**extrapolated**: sparse run's nfev x dense per-pass time + the sparse run's optimiser "
                    f"overhead ({ext['optimiser_overhead_s']:.0f} s) and evaluation ({ext['eval_s']:.0f} s) |")
    if not rows:
        return []
    return ["| dataset | protocol time dense / sparse | abs RMSE gap, best | abs RMSE gap, final | how |",
            "|---|---|---|---|---|", *rows, ""]


def render_protocols(res: dict) -> list[str]:
    """The whole-protocol table and the dense / sparse comparison."""
    prot = res.get("protocols")
    if not prot:
        return []
    L = ["### Whole paper protocol", "",
         "Seed " + str(res["args"]["seed"]) + "; all L-BFGS epochs and the evaluation after each. 'process': "
         "the whole subprocess (interpreter, imports, loading, setup, training, evaluation), 'train': "
         "epochs + evaluation only. Times are medians over the repetitions; RMSE of the first "
         "(repetitions agree to the 'spread').", "",
         "| dataset | path | reps | process s | train s | nfev (stage 1 / 2) | best RMSE (epoch) | final RMSE "
         "| spread | peak memory MB | source |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, by_path in prot.items():
        L += [protocol_row(name, path, by_path[path]) for path in ("dense", "sparse") if by_path.get(path) is not None]
        if by_path.get("note"):
            L.append(f"| {name} | | | | | | | | | | {by_path['note']} |")
    L.append("")
    return L + comparison_rows(prot, res["derived"])


def slope_lines(fit: dict) -> list[str]:
    """One line per stage: the log-log slope over all points and over the top decade."""
    L = []
    for stage in ("1", "2"):
        f = fit.get(stage, {})
        if f.get("all"):
            top = f.get("top_decade")
            L.append(f"- stage {stage}: slope {f['all']['slope']:.3f} over {f['all']['n_points']} points "
                     f"({f['all']['nnz_range'][0]:,}-{f['all']['nnz_range'][1]:,})"
                     + (f"; {top['slope']:.3f} over the top decade ({top['n_points']} points)" if top else ""))
    return L


def render_scaling(res: dict, png: str) -> list[str]:
    """Time per pass against nnz: the plot, one row per point, the slopes."""
    sc = res.get("scaling")
    if not sc:
        return []
    L = ["### Time per pass versus nnz (synthetic, sparse path)", "",
         f"`glocalk.data.synthetic.make_ratings` at a fixed {sc['shape'][0]:,} x {sc['shape'][1]:,} shape "
         f"({shape_name(sc['shape'])}), power-law popularity and activity, rank-10 ratings; "
         f"{sc['hyperparameters']}. The shape is fixed so only nnz varies; the parts that do not depend "
         "on nnz (the n_items x n_hid x n_hid GEMMs, the local kernels of the n_users x n_hid first and "
         "last layers) are a constant floor, which is why the slope over all points is below the "
         "top-decade slope.", "",
         f"![time per pass versus nnz]({png})", "",
         "| nnz (train) | R_hat entries | stage 1 s | stage 2 s | setup s | peak memory MB |",
         "|---|---|---|---|---|---|"]
    for p in sc["points"]:
        if "error" in p:
            L.append(f"| {p['target_nnz']:,} | failed: {p['error']} | | | | |")
            continue
        L.append(f"| {p['nnz']:,} | {p.get('conv_nnz', 0):,} | {p['stages']['1']['median_s']:.3f} | "
                 f"{p['stages']['2']['median_s']:.3f} | {p['prepare_s']:.1f} | {mem(p, '2')} |")
    return [*L, "", *slope_lines(sc["fit"]), ""]


def epoch10m_row(opt: str, run: dict) -> str:
    """One row of the ML-10M-size epoch table."""
    if "error" in run:
        return (f"| {opt} | failed: {run['error']} (watchdog saw "
                f"{run['watched_peak_rss_mb'] / 1024:.1f} GB) | | | | | |")
    memory = (f"{run['cuda_peak_mb'] / 1024:.2f} GB GPU, {run['peak_rss_mb'] / 1024:.2f} GB RSS"
              if run.get("cuda_peak_mb") else f"{run['peak_rss_mb'] / 1024:.2f} GB RSS")
    return (f"| {opt} | **{memory}** | {run['nfev']['1']}, {run['opt_s']['1']:.0f} | {run['nfev']['2']}, "
            f"{run['opt_s']['2']:.0f} | {run['eval_s']:.0f} | {run['load_s'] + run['setup_s']:.0f} | "
            f"{fmt((run.get('final') or {}).get('rmse'), '{:.4f}')} |")


def render_epoch10m(res: dict) -> list[str]:
    """One training epoch per stage at ML-10M size: peak memory and times per optimiser."""
    e = res.get("epoch10m")
    if not e:
        return []
    an, syn = e["analytic"], e["synthetic"]
    title = "### One training epoch at ML-10M size" + (
        "" if syn["n_ratings"] >= 10**7 else f" (here: {syn['n_ratings']:,} ratings only)")
    return [title, "",
            f"{syn['n_ratings']:,} synthetic ratings (90% train) at {syn['n_items']:,} x {syn['n_users']:,}, "
            f"sparse path, ML-1M hyperparameters; one stage-1 epoch (iter_p {e['overrides']['iter_p']}) and one "
            f"stage-2 epoch (iter_f {e['overrides']['iter_f']}), each followed by the evaluation. The model has "
            f"{an['n_params']:,} parameters (the two n_users x n_hid weight matrices dominate), so the "
            f"optimiser's own state is large: SciPy's L-BFGS-B keeps a float64 workspace of (2m + 5) n "
            f"numbers, {an['scipy_lbfgsb_gb']:.1f} GB here, torch's LBFGS about {an['torch_lbfgs_gb']:.1f} GB "
            "of float32 history.", "",
            "| optimiser | peak memory | stage-1 evaluations, s | stage-2 evaluations, s | evaluation s | "
            "generation + setup s | test RMSE |", "|---|---|---|---|---|---|---|",
            *(epoch10m_row(opt, run) for opt, run in e["runs"].items()), ""]


def render_device(key: str, res: dict, png: str) -> list[str]:
    """The report's section for one device kind ("cpu" or "cuda")."""
    return (render_header(key, res) + render_machine(res) + render_targets(res) + render_passes(res)
            + render_protocols(res) + render_scaling(res, png) + render_epoch10m(res))


def render(all_results: dict, notes: str) -> str:
    """The whole report: each device kind's section (a note where there is no GPU run) and the notes."""
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
