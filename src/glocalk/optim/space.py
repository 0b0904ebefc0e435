"""Where the optimiser takes inner products and norms of its long vectors: the one place a sharded run
replaces (``glocalk.distributed.ShardedSpace`` all-reduces each result)."""

from __future__ import annotations

import torch


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
