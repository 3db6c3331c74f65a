"""Language modelling: a GPT on token windows, next-token cross-entropy, perplexity sweeps."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from seqpe_jax import posenc
from seqpe_jax.gpt import GPT, GPTConfig
from seqpe_jax.posenc import PEOutput
from seqpe_jax.tasks.base import Task, _dataclass_from, register


@register('lm')
class LMTask(Task):
  """Next-token prediction on `train.seq_len` windows (positions 0..L-1)."""

  data_dim = 1
  pe_types = posenc.LM_PE_TYPES
  units = 'tokens'
  default_evaluations = ('lm_extrapolation',)
  train_size_key = 'train_length'
  generates = True

  @classmethod
  def check_data_config(cls, data_cfg: ml_collections.ConfigDict) -> None:
    from seqpe_jax import validate  # pylint: disable=g-import-not-at-top
    validate.check_lm_data(data_cfg)

  @classmethod
  def build_data(cls, config: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> Any:
    from seqpe_jax.data import text  # pylint: disable=g-import-not-at-top
    return text.build_lm_data(config.data, seq_len=int(config.train.seq_len),
                              batch_size=batch_size, seed=seed, process_index=process_index,
                              process_count=process_count)

  @classmethod
  def from_data(cls, config: ml_collections.ConfigDict, data: Any, data_parallel: int = 1
                ) -> 'LMTask':
    return cls(config, vocab_size=data.tokenizer.vocab_size, data_parallel=data_parallel)

  def training_grid(self, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    return (int(config.train.seq_len),)

  @property
  def train_what(self) -> str:
    return f'train.seq_len={self.train_grid[0]}'

  @property
  def train_size(self) -> int:
    return self.train_grid[0]

  @property
  def items_per_example(self) -> int:
    return self.train_grid[0]

  def build_model(self, config: ml_collections.ConfigDict, *, vocab_size: int,
                  num_classes: int) -> GPT:
    del num_classes
    return GPT(_dataclass_from(GPTConfig, config.model, vocab_size=vocab_size), self.pe,
               train_len=self.train_grid[0])

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    l = self.train_grid[0]
    return {'inputs': np.zeros((batch_size, l), np.int32),
            'targets': np.zeros((batch_size, l), np.int32)}

  def model_input(self, batch: dict) -> jax.Array:
    return batch['inputs']

  def encode(self, params, positions_PxNxd: jax.Array, grid_shape: tuple[int, ...] | None = None,
             aux_Mxd: jax.Array | None = None, *, mode: str = 'extend',
             deterministic: bool = True, rng: jax.Array | None = None) -> PEOutput:
    del grid_shape  # 1-D: the positions alone
    rngs = {'dropout': rng} if rng is not None else {}
    return self.model.apply({'params': params}, positions_PxNxd[..., 0], aux_Mxd, mode=mode,
                            deterministic=deterministic, rngs=rngs,
                            method=self.model.encode_positions)

  def task_loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
    w = batch.get('weights')
    if w is None:
      return nll_BxL.mean(), {}
    return (nll_BxL * w).sum() / jnp.maximum(w.sum(), 1.0), {}

  def validation(self, params: Any, mesh, data: Any) -> tuple[dict[str, float], float]:
    """Perplexity at the training length (the official model selection: best at 512)."""
    from seqpe_jax.evaluators import lm_extrapolation  # pylint: disable=g-import-not-at-top
    config = self.config
    e = config.eval.copy_and_resolve_references()
    e.start_position = 0
    row = lm_extrapolation.sweep_point(self, params, mesh, data.eval_stream(
        config.data.eval_split), self.train_grid[0], e)
    return {'val_ppl': row['ppl']}, row['ppl']

  def probe_split(self, data: Any, split: str) -> None:
    data.eval_stream(split)  # tokenizes (and caches) the split
