"""Time per loss + gradient, dense vs sparse, on the three paper datasets: a 1-minute idle-machine check.

    python benchmarks/idle_passes.py [--data-dir ../shared/data]

Median of 3 passes after a warm-up, paper presets, torch's default threads; prints seconds. Each
pass is timed as in run.py's passes section (``perf.workers.one_pass``), in one process.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from perf.workers import one_pass

from glocalk.data.datasets import load_dataset
from glocalk.inputs import TrainingInput, prepare_input
from glocalk.model import GLocalK
from glocalk.presets import preset, split_config

DATASETS = ("ml-100k", "douban", "ml-1m")


def pass_time(model: GLocalK, data: TrainingInput, stage: int, reps: int = 3) -> float:
    """Median seconds of ``reps`` loss + gradient evaluations of one stage, after one untimed."""
    params = model.network_parameters() if stage == 1 else model.finetune_parameters()
    cpu = torch.device("cpu")
    one_pass(model, data, stage, params, cpu)  # warm-up
    return statistics.median(one_pass(model, data, stage, params, cpu)[0] for _ in range(reps))


def dataset_times(name: str, data_dir: str | None) -> dict[str, float]:
    """Sparse and dense pass times of both stages on one dataset, at the same initial weights."""
    d = load_dataset(name, data_dir)
    model_config, _ = split_config(preset(name))
    torch.manual_seed(0)
    model = GLocalK(d.n_items, d.n_users, model_config)
    out = {}
    for path in ("sparse", "dense"):
        data = prepare_input(d.train, path == "sparse")
        for stage in (1, 2):
            out[f"{name} {path} stage{stage}"] = pass_time(model, data, stage)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    args = p.parse_args()
    out = {}
    for name in DATASETS:
        out.update(dataset_times(name, args.data_dir))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
