"""benchmarks/density.py: GLocal-K's own-data default and the harness's models on the SAME validation
split of each seed; the fallback's answer is the better on validation; finished runs are reused."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from glocalk.data.synthetic import BiasSignal, bias_ratings

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = {"n_hid": 8, "n_dim": 2, "n_layers": 1, "gk_size": 3, "lambda_2": 20.0, "lambda_s": 0.006,
        "iter_p": 2, "iter_f": 2, "epoch_p": 2, "epoch_f": 2, "dot_scale": 1.0}


@pytest.fixture
def density(monkeypatch):
    """The script as a module, its search's candidate 0 made tiny (the ML-100K preset takes minutes)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("density")
    monkeypatch.setattr(module, "base_params", lambda: dict(TINY))
    return module


def test_subsampled_keeps_a_seeded_fraction_and_the_test_set(density):
    data = bias_ratings(60, 50, 0.5, 0)
    half = density.subsampled(data, 0.5)
    kept = set(zip(*half.train.nonzero(), strict=True))
    assert kept <= set(zip(*data.train.nonzero(), strict=True))
    assert 0.4 < half.train.nnz / data.train.nnz < 0.6
    assert (half.test != data.test).nnz == 0
    assert (density.subsampled(data, 0.5).train != half.train).nnz == 0  # seeded: the same draw


def test_default_and_baselines_share_each_seeds_split(density, tmp_path, one_torch_thread):
    data = bias_ratings(60, 50, 0.5, 0, signal=BiasSignal(item_sd=0.8, user_sd=0.5, noise=0.3))
    setup = density.Setup("tiny", [1, 2], ["biases", density.DEFAULT], 0.2, 0.0, 1, tmp_path / "out",
                          tmp_path / "work")
    res = density.run_fraction(data, 0.8, setup)
    sub = density.subsampled(data, 0.8)
    by_seed = {r["seed"]: r for r in res["default_runs"]}
    for seed in (1, 2):
        # The split glocalk train's search and comparison draw (data.with_validation) is the harness's.
        assert by_seed[seed]["train_fingerprint"] == sub.with_validation(0.2, seed=seed).fingerprint()
        assert {s["seed"]: s["train_fingerprint"] for s in res["splits"]}[seed] == by_seed[seed]["train_fingerprint"]
    biases = {r["seed"]: r for r in res["per_seed"]["biases"]}
    for row in res["per_seed"][density.ANSWER]:
        # The comparison's bias model is the harness's biases model on the same ratings: same figures.
        assert row["biases_val_rmse"] == pytest.approx(biases[row["seed"]]["val_rmse"], rel=1e-9)
        assert row["biases_test_rmse"] == pytest.approx(biases[row["seed"]]["rmse"], rel=1e-9)
        default = next(r for r in res["per_seed"][density.DEFAULT] if r["seed"] == row["seed"])
        better = "biases" if row["biases_val_rmse"] < default["val_rmse"] else "glocalk"
        assert row["answer"] == better
        assert row["rmse"] == pytest.approx(row["biases_test_rmse"] if better == "biases" else default["rmse"])
    stored = json.loads((tmp_path / "out" / "0.8" / "results.json").read_text())
    assert stored["complete"] and len(stored["default_runs"]) == 2
    rmse = [r["rmse"] for r in res["per_seed"][density.DEFAULT]]
    assert res["summary"][density.DEFAULT]["rmse"]["mean"] == pytest.approx(np.mean(rmse))


def test_a_rerun_reuses_finished_default_runs_and_tabulates(density, tmp_path, monkeypatch, one_torch_thread):
    data = bias_ratings(40, 30, 0.5, 1)
    setup = density.Setup("tiny", [1], ["biases", density.DEFAULT], 0.2, 0.0, 1, tmp_path / "out", tmp_path / "work")
    first = density.run_fraction(data, 0.9, setup)

    def no_search(*args, **kwargs):
        raise AssertionError("a finished default run was trained again")

    monkeypatch.setattr(density, "search", no_search)
    again = density.run_fraction(data, 0.9, setup)
    assert again["per_seed"] == first["per_seed"]
    table = density.summary_table([again], setup.models)
    assert table.count("\n") == 3 and "| 90% |" in table
    density.plot([again], setup.models, tmp_path / "density.png")
    assert (tmp_path / "density.png").stat().st_size > 0
