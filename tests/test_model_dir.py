"""Model directories (glocalk.model_dir): round trip, and every corrupt or edited file a CheckpointError
naming the file and the field -- raised before any model is built from it."""

from __future__ import annotations

import json
import pickle
import resource
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from glocalk.data.synthetic import example_ratings
from glocalk.errors import CheckpointError
from glocalk.estimator import GLocalKRecommender
from glocalk.model_dir import load_model

TINY = dict(n_hid=8, n_dim=3, epoch_p=2, epoch_f=2, iter_p=3, iter_f=3, threads=1)



@pytest.fixture(scope="module")
def data():
    return example_ratings(n_users=30, n_items=40, density=0.35, seed=3)


@pytest.fixture(scope="module")
def fitted(data) -> GLocalKRecommender:
    train, test = data
    return GLocalKRecommender("ml-100k", val_frac=0.1, **TINY).fit(train, test=test)


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
    with pytest.raises(CheckpointError, match="hyperparameters.n_hid is 9 but the weights.*have n_hid 8"):
        GLocalKRecommender.load(saved)
    _edit_meta(saved, hyperparameters={**meta["hyperparameters"], "n_hid": 8, "warp_drive": 1})
    with pytest.raises(CheckpointError, match="incompatible hyperparameters.*warp_drive"):
        GLocalKRecommender.load(saved)
    _edit_meta(saved, hyperparameters=meta["hyperparameters"], members=None)
    with pytest.raises(CheckpointError, match="no members"):
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


def test_load_model_reads_what_was_saved(saved, fitted):
    model = load_model(saved)
    assert model.members[0].stage == 2 and model.members[0].epoch == fitted.members_[0]["epoch"]
    assert model.seen.nnz == fitted.model_.seen.nnz and list(model.user_ids) == list(fitted.user_ids_)
    assert model.hyperparameters["n_hid"] == 8 and model.rating_scale == (1.0, 5.0) and model.offset == 0.0


# -- defect 7: every field of model.json is checked before it is used --------------------------------


def _hyper(saved, **changes):
    meta = json.loads((saved / "model.json").read_text())
    return {"hyperparameters": {**meta["hyperparameters"], **changes}}


@pytest.mark.parametrize("edit, message", [
    (lambda s: _hyper(s, dot_scale=float("nan")), r"hyperparameters\.dot_scale must be a finite number, got nan"),
    (lambda s: _hyper(s, lambda_s=-1.0), r"hyperparameters\.lambda_s must be a finite number >= 0"),
    (lambda s: _hyper(s, lambda_2="20"), r"hyperparameters\.lambda_2 must be a finite number"),
    (lambda s: _hyper(s, n_hid=8.0), r"hyperparameters\.n_hid must be an integer >= 1, got 8\.0"),
    (lambda s: _hyper(s, n_layers=0), r"hyperparameters\.n_layers must be an integer >= 1"),
    (lambda s: _hyper(s, n_layers=3), r"hyperparameters\.n_layers is 3 but the weights.*have n_layers 2"),
    (lambda s: _hyper(s, gk_size=2), r"hyperparameters\.gk_size is 2 but the weights.*have gk_size 3"),
    (lambda s: _hyper(s, gk_norm="cube"), r"hyperparameters\.gk_norm must be 'paper' or 'sqrt'"),
    (lambda s: _hyper(s, local_kernel="yes"), r"hyperparameters\.local_kernel must be true or false"),
    (lambda s: _hyper(s, epoch_f=-1), r"hyperparameters\.epoch_f must be an integer >= 0"),
    (lambda s: {"hyperparameters": [1, 2]}, r"hyperparameters must be a JSON object"),
    (lambda s: {"n_items": "40"}, r"n_items must be an integer >= 1, got '40'"),
    (lambda s: {"n_users": True}, r"n_users must be an integer >= 1, got True"),
    (lambda s: {"rating_scale": [5.0, 1.0]}, r"invalid rating scale \[5\.0, 1\.0\]"),
    (lambda s: {"rating_scale": [1.0]}, r"rating_scale must be \[min, max\]"),
    (lambda s: {"rating_scale": [1.0, float("inf")]}, r"rating_scale\[1\] must be a finite number"),
    (lambda s: {"offset": float("nan")}, r"offset must be a finite number, got nan"),
    (lambda s: {"path": "warp"}, r"path must be one of \('dense', 'sparse'\), got 'warp'"),
    (lambda s: {"members": [{"seed": 1, "stage": 2, "epoch": 99}]}, r"members\[0\]\.epoch 99 is beyond the 4 epochs"),
    (lambda s: {"members": [{"seed": 1, "stage": 2, "epoch": 0}]}, r"members\[0\]\.epoch must be an integer >= 1"),
    (lambda s: {"members": [{"seed": 1, "stage": "2", "epoch": 4}]}, r"members\[0\]\.stage must be an integer"),
    (lambda s: {"members": ["x"]}, r"members\[0\] must be a JSON object"),
    (lambda s: {"metrics": "good"}, r"estimator and metrics must be JSON objects"),
    (lambda s: {"estimator": {"unknown": "guess"}}, r"invalid estimator arguments: unknown must be one of"),
])
def test_every_field_is_validated(saved, edit, message):
    _edit_meta(saved, **edit(saved))
    with pytest.raises(CheckpointError, match=message):
        GLocalKRecommender.load(saved)


