"""Markdown tables from glocalk train's summary.json files."""

from __future__ import annotations

import json

import pytest

from glocalk.compare.report import epoch_table, load_summary, results_table

SUMMARY = {
    "dataset": "ml-100k", "seeds": [1, 2], "hyperparameters": {"gk_norm": "paper"}, "val_frac": 0.05,
    "command": ["glocalk", "train", "--dataset", "ml-100k", "--out", "my runs"],
    "best": {"rmse": 0.89, "mae": 0.70, "ndcg": 0.905},
    "val_selected": {"rmse": 0.893, "mae": 0.701, "ndcg": 0.904},
    "std": {"best": {"rmse": 0.001, "mae": 0.002, "ndcg": 0.0005}, "val_selected": {"rmse": 0.0014}},
    "ensemble": {"rmse": 0.8883, "mae": 0.695, "ndcg": 0.906, "n_models": 2},
    "runs": [{"train_time_s": 100.0, "wall_time_s": 130.0}, {"train_time_s": 120.0, "wall_time_s": 125.0}],
}


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()[2:]]


def test_results_table_rows():
    rows = _rows(results_table([SUMMARY]))
    assert rows[0][:7] == ["ml-100k", "paper (Han et al. 2021)", "best epoch on test", "-", "0.8889", "0.6950",
                           "0.9053"]
    best = next(r for r in rows if r[2] == "paper protocol (best epoch on test)")
    assert best[3:7] == ["2", "0.8900 ± 0.0010", "0.7000 ± 0.0020", "0.9050 ± 0.0005"]
    assert best[7] == "110 s"  # mean of the logged training times, not the wall times
    assert best[8] == "`glocalk train --dataset ml-100k --out 'my runs'`"  # shell-quoted, copy-pasteable
    val = next(r for r in rows if r[2] == "validation-selected epoch")
    assert val[4] == "0.8930 ± 0.0014" and val[5] == "0.7010"  # no std recorded for MAE: plain mean
    ens = next(r for r in rows if r[2] == "ensemble of the seeds")
    assert ens[4] == "0.8883"  # one figure, no ± for an ensemble
    assert not any(r[2] == "final epoch" for r in rows)  # absent protocols have no row
    assert all(r[1].startswith("gk_norm=paper, val_frac=0.05") for r in rows[1:])


def test_paper_row_once_per_dataset_and_optional():
    rows = _rows(results_table([SUMMARY, SUMMARY]))
    assert sum(r[1] == "paper (Han et al. 2021)" for r in rows) == 1
    assert not any(r[1] == "paper (Han et al. 2021)" for r in _rows(results_table([SUMMARY], with_paper=False)))


def test_load_summary_from_folder_or_file(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    assert load_summary(tmp_path) == load_summary(tmp_path / "summary.json") == SUMMARY
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        load_summary(tmp_path / "missing")


def test_epoch_table_every_nth_and_the_last(tmp_path):
    log = tmp_path / "epochs.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "stage": 1 if e <= 3 else 2, "loss": 1000.0 - e,
                                       "train_rmse": 1.0, "test_rmse": 0.9 + e / 1000, "seconds": 1.0}) + "\n"
                           for e in range(1, 8)))
    rows = _rows(epoch_table(log, every=3))
    assert [r[0] for r in rows] == ["3", "6", "7"]
    assert rows[1][1:5] == ["2", "994", "1.0000", "0.9060"]
