"""Micro-benchmark: the kernel layer's W * K and regulariser, autograd as written vs one fused Function.

``KernelLayer.weight_and_regulariser`` builds K = relu(1 - ||u_i - v_j||^2) and W * K from a dozen
elementwise torch ops; autograd then runs about as many again backwards, each a full pass over an
(n_in x n_out) tensor. At ML-10M's shape the two n_users x n_hid layers (69,878 x 500) make this
the floor of every loss + gradient, whatever nnz is. ``FusedKernelWeight`` computes the same values
and gradients in a few passes (an addmm for the squared distances, in-place clamp, dot products for
the sums, addcmul in the backward).

    python benchmarks/micro_kernel_layer.py [--threads N]

Prints, per layer shape, both timings of forward + backward, the speed-up and the largest
gradient difference relative to the gradient's largest entry (float32 summation order only).
"""

from __future__ import annotations

import argparse
import time

import torch

from glocalk.model import KernelLayer


class FusedKernelWeight(torch.autograd.Function):
    """(W * K, lambda_s/2 sum K^2 + lambda_2/2 sum W^2), K = relu(1 - ||u_i - v_j||^2), in few passes."""

    @staticmethod
    def forward(ctx, w, u, v, lambda_s: float, lambda_2: float):  # noqa: D102
        # u (n_in, d), v (n_out, d); dist2 = |u|^2 + |v|^2 - 2 u v^T in one addmm
        k = torch.addmm((u * u).sum(1, keepdim=True) + (v * v).sum(1), u, v.T, alpha=-2.0)
        k.neg_().add_(1.0).clamp_(min=0.0)  # K, (n_in, n_out)
        wk = w * k
        kf, wf = k.reshape(-1), w.reshape(-1)
        reg = 0.5 * lambda_s * torch.dot(kf, kf) + 0.5 * lambda_2 * torch.dot(wf, wf)
        ctx.save_for_backward(w, u, v, k)
        ctx.lambdas = (lambda_s, lambda_2)
        return wk, reg

    @staticmethod
    def backward(ctx, g_wk, g_reg):  # noqa: D102
        w, u, v, k = ctx.saved_tensors
        lambda_s, lambda_2 = ctx.lambdas
        g_w = torch.addcmul(w * (lambda_2 * g_reg), g_wk, k)
        g_k = torch.addcmul(k * (lambda_s * g_reg), g_wk, w)
        g_k.mul_(k > 0)  # the clamp passes no gradient where K = 0
        # K = 1 - dist2 where positive: d dist2 = -g_k
        g_u = -2.0 * (u * g_k.sum(1, keepdim=True) - g_k @ v)
        g_v = -2.0 * (v * g_k.sum(0).unsqueeze(1) - g_k.T @ u)
        return g_w, g_u, g_v, None, None


def _as_written(layer: KernelLayer, lambda_s: float, lambda_2: float):
    return layer.weight_and_regulariser(lambda_s, lambda_2)


def _fused(layer: KernelLayer, lambda_s: float, lambda_2: float):
    return FusedKernelWeight.apply(layer.W, layer.u.squeeze(1), layer.v.squeeze(0), lambda_s, lambda_2)


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
