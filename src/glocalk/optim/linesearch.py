"""The line search of glocalk.optim's L-BFGS-B: SciPy's ``dcsrch`` and ``dcstep`` (Moré and Thuente 1994).

Float64 scalars on the host, as ``scipy/optimize/__lbfgsb.c``; ``LineSearch`` is ``dcsrch`` from its
START call on, with ``lnsrlb``'s constants (ftol 1e-3, gtol 0.9, xtol 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FTOL, GTOL, XTOL = 1e-3, 0.9, 0.1  # lnsrlb's line-search constants
XTRAPL, XTRAPU = 1.1, 4.0  # dcsrch's extrapolation bounds

F64 = np.float64


def _fmax(*values: F64) -> F64:
    """C's fmax over several values (a NaN loses to a number)."""
    out = values[0]
    for v in values[1:]:
        out = np.fmax(out, v)
    return out


@dataclass
class _Interval:
    """dcstep's state: the best step so far (stx), the other end (sty), their f and f', whether bracketed."""

    stx: F64
    fx: F64
    gx: F64
    sty: F64
    fy: F64
    gy: F64
    brackt: bool = False


def _cubic_gamma(theta: F64, d1: F64, d2: F64) -> F64:
    s = _fmax(abs(theta), abs(d1), abs(d2))
    return s * np.sqrt((theta / s) ** 2 - (d1 / s) * (d2 / s))


def _dcstep(iv: _Interval, stp: F64, fp: F64, dp: F64, bounds: tuple[F64, F64]) -> F64:
    """The safeguarded trial step (SciPy's ``dcstep``); updates ``iv`` and returns the new step."""
    stx, fx, dx, sty, fy, dy = iv.stx, iv.fx, iv.gx, iv.sty, iv.fy, iv.gy
    stpmin, stpmax = bounds
    sgnd = dp * (dx / abs(dx))
    if fp > fx:  # a higher function value: the minimum is bracketed
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = _cubic_gamma(theta, dx, dp)
        gamma = -gamma if stp < stx else gamma
        stpc = stx + (((gamma - dx) + theta) / (((gamma - dx) + gamma) + dp)) * (stp - stx)
        stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
        stpf = stpc if abs(stpc - stx) < abs(stpq - stx) else stpc + (stpq - stpc) / 2.0
        iv.brackt = True
    elif sgnd < 0.0:  # derivatives of opposite sign: bracketed
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = _cubic_gamma(theta, dx, dp)
        gamma = -gamma if stp > stx else gamma
        stpc = stp + (((gamma - dp) + theta) / (((gamma - dp) + gamma) + dx)) * (stx - stp)
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
        iv.brackt = True
    elif abs(dp) < abs(dx):  # same sign, the derivative's magnitude decreases
        stpf = _dcstep_decreasing(iv, stp, fp, dp, bounds)
    elif iv.brackt:  # same sign, no decrease: the cubic towards sty
        theta = 3.0 * (fp - fy) / (sty - stp) + dy + dp
        gamma = _cubic_gamma(theta, dy, dp)
        gamma = -gamma if stp > sty else gamma
        stpf = stp + (((gamma - dp) + theta) / (((gamma - dp) + gamma) + dy)) * (sty - stp)
    else:
        stpf = stpmax if stp > stx else stpmin
    if fp > fx:
        iv.sty, iv.fy, iv.gy = stp, fp, dp
    else:
        if sgnd < 0.0:
            iv.sty, iv.fy, iv.gy = stx, fx, dx
        iv.stx, iv.fx, iv.gx = stp, fp, dp
    return stpf


def _dcstep_decreasing(iv: _Interval, stp: F64, fp: F64, dp: F64, bounds: tuple[F64, F64]) -> F64:
    """dcstep's third case: the cubic may not have a minimiser beyond stp; extrapolate, safeguarded."""
    stx, fx, dx = iv.stx, iv.fx, iv.gx
    stpmin, stpmax = bounds
    theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
    s = _fmax(abs(theta), abs(dx), abs(dp))
    gamma = s * np.sqrt(np.fmax(0.0, (theta / s) ** 2 - (dx / s) * (dp / s)))
    gamma = -gamma if stp > stx else gamma
    r = ((gamma - dp) + theta) / ((gamma + (dx - dp)) + gamma)
    if r < 0.0 and gamma != 0.0:
        stpc = stp + r * (stx - stp)
    else:
        stpc = stpmax if stp > stx else stpmin
    stpq = stp + (dp / (dp - dx)) * (stx - stp)
    if iv.brackt:
        stpf = stpc if abs(stpc - stp) < abs(stpq - stp) else stpq
        if stp > stx:
            return np.fmin(stp + 0.66 * (iv.sty - stp), stpf)
        return np.fmax(stp + 0.66 * (iv.sty - stp), stpf)
    stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
    return np.fmax(stpmin, np.fmin(stpmax, stpf))


