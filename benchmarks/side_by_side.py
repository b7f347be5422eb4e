"""Side-by-side timing of two implementations of the same work (benchmarks/vs_pytorch.py's rows)."""

import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch


class Row(NamedTuple):
    label: str
    per: str  # what one reported time is: a step, a call, ...
    run_jax: Callable[[], Any]
    run_torch: Callable[[], Any]
    per_call: int = 1  # units of `per` in one call
    flops: float = 0.0  # per unit; 0: not a compute-bound row
    report: Callable[[], str] | None = None  # checks of the last calls, printed after timing


def xla_flops(compiled: Any) -> float:
    analysis = compiled.cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def count(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def gap(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def ms(seconds: float) -> str:
    milliseconds = 1e3 * seconds
    return f"{milliseconds:,.0f}" if milliseconds >= 100 else f"{milliseconds:.3g}"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def measure(row: Row, repeats: int) -> tuple[float, float]:
    """Median seconds per unit of JAX and of PyTorch, alternating after one warm-up call each."""
    timed(row.run_jax)
    timed(row.run_torch)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        times[0].append(timed(row.run_jax))
        times[1].append(timed(row.run_torch))
    return statistics.median(times[0]) / row.per_call, statistics.median(times[1]) / row.per_call


def matmul_peak(n: int, repeats: int = 4) -> tuple[float, float]:
    """Best float32 FLOP/s of an n x n matmul in JAX and in PyTorch."""
    a, matmul, b = jax.random.normal(jax.random.key(0), (n, n)), jax.jit(jnp.matmul), torch.randn(n, n)
    best = min(timed(lambda: matmul(a, a)) for _ in range(repeats)), min(timed(lambda: b @ b) for _ in range(repeats))
    return 2 * n**3 / best[0], 2 * n**3 / best[1]
