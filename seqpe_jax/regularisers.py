"""SeqPE regularisers: settings, sampler wiring, random shifts, contrastive and OOD terms.

Samplers are `jax.random` code inside the jitted step (no host work, deterministic
from the step's key); every SeqPE input of a step — main positions, contrastive
pivots/candidates, OOD students — goes through ONE encoder call. On random-shift
steps (`lax.cond`) the main positions are `shift_sets` translated copies of the
training grid tiled over the batch, and the OOD term is switched off, as the
official code (method doc §4, §7.1). A task's loss calls, in order:
`sample_aux` → `encode_train_positions` → (task loss) → `add_terms`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from seqpe_jax import debug, losses, samplers
from seqpe_jax.errors import ConfigError, check_choice
from seqpe_jax.posenc import PEConfig, PEOutput
from seqpe_jax.positions import capacity, digits_needed


# How the training step's encoder call keeps its activations for the backward pass:
# full: recompute its forward (jax.checkpoint); dots: keep the matmul outputs, recompute the
# rest (LayerNorms, softmax, gathers); none: keep everything; auto: full where random shifts
# put the call in a lax.cond (whose reverse mode otherwise carries both branches' residuals on
# every step), none without shifts. Same function and gradients; time and memory differ.
ENCODER_REMAT = ('auto', 'full', 'dots', 'none')


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
  encoder_remat: str = 'auto'  # ENCODER_REMAT: what the backward recomputes of the encoder

  @property
  def active_terms(self) -> tuple[str, ...]:
    """The loss terms computed (the points a debug hook can poison)."""
    return tuple(t for t, on in (('task', True), ('contrastive', self.contrastive is not None),
                                 ('ood', self.ood is not None), ('grads', True)) if on)


def aux_settings(aux_cfg: ml_collections.ConfigDict, *, pe: PEConfig,
                 train_grid: tuple[int, ...], train_what: str, micro_batch: int,
                 data_parallel: int = 1) -> AuxSettings:
  """Validated settings from `config.aux` (`train_what` names the training size in errors)."""
  a = aux_cfg
  seqpe = pe.type == 'seqpe'
  k = pe.max_digits
  p = int(a.max_position)
  data_dim = len(train_grid)
  if seqpe:
    train_largest = max(train_grid) - 1
    if train_largest >= capacity(k):
      raise ConfigError(f'{train_what} needs position {train_largest}, beyond the SeqPE digit '
                        f'capacity [0, {capacity(k)}) of max_digits={k}; set '
                        f'pe.seqpe.max_digits >= {digits_needed(train_largest)}')
    largest = max(p, max(train_grid)) - 1
    if largest >= capacity(k):
      raise ConfigError(f'aux.max_position={p} needs positions up to {largest}, beyond the '
                        f'SeqPE digit capacity [0, {capacity(k)}) of max_digits={k}; set '
                        f'pe.seqpe.max_digits >= {digits_needed(largest)}')
    if p < max(train_grid):
      raise ConfigError(f'aux.max_position={p} is smaller than the training grid {train_grid}')
  # The official samplers run once per process (GPU): `aux.counts_per_device=True` reads
  # num_pivots / ood_items / shift_sets as per-data-parallel-device counts, as the official
  # code; False (default) as global counts per step.
  per = int(data_parallel) if bool(a.get('counts_per_device', False)) else 1
  num_pivots, ood_items, shift_sets = (per * int(a.num_pivots), per * int(a.ood_items),
                                       per * int(a.shift_sets))
  use_ct = seqpe and a.contrastive_weight > 0
  use_ood = seqpe and a.ood_weight > 0
  ct = samplers.ContrastiveConfig(
      num_pivots=num_pivots, num_candidates=int(a.num_candidates),
      mode_probs=tuple(float(x) for x in a.mode_probs), hard_ratio=float(a.hard_ratio),
      window=int(a.window)) if use_ct else None
  min_off = int(a.ood_min_offset)
  if data_dim == 1:
    # -1: the official L//4 (some students overlap the training range); min_offset=L (all
    # students out of distribution) was not distinguishable over 3 seeds (README).
    min_off = train_grid[0] // 4 if min_off < 0 else min_off
    if use_ood and min_off > p - train_grid[0]:
      raise ConfigError(f'aux.ood_min_offset={min_off} leaves no room for OOD students below '
                        f'aux.max_position={p} at train length {train_grid[0]}')
  elif min_off >= 0:
    raise ConfigError('aux.ood_min_offset applies to 1-D positions only (n-D students are '
                      'shifted outside the training grid); leave it at -1')
  ood = samplers.OODConfig(num_items=ood_items, num_points=int(a.ood_points),
                           min_offset=min_off if data_dim == 1 else None) if use_ood else None
  shift_rate = float(a.shift_rate) if seqpe else 0.0
  if shift_rate > 0 and micro_batch % shift_sets:
    what = (f'{per} x aux.shift_sets={a.shift_sets} (aux.counts_per_device)' if per > 1 else
            f'aux.shift_sets={a.shift_sets}')
    raise ConfigError(f'{what} must divide the (micro-)batch {micro_batch}')
  heads = int(a.ood_heads) or pe.heads
  remat = a.get('encoder_remat', 'auto')  # absent from configs saved before it existed
  check_choice('aux.encoder_remat', remat, ENCODER_REMAT)
  return AuxSettings(ct, ood, float(a.contrastive_weight), float(a.ood_weight),
                     int(a.weight_warmup_steps), heads, float(a.ood_beta), p, shift_rate,
                     shift_sets, remat)


def shift_pool(aux_cfg: ml_collections.ConfigDict, settings: AuxSettings, *, seed: int,
               train_grid: tuple[int, ...]) -> jax.Array | None:
  """The fixed pool of random-shift start offsets (None when shifts are off)."""
  if settings.shift_rate <= 0:
    return None
  return jnp.asarray(samplers.make_shift_pool(
      seed, train_grid=train_grid, max_position=settings.max_position,
      pool_size=int(aux_cfg.shift_pool)))


@dataclasses.dataclass(frozen=True)
class AuxBatch:
  """The auxiliary positions of one step (all encoded with the main positions)."""

  positions_Mxd: jax.Array | None
  num_contrastive: int = 0            # leading rows of `positions_Mxd` for the contrastive term
  pivots_Bxd: jax.Array | None = None
  cands_BxKxd: jax.Array | None = None
  labels_B: jax.Array | None = None
  teacher_idx_Bxn: jax.Array | None = None


def sample_aux(a: AuxSettings, k_ct: jax.Array, k_ood: jax.Array, *,
               train_grid: tuple[int, ...], max_digits: int) -> AuxBatch:
  """Contrastive pivots / candidates and OOD students, concatenated for one encoder call."""
  d = len(train_grid)
  parts, n_ct = [], 0
  pivots_Bxd = cands_BxKxd = labels_B = teacher_idx_Bxn = None
  if a.contrastive is not None:
    pivots_Bxd, cands_BxKxd, labels_B = samplers.contrastive_batch(
        k_ct, a.contrastive, max_position=a.max_position, data_dim=d, max_digits=max_digits)
    parts += [pivots_Bxd, cands_BxKxd.reshape(-1, d)]
    n_ct = pivots_Bxd.shape[0] * (1 + cands_BxKxd.shape[1])
  if a.ood is not None:
    teacher_idx_Bxn, students_Bxnxd = samplers.ood_batch(
        k_ood, a.ood, train_grid=train_grid, max_position=a.max_position)
    parts.append(students_Bxnxd.reshape(-1, d))
  positions_Mxd = jnp.concatenate(parts).astype(jnp.int32) if parts else None
  return AuxBatch(positions_Mxd, n_ct, pivots_Bxd, cands_BxKxd, labels_B, teacher_idx_Bxn)


def encode_train_positions(a: AuxSettings, encode_with: Callable, params, aux: AuxBatch,
                           k_shift: jax.Array, k_sets: jax.Array, pool: jax.Array | None,
                           train_grid: tuple[int, ...], default_1xNxd: jax.Array
                           ) -> tuple[PEOutput, jax.Array]:
  """`(pe, shifted)`: the training grid, or on random-shift steps `shift_sets` shifted copies.

  `encode_with(params, positions_PxNxd, aux_Mxd)` is the task's encoder call. A shifted step
  does not encode the OOD students: its OOD term is off (official), so their rows of
  `aux_embed` are zeros there (same loss and gradients, a smaller tree on shifted steps).
  """
  shifted = jnp.zeros((), bool)
  remat = remat_wrapper(a.encoder_remat, 'full' if a.shift_rate > 0 else 'none')
  if a.shift_rate <= 0:
    return remat(encode_with)(params, default_1xNxd, aux.positions_Mxd), shifted
  with jax.named_scope('samplers'):
    shifted = samplers.use_shift(k_shift, a.shift_rate)
    offsets = samplers.shift_offsets(k_sets, pool, a.shift_sets)
    sets_SxNxd = samplers.shifted_grid(offsets, train_grid)
  n_ood = 0 if aux.teacher_idx_Bxn is None else aux.teacher_idx_Bxn.size

  def encode_shifted(p, pos):
    if not n_ood:
      return encode_with(p, pos, aux.positions_Mxd)
    kept_Mxd = aux.positions_Mxd[:aux.num_contrastive] if aux.num_contrastive else None
    out = encode_with(p, pos, kept_Mxd)
    kept_e = (out.aux_embed if kept_Mxd is not None else
              jnp.zeros((0, out.main_embed.shape[-1]), out.main_embed.dtype))
    return out.replace(aux_embed=jnp.pad(kept_e, ((0, n_ood), (0, 0))))
  # Rematerialised branches (auto): reverse-mode cond otherwise carries both branches' encoder
  # activations as residuals (the unused one zero-filled) on every step.
  shifted_enc = remat(encode_shifted)
  default_enc = remat(lambda p, pos: _broadcast_sets(
      encode_with(p, pos, aux.positions_Mxd), a.shift_sets))
  pe = jax.lax.cond(shifted, shifted_enc, lambda p, _: default_enc(p, default_1xNxd),
                    params, sets_SxNxd)
  return pe, shifted


def remat_wrapper(policy: str, auto: str) -> Callable[[Callable], Callable]:
  """The wrapper applying `policy` (an `aux.encoder_remat` value; 'auto' -> `auto`)."""
  policy = auto if policy == 'auto' else policy
  if policy == 'none':
    return lambda f: f
  saveable = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable if policy == 'dots'
              else None)
  return lambda f: jax.checkpoint(f, policy=saveable)


def add_terms(a: AuxSettings, total: jax.Array, metrics: dict, pe: PEOutput, aux: AuxBatch,
              shifted: jax.Array, step: jax.Array, hook: debug.Hook = debug.identity
              ) -> jax.Array:
  """`total` + lambda_delta * contrastive + lambda_OOD * distillation (terms into `metrics`)."""
  ramp = 1.0
  if a.warmup_steps > 0:
    ramp = jnp.minimum(1.0, (step + 1).astype(jnp.float32) / a.warmup_steps)
  aux_e = None
  if pe.aux_embed is not None:  # small: replicate it for the losses (one all-gather)
    aux_e = nn.with_logical_constraint(pe.aux_embed, (None, None))
  if a.contrastive is not None:
    with jax.named_scope('contrastive'):
      ct = contrastive_term(aux_e, aux)
    ct = hook('contrastive', ct, step)
    metrics['contrastive'] = ct
    total = total + ramp * a.contrastive_weight * ct
  if a.ood is not None:
    with jax.named_scope('ood'):
      ood = ood_term(a, aux_e, pe, aux)
      ood = jnp.where(shifted, 0.0, ood)  # only on default-position steps (official)
    ood = hook('ood', ood, step)
    metrics['ood'] = ood
    total = total + ramp * a.ood_weight * ood
  return total


def contrastive_term(aux_e_MxE: jax.Array, aux: AuxBatch) -> jax.Array:
  """The contrastive loss of the pivots against their candidates."""
  b, k = aux.pivots_Bxd.shape[0], aux.cands_BxKxd.shape[1]
  e = aux_e_MxE
  return losses.contrastive_loss(e[:b], e[b:aux.num_contrastive].reshape(b, k, -1), aux.labels_B)


def ood_term(a: AuxSettings, aux_e_MxE: jax.Array, pe: PEOutput, aux: AuxBatch) -> jax.Array:
  """Distillation of the default positions' embeddings (teachers) into the OOD students."""
  bt, n = aux.teacher_idx_Bxn.shape
  student_BxnxE = aux_e_MxE[aux.num_contrastive:].reshape(bt, n, -1)
  teacher_BxnxE = pe.main_embed[0][aux.teacher_idx_Bxn]  # default positions' embeddings
  return losses.ood_distillation_loss(teacher_BxnxE, student_BxnxE, a.ood_heads, a.ood_beta)


def _broadcast_sets(out: PEOutput, n: int) -> PEOutput:
  """Repeats the single default position set n times so both cond branches match."""
  rep = lambda x: None if x is None else jnp.broadcast_to(x, (n, *x.shape[1:]))
  ctx = jax.tree.map(rep, out.ctx)
  return out.replace(ctx=ctx, main_embed=rep(out.main_embed))


__all__ = ['ENCODER_REMAT', 'AuxSettings', 'AuxBatch', 'aux_settings', 'shift_pool', 'sample_aux',
           'encode_train_positions', 'remat_wrapper', 'add_terms', 'contrastive_term', 'ood_term']
