"""Reports: Markdown tables of ``glocalk train`` runs (summary.json) and of ``glocalk benchmark`` runs
(results.json), the benchmark's plots, and THE mean ± std format."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from glocalk.errors import ConfigError, DataError
from glocalk.presets import GLOCALK_VARIANTS, LABELS, PAPER_CAPTION, PAPER_RESULTS

PROTOCOL_LABELS = {
    "best": "paper protocol (best epoch on test)",
    "final": "final epoch",
    "val_selected": "validation-selected epoch",
    "ensemble": "ensemble of the seeds",
}
EPOCH_KEYS = ("epoch", "stage", "loss", "train_rmse", "seconds")


def mean_std(mean: float, std: float | None, digits: int = 4) -> str:
    """``mean ± std`` with ``digits`` decimals; the mean alone when there is no spread to show (``std`` None)."""
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def load_summary(path: str | Path) -> dict:
    """A run's summary.json, given the file or its folder; DataError if it is missing or not a summary."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise DataError(f"no summary.json at {path}")
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a glocalk summary: not valid JSON ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("seeds", []), list):
        raise DataError(f"{path} is not a glocalk summary: expected a JSON object with the run's 'seeds'")
    return summary


def _cell(summary: dict, protocol: str, key: str) -> str:
    entry = summary.get(protocol)
    if not entry or key not in entry:
        return "-"
    std = summary.get("std", {}).get(protocol, {}).get(key)
    n = len(summary.get("seeds", [])) if protocol != "ensemble" else 1
    return mean_std(entry[key], std if n > 1 else None)


def paper_row(dataset: str) -> str:
    """The published numbers of ``dataset`` as a results-table row."""
    p = PAPER_RESULTS[dataset]
    return (f"| {dataset} | {PAPER_CAPTION} | best epoch on test | - | {p['rmse']:.4f} | {p['mae']:.4f} | "
            f"{p['ndcg']:.4f} | - | - |")


def results_table(summaries: list[dict], protocols: tuple[str, ...] = ("best", "final", "val_selected", "ensemble"),
                  with_paper: bool = True) -> str:
    """One Markdown row per (run, protocol present in it), plus the paper's row per dataset."""
    lines = ["| dataset | run | protocol | seeds | RMSE | MAE | NDCG | training time / seed | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    seen = []
    for s in summaries:
        dataset = s.get("dataset", "?")
        if with_paper and dataset in PAPER_RESULTS and dataset not in seen:
            lines.append(paper_row(dataset))
            seen.append(dataset)
        hp = s.get("hyperparameters", {})
        label = "gk_norm=" + hp.get("gk_norm", "paper")
        if s.get("val_frac"):
            label += f", val_frac={s['val_frac']}"
        runs = s.get("runs", [])
        # train_time_s sums the logged epochs, so it stays right for runs continued with --resume.
        per_seed = sum(r.get("train_time_s", r["wall_time_s"]) for r in runs) / max(len(runs), 1)
        command = "`" + " ".join(shlex.quote(c) for c in s.get("command", [])) + "`"
        for protocol in protocols:
            if not s.get(protocol):
                continue
            lines.append(f"| {dataset} | {label} | {PROTOCOL_LABELS[protocol]} | {len(s.get('seeds', []))} | "
                         f"{_cell(s, protocol, 'rmse')} | {_cell(s, protocol, 'mae')} | {_cell(s, protocol, 'ndcg')} | "
                         f"{per_seed:.0f} s | {command} |")
    return "\n".join(lines) + "\n"


def read_epochs(epochs_jsonl: str | Path) -> list[dict]:
    """The records of one seed's ``epochs.jsonl``; DataError naming the file (and line) if it is not one."""
    path = Path(epochs_jsonl)
    if not path.is_file():
        raise DataError(f"no epoch log at {path}" + (" (a folder: give its epochs.jsonl)" if path.is_dir() else ""))
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}, line {number}: not a JSON record of an epoch") from None
        missing = [k for k in EPOCH_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"{path}, line {number}: not an epoch record (missing {', '.join(missing)})")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no epochs")
    return rows


