"""The paper's facts as data, once: hyperparameters (SPEC.md), published results, ablations, labels."""

from __future__ import annotations

from glocalk.errors import ConfigError
from glocalk.model import GLocalKConfig
from glocalk.train import TrainConfig

_COMMON = {"n_hid": 500, "n_dim": 5, "n_layers": 2, "gk_size": 3}

PRESETS: dict[str, dict] = {
    "ml-100k": {**_COMMON, "lambda_2": 20.0, "lambda_s": 0.006, "iter_p": 5, "iter_f": 5,
                "epoch_p": 30, "epoch_f": 60, "dot_scale": 1.0},
    "ml-1m": {**_COMMON, "lambda_2": 70.0, "lambda_s": 0.018, "iter_p": 50, "iter_f": 10,
              "epoch_p": 20, "epoch_f": 30, "dot_scale": 0.5},
    "douban": {**_COMMON, "lambda_2": 10.0, "lambda_s": 0.022, "iter_p": 5, "iter_f": 5,
               "epoch_p": 20, "epoch_f": 60, "dot_scale": 2.0},
}

MODEL_KEYS = tuple(GLocalKConfig.__dataclass_fields__)
TRAIN_KEYS = tuple(TrainConfig.__dataclass_fields__)

# GLocal-K as published, best fine-tuning epoch chosen on the test set (SPEC.md, "Reported results").
# RMSE: the paper's results table; MAE and NDCG: the authors' repository README (usydnlp/Glocal_K).
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "ml-100k": {"rmse": 0.8889, "mae": 0.6950, "ndcg": 0.9053},
    "ml-1m": {"rmse": 0.8227, "mae": 0.6421, "ndcg": 0.9288},
    "douban": {"rmse": 0.7208, "mae": 0.5622, "ndcg": 0.9435},
}
# The one caption of those numbers in every table (benchmark table.md, glocalk report).
PAPER_CAPTION = "GLocal-K as published (Han et al. 2021, Table 2; best test epoch)"

# Ablation switches of each GLocal-K family member, applied over the preset (glocalk benchmark).
GLOCALK_VARIANTS: dict[str, dict] = {
    "i-autorec": {"local_kernel": False, "epoch_f": 0},
    "glocalk-pretrain": {"epoch_f": 0},
    "glocalk-no-gk": {"global_kernel": False},
    "glocalk": {},
}
# Display names of the models in tables and plots (baselines first, then the GLocal-K family).
LABELS: dict[str, str] = {
    "global-mean": "Global mean",
    "biases": "User + item biases",
    "biased-mf": "Biased MF",
    "i-autorec": "I-AutoRec (no local kernel, no fine-tuning)",
    "glocalk-pretrain": "GLocal-K, pre-training only",
    "glocalk-no-gk": "GLocal-K without the global kernel",
    "glocalk": "GLocal-K",
}


def preset(name: str) -> dict:
    """A copy of the named preset's hyperparameters."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def split_config(params: dict) -> tuple[GLocalKConfig, TrainConfig]:
    """Split a flat dict of hyperparameters into the model and the training configs."""
    unknown = set(params) - set(MODEL_KEYS) - set(TRAIN_KEYS)
    if unknown:
        raise ConfigError(f"unknown hyperparameters: {', '.join(sorted(unknown))}")
    return (GLocalKConfig(**{k: v for k, v in params.items() if k in MODEL_KEYS}),
            TrainConfig(**{k: v for k, v in params.items() if k in TRAIN_KEYS}))
