"""One L-BFGS epoch over a list of parameters, with any of the three optimisers (``lbfgs_epoch``).

The trainers' epochs are fresh optimiser runs from the current parameters, as the original's per-epoch
``scipy.optimize.minimize`` calls were: ``"scipy"`` (the reference, float64 on the host), ``"lbfgsb"``
(the same algorithm on the parameters' device, ``glocalk.optim``; the default) and ``"torch"``
(torch.optim.LBFGS). A step whose loss or gradient overflows is handed back as ``inf``, so that the
line search backs off, as SciPy's wrapper does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.optimize
import torch

from glocalk.errors import ConfigError
from glocalk.optim import LBFGSB, LBFGSBOptions

OPTIMIZERS = ("scipy", "torch", "lbfgsb")
# SciPy's L-BFGS-B in torch (glocalk.optim): the same iterates as "scipy" without its float64 host
# copies; it reproduced the paper figures on all three datasets (RESULTS.md) and can be sharded.
DEFAULT_OPTIMIZER = "lbfgsb"


def host_flat(params: list[torch.Tensor]) -> np.ndarray:
    """Tensors as one float64 host vector: what SciPy's optimiser reads at every evaluation."""
    return torch.cat([p.detach().reshape(-1) for p in params]).double().cpu().numpy()


def host_assign(params: list[torch.Tensor], x: np.ndarray) -> None:
    """Copy a float64 host vector back into the parameters: what SciPy's optimiser writes."""
    xt = torch.from_numpy(x)
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(xt[offset: offset + n].view_as(p).to(p.device, p.dtype))
            offset += n


def lbfgs_epoch(params: list[torch.nn.Parameter], loss_fn: Callable[[], torch.Tensor],
                max_iter: int, optimizer: str = DEFAULT_OPTIMIZER) -> dict:
    """One L-BFGS minimisation of ``loss_fn`` over ``params``, restarted from their current values.

    Returns {"loss", "nfev", "nit"}; the parameters hold the result. With ``"lbfgsb"`` and ``"torch"`` also
    ``"at_last_pass"``: whether they are the parameters of ``loss_fn``'s last call (so its by-products,
    such as the hidden layer, describe the result).
    """
    nfev = 0

    def value_and_grad() -> tuple[float, list[torch.Tensor]]:
        nonlocal nfev
        nfev += 1
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.item(), [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

    if optimizer == "torch":
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=10,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-5, tolerance_change=2.2e-9)

        def closure():
            value, _ = value_and_grad()
            return torch.tensor(value)

        opt.step(closure)
        state = opt.state[opt._params[0]]
        with torch.no_grad():
            final = loss_fn().item()
        return {"loss": final, "nfev": nfev, "nit": int(state.get("n_iter", 0)), "at_last_pass": True}
    if optimizer == "lbfgsb":
        return _device_lbfgsb_epoch(params, loss_fn, max_iter)
    if optimizer != "scipy":
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        host_assign(params, x)
        value, grads = value_and_grad()
        g = torch.cat([t.reshape(-1) for t in grads]).double().cpu().numpy()
        if not (math.isfinite(value) and np.all(np.isfinite(g))):
            # Let the line search back off from a step that overflowed.
            return math.inf, np.zeros_like(g)
        return value, g

    res = scipy.optimize.minimize(fun, host_flat(params), jac=True, method="L-BFGS-B",
                                  options={"maxiter": max_iter, "maxcor": 10})
    host_assign(params, res.x)
    return {"loss": float(res.fun), "nfev": int(res.nfev), "nit": int(res.nit)}


def _device_lbfgsb_epoch(params: list[torch.nn.Parameter], loss_fn: Callable[[], torch.Tensor],
                         max_iter: int) -> dict:
    """lbfgs_epoch's "lbfgsb": SciPy's L-BFGS-B (same options and wrapper rule) in torch on the parameters'
    device; the parameters are views into the optimiser's flat buffer while it runs."""
    opt = LBFGSB(params, options=LBFGSBOptions(maxiter=max_iter, m=10))
    evaluated_version = -1  # the version of the optimiser's x at the last evaluation

    def closure() -> torch.Tensor:
        nonlocal evaluated_version
        evaluated_version = opt.x._version
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if bool(any_nonfinite([loss.detach(), *grads])):
            # As the scipy wrapper: let the line search back off from a step that overflowed.
            for g in grads:
                g.zero_()
            return torch.tensor(math.inf)
        return loss

    res = opt.step(closure)
    # x is written in place at every move (its version counter counts them): unchanged since the last
    # evaluation means the result is the point evaluated last (not so after a failed line search).
    at_last_pass = opt.x._version == evaluated_version
    opt.release()  # each parameter its own storage again (saving with safetensors needs it)
    return {"loss": float(res.fun), "nfev": int(res.nfev), "nit": int(res.nit), "at_last_pass": at_last_pass}


def any_nonfinite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Whether any entry of any tensor is NaN or infinite, as a 0-d bool tensor (no host sync).

    One read per tensor: a NaN or infinity makes its float64 sum non-finite, and float64 cannot overflow
    on a sum of float32 values (a float64 gradient would need entries near 1e300). Four times faster than
    ``isfinite(g).all()`` per tensor, which writes a boolean copy of every gradient each evaluation.
    """
    sums = torch.stack([t.sum(dtype=torch.float64) for t in tensors])
    return ~torch.isfinite(sums.sum())
