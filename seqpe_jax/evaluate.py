"""Evaluation machinery shared by the evaluators, and the one report writer.

Each evaluation is a plug-in of `seqpe_jax.evaluators` (the LM length sweep, the ViT
resolution sweep, ...); this module holds what they share: the PE capacity check, the
jitted encoder / metric steps (the position encoding of each length / grid is computed
ONCE and reused for every batch at that size, method doc §12) and `write_report`, which
turns the rows of any evaluation into `<workdir>/<name>.{json,md,png}` from the
evaluator's declared `Table` (x key, metric, labels).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from seqpe_jax import sharding
from seqpe_jax.errors import ConfigError
from seqpe_jax.positions import capacity, digits_needed

if TYPE_CHECKING:
  from seqpe_jax.tasks import Task


def check_pe_capacity(task: Task, largest: int, what: str) -> None:
  """Fails fast (before training) when position `largest` is beyond what the PE serves."""
  pe = task.pe
  if pe.type == 'seqpe' and largest >= capacity(pe.max_digits):
    raise ConfigError(f'{what} needs position {largest}, beyond the SeqPE digit capacity '
                      f'[0, {capacity(pe.max_digits)}) of max_digits={pe.max_digits}; set '
                      f'pe.seqpe.max_digits >= {digits_needed(largest)}')
  if pe.type == 'learned' and pe.learned_resize == 'none' and largest >= max(task.train_grid):
    raise ConfigError(f'{what} exceeds the learned position table {task.train_grid} and '
                      'pe.learned.resize=none; set it to linear or bicubic')


def check_eval_config(task: Task, config: ml_collections.ConfigDict) -> None:
  """Validates the task's default evaluations against `config.eval` (no data read)."""
  from seqpe_jax import evaluators  # pylint: disable=g-import-not-at-top
  evaluators.build(task, config)


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's share of a batch that every process built identically."""
  n, i = jax.process_count(), jax.process_index()
  return {k: v[i * (len(v) // n):(i + 1) * (len(v) // n)] for k, v in batch.items()}


def eval_batch_size(requested: int, mesh) -> int:
  dp = sharding.data_parallel_size(mesh)
  return int(math.ceil(requested / dp) * dp)


def encoder(task: Task) -> Callable:
  """`encode(params, positions_PxNxd, grid_shape | None, mode) -> PEOutput`, jitted once."""
  return _jitted(task, 'encode')


def metric_step(task: Task, kind: str) -> Callable:
  """The jitted metric step `kind` ('nll' | 'topk', see `_jitted`) of `task`."""
  return _jitted(task, kind)


# Earlier names of the metric steps.
_STEP_ALIASES = {'lm': 'nll', 'vit': 'topk'}


def _jitted(task: Task, kind: str) -> Callable:
  """One jitted function per task and kind (recompiles per shape, not per batch).

  Kinds: `encode` (the PE alone), `nll` (token NLL and count sums; alias `lm`), `topk`
  (top-1 / top-5 hit and example sums; alias `vit`).
  """
  return _jitted_step(task, _STEP_ALIASES.get(kind, kind))


@functools.lru_cache(maxsize=None)
def _jitted_step(task: Task, kind: str) -> Callable:
  if kind == 'encode':
    return jax.jit(lambda params, pos, grid, mode: task.encode(params, pos, grid, mode=mode),
                   static_argnums=(2, 3))
  if kind == 'nll':
    def lm_step(params, batch, pe):
      logits = task.logits(params, batch, pe)
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
      return (nll * batch['weights']).sum(), batch['weights'].sum()
    return jax.jit(lm_step)

  if kind != 'topk':
    raise ValueError(f'unknown evaluation step {kind!r}')

  def vit_step(params, batch, pe):
    logits = task.logits(params, batch, pe)
    hit = (logits.argmax(-1) == batch['labels']).astype(jnp.float32)
    top5 = (jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
            == batch['labels'][:, None]).any(-1).astype(jnp.float32)
    w = batch['weights']
    return (hit * w).sum(), (top5 * w).sum(), w.sum()
  return jax.jit(vit_step)


# ---------------------------------------------------------------------------- reports

@dataclasses.dataclass(frozen=True)
class Table:
  """How an evaluation's rows read as a table and a plot: one column per `x_key` value."""

  x_key: str                   # the row key of the swept size ('length', 'image_size')
  metric: str                  # the row key of the score ('ppl', 'top1')
  metric_label: str            # 'perplexity'
  x_label: str                 # the plot's x axis, 'evaluation length (tokens)'
  size_unit: str = ''          # after the training size in the table head (' px')
  percent: bool = False        # show the metric as a percentage (one decimal), else .2f
  log_x: bool = False          # log2 x axis
  title: str = 'extrapolation'
  y_label: str = ''            # the plot's y axis (default: metric_label)

  def fmt(self, v: float) -> str:
    return f'{100 * v:.1f}%' if self.percent else f'{v:.2f}'


def report_of(task: Task, results: list[dict]) -> dict:
  """`{task, pe, <train size key>, results}` (README, Outputs)."""
  return {'task': task.kind, 'pe': task.pe.type, task.train_size_key: task.train_size,
          'results': results}


def write_report(workdir: str | pathlib.Path, task: Task, results: list[dict],
                 table: Table | None = None, name: str = 'extrapolation') -> dict:
  """Writes `<name>.json` / `.md` / `.png` (process 0) and returns the report.

  `table` defaults to that of the task's first default evaluation.
  """
  if table is None:
    from seqpe_jax import evaluators  # pylint: disable=g-import-not-at-top
    table = evaluators.get(task.default_evaluations[0]).table
  report = report_of(task, results)
  if jax.process_index() != 0:
    return report
  workdir = pathlib.Path(workdir)
  (workdir / f'{name}.json').write_text(json.dumps(report, indent=2))
  (workdir / f'{name}.md').write_text(markdown_table(report, table))
  _plot(report, workdir / f'{name}.png', table)
  return report


def _train_size(report: dict) -> tuple[str, Any]:
  key = next(k for k in report if k not in ('task', 'pe', 'results'))
  return key, report[key]


def markdown_table(report: dict, table: Table) -> str:
  """One row per PE, one column per swept size, one table per split."""
  key, metric = table.x_key, table.metric
  _, train = _train_size(report)
  lines = []
  for split in sorted({r['split'] for r in report['results']}):
    rows = [r for r in report['results'] if r['split'] == split]
    head = [f"{r[key]} ({r[key] / train:g}x)" for r in rows]
    lines.append(f"{table.metric_label} on {split} (trained at {train}{table.size_unit}):\n")
    lines.append('| PE | ' + ' | '.join(head) + ' |')
    lines.append('|---|' + '---|' * len(rows))
    lines.append(f"| {report['pe']} | " + ' | '.join(table.fmt(r[metric]) for r in rows) +
                 ' |\n')
  return '\n'.join(lines)


def _plot(report: dict, path: pathlib.Path, table: Table) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  key, metric = table.x_key, table.metric
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for split in sorted({r['split'] for r in report['results']}):
    rows = [r for r in report['results'] if r['split'] == split]
    ax.plot([r[key] for r in rows], [r[metric] for r in rows], marker='o',
            label=f"{report['pe']} ({split})")
  _, train = _train_size(report)
  ax.axvline(train, color='grey', linestyle='--', linewidth=1, label='train size')
  if table.log_x:
    ax.set_xscale('log', base=2)
  ax.set_xlabel(table.x_label)
  ax.set_ylabel(table.y_label or table.metric_label)
  ax.set_title(f"{report['task'].upper()} {table.title}, pe={report['pe']}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
