"""GPT-2-style decoder LM taking explicit integer positions and any registry PE.

`GPT.extend` + `init_cache` run it incrementally with per-layer KV caches (used by
`seqpe_jax.generate`); the training/evaluation call `GPT.__call__` is unchanged.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import layers
from seqpe_jax.injection import KVCache, tile_to_batch
from seqpe_jax.posenc import PEConfig, PEOutput, PositionEncoder
from seqpe_jax.transformer import block_class, dtype_of


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Decoder hyper-parameters (presets in `GPT_PRESETS`)."""

  vocab_size: int = 256
  num_layers: int = 3
  width: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  gelu_approximate: bool = True  # MLP gelu: tanh approximation (GPT-2) or exact erf (False)
  dropout: float = 0.0        # embedding / residual dropout
  attn_dropout: float = 0.0   # attention-probability dropout (reference attention only)
  tie_embeddings: bool = True
  ln_eps: float = 1e-5
  dtype: str = 'float32'      # compute dtype; parameters stay float32
  attention_impl: str = 'reference'  # 'reference' | 'fused' | 'xla' | 'cudnn'
  remat: bool = False


GPT_PRESETS = {
    'cpu': dict(num_layers=3, width=128, num_heads=4),
    'gpt2_small': dict(num_layers=12, width=768, num_heads=12, dropout=0.1, attn_dropout=0.1),
}


