"""GLocalKRecommender: fit / predict / recommend / save / load, resume, ensembles, bad input."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from glocalk.data.matrix import RatingMatrix
from glocalk.data.readers import read_ratings, to_rating_matrix
from glocalk.data.synthetic import example_ratings
from glocalk.errors import CheckpointError, DataError
from glocalk.estimator import GLocalKRecommender, cross_validate

# Tiny settings: the suite runs on 2 shared cores.
TINY = dict(n_hid=8, n_dim=3, epoch_p=2, epoch_f=2, iter_p=3, iter_f=3, threads=1)


@pytest.fixture(autouse=True)
def _restore_threads():
    # threads=1 sets torch's global thread count; give other tests theirs back.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return example_ratings(n_users=30, n_items=40, density=0.35, seed=3)


@pytest.fixture(scope="module")
def fitted(data) -> GLocalKRecommender:
    train, test = data
    return GLocalKRecommender(val_frac=0.1, **TINY).fit(train, test=test)


def test_fit_dataframe_with_string_ids(fitted, data):
    train, test = data
    assert fitted.user_ids_.dtype == object and isinstance(fitted.user_ids_[0], str)
    pred = fitted.predict(test["user"], test["item"])
    assert pred.shape == (len(test),) and np.all((pred >= 1) & (pred <= 5))
    one = fitted.predict(test["user"].iloc[0], test["item"].iloc[0])
    assert isinstance(one, float) and one == pytest.approx(pred[0])
    assert set(fitted.metrics_) >= {"rmse", "mae", "ndcg", "n_rated"} and fitted.metrics_["n_rated"] == len(test)
    assert fitted.members_[0]["stage"] == 2 and len(fitted.history_[1]) == 4
    # A DataFrame of pairs works too.
    assert np.array_equal(fitted.predict(test[["user", "item"]]), pred)


def test_evaluate_matches_metrics_of_fit(fitted, data):
    _, test = data
    assert fitted.evaluate(test) == pytest.approx(fitted.metrics_)


def test_headerless_double_colon_file(tmp_path):
    train, _ = example_ratings(n_users=20, n_items=25, density=0.4, seed=1)
    path = tmp_path / "ratings.dat"
    lines = [f"{int(u[1:])}::{int(i[1:])}::{int(r)}::{t}" for u, i, r, t in train.itertuples(index=False)]
    path.write_text("\n".join(lines) + "\n")
    model = GLocalKRecommender(**TINY).fit(path)
    assert model.user_ids_.dtype.kind == "i" and len(model.user_ids_) == train["user"].nunique()
    # Integer ids are matched from ints and from their text.
    u, i = int(train["user"].iloc[0][1:]), int(train["item"].iloc[0][1:])
    assert model.predict(u, i) == model.predict(str(u), str(i))


def test_parquet_file(tmp_path, data):
    train, test = data
    path = tmp_path / "ratings.parquet"
    train.to_parquet(path)
    model = GLocalKRecommender(**TINY).fit(path, test=test)
    assert model.metrics_["n_rated"] == len(test)


def test_save_load_round_trip_identical(tmp_path, fitted, data):
    _, test = data
    fitted.save(tmp_path / "m")
    loaded = GLocalKRecommender.load(tmp_path / "m")
    assert np.array_equal(loaded.predict(test["user"], test["item"]), fitted.predict(test["user"], test["item"]))
    pd.testing.assert_frame_equal(loaded.recommend("u001", 5), fitted.recommend("u001", 5))
    assert list(loaded.user_ids_) == list(fitted.user_ids_) and isinstance(loaded.item_ids_[0], str)
    assert loaded.metrics_ == fitted.metrics_ and loaded.members_ == fitted.members_
    assert loaded.get_params() == fitted.get_params()
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["kind"] == "glocalk-model" and meta["fingerprint"] == fitted.fingerprint_
    assert {"torch", "numpy", "glocalk"} <= set(meta["versions"]) and meta["rating_scale"] == [1.0, 5.0]


def test_round_trip_int_ids_and_offset(tmp_path):
    # A 0..4 scale is stored shifted by 1 and shifted back on the way out.
    train, _ = example_ratings(n_users=20, n_items=25, density=0.4, seed=2)
    df = pd.DataFrame({"user": train["user"].str[1:].astype(int), "item": train["item"].str[1:].astype(int),
                       "rating": train["rating"] - 1})
    model = GLocalKRecommender(**TINY).fit(df)
    assert model.offset_ == 1.0 and model.rating_scale_ == (0.0, 4.0)
    pred = model.predict(df["user"], df["item"])
    assert pred.min() >= 0 and pred.max() <= 4
    model.save(tmp_path / "m")
    loaded = GLocalKRecommender.load(tmp_path / "m")
    assert loaded.user_ids_.dtype.kind == "i"
    assert np.array_equal(loaded.predict(df["user"], df["item"]), pred)
    rec = loaded.recommend(int(df["user"].iloc[0]), 3)
    assert rec["score"].between(0, 4).all()


def test_recommend_excludes_seen_and_sorts(fitted, data):
    train, _ = data
    user = "u002"
    seen = set(train.loc[train["user"] == user, "item"])
    rec = fitted.recommend(user, k=10)
    assert list(rec.columns) == ["item", "score", "rank"] and list(rec["rank"]) == list(range(1, 11))
    assert not seen & set(rec["item"])
    assert np.all(np.diff(rec["score"].to_numpy()) <= 0)
    # The scores are the model's predictions, and no unseen item outranks the list.
    assert np.allclose(rec["score"], fitted.predict([user] * 10, rec["item"]))
    others = [i for i in fitted.item_ids_ if i not in seen and i not in set(rec["item"])]
    assert fitted.predict([user] * len(others), others).max() <= rec["score"].min() + 1e-6
    everything = fitted.recommend(user, k=len(fitted.item_ids_), exclude_seen=False)
    assert len(everything) == len(fitted.item_ids_) and seen <= set(everything["item"])


def test_recommend_ties_broken_by_item_order(fitted):
    model = GLocalKRecommender.__new__(GLocalKRecommender)
    model.__dict__.update(fitted.__dict__)
    member = fitted._members[0]
    flat = type(member)(member.seed, member.stage, member.epoch, member.state,
                        h=np.zeros_like(member.h), w=member.w, b=np.full_like(member.b, 3.0))
    model._members = [flat]
    rec = model.recommend("u001", 5, exclude_seen=False)
    assert list(rec["item"]) == list(fitted.item_ids_[:5]) and (rec["score"] == 3.0).all()


def test_unknown_ids(fitted):
    with pytest.raises(DataError, match="unknown user 'nobody'.*not in the training data"):
        fitted.predict("nobody", "m0001")
    with pytest.raises(DataError, match="unknown item 'm9999'"):
        fitted.predict(["u001", "u001"], ["m0001", "m9999"])
    with pytest.raises(DataError, match="unknown user 'nobody'"):
        fitted.recommend("nobody")
    p = fitted.predict(["nobody", "u001", "nobody"], ["m0001", "m9999", "m9999"], unknown="baseline")
    assert np.all(np.isfinite(p)) and np.all((p >= 1) & (p <= 5))
    assert p[2] == pytest.approx(fitted._mu)  # both unknown: the global mean
    rec = fitted.recommend("nobody", 4, unknown="baseline")
    order = np.argsort(-(fitted._mu + fitted._b_item), kind="stable")[:4]  # ties: item order
    assert list(rec["item"]) == list(fitted.item_ids_[order])


def test_resume_equals_uninterrupted(tmp_path, data):
    train, _ = data
    params = dict(TINY, epoch_p=3, epoch_f=3, val_frac=0.1, seed=[4, 5])
    reference = GLocalKRecommender(**params).fit(train)

    def stop_after(seed: int, rec: dict) -> None:
        if seed == 5 and rec["epoch"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GLocalKRecommender(**params).fit(train, on_epoch=stop_after, checkpoint_dir=tmp_path / "state")
    epochs = []
    resumed = GLocalKRecommender(**params).fit(train, checkpoint_dir=tmp_path / "state", resume=True,
                                               on_epoch=lambda s, rec: epochs.append((s, rec["epoch"])))
    assert epochs == [(5, 5), (5, 6)]  # seed 4 was finished; seed 5 continues after epoch 4
    users, items = train["user"], train["item"]
    np.testing.assert_allclose(resumed.predict(users, items), reference.predict(users, items), rtol=0, atol=1e-6)
    assert resumed.members_ == reference.members_


def test_resume_refuses_other_data(tmp_path, data):
    train, _ = data
    GLocalKRecommender(**TINY).fit(train, checkpoint_dir=tmp_path / "state")
    with pytest.raises(CheckpointError, match="other data or parameters"):
        GLocalKRecommender(**TINY).fit(train.iloc[5:], checkpoint_dir=tmp_path / "state", resume=True)


def test_ensemble_averages_members(data):
    train, test = data
    ens = GLocalKRecommender(seed=[1, 2], **TINY).fit(train)
    assert [m["seed"] for m in ens.members_] == [1, 2]
    singles = [GLocalKRecommender(seed=s, **TINY).fit(train) for s in (1, 2)]
    i = ens._ids.lookup(test["item"].to_numpy(), "item")
    u = ens._ids.lookup(test["user"].to_numpy(), "user")
    expected = np.clip(np.mean([m._scores(i, u) for m in singles], axis=0), 1, 5)
    np.testing.assert_allclose(ens.predict(test["user"], test["item"]), expected, rtol=0, atol=1e-9)
    assert GLocalKRecommender(seed=7, n_ensemble=3).seeds() == [7, 8, 9]
    assert GLocalKRecommender().seeds() == [1]


def test_rating_matrix_input(data):
    train, test = data
    rm = to_rating_matrix(read_ratings(train), read_ratings(test), unknown="drop")
    model = GLocalKRecommender(**TINY).fit(rm)
    assert model.metrics_["n_rated"] == rm.test.nnz
    assert isinstance(model.item_ids_[0], str)


def test_cross_validate(data):
    train, _ = data
    cv = cross_validate(GLocalKRecommender(**TINY), train, folds=3, seed=0)
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    assert sum(f["n_test"] for f in cv["per_fold"]) == len(train)
    for key in ("rmse", "mae", "ndcg"):
        values = [f[key] for f in cv["per_fold"]]
        assert cv["mean"][key] == pytest.approx(np.mean(values))
        assert cv["std"][key] == pytest.approx(np.std(values, ddof=1))


def test_params_and_clone():
    model = GLocalKRecommender(n_hid=16, val_frac=0.2, seed=[1, 2])
    assert model.get_params()["n_hid"] == 16 and model.clone().get_params() == model.get_params()
    assert model.config()["lambda_2"] == 20.0  # from the ml-100k preset
    model.set_params(lambda_2=3.0)
    assert model.config()["lambda_2"] == 3.0
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        GLocalKRecommender(n_hidden=3)
    with pytest.raises(ValueError, match="unknown must be one of"):
        GLocalKRecommender(unknown="guess")
    with pytest.raises(ValueError, match="patience needs a validation split"):
        GLocalKRecommender(patience=3)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict("a", "b")


# -- bad input --------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv.*empty"):
        GLocalKRecommender(**TINY).fit(path)
    path.write_text("user,item,rating\n")
    with pytest.raises(DataError, match=r"empty\.csv.*no data rows"):
        GLocalKRecommender(**TINY).fit(path)


def test_missing_or_misnamed_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,film,rating\na,x,3\nb,y,4\n")
    with pytest.raises(DataError, match=r"r\.csv.*no item column.*available columns: 'user', 'film', 'rating'"):
        GLocalKRecommender(**TINY).fit(path)
    df = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"]})
    with pytest.raises(DataError, match="DataFrame.*no rating column"):
        GLocalKRecommender(**TINY).fit(df)


@pytest.mark.parametrize("value, message", [("good", r"line 3: rating 'good' is not a (finite )?number"),
                                            ("", r"line 3: missing \(empty or NaN\) rating"),
                                            ("NaN", r"line 3: .*rating.*NaN")])
def test_bad_ratings(tmp_path, value, message):
    path = tmp_path / "r.csv"
    path.write_text(f"user,item,rating\na,x,3\nb,y,{value}\nc,z,5\n")
    with pytest.raises(DataError, match=r"r\.csv: " + message):
        GLocalKRecommender(**TINY).fit(path)


def test_ratings_outside_the_scale(tmp_path, data):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\na,x,3\nb,y,7\n")
    with pytest.raises(DataError, match=r"r\.csv: line 3: rating 7 is outside the rating scale 1\.\.5"):
        GLocalKRecommender(rating_scale=(1, 5), **TINY).fit(path)
    train, test = data
    model = GLocalKRecommender(rating_scale=(1, 5), **TINY).fit(train)
    bad = test.assign(rating=test["rating"].where(test.index != 2, 6.0))
    with pytest.raises(DataError, match="row 2.*rating 6 is outside the rating scale"):
        model.evaluate(bad)


def test_duplicates(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\na,x,1\nb,x,4\na,y,2\na,x,3\nb,y,5\n")
    with pytest.raises(DataError, match=r"duplicate rating for user 'a' and item 'x' at line 2 and line 5"):
        GLocalKRecommender(**TINY).fit(path)
    last = GLocalKRecommender(duplicates="last", **TINY).fit(path)
    mean = GLocalKRecommender(duplicates="mean", **TINY).fit(path)
    assert last._seen.nnz == mean._seen.nnz == 4
    assert last._seen[0, 0] == 3.0 and mean._seen[0, 0] == 2.0  # item x, user a


# -- model directories --------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path, fitted):
    return fitted.save(tmp_path / "model")


def test_missing_and_corrupt_files(saved):
    (saved / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model\.json is corrupt"):
        GLocalKRecommender.load(saved)
    (saved / "model.json").unlink()
    with pytest.raises(CheckpointError, match=r"model\.json is missing"):
        GLocalKRecommender.load(saved)
    with pytest.raises(CheckpointError, match="model directory not found"):
        GLocalKRecommender.load(saved.parent / "nothing")


def test_truncated_weights(saved):
    weights = saved / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"weights\.safetensors is corrupt or truncated"):
        GLocalKRecommender.load(saved)


def _edit_meta(saved, **changes):
    meta = json.loads((saved / "model.json").read_text())
    meta.update(changes)
    (saved / "model.json").write_text(json.dumps(meta))
    return meta


def test_incompatible_metadata(saved):
    meta = json.loads((saved / "model.json").read_text())
    _edit_meta(saved, kind="glocalk-training-state")
    with pytest.raises(CheckpointError, match="not a glocalk model"):
        GLocalKRecommender.load(saved)
    _edit_meta(saved, kind="glocalk-model", format_version=99)
    with pytest.raises(CheckpointError, match="unsupported format_version 99"):
        GLocalKRecommender.load(saved)
    _edit_meta(saved, format_version=1, user_ids=meta["user_ids"][:-1])
    with pytest.raises(CheckpointError, match="user ids for a"):
        GLocalKRecommender.load(saved)
    _edit_meta(saved, user_ids=meta["user_ids"], hyperparameters={**meta["hyperparameters"], "n_hid": 9})
    with pytest.raises(CheckpointError, match="do not fit the model"):
        GLocalKRecommender.load(saved)
    _edit_meta(saved, hyperparameters={**meta["hyperparameters"], "n_hid": 8, "warp_drive": 1})
    with pytest.raises(CheckpointError, match="incompatible hyperparameters.*warp_drive"):
        GLocalKRecommender.load(saved)
    _edit_meta(saved, hyperparameters=meta["hyperparameters"], members=None)
    with pytest.raises(CheckpointError, match="incompatible or corrupt"):
        GLocalKRecommender.load(saved)


def test_tampered_training_matrix(saved):
    tensors = load_file(str(saved / "weights.safetensors"))
    tensors["input.data"] = tensors["input.data"] + 1
    save_file(tensors, str(saved / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="does not match the fingerprint"):
        GLocalKRecommender.load(saved)
    del tensors["input.indptr"]
    save_file(tensors, str(saved / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="training matrix is missing"):
        GLocalKRecommender.load(saved)


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_not_executed(saved, tmp_path):
    marker = tmp_path / "pwned"
    weights = saved / "weights.safetensors"
    for payload in ("pickle", "torch"):
        if payload == "pickle":
            weights.write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
        else:
            torch.save({"w": _Evil(str(marker))}, weights)
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            GLocalKRecommender.load(saved)
        assert not marker.exists()
    with pytest.raises(FileNotFoundError):  # the payload is real: unpickling it would create the file
        pickle.loads(pickle.dumps(_Evil(str(tmp_path / "no-such-dir" / "x"))))


def test_save_is_atomic(tmp_path, fitted, monkeypatch):
    target = fitted.save(tmp_path / "m")
    before = (target / "model.json").read_text()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("glocalk.store.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        fitted.save(target)
    assert (target / "model.json").read_text() == before  # the old model is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no half-written sibling left
    GLocalKRecommender.load(target)
    shutil.rmtree(target)
    with pytest.raises(KeyboardInterrupt):
        fitted.save(target)
    assert not target.exists()


def test_rating_matrix_roundtrip_keeps_validation(tmp_path, data):
    train, _ = data
    rm = RatingMatrix(to_rating_matrix(read_ratings(train)).train).with_validation(0.2, seed=1)
    model = GLocalKRecommender(**TINY).fit(rm)
    model.save(tmp_path / "m")
    loaded = GLocalKRecommender.load(tmp_path / "m")
    assert loaded._seen.nnz == rm.train.nnz + rm.val.nnz
    assert np.array_equal(loaded._members[0].h, model._members[0].h)
