"""Where a compiled program's time goes: a ``jax.profiler`` trace, summed by HLO opcode.

The compiled module's entry instructions come from the Python API
(``compiled.runtime_executable().hlo_modules()[0].computations()`` -> ``instructions()`` ->
``name`` / ``opcode``), not from parsing HLO text. The trace's events (XLA:CPU thunks, GPU
kernels) are named after those instructions, and each event's duration is added to its
instruction's opcode. The categories are therefore *opcodes* (``convolution``, ``fusion``,
``dot``, ``reduce-window``, ``select-and-scatter``, ``copy``, ...); fusions are split by the
instruction's name without its number (``fusion:ynn_fusion``: the convolutions XLA:CPU hands to
YNNPACK; ``fusion:transpose_copy_fusion``, ...). XLA fuses GroupNorm, ReLU and Adam into
fusions. Forward and backward are not told apart: that needs each instruction's
``op_name`` metadata, which the API only exposes through the HLO text.

FLOPs come from XLA's cost analysis of the whole program (``compiled.cost_analysis()``). A split
by category is not available there.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
import time
from collections import defaultdict

import jax

from benchmarks.harness import cost_flops


def entry_opcodes(compiled) -> dict[str, str]:
    """``{instruction name: opcode}`` of every computation of ``compiled``'s HLO module(s).

    The opcode is written as in HLO (``convolution``, ``fusion``, ``reduce-window``).
    """
    out = {}
    for module in compiled.runtime_executable().hlo_modules():
        for comp in module.computations():
            for inst in comp.instructions():
                op = str(inst.opcode).split(".")[-1]            # HloOpcode.kConvolution
                op = op[1:] if op.startswith("k") else op
                # kReduceWindow -> reduce-window (HLO's spelling)
                out[inst.name] = "".join("-" + ch.lower() if ch.isupper() else ch
                                         for ch in op).lstrip("-")
    return out


def profile_program(fn, args, calls: int = 3) -> dict:
    """Trace ``calls`` runs of ``fn(*args)`` (a jitted function or a compiled program) and sum
    the events' durations by the opcode of the instruction they run.

    XLA:CPU runs independent thunks concurrently, so the shares are of summed event time, not
    of wall time. Returns ``dict(wall_per_call, summed_event_seconds, rows=[dict(category,
    seconds, share, events)], gflop (cost analysis), gflops_per_s (over wall time))``.
    """
    compiled = fn.lower(*args).compile() if hasattr(fn, "lower") else fn
    opcodes = entry_opcodes(compiled)
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(compiled(*args))
        wall = (time.perf_counter() - t0) / calls
        paths = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs
                 if f.endswith("perfetto_trace.json.gz")]
        if not paths:
            return dict(error="no perfetto trace written")
        with gzip.open(paths[0]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    dur: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("ph") != "X":
            continue
        args_ = e.get("args") or {}
        for key in (e.get("name", ""), args_.get("hlo_op"), args_.get("name")):
            if key in opcodes:
                cat = opcodes[key]
                if cat == "fusion":     # by kind: ynn_fusion (XLA:CPU's library convolutions),
                    cat = "fusion:" + re.sub(r"[.\d]+$", "", key)  # loop fusions, ...
                dur[cat] += float(e.get("dur", 0.0)) / 1e6 / calls
                count[cat] += 1
                break
    total = sum(dur.values())
    rows = [dict(category=k, seconds=t, share=t / total if total else None,
                 events=count[k] // calls)
            for k, t in sorted(dur.items(), key=lambda kv: -kv[1])]
    flops = cost_flops(compiled)
    return dict(wall_per_call=wall, summed_event_seconds=total, rows=rows,
                gflop=(flops or 0.0) / 1e9,
                gflops_per_s=(flops / wall / 1e9) if flops else None)
