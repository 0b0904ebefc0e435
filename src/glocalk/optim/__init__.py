"""L-BFGS-B in torch, on the parameters' device: SciPy's iterates for the unconstrained case.

GLocal-K trains with SciPy's L-BFGS-B (as the original TF code did), which runs on the host in float64 and
copies every parameter out of and back into torch at each evaluation. This module is the same algorithm on
torch tensors, following SciPy 1.17.1 step by step -- ``scipy/optimize/__lbfgsb.c`` (a C port of L-BFGS-B
3.0) and its driver ``_lbfgsb_py.py`` -- for the only case GLocal-K uses, no bounds:

- the search direction is ``-H g`` from the limited-memory BFGS matrix in SciPy's compact form (``formk``,
  ``subsm``; the last m pairs, theta = y.y / s.y), or ``-g`` while the memory is empty (``cauchy``);
- a pair is skipped when s.y <= eps * (-g.d) (``mainlb``'s curvature test);
- the line search is Moré–Thuente's ``dcsrch``/``dcstep`` (ftol 1e-3, gtol 0.9, xtol 0.1), first trial step
  min(1/||d||, 1e10) on the first iteration and 1 afterwards, at most ``maxls`` evaluations (``lnsrlb``);
- a failed line search (or an ascent direction) empties the memory and retries along -g; with the memory
  already empty the run ends ``ABNORMAL``;
- the stopping tests, counters and messages are SciPy's: ``nit`` counts accepted iterations, ``nfev`` the
  evaluations (one at an x equal to the previous one is not repeated, as SciPy's cache does), ``maxiter``
  and ``maxfun`` are checked after each iteration, before the convergence tests.

The long vectors (x, g, the direction, the pairs) stay on the device in the state's dtype; the small
2m x 2m algebra and the line search's scalars are float64 on the host, as in SciPy. Per iteration the
stored pairs are read twice (one product of every stored vector with the new s, y and g; one pass forming
the next direction), and the state is 2m + 5 vectors of length n (x, g, the pairs, the line search's start
point and gradient, the direction), with no temporary per evaluation. Every inner product
and norm of a long vector goes through one ``space`` object (``LocalSpace`` by default), so a vector sharded
across processes needs only a space whose reductions all-reduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from glocalk.errors import ConfigError
from glocalk.optim.linesearch import LineSearch
from glocalk.optim.memory import LBFGSMemory
from glocalk.optim.space import LocalSpace

__all__ = ["LBFGSB", "LBFGSBOptions", "LBFGSBResult", "LBFGSMemory", "LocalSpace", "minimize_lbfgsb"]

EPSMACH = 2.220446049250313e-16  # np.finfo(np.float64).eps, as __lbfgsb.c
STPMAX = 1e10  # lnsrlb's largest step when no variable is bounded

# SciPy's res.message for each way a run ends (status_messages + ": " + task_messages in _lbfgsb_py.py).
CONV_GRAD = "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
CONV_F = "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH"
STOP_ITER = "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"
STOP_MAXFUN = "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"
ABNORMAL = "ABNORMAL: "

Closure = Callable[[], "torch.Tensor | float"]
Fun = Callable[[torch.Tensor], tuple["torch.Tensor | float", torch.Tensor]]


@dataclass
class LBFGSBOptions:
    """SciPy's L-BFGS-B options (``fmin_l_bfgs_b`` names; ``minimize``'s ftol = factr * eps, gtol = pgtol)."""

    maxiter: int = 15000
    """Stop after this many iterations (checked after each)."""
    m: int = 10
    """Pairs kept in the limited memory (SciPy's maxcor)."""
    factr: float = 1e7
    """Stop when (f_old - f) <= factr * eps * max(|f_old|, |f|, 1)."""
    pgtol: float = 1e-5
    """Stop when max |g_i| <= pgtol."""
    maxls: int = 20
    """Evaluations allowed per line search."""
    maxfun: int = 15000
    """Stop after an iteration that brought the evaluations past this."""

    def validate(self) -> LBFGSBOptions:
        """Raise ConfigError naming the first invalid option; returns self."""
        for name, low in (("maxiter", 0), ("m", 1), ("maxls", 1), ("maxfun", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(f"L-BFGS-B option {name} must be an integer >= {low}, got {value!r}")
        for name in ("factr", "pgtol"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"L-BFGS-B option {name} must be a number >= 0, got {value!r}")
        return self


@dataclass
class LBFGSBResult:
    """What a run ends with, under SciPy's ``OptimizeResult`` names (``status``: 0 converged, 1 a limit, 2 else)."""

    x: torch.Tensor
    fun: float
    jac: torch.Tensor
    nit: int
    nfev: int
    success: bool
    message: str
    status: int


# -- mainlb and the driver's loop ------------------------------------------------------------------------------


class _Run:
    """One SciPy ``minimize`` call from x: ``mainlb``'s loop, unconstrained, with ``_lbfgsb_py``'s checks.

    ``evaluate()`` reads x, writes g in place and returns f; both are the caller's 1-D buffers.
    """

    def __init__(self, x: torch.Tensor, g: torch.Tensor, evaluate: Callable[[], float], options: LBFGSBOptions,
                 space: LocalSpace) -> None:
        self.x, self.g, self.evaluate_fn, self.o, self.space = x, g, evaluate, options, space
        self.memory = LBFGSMemory(x.numel(), options.m, min(options.m, max(options.maxiter, 1)), x, space)
        # Besides x and g, the long vectors live in the memory's buffer: d in its scratch row, and the line
        # search's start point t and gradient r in the spare slot (``_line_search``), whose rows the new pair
        # then takes. With n = 6.3M float32 one vector is 25 MB.
        self.d = self.memory.scratch()
        self.t, self.r = self.memory.spare()
        # Evenly spread entries where ``_evaluate_at`` checks whether x surely moves.
        self.probe = torch.linspace(0, x.numel() - 1, min(x.numel(), 256), device=x.device).long()
        self.tiny = 16.0 * torch.finfo(x.dtype).eps
        self.f = self.fold = self.gd = self.gdold = self.stp = self.dtd = 0.0
        self.nfev = self.nit = self.iter = self.nfev_at_start = 0
        self.x_is_last = False  # whether x holds the point evaluated last (not so after a failed line search)

    def _evaluate(self) -> None:
        self.f = float(self.evaluate_fn())
        self.nfev += 1
        self.x_is_last = True

    def _evaluate_at(self, stp: float) -> None:
        """x := t + stp d and evaluate there, unless x is bitwise the last x evaluated: SciPy's ScalarFunction
        then returns its cached f and g without counting an evaluation."""
        if self.x_is_last and not self._moves(stp):
            return
        if stp == 1.0:
            torch.add(self.t, self.d, out=self.x)  # the same sum as t + d, without a temporary and a copy
        else:
            torch.add(self.t, self.d, alpha=stp, out=self.x)
        self._evaluate()

    def _moves(self, stp: float) -> bool:
        """Whether x := t + stp d changes x anywhere. Decided alike on every process of a sharded vector (through
        the space): the evaluation that follows is collective, so one rank skipping it would hang the others."""
        if self.space.any_true(self._surely_moves(stp), self.x):
            return True
        new = self.t + self.d if stp == 1.0 else torch.add(self.t, self.d, alpha=stp)
        return self.space.any_true(not torch.equal(new, self.x), self.x)

    def _surely_moves(self, stp: float) -> bool:
        """Whether t + stp d differs from x in some probed entry by more than any rounding of the sum can
        explain (16 eps of the largest term): then x := t + stp d cannot leave x as it is, and the full
        compare is not needed. False proves nothing."""
        # One small transfer to the host, float64 there (exact for float32 values; MPS has no float64).
        t, d, x = torch.stack([v[self.probe] for v in (self.t, self.d, self.x)]).cpu().double()
        step = stp * d
        scale = torch.maximum(torch.maximum(t.abs(), step.abs()), x.abs())
        return bool(((t + step - x).abs() > self.tiny * scale).any())

    def run(self) -> LBFGSBResult:
        """Iterate until a stopping test or a limit; the buffers hold the final x and g."""
        o = self.o
        self._evaluate()
        if float(self.space.norm_inf(self.g)) <= o.pgtol:
            return self._result(CONV_GRAD)
        while True:
            if not self._direction():
                continue
            if not self._line_search():
                # Back to the iteration's start, still the last point evaluated if the search evaluated none.
                self.x_is_last = self.x_is_last and self.nfev == self.nfev_at_start
                self.x.copy_(self.t)
                self.g.copy_(self.r)
                self.f = self.fold
                if self.memory.col == 0:
                    return self._result(ABNORMAL)
                self.memory.reset()
                continue
            self.iter += 1
            self.nit += 1
            sbgnrm = float(self.space.norm_inf(self.g))
            if self.nit >= o.maxiter:
                return self._result(STOP_ITER)
            if self.nfev > o.maxfun:
                return self._result(STOP_MAXFUN)
            if sbgnrm <= o.pgtol:
                return self._result(CONV_GRAD)
            if self.fold - self.f <= o.factr * EPSMACH * max(abs(self.fold), abs(self.f), 1.0):
                return self._result(CONV_F)
            self._update()

    def _direction(self) -> bool:
        """d := -H g, or -g with an empty memory; False (memory emptied) if the factorisation failed."""
        if self.memory.col > 0:
            if not self.memory.direction(self.g, self.d):
                self.memory.reset()
                return False
        else:
            torch.neg(self.g, out=self.d)  # cauchy's point x - g/theta with theta = 1
        self.d.add_(self.x).sub_(self.x)  # SciPy forms z = x + d, then d = z - x
        return True

    def _line_search(self) -> bool:
        """lnsrlb + dcsrch along d from x; True when a step is accepted (x, f, g there), False if it failed."""
        dnorm = math.sqrt(float(self.space.dot(self.d, self.d)))
        self.dtd = dnorm**2
        stp = (min(1.0 / dnorm, STPMAX) if dnorm > 0 else STPMAX) if self.iter == 0 else 1.0
        self.t, self.r = self.memory.spare()  # the memory's free rows (a pair or a reset moves them)
        self.t.copy_(self.x)
        if not self.memory.holds_copy(self.g, self.r):  # the last update copied g there already
            self.r.copy_(self.g)
        self.fold, self.nfev_at_start = self.f, self.nfev
        search, tries = None, 0
        while True:
            gd = float(self.space.dot(self.g, self.d))
            if search is None:
                self.gdold = gd
                if gd >= 0.0:
                    return False  # not a descent direction (SciPy: gd >= 0)
                search, step = LineSearch(self.f, gd, stp, STPMAX), stp
            else:
                step = search.next(self.f, gd, stp)
            if isinstance(step, str):  # converged (or a warning, which SciPy accepts as well)
                self.gd, self.stp = gd, stp
                return True
            stp, tries = step, tries + 1
            if tries > self.o.maxls:
                return False
            self._evaluate_at(stp)

    def _update(self) -> None:
        """Add the pair s = stp d, y = g - g_old unless s.y <= eps (-g_old.s) (SciPy's curvature test)."""
        stp = self.stp
        dr = (self.gd - self.gdold) * (1.0 if stp == 1.0 else stp)
        if dr <= EPSMACH * (-self.gdold * (1.0 if stp == 1.0 else stp)):
            return  # skip the update
        ss = self.dtd if stp == 1.0 else stp * stp * self.dtd
        if not self.memory.update_step(self.d, stp, self.g, self.r, dr, ss):
            self.memory.reset()

    def _result(self, message: str) -> LBFGSBResult:
        o = self.o
        status = 0 if message.startswith("CONVERGENCE") else 1 if (
            self.nfev > o.maxfun or self.nit >= o.maxiter) else 2
        return LBFGSBResult(x=self.x, fun=self.f, jac=self.g, nit=self.nit, nfev=self.nfev, success=status == 0,
                            message=message, status=status)


def minimize_lbfgsb(fun: Fun, x0: torch.Tensor, *, maxiter: int = 15000, m: int = 10, factr: float = 1e7,
                    pgtol: float = 1e-5, maxls: int = 20, maxfun: int = 15000,
                    space: LocalSpace | None = None) -> LBFGSBResult:
    """Minimise ``fun`` from ``x0`` as ``scipy.optimize.minimize(method="L-BFGS-B")`` does without bounds.

    ``fun(x) -> (f, g)``: the value (a number or 0-d tensor) and gradient at the 1-D tensor x, which it must
    not modify. The run keeps x0's device and dtype; x0 itself is not changed. Options as SciPy's
    ``fmin_l_bfgs_b`` (``minimize``'s ftol = factr * 2.22e-16, gtol = pgtol, maxcor = m). ``space``: where
    inner products and norms are taken (default ``LocalSpace()``). Returns x, fun, jac, nit, nfev, success,
    message (SciPy's strings) and status.
    """
    options = LBFGSBOptions(maxiter, m, factr, pgtol, maxls, maxfun).validate()
    if not isinstance(x0, torch.Tensor) or x0.dim() != 1 or x0.numel() == 0 or not x0.is_floating_point():
        raise ConfigError(f"x0 must be a non-empty 1-D floating-point torch tensor, got {_describe(x0)}")
    x = x0.detach().clone()
    g = torch.empty_like(x)

    def evaluate() -> float:
        f, grad = fun(x)
        g.copy_(grad.detach().reshape(-1))
        return _number(f)

    return _Run(x, g, evaluate, options, space or LocalSpace()).run()


def _number(value: torch.Tensor | float) -> float:
    """A loss as a Python float (one device sync for a tensor)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


class LBFGSB:
    """SciPy's L-BFGS-B (unconstrained) over a list of parameter tensors, on their device.

    The parameters are copied once into one flat buffer of ``dtype`` (float32 by default, float64 available)
    and, when their dtype is that one, become views into it, so an evaluation copies nothing; otherwise the
    buffer is copied into them (on the device) before each evaluation. ``step(closure)`` is one fresh SciPy
    ``minimize`` call from the parameters' current values (the limited memory does not outlive it), as the
    trainer's epochs are. ``release()`` gives each parameter its own storage again (safetensors refuses
    tensors that share memory).
    """

    def __init__(self, params: Iterable[torch.Tensor], *, options: LBFGSBOptions | None = None,
                 dtype: torch.dtype = torch.float32, space: LocalSpace | None = None) -> None:
        self.params = list(params)
        if not self.params:
            raise ConfigError("LBFGSB needs at least one parameter tensor, got none")
        devices = {p.device for p in self.params}
        if len(devices) != 1:
            raise ConfigError(f"LBFGSB's parameters must share one device, got {sorted(map(str, devices))}")
        self.options = (options or LBFGSBOptions()).validate()
        self.space = space or LocalSpace()
        with torch.no_grad():
            self.x = torch.cat([p.detach().reshape(-1).to(dtype) for p in self.params])
        self.g = torch.empty_like(self.x)
        self.views = all(p.dtype == dtype for p in self.params)
        if self.views:
            for p, view in zip(self.params, self._split(self.x), strict=True):
                p.data = view

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``flat`` cut into views shaped like the parameters."""
        out, offset = [], 0
        for p in self.params:
            out.append(flat[offset: offset + p.numel()].view_as(p))
            offset += p.numel()
        return out

    def _to_params(self) -> None:
        if not self.views:
            with torch.no_grad():
                for p, view in zip(self.params, self._split(self.x), strict=True):
                    p.copy_(view)

    def step(self, closure: Closure) -> LBFGSBResult:
        """Minimise from the current values; ``closure()`` computes the loss, fills each ``p.grad`` (None
        counts as zero) and returns the loss. The parameters end at the result's x."""

        def evaluate() -> float:
            self._to_params()
            loss = closure()
            with torch.no_grad():
                for p, gv in zip(self.params, self._split(self.g), strict=True):
                    if p.grad is None:
                        gv.zero_()
                    else:
                        gv.copy_(p.grad)
            return _number(loss)

        result = _Run(self.x, self.g, evaluate, self.options, self.space).run()
        self._to_params()
        return result

    def release(self) -> None:
        """Give each parameter its own storage (a copy of its current value), ending the sharing."""
        if self.views:
            with torch.no_grad():
                for p in self.params:
                    p.data = p.data.clone()
            self.views = False
