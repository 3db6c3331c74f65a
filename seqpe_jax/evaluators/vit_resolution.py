"""ViT top-1 / top-5 vs image size (`config.eval.image_sizes`, `config.eval.mode`).

Rows `{image_size, split, grid, mode, top1, top5, examples, seconds}` in
`extrapolation.{json,md,png}`; the PE of each grid is encoded once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import jax.numpy as jnp
import ml_collections

from seqpe_jax import evaluate, sharding
from seqpe_jax.errors import ConfigError
from seqpe_jax.evaluate import Table
from seqpe_jax.evaluators import Evaluator, register
from seqpe_jax.positions import grid_2d
from seqpe_jax.vit import patch_grid

if TYPE_CHECKING:
  from seqpe_jax.tasks import Task


def check_config(task: Task, config: ml_collections.ConfigDict) -> None:
  """Fails fast on image sizes (patch grids) and modes the PE cannot serve."""
  sizes = [int(s) for s in config.eval.image_sizes]
  grids = [patch_grid((s, s), task.config.model.patch_size) for s in sizes]
  largest = max((max(g) for g in grids), default=0) - 1
  what = f'evaluation image size {max(sizes, default=0)}'
  if config.eval.get('mode', 'extend') not in ('extend', 'interpolate'):
    raise ConfigError(f"eval.mode must be extend or interpolate, got {config.eval.mode!r}")
  evaluate.check_pe_capacity(task, largest, what)


def sweep_point(task: Task, params: Any, mesh, batches: Iterator[dict], size: int,
                mode: str) -> dict:
  """Top-1 / top-5 at one image size (the PE of its grid encoded once)."""
  encode, step = evaluate.encoder(task), evaluate.metric_step(task, 'topk')
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
      row = sweep_point(task, params, mesh, eval_batches(split, size), size, mode)
      results.append({'image_size': size, 'split': split, **row})
  return results


@register('vit_resolution')
class ViTResolution(Evaluator):
  """Top-1 / top-5 at `eval.image_sizes` on `eval.splits` (`eval.mode`)."""

  output = 'extrapolation'
  table = Table(x_key='image_size', metric='top1', metric_label='top-1',
                x_label='evaluation image size (px)', size_unit=' px', percent=True,
                y_label='top-1 accuracy')

  def __init__(self, task: Task, config: ml_collections.ConfigDict, data: Any = None,
               spec: ml_collections.ConfigDict | None = None):
    super().__init__(task, config=config, data=data, spec=spec)
    check_config(task, config)
    sizes = [int(s) for s in config.eval.image_sizes]
    if data is not None and sizes:
      for split in config.eval.splits:
        next(iter(data.eval_batches(split, min(sizes))), None)

  def run(self, params: Any, mesh) -> list[dict]:
    return vit_extrapolation(self.task, params, mesh, self.data.eval_batches, self.config)
