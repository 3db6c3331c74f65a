"""Metric logging: console progress bar, `metrics.jsonl`, TensorBoard event files.

Only process 0 writes. On resume, `metrics.jsonl` entries past the restored
step are dropped, so the file always describes one trajectory.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Mapping

import jax
import tqdm


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and `<workdir>/tb/`, shows a progress bar."""

  def __init__(self, workdir: str | pathlib.Path, *, total_steps: int, start_step: int = 0,
               enabled: bool | None = None, progress: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = pathlib.Path(workdir)
    self._tb = None
    self._bar = None
    if not self.enabled:
      return
    self.path = self.workdir / 'metrics.jsonl'
    self._truncate_after(start_step)
    self._file = self.path.open('a')
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(self.workdir / 'tb'))
    except ImportError:  # TensorBoard files are optional; jsonl always works
      self._tb = None
    if progress:
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                            file=sys.stdout, mininterval=1.0, leave=True)

  def _truncate_after(self, step: int) -> None:
    if not self.path.exists():
      return
    keep = []
    for line in self.path.read_text().splitlines():
      try:
        if json.loads(line).get('step', 0) <= step:
          keep.append(line)
      except ValueError:  # a line cut by a crash mid-write
        continue
    tmp = self.path.with_suffix('.jsonl.tmp')
    tmp.write_text(''.join(k + '\n' for k in keep))
    tmp.replace(self.path)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: _num(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != 'step' and isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
    if self._bar is not None:
      shown = {k: row[k] for k in ('loss', 'contrastive', 'ood', 'accuracy', 'tokens_per_sec',
                                   'images_per_sec') if k in row}
      # Non-finite values are logged as strings ('nan'), e.g. a step skipped by the NaN guard.
      self._bar.set_postfix({k: f'{v:.4g}' if isinstance(v, (int, float)) else str(v)
                             for k, v in shown.items()}, refresh=False)

  def advance(self, n: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(n)

  def close(self) -> None:
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()


def _num(v) -> float | int | str:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return str(v)
  return f if math.isfinite(f) else str(f)


def word_perplexity(total_nll: float, num_words: int) -> float:
  """exp(total NLL in nats / words): word-level perplexity (inf on overflow)."""
  if num_words <= 0:
    raise ValueError(f'word perplexity needs a positive word count, got {num_words}')
  try:
    return math.exp(float(total_nll) / num_words)
  except OverflowError:
    return math.inf
