"""The benchmark harness: shared honest splits, outputs, aggregation, ensembles, resume, CLI."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

import glocalk.compare.harness as bench
from glocalk.baselines import entries
from glocalk.compare.harness import MODELS, BenchmarkConfig, benchmark_split, run_benchmark
from glocalk.data.matrix import RatingMatrix
from glocalk.data.synthetic import BiasSignal, bias_ratings
from glocalk.errors import CheckpointError, ConfigError, DataError
from glocalk.metrics import evaluate
from glocalk.presets import GLOCALK_VARIANTS, LABELS

TINY = {"n_hid": 8, "epoch_p": 2, "epoch_f": 2, "iter_p": 2, "iter_f": 2}
BASELINE_OPTIONS = {"biased-mf": {"factors": 4, "epochs": 4, "regs": (0.05, 0.1)}, "biases": {"sweeps": 4}}
SEEDS = [1, 2]


def tiny_data(seed: int = 0) -> RatingMatrix:
    """60 items x 50 users, biases plus a rank-2 signal, 1..5; 20% of the ratings are test."""
    return bias_ratings(60, 50, 0.35, seed, BiasSignal(item_sd=0.8, user_sd=0.5, noise=0.3, rank=2, factor_sd=0.6))


def benchmark(data: RatingMatrix, models: list[str], seeds: list[int], val_frac: float, out, params: dict | None = None,
        **options) -> dict:
    """run_benchmark with the configuration's first fields positional, as the tests read best."""
    return run_benchmark(data, BenchmarkConfig(models=list(models), seeds=list(seeds), val_frac=val_frac, out_dir=out,
                                               params_overrides=params, **options))


@pytest.fixture(scope="module")
def data() -> RatingMatrix:
    return tiny_data()


@pytest.fixture(scope="module")
def bench_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = benchmark(data, list(MODELS), SEEDS, 0.1, out, TINY, ensemble=True,
                            baseline_options=BASELINE_OPTIONS, command=["test"])
    return out, results


def test_validation_split_never_includes_test_entries(data):
    train_cells = set(zip(*data.train.nonzero(), strict=True))
    test_cells = set(zip(*data.test.nonzero(), strict=True))
    for seed in SEEDS:
        split = benchmark_split(data, 0.1, seed)
        val_cells = set(zip(*split.val.nonzero(), strict=True))
        assert val_cells and not val_cells & test_cells
        assert val_cells | set(zip(*split.train.nonzero(), strict=True)) == train_cells
        assert (split.test != data.test).nnz == 0
    a, b = benchmark_split(data, 0.1, 1), benchmark_split(data, 0.1, 1)
    assert (a.val != b.val).nnz == 0  # every model of a seed sees the same split


