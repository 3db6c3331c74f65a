"""LM perplexity vs evaluation length (`config.eval.lengths` on `config.eval.splits`).

Rows `{length, split, ppl, nll, tokens[, word_ppl, words][, start_position], seconds}` in
`extrapolation.{json,md,png}`; the PE of each length is encoded once.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable

import jax.numpy as jnp
import ml_collections
import numpy as np

from seqpe_jax import evaluate, sharding
from seqpe_jax.data import text as text_data
from seqpe_jax.errors import ConfigError
from seqpe_jax.evaluate import Table
from seqpe_jax.evaluators import Evaluator, register

if TYPE_CHECKING:
  from seqpe_jax.tasks import Task


def check_config(task: Task, config: ml_collections.ConfigDict) -> None:
  """Fails fast on evaluation lengths / start positions the PE cannot serve."""
  sizes = [int(l) for l in config.eval.lengths]
  if any(l < 1 for l in sizes):
    raise ConfigError(f'eval.lengths must be positive, got {tuple(sizes)}')
  start = int(config.eval.get('start_position', 0))
  if start < 0:
    raise ConfigError(f'eval.start_position must be >= 0, got {start}')
  largest = start + max(sizes, default=0) - 1
  what = (f'evaluation length {max(sizes, default=0)}' +
          (f' from eval.start_position={start}' if start else ''))
  evaluate.check_pe_capacity(task, largest, what)


def sweep_point(task: Task, params: Any, mesh, stream: np.ndarray, length: int,
                e: ml_collections.ConfigDict, tokenizer=None) -> dict:
  """Perplexity of `stream` at one evaluation length (the PE encoded once for it).

  Positions run from `eval.start_position` (the official `--eval_start_pos`): every chunk is
  scored with positions `start .. start+length-1`, while its tokens stay where they are.
  """
  encode, step = evaluate.encoder(task), evaluate.metric_step(task, 'nll')
  bs = evaluate.eval_batch_size(int(e.batch_size), mesh)
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
    s, n = step(params, sharding.global_batch(evaluate.local_rows(batch), mesh), pe)
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
      row = sweep_point(task, params, mesh, stream, length, config.eval, tokenizer)
      results.append({'length': row.pop('length'), 'split': split, **row})
  return results


@register('lm_extrapolation')
class LMExtrapolation(Evaluator):
  """Perplexity at `eval.lengths` (from `eval.start_position`) on `eval.splits`."""

  output = 'extrapolation'
  table = Table(x_key='length', metric='ppl', metric_label='perplexity',
                x_label='evaluation length (tokens)', log_x=True)

  def __init__(self, task: Task, config: ml_collections.ConfigDict, data: Any = None,
               spec: ml_collections.ConfigDict | None = None):
    super().__init__(task, config=config, data=data, spec=spec)
    check_config(task, config)
    if data is not None:
      for split in config.eval.splits:
        data.eval_stream(split)  # tokenizes (and caches) the split

  def run(self, params: Any, mesh) -> list[dict]:
    return lm_extrapolation(self.task, params, mesh, self.data.eval_stream, self.config,
                            tokenizer=self.data.tokenizer)
