"""Position-aware self-attention: every way a position encoding enters attention.

Method doc §3. A `PEContext` (arrays, computed once per forward by the
position encoder) is handed to every layer; `Injection` (static) says how to
use it:

  none         plain attention (NoPE, or input-level PEs added to the embeddings)
  attn_add     q += PE_q, k += PE_k
  attn_mul     q *= PE_q, k *= PE_k
  attn_scalar  logits += s * PE_q·PE_k  (per head), computed either as an explicit
               bias (`scalar_form='bias'`) or by concatenation
               q~ = [q; s PE_q], k~ = [k; PE_k] with scale 1/sqrt(d_h)
               (`'concat'`: same math, bias-free, so fused kernels and KV caches carry it)
  rope         rotate q, k by precomputed angles (1-D RoPE, axial RoPE-2D)
  rope_mixed   rotate by per-layer learnable 2-D frequencies (RoPE-Mixed)
  alibi        logits += -m_h (i - j)

PE_q/PE_k come from a `pe_qk` Dense(D→2D): one shared projection computed by
the position encoder (`pe_qk='single'`, text setting), one per layer
(`'multi'`, ViT setting), or none (`PE_q = PE_k = E`). Arrays in the context
have a leading position-set dim P that divides the batch B: sample b uses set
`b mod P` (the official tiling).

Cached decoding (`cache=`): the context holds the rows of the *new* tokens
only; their keys go into a `KVCache` as attention sees them (rotated for
RoPE, `k + PE_k` / `k * PE_k`, `[k; PE_k]` for attn_scalar) together with
their positions (ALiBi), and the new queries attend to every filled slot.
`Injection.official_cache_bias` reproduces the released code's flaw instead:
keys cached by earlier calls see the new query's own PE_k (attn_scalar) or
position (ALiBi), so a decode step's bias is constant over its key row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from seqpe_jax import baselines, layers

Dtype = Any

METHODS = ('none', 'attn_add', 'attn_mul', 'attn_scalar', 'rope', 'rope_mixed', 'alibi')


@dataclasses.dataclass(frozen=True)
class Injection:
  """How positions enter attention (static, hashable)."""

  method: str = 'none'
  pe_qk: str = 'single'          # 'single' | 'multi' | 'none' (attn_* methods)
  multi_head: bool = True        # PE_q/PE_k split over heads (else one head broadcast)
  scalar_scale: float = 1.0      # s in attn_scalar
  scalar_form: str = 'concat'    # 'concat' | 'bias' (attn_scalar)
  alibi_before_scale: bool = False  # official quirk: bias added before 1/sqrt(d_h)
  rope_mixed_theta: float = 10.0
  logit_mult: float = 1.0        # extra logit scale (YaRN's mscale**2)
  official_cache_bias: bool = False  # cached decoding: the official constant-bias flaw

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f'unknown attention injection {self.method!r}; one of {METHODS}')
    if self.pe_qk not in ('single', 'multi', 'none'):
      raise ValueError(f'pe_qk must be single, multi or none, got {self.pe_qk!r}')
    if self.scalar_form not in ('concat', 'bias'):
      raise ValueError(f'scalar_form must be concat or bias, got {self.scalar_form!r}')


@flax.struct.dataclass
class PEContext:
  """Position information shared by all layers; leading dim P divides the batch."""

  positions: jax.Array | None = None   # int [P, L, d]; for ALiBi, RoPE-Mixed
  rope_mask: jax.Array | None = None   # bool [P, L]; False = not rotated (ViT CLS)
  angles: jax.Array | None = None      # [P, L, K/2] RoPE angles
  embed: jax.Array | None = None       # [P, L, D] PE output, for per-layer pe_qk
  q_pe: jax.Array | None = None        # [P, L, D] shared pe_qk output (query half)
  k_pe: jax.Array | None = None        # [P, L, D] (key half)
  input_embed: jax.Array | None = None  # [P, L, C] added to the token embeddings


@flax.struct.dataclass
class KVCache:
  """One layer's decoding cache; slots `[0, length)` are filled."""

  k: jax.Array       # [B, S, H, K~] keys as attention sees them (K~ = 2 K for attn_scalar)
  v: jax.Array       # [B, S, H, K]
  pos: jax.Array     # int32 [B, S] key positions (ALiBi)
  length: jax.Array  # int32 [] filled slots

  @classmethod
  def empty(cls, batch: int, max_len: int, num_heads: int, k_dim: int, v_dim: int,
            dtype: Dtype = jnp.float32) -> 'KVCache':
    return cls(k=jnp.zeros((batch, max_len, num_heads, k_dim), dtype),
               v=jnp.zeros((batch, max_len, num_heads, v_dim), dtype),
               pos=jnp.zeros((batch, max_len), jnp.int32), length=jnp.zeros((), jnp.int32))


