"""``glocalk train`` and ``glocalk report`` end to end on a tiny stand-in for a benchmark dataset."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_ratings

import glocalk.data.datasets
from glocalk.cli.app import main
from glocalk.data.matrix import RatingMatrix

TINY = ["--n-hid", "8", "--epoch-p", "2", "--epoch-f", "3", "--iter-p", "2", "--iter-f", "2"]


def tiny_data() -> RatingMatrix:
    return tiny_ratings(name="ml-100k")


@pytest.fixture
def fake_dataset(monkeypatch):
    asked = []

    def load(name, data_dir=None, download=False):
        asked.append((name, data_dir, download))
        return tiny_data()

    monkeypatch.setattr(glocalk.data.datasets, "load_dataset", load)
    return asked


def test_train_writes_summary_with_preset_overrides_and_ensemble(fake_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "ml-100k", "--data-dir", "somewhere", "--seed", "1", "2", "--val-frac", "0.1",
               "--ensemble", "--quiet", "--lambda-2", "5", *TINY, "--out", str(out)])
    assert rc == 0 and fake_dataset == [("ml-100k", "somewhere", False)]
    summary = json.loads((out / "summary.json").read_text())
    hp = summary["hyperparameters"]
    # The preset gives what was not overridden; the flags win over it.
    assert hp["lambda_2"] == 5.0 and hp["n_hid"] == 8 and hp["lambda_s"] == 0.006 and hp["dot_scale"] == 1.0
    assert summary["seeds"] == [1, 2] and summary["val_frac"] == 0.1 and summary["complete"]
    assert summary["ensemble"]["n_models"] == 2
    assert (out / "seed-1" / "epochs.jsonl").is_file() and (out / "seed-2" / "epochs.jsonl").is_file()
    printed = capsys.readouterr().out
    best = f"{summary['best']['rmse']:.4f} ± {summary['std']['best']['rmse']:.4f}"
    assert "paper (best fine-tuning epoch, test)" in printed and best in printed
    assert f"{summary['ensemble']['rmse']:.4f}" in printed

    # glocalk report turns that summary into a Markdown row with the same figures.
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| ml-100k | paper (Han et al. 2021) |" in table
    assert f"| {best} |" in table


def test_train_resume_of_a_finished_run_trains_nothing(fake_dataset, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ml-100k", "--seed", "3", "--quiet", *TINY, "--out", str(out)]) == 0
    first = json.loads((out / "summary.json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    import sys

    monkeypatch.setattr(sys.modules["glocalk.train"], "lbfgs_epoch", no_training)
    assert main(["train", "--dataset", "ml-100k", "--seed", "3", "--quiet", *TINY, "--out", str(out),
                 "--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["best"] == first["best"] and again["final"] == first["final"]
    # A different configuration cannot resume that state: a clear error, nothing overwritten.
    capsys.readouterr()
    assert main(["train", "--dataset", "ml-100k", "--seed", "3", "--quiet", *TINY, "--lambda-2", "3",
                 "--out", str(out), "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["best"] == first["best"]


def test_train_argument_errors(fake_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit, match="--patience needs a validation split"):
        main(["train", "--dataset", "ml-100k", "--patience", "3", *TINY, "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "ml-10m"])  # not a paper benchmark: argparse refuses it
    assert "invalid choice" in capsys.readouterr().err


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "no summary.json" in capsys.readouterr().err
