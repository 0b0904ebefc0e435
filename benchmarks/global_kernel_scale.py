"""Why fine-tuning collapses on ML-1M: the global kernel's scale at the start of stage 2.

Loads a training state saved at the end of pre-training (``glocalk train ... --epoch-f 0`` or a
snapshot of ``OUT/seed-N/state/last``), builds the global kernel g for each ``gk_norm`` and
reports, for the first hidden layer, how far the fine-tuning input R_hat = relu(conv2d(R, g))
moves the pre-activations from those the network was pre-trained on (R), and the share of
saturated sigmoid units (|z| > 5, derivative < 0.007).

    python benchmarks/global_kernel_scale.py --dataset ml-1m --state DIR [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json

import torch

from glocalk.data.datasets import load_dataset
from glocalk.inputs import prepare_input
from glocalk.model import GLocalK, GLocalKConfig
from glocalk.store import load_dir


def analyse(dataset: str, state_dir: str, data_dir: str | None) -> list[dict]:
    """Per ``gk_norm``: the global kernel's size and how far R_hat moves the first layer's pre-activations."""
    data = load_dataset(dataset, data_dir=data_dir)
    tensors, meta = load_dir(state_dir)
    inp = prepare_input(data.train, sparse=False)  # dense: the analysis reads R and R_hat whole
    rows = []
    for gk_norm in ("paper", "sqrt"):
        config = GLocalKConfig(**{**meta["model_config"], "gk_norm": gk_norm})
        model = GLocalK(data.n_items, data.n_users, config)
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("selected.")})
        with torch.no_grad():
            weights, _ = model.weights()
            (w1, b1) = weights[0]
            y_dash = model.decode(model.encode(inp.dense, weights), weights)
            g = model.global_kernel(y_dash.mean(1))
            r_hat = model.global_conv(inp.dense, g)
            z_r = inp.dense @ w1 + b1
            z_hat = r_hat @ w1 + b1
        rows.append({
            "dataset": dataset, "gk_norm": gk_norm, "n_items": data.n_items,
            "dot_scale": config.dot_scale, "g_abs_mean": g.abs().mean().item(), "g_sum": g.sum().item(),
            "R_mean_observed": inp.dense[inp.mask > 0].mean().item(),
            "R_hat_mean_observed": r_hat[inp.mask > 0].mean().item(),
            "z_abs_mean_R": z_r.abs().mean().item(), "z_abs_mean_R_hat": z_hat.abs().mean().item(),
            "saturated_R": (z_r.abs() > 5).float().mean().item(),
            "saturated_R_hat": (z_hat.abs() > 5).float().mean().item(),
        })
    return rows


def main() -> None:
    """Print one JSON line per ``gk_norm``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--state", required=True, help="a training state directory (weights.safetensors + model.json)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    for row in analyse(args.dataset, args.state, args.data_dir):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
