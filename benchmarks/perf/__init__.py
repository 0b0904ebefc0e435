"""The pieces of ``benchmarks/run.py``: workers that measure, sections that plan them, rendering.

- ``common``: the benchmark's constants and the epoch-log totals both sides use.
- ``machine``: memory of this and other processes, the machine's description.
- ``workers``: what runs inside one ``--worker`` subprocess (passes, a training run).
- ``runner``: starts a worker in a fresh subprocess under a memory and time watchdog.
- ``sections``: the four sections (passes, protocols, scaling, epoch10m) as worker plans.
- ``derive``: ratios, the ML-1M dense extrapolation and the target checks.
- ``render``: docs/PERFORMANCE.md and the scaling plot, from the results alone.
"""
