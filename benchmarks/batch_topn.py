"""Batch top-N (issue 12, item 3): ``glocalk recommend MODEL_DIR --all-users -k 10`` on an ML-1M model.

The time of a top-10 for every user does not depend on how well the weights are trained, only on the
shapes (3,706 items x 6,040 users, n_hid 500, the ML-1M preset), so without ``--model`` this trains an
ML-1M model for one L-BFGS iteration of stage 1 (``--epoch-p 1 --iter-p 1 --epoch-f 0``) and saves it to
``--model-out``. Then it times, in this process on ``--threads`` threads: loading the model directory
(which recomputes H for every item), ``recommend_all(10)`` (the blocks of users) and writing the Parquet
file, each in wall-clock and CPU seconds (on a loaded machine the CPU time is the steadier figure);
and the whole command ``python -m glocalk recommend MODEL --all-users -k 10 --output recs.parquet
--quiet`` in a subprocess. The load average is recorded beside the figures (the machine is shared).

    python benchmarks/batch_topn.py --threads 1 [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from glocalk.data.datasets import load_dataset
from glocalk.estimator import GLocalKRecommender
from glocalk.store import versions, write_json_atomic

OUT = Path("docs/benchmarks/fold_in/batch_topn.json")


def ml1m_model(path: Path, threads: int) -> float:
    """Train the one-iteration ML-1M model into ``path``; returns the seconds it took."""
    data = load_dataset("ml-1m")
    coo = data.train.tocoo()
    df = pd.DataFrame({"user": data.user_ids[coo.col], "item": data.item_ids[coo.row], "rating": coo.data})
    t0 = time.perf_counter()
    GLocalKRecommender("ml-1m", epoch_p=1, iter_p=1, epoch_f=0, threads=threads).fit(df).save(path)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="an ML-1M model directory (default: train one)")
    p.add_argument("--model-out", type=Path, default=Path(tempfile.gettempdir()) / "glocalk-ml1m-topn")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"command": "python " + " ".join(sys.argv), "threads": args.threads,
              "loadavg_start": list(os.getloadavg())}
    model_dir = args.model
    if model_dir is None:
        model_dir = args.model_out
        result["train_seconds"] = ml1m_model(model_dir, args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    model = GLocalKRecommender.load(model_dir)
    t1, c1 = time.perf_counter(), time.process_time()
    recs = model.recommend_all(10)
    t2, c2 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        recs.to_parquet(Path(tmp) / "recs.parquet", index=False)
        t3 = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "OPENBLAS_NUM_THREADS": str(args.threads)}
        t4, c4 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "glocalk", "recommend", str(model_dir), "--all-users", "-k", "10",
                        "--output", str(Path(tmp) / "cli.parquet"), "--quiet"], check=True, env=env)
        t5, c5 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(n_users=len(model.user_ids_), n_items=len(model.item_ids_), n_rows=len(recs),
                  load_seconds=t1 - t0, recommend_all_seconds=t2 - t1, write_seconds=t3 - t2,
                  load_cpu_seconds=c1 - c0, recommend_all_cpu_seconds=c2 - c1,
                  cli_seconds=t5 - t4,
                  cli_cpu_seconds=(c5.ru_utime + c5.ru_stime) - (c4.ru_utime + c4.ru_stime),
                  loadavg_end=list(os.getloadavg()), versions=versions())
    write_json_atomic(args.out, result)
    print({k: v for k, v in result.items() if k != "versions"})


if __name__ == "__main__":
    main()
