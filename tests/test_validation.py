"""compare.validation: cross-validation and ``fit_and_report`` (``glocalk fit`` as a library call)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glocalk.compare.validation import FitConfig, cross_validate, fit_and_report, training_part
from glocalk.data import splits
from glocalk.data.readers import read_ratings
from glocalk.data.synthetic import example_ratings
from glocalk.errors import ConfigError, OutputError
from glocalk.estimator import GLocalKRecommender

TINY = dict(n_hid=8, n_dim=3, epoch_p=2, epoch_f=2, iter_p=3, iter_f=3, threads=1)



@pytest.fixture(scope="module")
def train():
    return example_ratings(n_users=30, n_items=40, density=0.35, seed=3)[0]


def test_cross_validate(train):
    cv = cross_validate(GLocalKRecommender("ml-100k", **TINY), train, folds=3, seed=0)
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    assert sum(f["n_test"] for f in cv["per_fold"]) == len(train)
    for key in ("rmse", "mae", "ndcg"):
        values = [f[key] for f in cv["per_fold"]]
        assert cv["mean"][key] == pytest.approx(np.mean(values))
        assert cv["std"][key] == pytest.approx(np.std(values, ddof=1))


def test_each_fold_clips_to_its_own_training_ratings(train):
    # Defect 6 (own data): the clip range is the training part's min..max, never the test part's.
    ratings = read_ratings(train.assign(rating=train["rating"].clip(1, 4)))
    _, test_rows = next(splits.kfold(ratings, 3, 0, return_indices=True))
    df = ratings.df.copy()
    df.loc[test_rows[0], "rating"] = 5.0  # fold 1's only 5 is a test rating
    ratings = read_ratings(df)
    fold_train, fold_test = next(splits.kfold(ratings, 3, 0))
    assert fold_train.rating_scale == (1.0, 5.0), "test setup: the split keeps the parent's scale"
    own = training_part(fold_train, GLocalKRecommender("ml-100k"))
    assert own.rating_scale == (1.0, 4.0) and own.offset == 0.0
    fixed = GLocalKRecommender("ml-100k", rating_scale=(1, 5))
    assert training_part(fold_train, fixed) is fold_train  # a given scale is kept
    model = GLocalKRecommender("ml-100k", **TINY).fit(own, test=fold_test)
    assert model.rating_scale_ == (1.0, 4.0) and model.metrics_["n_rated"] > 0


@pytest.mark.parametrize("config, message", [
    (dict(split="kfold", test="t.csv"), "--test and --split exclude each other"),
    (dict(split="random", folds=3), "--folds and --no-refit apply to --split kfold only"),
    (dict(refit=False), "--folds and --no-refit apply to --split kfold only"),
    (dict(split="kfold", test_frac=0.2), "--test-frac applies to --split random, user or time only"),
    (dict(split="kfold", folds=1), "--folds must be >= 2"),
    (dict(split="halves"), "--split must be one of"),
])
def test_fit_config_is_checked(config, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        fit_and_report(GLocalKRecommender("ml-100k", **TINY), FitConfig(ratings="r.csv", out=tmp_path / "m", **config))


def test_fit_and_report_writes_the_model_and_report(train, tmp_path):
    path = tmp_path / "r.csv"
    train.to_csv(path, index=False)
    seen = []
    result = fit_and_report(GLocalKRecommender("ml-100k", **TINY),
                            FitConfig(ratings=path, out=tmp_path / "m", split="user"),
                            on_epoch=lambda s, rec: seen.append((s, rec["epoch"])), on_ratings=seen.append)
    assert len(seen[0]) == len(train) and seen[1:] == [(1, e) for e in range(1, 5)]
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    assert report["split"]["kind"] == "user" and report["metrics"] == result.model.metrics_
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "r.csv"]  # no state folder left behind
    # The ratings file inside the output folder: refused before any training, and kept.
    inside = tmp_path / "m" / "r.csv"
    inside.write_bytes(path.read_bytes())
    with pytest.raises(OutputError, match=r"not a glocalk model directory.*r\.csv"):
        fit_and_report(GLocalKRecommender("ml-100k", **TINY), FitConfig(ratings=inside, out=tmp_path / "m", force=True))
    assert inside.read_bytes() == path.read_bytes()


def test_the_estimators_duplicates_policy_reads_the_files(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("user,item,rating\na,x,1\nb,x,4\na,y,2\na,x,3\nb,y,5\nc,y,1\nc,x,2\n")
    est = GLocalKRecommender("ml-100k", duplicates="mean", **TINY)
    result = fit_and_report(est, FitConfig(ratings=path, out=tmp_path / "m"))
    assert result.report["n_ratings"] == 6 and result.model.model_.seen[0, 0] == 2.0  # item x, user a: mean
    cv = cross_validate(est, path, folds=2, seed=0)
    assert sum(f["n_test"] for f in cv["per_fold"]) == 6
