"""The limited-memory BFGS matrix of L-BFGS-B in SciPy's compact form, its pairs on the device.

Split from ``glocalk.optim`` (the driver): this module holds the pairs, the small matrices and the
direction -H g; the driver decides when to add a pair, reset, or ask for a direction.
"""

from __future__ import annotations

import numpy as np
import torch

from glocalk.optim.space import LocalSpace


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
