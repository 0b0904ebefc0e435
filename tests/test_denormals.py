"""Denormals flushed to zero while training runs (``glocalk.denormals``), on every CPU thread, and put back.

Checked by what the CPU computes, not by the module's own bookkeeping: a denormal (1e-39 < 1.2e-38) times 1
stays a denormal on a thread that does not flush and becomes exactly 0 on one that does; an elementwise
product over a long vector is split over all of torch's threads, so it shows every thread's flag at once.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_ratings

from glocalk import denormals
from glocalk.train import TrainConfig, Trainer, torch_threads

DENORMAL_BITS = 0x000AE398  # a float32 of ~1e-39, made from its bits (a conversion would be flushed itself)


def denormal_vector(n: int) -> torch.Tensor:
    return torch.full((n,), DENORMAL_BITS, dtype=torch.int32).view(torch.float32)


def flushed_fraction(n: int = 1 << 20) -> float:
    """The share of a long denormal vector times 1 that comes out 0 (work split over torch's threads)."""
    x = denormal_vector(n)
    assert float(x.view(torch.int32)[0]) == DENORMAL_BITS and x.abs().max() < 1.2e-38
    return float(((x * torch.ones(n)) == 0).float().mean())


@pytest.mark.parametrize("threads", [1, 2])
def test_flushed_sets_every_thread_and_puts_each_back(threads):
    with torch_threads(threads):
        assert flushed_fraction() == 0.0, "the process must start without flushing (the CPU's default)"
        with denormals.flushed():
            assert flushed_fraction() == 1.0, "some thread still computes denormals"
            assert float(denormal_vector(1) * 1.0) == 0.0
        assert flushed_fraction() == 0.0, "the flag must be put back on every thread"


def test_a_caller_that_flushes_keeps_flushing_after_the_block():
    with torch_threads(1):
        torch.set_flush_denormal(True)
        try:
            with denormals.flushed():
                pass
            assert float(denormal_vector(1) * 1.0) == 0.0, "the caller's own setting was undone"
        finally:
            torch.set_flush_denormal(False)
    assert float(denormal_vector(1) * 1.0) != 0.0


def test_training_flushes_and_leaves_the_process_as_it_found_it(monkeypatch):
    """Trainer.run computes its passes with denormals flushed (seen from inside a pass), then restores."""
    seen = []
    real = Trainer._training_loss

    def spying(self, stage):
        seen.append(flushed_fraction(1 << 16))
        return real(self, stage)

    monkeypatch.setattr(Trainer, "_training_loss", spying)
    tc = TrainConfig(epoch_p=1, epoch_f=1, iter_p=2, iter_f=2, threads=2)
    Trainer(tiny_ratings(), None, tc).run()
    assert seen and all(f == 1.0 for f in seen), f"passes computed denormals: {seen}"
    assert flushed_fraction() == 0.0
