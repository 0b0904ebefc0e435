"""Micro-benchmark: the kernel layer's W * K and regulariser, plain autograd vs the model's fused Function.

Written plainly, K = relu(1 - ||u_i - v_j||^2) and W * K take a dozen elementwise torch ops;
autograd then runs about as many again backwards, each a full pass over an (n_in x n_out)
tensor. At ML-10M's shape the two n_users x n_hid layers (69,878 x 500) make this the floor of
every loss + gradient, whatever nnz is. The fused autograd Function behind
``KernelLayer.weight_and_regulariser`` computes the same values and gradients in a few passes
(an addmm for the squared distances, in-place clamp, dot products for the sums, addcmul in the
backward).

    python benchmarks/micro_kernel_layer.py [--threads N]

Prints, per layer shape, both timings of forward + backward, the speed-up and the largest
gradient difference relative to the gradient's largest entry (float32 summation order only).
"""

from __future__ import annotations

import argparse
import time

import torch

from glocalk.model import KernelLayer


def _as_written(layer: KernelLayer, lambda_s: float, lambda_2: float):
    # The plain autograd formulation (what the model used before the fused Function).
    k = layer.local_kernel()
    return layer.W * k, 0.5 * lambda_s * (k * k).sum() + 0.5 * lambda_2 * (layer.W * layer.W).sum()


def _fused(layer: KernelLayer, lambda_s: float, lambda_2: float):
    return layer.weight_and_regulariser(lambda_s, lambda_2)  # the fused Function inside


def bench(n_in: int, n_out: int, reps: int = 5) -> None:
    torch.manual_seed(0)
    layer = KernelLayer(n_in, n_out, 5, "sigmoid")
    with torch.no_grad():  # spread u and v so that K has zeros and non-zeros, as after training
        layer.u.normal_(0, 0.4)
        layer.v.normal_(0, 0.4)
    upstream = torch.randn(n_in, n_out)
    results = {}
    for name, fn in (("as written", _as_written), ("fused", _fused)):
        def once(fn=fn) -> float:
            for p in layer.parameters():
                p.grad = None
            t = time.perf_counter()
            wk, reg = fn(layer, 0.018, 70.0)
            ((wk * upstream).sum() + reg).backward()
            return time.perf_counter() - t

        once()
        best = min(once() for _ in range(reps))
        results[name] = (best, [p.grad.clone() for p in (layer.W, layer.u, layer.v)])
    (t_a, g_a), (t_f, g_f) = results["as written"], results["fused"]
    diffs = [float((a - b).abs().max() / a.abs().max()) for a, b in zip(g_a, g_f, strict=True)]
    print(f"{n_in:>6} x {n_out:<6} as written {t_a * 1e3:7.0f} ms   fused {t_f * 1e3:7.0f} ms   "
          f"speed-up {t_a / t_f:4.2f}   max grad diff W/u/v {', '.join(f'{x:.1e}' for x in diffs)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for shape in ((943, 500), (6_040, 500), (500, 6_040), (69_878, 500), (500, 69_878)):
        bench(*shape)


if __name__ == "__main__":
    main()
