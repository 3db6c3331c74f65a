"""The task interface: a backbone, its position encoding, its loss, data and evaluations.

`Task(config, ...)` returns the task kind that `config.task` names (`register`ed
subclasses: `lm.LMTask`, `vit.ViTTask`); everything outside this package asks the
task object instead of branching on the name. `Task.loss_fn(params, batch, rng,
step)` is pure and runs inside the jitted train step: the kind's task loss plus
the SeqPE regularisers (`seqpe_jax.regularisers`), with the debug hook
(`seqpe_jax.debug`) called at its named points.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqpe_jax import debug, regularisers
from seqpe_jax.errors import ConfigError
from seqpe_jax.posenc import PEConfig, PEOutput
from seqpe_jax.positions import grid

_KINDS: dict[str, type['Task']] = {}


def register(name: str):
  """Class decorator: makes `config.task=<name>` build this task kind."""
  def wrap(cls: type['Task']) -> type['Task']:
    cls.kind = name
    _KINDS[name] = cls
    return cls
  return wrap


def kind_of(name: str) -> type['Task']:
  """The task class registered under `name` (ConfigError for an unknown one)."""
  if name not in _KINDS:
    raise ConfigError(f'unknown task {name!r}; use {" or ".join(_KINDS)}')
  return _KINDS[name]


def _dataclass_from(cls, cfg: ml_collections.ConfigDict, **extra):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(cfg.keys()) - names)
  if unknown:
    raise ConfigError(f'unknown model option(s): {", ".join(unknown)}')
  return cls(**dict(cfg.items()), **extra)


class Task:
  """A backbone, its position encoding and its training loss, built from a config."""

  kind: ClassVar[str] = ''
  data_dim: ClassVar[int] = 1               # position axes
  pe_types: ClassVar[tuple[str, ...]] = ()  # PE types the backbone serves
  units: ClassVar[str] = ''                 # what throughput counts: tokens | images
  default_evaluations: ClassVar[tuple[str, ...]] = ()  # evaluator names (seqpe_jax.evaluators)
  train_size_key: ClassVar[str] = ''        # the report's key of the training size
  generates: ClassVar[bool] = False         # a causal LM (KV-cache decoding, long-context QA)

  def __new__(cls, config: ml_collections.ConfigDict, **kwargs):
    del kwargs
    if cls is Task:
      cls = kind_of(config.task)
    return super().__new__(cls)

  def __init__(self, config: ml_collections.ConfigDict, *, vocab_size: int = 0,
               num_classes: int = 0, channels: int = 3, data_parallel: int = 1):
    self.config = config
    self.data_parallel = int(data_parallel)
    self.pe = PEConfig.from_config(config.pe)
    c = config.model
    if c.width % c.num_heads:
      raise ConfigError(f'model.width={c.width} is not divisible by model.num_heads={c.num_heads}')
    self.pe.validate(self.data_dim, self.pe_types)
    self.train_grid = self.training_grid(config)
    # Every training position (main, shifted, auxiliary) lies below this per axis
    # (`aux_settings` checks it covers the training grid): it sizes SeqPE's prefix tree.
    self.pe = dataclasses.replace(self.pe, position_bound=max(int(config.aux.max_position),
                                                              *self.train_grid))
    self.channels = channels
    self.model = self.build_model(config, vocab_size=vocab_size, num_classes=num_classes)
    t = config.train
    micro_batch = int(t.batch_size) // max(int(t.get('grad_accum', 1)), 1)
    self.aux = regularisers.aux_settings(
        config.aux, pe=self.pe, train_grid=self.train_grid, train_what=self.train_what,
        micro_batch=micro_batch, data_parallel=self.data_parallel)
    self.debug_hook = debug.nan_hook(config.train, self.aux.active_terms)
    self.shift_pool = regularisers.shift_pool(config.aux, self.aux, seed=int(config.seed),
                                              train_grid=self.train_grid)

  # ------------------------------------------------------------------ per kind
  @classmethod
  def check_early(cls, config: ml_collections.ConfigDict) -> None:
    """Checks that need no data (the PE type against the backbone)."""
    PEConfig.from_config(config.pe).validate(cls.data_dim, cls.pe_types)

  @classmethod
  def check_data_config(cls, data_cfg: ml_collections.ConfigDict) -> None:
    """Static checks of `config.data` (before anything is read)."""

  @classmethod
  def build_data(cls, config: ml_collections.ConfigDict, *, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1) -> Any:
    """This process's data (train iterator, evaluation sources)."""
    raise NotImplementedError

  @classmethod
  def from_data(cls, config: ml_collections.ConfigDict, data: Any, data_parallel: int = 1
                ) -> 'Task':
    """The task sized by its data (vocabulary, classes, channels)."""
    raise NotImplementedError

  def training_grid(self, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    raise NotImplementedError

  @property
  def train_what(self) -> str:
    """The training size as the config sets it (for error messages)."""
    raise NotImplementedError

  @property
  def train_size(self) -> int:
    """The training length / image size (reports: `train_size_key`)."""
    raise NotImplementedError

  @property
  def items_per_example(self) -> int:
    """`units` per example (tokens per sequence, 1 image)."""
    return 1

  def build_model(self, config: ml_collections.ConfigDict, *, vocab_size: int,
                  num_classes: int) -> nn.Module:
    raise NotImplementedError

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def model_input(self, batch: dict) -> jax.Array:
    """The backbone's input of a batch (tokens / images)."""
    raise NotImplementedError

  def encode(self, params, positions_PxNxd: jax.Array, grid_shape: tuple[int, ...] | None = None,
             aux_Mxd: jax.Array | None = None, *, mode: str = 'extend',
             deterministic: bool = True, rng: jax.Array | None = None) -> PEOutput:
    """The position encoding alone (one SeqPE call incl. auxiliary positions)."""
    raise NotImplementedError

  def task_loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    raise NotImplementedError

  def validation(self, params: Any, mesh, data: Any) -> tuple[dict[str, float], float]:
    """Validation at the training size on `data.eval_split`: `(metrics, score to minimise)`."""
    raise NotImplementedError

  def probe_split(self, data: Any, split: str) -> None:
    """Reads `split` once (the periodic validation's), before anything is written."""
    raise NotImplementedError

  # ------------------------------------------------------------------ shared
  @property
  def default_positions(self) -> jax.Array:
    """`[N, d]` training positions: 0..L-1 (LM) or the row-major patch grid (ViT)."""
    return grid(self.train_grid)

  def init(self, rng: jax.Array, batch_size: int = 1) -> Any:
    """Boxed (logically partitioned) parameters."""
    x = self.model_input(self.dummy_batch(batch_size))
    return self.model.init({'params': rng, 'dropout': rng}, x)['params']

  def logits(self, params, batch: dict, pe: PEOutput, *, deterministic: bool = True,
             rng: jax.Array | None = None) -> jax.Array:
    rngs = {'dropout': rng} if rng is not None else {}
    out, _ = self.model.apply({'params': params}, self.model_input(batch), pe=pe,
                              deterministic=deterministic, rngs=rngs)
    return out

  def loss_fn(self, params, batch: dict, rng: jax.Array, step: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss = task + lambda_delta * contrastive + lambda_OOD * distillation."""
    a, hook = self.aux, self.debug_hook
    k_ct, k_ood, k_shift, k_sets, k_enc, k_model = jax.random.split(rng, 6)
    with jax.named_scope('samplers'):  # named scopes: trace_summary.py --shares attributes time
      aux = regularisers.sample_aux(a, k_ct, k_ood, train_grid=self.train_grid,
                                    max_digits=self.pe.max_digits)
    encode_with = lambda p, pos, aux_Mxd: self.encode(p, pos, aux_Mxd=aux_Mxd,
                                                      deterministic=False, rng=k_enc)
    pe, shifted = regularisers.encode_train_positions(
        a, encode_with, params, aux, k_shift, k_sets, self.shift_pool, self.train_grid,
        self.default_positions[None])
    logits = self.logits(params, batch, pe, deterministic=False, rng=k_model)
    with jax.named_scope('task_loss'):
      task, extra = self.task_loss(logits, batch)
    task = hook('task', task, step)
    metrics = {'task_loss': task, 'shifted': shifted.astype(jnp.float32), **extra}
    total = regularisers.add_terms(a, task, metrics, pe, aux, shifted, step, hook)
    total = hook('grads', total, step)
    metrics['loss'] = total
    return total, metrics


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(params)))


def model_flops_per_token(task: Task, params) -> float:
  """~6 * N (+ attention) training FLOPs per token/image-patch for throughput reports."""
  n = count_params(params)
  c = task.config.model
  length = math.prod(task.train_grid)
  return 6.0 * n + 12.0 * c.num_layers * c.width * length
