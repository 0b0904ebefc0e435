"""benchmarks/perf: the report rendered from a hand-made results dict, and ``run.py --render-only``.

Expected figures are computed by hand from the inputs (ratios, rounding, unit conversions), not
taken from the renderer's own output. Nothing here measures.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
STARTED = "2026-01-01 00:00 UTC"


@pytest.fixture
def perf(monkeypatch):
    """The benchmark's modules (benchmarks/ is a scripts folder, not an installed package)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return {name: importlib.import_module(f"perf.{name}")
            for name in ("derive", "render", "sections", "workers")} | {"run": importlib.import_module("run")}


def stage(median_s: float, loss: float, grad_norm: float, peak_rss_mb: float) -> dict:
    return {"median_s": median_s, "loss": loss, "grad_norm": grad_norm, "peak_rss_mb": peak_rss_mb}


def protocol(train_s: float, best: float, final: float, process_s: float = 20.0) -> dict:
    return {"reps": 1, "process_s": process_s, "total_s": train_s + 1, "train_s": train_s,
            "nfev": {"1": 10, "2": 5}, "best": {"rmse": best, "epoch": 7}, "final": {"rmse": final},
            "peak_rss_mb": 700.0, "rmse_spread": None, "source": "measured"}


def results(with_scaling: bool = True) -> dict:
    """One CPU run: one dataset's passes and protocols, two scaling points, two ML-10M-size epochs."""
    res = {
        "device": "cpu", "command": "python benchmarks/run.py --test", "started": STARTED, "quick": False,
        "args": {"reps": 7, "warmup": 2, "seed": 1}, "elapsed_s": 90.0, "loadavg_end": [0.4, 0.5, 0.6],
        "measured_at": {"passes": STARTED},
        "machine": {"cpu": "Test CPU", "logical_cores": 2, "ram_gb": 7.75, "os": "Linux", "python": "3.11",
                    "torch": "2.x", "numpy": "1.x", "scipy": "1.x", "torch_threads": 2, "mkl": True, "gpu": None,
                    "device": "cpu", "loadavg_start": [0.1, 0.2, 0.3]},
        "passes": {"ml-100k": {
            "dense": {"prepare_s": 0.01, "stages": {"1": stage(0.25, 2.0, 4.0, 1500), "2": stage(0.5, 3.0, 1.0, 1600)}},
            "sparse": {"prepare_s": 0.25, "conv_nnz": 12345, "conv_dense": False,
                       "stages": {"1": stage(0.05, 2.0000004, 4.0, 1400), "2": stage(0.1, 3.0, 1.0, 1450)}}}},
        "protocols": {"ml-100k": {"sparse": protocol(15.0, 0.9, 0.91, process_s=17.1),
                                  "dense": protocol(45.0, 0.9005, 0.9105)}},
        "epoch10m": {
            "synthetic": {"n_items": 10_681, "n_users": 69_878, "n_ratings": 10_000_000},
            "overrides": {"iter_p": 5, "iter_f": 5},
            "analytic": {"n_params": 71_003_787, "scipy_lbfgsb_gb": 15.0, "torch_lbfgs_gb": 6.0},
            "runs": {"scipy": {"peak_rss_mb": 16384.0, "nfev": {"1": 6, "2": 7}, "opt_s": {"1": 100.4, "2": 200.0},
                               "eval_s": 30.0, "load_s": 10.0, "setup_s": 5.0, "final": {"rmse": 0.85}},
                     "torch": {"error": "killed by the watchdog", "watched_peak_rss_mb": 25600.0}}},
    }
    if with_scaling:
        points = [{"target_nnz": n, "nnz": n, "conv_nnz": 3 * n, "prepare_s": 1.0,
                   "stages": {"1": stage(2e-6 * n, 1.0, 1.0, 900), "2": stage(3e-6 * n, 1.0, 1.0, 1000)}}
                  for n in (100_000, 1_000_000)]
        res["scaling"] = {"shape": [10_681, 69_878], "hyperparameters": "ml-1m preset", "points": points}
    return res


def test_parameter_count_matches_hand_count(perf):
    # Layers 69,878 -> 500 -> 500 -> 69,878: W + b + (n_in + n_out) * n_dim each, plus 10,681 3x3 kernels.
    layers = (69_878 * 500 + 500 + 70_378 * 5) + (500 * 500 + 500 + 1_000 * 5) + (500 * 69_878 + 69_878 + 70_378 * 5)
    assert perf["sections"].parameter_count(10_681, 69_878) == layers + 10_681 * 9 == 71_003_787