def epoch_table(epochs_jsonl: str | Path, every: int = 1) -> str:
    """Per-epoch test RMSE of one seed's log, as a compact Markdown table (every ``every``-th epoch and the last)."""
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"every (--every) must be a positive whole number of epochs, got {every!r}")
    rows = read_epochs(epochs_jsonl)
    lines = ["| epoch | stage | loss | train RMSE | test RMSE | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["epoch"] % every and r is not rows[-1]:
            continue
        lines.append(f"| {r['epoch']} | {r['stage']} | {r['loss']:.0f} | {r['train_rmse']:.4f} | "
                     f"{r.get('test_rmse', float('nan')):.4f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


# -- the benchmark's table and plots --------------------------------------------------


def _pm(entry: dict, key: str, digits: int = 4) -> str:
    if key not in entry["mean"]:
        return "–"
    mean, std = entry["mean"][key], entry["std"][key]
    if not np.isfinite(mean):
        return "–"
    if entry["n_seeds"] == 1 and key == "epoch":
        return f"{mean:.0f}"
    return mean_std(mean, std if entry["n_seeds"] > 1 else None, digits)


def markdown_table(results: dict) -> str:
    """The benchmark's Markdown report: one row per model, ensembles and the paper's numbers."""
    seeds = results["seeds"]
    lines = [
        f"## {results['dataset']}: {len(results['models'])} models, {len(seeds)} seed(s) {seeds}",
        "",
        f"Test metrics at the epoch with the lowest validation RMSE (validation: {results['val_frac']:g} "
        "of the training ratings, drawn per seed and shared by all models), mean ± std over seeds."
        + (" **Quick smoke run: few epochs, small network; the numbers mean nothing.**"
           if results.get("quick") else ""),
        "",
        "| model | RMSE | MAE | NDCG | RMSE, paper protocol † | selected epoch | wall time (s) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in results["models"]:
        entry = results["summary"].get(model)
        if entry is None:
            continue
        lines.append(f"| {LABELS[model]} | {_pm(entry, 'rmse')} | {_pm(entry, 'mae')} | {_pm(entry, 'ndcg')} | "
                     f"{_pm(entry, 'best_rmse')} | {_pm(entry, 'epoch', 1)} | {_pm(entry, 'wall_time_s', 1)} | "
                     f"{', '.join(str(s) for s in entry['seeds'])} |")
    for model, ens in (results.get("ensembles") or {}).items():
        wall = sum(r["wall_time_s"] for r in results["runs"]
                   if r["model"] == model and r["seed"] in ens.get("seeds", results["seeds"]))
        lines.append(f"| {LABELS[model]}, ensemble of {ens['n_models']} seeds | {ens['rmse']:.4f} | "
                     f"{ens['mae']:.4f} | {ens['ndcg']:.4f} | – | – | {wall:.1f} | "
                     f"{', '.join(str(s) for s in ens.get('seeds', []))} |")
    paper = results.get("paper")
    if paper:
        lines.append(f"| *{PAPER_CAPTION}* | {paper['rmse']:.4f} | "
                     f"{paper['mae']:.4f} | {paper['ndcg']:.4f} | {paper['rmse']:.4f} | – | – | – |")
    lines += ["", "† The paper's protocol: the best test RMSE over the fine-tuning epochs (over the pre-training "
              "epochs for models without fine-tuning), GLocal-K family only. It chooses the epoch on the test set, "
              "so it is optimistic and not an honest estimate; it is what the paper reports."]
    lines += ["", f"Hyperparameters of the GLocal-K family: `{json.dumps(results['params'], sort_keys=True)}`; "
              f"ablations: `{json.dumps(results['variants'])}`. Device: {results['device_description']}. "
              f"Total wall time {results['wall_time_s']:.0f} s.", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: dict, path: str | Path) -> None:
    """Train / validation / test RMSE per epoch, one panel per model, the first seed's runs."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    seed = results["seeds"][0]
    runs = [r for m in results["models"] for r in results["runs"] if r["model"] == m and r["seed"] == seed]
    if not runs:
        return
    ncols = min(4, len(runs))
    nrows = -(-len(runs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), squeeze=False)
    for ax, run in zip(axes.flat, runs, strict=False):
        hist = run["history"]
        epochs = [r["epoch"] for r in hist]
        style = {"marker": "o", "markersize": 3} if len(hist) < 3 else {}
        for key, label in (("train_rmse", "train"), ("val_rmse", "validation"), ("test_rmse", "test")):
            if all(key in r for r in hist):
                ax.plot(epochs, [r[key] for r in hist], label=label, **style)
        sel = run.get("val_selected") or {}
        if "epoch" in sel:
            ax.axvline(sel["epoch"], color="grey", linestyle=":", linewidth=1, label="selected (val)")
        boundary = [r["epoch"] for r in hist if r.get("stage") == 2]
        if boundary:
            ax.axvline(boundary[0] - 0.5, color="black", linestyle="--", linewidth=0.8, label="fine-tuning starts")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(epochs) == 1:
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.set_title(LABELS[run["model"]], fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("RMSE")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.suptitle(f"{results['dataset']}: RMSE per epoch (seed {seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(results: dict, path: str | Path) -> None:
    """Validation-selected test RMSE per model (mean, std error bars), ensembles, the paper's figure."""
    plt = _pyplot()
    names, means, stds, colors = [], [], [], []
    for model in results["models"]:
        entry = results["summary"].get(model)
        if entry and "rmse" in entry["mean"]:
            names.append(LABELS[model])
            means.append(entry["mean"]["rmse"])
            stds.append(entry["std"]["rmse"])
            colors.append("tab:blue" if model in GLOCALK_VARIANTS else "tab:grey")
    for model, ens in (results.get("ensembles") or {}).items():
        names.append(f"{LABELS[model]}, ensemble")
        means.append(ens["rmse"])
        stds.append(0.0)
        colors.append("tab:green")
    if not names:
        return
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.5))
    x = np.arange(len(names))
    ax.bar(x, means, yerr=stds, capsize=4, color=colors)
    for xi, m in zip(x, means, strict=True):
        ax.text(xi, m, f"{m:.4f}", ha="center", va="bottom", fontsize=7)
    paper = results.get("paper")
    values = list(means) + ([paper["rmse"]] if paper else [])
    if paper:
        ax.axhline(paper["rmse"], color="tab:red", linestyle="--", linewidth=1, label="paper (best test epoch)")
        ax.legend(fontsize=8)
    lo, hi = min(values), max(m + s for m, s in zip(means, stds, strict=True))
    pad = 0.1 * (hi - lo) + 0.01
    ax.set_ylim(max(0.0, lo - 3 * pad), hi + pad)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test RMSE (validation-selected epoch)")
    ax.set_title(f"{results['dataset']}: mean ± std over seeds {results['seeds']}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
