"""Markdown tables from the ``summary.json`` files that ``glocalk train`` writes, and THE mean ± std format."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from glocalk.errors import ConfigError, DataError
from glocalk.presets import PAPER_CAPTION, PAPER_RESULTS

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