def tile_to_batch(x_P: jax.Array, batch: int) -> jax.Array:
  """Tiles position sets over the batch: row b uses set b mod P (repeat, not interleave)."""
  p = x_P.shape[0]
  if p == batch:
    return x_P
  if batch % p:
    raise ValueError(f'position sets ({p}) must divide the batch ({batch})')
  return jnp.tile(x_P, (batch // p,) + (1,) * (x_P.ndim - 1))


def split_heads(x_PxLxD: jax.Array, num_heads: int, head_dim: int, multi_head: bool) -> jax.Array:
  """`[P, L, D]` → `[P, L, H', K]` with H' = heads (multi-head) or 1 (broadcast)."""
  hp = num_heads if multi_head else 1
  if x_PxLxD.shape[-1] != hp * head_dim:
    raise ValueError(f'PE width {x_PxLxD.shape[-1]} must equal {hp}x{head_dim} '
                     f'(multi_head={multi_head}, heads={num_heads}, head_dim={head_dim})')
  return x_PxLxD.reshape(*x_PxLxD.shape[:2], hp, head_dim)


def scalar_bias(q_pe_PxLxHxK: jax.Array, k_pe_PxSxHxK: jax.Array, scale: float) -> jax.Array:
  """The attn_scalar bias `s * PE_q·PE_k` as `[P, H', L, S]` (before 1/sqrt(d_h))."""
  return scale * jnp.einsum('plhk,pshk->phls', q_pe_PxLxHxK.astype(jnp.float32),
                            k_pe_PxSxHxK.astype(jnp.float32))


def concat_scalar(q_BxLxHxK, k_BxSxHxK, q_pe_BxLxHxK, k_pe_BxSxHxK, scale: float):
  """attn_scalar as one wider dot product: [q; s PE_q]·[k; PE_k] = q·k + s PE_q·PE_k."""
  h = q_BxLxHxK.shape[2]
  q_pe = jnp.broadcast_to(q_pe_BxLxHxK, (*q_pe_BxLxHxK.shape[:2], h, q_pe_BxLxHxK.shape[-1]))
  k_pe = jnp.broadcast_to(k_pe_BxSxHxK, (*k_pe_BxSxHxK.shape[:2], h, k_pe_BxSxHxK.shape[-1]))
  q = jnp.concatenate([q_BxLxHxK, (scale * q_pe).astype(q_BxLxHxK.dtype)], axis=-1)
  k = jnp.concatenate([k_BxSxHxK, k_pe.astype(k_BxSxHxK.dtype)], axis=-1)
  return q, k


class PEAttention(nn.Module):
  """Multi-head self-attention with a position-encoding hook (GPT-2 projections)."""

  num_heads: int
  injection: Injection = Injection()
  causal: bool = True
  dropout_rate: float = 0.0
  implementation: str = 'reference'
  init_std: float = 0.02
  out_init_std: float = 0.02
  use_bias: bool = True
  last_query_only: bool = False  # only the last row's output (the SeqPE encoder's CLS)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxC: jax.Array, ctx: PEContext, mask_BxLxS: jax.Array | None = None,
               deterministic: bool = True, cache: KVCache | None = None
               ) -> jax.Array | tuple[jax.Array, KVCache]:
    """Attention output `[B, L, C]`; with `cache`, `(output, updated cache)`."""
    b, l, c = x_BxLxC.shape
    h, inj = self.num_heads, self.injection
    dh = c // h
    qkv = layers.Linear((3, h, dh), ('embed', None, 'heads', 'kv'), use_bias=self.use_bias,
                        init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype,
                        name='qkv')(x_BxLxC)
    q, k, v = (layers.constrain(qkv[:, :, i], ('act_batch', 'act_len', 'act_heads', None))
               for i in range(3))
    scale, bias = dh**-0.5 * inj.logit_mult, None
    project = lambda o_BxLxHxK: layers.Linear(
        (c,), ('heads', 'kv', 'embed'), n_in=2, use_bias=self.use_bias,
        init_std=self.out_init_std, dtype=self.dtype, param_dtype=self.param_dtype,
        name='out')(o_BxLxHxK)
    if cache is not None:
      out_BxLxHxK, cache = self._cached(q, k, v, ctx, cache, scale, mask_BxLxS)
      return project(out_BxLxHxK), cache

    if inj.method in ('attn_add', 'attn_mul', 'attn_scalar'):
      q_pe, k_pe = self._pe_qk(ctx, dh)
      if inj.method == 'attn_scalar' and inj.scalar_form == 'bias':
        bias = scalar_bias(q_pe, k_pe, inj.scalar_scale) * scale  # [P, H', L, L], pre-scaling
      q_pe, k_pe = tile_to_batch(q_pe, b), tile_to_batch(k_pe, b)
      if inj.method == 'attn_add':
        q, k = q + q_pe.astype(q.dtype), k + k_pe.astype(k.dtype)
      elif inj.method == 'attn_mul':
        q, k = q * q_pe.astype(q.dtype), k * k_pe.astype(k.dtype)
      elif inj.scalar_form == 'concat':
        q, k = concat_scalar(q, k, q_pe, k_pe, inj.scalar_scale)
    elif inj.method in ('rope', 'rope_mixed'):
      q, k = self._rotate(q, k, ctx)
    elif inj.method == 'alibi':
      pos = ctx.positions[..., 0]
      slopes = baselines.alibi_slopes(h)
      bias = baselines.alibi_bias(pos, pos, slopes, causal=self.causal)
      if inj.alibi_before_scale:
        bias = bias * scale

    if bias is not None and bias.shape[0] != 1:
      bias = tile_to_batch(bias, b)
    mask = layers.causal_mask(l, l)[None, None] if self.causal else None
    if mask_BxLxS is not None:
      extra = mask_BxLxS[:, None]
      mask = extra if mask is None else mask & extra
    if self.last_query_only:
      q = q[:, -1:]
      mask = None if mask is None else mask[..., -1:, :]
      bias = None if bias is None else bias[..., -1:, :]
    rng = None
    if not deterministic and self.dropout_rate > 0.0:
      rng = self.make_rng('dropout')
    out_BxLxHxK = layers.dot_product_attention(
        q, k, v, scale=scale, bias=bias, mask=mask, implementation=self.implementation,
        dropout_rate=self.dropout_rate, dropout_rng=rng)
    out_BxLxHxK = layers.constrain(out_BxLxHxK, ('act_batch', 'act_len', 'act_heads', None))
    return project(out_BxLxHxK)

  def _rotate(self, q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, ctx: PEContext
              ) -> tuple[jax.Array, jax.Array]:
    """RoPE / RoPE-Mixed rotation of q and k by the context's positions."""
    b, _, h, dh = q_BxLxHxK.shape
    if self.injection.method == 'rope':
      angles = tile_to_batch(ctx.angles, b)
    else:
      freqs = self.param(
          'rope_freqs', layers.partitioned(
              lambda key, shape, dtype: baselines.rope_mixed_init_freqs(
                  key, h, dh, self.injection.rope_mixed_theta).astype(dtype),
              (None, 'heads', None)),
          (2, h, dh // 2), self.param_dtype)
      angles = baselines.rope_mixed_angles(ctx.positions, freqs)  # [P, L, H, K/2]
      if ctx.rope_mask is not None:
        angles = angles * ctx.rope_mask[..., None, None]
      angles = tile_to_batch(angles, b)
    return baselines.apply_rope(q_BxLxHxK, angles), baselines.apply_rope(k_BxLxHxK, angles)

  def _cached(self, q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array,
              ctx: PEContext, cache: KVCache, scale: float,
              mask_BxLxS: jax.Array | None) -> tuple[jax.Array, KVCache]:
    """New queries (slots t..t+L-1, `ctx` = their PE rows) attend to cached keys 0..t+L-1."""
    inj = self.injection
    if not self.causal or self.last_query_only or mask_BxLxS is not None:
      raise ValueError('cached attention is causal, without last_query_only or an extra mask')
    b, l, h, dh = q_BxLxHxK.shape
    q, k = q_BxLxHxK, k_BxLxHxK
    t = cache.length
    if ctx.positions is not None:
      q_pos_BxL = tile_to_batch(ctx.positions[..., 0], b).astype(jnp.int32)
    else:
      q_pos_BxL = jnp.broadcast_to(t + jnp.arange(l, dtype=jnp.int32), (b, l))
    q_pe = k_pe = None
    if inj.method in ('attn_add', 'attn_mul', 'attn_scalar'):
      q_pe, k_pe = self._pe_qk(ctx, dh)
      q_pe, k_pe = tile_to_batch(q_pe, b), tile_to_batch(k_pe, b)
      if inj.method == 'attn_add':
        q, k = q + q_pe.astype(q.dtype), k + k_pe.astype(k.dtype)
      elif inj.method == 'attn_mul':
        q, k = q * q_pe.astype(q.dtype), k * k_pe.astype(k.dtype)
      else:  # cache k~ = [k; PE_k] whatever the form
        q, k = concat_scalar(q, k, q_pe, k_pe, inj.scalar_scale)
    elif inj.method in ('rope', 'rope_mixed'):
      q, k = self._rotate(q, k, ctx)
    cache = cache.replace(
        k=lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, t, 0, 0)),
        v=lax.dynamic_update_slice(cache.v, v_BxLxHxK.astype(cache.v.dtype), (0, t, 0, 0)),
        pos=lax.dynamic_update_slice(cache.pos, q_pos_BxL, (0, t)), length=t + l)
    s = cache.k.shape[1]
    slots_S = jnp.arange(s)
    mask = (slots_S[None, :] <= t + jnp.arange(l)[:, None])[None, None]  # [1, 1, L, S]
    old_S = slots_S < t  # keys written by earlier calls
    k_all, bias = cache.k, None
    if inj.method == 'attn_scalar' and (inj.scalar_form == 'bias' or inj.official_cache_bias):
      q, k_all = q[..., :dh], cache.k[..., :dh]
      q_pe_h = jnp.broadcast_to(q_pe, (b, l, h, dh)).astype(jnp.float32)
      k_pe_h = cache.k[..., dh:].astype(jnp.float32)  # [B, S, H, K]
      dots = jnp.einsum('blhk,bshk->bhls', q_pe_h, k_pe_h)
      if inj.official_cache_bias:
        own = jnp.einsum('blhk,blhk->bhl', q_pe_h, k[..., dh:].astype(jnp.float32))
        dots = jnp.where(old_S, own[..., None], dots)
      bias = inj.scalar_scale * dots * scale
    elif inj.method == 'alibi':
      slopes = baselines.alibi_slopes(h)
      if inj.official_cache_bias:
        k_pos_BxLxS = jnp.where(old_S, q_pos_BxL[:, :, None], cache.pos[:, None, :])
        dist = q_pos_BxL[:, :, None].astype(jnp.float32) - k_pos_BxLxS.astype(jnp.float32)
        bias = -jnp.asarray(slopes)[None, :, None, None] * dist[:, None]
      else:
        bias = baselines.alibi_bias(q_pos_BxL, cache.pos, slopes, causal=True)
      if inj.alibi_before_scale:
        bias = bias * scale
    out_BxLxHxK = layers.dot_product_attention(
        q, k_all, cache.v, scale=scale, bias=bias, mask=mask, implementation=self.implementation)
    return layers.constrain(out_BxLxHxK, ('act_batch', 'act_len', 'act_heads', None)), cache

  def _pe_qk(self, ctx: PEContext, dh: int) -> tuple[jax.Array, jax.Array]:
    """PE_q, PE_k as `[P, L, H', K]` from the shared, per-layer or no projection."""
    inj = self.injection
    if inj.pe_qk == 'multi':
      e = ctx.embed
      pe = nn.Dense(2 * e.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=layers.partitioned(layers.normal(self.init_std), ('pe_out', 'pe_qk')),
                    bias_init=layers.partitioned(nn.initializers.zeros, ('pe_qk',)),
                    name='pe_qk')(e.astype(self.dtype))
      q_pe, k_pe = jnp.split(pe, 2, axis=-1)
    else:
      q_pe, k_pe = ctx.q_pe, ctx.k_pe
    return (split_heads(q_pe, self.num_heads, dh, inj.multi_head),
            split_heads(k_pe, self.num_heads, dh, inj.multi_head))
