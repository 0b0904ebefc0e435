"""Markdown tables from the ``summary.json`` files that ``glocalk train`` writes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

# The paper's Table 3 (best fine-tuning epoch chosen on the test set).
PAPER = {
    "ml-100k": {"rmse": 0.8889, "mae": 0.6950, "ndcg": 0.9053},
    "ml-1m": {"rmse": 0.8227, "mae": 0.6421, "ndcg": 0.9288},
    "douban": {"rmse": 0.7208, "mae": 0.5622, "ndcg": 0.9435},
}

PROTOCOL_LABELS = {
    "best": "paper protocol (best epoch on test)",
    "final": "final epoch",
    "val_selected": "validation-selected epoch",
    "ensemble": "ensemble of the seeds",
}


def load_summary(path: str | Path) -> dict:
    """A run's summary.json, given the file or its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json at {path}")
    return json.loads(path.read_text())


def _cell(summary: dict, protocol: str, key: str) -> str:
    entry = summary.get(protocol)
    if not entry or key not in entry:
        return "-"
    std = summary.get("std", {}).get(protocol, {}).get(key)
    n = len(summary.get("seeds", [])) if protocol != "ensemble" else 1
    return f"{entry[key]:.4f} ± {std:.4f}" if std is not None and n > 1 else f"{entry[key]:.4f}"


def results_table(summaries: list[dict], protocols: tuple[str, ...] = ("best", "final", "val_selected", "ensemble"),
                  with_paper: bool = True) -> str:
    """One Markdown row per (run, protocol present in it), plus the paper's row per dataset."""
    lines = ["| dataset | run | protocol | seeds | RMSE | MAE | NDCG | training time / seed | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    seen = []
    for s in summaries:
        dataset = s.get("dataset", "?")
        if with_paper and dataset in PAPER and dataset not in seen:
            p = PAPER[dataset]
            lines.append(f"| {dataset} | paper (Han et al. 2021) | best epoch on test | - | {p['rmse']:.4f} | "
                         f"{p['mae']:.4f} | {p['ndcg']:.4f} | - | - |")
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


def epoch_table(epochs_jsonl: str | Path, every: int = 1) -> str:
    """Per-epoch test RMSE of one seed's log, as a compact Markdown table."""
    rows = [json.loads(line) for line in Path(epochs_jsonl).read_text().splitlines() if line.strip()]
    lines = ["| epoch | stage | loss | train RMSE | test RMSE | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["epoch"] % every and r is not rows[-1]:
            continue
        lines.append(f"| {r['epoch']} | {r['stage']} | {r['loss']:.0f} | {r['train_rmse']:.4f} | "
                     f"{r.get('test_rmse', float('nan')):.4f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"