class LineSearch:
    """SciPy's ``dcsrch`` from its START call on: ``next(f, g, stp)`` answers "converged", "warning" or the
    next trial step (g: the directional derivative at stp)."""

    def __init__(self, f: float, g: float, stp: float, stpmax: float) -> None:
        self.stage, self.finit, self.ginit, self.gtest = 1, F64(f), F64(g), F64(FTOL) * F64(g)
        self.stpmin, self.stpmax = F64(0.0), F64(stpmax)
        self.width = self.stpmax - self.stpmin
        self.width1 = self.width / 0.5
        self.iv = _Interval(F64(0.0), self.finit, self.ginit, F64(0.0), self.finit, self.ginit)
        self.stmin, self.stmax = F64(0.0), F64(stp) + XTRAPU * F64(stp)

    def _ends(self, f: F64, g: F64, stp: F64, ftest: F64) -> str | None:
        """dcsrch's tests, in its order (a later one overrides an earlier one)."""
        task, iv = None, self.iv
        if iv.brackt and (stp <= self.stmin or stp >= self.stmax):
            task = "warning"  # rounding errors prevent progress
        if iv.brackt and self.stmax - self.stmin <= XTOL * self.stmax:
            task = "warning"  # xtol test satisfied
        if stp == self.stpmax and f <= ftest and g <= self.gtest:
            task = "warning"  # stp = stpmax
        if stp == self.stpmin and (f > ftest or g >= self.gtest):
            task = "warning"  # stp = stpmin
        if f <= ftest and abs(g) <= GTOL * (-self.ginit):
            task = "converged"
        return task

    def next(self, f: float, g: float, stp: float) -> str | float:
        """The verdict on the step just evaluated, or the next step to evaluate."""
        with np.errstate(all="ignore"):  # IEEE results (inf, NaN) as in C, where Python floats would raise
            return self._next(F64(f), F64(g), F64(stp))

    def _next(self, f: F64, g: F64, stp: F64) -> str | float:
        ftest = self.finit + stp * self.gtest
        if self.stage == 1 and f <= ftest and g >= 0.0:
            self.stage = 2
        task = self._ends(f, g, stp, ftest)
        if task is not None:
            return task
        iv, gtest, bounds = self.iv, self.gtest, (self.stmin, self.stmax)
        if self.stage == 1 and f <= iv.fx and f > ftest:
            # The modified function psi(stp) = f - stp * gtest until a step of sufficient decrease is found.
            iv.fx, iv.fy, iv.gx, iv.gy = iv.fx - iv.stx * gtest, iv.fy - iv.sty * gtest, iv.gx - gtest, iv.gy - gtest
            stp = _dcstep(iv, stp, f - stp * gtest, g - gtest, bounds)
            iv.fx, iv.fy, iv.gx, iv.gy = iv.fx + iv.stx * gtest, iv.fy + iv.sty * gtest, iv.gx + gtest, iv.gy + gtest
        else:
            stp = _dcstep(iv, stp, f, g, bounds)
        return float(self._safeguard(stp))

    def _safeguard(self, stp: F64) -> F64:
        """Bisect when the interval shrinks too slowly, set the next interval, clamp (dcsrch's tail)."""
        iv = self.iv
        if iv.brackt:
            if abs(iv.sty - iv.stx) >= 0.66 * self.width1:
                stp = iv.stx + 0.5 * (iv.sty - iv.stx)
            self.width1 = self.width
            self.width = abs(iv.sty - iv.stx)
            self.stmin, self.stmax = np.fmin(iv.stx, iv.sty), np.fmax(iv.stx, iv.sty)
        else:
            self.stmin = stp + XTRAPL * (stp - iv.stx)
            self.stmax = stp + XTRAPU * (stp - iv.stx)
        stp = np.fmin(np.fmax(stp, self.stpmin), self.stpmax)
        if iv.brackt and (stp <= self.stmin or stp >= self.stmax or self.stmax - self.stmin <= XTOL * self.stmax):
            stp = iv.stx
        return stp
