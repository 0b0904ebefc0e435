"""What runs inside one ``--worker`` subprocess: timed passes, or one training run.

A worker prints progress lines (PHASE_MARK) on stderr and its result as JSON after RESULT_MARK on
stdout; ``runner.Runner`` reads both.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

from glocalk.data.datasets import load_dataset
from glocalk.data.matrix import RatingMatrix
from glocalk.data.synthetic import make_ratings
from glocalk.epoch import host_assign, host_flat
from glocalk.inputs import prepare_input
from glocalk.model import GLocalK
from glocalk.presets import preset, split_config
from glocalk.train import Trainer

from .common import PHASE_MARK, RESULT_MARK, epoch_totals
from .machine import peak_rss_mb, proc_rss_mb


def phase(text: str) -> None:
    """Progress line on stderr; the orchestrator quotes the last one when a worker fails."""
    print(f"{PHASE_MARK}{text} (rss {proc_rss_mb():,.0f} MB)", file=sys.stderr, flush=True)


def load_data(spec: dict) -> RatingMatrix:
    """The RatingMatrix a worker spec names: a paper dataset or a synthetic one."""
    if "synthetic" in spec:
        return make_ratings(**spec["synthetic"])
    return load_dataset(spec["dataset"], data_dir=spec.get("data_dir"))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer sees it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_pass(model: GLocalK, inp, stage: int, params: list, device: torch.device) -> tuple[float, float]:
    """(seconds, loss) of one loss + gradient, as the optimiser asks for it."""
    for p in params:
        p.grad = None
    sync(device)
    t = time.perf_counter()
    loss = model.loss(inp, stage)
    loss.backward()
    value = loss.item()  # what the optimiser needs; also synchronises
    sync(device)
    return time.perf_counter() - t, value


def host_round_trip_s(params: list, device: torch.device) -> float:
    """Seconds of the optimiser's side of one evaluation: parameters from and gradients to float64 numpy."""
    t = time.perf_counter()
    x = host_flat(params)
    host_assign(params, x)
    host_flat([p.grad for p in params if p.grad is not None])
    sync(device)
    return time.perf_counter() - t


def time_stage(model: GLocalK, inp, stage: int, spec: dict, device: torch.device) -> dict:
    """Median, minimum and all times of ``spec['reps']`` passes of one stage after ``spec['warmup']``."""
    params = model.network_parameters() if stage == 1 else model.finetune_parameters()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(spec["warmup"]):
        one_pass(model, inp, stage, params, device)
    runs = [one_pass(model, inp, stage, params, device) for _ in range(spec["reps"])]
    times = [t for t, _ in runs]
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)))
    rec = {"times_s": times, "median_s": statistics.median(times), "min_s": min(times),
           "loss": runs[-1][1], "grad_norm": grad_norm, "lbfgs_io_s": host_round_trip_s(params, device),
           "peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        rec["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return rec


def worker_passes(spec: dict) -> dict:
    """Time loss + gradient of the requested stages on one dataset and path."""
    device = torch.device(spec["device"])
    rss_import = proc_rss_mb()
    t0 = time.perf_counter()
    data = load_data(spec)
    load_s = time.perf_counter() - t0
    phase("data loaded")
    model_config, _ = split_config(dict(preset(spec.get("preset") or spec["dataset"])))
    torch.manual_seed(spec.get("seed", 1))
    model = GLocalK(data.n_items, data.n_users, model_config).to(device)
    t0 = time.perf_counter()
    inp = prepare_input(data.train, spec["path"] == "sparse", model_config.gk_size, device)
    sync(device)
    prepare_s = time.perf_counter() - t0
    phase("input prepared")
    out = {"shape": list(data.shape), "nnz": int(data.train.nnz), "load_s": load_s, "prepare_s": prepare_s,
           "rss_import_mb": rss_import, "rss_setup_mb": proc_rss_mb(), "threads": torch.get_num_threads(),
           "loadavg_start": list(os.getloadavg()), "stages": {}}
    if inp.is_sparse:
        out.update(conv_nnz=inp.conv.output.nnz, conv_dense=bool(inp.conv_dense))
    for stage in spec["stages"]:
        out["stages"][str(stage)] = time_stage(model, inp, stage, spec, device)
        phase(f"stage {stage} timed")
    out["loadavg_end"] = list(os.getloadavg())
    return out


def train_params(spec: dict) -> dict:
    """The hyperparameters of a training worker: the preset, the spec's overrides, path, seed, device."""
    params = preset(spec.get("preset") or spec["dataset"])
    params.update(spec.get("overrides", {}))
    params.update(path=spec["path"], seed=spec["seed"], device=spec["device"], optimizer=spec["optimizer"])
    if spec.get("threads"):
        params["threads"] = spec["threads"]
    return params


def log_epoch(rec: dict) -> None:
    """Progress line of one finished epoch."""
    phase(f"epoch {rec['epoch']} (stage {rec['stage']}, {rec['nfev']} evaluations, {rec['seconds']:.1f} s)")


def worker_train(spec: dict) -> dict:
    """One training run (a paper protocol, or a short synthetic one) with the Trainer."""
    device = torch.device(spec["device"])
    t_start = time.perf_counter()
    data = load_data(spec)
    load_s = time.perf_counter() - t_start
    phase("data loaded")
    params = train_params(spec)
    model_config, train_config = split_config(params)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    trainer = Trainer(data, model_config, train_config)
    sync(device)
    setup_s = time.perf_counter() - t0
    phase("trainer set up")
    loadavg_start = list(os.getloadavg())
    result = trainer.run(on_epoch=log_epoch)
    total_s = time.perf_counter() - t_start
    out = {"shape": list(data.shape), "nnz": int(data.train.nnz), "path": result.path, "load_s": load_s,
           "setup_s": setup_s, "train_s": result.seconds, "total_s": total_s, "epochs": len(result.history),
           **epoch_totals(result.history),
           "best": result.best, "final": result.final, "hyperparameters": params,
           "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
           "loadavg_start": loadavg_start, "loadavg_end": list(os.getloadavg())}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def worker_main(spec: dict) -> None:
    """Entry of ``--worker``: run one measurement and print its JSON after RESULT_MARK."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    out = worker_passes(spec) if spec["kind"] == "passes" else worker_train(spec)
    print(RESULT_MARK + json.dumps(out), flush=True)
