"""Constants of the performance benchmark, and the epoch-log totals both sides of it compute."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO / "benchmarks" / "run.py"  # workers are fresh processes of this script (--worker)
DATASETS = ("ml-100k", "douban", "ml-1m")
ML10M_SHAPE = (10_681, 69_878)  # (n_items, n_users) of MovieLens 10M
SCALING_NNZ = (100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)
QUICK_SHAPE = (3_706, 6_040)  # --quick: ML-1M's shape, so the smoke check stays small
QUICK_SCALING_NNZ = (30_000, 100_000, 300_000)
TF_ML100K_SECONDS = 171.0  # the original TensorFlow code's ML-100K protocol on this 2-core machine (issue 3)
TARGETS = {"ml1m_protocol_s": 600.0, "rmse_gap": 0.002, "ml100k_speedup": 3.0, "slope": 1.0, "epoch10m_gb": 24.0}
SECTIONS = ("passes", "protocols", "scaling", "epoch10m")
NOTES_BEGIN, NOTES_END = "<!-- BEGIN NOTES -->", "<!-- END NOTES -->"
RESULT_MARK = "@@RESULT@@ "
PHASE_MARK = "@@PHASE@@ "


def stage_sum(history: list[dict], key: str, stage: int) -> float:
    """Sum of ``key`` over the epoch records of one stage."""
    return float(sum(r[key] for r in history if r["stage"] == stage))


def epoch_totals(history: list[dict]) -> dict:
    """Function evaluations and optimiser seconds per stage, and evaluation seconds, of an epoch log."""
    return {"nfev": {"1": int(stage_sum(history, "nfev", 1)), "2": int(stage_sum(history, "nfev", 2))},
            "opt_s": {"1": stage_sum(history, "seconds", 1), "2": stage_sum(history, "seconds", 2)},
            "eval_s": float(sum(r["eval_seconds"] for r in history))}
