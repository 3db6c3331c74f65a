"""Vision Transformer taking patch coordinates `[P, N, 2]` and any 2-D registry PE."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import layers
from seqpe_jax.errors import ConfigError
from seqpe_jax.injection import tile_to_batch
from seqpe_jax.posenc import PEConfig, PEOutput, PositionEncoder
from seqpe_jax.positions import grid_2d
from seqpe_jax.transformer import block_class, dtype_of


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """ViT hyper-parameters (presets in `VIT_PRESETS`)."""

  num_classes: int = 10
  patch_size: int = 4
  num_layers: int = 4
  width: int = 128
  num_heads: int = 4
  mlp_ratio: int = 4
  gelu_approximate: bool = True  # MLP gelu: tanh approximation (GPT-2) or exact erf (False)
  dropout: float = 0.0
  attn_dropout: float = 0.0
  drop_path: float = 0.0      # stochastic depth, rising linearly to this rate at the last block
  ln_eps: float = 1e-6
  dtype: str = 'float32'
  attention_impl: str = 'reference'
  remat: bool = False


VIT_PRESETS = {
    'cpu': dict(patch_size=4, num_layers=4, width=128, num_heads=4),
    'vit_s16': dict(patch_size=16, num_layers=12, width=384, num_heads=6),
    'vit_b16': dict(patch_size=16, num_layers=12, width=768, num_heads=12),
}


def patch_grid(image_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
  """Patch grid `(h, w)` of an image; ConfigError unless the patch size divides it."""
  h, w = image_hw
  if h % patch_size or w % patch_size:
    raise ConfigError(f'image size {h}x{w} is not divisible by the patch size {patch_size}')
  return h // patch_size, w // patch_size


class ViT(nn.Module):
  """Classifier: `logits = ViT(images_Bxhxwxc, positions_PxNx2)`; CLS token first."""

  cfg: ViTConfig
  pe: PEConfig
  train_image_size: int = 32

  def setup(self):
    c = self.cfg
    dtype = dtype_of(c.dtype)
    g = patch_grid((self.train_image_size,) * 2, c.patch_size)
    self.patch_embed = nn.Conv(
        c.width, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
        padding='VALID', dtype=dtype,
        kernel_init=layers.partitioned(layers.normal(0.02), (None, None, None, 'embed')),
        bias_init=layers.partitioned(nn.initializers.zeros, ('embed',)))
    self.cls_token = self.param('cls_token', layers.partitioned(layers.normal(0.02), ('embed',)),
                                (c.width,))
    self.posenc = PositionEncoder(self.pe, c.width, c.num_heads, data_dim=2, train_grid=g,
                                  num_prefix=1, causal=False, dtype=dtype)
    block = block_class(c.remat)
    # timm: per-block rates linspace(0, drop_path, depth).
    rates = [c.drop_path * i / max(c.num_layers - 1, 1) for i in range(c.num_layers)]
    self.injection = self.pe.injection()
    self.blocks = [
        block(c.num_heads, injection=self.injection, causal=False, dropout_rate=c.dropout,
              attn_dropout_rate=c.attn_dropout, drop_path_rate=rates[i], ln_eps=c.ln_eps,
              mlp_ratio=c.mlp_ratio, gelu_approximate=c.gelu_approximate,
              attention_impl=c.attention_impl, dtype=dtype, name=f'block_{i}')
        for i in range(c.num_layers)]
    self.ln_f = layers.LayerNorm(c.ln_eps, dtype=dtype)
    self.head = nn.Dense(c.num_classes, dtype=dtype,
                         kernel_init=layers.partitioned(nn.initializers.zeros, ('embed', None)),
                         bias_init=layers.partitioned(nn.initializers.zeros, (None,)))
    self.drop = nn.Dropout(c.dropout)

  def encode_positions(self, positions_PxNx2: jax.Array, grid_shape: tuple[int, int],
                       aux_positions_Mxn: jax.Array | None = None, *, mode: str = 'extend',
                       deterministic: bool = True) -> PEOutput:
    """The position encoding alone, CLS row included (cache it per image size)."""
    return self.posenc(positions_PxNx2, grid_shape=grid_shape, aux_positions_Mxn=aux_positions_Mxn,
                       mode=mode, deterministic=deterministic)

  def __call__(self, images_Bxhxwxc: jax.Array, positions_PxNx2: jax.Array | None = None, *,
               pe: PEOutput | None = None, aux_positions_Mxn: jax.Array | None = None,
               mode: str = 'extend', deterministic: bool = True) -> tuple[jax.Array, PEOutput]:
    """Returns `(logits_BxY float32, pe)`; positions default to the image's patch grid."""
    b, c = images_Bxhxwxc.shape[0], self.cfg
    gh, gw = patch_grid(images_Bxhxwxc.shape[1:3], c.patch_size)
    if pe is None:
      if positions_PxNx2 is None:
        positions_PxNx2 = grid_2d(gh, gw)[None]
      pe = self.encode_positions(positions_PxNx2, (gh, gw), aux_positions_Mxn, mode=mode,
                                 deterministic=deterministic)
    x_BxhxwxC = self.patch_embed(images_Bxhxwxc.astype(self.patch_embed.dtype))
    x_BxNxC = x_BxhxwxC.reshape(b, gh * gw, -1)
    cls = jnp.broadcast_to(jnp.asarray(self.cls_token, x_BxNxC.dtype), (b, 1, x_BxNxC.shape[-1]))
    x_BxNxC = jnp.concatenate([cls, x_BxNxC], axis=1)
    if pe.ctx.input_embed is not None:
      x_BxNxC = x_BxNxC + tile_to_batch(pe.ctx.input_embed, b).astype(x_BxNxC.dtype)
    x_BxNxC = layers.constrain(self.drop(x_BxNxC, deterministic),
                               ('act_batch', 'act_len', 'act_embed'))
    ctx = self.injection.prepare(  # work the layers share
        pe.ctx, num_heads=c.num_heads, head_dim=c.width // c.num_heads,
        materialized=layers.materializes_logits(c.attention_impl,
                                                c.attn_dropout > 0 and not deterministic))
    for block in self.blocks:
      x_BxNxC = block(x_BxNxC, ctx, None, deterministic)
    x_BxC = self.ln_f(x_BxNxC[:, 0])
    return self.head(x_BxC).astype(jnp.float32), pe