def test_slope_of_linear_times_is_one(perf):
    res = results()
    fit = perf["sections"].fit_slopes(res["scaling"]["points"])
    assert fit["1"]["all"]["slope"] == pytest.approx(1.0)
    assert fit["2"]["top_decade"]["n_points"] == 2
    assert fit["2"]["all"]["nnz_range"] == [100_000, 1_000_000]


def test_report_shows_the_hand_computed_figures(perf):
    res = results()
    res["scaling"]["fit"] = perf["sections"].fit_slopes(res["scaling"]["points"])
    res["derived"] = perf["derive"].derive(res)
    md = perf["render"].render({"cpu": res}, "my analysis")
    # passes: 250 ms / 50 ms = 5.00; |2.0 - 2.0000004| / 2.0 = 2e-7; equal gradient norms
    assert "| ml-100k | 1 | 250.0 | 50.0 | 5.00 | 1,500 | 1,400 | 2.0e-07 / 0.0e+00 | 0.25 |" in md
    assert "| ml-100k | 2 | 500.0 | 100.0 | 5.00 | 1,600 | 1,450 |" in md
    assert "ml-100k: 12,345 entries, sparse" in md
    # protocols: 45 s / 15 s = 3.00; |0.9005 - 0.9| = 5e-4
    assert "| ml-100k | 3.00 | 5.0e-04 | 5.0e-04 | measured |" in md
    assert "| ml-100k | sparse | 1 | 17.1 | 15.0 | 10 / 5 | 0.9000 (7) | 0.9100 |" in md
    # the ML-100K target: 171 s / 17.1 s = 10x the TF code, limit 3x
    assert "| ML-100K protocol speed-up over the original TF code (171 s) | 10 x | 3 x | yes |" in md
    assert "| ML-1M paper protocol, sparse path (the auto path) | not measured | 600 s | - |" in md
    # scaling: times proportional to nnz
    assert "- stage 1: slope 1.000 over 2 points (100,000-1,000,000); 1.000 over the top decade (2 points)" in md
    assert "| 1,000,000 | 3,000,000 | 2.000 | 3.000 | 1.0 | 1,000 |" in md
    assert "(ML-10M's), power-law" in md and "![time per pass versus nnz](perf_scaling.png)" in md
    # epoch at ML-10M size: 16,384 MB = 16.00 GB, met against 24 GB; the failed run names the watchdog's 25 GB
    assert "| scipy | **16.00 GB RSS** | 6, 100 | 7, 200 | 30 | 15 | 0.8500 |" in md
    assert "| torch | failed: killed by the watchdog (watchdog saw 25.0 GB) |" in md
    assert "SciPy L-BFGS-B, as the paper: peak memory | 16 GB | 24 GB | yes |" in md
    assert "71,003,787 parameters" in md and "### One training epoch at ML-10M size\n" in md
    # the frame: machine, duration, no GPU run, the notes kept between the markers
    assert "| CPU | Test CPU, 2 logical cores |" in md and "took 1.5 min" in md
    assert "No GPU was at hand" in md
    assert md.endswith("<!-- BEGIN NOTES -->\nmy analysis\n<!-- END NOTES -->\n")


def test_render_only_rewrites_report_from_results_and_keeps_notes(perf, tmp_path):
    out = tmp_path / "PERFORMANCE.md"
    out.write_text("old report\n<!-- BEGIN NOTES -->\nkept analysis\n<!-- END NOTES -->\n")
    (tmp_path / "perf_results.json").write_text(json.dumps({"cpu": results(with_scaling=False)}))
    assert perf["run"].main(["--render-only", "--out", str(out)]) == 0
    md = out.read_text()
    assert "| ml-100k | 3.00 | 5.0e-04 | 5.0e-04 | measured |" in md
    assert "<!-- BEGIN NOTES -->\nkept analysis\n<!-- END NOTES -->" in md and "old report" not in md
    derived = json.loads((tmp_path / "perf_results.json").read_text())["cpu"]["derived"]
    assert derived["pass_ratio"]["ml-100k"] == {"1": pytest.approx(5.0), "2": pytest.approx(5.0)}


def test_render_only_without_results_names_the_file(perf, tmp_path):
    with pytest.raises(SystemExit, match="perf_results.json does not exist"):
        perf["run"].main(["--render-only", "--out", str(tmp_path / "PERFORMANCE.md")])