def test_outputs_are_written(bench_run):
    out, results = bench_run
    for name in ("results.json", "table.md", "curves.png", "bars.png"):
        assert (out / name).stat().st_size > 0
    for name in ("curves.png", "bars.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["complete"] and len(on_disk["runs"]) == len(MODELS) * len(SEEDS)
    assert on_disk["models"] == list(MODELS) and on_disk["seeds"] == SEEDS
    for model in MODELS:
        for seed in SEEDS:
            assert (out / "runs" / model / f"seed-{seed}.jsonl").exists()
            assert (out / "predictions" / f"{model}-seed-{seed}.npy").exists()


def _row(table: str, label: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in the table")


def test_table_numbers_are_the_means_of_the_seed_results(bench_run):
    out, results = bench_run
    table = (out / "table.md").read_text()
    for model in MODELS:
        runs = [r for r in results["runs"] if r["model"] == model]
        assert [r["seed"] for r in runs] == SEEDS
        cells = _row(table, LABELS[model])
        for col, key in ((1, "rmse"), (2, "mae"), (3, "ndcg")):
            values = np.array([r["val_selected"][key] for r in runs])
            assert results["summary"][model]["mean"][key] == pytest.approx(values.mean())
            assert results["summary"][model]["std"][key] == pytest.approx(values.std(ddof=1))
            assert cells[col] == f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
        wall = np.array([r["wall_time_s"] for r in runs])
        assert cells[6] == f"{wall.mean():.1f} ± {wall.std(ddof=1):.1f}"
        if model in GLOCALK_VARIANTS:
            best = np.array([r["best"]["rmse"] for r in runs])
            assert cells[4].startswith(f"{best.mean():.4f}")
        else:
            assert cells[4] == "–"


def test_the_selected_epoch_is_the_validation_best_and_its_test_metrics_are_reported(bench_run, data):
    out, results = bench_run
    items, users, truth = entries(data.test)
    for run in results["runs"]:
        hist = run["history"]
        pool = [r for r in hist if r["stage"] == 2] or hist
        chosen = min(pool, key=lambda r: r["val_rmse"])
        assert run["val_selected"]["epoch"] == chosen["epoch"]
        assert run["val_selected"]["rmse"] == pytest.approx(chosen["test_rmse"])
        # The saved predictions are those of the selected model.
        pred = np.load(out / "predictions" / f"{run['model']}-seed-{run['seed']}.npy")
        assert evaluate(pred, truth, users, items, data.rating_scale)["rmse"] == pytest.approx(
            run["val_selected"]["rmse"], rel=1e-5)


def test_ablation_configurations(bench_run):
    _, results = bench_run
    runs = {r["model"]: r for r in results["runs"] if r["seed"] == SEEDS[0]}
    autorec = runs["i-autorec"]["info"]["model_config"]
    assert autorec["local_kernel"] is False and runs["i-autorec"]["info"]["train_config"]["epoch_f"] == 0
    assert {r["stage"] for r in runs["i-autorec"]["history"]} == {1}
    assert {r["stage"] for r in runs["glocalk-pretrain"]["history"]} == {1}
    assert runs["glocalk-pretrain"]["info"]["model_config"]["local_kernel"] is True
    assert runs["glocalk-no-gk"]["info"]["model_config"]["global_kernel"] is False
    for name in ("glocalk-no-gk", "glocalk"):
        assert [r["stage"] for r in runs[name]["history"]] == [1, 1, 2, 2]
    assert runs["glocalk"]["info"]["model_config"]["n_hid"] == TINY["n_hid"]


def test_ensemble_is_the_mean_of_the_seeds_predictions(bench_run, data):
    out, results = bench_run
    items, users, truth = entries(data.test)
    assert set(results["ensembles"]) == {"biased-mf", *GLOCALK_VARIANTS}
    for model, ens in results["ensembles"].items():
        preds = [np.load(out / "predictions" / f"{model}-seed-{s}.npy") for s in SEEDS]
        expected = evaluate(np.mean(preds, axis=0), truth, users, items, data.rating_scale)
        assert ens["n_models"] == len(SEEDS)
        assert ens["rmse"] == pytest.approx(expected["rmse"])
        cells = _row((out / "table.md").read_text(), f"{LABELS[model]}, ensemble of 2 seeds")
        assert cells[1] == f"{expected['rmse']:.4f}"


def test_resume_reuses_finished_runs(bench_run, data, monkeypatch):
    out, results = bench_run

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(bench, "run_glocalk", fail)
    monkeypatch.setattr(bench, "run_baseline", fail)
    again = benchmark(data, list(MODELS), SEEDS, 0.1, out, TINY, ensemble=True,
                          baseline_options=BASELINE_OPTIONS, resume=True, plots=False)
    assert again["summary"] == results["summary"]
    with pytest.raises(bench.TrainingError, match="cannot resume"):
        benchmark(data, list(MODELS), SEEDS, 0.2, out, TINY, resume=True, plots=False)


def test_bad_arguments(data, tmp_path):
    with pytest.raises(ConfigError, match="unknown model"):
        benchmark(data, ["svd"], [1], 0.1, tmp_path)
    with pytest.raises(ConfigError, match="unknown hyperparameters"):
        benchmark(data, ["glocalk"], [1], 0.1, tmp_path, {"lambda_3": 1.0})


def test_cli_benchmark_quick(monkeypatch, tmp_path, capsys):
    import glocalk.data.datasets
    from glocalk.cli.app import main

    monkeypatch.setattr(glocalk.data.datasets, "load_dataset", lambda name, data_dir=None, download=False: tiny_data())
    out = tmp_path / "cli"
    rc = main(["benchmark", "--dataset", "tiny", "--quick", "--models", "global-mean", "biases", "glocalk",
               "--seed", "1", "2", "--n-hid", "8", "--iter-p", "2", "--iter-f", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| Global mean |" in printed and "Quick smoke run" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] and results["params"]["n_hid"] == 8 and results["params"]["epoch_p"] == 2
    assert results["baseline_options"]["biases"] == {"sweeps": 3}
    assert re.search(r"\| GLocal-K \| \d\.\d{4} ± ", printed)


def test_shared_pretraining_equals_a_separate_pretraining_run(bench_run, data, tmp_path):
    _, results = bench_run
    shared = next(r for r in results["runs"] if r["model"] == "glocalk-pretrain" and r["seed"] == SEEDS[0])
    assert shared["info"]["shared_with"] == "glocalk"
    alone = benchmark(data, ["glocalk-pretrain"], SEEDS[:1], 0.1, tmp_path, TINY, plots=False)["runs"][0]
    assert "shared_with" not in alone["info"]
    assert [r["epoch"] for r in alone["history"]] == [r["epoch"] for r in shared["history"]]
    for a, b in zip(alone["history"], shared["history"], strict=True):
        assert a["val_rmse"] == pytest.approx(b["val_rmse"], rel=1e-5)
        assert a["test_rmse"] == pytest.approx(b["test_rmse"], rel=1e-5)
    assert alone["val_selected"]["epoch"] == shared["val_selected"]["epoch"]
    assert alone["val_selected"]["rmse"] == pytest.approx(shared["val_selected"]["rmse"], rel=1e-5)


def test_interrupted_glocalk_run_continues_from_its_last_epoch(data, tmp_path):
    """The benchmark's side of resume (the runner's is tested in test_protocol.py): its state folder
    is used, only the missing epoch is trained, and the state is removed once the run is recorded."""

    class Interrupt(Exception):
        pass

    def stop_after_epoch_3(model, seed, rec):
        if rec["epoch"] == 3:
            raise Interrupt

    models = ["glocalk", "glocalk-pretrain"]
    with pytest.raises(Interrupt):
        benchmark(data, models, SEEDS[:1], 0.1, tmp_path, TINY, plots=False, on_epoch=stop_after_epoch_3)
    assert (tmp_path / "state" / f"glocalk-seed-{SEEDS[0]}").is_dir()
    trained = []
    runs = benchmark(data, models, SEEDS[:1], 0.1, tmp_path, TINY, plots=False, resume=True,
                     on_epoch=lambda m, s, rec: trained.append(rec["epoch"]))["runs"]
    assert trained == [4] and [r["epoch"] for r in runs[0]["history"]] == [1, 2, 3, 4]
    assert not (tmp_path / "state").exists()  # cleaned up when done
    # The derived pre-training run kept its selected weights across the interrupt: it has predictions.
    pre = next(r for r in runs if r["model"] == "glocalk-pretrain")
    items, users, truth = entries(data.test)
    preds = np.load(tmp_path / "predictions" / f"glocalk-pretrain-seed-{SEEDS[0]}.npy")
    assert pre["predictions"] is True
    assert evaluate(preds, truth, users, items, data.rating_scale)["rmse"] == pytest.approx(
        pre["val_selected"]["rmse"], rel=1e-5)


@pytest.mark.parametrize("layout", ["runner", "before-the-runner"])
def test_from_train_reuses_glocalk_train_runs_without_training(data, tmp_path, monkeypatch, layout):
    from glocalk.protocol import run_experiment
    from glocalk.store import load_dir, save_dir

    train_dir = tmp_path / "train"
    summary = run_experiment(data, TINY, SEEDS[:1], train_dir, val_frac=0.1, command=["test"])
    state = train_dir / f"seed-{SEEDS[0]}" / "state" / "last"
    if layout == "before-the-runner":  # glocalk train's state had no finished flag nor validation fingerprint
        tensors, meta = load_dir(state)
        save_dir(state, tensors, {k: v for k, v in meta.items() if k not in ("finished", "val_fingerprint")})
    state_file = state / "weights.safetensors"
    before = state_file.read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("an epoch was trained although the train run had finished")

    monkeypatch.setattr(sys.modules["glocalk.train"], "lbfgs_epoch", no_training)
    results = benchmark(data, ["glocalk", "glocalk-pretrain"], SEEDS[:1], 0.1, tmp_path / "bench", TINY,
                            plots=False, ensemble=True, from_train=train_dir)
    run = next(r for r in results["runs"] if r["model"] == "glocalk")
    expected = summary["runs"][0]["val_selected"]
    assert run["val_selected"]["epoch"] == expected["epoch"]
    assert run["val_selected"]["rmse"] == pytest.approx(expected["rmse"], rel=1e-9)
    assert run["info"]["continued_from"].endswith("state")
    # The handed-over predictions are the selected epoch's model: their RMSE is the logged one.
    items, users, truth = entries(data.test)
    preds = np.load(tmp_path / "bench" / "predictions" / f"glocalk-seed-{SEEDS[0]}.npy")
    assert evaluate(preds, truth, users, items, data.rating_scale)["rmse"] == pytest.approx(expected["rmse"], rel=1e-5)
    # Pre-training: metrics from the restored history, but no weights of its selected epoch survive.
    pre = next(r for r in results["runs"] if r["model"] == "glocalk-pretrain")
    logged = [json.loads(line) for line in (train_dir / f"seed-{SEEDS[0]}" / "epochs.jsonl").read_text().splitlines()]
    stage1 = [r for r in logged if r["stage"] == 1]
    best_val = min(stage1, key=lambda r: r["val_rmse"])
    assert pre["val_selected"]["epoch"] == best_val["epoch"] and pre["predictions"] is False
    assert state_file.read_bytes() == before  # the train run's state is copied, never modified

    with pytest.raises(CheckpointError, match="cannot resume"):
        benchmark(data, ["glocalk"], SEEDS[:1], 0.1, tmp_path / "other", {**TINY, "lambda_2": 3.0},
                      plots=False, from_train=train_dir)


def test_tabulate_only_trains_nothing_and_reports_each_rows_seeds(bench_run, data, tmp_path, monkeypatch):
    import shutil

    out, results = bench_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # Keep only seed 1 of GLocal-K: its row must then average that one seed.
    doc = json.loads((copy / "results.json").read_text())
    doc["runs"] = [r for r in doc["runs"] if not (r["model"] == "glocalk" and r["seed"] == SEEDS[1])]
    (copy / "results.json").write_text(json.dumps(doc))

    def fail(*args, **kwargs):
        raise AssertionError("--tabulate-only trained a model")

    monkeypatch.setattr(bench, "run_glocalk", fail)
    monkeypatch.setattr(bench, "run_baseline", fail)
    again = benchmark(data, ["biases", "glocalk"], SEEDS, 0.1, copy, TINY, ensemble=True,
                          baseline_options=BASELINE_OPTIONS, train=False, plots=False)
    glocalk_seed1 = next(r for r in results["runs"] if r["model"] == "glocalk" and r["seed"] == SEEDS[0])
    assert again["summary"]["glocalk"]["n_seeds"] == 1
    assert again["summary"]["glocalk"]["mean"]["rmse"] == glocalk_seed1["val_selected"]["rmse"]
    assert again["summary"]["biases"] == results["summary"]["biases"]
    assert "glocalk" not in again["ensembles"]  # one member is no ensemble
    table = (copy / "table.md").read_text()
    assert _row(table, "GLocal-K")[-1] == str(SEEDS[0])
    assert _row(table, "User + item biases")[-1] == ", ".join(map(str, SEEDS))
    with pytest.raises(DataError, match="nothing to tabulate"):
        benchmark(data, ["biases"], SEEDS, 0.1, tmp_path / "empty", TINY, train=False)


def test_a_resumed_invocation_on_other_models_keeps_the_finished_runs(data, tmp_path):
    first = benchmark(data, ["biases"], SEEDS, 0.1, tmp_path, TINY, baseline_options=BASELINE_OPTIONS,
                          plots=False)
    benchmark(data, ["global-mean"], SEEDS[:1], 0.1, tmp_path, TINY, baseline_options=BASELINE_OPTIONS,
                  resume=True, plots=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert {(r["model"], r["seed"]) for r in on_disk["runs"]} == {("biases", 1), ("biases", 2), ("global-mean", 1)}
    both = benchmark(data, ["global-mean", "biases"], SEEDS, 0.1, tmp_path, TINY,
                         baseline_options=BASELINE_OPTIONS, train=False, plots=False)
    assert both["summary"]["biases"] == first["summary"]["biases"]
    assert both["summary"]["global-mean"]["seeds"] == [1]


def test_cli_benchmark_rejects_patience_zero_before_any_output(monkeypatch, tmp_path, capsys):
    """Defect 3 at the command line: --patience 0 once silently stopped fine-tuning after one epoch."""
    import glocalk.data.datasets
    from glocalk.cli.app import main

    monkeypatch.setattr(glocalk.data.datasets, "load_dataset", lambda name, data_dir=None, download=False: tiny_data())
    out = tmp_path / "cli"
    assert main(["benchmark", "--dataset", "tiny", "--models", "glocalk", "--patience", "0", "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--patience" in err and "must be an integer >= 1" in err
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--tabulate-only"], "nothing to tabulate"),
    (["--from-train", "no-such-folder"], "--from-train: no such folder"),
])
def test_cli_benchmark_input_errors_are_messages_and_create_nothing(monkeypatch, tmp_path, capsys, flags, message):
    """A missing --from-train folder or nothing to tabulate is the user's to fix: exit 2 and a message, no folder."""
    import glocalk.data.datasets
    from glocalk.cli.app import main

    monkeypatch.setattr(glocalk.data.datasets, "load_dataset", lambda name, data_dir=None, download=False: tiny_data())
    out = tmp_path / "cli"
    assert main(["benchmark", "--dataset", "tiny", "--models", "biases", "--out", str(out), "--quiet",
                 *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
