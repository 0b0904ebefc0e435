"""Fold-in quality (issue 12): new users and new items scored without retraining, against retraining.

Protocol (one dataset, one kind): all of the dataset's ratings (for ML-100K u1.base + u1.test);
a seeded 10% of the users (``--kind users``) or of the items (``--kind items``) is held out entirely.
GLocal-K is trained on the rest (``base``); each held-out user's (item's) ratings are shuffled
(seeded) and split in halves: the first half is folded in (``GLocalKRecommender.fold_in``), the
second half is scored. References on the same second halves:

- ``retrained``: GLocal-K trained with the same settings and seed on the rest PLUS the first halves;
- ``bias_fold_in``: the user + item bias model of the base model (the unknown-id baseline, regularised
  10, 15 sweeps) with the new biases folded in the same way (``glocalk.fold_in.fold_biases``);
- ``bias_retrained``: that bias model fitted on the rest plus the first halves.

Predictions are clipped to the rating scale. Second-half pairs the folded-in model cannot score (an
item only held-out users rated is skipped by fold-in: nothing describes it) are left out for every
model and counted (``n_not_scored``). ``ms_per_user`` (or per item) is the fold-in's wall time over
the held-out count, after a warm-up fold-in of one of them (first use of torch's optimiser imports code).
The load average of the shared machine is recorded beside the figures.

    python benchmarks/fold_in.py --dataset ml-100k --kind users --threads 1
    python benchmarks/fold_in.py --dataset ml-100k --kind items --threads 1
    python benchmarks/fold_in.py --summary          # docs/benchmarks/fold_in/summary.md from the JSON files

Shortened protocols (``--epoch-p``, ``--epoch-f``, ``--iter-p``, ``--iter-f``, ``--n-hid``) are recorded in
the JSON and the summary beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from glocalk.data.datasets import load_dataset
from glocalk.estimator import GLocalKRecommender
from glocalk.metrics import mae, rmse
from glocalk.store import versions, write_json_atomic

OUT = Path("docs/benchmarks/fold_in")
SHORTENING = ("n_hid", "epoch_p", "epoch_f", "iter_p", "iter_f")


def all_ratings(name: str, data_dir: str | None) -> pd.DataFrame:
    """Every rating of the dataset (its train and test parts) as user, item, rating with raw ids."""
    data = load_dataset(name, data_dir)
    frames = []
    for m in (data.train, data.test):
        coo = m.tocoo()
        frames.append(pd.DataFrame({"user": np.asarray(data.user_ids)[coo.col],
                                    "item": np.asarray(data.item_ids)[coo.row], "rating": coo.data.astype(np.float64)}))
    return pd.concat(frames, ignore_index=True)


def split(df: pd.DataFrame, kind: str, frac: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(rest, first halves, second halves): a seeded ``frac`` of the users or items held out, their ratings halved."""
    key = "user" if kind == "users" else "item"
    rng = np.random.default_rng(seed)
    ids = np.sort(df[key].unique())
    held = rng.choice(ids, int(round(frac * len(ids))), replace=False)
    out = df[df[key].isin(held)].sample(frac=1.0, random_state=seed)
    pos, size = out.groupby(key).cumcount(), out.groupby(key)[key].transform("size")
    first, second = out[pos < size // 2], out[pos >= size // 2]
    # A held-out id with one rating has an empty first half: it cannot be folded in, and is not scored.
    second = second[second[key].isin(first[key])]
    return df[~df[key].isin(held)], first, second


def scores(model: GLocalKRecommender, pairs: pd.DataFrame) -> dict[str, np.ndarray]:
    """GLocal-K's and the model's bias baseline's clipped predictions at ``pairs``."""
    glocalk = model.predict(pairs["user"], pairs["item"])
    u = pd.Index(model.user_ids_).get_indexer(pairs["user"])
    i = pd.Index(model.item_ids_).get_indexer(pairs["item"])
    lo, hi = model.rating_scale_
    bias = np.clip(model.scorer_.baseline(i, u) - model.offset_, lo, hi)
    return {"glocalk": glocalk, "bias": bias}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    df = all_ratings(args.dataset, args.data_dir)
    rest, first, second = split(df, args.kind, args.frac, args.seed)
    settings = {k: getattr(args, k) for k in SHORTENING if getattr(args, k) is not None}
    params = dict(seed=args.seed, threads=args.threads, **settings)
    load = [list(os.getloadavg())]
    t0 = time.perf_counter()
    base = GLocalKRecommender(args.dataset, **params).fit(rest)
    t_base = time.perf_counter() - t0
    key = "user" if args.kind == "users" else "item"
    warm = first[key].iloc[0]
    base.fold_in(first[first[key] == warm])  # warm-up (torch.optim's first use)
    t0 = time.perf_counter()
    folded = base.fold_in(first)
    t_fold = time.perf_counter() - t0
    load.append(list(os.getloadavg()))
    t0 = time.perf_counter()
    retrained = GLocalKRecommender(args.dataset, **params).fit(pd.concat([rest, first], ignore_index=True))
    t_retrain = time.perf_counter() - t0
    load.append(list(os.getloadavg()))
    # Pairs the folded-in model cannot score (an item only held-out users rated: nothing describes it)
    # are left out for every model, and counted.
    known = second["user"].isin(folded.user_ids_) & second["item"].isin(folded.item_ids_)
    second = second[known]
    truth = second["rating"].to_numpy()
    a, b = scores(folded, second), scores(retrained, second)
    preds = {"fold_in": a["glocalk"], "retrained": b["glocalk"], "bias_fold_in": a["bias"],
             "bias_retrained": b["bias"]}
    n_held = int(first[key].nunique())
    return {
        "dataset": args.dataset, "kind": args.kind, "frac": args.frac, "seed": args.seed, "threads": args.threads,
        "shortened": settings, "n_held": n_held, "n_fold_in_ratings": len(first), "n_scored": len(second),
        "n_training_ratings": len(rest), "n_not_scored": int((~known).sum()), "fold_in": folded.fold_in_,
        "rmse": {k: rmse(p, truth) for k, p in preds.items()}, "mae": {k: mae(p, truth) for k, p in preds.items()},
        f"ms_per_{key}": 1000.0 * t_fold / n_held, "fold_in_seconds": t_fold,
        "train_seconds": {"base": t_base, "retrained": t_retrain},
        "loadavg": {"start": load[0], "after_fold_in": load[1], "end": load[2]},
        "command": "python " + " ".join(sys.argv), "versions": versions(),
    }


def summary(out: Path) -> str:
    """The markdown table of every result in ``out``."""
    rows = ["| dataset | held out | protocol | fold-in RMSE | retrained RMSE | bias fold-in RMSE | bias retrained RMSE "
            "| ms per user/item | load average (1 min: start, end) |", "|---|---|---|---|---|---|---|---|---|"]
    for path in sorted([*out.glob("*-users.json"), *out.glob("*-items.json")]):
        r = json.loads(path.read_text())
        ms = r.get("ms_per_user", r.get("ms_per_item"))
        protocol = ", ".join(f"{k} {v}" for k, v in r["shortened"].items()) or "the paper's preset"
        e = r["rmse"]
        rows.append(f"| {r['dataset']} | {r['n_held']} {r['kind']} ({r['n_fold_in_ratings']:,} ratings folded in, "
                    f"{r['n_scored']:,} scored) | {protocol} | {e['fold_in']:.4f} | {e['retrained']:.4f} | "
                    f"{e['bias_fold_in']:.4f} | {e['bias_retrained']:.4f} | {ms:.1f} | "
                    f"{r['loadavg']['start'][0]:.1f}, {r['loadavg']['end'][0]:.1f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--kind", choices=["users", "items"], default="users")
    p.add_argument("--frac", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--summary", action="store_true", help="only write summary.md from the JSON files in --out")
    for key in SHORTENING:
        p.add_argument("--" + key.replace("_", "-"), dest=key, type=int, default=None)
    args = p.parse_args()
    if not args.summary:
        result = run(args)
        write_json_atomic(args.out / f"{args.dataset}-{args.kind}.json", result)
        print(json.dumps(result["rmse"], indent=1))
    (args.out / "summary.md").write_text(summary(args.out))


if __name__ == "__main__":
    main()
