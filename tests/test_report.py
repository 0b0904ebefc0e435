"""Markdown tables from glocalk train's summary.json files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from glocalk.compare.report import epoch_table, load_summary, markdown_table, mean_std, results_table
from glocalk.errors import ConfigError, DataError
from glocalk.presets import PAPER_CAPTION, PAPER_RESULTS

REPO_ROOT = Path(__file__).resolve().parents[1]
# SPEC.md sits beside the shared data folder (../shared/SPEC.md next to ../shared/data in CI).
SPEC = Path(os.environ.get("GLOCALK_DATA") or REPO_ROOT.parent / "shared" / "data").parent / "SPEC.md"

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
    # The paper's ML-100K figures, typed from SPEC.md "Reported results" (RMSE 0.8889, MAE 0.6950, NDCG 0.9053).
    assert rows[0][:7] == ["ml-100k", PAPER_CAPTION, "best epoch on test", "-", "0.8889", "0.6950", "0.9053"]
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
    assert sum(r[1] == PAPER_CAPTION for r in rows) == 1
    assert not any(r[1] == PAPER_CAPTION for r in _rows(results_table([SUMMARY], with_paper=False)))


def _spec_results() -> dict[str, dict[str, float]]:
    """SPEC.md's "Reported results" table: {dataset: {rmse, mae, ndcg}}, the first number of each cell."""
    text = SPEC.read_text()
    section = text[text.index("## Reported results"):]
    out = {}
    for line in section.splitlines()[3:]:
        if not line.startswith("|"):
            break
        name, *cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[name.lower()] = {k: float(re.match(r"[0-9.]+", c).group()) for k, c in zip(("rmse", "mae", "ndcg"), cells,
                                                                                        strict=True)}
    return out


@pytest.mark.skipif(not SPEC.is_file(), reason=f"SPEC.md not found at {SPEC}")
def test_paper_results_are_the_spec_table():
    assert PAPER_RESULTS == _spec_results()


def test_mean_std_format():
    assert mean_std(0.88886, 0.00104) == "0.8889 ± 0.0010"
    assert mean_std(12.34, 0.56, digits=1) == "12.3 ± 0.6"
    assert mean_std(0.5, None) == "0.5000"


def test_load_summary_from_folder_or_file(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    assert load_summary(tmp_path) == load_summary(tmp_path / "summary.json") == SUMMARY
    with pytest.raises(DataError, match="no summary.json"):
        load_summary(tmp_path / "missing")


@pytest.mark.parametrize("text", ["{not json", "\xff\xfe", "[1, 2]", '{"seeds": 3}'])
def test_load_summary_rejects_what_is_not_a_summary(tmp_path, text):
    path = tmp_path / "summary.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError, match=f"{re.escape(str(path))} is not a glocalk summary"):
        load_summary(path)


def test_epoch_table_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="no epoch log at .*missing.jsonl"):
        epoch_table(tmp_path / "missing.jsonl")
    log = tmp_path / "epochs.jsonl"
    log.write_text(json.dumps({"epoch": 1, "stage": 1, "loss": 1.0, "train_rmse": 1.0, "seconds": 1.0})
                   + "\n{oops\n")
    with pytest.raises(DataError, match="epochs.jsonl, line 2: not a JSON record"):
        epoch_table(log)
    log.write_text(json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(DataError, match="line 1: not an epoch record .*stage"):
        epoch_table(log)
    for every in (0, -2):
        with pytest.raises(ConfigError, match="--every"):
            epoch_table(log, every=every)


def test_epoch_table_every_nth_and_the_last(tmp_path):
    log = tmp_path / "epochs.jsonl"
    log.write_text("".join(json.dumps({"epoch": e, "stage": 1 if e <= 3 else 2, "loss": 1000.0 - e,
                                       "train_rmse": 1.0, "test_rmse": 0.9 + e / 1000, "seconds": 1.0}) + "\n"
                           for e in range(1, 8)))
    rows = _rows(epoch_table(log, every=3))
    assert [r[0] for r in rows] == ["3", "6", "7"]
    assert rows[1][1:5] == ["2", "994", "1.0000", "0.9060"]


def test_benchmark_table_and_report_share_the_papers_caption():
    """One table of the paper's numbers, one caption: the benchmark's table.md row and glocalk report's row."""
    results = {"dataset": "douban", "seeds": [1], "models": [], "val_frac": 0.05, "summary": {}, "runs": [],
               "paper": PAPER_RESULTS["douban"], "params": {}, "variants": {}, "device_description": "cpu",
               "wall_time_s": 1.0}
    bench_row = next(line for line in markdown_table(results).splitlines() if "Han et al." in line)
    report_row = _rows(results_table([{**SUMMARY, "dataset": "douban"}]))[0]
    assert bench_row.startswith(f"| *{PAPER_CAPTION}* | 0.7208 | 0.5622 | 0.9435 |")  # SPEC.md's Douban figures
    assert report_row[1] == PAPER_CAPTION and report_row[4:7] == ["0.7208", "0.5622", "0.9435"]