def passes_spec(path: str) -> dict:
    synthetic = {"n_items": 30, "n_users": 40, "n_ratings": 400, "test_frac": 0.1, "seed": 0}
    return {"kind": "passes", "device": "cpu", "threads": None, "seed": 1, "data_dir": None, "optimizer": "scipy",
            "synthetic": synthetic, "preset": "ml-1m", "path": path, "stages": [1, 2], "reps": 2, "warmup": 0}


def worker_result(perf, capsys, spec: dict) -> dict:
    with torch.random.fork_rng():
        perf["workers"].worker_main(spec)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("@@RESULT@@ ")]
    assert len(lines) == 1
    return json.loads(lines[0].removeprefix("@@RESULT@@ "))


def test_passes_worker_reports_the_format_and_equal_losses_on_both_paths(perf, capsys, one_torch_thread):
    sparse = worker_result(perf, capsys, passes_spec("sparse"))
    dense = worker_result(perf, capsys, passes_spec("dense"))
    assert set(sparse) == {"shape", "nnz", "load_s", "prepare_s", "rss_import_mb", "rss_setup_mb", "threads",
                           "loadavg_start", "stages", "conv_nnz", "conv_dense", "loadavg_end"}
    assert sparse["shape"] == [30, 40] and set(dense) == set(sparse) - {"conv_nnz", "conv_dense"}
    for stage in ("1", "2"):
        rec = sparse["stages"][stage]
        assert set(rec) == {"times_s", "median_s", "min_s", "loss", "grad_norm", "lbfgs_io_s", "peak_rss_mb"}
        assert len(rec["times_s"]) == 2 and rec["min_s"] == min(rec["times_s"]) > 0
        # same seed, same weights, same mathematics: the two paths agree to float32 precision
        assert rec["loss"] == pytest.approx(dense["stages"][stage]["loss"], rel=1e-5)
        assert rec["grad_norm"] == pytest.approx(dense["stages"][stage]["grad_norm"], rel=1e-4)


def reused_run(tmp_path: Path, hyperparameters: dict) -> Path:
    """A finished ``glocalk train`` folder: summary.json and seed-1/epochs.jsonl, 2 evaluations per
    stage-1 epoch (0.5 s), 3 per stage-2 epoch (0.25 s), 0.1 s evaluation each."""
    p, f = hyperparameters["epoch_p"], hyperparameters["epoch_f"]
    epochs = [{"epoch": i, "stage": 1, "nfev": 2, "seconds": 0.5, "eval_seconds": 0.1} for i in range(p)]
    epochs += [{"epoch": p + i, "stage": 2, "nfev": 3, "seconds": 0.25, "eval_seconds": 0.1} for i in range(f)]
    (tmp_path / "seed-1").mkdir()
    (tmp_path / "seed-1" / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    run = {"seed": 1, "path": "sparse", "wall_time_s": 50.0, "train_time_s": 45.0, "best": {"rmse": 0.9},
           "final": {"rmse": 0.91}, "epoch_log": "seed-1/epochs.jsonl"}
    summary = {"dataset": "ml-100k", "hyperparameters": hyperparameters, "device": "cpu", "runs": [run]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_reused_run_sums_its_epoch_log(perf, tmp_path):
    hp = {**perf["sections"].preset("ml-100k"), "device": "cpu"}
    rec = perf["sections"].load_reused(str(reused_run(tmp_path, hp)), "ml-100k", "sparse", 1, "cpu")
    p, f = hp["epoch_p"], hp["epoch_f"]
    assert rec["nfev"] == {"1": 2 * p, "2": 3 * f} and rec["epochs"] == p + f
    assert rec["opt_s"] == {"1": pytest.approx(0.5 * p), "2": pytest.approx(0.25 * f)}
    assert rec["eval_s"] == pytest.approx(0.1 * (p + f)) and rec["setup_s"] == pytest.approx(5.0)
    assert rec["source"].startswith(f"reused: {tmp_path / 'summary.json'} (seed 1,")


def test_reused_run_with_other_hyperparameters_is_refused(perf, tmp_path):
    hp = {**perf["sections"].preset("ml-100k"), "device": "cpu", "n_hid": 7}
    with pytest.raises(SystemExit, match="summary.json did not use the paper preset.*n_hid"):
        perf["sections"].load_reused(str(reused_run(tmp_path, hp)), "ml-100k", "sparse", 1, "cpu")
