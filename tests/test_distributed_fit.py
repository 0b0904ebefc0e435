"""``glocalk fit`` sharded over processes (``--nproc``, torchrun's environment) against one process.

Two processes (gloo on CPU) fit a tiny ratings file; the reference is the same command in one process
with the same optimiser (glocalk's L-BFGS-B). The sharded loss and gradients equal the single-process
ones up to float32 summation order (tests/test_distributed.py), so the validation and test RMSEs must
agree to 1e-4; rank 0 alone writes, and what it writes is the single-process model directory: a
one-process ``GLocalKRecommender.load`` reads it and its predictions reproduce the test RMSE that the
sharded fit reported, recomputed here from the held-out ratings. Work done on rank 0 alone hands its
result, or its error, to every rank.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from glocalk.cli.app import main
from glocalk.data import splits
from glocalk.data.readers import read_ratings
from glocalk.data.synthetic import example_ratings
from glocalk.distributed import current_group
from glocalk.errors import DataError
from glocalk.estimator import GLocalKRecommender

pytestmark = pytest.mark.filterwarnings("ignore:Sparse")

# lambda_2 = 20 (ML-100K's): a well-posed problem, where float32 rounding differences do not grow over epochs.
TINY = ["--n-hid", "8", "--n-dim", "3", "--lambda-2", "20", "--epoch-p", "2", "--epoch-f", "2", "--iter-p", "3",
        "--iter-f", "3", "--optimizer", "lbfgsb", "--path", "sparse", "--threads", "1", "--quiet"]
MODEL_FILES = ["model.json", "report.json", "weights.safetensors"]


@pytest.fixture(scope="module")
def ratings(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "ratings.csv"
    train, test = example_ratings(n_users=30, n_items=40, density=0.35, seed=5)
    pd.concat([train, test]).to_csv(path, index=False)
    return path


def _fit_twice(ratings: Path, tmp_path: Path, flags: list[str]) -> tuple[dict, dict]:
    """The same fit in one process and in two; their report.json files."""
    base = ["fit", str(ratings), *flags, *TINY]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    for name in ("one", "two"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == MODEL_FILES
        assert not (tmp_path / f"{name}.partial").exists()  # the training state was cleaned up (by rank 0)
    return tuple(json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))


def test_fit_nproc_2_equals_one_process_and_saves_a_single_process_model(ratings, tmp_path, capfd):
    one, two = _fit_twice(ratings, tmp_path, ["--preset", "ml-100k", "--split", "random", "--val-frac", "0.1"])
    assert capfd.readouterr().out.count("written:") == 2  # printed once per command: by rank 0 of the two
    assert two["members"] == one["members"]  # the same epoch selected
    assert two["metrics"]["rmse"] == pytest.approx(one["metrics"]["rmse"], abs=1e-4)
    val = [r["comparison"]["glocalk"]["val"]["rmse"] for r in (one, two)]
    assert val[1] == pytest.approx(val[0], abs=1e-4)
    # A single process loads the sharded fit's model; its predictions on the held-out ratings (recomputed
    # from the split, not read from the report) give the RMSE rank 0 reported, and agree with one process's.
    model, reference = GLocalKRecommender.load(tmp_path / "two"), GLocalKRecommender.load(tmp_path / "one")
    _, test = splits.random_holdout(read_ratings(ratings), 0.1, 1)
    pred = model.predict(test.df[["user", "item"]])
    rmse = float(np.sqrt(np.mean((pred - test.df["rating"].to_numpy()) ** 2)))
    assert rmse == pytest.approx(two["metrics"]["rmse"], abs=1e-6)
    assert np.abs(pred - reference.predict(test.df[["user", "item"]])).max() < 1e-3


def test_fit_nproc_2_runs_the_own_data_default_and_an_ensemble(ratings, tmp_path, capfd):
    # No preset: the search (budget 0: candidate 0 only) on a 10% validation split, the bias model beside
    # it (fitted on rank 0), and a second seed trained with the chosen configuration.
    one, two = _fit_twice(ratings, tmp_path, ["--budget", "0", "--seed", "1", "--ensemble", "2", "--test",
                                              str(ratings)])
    capfd.readouterr()
    assert two["auto"]["chosen"] == one["auto"]["chosen"] and two["hyperparameters"] == one["hyperparameters"]
    assert [m["seed"] for m in two["members"]] == [1, 2] and two["members"] == one["members"]
    for name in ("glocalk", "biases"):
        for split in ("val", "test"):
            assert two["comparison"][name][split]["rmse"] == pytest.approx(
                one["comparison"][name][split]["rmse"], abs=1e-4), (name, split)
    assert two["comparison"]["answer"] == one["comparison"]["answer"]
    assert two["metrics"]["rmse"] == pytest.approx(one["metrics"]["rmse"], abs=1e-4)


def test_fit_checks_the_torchrun_environment_before_any_process_group(ratings, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    base = ["fit", str(ratings), "--preset", "ml-100k", "--out", str(tmp_path / "x"), "--quiet"]
    assert main([*base, "--optimizer", "scipy"]) == 2
    assert "--optimizer scipy cannot be sharded" in capsys.readouterr().err
    assert main([*base, "--optimizer", "lbfgsb", "--nproc", "3"]) == 2
    assert "--nproc 3 disagrees with the 2 processes torchrun started" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def _on_writer_worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    group = current_group()
    try:
        assert group.on_writer(lambda: {"rank": dist.get_rank()}) == {"rank": 0}  # rank 0's answer everywhere

        def fails() -> None:
            raise DataError("rank 0 found a bad file")

        with pytest.raises(DataError, match="rank 0 found a bad file"):
            group.on_writer(fails)
        with pytest.raises(Exception, match=r"rank 0 of 2 failed: KeyError" if rank else "'boom'"):
            group.on_writer(lambda: {}["boom"])  # a bug on rank 0 still frees the others
        Path(out, f"ok-{rank}").write_text("")
    finally:
        dist.destroy_process_group()


def test_work_on_rank_0_hands_its_result_or_its_error_to_every_rank(tmp_path):
    mp.spawn(_on_writer_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    assert (tmp_path / "ok-0").exists() and (tmp_path / "ok-1").exists()
