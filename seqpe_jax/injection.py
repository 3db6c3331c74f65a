"""Position-aware self-attention: the hook through which every PE type enters attention.

Method doc §3. A `PEContext` (arrays, computed once per forward by the
position encoder) is handed to every layer; the PE type's `AttentionHook`
(static, hashable; `posenc.PEType.hook`) says how to use it, in two steps:

  transform(q, k)   per-row: q from the queries' context rows, k from the keys'
                    (attn_add q += PE_q, k += PE_k; attn_mul q *= PE_q, k *= PE_k;
                    attn_scalar q~ = [q; s PE_q], k~ = [k; PE_k]; RoPE rotations)
  scores(q, k_S)    per query-key pair: an additive logit bias from the query
                    and key positions (ALiBi -m_h (i - j), FIRE, KERPLE)

and, once per forward pass before the layers, `prepare(ctx)`: work every layer
shares. SeqPE's attn_scalar with one shared `pe_qk` adds the SAME bias
`s PE_q·PE_k` in every layer and for every sequence of a position set, so where the
logits are materialised anyway (the reference path) it is computed once, `[P, L, H,
S]` in `ctx.attn_bias`, and added to each layer's logits — instead of widening every
layer's q·k to `[q; s PE_q]·[k; PE_k]` (the concat form, kept for the fused kernels and
wherever the bias cannot be shared). Cached decoding shares it too: the new rows
against every cache slot's PE_k, with plain keys in the cache.

Queries and keys carry separate positions: `PEContext.for_queries(L)` is the
queries' rows (its `query` field if set, else the last L rows, the general
query slice; the SeqPE encoder's CLS-only last layer is L = 1), and the keys
are the context's rows — or, with a `KVCache`, every cached key: `transform`
runs on the new rows, the transformed keys k~ and their positions go into the
cache, and `scores` sees the query positions against all cached key positions.
So uncached self-attention is the special case "no earlier keys".

PE_q/PE_k come from a `pe_qk` Dense(D→2D): one shared projection computed by
the position encoder (`pe_qk='single'`, text setting), one per layer
(`'multi'`, ViT setting), or none (`PE_q = PE_k = E`). Arrays in the context
have a leading position-set dim P that divides the batch B: sample b uses set
`b mod P` (the official tiling).

`official_cache_bias` reproduces the released code's cached-decoding flaw:
keys cached by earlier calls see the new query's own PE_k (attn_scalar) or
position (ALiBi), so a decode step's bias is constant over its key row.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from seqpe_jax import baselines, layers

Dtype = Any


@flax.struct.dataclass
class PEContext:
  """Position information shared by all layers; leading dim P divides the batch.

  Every array is row-major `[P, S, ...]` over the key rows (S keys); the query
  rows are `for_queries(L)`.
  """

  positions: jax.Array | None = None   # int [P, S, n]; for position biases, RoPE-Mixed
  rope_mask: jax.Array | None = None   # bool [P, S]; False = not rotated (ViT CLS)
  angles: jax.Array | None = None      # [P, S, K/2] RoPE angles
  embed: jax.Array | None = None       # [P, S, E] PE output, for per-layer pe_qk
  q_pe: jax.Array | None = None        # [P, S, E] shared pe_qk output (query half)
  k_pe: jax.Array | None = None        # [P, S, E] (key half)
  input_embed: jax.Array | None = None  # [P, S, C] added to the token embeddings
  attn_bias: jax.Array | None = None   # [P, L, H|1, S] float32 logits bias of every layer
                                       # (`AttentionHook.prepare`; query rows on axis 1)
  query: 'PEContext | None' = None     # the queries' rows when they are not the keys' last rows

  def for_queries(self, length: int) -> 'PEContext':
    """The context rows of `length` queries: `query`, or the last `length` key rows."""
    if self.query is not None:
      return self.query
    return jax.tree.map(lambda x: x if x.shape[1] == length else x[:, x.shape[1] - length:],
                        self)

  def q_positions(self, length: int) -> jax.Array | None:
    """1-D query positions `[P, L]` (None if the context has none)."""
    pos = self.for_queries(length).positions
    return None if pos is None else pos[..., 0]


@flax.struct.dataclass
class KVCache:
  """One layer's decoding cache; slots `[0, length)` are filled."""

  k: jax.Array       # [B, S, H, K~] keys as attention sees them (K~ = 2 K for attn_scalar)
  v: jax.Array       # [B, S, H, K]
  pos: jax.Array     # int32 [B, S] key positions (position biases)
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
  return _tile(x_P, batch // p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tile(x_P: jax.Array, reps: int) -> jax.Array:
  return jnp.tile(x_P, (reps,) + (1,) * (x_P.ndim - 1))


def _tile_fwd(x_P: jax.Array, reps: int):
  return _tile(x_P, reps), None


def _tile_bwd(reps: int, _, g_B: jax.Array):
  return (layers.block_sum(g_B, reps),)  # `jnp.tile`'s own transpose is slow on CPU


_tile.defvjp(_tile_fwd, _tile_bwd)


def split_heads(x_PxLxE: jax.Array, num_heads: int, head_dim: int, multi_head: bool) -> jax.Array:
  """`[P, L, E]` → `[P, L, H', K]` with H' = heads (multi-head) or 1 (broadcast)."""
  hp = num_heads if multi_head else 1
  if x_PxLxE.shape[-1] != hp * head_dim:
    raise ValueError(f'PE width {x_PxLxE.shape[-1]} must equal {hp}x{head_dim} '
                     f'(multi_head={multi_head}, heads={num_heads}, head_dim={head_dim})')
  return x_PxLxE.reshape(*x_PxLxE.shape[:2], hp, head_dim)


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


# ----------------------------------------------------------------------------- hooks

# attn_scalar's forms. bias: `prepare` computes s PE_q·PE_k once per forward for every layer
# (needs a shared pe_qk); concat: each layer widens q·k to [q; s PE_q]·[k; PE_k] (fused-kernel
# and KV-cache friendly; also where the bias cannot be shared); auto: bias where the logits
# are materialised anyway (the reference path), concat for the fused kernels.
SCALAR_FORMS = ('auto', 'concat', 'bias')

@dataclasses.dataclass(frozen=True)
class AttentionHook:
  """How a PE type enters attention (static, hashable); this base does nothing (NoPE,
  input-level PEs). Subclass and override `transform` and/or `scores`.

  Attributes:
    logit_mult: extra logit scale (YaRN's mscale**2).
    official_cache_bias: cached decoding reproduces the official flaw (module doc).
  """

  logit_mult: float = 1.0
  official_cache_bias: bool = False

  def key_dim(self, head_dim: int) -> int:
    """Width of a key as attention sees it (what the KV cache stores)."""
    return head_dim

  def shares_bias(self, materialized: bool) -> bool:
    """Whether `prepare` puts the layers' shared logits bias in `ctx.attn_bias` (then keys
    are cached as they are, `key_dim` does not apply)."""
    del materialized
    return False

  def prepare(self, ctx: PEContext, *, num_heads: int, head_dim: int, materialized: bool,
              key_ctx: PEContext | None = None,
              num_old: jax.Array | None = None) -> PEContext:
    """Per-forward work shared by every layer (default: none), before the layers run.

    `materialized`: this pass's attention materialises its `[B, H, L, S]` logits anyway
    (the reference path), so a precomputed `[P, L, H, S]` bias costs no extra memory.
    Cached decoding passes `key_ctx`, the context rows of every cache slot (positions
    0..S-1), and `num_old`, the slots filled by earlier calls; `ctx` is the new rows.
    Where a hook shares a bias this way, `PEAttention` adds it to every layer's logits and
    calls the hook's `scores` as for an uncached pass (`num_old=None`).
    """
    del num_heads, head_dim, materialized, key_ctx, num_old
    return ctx

  def transform(self, mod: nn.Module, q_BxLxHxK: jax.Array, k_BxSxHxK: jax.Array,
                q_ctx: PEContext, k_ctx: PEContext) -> tuple[jax.Array, jax.Array]:
    """Per-row q / k transform from the queries' and the keys' context rows.

    Runs inside `mod` (the `PEAttention`): create per-layer parameters there.
    """
    return q_BxLxHxK, k_BxSxHxK

  def scores(self, mod: nn.Module, q_BxLxHxK: jax.Array, k_BxSxHxK: jax.Array, *,
             q_pos: jax.Array | None, k_pos: jax.Array | None, scale: float, causal: bool,
             num_old: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """`(q, k, bias)` for the logits `scale q·k + bias`, bias `[P|B|1, H|1, L, S]` or None.

    q_pos `[P|B, L]` / k_pos `[P|B, S]`: 1-D query / key positions (None if the
    context has none); num_old: keys cached by earlier calls (None: no cache).
    """
    return q_BxLxHxK, k_BxSxHxK, None


@dataclasses.dataclass(frozen=True)
class SeqPEHook(AttentionHook):
  """SeqPE's attn_add / attn_mul / attn_scalar (PE_q, PE_k from the context)."""

  method: str = 'attn_scalar'    # attn_add | attn_mul | attn_scalar
  pe_qk: str = 'single'          # 'single' | 'multi' | 'none'
  multi_head: bool = True        # PE_q/PE_k split over heads (else one head broadcast)
  scalar_scale: float = 1.0      # s in attn_scalar
  scalar_form: str = 'auto'      # 'auto' | 'concat' | 'bias' (attn_scalar, SCALAR_FORMS)
  init_std: float = 0.02         # per-layer pe_qk init

  def __post_init__(self):
    if self.method not in ('attn_add', 'attn_mul', 'attn_scalar'):
      raise ValueError(f'unknown SeqPE attention method {self.method!r}')
    if self.pe_qk not in ('single', 'multi', 'none'):
      raise ValueError(f'pe_qk must be single, multi or none, got {self.pe_qk!r}')
    if self.scalar_form not in SCALAR_FORMS:
      raise ValueError(f'scalar_form must be one of {", ".join(SCALAR_FORMS)}, '
                       f'got {self.scalar_form!r}')

  def key_dim(self, head_dim):
    return 2 * head_dim if self.method == 'attn_scalar' else head_dim

  def shares_bias(self, materialized):
    return (self.method == 'attn_scalar' and self.pe_qk != 'multi'
            and (self.scalar_form == 'bias' or (self.scalar_form == 'auto' and materialized)))

  def prepare(self, ctx, *, num_heads, head_dim, materialized, key_ctx=None, num_old=None):
    """attn_scalar with a shared pe_qk: the layers' common bias, once (`auto`: when the
    logits are materialised anyway; `bias`: always). Decoding: the new rows against every
    cache slot's PE_k, so the cache holds plain keys (the official flaw: earlier slots see
    the query's own PE_k)."""
    if not self.shares_bias(materialized) or ctx.q_pe is None:
      return ctx
    keys = ctx if key_ctx is None else key_ctx
    scale = self.scalar_scale * head_dim**-0.5 * self.logit_mult

    @jax.named_scope('pe_bias')  # traces attribute its time (trace_summary.py --shares)
    def bias(q_ctx):
      q_pe = split_heads(q_ctx.q_pe, num_heads, head_dim, self.multi_head)
      k_pe = split_heads(keys.k_pe, num_heads, head_dim, self.multi_head)
      b_PxHxLxS = scalar_bias(q_pe, k_pe, scale)
      if self.official_cache_bias and num_old is not None:  # slot num_old + l: the query's own
        l, s = b_PxHxLxS.shape[2], b_PxHxLxS.shape[3]
        own = jnp.take_along_axis(b_PxHxLxS, (num_old + jnp.arange(l))[None, None, :, None], -1)
        b_PxHxLxS = jnp.where(jnp.arange(s) < num_old, own, b_PxHxLxS)
      return b_PxHxLxS.transpose(0, 2, 1, 3)
    query = ctx.query
    if query is not None:
      query = query.replace(attn_bias=bias(query), q_pe=None, k_pe=None)
    return ctx.replace(attn_bias=bias(ctx), q_pe=None, k_pe=None, query=query)

  def _split(self, mod, q_ctx, k_ctx, dh):
    """PE_q of the query rows and PE_k of the key rows, `[P, L|S, H', K]`."""
    if self.pe_qk == 'multi':
      dense = nn.Dense(2 * k_ctx.embed.shape[-1], dtype=mod.dtype, param_dtype=mod.param_dtype,
                       kernel_init=layers.partitioned(layers.normal(self.init_std),
                                                      ('pe_out', 'pe_qk')),
                       bias_init=layers.partitioned(nn.initializers.zeros, ('pe_qk',)),
                       name='pe_qk')
      _, k_pe = jnp.split(dense(k_ctx.embed.astype(mod.dtype)), 2, axis=-1)
      if q_ctx.embed is k_ctx.embed:
        q_pe = _
      else:
        q_pe, _ = jnp.split(dense(q_ctx.embed.astype(mod.dtype)), 2, axis=-1)
    else:
      q_pe, k_pe = q_ctx.q_pe, k_ctx.k_pe
    return (split_heads(q_pe, mod.num_heads, dh, self.multi_head),
            split_heads(k_pe, mod.num_heads, dh, self.multi_head))

  def transform(self, mod, q_BxLxHxK, k_BxSxHxK, q_ctx, k_ctx):
    if k_ctx.attn_bias is not None:  # attn_scalar precomputed by `prepare`
      return q_BxLxHxK, k_BxSxHxK
    b, dh = q_BxLxHxK.shape[0], q_BxLxHxK.shape[-1]
    q_pe, k_pe = self._split(mod, q_ctx, k_ctx, dh)
    q_pe, k_pe = tile_to_batch(q_pe, b), tile_to_batch(k_pe, b)
    q, k = q_BxLxHxK, k_BxSxHxK
    if self.method == 'attn_add':
      return q + q_pe.astype(q.dtype), k + k_pe.astype(k.dtype)
    if self.method == 'attn_mul':
      return q * q_pe.astype(q.dtype), k * k_pe.astype(k.dtype)
    # attn_scalar not shared by `prepare` (per-layer pe_qk, cached decoding, the concat form):
    # q~ = [q; s PE_q], k~ = [k; PE_k] (the cache stores k~).
    return concat_scalar(q, k, q_pe, k_pe, self.scalar_scale)

  def scores(self, mod, q_BxLxHxK, k_BxSxHxK, *, q_pos, k_pos, scale, causal, num_old):
    # q~·k~ (or ctx.attn_bias) carries the bias; only the official cache flaw needs it apart.
    if self.method != 'attn_scalar' or not (self.official_cache_bias and num_old is not None):
      return q_BxLxHxK, k_BxSxHxK, None
    dh = q_BxLxHxK.shape[-1] // 2
    q_pe = q_BxLxHxK[..., dh:].astype(jnp.float32)  # s PE_q (scaled in transform)
    k_pe = k_BxSxHxK[..., dh:].astype(jnp.float32)
    dots = jnp.einsum('blhk,bshk->bhls', q_pe, k_pe)
    # Earlier keys see the query's own PE_k (its slot is num_old + l).
    l, s = dots.shape[2], dots.shape[3]
    own = jnp.take_along_axis(dots, (num_old + jnp.arange(l))[None, None, :, None], axis=-1)
    dots = jnp.where(jnp.arange(s) < num_old, own, dots)
    return q_BxLxHxK[..., :dh], k_BxSxHxK[..., :dh], dots * scale


@dataclasses.dataclass(frozen=True)
class RopeHook(AttentionHook):
  """Rotates q, k by the context's precomputed angles (1-D RoPE, axial RoPE-2D)."""

  def transform(self, mod, q_BxLxHxK, k_BxSxHxK, q_ctx, k_ctx):
    b = q_BxLxHxK.shape[0]
    return (baselines.apply_rope(q_BxLxHxK, tile_to_batch(q_ctx.angles, b)),
            baselines.apply_rope(k_BxSxHxK, tile_to_batch(k_ctx.angles, b)))


@dataclasses.dataclass(frozen=True)
class RopeMixedHook(AttentionHook):
  """RoPE-Mixed: per-layer learnable 2-D frequencies (param `rope_freqs`)."""

  theta: float = 10.0

  def transform(self, mod, q_BxLxHxK, k_BxSxHxK, q_ctx, k_ctx):
    b, _, h, dh = q_BxLxHxK.shape
    freqs = mod.param(
        'rope_freqs', layers.partitioned(
            lambda key, shape, dtype: baselines.rope_mixed_init_freqs(
                key, h, dh, self.theta).astype(dtype), (None, 'heads', None)),
        (2, h, dh // 2), mod.param_dtype)

    def angles(ctx):
      a = baselines.rope_mixed_angles(ctx.positions, freqs)  # [P, L, H, K/2]
      if ctx.rope_mask is not None:
        a = a * ctx.rope_mask[..., None, None]
      return tile_to_batch(a, b)
    return (baselines.apply_rope(q_BxLxHxK, angles(q_ctx)),
            baselines.apply_rope(k_BxSxHxK, angles(k_ctx)))


@dataclasses.dataclass(frozen=True)
class AlibiHook(AttentionHook):
  """logits += -m_h (i - j) from the query and key positions."""

  before_scale: bool = False  # official quirk: bias added before 1/sqrt(d_h)

  def scores(self, mod, q_BxLxHxK, k_BxSxHxK, *, q_pos, k_pos, scale, causal, num_old):
    slopes = baselines.alibi_slopes(mod.num_heads)
    if self.official_cache_bias and num_old is not None:  # earlier keys: the query's position
      s = k_pos.shape[-1]
      k_pos_XxLxS = jnp.where(jnp.arange(s) < num_old, q_pos[:, :, None], k_pos[:, None, :])
      dist = q_pos[:, :, None].astype(jnp.float32) - k_pos_XxLxS.astype(jnp.float32)
      bias = -jnp.asarray(slopes)[None, :, None, None] * dist[:, None]
    else:
      bias = baselines.alibi_bias(q_pos, k_pos, slopes, causal=causal)
    if self.before_scale:
      bias = bias * scale
    return q_BxLxHxK, k_BxSxHxK, bias


# ----------------------------------------------------------------------------- attention

class PEAttention(nn.Module):
  """Multi-head self-attention with a position-encoding hook (GPT-2 projections)."""

  num_heads: int
  injection: AttentionHook = AttentionHook()
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
  def __call__(self, x_BxSxC: jax.Array, ctx: PEContext, mask_BxLxS: jax.Array | None = None,
               deterministic: bool = True, cache: KVCache | None = None
               ) -> jax.Array | tuple[jax.Array, KVCache]:
    """Attention output `[B, L, C]` (L = 1 with `last_query_only`, else S); with `cache`,
    `(output, updated cache)` — the S new rows attend to every cached key."""
    b, s, d = x_BxSxC.shape
    h, hook = self.num_heads, self.injection
    dh = d // h
    qkv = layers.Linear((3, h, dh), ('embed', None, 'heads', 'kv'), use_bias=self.use_bias,
                        init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype,
                        name='qkv')(x_BxSxC)
    q, k, v = (layers.constrain(qkv[:, :, i], ('act_batch', 'act_len', 'act_heads', None))
               for i in range(3))
    scale = dh**-0.5 * hook.logit_mult
    l = 1 if self.last_query_only else s
    q = q[:, s - l:]  # the general query slice: queries are the last l rows
    q_ctx = ctx.for_queries(l)
    q, k = hook.transform(self, q, k, q_ctx, ctx)
    q_pos = None if q_ctx.positions is None else q_ctx.positions[..., 0]
    if cache is None:
      k_pos = None if ctx.positions is None else ctx.positions[..., 0]
      k_all, v_all, num_old = k, v, None
      mask = layers.causal_mask(l, s)[None, None] if self.causal else None
      if mask_BxLxS is not None:
        extra = mask_BxLxS[:, None]  # [B, 1, L or 1, S]; a 1-row mask applies to every query
        extra = extra if extra.shape[2] == 1 else extra[:, :, s - l:]
        mask = extra if mask is None else mask & extra
    else:
      if not self.causal or self.last_query_only or mask_BxLxS is not None:
        raise ValueError('cached attention is causal, without last_query_only or an extra mask')
      t = cache.length
      q_pos = (jnp.broadcast_to(t + jnp.arange(l, dtype=jnp.int32), (b, l)) if q_pos is None
               else tile_to_batch(q_pos, b).astype(jnp.int32))
      cache = cache.replace(
          k=lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, t, 0, 0)),
          v=lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, t, 0, 0)),
          pos=lax.dynamic_update_slice(cache.pos, q_pos, (0, t)), length=t + l)
      k_all, v_all, k_pos, num_old = cache.k, cache.v, cache.pos, t
      slots_S = jnp.arange(cache.k.shape[1])
      mask = (slots_S[None, :] <= t + jnp.arange(l)[:, None])[None, None]  # [1, 1, L, S]
    shared = q_ctx.attn_bias  # the layers' shared bias (`AttentionHook.prepare`)
    q, k_all, bias = hook.scores(self, q, k_all, q_pos=q_pos, k_pos=k_pos, scale=scale,
                                 causal=self.causal, num_old=None if shared is not None
                                 else num_old)
    if shared is not None:
      shared = shared.transpose(0, 2, 1, 3)
      if shared.shape[0] == 1 < b:  # one position set read by every layer: see broadcast_batch
        shared = layers.broadcast_batch(shared, b, materialize_grad=True)
      bias = shared if bias is None else bias + shared
    if bias is not None and bias.shape[0] != 1:
      bias = tile_to_batch(bias, b)
    rate, rng = (self.dropout_rate, None) if cache is None else (0.0, None)  # decoding: eval
    if cache is None and not deterministic and self.dropout_rate > 0.0:
      rng = self.make_rng('dropout')
    out_BxLxHxK = layers.dot_product_attention(
        q, k_all, v_all, scale=scale, bias=bias, mask=mask, implementation=self.implementation,
        dropout_rate=rate, dropout_rng=rng)
    out_BxLxHxK = layers.constrain(out_BxLxHxK, ('act_batch', 'act_len', 'act_heads', None))
    out = layers.Linear((d,), ('heads', 'kv', 'embed'), n_in=2, use_bias=self.use_bias,
                        init_std=self.out_init_std, dtype=self.dtype,
                        param_dtype=self.param_dtype, name='out')(out_BxLxHxK)
    return out if cache is None else (out, cache)
