"""glocalk fit / evaluate / predict / recommend, end to end, and the README's own-data walk-through."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from glocalk.cli import fit as cli_fit
from glocalk.cli.app import build_parser, main
from glocalk.data import splits
from glocalk.data.readers import read_ratings
from glocalk.data.synthetic import example_ratings
from glocalk.estimator import GLocalKRecommender

TINY = ["--preset", "ml-100k",
        "--n-hid", "8", "--n-dim", "3", "--epoch-p", "2", "--epoch-f", "2", "--iter-p", "3", "--iter-f", "3",
        "--threads", "1", "--quiet"]
README = Path(__file__).resolve().parents[1] / "README.md"



@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    train, test = example_ratings(n_users=30, n_items=40, density=0.35, seed=5)
    train.to_csv(d / "train.csv", index=False)
    test.to_csv(d / "test.csv", index=False)
    pd.concat([train, test]).to_csv(d / "all.csv", index=False)
    return {"train": d / "train.csv", "test": d / "test.csv", "all": d / "all.csv", "dir": d}


@pytest.fixture(scope="module")
def model_dir(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "m"
    assert main(["fit", str(files["train"]), "--test", str(files["test"]), "--val-frac", "0.1", *TINY,
                 "--out", str(out)]) == 0
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("fit", "evaluate", "predict", "recommend"):
        p = sub.choices[name]
        assert p.description
        for action in p._actions:
            assert action.help, f"glocalk {name}: option {action.option_strings or action.dest} has no help"
        text = p.format_help()
        assert "--help" in text
    assert "train" in sub.choices  # the paper benchmarks' command is still there


def test_fit_with_test_file(model_dir, files):
    report = json.loads((model_dir / "report.json").read_text())
    assert report["split"]["kind"] == "file" and report["metrics"]["n_rated"] > 0
    assert report["fingerprint"] and report["hyperparameters"]["n_hid"] == 8
    assert not cli_fit.partial_dir(model_dir).exists()  # the training state is removed when done
    model = GLocalKRecommender.load(model_dir)
    assert model.metrics_ == report["metrics"]


def test_evaluate(model_dir, files, capsys, tmp_path):
    code, out, _ = run(capsys, "evaluate", model_dir, files["test"], "--json", tmp_path / "m.json")
    assert code == 0 and re.search(r"RMSE \d\.\d{4}, MAE \d\.\d{4}, NDCG \d\.\d{4}", out)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["rmse"] == pytest.approx(json.loads((model_dir / "report.json").read_text())["metrics"]["rmse"])


def test_predict_writes_csv(model_dir, files, capsys, tmp_path):
    out_csv = tmp_path / "pred.csv"
    code, _, _ = run(capsys, "predict", model_dir, files["test"], "--output", out_csv)
    assert code == 0
    pred = pd.read_csv(out_csv)
    test = pd.read_csv(files["test"])
    assert list(pred.columns) == ["user", "item", "prediction"] and len(pred) == len(test)
    model = GLocalKRecommender.load(model_dir)
    np.testing.assert_allclose(pred["prediction"], model.predict(test["user"], test["item"]), rtol=1e-12)
    code, out, _ = run(capsys, "predict", model_dir, files["test"])  # standard output
    assert code == 0 and out.splitlines()[0] == "user,item,prediction" and len(out.splitlines()) == len(test) + 1


def test_recommend(model_dir, files, capsys, tmp_path):
    code, out, _ = run(capsys, "recommend", model_dir, "--user", "u003", "-k", "4")
    assert code == 0
    rec = pd.read_csv(pd.io.common.StringIO(out))
    assert list(rec.columns) == ["user", "item", "score", "rank"] and len(rec) == 4
    train = pd.read_csv(files["train"])
    assert not set(rec["item"]) & set(train.loc[train["user"] == "u003", "item"])
    assert list(rec["rank"]) == [1, 2, 3, 4] and np.all(np.diff(rec["score"]) <= 0)
    users = tmp_path / "users.txt"
    users.write_text("user\nu001\nu002\n")
    code, _, _ = run(capsys, "recommend", model_dir, "--users-file", users, "-k", "3", "--output", tmp_path / "r.csv")
    rec = pd.read_csv(tmp_path / "r.csv")
    assert code == 0 and list(rec["user"]) == ["u001"] * 3 + ["u002"] * 3
    code, out, _ = run(capsys, "recommend", model_dir, "--user", "u003", "-k", "100", "--include-seen")
    assert set(train.loc[train["user"] == "u003", "item"]) <= set(pd.read_csv(pd.io.common.StringIO(out))["item"])


def test_unknown_ids(model_dir, capsys, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\nu001,m0001\nstranger,m0001\n")
    code, _, err = run(capsys, "predict", model_dir, pairs)
    assert code == 2 and "glocalk: error:" in err and "pairs.csv" in err and "unknown user 'stranger'" in err
    code, out, _ = run(capsys, "predict", model_dir, pairs, "--unknown", "baseline")
    assert code == 0 and len(out.splitlines()) == 3
    code, _, err = run(capsys, "recommend", model_dir, "--user", "stranger")
    assert code == 2 and "unknown user 'stranger'" in err and "not in the training data" in err
    code, out, _ = run(capsys, "recommend", model_dir, "--user", "stranger", "--unknown", "baseline", "-k", "2")
    assert code == 0 and len(out.splitlines()) == 3


def test_byte_order_mark_is_no_phantom_user(model_dir, capsys, tmp_path):
    # Defect: a BOM turned the header of a pairs / users file into data, then answered with --unknown baseline.
    pairs, users = tmp_path / "pairs.csv", tmp_path / "users.txt"
    pairs.write_bytes(b"\xef\xbb\xbfuser,item\nu001,m0001\n")
    users.write_bytes(b"\xef\xbb\xbfuser\nu001\n")
    code, out, _ = run(capsys, "predict", model_dir, pairs, "--unknown", "baseline")
    assert code == 0 and pd.read_csv(pd.io.common.StringIO(out))["user"].tolist() == ["u001"]
    code, out, _ = run(capsys, "recommend", model_dir, "--users-file", users, "--unknown", "baseline", "-k", "2")
    assert code == 0 and pd.read_csv(pd.io.common.StringIO(out))["user"].tolist() == ["u001", "u001"]


@pytest.mark.parametrize("split", ["random", "user", "time"])
def test_fit_splits(files, capsys, tmp_path, split):
    out = tmp_path / "m"
    code, stdout, _ = run(capsys, "fit", files["all"], "--split", split, "--test-frac", "0.2", *TINY, "--out", out)
    assert code == 0 and f"test ({split})" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["split"]["kind"] == split and report["split"]["n_test"] > 0


def test_time_split_needs_timestamps(files, capsys, tmp_path):
    code, _, err = run(capsys, "fit", files["all"], "--split", "time", "--no-time", *TINY, "--out", tmp_path / "m")
    assert code == 2 and "needs a timestamp column" in err


def test_kfold(files, capsys, tmp_path):
    out = tmp_path / "cv"
    code, stdout, _ = run(capsys, "fit", files["all"], "--split", "kfold", "--folds", "3", *TINY, "--out", out)
    assert code == 0 and "3-fold cross-validation" in stdout and re.search(r"RMSE\s+\d\.\d{4} ± \d\.\d{4}", stdout)
    report = json.loads((out / "report.json").read_text())
    cv = report["cross_validation"]
    assert len(cv["per_fold"]) == 3 and set(cv["mean"]) == set(cv["std"]) == {"rmse", "mae", "ndcg"}
    GLocalKRecommender.load(out)  # refit on all ratings
    code, _, _ = run(capsys, "fit", files["all"], "--split", "kfold", "--folds", "2", "--no-refit", *TINY,
                     "--out", tmp_path / "cv-only")
    assert code == 0 and sorted(p.name for p in (tmp_path / "cv-only").iterdir()) == ["report.json"]


def test_ensemble(files, capsys, tmp_path):
    out = tmp_path / "ens"
    code, stdout, _ = run(capsys, "fit", files["train"], "--seed", "1", "2", "--ensemble", *TINY, "--out", out)
    assert code == 0 and "ensemble" in stdout
    assert [m["seed"] for m in GLocalKRecommender.load(out).members_] == [1, 2]
    code, _, _ = run(capsys, "fit", files["train"], "--seed", "3", "--ensemble", "2", *TINY, "--out", tmp_path / "e2")
    assert code == 0 and [m["seed"] for m in GLocalKRecommender.load(tmp_path / "e2").members_] == [3, 4]
    code, _, err = run(capsys, "fit", files["train"], "--seed", "1", "2", *TINY, "--out", tmp_path / "x")
    assert code == 2 and "add --ensemble" in err


def test_resume_after_interrupt_equals_uninterrupted(files, capsys, tmp_path, monkeypatch):
    args = ["fit", files["train"], "--val-frac", "0.1", *TINY, "--epoch-p", "3", "--epoch-f", "3"]
    assert run(capsys, *args, "--out", tmp_path / "ref")[0] == 0
    real = cli_fit.progress

    def interrupting(*args):
        on_epoch, close = real(*args)

        def wrapped(seed, rec):
            if rec["epoch"] == 4:
                raise KeyboardInterrupt
            on_epoch(seed, rec)
        return wrapped, close

    monkeypatch.setattr(cli_fit, "progress", interrupting)
    out = tmp_path / "m"
    code, _, err = run(capsys, *args, "--out", out)
    assert code == 130 and "--resume" in err
    assert not out.exists() and (cli_fit.partial_dir(out) / "fit" / "seed-1" / "last").is_dir()
    monkeypatch.setattr(cli_fit, "progress", real)
    assert run(capsys, *args, "--out", out, "--resume")[0] == 0
    assert not cli_fit.partial_dir(out).exists()
    ref, resumed = GLocalKRecommender.load(tmp_path / "ref"), GLocalKRecommender.load(out)
    train = pd.read_csv(files["train"])
    np.testing.assert_allclose(resumed.predict(train["user"], train["item"]),
                               ref.predict(train["user"], train["item"]), rtol=0, atol=1e-6)
    assert resumed.members_ == ref.members_
    code, _, err = run(capsys, *args, "--out", out, "--resume")
    assert code == 2 and "no interrupted run" in err


def test_out_is_protected(files, capsys, tmp_path, model_dir):
    code, _, err = run(capsys, "fit", files["train"], *TINY, "--out", model_dir)
    assert code == 2 and "--force" in err
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("...")
    code, _, err = run(capsys, "fit", files["train"], *TINY, "--force", "--out", other)
    assert code == 2 and "not a glocalk model directory" in err and (other / "thesis.tex").exists()


def _write_foreign(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_force_replaces_a_model_directory_and_nothing_else(files, capsys, tmp_path):
    # Defect 4: --force (and --split kfold --no-refit) used to delete every file in --out, even the ratings.
    out = tmp_path / "m"
    assert run(capsys, "fit", files["train"], *TINY, "--out", out)[0] == 0
    ratings = out / "ratings.csv"
    ratings.write_bytes(files["train"].read_bytes())  # the user keeps the training file beside the model
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in ([], ["--split", "kfold", "--folds", "2", "--no-refit"]):
        code, _, err = run(capsys, "fit", ratings, *extra, *TINY, "--force", "--out", out)
        assert code == 2 and "is not a glocalk model directory" in err and "ratings.csv" in err, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "nothing in --out may change"
    # A model directory holding only what glocalk wrote is replaced, either way round.
    ratings.unlink()
    assert run(capsys, "fit", files["train"], "--split", "kfold", "--folds", "2", "--no-refit", *TINY, "--force",
               "--out", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    assert run(capsys, "fit", files["train"], *TINY, "--force", "--out", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "report.json", "weights.safetensors"]


def test_a_state_folder_that_is_not_ours_is_kept(files, capsys, tmp_path):
    out = tmp_path / "m"
    cli_fit.partial_dir(out).mkdir()
    mine = _write_foreign(cli_fit.partial_dir(out), "notes.txt", "mine")
    code, _, err = run(capsys, "fit", files["train"], *TINY, "--out", out)
    assert code == 2 and "notes.txt" in err and mine.read_text() == "mine"


def test_split_clips_to_the_training_ratings_range(files, capsys, tmp_path):
    # Defect 6: with --split, the clip range is the min..max of the TRAINING part, not of all ratings.
    ratings = pd.read_csv(files["all"])
    ratings["rating"] = ratings["rating"].clip(1, 4)
    # The rows the command's split draws (same size and seed: the same rows).
    test_rows = splits.random_holdout(read_ratings(ratings), 0.2, 7, return_indices=True)[1]
    ratings.loc[test_rows[0], "rating"] = 5.0  # the only 5 is a test rating
    path = tmp_path / "r.csv"
    ratings.to_csv(path, index=False)
    out = tmp_path / "m"
    code, _, err = run(capsys, "fit", path, "--split", "random", "--test-frac", "0.2", "--split-seed", "7", *TINY,
                       "--out", out)
    assert code == 0, err
    model = GLocalKRecommender.load(out)
    assert model.rating_scale_ == (1.0, 4.0)
    assert model.predict(ratings["user"], ratings["item"]).max() <= 4.0
    report = json.loads((out / "report.json").read_text())
    assert report["split"]["n_test"] == len(test_rows) and report["metrics"]["n_rated"] > 0


def test_nan_predictions_reach_the_user(model_dir, files, capsys, tmp_path):
    # Defect 1: NaN predictions were counted as "unknown ids" (skipped), even with --unknown error.
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(broken / "weights.safetensors"))
    tensors["member0.out.b"][:] = float("nan")
    save_file(tensors, str(broken / "weights.safetensors"))
    for unknown in ("error", "skip"):
        code, out, err = run(capsys, "evaluate", broken, files["test"], "--unknown", unknown)
        assert code == 2 and f"glocalk: error: the model in {broken} gives NaN" in err and "skipped" not in out


def test_headerless_double_colon_and_parquet(files, capsys, tmp_path):
    train = pd.read_csv(files["train"])
    dat = tmp_path / "ratings.dat"
    rows = train.itertuples(index=False)
    dat.write_text("".join(f"{int(u[1:])}::{int(i[1:])}::{int(r)}::{t}\n" for u, i, r, t in rows))
    assert run(capsys, "fit", dat, "--split", "time", *TINY, "--out", tmp_path / "dat")[0] == 0
    code, out, _ = run(capsys, "recommend", tmp_path / "dat", "--user", "1", "-k", "2")
    assert code == 0 and out.splitlines()[1].startswith("1,")
    pq = tmp_path / "ratings.parquet"
    train.to_parquet(pq)
    assert run(capsys, "fit", pq, "--test", files["test"], *TINY, "--out", tmp_path / "pq")[0] == 0
    assert run(capsys, "evaluate", tmp_path / "pq", files["test"])[0] == 0


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    ("", r"empty\.csv: the file is empty"),
    ("user,film,rating\na,x,3\n", r"no item column.*available columns: 'user', 'film', 'rating'"),
    ("user,item,rating\na,x,3\nb,y,high\n", r"line 3: rating 'high' is not a"),
    ("user,item,rating\na,x,3\nb,y,\n", r"line 3: missing \(empty or NaN\) rating"),
    ("user,item,rating\na,x,3\nb,y,9\n", r"line 3: rating 9 is outside the rating scale 1\.\.5"),
    ("user,item,rating\na,x,3\nb,y,4\na,x,5\n", r"duplicate rating for user 'a' and item 'x' at line 2 and line 4"
                                              r".*--duplicates last"),
    ("user,item,rating\na,x,3\nb,y,1e-46\n", r"line 3: rating 1e-46 cannot be stored as a float32"),
])
def test_bad_ratings_files(capsys, tmp_path, content, message):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    code, _, err = run(capsys, "fit", path, "--rating-scale", "1", "5", *TINY, "--out", tmp_path / "m")
    assert code == 2 and err.startswith("glocalk: error: ") and re.search(message, err), err
    assert not (tmp_path / "m").exists()


def test_duplicates_option(capsys, tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("user,item,rating\na,x,1\nb,x,4\na,y,2\na,x,3\nb,y,5\nc,y,1\n")
    for policy, expected in (("last", 3.0), ("mean", 2.0)):
        out = tmp_path / policy
        assert run(capsys, "fit", path, "--duplicates", policy, *TINY, "--out", out)[0] == 0
        assert GLocalKRecommender.load(out).model_.seen[0, 0] == expected


def test_misnamed_column_option(files, capsys, tmp_path):
    code, _, err = run(capsys, "fit", files["train"], "--rating-col", "stars", *TINY, "--out", tmp_path / "m")
    assert code == 2 and "column 'stars' (--rating-col, rating_col) not found" in err


def test_bad_model_directory(files, capsys, tmp_path, model_dir):
    code, _, err = run(capsys, "evaluate", tmp_path / "nope", files["test"])
    assert code == 2 and "model directory not found" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, _, err = run(capsys, "predict", broken, files["test"])
    assert code == 2 and "weights.safetensors is corrupt or truncated" in err


# -- the README walk-through -------------------------------------------------------------------


def _readme_blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    start = text.index("## Your own data")
    end = text.find("\n## ", start + 1)
    section = text[start: end if end > 0 else len(text)]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_readme_walkthrough(tmp_path):
    blocks = _readme_blocks()
    assert [lang for lang, _ in blocks].count("bash") >= 1
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    for lang, code in blocks:
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"README {lang} block failed:\n{code}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "my-model" / "model.json").exists()