def test_an_edited_stage_is_refused(saved):
    # Stage 1 would serve the pre-training network (no global kernel): other predictions, no error before.
    meta = json.loads((saved / "model.json").read_text())
    member = meta["members"][0]
    assert member["stage"] == 2 and member["epoch"] > meta["hyperparameters"]["epoch_p"]
    _edit_meta(saved, members=[{**member, "stage": 1}])
    with pytest.raises(CheckpointError, match=r"members\[0\]\.stage is 1 but epoch \d+ is a fine-tuning epoch"):
        GLocalKRecommender.load(saved)
    # An epoch moved into pre-training along with the stage still contradicts the member's epoch log.
    log = meta["history"][str(member["seed"])]
    _edit_meta(saved, members=[{**member, "stage": 1, "epoch": 1}],
               history={str(member["seed"]): [{**r, "stage": 2} if r["epoch"] == 1 else r for r in log]})
    with pytest.raises(CheckpointError, match=r"members\[0\]\.stage 1 differs from its epoch log"):
        GLocalKRecommender.load(saved)


def test_a_huge_dimension_is_refused_before_allocating(saved):
    # n_dim = 2,000,000 would need ~0.7 GB of local-kernel vectors for this 40 x 30 model.
    _edit_meta(saved, **_hyper(saved, n_dim=2_000_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: the peak so far
    with pytest.raises(CheckpointError, match=r"hyperparameters\.n_dim is 2000000 but the weights.*have n_dim 3"):
        GLocalKRecommender.load(saved)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 200_000, f"loading grew the peak memory by {grown / 1e6:.1f} GB before refusing"


def test_weights_of_another_shape_or_type_are_refused(saved):
    tensors = load_file(str(saved / "weights.safetensors"))
    tensors["member0.out.b"] = tensors["member0.out.b"].double()
    save_file(tensors, str(saved / "weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"member 0: weights do not fit.*out\.b is torch\.float64"):
        GLocalKRecommender.load(saved)
    del tensors["member0.out.b"]
    save_file(tensors, str(saved / "weights.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing or unexpected: \['out\.b'\]"):
        GLocalKRecommender.load(saved)



def test_a_dense_execution_too_large_to_build_is_served_sparse(saved, fitted, data, monkeypatch):
    # model.json's "path" cannot make loading build a dense matrix over the limit (1 GiB; 10 entries here).
    _edit_meta(saved, path="dense")
    dense = GLocalKRecommender.load(saved)
    monkeypatch.setattr("glocalk.scoring.CONV_DENSE_MAX_ENTRIES", 10)
    small = GLocalKRecommender.load(saved)
    assert dense.scorer_.execution == "dense" and small.scorer_.execution == "sparse"
    _, test = data
    np.testing.assert_allclose(small.predict(test["user"], test["item"]), dense.predict(test["user"], test["item"]),
                               rtol=0, atol=1e-5)