class GPT(nn.Module):
  """Causal LM: `logits = GPT(tokens_BxL, positions_PxL)` (P divides B; P=1 shares positions)."""

  cfg: GPTConfig
  pe: PEConfig
  train_len: int = 512
  official_cache_bias: bool = False  # cached decoding reproduces the official flaw (`extend`)

  # Parameter paths start with `posenc.MODULE_NAME` (the optimizer groups depend on it).

  def setup(self):
    c = self.cfg
    dtype = dtype_of(c.dtype)
    self.tok_embed = layers.Embed(c.vocab_size, c.width, dtype=dtype)
    self.posenc = PositionEncoder(self.pe, c.width, c.num_heads, data_dim=1,
                                  train_grid=(self.train_len,), causal=True, dtype=dtype)
    block = block_class(c.remat)
    self.injection = injection = dataclasses.replace(
        self.pe.injection(), official_cache_bias=self.official_cache_bias)
    self.blocks = [
        block(c.num_heads, injection=injection, causal=True, dropout_rate=c.dropout,
              attn_dropout_rate=c.attn_dropout, ln_eps=c.ln_eps, mlp_ratio=c.mlp_ratio,
              gelu_approximate=c.gelu_approximate,
              attention_impl=c.attention_impl,
              out_init_std=0.02 / (2 * c.num_layers) ** 0.5,  # GPT-2 residual scaling
              dtype=dtype, name=f'block_{i}')
        for i in range(c.num_layers)]
    self.ln_f = layers.LayerNorm(c.ln_eps, dtype=dtype)
    self.drop = nn.Dropout(c.dropout)
    if not c.tie_embeddings:
      self.head = nn.Dense(c.vocab_size, use_bias=False, dtype=dtype,
                           kernel_init=layers.partitioned(layers.normal(0.02), ('embed', 'vocab')))

  def encode_positions(self, positions_PxL: jax.Array,
                       aux_positions_Mxn: jax.Array | None = None, *, mode: str = 'extend',
                       deterministic: bool = True) -> PEOutput:
    """The position encoding alone (cache it per evaluation length)."""
    return self.posenc(positions_PxL[..., None], aux_positions_Mxn=aux_positions_Mxn,
                       mode=mode, deterministic=deterministic)

  def __call__(self, tokens_BxL: jax.Array, positions_PxL: jax.Array | None = None, *,
               pe: PEOutput | None = None, aux_positions_Mxn: jax.Array | None = None,
               mask_BxLxL: jax.Array | None = None, embeddings_BxLxC: jax.Array | None = None,
               deterministic: bool = True) -> tuple[jax.Array, PEOutput]:
    """Returns `(logits_BxLxV float32, pe)`.

    Args:
      tokens_BxL: token ids.
      positions_PxL: int positions; None means `0..L-1` for every row.
      pe: a precomputed `encode_positions` result (skips the encoder).
      aux_positions_Mxn: SeqPE auxiliary positions, embedded in the same call.
      mask_BxLxL: optional extra attention mask (padding / packed segments).
      embeddings_BxLxC: input embeddings used instead of `tok_embed(tokens)`
        (soft prompts; gradient probes in the causality test).
    """
    l = tokens_BxL.shape[1]
    if pe is None:
      if positions_PxL is None:
        positions_PxL = jnp.arange(l, dtype=jnp.int32)[None]
      pe = self.encode_positions(positions_PxL, aux_positions_Mxn, deterministic=deterministic)
    x_BxLxC = self.tok_embed(tokens_BxL) if embeddings_BxLxC is None else embeddings_BxLxC
    x_BxLxC = self._embed(x_BxLxC, pe, deterministic)
    c = self.cfg
    ctx = self.injection.prepare(  # work the layers share (SeqPE attn_scalar's bias)
        pe.ctx, num_heads=c.num_heads, head_dim=c.width // c.num_heads,
        materialized=layers.materializes_logits(c.attention_impl,
                                                c.attn_dropout > 0 and not deterministic))
    for block in self.blocks:
      x_BxLxC = block(x_BxLxC, ctx, mask_BxLxL, deterministic)
    return self._logits(x_BxLxC), pe

  def extend(self, tokens_BxL: jax.Array, pe: PEOutput, caches: tuple[KVCache, ...],
             key_pe: PEOutput | None = None) -> tuple[jax.Array, tuple[KVCache, ...]]:
    """Cached decoding: logits of L new tokens after the cached ones, and the updated caches.

    `pe` holds the PE rows of the new tokens' positions only (slice them from one
    `encode_positions` of the whole generation length); `caches` has one `KVCache`
    per layer (`init_cache`). `key_pe`, the PE of every cache slot's position (that whole
    encoding), lets the hook share work across layers (`AttentionHook.prepare`: SeqPE's
    attn_scalar bias, for caches made with `init_cache(..., shared_bias=True)`).
    Deterministic (no dropout).
    """
    c = self.cfg
    dh = c.width // c.num_heads
    shared = key_pe is not None and self.injection.shares_bias(c.attention_impl == 'reference')
    want = dh if shared else self.injection.key_dim(dh)
    if caches[0].k.shape[-1] != want:
      raise ValueError(f'the caches hold keys of width {caches[0].k.shape[-1]}, this call needs '
                       f'{want}: make them with init_cache(..., shared_bias={shared}) '
                       '(shared_bias=True goes with key_pe)')
    x_BxLxC = self._embed(self.tok_embed(tokens_BxL), pe, True)
    ctx = pe.ctx
    if key_pe is not None:
      ctx = self.injection.prepare(ctx, num_heads=c.num_heads, head_dim=dh,
                                   materialized=c.attention_impl == 'reference',
                                   key_ctx=key_pe.ctx, num_old=caches[0].length)
    new = []
    for block, cache in zip(self.blocks, caches):
      x_BxLxC, cache = block(x_BxLxC, ctx, None, True, cache=cache)
      new.append(cache)
    return self._logits(x_BxLxC), tuple(new)

  def _embed(self, x_BxLxC: jax.Array, pe: PEOutput, deterministic: bool) -> jax.Array:
    if pe.ctx.input_embed is not None:
      b = x_BxLxC.shape[0]
      x_BxLxC = x_BxLxC + tile_to_batch(pe.ctx.input_embed, b).astype(x_BxLxC.dtype)
    return layers.constrain(self.drop(x_BxLxC, deterministic),
                            ('act_batch', 'act_len', 'act_embed'))

  def _logits(self, x_BxLxC: jax.Array) -> jax.Array:
    x_BxLxC = self.ln_f(x_BxLxC)
    if self.cfg.tie_embeddings:
      logits_BxLxV = self.tok_embed.attend(x_BxLxC)
    else:
      logits_BxLxV = self.head(x_BxLxC)
    return layers.constrain(logits_BxLxV.astype(jnp.float32),
                            ('act_batch', 'act_len', 'act_vocab'))


def init_cache(model: GPT, batch: int, max_len: int, shared_bias: bool = False
               ) -> tuple[KVCache, ...]:
  """Empty per-layer decoding caches of `max_len` slots for `GPT.extend`.

  `shared_bias`: `extend` will get `key_pe` (the PE of all `max_len` slots), so a hook that
  shares its bias across layers caches plain keys.
  """
  c = model.cfg
  dh = c.width // c.num_heads
  hook = model.pe.injection()
  # Keys as attention sees them (attn_scalar without a shared bias: [k; PE_k]).
  k_dim = dh if shared_bias and hook.shares_bias(c.attention_impl == 'reference') else (
      hook.key_dim(dh))
  return tuple(KVCache.empty(batch, max_len, c.num_heads, k_dim, dh, dtype_of(c.dtype))
               for _ in range(c.num_layers))
