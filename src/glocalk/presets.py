"""The paper's hyperparameters (SPEC.md) as data: one preset per benchmark dataset."""

from __future__ import annotations

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


def preset(name: str) -> dict:
    """A copy of the named preset's hyperparameters."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def split_config(params: dict) -> tuple[GLocalKConfig, TrainConfig]:
    """Split a flat dict of hyperparameters into the model and the training configs."""
    unknown = set(params) - set(MODEL_KEYS) - set(TRAIN_KEYS)
    if unknown:
        raise KeyError(f"unknown hyperparameters: {', '.join(sorted(unknown))}")
    return (GLocalKConfig(**{k: v for k, v in params.items() if k in MODEL_KEYS}),
            TrainConfig(**{k: v for k, v in params.items() if k in TRAIN_KEYS}))
