"""Learned relative-position logit biases: FIRE and KERPLE-log (1-D, per layer and head).

  fire    b(i, j) = f_θ(ψ(i - j) / ψ(max(L_thr, i))),  ψ(x) = log(c x + 1)
          (Li et al. 2023, "Functional Interpolation for Relative Positions Improves
          Long Context Transformers"): f a 1 → `mlp_width` → H ReLU MLP, c and the
          threshold L_thr = |m · init_threshold| learnable, as the paper's reference code.
  kerple  b(i, j) = -r1 log(1 + r2 |i - j|),  r1, r2 > 0 per head
          (Chi et al. 2022, "KERPLE: Kernelized Relative Positional Embedding for Length
          Extrapolation", the logarithmic variant); r1, r2 are clamped to ≥ `eps` as
          the official code does after each step.

Both are functions of the query position i and key position j only, so one query
attending to a KV cache gets exactly its uncached bias. The bias is added to the
scaled logits (causal masking removes j > i).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import layers
from seqpe_jax.injection import AttentionHook, PEContext
from seqpe_jax.posenc import PEOutput, PEType, register


def fire_bias(q_pos_XxL: jax.Array, k_pos_XxS: jax.Array, c: jax.Array, threshold: jax.Array,
              mlp, eps: float = 1e-6) -> jax.Array:
  """FIRE logits `[X, H, L, S]`; `mlp` maps `[..., 1]` → `[..., H]`."""
  i = q_pos_XxL.astype(jnp.float32)[:, :, None]
  j = k_pos_XxS.astype(jnp.float32)[:, None, :]
  rel_XxLxS = jnp.log(jnp.abs(c * (i - j)) + 1.0)
  norm_XxLx1 = jnp.log(jnp.abs(c * jnp.maximum(i, threshold)) + 1.0) + eps
  b_XxLxSxH = mlp((rel_XxLxS / norm_XxLx1)[..., None])
  return jnp.moveaxis(b_XxLxSxH, -1, 1)


def kerple_log_bias(q_pos_XxL: jax.Array, k_pos_XxS: jax.Array, r1_H: jax.Array,
                    r2_H: jax.Array) -> jax.Array:
  """KERPLE-log logits `[X, H, L, S]` = -r1_h log(1 + r2_h |i - j|)."""
  dist = jnp.abs(q_pos_XxL.astype(jnp.float32)[:, :, None]
                 - k_pos_XxS.astype(jnp.float32)[:, None, :])[:, None]
  return -r1_H[None, :, None, None] * jnp.log1p(r2_H[None, :, None, None] * dist)


@dataclasses.dataclass(frozen=True)
class FireOptions:
  """`config.pe.fire`."""

  mlp_width: int = 32           # hidden width of f_θ (paper: 32)
  init_c: float = 0.1           # initial c in ψ(x) = log(c x + 1)
  init_threshold: float = 512.0  # initial L_thr (learnable through a multiplier)
  eps: float = 1e-6             # added to the normaliser ψ(max(L_thr, i))


class FireBias(nn.Module):
  """One layer's FIRE: params `c`, `threshold_mult`, `mlp_0`, `mlp_1`."""

  num_heads: int
  opts: FireOptions = FireOptions()

  @nn.compact
  def __call__(self, q_pos_XxL: jax.Array, k_pos_XxS: jax.Array) -> jax.Array:
    o = self.opts
    c = self.param('c', layers.partitioned(nn.initializers.constant(o.init_c), ()), ())
    mult = self.param('threshold_mult', layers.partitioned(nn.initializers.ones, ()), ())
    dense = lambda n, name: nn.Dense(
        n, name=name, kernel_init=layers.partitioned(nn.initializers.lecun_normal(), (None, None)),
        bias_init=layers.partitioned(nn.initializers.zeros, (None,)))
    hidden, out = dense(o.mlp_width, 'mlp_0'), dense(self.num_heads, 'mlp_1')
    mlp = lambda x: out(jax.nn.relu(hidden(x)))
    return fire_bias(q_pos_XxL, k_pos_XxS, c, jnp.abs(mult * o.init_threshold), mlp, o.eps)


@dataclasses.dataclass(frozen=True)
class FireHook(AttentionHook):
  opts: FireOptions = FireOptions()

  def scores(self, mod, q_BxLxHxK, k_BxSxHxK, *, q_pos, k_pos, scale, causal, num_old):
    bias = FireBias(mod.num_heads, self.opts, name='fire')(q_pos, k_pos)
    return q_BxLxHxK, k_BxSxHxK, bias


@register('fire')
class Fire(PEType):
  """FIRE: a learned function of normalised log distance, per layer (module doc)."""

  dims = (1,)
  Options = FireOptions

  @classmethod
  def hook(cls, pe):
    return FireHook(opts=cls.options_of(pe))

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    return PEOutput(ctx=PEContext(positions=positions_PxLxn))


@dataclasses.dataclass(frozen=True)
class KerpleOptions:
  """`config.pe.kerple` (the log variant)."""

  init_r1_max: float = 2.0  # r1 ~ U(0, init_r1_max) (official: 2)
  init_r2_max: float = 1.0  # r2 ~ U(0, init_r2_max) (official: 1)
  eps: float = 1e-2         # r1, r2 clamped to >= eps


class KerpleBias(nn.Module):
  """One layer's KERPLE-log: params `r1`, `r2` `[H]`."""

  num_heads: int
  opts: KerpleOptions = KerpleOptions()

  @nn.compact
  def __call__(self, q_pos_XxL: jax.Array, k_pos_XxS: jax.Array) -> jax.Array:
    o = self.opts
    init = lambda hi: layers.partitioned(
        lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, 0.0, hi),
        ('heads',))
    r1 = self.param('r1', init(o.init_r1_max), (self.num_heads,))
    r2 = self.param('r2', init(o.init_r2_max), (self.num_heads,))
    return kerple_log_bias(q_pos_XxL, k_pos_XxS, jnp.maximum(r1, o.eps), jnp.maximum(r2, o.eps))


@dataclasses.dataclass(frozen=True)
class KerpleHook(AttentionHook):
  opts: KerpleOptions = KerpleOptions()

  def scores(self, mod, q_BxLxHxK, k_BxSxHxK, *, q_pos, k_pos, scale, causal, num_old):
    bias = KerpleBias(mod.num_heads, self.opts, name='kerple')(q_pos, k_pos)
    return q_BxLxHxK, k_BxSxHxK, bias


@register('kerple')
class Kerple(PEType):
  """KERPLE-log: -r1 log(1 + r2 |i - j|), per layer and head (module doc)."""

  dims = (1,)
  Options = KerpleOptions

  @classmethod
  def hook(cls, pe):
    return KerpleHook(opts=cls.options_of(pe))

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    return PEOutput(ctx=PEContext(positions=positions_PxLxn))
