"""Transformer building blocks shared by the SeqPE encoder, the GPT and the ViT.

Every parameter carries logical axis names (`nn.with_logical_partitioning`)
and activations are constrained with `nn.with_logical_constraint`; outside a
mesh with axis rules both are no-ops, so the same modules run on one device
and sharded over a mesh (see `sharding.py` for the rule table).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

NEG_INF = -1e30  # finite: a fully masked row then gives a uniform softmax, never NaN


def normal(std: float) -> Initializer:
  return nn.initializers.normal(stddev=std)


def partitioned(init: Initializer, names: tuple[str | None, ...]) -> Initializer:
  return nn.with_logical_partitioning(init, names)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  return nn.with_logical_constraint(x, names)


def onehot_lookup(table_VxD: jax.Array, ids: jax.Array) -> jax.Array:
  """`table[ids]` as a one-hot product, for tables of a few dozen rows: a gather's gradient
  would be thousands of scatter-adds into those few rows."""
  onehot = jax.nn.one_hot(ids, table_VxD.shape[0], dtype=table_VxD.dtype)
  return jnp.einsum('...v,vd->...d', onehot, table_VxD)


class Linear(nn.Module):
  """`y = x · W + b` contracting the last `n_in` dims of x; W has shape `in + features`.

  Unlike `nn.DenseGeneral`, the kernel is created in its final shape, so its
  logical partitioning names (one per dim) apply as written.
  """

  features: tuple[int, ...]
  names: tuple[str | None, ...]
  n_in: int = 1
  use_bias: bool = True
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, part: slice | None = None) -> jax.Array:
    """`part` slices the first feature dim: only those outputs are computed (a module called
    twice shares its parameters, e.g. q of a few rows and k/v of all)."""
    in_shape = x.shape[-self.n_in:]
    kernel = self.param('kernel', partitioned(normal(self.init_std), self.names),
                        (*in_shape, *self.features), self.param_dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    if part is not None:
      kernel = kernel[(slice(None),) * self.n_in + (part,)]
    y = jnp.tensordot(x.astype(self.dtype), kernel, axes=self.n_in)
    if self.use_bias:
      bias = self.param('bias', partitioned(nn.initializers.zeros, self.names[self.n_in:]),
                        self.features, self.param_dtype)
      y = y + jnp.asarray(bias if part is None else bias[part], self.dtype)
    return y


class Embed(nn.Module):
  """Token embedding `[V, C]` ('vocab', 'embed') with an FSDP-friendly lookup.

  The table is all-gathered over its 'embed' (FSDP) axis before the lookup, so the
  batch-sharded activations never need a reshuffle and the backward pass
  reduce-scatters the table's gradient back to its shards.
  """

  num_embeddings: int
  features: int
  init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = self.param('embedding', partitioned(normal(self.init_std), ('vocab', 'embed')),
                                (self.num_embeddings, self.features), self.param_dtype)

  def _table(self) -> jax.Array:
    return constrain(jnp.asarray(self.embedding, self.dtype), ('vocab', None))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self._table(), ids, axis=0)

  def attend(self, x_BxLxC: jax.Array) -> jax.Array:
    """Logits against the (tied) table: `x · Eᵀ`."""
    return jnp.einsum('blc,vc->blv', x_BxLxC.astype(self.dtype), self._table())


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x_NxD: jax.Array, scale_D: jax.Array, bias_D: jax.Array,
               eps: float) -> jax.Array:
  """`(x - mean) / sqrt(var + eps) * scale + bias` over the last axis, all in x's dtype.

  The gradient is written out (the textbook form, from the normalised input and the
  reciprocal std saved by the forward): autodiff of the same forward compiled on CPU to
  reductions over the row axis that took ~20% of a small GPT's training step.
  """
  return _layer_norm_fwd(x_NxD, scale_D, bias_D, eps)[0]


def _layer_norm_fwd(x_NxD, scale_D, bias_D, eps):
  xc_NxD = x_NxD - x_NxD.mean(-1, keepdims=True)
  r_Nx1 = jax.lax.rsqrt((xc_NxD * xc_NxD).mean(-1, keepdims=True) + eps)
  xh_NxD = xc_NxD * r_Nx1
  return xh_NxD * scale_D + bias_D, (xh_NxD, r_Nx1, scale_D)


def _layer_norm_bwd(eps, res, g_NxD):
  del eps
  xh_NxD, r_Nx1, scale_D = res
  rows = tuple(range(g_NxD.ndim - 1))
  gxh_NxD = g_NxD * scale_D
  gx_NxD = r_Nx1 * (gxh_NxD - gxh_NxD.mean(-1, keepdims=True)
                    - xh_NxD * (gxh_NxD * xh_NxD).mean(-1, keepdims=True))
  return gx_NxD, (g_NxD * xh_NxD).sum(rows), g_NxD.sum(rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class _LayerNormParams(nn.Module):
  """The `scale` / `bias` leaves, named as flax's `nn.LayerNorm` names them."""

  eps: float
  dtype: Dtype
  param_dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param('scale', partitioned(nn.initializers.ones, ('norm',)), (d,),
                       self.param_dtype)
    bias = self.param('bias', partitioned(nn.initializers.zeros, ('norm',)), (d,),
                      self.param_dtype)
    f32 = jnp.float32
    return layer_norm(x.astype(f32), scale.astype(f32), bias.astype(f32),
                      self.eps).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm in fp32 (statistics and arithmetic; output cast to `dtype`) with logically
  named scale/bias under `ln/` (the parameter tree of `nn.LayerNorm(name='ln')`)."""

  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _LayerNormParams(self.eps, self.dtype, self.param_dtype, name='ln')(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gelu(x: jax.Array, approximate: bool = True) -> jax.Array:
  """`nn.gelu` whose backward keeps only its input and recomputes the derivative.

  Autodiff of `nn.gelu` keeps ~5 intermediates of the `[B, L, 4C]` hidden per MLP (tanh,
  its argument, products) through the backward: the largest activation memory of a
  training step. The derivative is cheap elementwise work fused into the backward.
  """
  return nn.gelu(x, approximate=approximate)


def _gelu_fwd(x, approximate):
  return nn.gelu(x, approximate=approximate), x


def _gelu_bwd(approximate, x, g):
  xf = x.astype(jnp.float32)
  if approximate:  # 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
    c = jnp.sqrt(2.0 / jnp.pi).astype(jnp.float32)
    t = jnp.tanh(c * (xf + 0.044715 * xf**3))
    d = 0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * xf * xf)
  else:  # 0.5 x (1 + erf(x / sqrt 2)): Phi(x) + x phi(x)
    d = (0.5 * (1.0 + jax.lax.erf(xf * 2.0**-0.5))
         + xf * jnp.exp(-0.5 * xf * xf) * (2.0 * jnp.pi)**-0.5)
  return ((g.astype(jnp.float32) * d).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


class Mlp(nn.Module):
  """GPT-2 MLP: Dense(C→F) → gelu (tanh approximation, or exact erf) → Dense(F→C)."""

  hidden: int
  gelu_approximate: bool = True  # False: exact erf GELU (timm ViT, torch nn.GELU)
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxC: jax.Array) -> jax.Array:
    c = x_BxLxC.shape[-1]
    h_BxLxF = nn.Dense(
        self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=partitioned(normal(self.init_std), ('embed', 'mlp')),
        bias_init=partitioned(nn.initializers.zeros, ('mlp',)), name='fc')(x_BxLxC)
    h_BxLxF = constrain(h_BxLxF, ('act_batch', 'act_len', 'act_mlp'))
    h_BxLxF = gelu(h_BxLxF, self.gelu_approximate)
    return nn.Dense(
        c, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=partitioned(normal(self.out_init_std), ('mlp', 'embed')),
        bias_init=partitioned(nn.initializers.zeros, ('embed',)), name='proj')(h_BxLxF)


def block_sum(g_RPx: jax.Array, reps: int) -> jax.Array:
  """The sum of `reps` contiguous blocks of the leading axis (`[reps * P, ...]` → `[P, ...]`).

  Written out as pairwise halving (log2(reps) adds of contiguous halves, plus one add per
  odd count): the one reduce over a `[reps, P, ...]` view that the transposes of `jnp.tile`
  and of a batch broadcast compile to ran ~1.6-4x slower on XLA CPU, and every layer's
  shared attention-bias gradient goes through it."""
  p, extra = g_RPx.shape[0] // reps, None
  while reps > 1:
    if reps % 2:
      last = g_RPx[(reps - 1) * p:]
      extra = last if extra is None else extra + last
      g_RPx, reps = g_RPx[:(reps - 1) * p], reps - 1
    half = reps // 2 * p
    g_RPx, reps = g_RPx[:half] + g_RPx[half:], reps // 2
  return g_RPx if extra is None else g_RPx + extra


def broadcast_batch(x_1x: jax.Array, batch: int, materialize_grad: bool = False) -> jax.Array:
  """`jnp.broadcast_to(x, (batch, ...))` of a leading-1 array, its gradient by `block_sum`.

  `materialize_grad`: for a value every layer reads (the shared attention bias). The last
  halving step of the batch sum is then a dot with ones, which XLA CPU computes into a buffer
  of its own; as adds, XLA fused all layers' sums into each consumer of their total, reading
  every layer's `[B, H, L, S]` cotangent once per consumer (1.4 s of a GPT-2 small step).
  """
  return _broadcast_batch(x_1x, batch, materialize_grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _broadcast_batch(x_1x: jax.Array, batch: int, materialize_grad: bool) -> jax.Array:
  del materialize_grad
  return jnp.broadcast_to(x_1x, (batch, *x_1x.shape[1:]))


def _broadcast_batch_fwd(x_1x: jax.Array, batch: int, materialize_grad: bool):
  return _broadcast_batch(x_1x, batch, materialize_grad), None


def _broadcast_batch_bwd(batch: int, materialize_grad: bool, _, g_Bx: jax.Array):
  if not materialize_grad or batch == 1:
    return (block_sum(g_Bx, batch),)
  g_2x = block_sum(g_Bx, batch // 2) if batch % 2 == 0 else g_Bx  # 2 rows (odd batch: all)
  ones = jnp.ones((g_2x.shape[0],), g_2x.dtype)
  return (jnp.tensordot(ones, g_2x, axes=(0, 0))[None],)


_broadcast_batch.defvjp(_broadcast_batch_fwd, _broadcast_batch_bwd)


def causal_mask(q_len: int, k_len: int) -> jax.Array:
  """bool `[q_len, k_len]`; query i (the last q_len of k_len) sees keys <= i."""
  q_idx = jnp.arange(k_len - q_len, k_len)[:, None]
  return q_idx >= jnp.arange(k_len)[None, :]


def materializes_logits(implementation: str, dropout_active: bool) -> bool:
  """Whether `dot_product_attention` takes the reference path (explicit `[B, H, L, S]`
  logits): asked for, or attention dropout active (the fused kernels have none)."""
  return implementation == 'reference' or dropout_active


def dot_product_attention(
    q_BxLxHxK: jax.Array,
    k_BxSxHxK: jax.Array,
    v_BxSxHxV: jax.Array,
    *,
    scale: float,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    implementation: str = 'reference',
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
  """Scaled dot-product attention; logits and softmax in fp32.

  Args:
    q_BxLxHxK, k_BxSxHxK, v_BxSxHxV: queries, keys, values (V may differ from K).
    scale: multiplies q·k (the bias is added after scaling).
    bias: additive logits, broadcastable to `[B, H, L, S]`.
    mask: bool, broadcastable to `[B, H, L, S]`; False = not attended.
    implementation: 'reference' (einsum), or 'xla' / 'cudnn' / 'fused'
      (`jax.nn.dot_product_attention`; 'fused' lets JAX pick cuDNN flash
      attention on GPU and XLA elsewhere).
    dropout_rate, dropout_rng: attention-probability dropout. The fused kernels
      have no dropout, so a step with active attention dropout (a training step
      with `dropout_rng` and `dropout_rate > 0`) takes the reference path
      whatever `implementation` says; evaluation and decoding (no rng) keep the
      fused kernel. Same math either way (the equivalence is tested).

  Returns:
    `[B, L, H, V]`.
  """
  dropout_active = dropout_rate > 0.0 and dropout_rng is not None
  if materializes_logits(implementation, dropout_active):
    logits_BxHxLxS = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK, k_BxSxHxK,
                                preferred_element_type=jnp.float32) * scale
    if bias is not None:
      if bias.ndim == 4 and bias.shape[0] == 1 < q_BxLxHxK.shape[0]:
        # One bias for the whole batch (a single position set): broadcast with a written-out
        # gradient, the batch reduce of the plain broadcast's transpose being slow on CPU.
        bias = broadcast_batch(bias, q_BxLxHxK.shape[0])
      logits_BxHxLxS = logits_BxHxLxS + bias.astype(jnp.float32)
    if mask is not None:
      logits_BxHxLxS = jnp.where(mask, logits_BxHxLxS, NEG_INF)
    probs_BxHxLxS = jax.nn.softmax(logits_BxHxLxS, axis=-1)
    if dropout_active:
      keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxHxLxS.shape)
      probs_BxHxLxS = jnp.where(keep, probs_BxHxLxS / (1.0 - dropout_rate), 0.0)
    return jnp.einsum('bhls,bshv->blhv', probs_BxHxLxS.astype(v_BxSxHxV.dtype), v_BxSxHxV)

  impl = None if implementation == 'fused' else implementation
  k_dim, v_dim = q_BxLxHxK.shape[-1], v_BxSxHxV.shape[-1]
  if v_dim < k_dim:  # concatenated-PE queries/keys are wider than values: pad, then slice
    v_BxSxHxV = jnp.pad(v_BxSxHxV, [(0, 0)] * 3 + [(0, k_dim - v_dim)])
  b, l, h = q_BxLxHxK.shape[:3]
  s = k_BxSxHxK.shape[1]
  if bias is not None:
    bias = jnp.broadcast_to(bias, (bias.shape[0] if bias.ndim == 4 else 1, h, l, s))
    bias = bias.astype(q_BxLxHxK.dtype)
  if mask is not None:
    mask = jnp.broadcast_to(mask, (mask.shape[0] if mask.ndim == 4 else 1, h, l, s))
  out = jax.nn.dot_product_attention(
      q_BxLxHxK, k_BxSxHxK, v_BxSxHxV, bias=bias, mask=mask, scale=scale,
      implementation=impl)
  return out[..., :v_dim]
