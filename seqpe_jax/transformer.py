"""The pre-LN transformer block shared by the SeqPE encoder, the GPT and the ViT."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import layers
from seqpe_jax.injection import AttentionHook, KVCache, PEAttention, PEContext

Dtype = Any


class Block(nn.Module):
  """Pre-LN block: x + DropPath(Drop(PEAttn(LN(x), ctx))); x + DropPath(Drop(Mlp(LN(x)))).

  `drop_path_rate` is stochastic depth (timm's DropPath): each sample's whole residual
  branch is dropped with that probability (and the kept ones scaled by 1/(1-rate)).
  """

  num_heads: int
  injection: AttentionHook = AttentionHook()
  causal: bool = True
  dropout_rate: float = 0.0
  attn_dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  ln_eps: float = 1e-5
  mlp_ratio: int = 4
  gelu_approximate: bool = True  # False: exact erf GELU in the MLP
  attention_impl: str = 'reference'
  out_init_std: float = 0.02
  last_query_only: bool = False  # compute only the last position (the SeqPE encoder's CLS)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxLxC: jax.Array, ctx: PEContext, mask_BxLxS: jax.Array | None,
               deterministic: bool, cache: KVCache | None = None
               ) -> jax.Array | tuple[jax.Array, KVCache]:
    """`[B, L, C]`; with a decoding `cache` (see `PEAttention`), `(x, updated cache)`."""
    ln = functools.partial(layers.LayerNorm, eps=self.ln_eps, dtype=self.dtype,
                           param_dtype=self.param_dtype)
    attn = PEAttention(
        self.num_heads, injection=self.injection, causal=self.causal,
        dropout_rate=self.attn_dropout_rate, implementation=self.attention_impl,
        out_init_std=self.out_init_std, last_query_only=self.last_query_only, dtype=self.dtype,
        param_dtype=self.param_dtype, name='attn')
    if cache is None:
      h = attn(ln(name='ln_1')(x_BxLxC), ctx, mask_BxLxS, deterministic)
    else:
      h, cache = attn(ln(name='ln_1')(x_BxLxC), ctx, mask_BxLxS, deterministic, cache=cache)
    if self.last_query_only:
      x_BxLxC = x_BxLxC[:, -1:]
    # Stochastic depth: one keep/drop per sample, broadcast over positions and channels.
    # Named, so the residual dropouts keep their names (and so their random streams).
    drop_path = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2), name='drop_path')
    x_BxLxC = x_BxLxC + drop_path(nn.Dropout(self.dropout_rate)(h, deterministic), deterministic)
    x_BxLxC = layers.constrain(x_BxLxC, ('act_batch', 'act_len', 'act_embed'))
    h = layers.Mlp(self.mlp_ratio * x_BxLxC.shape[-1], gelu_approximate=self.gelu_approximate,
                   out_init_std=self.out_init_std,
                   dtype=self.dtype, param_dtype=self.param_dtype,
                   name='mlp')(ln(name='ln_2')(x_BxLxC))
    x_BxLxC = x_BxLxC + drop_path(nn.Dropout(self.dropout_rate)(h, deterministic), deterministic)
    x_BxLxC = layers.constrain(x_BxLxC, ('act_batch', 'act_len', 'act_embed'))
    return x_BxLxC if cache is None else (x_BxLxC, cache)


def block_class(remat: bool) -> type[Block]:
  """`Block`, or its rematerialised version (activations recomputed in the backward pass)."""
  # `deterministic` (argument 4, counting self) is a Python bool: static under remat.
  return nn.remat(Block, static_argnums=(4,)) if remat else Block


COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


def dtype_of(name: str) -> Any:
  """'float32' | 'bfloat16' | 'float16' → jnp dtype."""
  if name not in COMPUTE_DTYPES:  # jnp.dtype would also take e.g. 'int8'
    raise ValueError(f'unknown dtype {name!r}; use float32, bfloat16 or float16')
  return jnp.dtype(name)
