"""Time per loss + gradient, dense vs sparse, on the three paper datasets: a 1-minute idle-machine check.

    python benchmarks/idle_passes.py [--data-dir ../shared/data]

Median of 3 passes after a warm-up, paper presets, torch's default threads; prints seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from glocalk.data.datasets import load_dataset
from glocalk.inputs import prepare_input
from glocalk.model import GLocalK
from glocalk.presets import preset, split_config


def pass_time(model: GLocalK, data, stage: int, reps: int = 3) -> float:
    model.zero_grad()
    model.loss(data, stage).backward()  # warm-up
    times = []
    for _ in range(reps):
        model.zero_grad()
        t = time.perf_counter()
        model.loss(data, stage).backward()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data")
    args = p.parse_args()
    out = {}
    for name in ("ml-100k", "douban", "ml-1m"):
        d = load_dataset(name, args.data_dir)
        model_config, _ = split_config(preset(name))
        torch.manual_seed(0)
        model = GLocalK(d.n_items, d.n_users, model_config)
        for path in ("sparse", "dense"):
            data = prepare_input(d.train, path == "sparse")
            for stage in (1, 2):
                out[f"{name} {path} stage{stage}"] = pass_time(model, data, stage)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
