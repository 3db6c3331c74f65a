"""Model + loss for each task (LM, ViT): task loss plus the SeqPE regularisers.

`Task.loss_fn(params, batch, rng, step)` is pure and runs inside the jitted
train step. Samplers are `jax.random` code in the same step (no host work, no
stall, deterministic from the step's key); every SeqPE input of a step — main
positions, contrastive pivots/candidates, OOD students — goes through ONE
encoder call. On random-shift steps (`lax.cond`) the main positions are
`shift_sets` translated copies of the training grid tiled over the batch, and
the OOD term is switched off, as the official code (method doc §4, §7.1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from seqpe_jax import losses, posenc, samplers
from seqpe_jax.errors import ConfigError
from seqpe_jax.gpt import GPT, GPTConfig
from seqpe_jax.posenc import PEConfig, PEOutput
from seqpe_jax.positions import capacity, digits_needed, grid
from seqpe_jax.vit import ViT, ViTConfig, patch_grid


# Terms `train.debug_nan` can poison (test-only fault injection).
DEBUG_NAN_TERMS = ('task', 'contrastive', 'ood', 'grads')


def _dataclass_from(cls, cfg: ml_collections.ConfigDict, **extra):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(cfg.keys()) - names)
  if unknown:
    raise ConfigError(f'unknown model option(s): {", ".join(unknown)}')
  return cls(**dict(cfg.items()), **extra)


@dataclasses.dataclass(frozen=True)
class AuxSettings:
  """Static SeqPE-regulariser and random-shift settings of a task."""

  contrastive: samplers.ContrastiveConfig | None
  ood: samplers.OODConfig | None
  contrastive_weight: float
  ood_weight: float
  warmup_steps: int
  ood_heads: int
  ood_beta: float
  max_position: int
  shift_rate: float
  shift_sets: int


class Task:
  """A backbone, its position encoding and its training loss, built from a config."""

  def __init__(self, config: ml_collections.ConfigDict, *, vocab_size: int = 0,
               num_classes: int = 0, channels: int = 3, data_parallel: int = 1):
    self.config = config
    self.data_parallel = int(data_parallel)
    self.kind = config.task
    self.pe = PEConfig.from_config(config.pe)
    c = config.model
    if c.width % c.num_heads:
      raise ConfigError(f'model.width={c.width} is not divisible by model.num_heads={c.num_heads}')
    if self.kind == 'lm':
      self.pe.validate(1, posenc.LM_PE_TYPES)
      self.data_dim, self.train_grid = 1, (int(config.train.seq_len),)
      self.model = GPT(_dataclass_from(GPTConfig, c, vocab_size=vocab_size), self.pe,
                       train_len=self.train_grid[0])
    elif self.kind == 'vit':
      self.pe.validate(2, posenc.VIT_PE_TYPES)
      self.data_dim = 2
      size = int(config.train.image_size)
      self.train_grid = patch_grid((size, size), c.patch_size)
      self.channels = channels
      self._check_soft_targets(config)
      self.model = ViT(_dataclass_from(ViTConfig, c, num_classes=num_classes), self.pe,
                       train_image_size=size)
    else:
      raise ConfigError(f'unknown task {self.kind!r}; use lm or vit')
    self.aux = self._aux_settings(config.aux)
    self.debug_nan = self._debug_nan(config.train)
    self.shift_pool = None
    if self.aux.shift_rate > 0:
      self.shift_pool = jnp.asarray(samplers.make_shift_pool(
          int(config.seed), train_grid=self.train_grid, max_position=self.aux.max_position,
          pool_size=int(config.aux.shift_pool)))

  # ------------------------------------------------------------------ settings
  def _aux_settings(self, a: ml_collections.ConfigDict) -> AuxSettings:
    seqpe = self.pe.type == 'seqpe'
    k = self.pe.max_digits
    p = int(a.max_position)
    if seqpe:
      train_largest = max(self.train_grid) - 1
      if train_largest >= capacity(k):
        what = (f'train.seq_len={self.train_grid[0]}' if self.kind == 'lm' else
                f'train.image_size={self.config.train.image_size} (patch grid {self.train_grid})')
        raise ConfigError(f'{what} needs position {train_largest}, beyond the SeqPE digit '
                          f'capacity [0, {capacity(k)}) of max_digits={k}; set '
                          f'pe.seqpe.max_digits >= {digits_needed(train_largest)}')
      largest = max(p, max(self.train_grid)) - 1
      if largest >= capacity(k):
        raise ConfigError(f'aux.max_position={p} needs positions up to {largest}, beyond the '
                          f'SeqPE digit capacity [0, {capacity(k)}) of max_digits={k}; set '
                          f'pe.seqpe.max_digits >= {digits_needed(largest)}')
      if p < max(self.train_grid):
        raise ConfigError(f'aux.max_position={p} is smaller than the training grid '
                          f'{self.train_grid}')
    # The official samplers run once per process (GPU): `aux.counts_per_device=True` reads
    # num_pivots / ood_items / shift_sets as per-data-parallel-device counts, as the official
    # code; False (default) as global counts per step.
    per = self.data_parallel if bool(a.get('counts_per_device', False)) else 1
    num_pivots, ood_items, shift_sets = (per * int(a.num_pivots), per * int(a.ood_items),
                                         per * int(a.shift_sets))
    use_ct = seqpe and a.contrastive_weight > 0
    use_ood = seqpe and a.ood_weight > 0
    ct = samplers.ContrastiveConfig(
        num_pivots=num_pivots, num_candidates=int(a.num_candidates),
        mode_probs=tuple(float(x) for x in a.mode_probs), hard_ratio=float(a.hard_ratio),
        window=int(a.window)) if use_ct else None
    min_off = int(a.ood_min_offset)
    if self.data_dim == 1:
      # -1: the official L//4 (some students overlap the training range); min_offset=L (all
      # students out of distribution) was not distinguishable over 3 seeds (README).
      min_off = self.train_grid[0] // 4 if min_off < 0 else min_off
      if use_ood and min_off > p - self.train_grid[0]:
        raise ConfigError(f'aux.ood_min_offset={min_off} leaves no room for OOD students below '
                          f'aux.max_position={p} at train length {self.train_grid[0]}')
    elif min_off >= 0:
      raise ConfigError('aux.ood_min_offset applies to 1-D positions only (n-D students are '
                        'shifted outside the training grid); leave it at -1')
    ood = samplers.OODConfig(num_items=ood_items, num_points=int(a.ood_points),
                             min_offset=min_off if self.data_dim == 1 else None
                             ) if use_ood else None
    shift_rate = float(a.shift_rate) if seqpe else 0.0
    batch = int(self.config.train.batch_size) // max(int(self.config.train.get('grad_accum', 1)), 1)
    if shift_rate > 0 and batch % shift_sets:
      what = (f'{per} x aux.shift_sets={a.shift_sets} (aux.counts_per_device)' if per > 1 else
              f'aux.shift_sets={a.shift_sets}')
      raise ConfigError(f'{what} must divide the (micro-)batch {batch}')
    heads = int(a.ood_heads) or self.pe.heads
    return AuxSettings(ct, ood, float(a.contrastive_weight), float(a.ood_weight),
                       int(a.weight_warmup_steps), heads, float(a.ood_beta), p, shift_rate,
                       shift_sets)

  @staticmethod
  def _check_soft_targets(config: ml_collections.ConfigDict) -> None:
    """Mixup / cutmix targets arrive smoothed (`label_probs`): a second smoothing is refused."""
    from seqpe_jax.data import augment  # pylint: disable=g-import-not-at-top
    d = config.data
    if not (d.get('augment', True) and d.get('recipe', 'simple') == 'timm'):
      return
    mixes = augment.AugmentConfig.from_config(d.get('timm')).mixes
    if mixes and float(config.train.get('label_smoothing', 0.0)) > 0:
      raise ConfigError('train.label_smoothing must be 0 with data.recipe=timm and mixup / '
                        'cutmix on: their targets already carry '
                        'data.timm.mixup_label_smoothing')

  def _debug_nan(self, t: ml_collections.ConfigDict) -> dict[int, str]:
    """Test-only fault injection: `train.debug_nan='term@step,...'` → {step: term}."""
    out: dict[int, str] = {}
    for item in filter(None, (x.strip() for x in str(t.get('debug_nan', '') or '').split(','))):
      term, _, step = item.partition('@')
      if term not in DEBUG_NAN_TERMS or not step.isdigit() or int(step) < 1:
        raise ConfigError(f"train.debug_nan items are 'term@step' with term in "
                          f"{', '.join(DEBUG_NAN_TERMS)} and step >= 1; got {item!r}")
      if (term == 'contrastive' and self.aux.contrastive is None) or (
          term == 'ood' and self.aux.ood is None):
        raise ConfigError(f'train.debug_nan poisons {term}, but that loss term is off '
                          '(pe.type is not seqpe or its aux weight is 0)')
      out[int(step)] = term
    return out

  def _inject_nan(self, name: str, x: jax.Array, step: jax.Array) -> jax.Array:
    """`x`, or NaN (with NaN gradients) at the steps `train.debug_nan` names for it."""
    steps = [s for s, term in self.debug_nan.items() if term == name]
    if not steps:
      return x  # the traced step is unchanged unless injection is on
    poison = jnp.isin(step + 1, jnp.asarray(steps))  # `step` counts finished updates
    if name == 'grads':
      return _nan_grads(x, poison)
    return x * jnp.where(poison, jnp.nan, 1.0)  # multiplicative: NaN gradients too

  @property
  def default_positions(self) -> jax.Array:
    """`[N, d]` training positions: 0..L-1 (LM) or the row-major patch grid (ViT)."""
    return grid(self.train_grid)

  def dummy_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    if self.kind == 'lm':
      l = self.train_grid[0]
      return {'inputs': np.zeros((batch_size, l), np.int32),
              'targets': np.zeros((batch_size, l), np.int32)}
    s = int(self.config.train.image_size)
    return {'images': np.zeros((batch_size, s, s, self.channels), np.float32),
            'labels': np.zeros((batch_size,), np.int32)}

  # ------------------------------------------------------------------ model calls
  def init(self, rng: jax.Array, batch_size: int = 1) -> Any:
    """Boxed (logically partitioned) parameters."""
    b = self.dummy_batch(batch_size)
    x = b['inputs'] if self.kind == 'lm' else b['images']
    return self.model.init({'params': rng, 'dropout': rng}, x)['params']

  def encode(self, params, positions_PxNxd: jax.Array, grid_shape: tuple[int, ...] | None = None,
             aux_Mxd: jax.Array | None = None, *, mode: str = 'extend',
             deterministic: bool = True, rng: jax.Array | None = None) -> PEOutput:
    """The position encoding alone (one SeqPE call incl. auxiliary positions)."""
    rngs = {'dropout': rng} if rng is not None else {}
    if self.kind == 'lm':
      return self.model.apply({'params': params}, positions_PxNxd[..., 0], aux_Mxd, mode=mode,
                              deterministic=deterministic, rngs=rngs,
                              method=self.model.encode_positions)
    grid_shape = grid_shape or self.train_grid
    return self.model.apply({'params': params}, positions_PxNxd, tuple(grid_shape), aux_Mxd,
                            mode=mode, deterministic=deterministic, rngs=rngs,
                            method=self.model.encode_positions)

  def logits(self, params, batch: dict, pe: PEOutput, *, deterministic: bool = True,
             rng: jax.Array | None = None) -> jax.Array:
    rngs = {'dropout': rng} if rng is not None else {}
    x = batch['inputs'] if self.kind == 'lm' else batch['images']
    out, _ = self.model.apply({'params': params}, x, pe=pe, deterministic=deterministic, rngs=rngs)
    return out

  # ------------------------------------------------------------------ loss
  def task_loss(self, logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    if self.kind == 'lm':
      nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
      w = batch.get('weights')
      if w is None:
        return nll_BxL.mean(), {}
      return (nll_BxL * w).sum() / jnp.maximum(w.sum(), 1.0), {}
    if 'label_probs' in batch:  # mixup / cutmix soft targets, already label-smoothed
      targets = batch['label_probs']
    else:
      smoothing = float(self.config.train.get('label_smoothing', 0.0))
      targets = jax.nn.one_hot(batch['labels'], logits.shape[-1])
      targets = targets * (1 - smoothing) + smoothing / logits.shape[-1]
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    acc = (logits.argmax(-1) == batch['labels']).mean()
    return loss, {'accuracy': acc}

  def loss_fn(self, params, batch: dict, rng: jax.Array, step: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss = task + lambda_delta * contrastive + lambda_OOD * distillation."""
    a = self.aux
    k_ct, k_ood, k_shift, k_sets, k_enc, k_model = jax.random.split(rng, 6)
    d = self.data_dim
    aux_parts, n_ct = [], 0
    if a.contrastive is not None:
      pivots_Bxd, cands_BxKxd, labels_B = samplers.contrastive_batch(
          k_ct, a.contrastive, max_position=a.max_position, data_dim=d,
          max_digits=self.pe.max_digits)
      aux_parts += [pivots_Bxd, cands_BxKxd.reshape(-1, d)]
      n_ct = pivots_Bxd.shape[0] * (1 + cands_BxKxd.shape[1])
    if a.ood is not None:
      teacher_idx_Bxn, students_Bxnxd = samplers.ood_batch(
          k_ood, a.ood, train_grid=self.train_grid, max_position=a.max_position)
      aux_parts.append(students_Bxnxd.reshape(-1, d))
    aux_Mxd = jnp.concatenate(aux_parts).astype(jnp.int32) if aux_parts else None

    default_1xNxd = self.default_positions[None]
    encode_with = lambda p, pos: self.encode(p, pos, aux_Mxd=aux_Mxd, deterministic=False,
                                             rng=k_enc)
    encode = lambda pos: encode_with(params, pos)
    shifted = jnp.zeros((), bool)
    if a.shift_rate > 0:
      shifted = samplers.use_shift(k_shift, a.shift_rate)
      offsets = samplers.shift_offsets(k_sets, self.shift_pool, a.shift_sets)
      sets_SxNxd = samplers.shifted_grid(offsets, self.train_grid)
      # Rematerialised branches: reverse-mode cond otherwise carries both branches' encoder
      # activations as residuals (the unused one zero-filled) on every step.
      shifted_enc = jax.checkpoint(lambda p, pos: encode_with(p, pos))
      default_enc = jax.checkpoint(
          lambda p, pos: _broadcast_sets(encode_with(p, pos), a.shift_sets))
      pe = jax.lax.cond(shifted, shifted_enc, lambda p, _: default_enc(p, default_1xNxd),
                        params, sets_SxNxd)
    else:
      pe = encode(default_1xNxd)

    logits = self.logits(params, batch, pe, deterministic=False, rng=k_model)
    task, extra = self.task_loss(logits, batch)
    task = self._inject_nan('task', task, step)
    metrics = {'task_loss': task, 'shifted': shifted.astype(jnp.float32), **extra}
    total = task
    ramp = 1.0
    if a.warmup_steps > 0:
      ramp = jnp.minimum(1.0, (step + 1).astype(jnp.float32) / a.warmup_steps)
    aux_e = None
    if pe.aux_embed is not None:  # small: replicate it for the losses (one all-gather)
      aux_e = nn.with_logical_constraint(pe.aux_embed, (None, None))
    if a.contrastive is not None:
      b, k = pivots_Bxd.shape[0], cands_BxKxd.shape[1]
      e = aux_e
      ct = losses.contrastive_loss(e[:b], e[b:n_ct].reshape(b, k, -1), labels_B)
      ct = self._inject_nan('contrastive', ct, step)
      metrics['contrastive'] = ct
      total = total + ramp * a.contrastive_weight * ct
    if a.ood is not None:
      bt, n = teacher_idx_Bxn.shape
      student_BxnxD = aux_e[n_ct:].reshape(bt, n, -1)
      teacher_BxnxD = pe.main_embed[0][teacher_idx_Bxn]  # default positions' embeddings
      ood = losses.ood_distillation_loss(teacher_BxnxD, student_BxnxD, a.ood_heads, a.ood_beta)
      ood = jnp.where(shifted, 0.0, ood)  # only on default-position steps (official)
      ood = self._inject_nan('ood', ood, step)
      metrics['ood'] = ood
      total = total + ramp * a.ood_weight * ood
    total = self._inject_nan('grads', total, step)
    metrics['loss'] = total
    return total, metrics


@jax.custom_vjp
def _nan_grads(x: jax.Array, poison: jax.Array) -> jax.Array:
  """Identity whose gradient is NaN where `poison` (finite loss, NaN gradients)."""
  del poison
  return x


def _nan_grads_fwd(x, poison):
  return x, poison


def _nan_grads_bwd(poison, g):
  return jnp.where(poison, jnp.nan, g), None


_nan_grads.defvjp(_nan_grads_fwd, _nan_grads_bwd)


def _broadcast_sets(out: PEOutput, n: int) -> PEOutput:
  """Repeats the single default position set n times so both cond branches match."""
  rep = lambda x: None if x is None else jnp.broadcast_to(x, (n, *x.shape[1:]))
  ctx = jax.tree.map(rep, out.ctx)
  return out.replace(ctx=ctx, main_embed=rep(out.main_embed))


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(params)))


def model_flops_per_token(task: Task, params) -> float:
  """~6 * N (+ attention) training FLOPs per token/image-patch for throughput reports."""
  n = count_params(params)
  c = task.config.model
  length = math.prod(task.train_grid)
  return 6.0 * n + 12.0 * c.num_layers * c.width * length
