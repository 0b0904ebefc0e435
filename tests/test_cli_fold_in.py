"""glocalk fold-in and glocalk recommend --ratings / --all-users, end to end through main()."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glocalk.cli.app import main
from glocalk.data.synthetic import example_ratings
from glocalk.estimator import GLocalKRecommender

TINY = dict(n_hid=8, n_dim=3, epoch_p=2, epoch_f=2, iter_p=3, iter_f=3, threads=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    train, _ = example_ratings(n_users=30, n_items=40, density=0.35, seed=3)
    path = tmp_path_factory.mktemp("m") / "model"
    GLocalKRecommender("ml-100k", **TINY).fit(train[train["user"] != "u030"]).save(path)
    return path


@pytest.fixture(scope="module")
def new_ratings(tmp_path_factory) -> Path:
    train, _ = example_ratings(n_users=30, n_items=40, density=0.35, seed=3)
    path = tmp_path_factory.mktemp("r") / "new.csv"
    train.loc[train["user"] == "u030", ["user", "item", "rating"]].to_csv(path, index=False)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fold_in_writes_a_new_model_that_knows_the_new_user(model_dir, new_ratings, tmp_path, capsys):
    before = (model_dir / "model.json").read_bytes()
    code, out, _ = run(capsys, "fold-in", model_dir, new_ratings, "--out", tmp_path / "m2")
    assert code == 0 and "1 users and 0 items folded in" in out
    model = GLocalKRecommender.load(tmp_path / "m2")
    assert model.user_ids_[-1] == "u030" and np.isfinite(model.predict("u030", "m0001"))
    assert (model_dir / "model.json").read_bytes() == before  # the source model is untouched


def test_fold_in_never_replaces_what_it_did_not_write(model_dir, new_ratings, tmp_path, capsys):
    code, _, err = run(capsys, "fold-in", model_dir, new_ratings, "--out", model_dir)
    assert code == 2 and "fold-in never replaces the model it reads" in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, "fold-in", model_dir, new_ratings, "--out", mine)
    assert code == 2 and "exists; --force" in err
    code, _, err = run(capsys, "fold-in", model_dir, new_ratings, "--out", mine, "--force")
    assert code == 2 and (mine / "notes.txt").read_text() == "keep me"


def test_a_bad_ratings_file_is_named(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,rating\nu001,m0001,4\n")  # a known pair
    code, _, err = run(capsys, "fold-in", model_dir, bad, "--out", tmp_path / "x")
    assert code == 2 and str(bad) in err and "knows already" in err and not (tmp_path / "x").exists()


def test_recommend_for_a_new_user_from_their_ratings(model_dir, new_ratings, capsys):
    code, out, _ = run(capsys, "recommend", model_dir, "--user", "u030", "--ratings", new_ratings, "-k", "5")
    recs = pd.read_csv(pd.io.common.StringIO(out))
    rated = set(pd.read_csv(new_ratings)["item"])
    assert code == 0 and len(recs) == 5 and list(recs["rank"]) == [1, 2, 3, 4, 5]
    assert set(recs["user"]) == {"u030"} and not rated & set(recs["item"])


@pytest.mark.parametrize("name", ["recs.parquet", "recs.csv"])
def test_recommend_all_users_writes_every_users_top_k(model_dir, tmp_path, capsys, name):
    code, _, _ = run(capsys, "recommend", model_dir, "--all-users", "-k", "3", "--output", tmp_path / name)
    recs = pd.read_parquet(tmp_path / name) if name.endswith(".parquet") else pd.read_csv(tmp_path / name)
    model = GLocalKRecommender.load(model_dir)
    expected = model.recommend_many(model.user_ids_, k=3)
    assert code == 0 and len(recs) == 3 * len(model.user_ids_)
    assert list(recs["user"]) == list(expected["user"]) and list(recs["rank"]) == list(expected["rank"])
    # The same top-3 up to floating-point rounding (block and per-user products round differently).
    assert np.allclose(recs["score"], expected["score"], atol=1e-5)
    assert np.allclose(model.predict(recs["user"], recs["item"]), recs["score"], atol=1e-5)
