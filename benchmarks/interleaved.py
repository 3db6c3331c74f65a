"""Interleaved timing of compiled functions (A B C A B C ...): the one-off A/B scripts under
`benchmarks/results/` share it, so their rounds are timed and reported alike."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def time_interleaved(fns: dict[str, Callable[[], Any]], rounds: int,
                     calls: int = 1) -> dict[str, list[float]]:
  """Milliseconds per call of each zero-argument function, one entry per round.

  Every round runs each function once untimed (so a round starts from a finished call),
  then `calls` times timed; functions alternate within a round so drift hits all alike.
  """
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      jax.block_until_ready(f())
      t0 = time.perf_counter()
      for _ in range(calls):
        out = f()
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t0) / calls * 1e3)
  return times


def report(name: str, times: dict[str, list[float]], calls: int = 1) -> None:
  """Prints each function's median and min ms (the scripts' `.txt` outputs)."""
  for k, v in times.items():
    print(f'{name} {k}: median {statistics.median(v):.1f} ms, min {min(v):.1f} '
          f'({len(v)} interleaved rounds of {calls})', flush=True)


__all__ = ['time_interleaved', 'report']
