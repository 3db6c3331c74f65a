"""Extrapolation evaluation: LM perplexity vs length, ViT top-1 vs image size.

The position encoding of each length / grid is computed ONCE (one jitted
encoder call) and reused for every batch at that size (method doc §12).
Writes `<workdir>/extrapolation.{json,md,png}`.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from seqpe_jax import sharding
from seqpe_jax.data import text as text_data
from seqpe_jax.errors import ConfigError
from seqpe_jax.positions import capacity, digits_needed, grid_2d
from seqpe_jax.tasks import Task
from seqpe_jax.vit import patch_grid


def check_eval_config(task: Task, config: ml_collections.ConfigDict) -> None:
  """Fails fast (before training) on evaluation sizes the PE cannot serve."""
  pe = task.pe
  if task.kind == 'lm':
    sizes = [int(l) for l in config.eval.lengths]
    if any(l < 1 for l in sizes):
      raise ConfigError(f'eval.lengths must be positive, got {tuple(sizes)}')
    start = int(config.eval.get('start_position', 0))
    if start < 0:
      raise ConfigError(f'eval.start_position must be >= 0, got {start}')
    largest = start + max(sizes, default=0) - 1
    what = (f'evaluation length {max(sizes, default=0)}' +
            (f' from eval.start_position={start}' if start else ''))
  else:
    sizes = [int(s) for s in config.eval.image_sizes]
    grids = [patch_grid((s, s), task.config.model.patch_size) for s in sizes]
    largest = max((max(g) for g in grids), default=0) - 1
    what = f'evaluation image size {max(sizes, default=0)}'
    if config.eval.get('mode', 'extend') not in ('extend', 'interpolate'):
      raise ConfigError(f"eval.mode must be extend or interpolate, got {config.eval.mode!r}")
  if pe.type == 'seqpe' and largest >= capacity(pe.max_digits):
    raise ConfigError(f'{what} needs position {largest}, beyond the SeqPE digit capacity '
                      f'[0, {capacity(pe.max_digits)}) of max_digits={pe.max_digits}; set '
                      f'pe.seqpe.max_digits >= {digits_needed(largest)}')
  if pe.type == 'learned' and pe.learned_resize == 'none' and largest >= max(task.train_grid):
    raise ConfigError(f'{what} exceeds the learned position table {task.train_grid} and '
                      'pe.learned.resize=none; set it to linear or bicubic')


def _local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's share of a batch that every process built identically."""
  n, i = jax.process_count(), jax.process_index()
  return {k: v[i * (len(v) // n):(i + 1) * (len(v) // n)] for k, v in batch.items()}


def _eval_batch_size(requested: int, mesh) -> int:
  dp = sharding.data_parallel_size(mesh)
  return int(math.ceil(requested / dp) * dp)


@functools.lru_cache(maxsize=None)
def _jitted(task: Task, kind: str) -> Callable:
  """One jitted function per task and kind (recompiles per shape, not per batch)."""
  if kind == 'encode':
    return jax.jit(lambda params, pos, grid, mode: task.encode(params, pos, grid, mode=mode),
                   static_argnums=(2, 3))
  if kind == 'lm':
    def lm_step(params, batch, pe):
      logits = task.logits(params, batch, pe)
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
      return (nll * batch['weights']).sum(), batch['weights'].sum()
    return jax.jit(lm_step)

  def vit_step(params, batch, pe):
    logits = task.logits(params, batch, pe)
    hit = (logits.argmax(-1) == batch['labels']).astype(jnp.float32)
    top5 = (jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
            == batch['labels'][:, None]).any(-1).astype(jnp.float32)
    w = batch['weights']
    return (hit * w).sum(), (top5 * w).sum(), w.sum()
  return jax.jit(vit_step)


def _lm_sweep_point(task: Task, params: Any, mesh, stream: np.ndarray, length: int,
                    e: ml_collections.ConfigDict, tokenizer=None) -> dict:
  """Perplexity of `stream` at one evaluation length (the PE encoded once for it).

  Positions run from `eval.start_position` (the official `--eval_start_pos`): every chunk is
  scored with positions `start .. start+length-1`, while its tokens stay where they are.
  """
  encode, step = _jitted(task, 'encode'), _jitted(task, 'lm')
  bs = _eval_batch_size(int(e.batch_size), mesh)
  start = int(e.get('start_position', 0))
  t0 = time.time()
  positions = (start + jnp.arange(length, dtype=jnp.int32))[None, :, None]
  pe = encode(params, positions, (start + length,) if start else None, 'extend')
  max_tokens = int(e.max_tokens) or None
  if e.stride:
    batches = text_data.lm_sliding_batches(stream, length, int(e.stride), bs, max_tokens)
  else:
    batches = text_data.lm_eval_batches(stream, length, bs, max_tokens)
  nll, count = jnp.zeros(()), jnp.zeros(())
  for batch in batches:
    s, n = step(params, sharding.global_batch(_local_rows(batch), mesh), pe)
    nll, count = nll + s, count + n
  nll, count = float(nll), float(count)
  row = {'length': length, 'ppl': math.exp(nll / count), 'nll': nll / count,
         'tokens': int(count)}
  words = _word_count(tokenizer, stream, max_tokens)
  if words:  # the official evaluation also prints word-level perplexity
    row.update(word_ppl=math.exp(nll / words), words=words)
  if start:
    row['start_position'] = start
  row['seconds'] = round(time.time() - t0, 2)
  return row


def _word_count(tokenizer, stream: np.ndarray, max_tokens: int | None) -> int:
  """Words among the scored tokens (all but the first of the evaluated stream)."""
  count = getattr(tokenizer, 'count_words', None)
  if count is None:
    return 0
  scored = np.asarray(stream[:max_tokens] if max_tokens else stream)[1:]
  return int(count(scored))


def lm_extrapolation(task: Task, params: Any, mesh, eval_stream: Callable[[str], np.ndarray],
                     config: ml_collections.ConfigDict, tokenizer=None) -> list[dict]:
  """Perplexity at each `eval.lengths` on each `eval.splits` (non-overlapping or sliding)."""
  results = []
  for split in config.eval.splits:
    stream = eval_stream(split)
    for length in (int(l) for l in config.eval.lengths):
      row = _lm_sweep_point(task, params, mesh, stream, length, config.eval, tokenizer)
      results.append({'length': row.pop('length'), 'split': split, **row})
  return results


def _vit_sweep_point(task: Task, params: Any, mesh, batches: Iterator[dict], size: int,
                     mode: str) -> dict:
  """Top-1 / top-5 at one image size (the PE of its grid encoded once)."""
  encode, step = _jitted(task, 'encode'), _jitted(task, 'vit')
  t0 = time.time()
  g = patch_grid((size, size), task.config.model.patch_size)
  pe = encode(params, grid_2d(*g)[None], g, mode)
  hits, hits5, count = jnp.zeros(()), jnp.zeros(()), jnp.zeros(())
  for batch in batches:
    h, h5, n = step(params, sharding.global_batch(batch, mesh), pe)
    hits, hits5, count = hits + h, hits5 + h5, count + n
  count = float(count)
  return {'grid': list(g), 'mode': mode, 'top1': float(hits) / count,
          'top5': float(hits5) / count, 'examples': int(count),
          'seconds': round(time.time() - t0, 2)}


def vit_extrapolation(task: Task, params: Any, mesh,
                      eval_batches: Callable[[str, int], Iterator[dict]],
                      config: ml_collections.ConfigDict) -> list[dict]:
  """Top-1 / top-5 at each `eval.image_sizes` (`eval.mode`: extend | interpolate)."""
  e = config.eval
  mode = e.get('mode', 'extend')
  results = []
  for split in e.splits:
    for size in (int(s) for s in e.image_sizes):
      row = _vit_sweep_point(task, params, mesh, eval_batches(split, size), size, mode)
      results.append({'image_size': size, 'split': split, **row})
  return results


def validation(task: Task, params: Any, mesh, data, config: ml_collections.ConfigDict
               ) -> tuple[dict[str, float], float]:
  """Validation at the training size on `data.eval_split`: `(metrics, score to minimise)`.

  LM: perplexity at the training length; ViT: top-1 at the training image size (the
  official model selection: best validation perplexity at 512 / best top-1 at 224).
  """
  split = config.data.eval_split
  if task.kind == 'lm':
    e = config.eval.copy_and_resolve_references()
    e.start_position = 0
    row = _lm_sweep_point(task, params, mesh, data.eval_stream(split), task.train_grid[0], e)
    return {'val_ppl': row['ppl']}, row['ppl']
  size = int(config.train.image_size)
  row = _vit_sweep_point(task, params, mesh, data.eval_batches(split, size), size, 'extend')
  return {'val_top1': row['top1']}, -row['top1']


def write_report(workdir: str | pathlib.Path, task: Task, results: list[dict]) -> dict:
  """Writes extrapolation.json / .md / .png (process 0) and returns the report."""
  lm = task.kind == 'lm'
  train = task.train_grid[0] if lm else int(task.config.train.image_size)
  report = {'task': task.kind, 'pe': task.pe.type,
            ('train_length' if lm else 'train_image_size'): train, 'results': results}
  if jax.process_index() != 0:
    return report
  workdir = pathlib.Path(workdir)
  (workdir / 'extrapolation.json').write_text(json.dumps(report, indent=2))
  (workdir / 'extrapolation.md').write_text(markdown_table(report))
  _plot(report, workdir / 'extrapolation.png')
  return report


def markdown_table(report: dict) -> str:
  """One row per PE, one column per length / image size."""
  lm = report['task'] == 'lm'
  key, metric = ('length', 'ppl') if lm else ('image_size', 'top1')
  splits = sorted({r['split'] for r in report['results']})
  lines = []
  for split in splits:
    rows = [r for r in report['results'] if r['split'] == split]
    train = report['train_length' if lm else 'train_image_size']
    head = [f"{r[key]} ({r[key] / train:g}x)" for r in rows]
    lines.append(f"{'perplexity' if lm else 'top-1'} on {split} "
                 f"(trained at {train}{'' if lm else ' px'}):\n")
    lines.append('| PE | ' + ' | '.join(head) + ' |')
    lines.append('|---|' + '---|' * len(rows))
    fmt = (lambda v: f'{v:.2f}') if lm else (lambda v: f'{100 * v:.1f}%')
    lines.append(f"| {report['pe']} | " + ' | '.join(fmt(r[metric]) for r in rows) + ' |\n')
  return '\n'.join(lines)


def _plot(report: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  lm = report['task'] == 'lm'
  key, metric = ('length', 'ppl') if lm else ('image_size', 'top1')
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for split in sorted({r['split'] for r in report['results']}):
    rows = [r for r in report['results'] if r['split'] == split]
    ax.plot([r[key] for r in rows], [r[metric] for r in rows], marker='o',
            label=f"{report['pe']} ({split})")
  train = report['train_length' if lm else 'train_image_size']
  ax.axvline(train, color='grey', linestyle='--', linewidth=1, label='train size')
  if lm:
    ax.set_xscale('log', base=2)
  ax.set_xlabel('evaluation length (tokens)' if lm else 'evaluation image size (px)')
  ax.set_ylabel('perplexity' if lm else 'top-1 accuracy')
  ax.set_title(f"{report['task'].upper()} extrapolation, pe={report['pe']}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
