"""``glocalk train`` and ``glocalk report`` end to end on a tiny stand-in for a benchmark dataset."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest
from conftest import tiny_ratings

import glocalk.cli.train
import glocalk.data.datasets
from glocalk.cli.app import main
from glocalk.cli.options import progress
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
    assert "| ml-100k | GLocal-K as published (Han et al. 2021, Table 2; best test epoch) |" in table
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
    assert main(["train", "--dataset", "ml-100k", "--patience", "3", *TINY, "--out", str(tmp_path / "x")]) == 2
    assert "glocalk: error: --patience needs a validation split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "ml-10m"])  # not a paper benchmark: argparse refuses it
    assert "invalid choice" in capsys.readouterr().err


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "no summary.json" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "nothing to report: give run folders" in capsys.readouterr().err


def _epoch_log(path):
    path.write_text(json.dumps({"epoch": 1, "stage": 1, "loss": 10.0, "train_rmse": 1.0, "seconds": 0.1}) + "\n")
    return path


@pytest.mark.parametrize("case", ["missing epochs", "non-JSON summary", "every 0"])
def test_report_bad_input_reaches_the_user(tmp_path, capsys, case):
    """Each bad input of glocalk report is one message naming it, exit 2, no traceback."""
    if case == "missing epochs":
        argv, named = ["report", "--epochs", str(tmp_path / "missing.jsonl")], "missing.jsonl"
    elif case == "non-JSON summary":
        (tmp_path / "summary.json").write_text("<html>not a summary</html>")
        argv, named = ["report", str(tmp_path)], "summary.json"
    else:
        argv, named = ["report", "--epochs", str(_epoch_log(tmp_path / "epochs.jsonl")), "--every", "0"], "--every"
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors exit 2 as well
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and named in err and "error" in err and "Traceback" not in err


def _under_a_file(tmp_path):
    (tmp_path / "file").write_text("mine")
    return tmp_path / "file" / "run"


def _summary_is_a_folder(tmp_path):
    out = tmp_path / "run"
    (out / "summary.json").mkdir(parents=True)
    return out


def _read_only(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    return tmp_path / "ro" / "run"


@pytest.mark.parametrize("make_out", [
    _under_a_file, _summary_is_a_folder,
    pytest.param(_read_only, marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only folders")),
])
def test_unwritable_output_is_a_message_naming_the_path(fake_dataset, tmp_path, capsys, make_out):
    out = make_out(tmp_path)
    assert main(["train", "--dataset", "ml-100k", "--quiet", *TINY, "--epoch-p", "1", "--epoch-f", "0",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glocalk: error: ") and str(tmp_path) in err and "Traceback" not in err
    if make_out is _under_a_file:
        assert f"{out}: Not a directory (a part of the path is a file, not a folder)" in err
        assert (tmp_path / "file").read_text() == "mine"  # never touched
    if make_out is _summary_is_a_folder:
        assert f"{out / 'summary.json'}: Is a directory (a folder is there; give a file name)" in err


def test_read_only_folder_is_a_message_naming_the_path(fake_dataset, tmp_path, capsys, monkeypatch):
    """As root (CI containers) chmod does not stop writes: let mkdir fail as a read-only folder makes it fail."""
    real_mkdir = Path.mkdir
    read_only = tmp_path / "ro"

    def mkdir(self, *args, **kwargs):
        if self == read_only or read_only in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["train", "--dataset", "ml-100k", "--quiet", *TINY, "--out", str(read_only / "run")]) == 2
    assert f"glocalk: error: {read_only / 'run'}: Permission denied" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    """A KeyError is a bug, not bad input: main lets it through instead of printing it as a user error."""
    def buggy(args):
        raise KeyError("rmse")

    monkeypatch.setattr(glocalk.cli.train, "cmd_report", buggy)
    with pytest.raises(KeyError, match="rmse"):
        main(["report"])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_plain_line_per_epoch_when_not_on_a_terminal():
    """A redirected log gets readable lines (no carriage-return bar updates); a terminal gets the bar."""
    rec = {"epoch": 3, "stage": 1, "train_rmse": 0.91234, "val_rmse": 0.95, "seconds": 1.25, "eval_seconds": 0.25}
    log = io.StringIO()
    on_epoch, close = progress(10, 1, quiet=False, stream=log)
    on_epoch(7, rec)
    on_epoch(7, {**rec, "epoch": 4, "test_rmse": 0.9})
    close()
    assert log.getvalue().splitlines() == [
        "seed 7: epoch 3/10 stage 1 train 0.9123 val 0.9500 (1.5 s)",
        "seed 7: epoch 4/10 stage 1 train 0.9123 val 0.9500 test 0.9000 (1.5 s)"]
    tty = _Terminal()
    on_epoch, close = progress(10, 1, quiet=False, stream=tty)
    on_epoch(7, rec)
    close()
    assert "\r" in tty.getvalue() and "seed 7" in tty.getvalue()
    quiet = io.StringIO()
    on_epoch, close = progress(10, 1, quiet=True, stream=quiet)
    on_epoch(7, rec)
    close()
    assert quiet.getvalue() == ""
