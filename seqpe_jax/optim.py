"""optax: AdamW with warm-up + decay, separate clipping/LR/decay for the SeqPE encoder.

The official code clips the SeqPE encoder's gradients separately from the
backbone's (its contrastive loss on raw dot products spikes the gradient norm;
under one global clip the spikes shrink the LM gradient, calibration.md §1).
`optax.multi_transform` gives each group its own clip → AdamW chain, so each
global norm is computed over its own group only.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from seqpe_jax import posenc
from seqpe_jax.errors import ConfigError

# The SeqPE encoder's group is declared by its PE class (`posenc.SeqPE.param_groups`).
PE_GROUP, BACKBONE_GROUP = posenc.SEQPE_GROUP, 'backbone'
# AdamW decays exactly the weight matrices / conv filters: every layer names them `kernel`
# (Dense, Conv, `layers.Linear`). Embedding tables (`embedding`, the SeqPE digit tables),
# position tables and vectors (`table`, `prefix_pos`, `cls_token`, `rope_freqs`), norms and
# biases are never decayed, whatever their rank — as the official trainers (timm's
# `param_groups_weight_decay` for the ViT; text runs use no decay at all).
DECAY_LEAF = 'kernel'


def _path_keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def _is_box(x) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def param_groups(params) -> Any:
  """The group a PE type declares for a parameter (`posenc.param_group`: the SeqPE
  encoder's are 'seqpe_encoder'), 'backbone' for the rest."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: posenc.param_group(_path_keys(p)) or BACKBONE_GROUP, params, is_leaf=_is_box)


def decay_mask(params) -> Any:
  """True where AdamW decays: the `kernel` leaves (see `DECAY_LEAF`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _path_keys(path)[-1] == DECAY_LEAF, params, is_leaf=_is_box)


def schedule(cfg: ml_collections.ConfigDict, peak: float, total_steps: int) -> optax.Schedule:
  """Linear warm-up from `warmup_init_lr` (timm's `warmup_lr_init`; 0 for HF), then cosine /
  linear decay to `min_lr_ratio * peak`, or constant."""
  warm = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
  end = peak * float(cfg.min_lr_ratio)
  decay_steps = max(total_steps - warm, 1)
  init = float(cfg.warmup_init_lr)
  if cfg.schedule == 'cosine':
    # optax's alpha is end / peak (min_lr_ratio up to a float64 ulp); the float32 values
    # equal the former join of linear warm-up + cosine_decay_schedule (tests/optim_test.py).
    return optax.warmup_cosine_decay_schedule(init, peak, warm, warm + decay_steps, end)
  # optax has no warm-up + linear / constant helper: join its linear / constant schedules.
  if cfg.schedule == 'linear':
    after = optax.linear_schedule(peak, end, decay_steps)
  elif cfg.schedule == 'constant':
    after = optax.constant_schedule(peak)
  else:
    raise ConfigError(f'unknown optim.schedule {cfg.schedule!r}; use cosine, linear or constant')
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(init, peak, warm), after], [warm])


def _adamw(cfg, lr: optax.Schedule, weight_decay: float, clip: float) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(clip)] if clip > 0 else []
  parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)


def build_optimizer(cfg: ml_collections.ConfigDict, total_steps: int
                    ) -> tuple[optax.GradientTransformation, Callable[[int], jax.Array]]:
  """Returns `(tx, lr_fn)`: the two-group optimizer and the backbone LR schedule.

  The schedule spans `cfg.decay_steps` steps, or `total_steps` if that is 0.
  """
  total_steps = int(cfg.decay_steps or total_steps)
  if cfg.lr <= 0:
    raise ConfigError(f'optim.lr must be positive, got {cfg.lr}')
  if not 0.0 <= float(cfg.warmup_init_lr) <= float(cfg.lr):
    raise ConfigError(f'optim.warmup_init_lr must lie in [0, optim.lr={cfg.lr}], got '
                      f'{cfg.warmup_init_lr}')
  lr = schedule(cfg, float(cfg.lr), total_steps)
  pe_lr = schedule(cfg, float(cfg.pe_lr or cfg.lr), total_steps)
  tx = optax.multi_transform(
      {BACKBONE_GROUP: _adamw(cfg, lr, float(cfg.weight_decay), float(cfg.clip_norm)),
       PE_GROUP: _adamw(cfg, pe_lr, float(cfg.pe_weight_decay), float(cfg.pe_clip_norm))},
      param_groups)
  return tx, lr


def group_norms(grads) -> dict[str, jax.Array]:
  """Global gradient norms of the two groups (before clipping), for logging."""
  groups = param_groups(grads)
  out = {}
  for name in (BACKBONE_GROUP, PE_GROUP):
    leaves = [g for g, n in zip(jax.tree.leaves(grads), jax.tree.leaves(groups)) if n == name]
    out[name] = (optax.global_norm([g.astype(jnp.float32) for g in leaves]) if leaves
                 else jnp.zeros(()))
  return out
