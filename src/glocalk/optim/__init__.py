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


class LocalSpace:
    """Inner products and norms of vectors held whole on one device.

    The optimiser reduces a long vector only through these methods; a vector sharded across processes
    passes a space whose methods all-reduce the local results (everything else it does is elementwise).
    """

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` over the vector axis (length n): a 0-d tensor for two (n,) vectors; for a (k, n) block of
        vectors and b (n,) or (n, j), the (k,) or (k, j) products in one pass (a sharded space all-reduces
        whatever shape it gets)."""
        return torch.matmul(a, b)

    def any_true(self, flag: bool, like: torch.Tensor) -> bool:
        """Whether ``flag`` holds for any part of the vector (here: the whole of it); ``like`` gives the device
        a sharded space reduces on."""
        return flag

    def norm_inf(self, a: torch.Tensor) -> torch.Tensor:
        """max |a_i| as a 0-d tensor (NaN if any entry is NaN, as SciPy's ``projgr``)."""
        lo, hi = torch.aminmax(a)  # one pass, no |a| temporary (several times faster than vector_norm on CPU)
        return torch.maximum(-lo, hi)


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


class LBFGSMemory:
    """The limited-memory BFGS matrix in SciPy's compact form (Byrd, Nocedal and Schnabel 1994).

    Holds the last ``col <= m`` pairs s = x+ - x, y = g+ - g on the device, oldest first, and the small
    matrices S'Y, S'S, Y'Y and D = diag(s_i.y_i) on the host in float64; theta = y.y / s.y of the newest
    pair. ``direction`` gives -H g with H the inverse of B = theta I - W M W' (W = [Y, theta S]), solved
    through the factorisation SciPy's ``formk`` builds -- mathematically the two-loop recursion's matrix.

    Memory traffic: the pairs are read twice per iteration, once by ``update_step`` (every stored vector
    against the new s, the new y and the new g, in one product) and once by ``direction`` (forming -H g),
    which reuses the products with g that ``update_step`` cached when nothing has changed since.
    """

    def __init__(self, n: int, m: int, rows: int, like: torch.Tensor, space: LocalSpace) -> None:
        # A ring of rows + 1 slots of two rows each (y_p, s_p of physical slot p): up to `rows` pairs and one
        # spare slot, where the next pair goes and where the optimiser keeps the iteration's start g and x
        # until then (``spare``). The last row is scratch (``scratch``): a copy of g always has a free row
        # right after the newest pair, so [y, s, g] is one (3, n) block. That row is the next spare's y row
        # (unless the pair took the last slot): the copy is already the g the next line search must keep.
        # (A run of maxiter < m iterations never makes more than maxiter - 1 pairs.)
        self.slots = rows + 1
        self.buf = torch.empty((2 * self.slots + 1, n), dtype=like.dtype, device=like.device)
        self.m, self.n, self.space = m, n, space
        self.reset()

    def reset(self) -> None:
        """Forget every pair (SciPy's "refresh the lbfgs memory")."""
        self.col, self.head, self.tail, self.theta = 0, 0, 0, 1.0
        m = self.m
        self.sy, self.ss, self.yy = np.zeros((m, m)), np.zeros((m, m)), np.zeros((m, m))
        self.d = np.zeros(m)  # s_i.y_i as the line search measured it: (g+.d - g.d) * stp
        self.factor: torch.Tensor | None = None
        self.g_products: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (g, its version, block @ g)
        self.g_copy: tuple[torch.Tensor, int, int] | None = None  # (g, its version, the row holding a copy)

    def spare(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Two free (n,) rows (for x, for g) of the slot the next pair will take: free until ``update_step``,
        which reads the second as g_old."""
        p = (self.head + self.col) % self.slots
        return self.buf[2 * p + 1], self.buf[2 * p]

    def holds_copy(self, g: torch.Tensor, row: torch.Tensor) -> bool:
        """Whether ``row`` already holds g as it is now (the copy ``update_step`` made of it)."""
        c = self.g_copy
        return (c is not None and c[0] is g and c[1] == _version(g) and row.data_ptr() == self.buf[c[2]].data_ptr())

    def scratch(self) -> torch.Tensor:
        """An (n,) row outside the pairs, free except while ``update_step`` runs (it may overwrite it)."""
        return self.buf[2 * self.slots]

    def _block(self) -> torch.Tensor:
        """The slots in use as one (2 k, n) block, rows y_p, s_p per physical slot p < k: the pairs, and once
        the ring has wrapped the spare slot too (its rows get coefficient 0)."""
        return self.buf[: 2 * min(self.head + self.col, self.slots)]

    def _logical(self, values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(s-part, y-part) of per-row products of ``_block()`` ((2 k,) or (2 k, j)), oldest pair first."""
        v = values.cpu().double().numpy()
        v = v.reshape((-1, 2) + v.shape[1:])
        order = [(self.head + j) % self.slots for j in range(self.col)]
        return v[order, 1], v[order, 0]

    def update(self, s: torch.Tensor, y: torch.Tensor, sy: float, ss: float) -> bool:
        """Add the pair (s, y) with s.y = ``sy`` and s.s = ``ss`` (``matupd``); False if T = theta S'S + L D^-1 L'
        is not positive definite (``formt``), when the caller must ``reset``."""
        slot = self._next_slot()
        slot[0].copy_(y)
        slot[1].copy_(s)
        return self._commit(sy, ss, None)

    def update_step(self, d: torch.Tensor, stp: float, g: torch.Tensor, g_old: torch.Tensor, sy: float,
                    ss: float) -> bool:
        """``update`` with s = stp d and y = g - g_old, computed straight into the memory (no temporaries;
        ``g_old`` may be the spare's g row, d the scratch row). Also caches the stored vectors' products
        with g, for a ``direction(g)`` before g changes."""
        slot = self._next_slot()
        torch.sub(g, g_old, out=slot[0])
        if stp == 1.0:
            slot[1].copy_(d)
        else:
            torch.mul(d, stp, out=slot[1])
        return self._commit(sy, ss, g)

    def _next_slot(self) -> torch.Tensor:
        """The (2, n) slot the next pair goes to: the spare; the oldest pair's becomes the spare once m are kept."""
        self.tail = (self.head + self.col) % self.slots
        if self.col < self.m:
            self.col += 1
        else:
            self.head = (self.head + 1) % self.slots
            for a in (self.sy, self.ss, self.yy):
                a[:-1, :-1] = a[1:, 1:].copy()
            self.d[:-1] = self.d[1:].copy()
        self.g_products = self.g_copy = None
        return self.buf[2 * self.tail: 2 * self.tail + 2]

    def _commit(self, sy: float, ss: float, g: torch.Tensor | None) -> bool:
        """The small matrices' new row and column, theta, and SciPy's formt / formk for the new pair."""
        k, p = self.col - 1, self.tail
        # Every stored vector against the new y and s (and g) in one pass: s_dots[j] = (s_j.y, s_j.s[, s_j.g]).
        # The row after the new pair is free (the spare's g row or the scratch row): g goes there, so that
        # [y, s, g] is one strided (3, n) block.
        if g is not None:
            self.buf[2 * p + 2].copy_(g)
        # ([y, s, g] @ block' is block @ [y, s, g]' transposed; BLAS streams the block faster in this form.)
        products = self.space.dot(self.buf[2 * p: 2 * p + (2 if g is None else 3)], self._block().T).T
        s_dots, y_dots = self._logical(products)
        y, s = 0, 1  # the columns of the new y and s
        self.sy[k, :k], self.sy[:k, k], self.sy[k, k] = y_dots[:k, s], s_dots[:k, y], s_dots[k, y]
        self.ss[k, :k] = self.ss[:k, k] = s_dots[:k, s]
        self.ss[k, k] = ss
        self.yy[k, :k] = self.yy[:k, k] = y_dots[:k, y]
        self.yy[k, k] = y_dots[k, y]
        self.theta = float(y_dots[k, y]) / sy  # SciPy: ||y||^2 / s.y with s.y as the line search measured it
        self.d[k] = sy
        if not self._formt_ok():
            return False
        self.factor = self._formk()
        version = _version(g) if g is not None else None
        if version is not None:
            self.g_products = (g, version, products[:, 2])
            self.g_copy = (g, version, 2 * p + 2)
        return True

    def _formt_ok(self) -> bool:
        """SciPy's ``formt``: whether T = theta S'S + L D^-1 L' (L: S'Y below the diagonal) is positive definite."""
        c = self.col
        low = np.tril(self.sy[:c, :c], -1)
        t = self.theta * self.ss[:c, :c] + (low / self.d[:c]) @ low.T
        return int(torch.linalg.cholesky_ex(torch.from_numpy(t))[1]) == 0

    def _formk(self) -> torch.Tensor | None:
        """SciPy's ``formk`` with every variable free: U = [[J1, X], [0, J2]], upper triangular, with
        J1'J1 = D + Y'Y/theta, J1'X = R' and J2'J2 = X'X (R: the upper triangle of S'Y), the factors of
        the middle matrix that ``direction`` solves with as ``subsm`` does; None if a Cholesky fails."""
        c, theta = self.col, self.theta
        top = torch.from_numpy(self.yy[:c, :c] / theta + np.diag(self.d[:c]))
        lower1, info1 = torch.linalg.cholesky_ex(top)
        # Upper-right block: R' with R the upper triangle of S'Y, entry (a, b) = s_b.y_a for a >= b, else 0
        # (formk's wn assembly; L_a, the active variables' part, is empty without bounds).
        ur = np.tril(self.sy[:c, :c].T)
        x = torch.linalg.solve_triangular(lower1, torch.from_numpy(ur), upper=False)
        lower2, info2 = torch.linalg.cholesky_ex(x.T @ x)
        if int(info1) or int(info2):
            return None
        u = torch.zeros((2 * c, 2 * c), dtype=torch.float64)
        u[:c, :c], u[:c, c:], u[c:, c:] = lower1.T, x, lower2.T
        return u

    def direction(self, g: torch.Tensor, out: torch.Tensor) -> bool:
        """out := -H g (SciPy's ``cmprlb`` and ``subsm`` with every variable free); False if the factor failed."""
        cached, self.g_products = self.g_products, None
        if self.factor is None:
            return False
        c, theta = self.col, self.theta
        block = self._block()
        if cached is not None and cached[0] is g and cached[1] == _version(g):
            products = cached[2]  # g unchanged since update_step: its products are already known
        else:
            products = self.space.dot(block, g)
        gs, gy = self._logical(products)
        wv = torch.from_numpy(np.concatenate([-gy, -theta * gs]))[:, None]  # W'r with r = -g
        v = torch.linalg.solve_triangular(self.factor.T, wv, upper=False)
        v[:c] = -v[:c]
        z = torch.linalg.solve_triangular(self.factor, v, upper=True)[:, 0].numpy()
        coef = np.zeros((block.shape[0] // 2, 2))  # per physical slot: (coefficient of y, of s); 0 for the spare
        order = [(self.head + j) % self.slots for j in range(c)]
        coef[order, 0], coef[order, 1] = z[:c] / theta, z[c:]
        # out = (-g + Y z_y / theta + S z_s) / theta in one pass over the memory (subsm's d, then its dscal).
        coef_t = torch.from_numpy(coef.reshape(-1) / theta).to(out.device, out.dtype)
        torch.addmv(g, block.T, coef_t, beta=-1.0 / theta, out=out)
        return True


def _version(t: torch.Tensor) -> int | None:
    """The tensor's version counter (bumped by every in-place write, through any view); None for an
    inference-mode tensor, which keeps none."""
    try:
        return t._version
    except RuntimeError:
        return None


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
