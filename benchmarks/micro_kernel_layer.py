"""Micro-benchmark: the kernel layer's W * K and regulariser, plain autograd vs the model's fused variant.

The plain layer (``KernelLayer.weight`` and ``KernelLayer.regulariser``, what ``KernelLayer.forward``
reads like) builds K = max(0, 1 - ||u_i - v_j||^2) and W * K from a handful of elementwise torch ops,
and K twice; autograd then runs about as many again backwards, each a full pass over an
(n_in x n_out) tensor. At ML-10M's shape the two n_users x n_hid layers (69,878 x 500) make this
the floor of every loss + gradient, whatever nnz is. ``KernelLayer.weight_and_regulariser`` (what
training runs) computes the same values and gradients in a few passes: the same ``local_kernel``
once, dot products for the sums, addcmul in a hand-written backward.

    python benchmarks/micro_kernel_layer.py [--threads N]

Prints, per layer shape, both timings of forward + backward, the speed-up and the largest
gradient difference relative to the gradient's largest entry (float32 summation order only).
"""

from __future__ import annotations

import argparse
import time

import torch

from glocalk.model import KernelLayer


def _plain(layer: KernelLayer, lambda_s: float, lambda_2: float):
    return layer.weight(), layer.regulariser(lambda_s, lambda_2)  # autograd through the plain layer


def _fused(layer: KernelLayer, lambda_s: float, lambda_2: float):
    return layer.weight_and_regulariser(lambda_s, lambda_2)


def bench(n_in: int, n_out: int, reps: int = 5) -> None:
    torch.manual_seed(0)
    layer = KernelLayer(n_in, n_out, 5, "sigmoid")
    with torch.no_grad():  # spread u and v so that K has zeros and non-zeros, as after training
        layer.u.normal_(0, 0.4)
        layer.v.normal_(0, 0.4)
    upstream = torch.randn(n_in, n_out)
    results = {}
    for name, fn in (("plain", _plain), ("fused", _fused)):
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
    (t_a, g_a), (t_f, g_f) = results["plain"], results["fused"]
    diffs = [float((a - b).abs().max() / a.abs().max()) for a, b in zip(g_a, g_f, strict=True)]
    print(f"{n_in:>6} x {n_out:<6} plain {t_a * 1e3:7.0f} ms   fused {t_f * 1e3:7.0f} ms   "
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
