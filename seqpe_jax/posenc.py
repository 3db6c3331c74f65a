"""The position-encoding registry: SeqPE and every baseline behind one module.

`PositionEncoder(cfg=PEConfig(type=...))` maps integer positions `[P, L, d]`
(P position sets; P divides the batch) to a `PEContext` that the backbones
consume, plus, for SeqPE, the raw embeddings of the main positions and of any
auxiliary positions (contrastive pivots/candidates, OOD students) computed in
the same single encoder call.

| type       | hook                          | axes |
|------------|-------------------------------|------|
| seqpe      | input_add / attn_add / attn_mul / attn_scalar | any n |
| learned    | input_add (table; linear/bicubic resize to a longer length or grid) | 1, 2 |
| sinusoidal | input_add                      | 1 |
| sincos2d   | input_add                      | 2 |
| rope       | rotate q, k (theta, PI/NTK/YaRN scaling) | 1 |
| rope2d     | axial rotation of q, k         | 2 |
| rope_mixed | learnable per-layer/per-head 2-D frequencies | 2 |
| alibi      | -m_h (i - j) logit bias        | 1 |
| nope       | nothing                        | any |
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import baselines, layers
from seqpe_jax.errors import ConfigError
from seqpe_jax.injection import Injection, PEContext
from seqpe_jax.seqpe import SeqPEEncoder

Dtype = Any

PE_TYPES = ('seqpe', 'learned', 'sinusoidal', 'sincos2d', 'rope', 'rope2d', 'rope_mixed',
            'alibi', 'nope')
LM_PE_TYPES = ('seqpe', 'learned', 'sinusoidal', 'rope', 'alibi', 'nope')
VIT_PE_TYPES = ('seqpe', 'learned', 'sincos2d', 'rope2d', 'rope_mixed', 'nope')
SEQPE_APPLY = ('input_add', 'attn_add', 'attn_mul', 'attn_scalar')
_AXES = {'sinusoidal': (1,), 'sincos2d': (2,), 'rope': (1,), 'rope2d': (2,),
         'rope_mixed': (2,), 'alibi': (1,), 'learned': (1, 2)}


@dataclasses.dataclass(frozen=True)
class PEConfig:
  """Static position-encoding settings (built from `config.pe` by `from_config`)."""

  type: str = 'seqpe'
  # SeqPE encoder and how it is injected.
  apply: str = 'attn_scalar'
  pe_qk: str = 'single'
  multi_head: bool = True
  scalar_scale: float = 1.0
  scalar_form: str = 'concat'
  max_digits: int = 5
  width: int = 64
  heads: int = 2
  layers: int = 2
  out_dim: int | None = None   # None: model width (multi-head attn_*, input_add) or head dim
  causal: bool = True
  dropout: float = 0.1
  attn_dropout: float = 0.0
  final_ln: bool = True
  temperature: float = 1.0
  mask_padding: bool = False
  # Baselines.
  learned_resize: str = 'linear'   # 'linear' | 'bicubic' (PyTorch's) | 'bicubic_jax' | 'none'
  sinusoidal_base: float = 10000.0
  sinusoidal_scale: float | None = None  # None: 1/sqrt(width) (see README)
  rope_theta: float = 10000.0
  rope_scaling: str = 'none'      # 'none' | 'linear' | 'ntk' | 'yarn'
  rope_factor: float = 1.0
  rope_original_length: int = 2048
  rope_mixed_theta: float = 10.0
  alibi_before_scale: bool = False

  @classmethod
  def from_config(cls, cfg) -> 'PEConfig':
    """Builds from an ml_collections `config.pe` (nested seqpe/rope/... groups)."""
    flat: dict[str, Any] = {'type': cfg.type}
    for group, prefix in (('seqpe', ''), ('learned', 'learned_'), ('sinusoidal', 'sinusoidal_'),
                          ('rope', 'rope_'), ('alibi', 'alibi_'), ('rope_mixed', 'rope_mixed_')):
      sub = cfg.get(group)
      if sub is None:
        continue
      for k, v in sub.items():
        flat[k if prefix == '' or k.startswith(prefix) else prefix + k] = v
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(flat) - names)
    if unknown:
      raise ConfigError(f'unknown position-encoding option(s): {", ".join(unknown)}')
    return cls(**flat)

  def validate(self, data_dim: int, allowed: tuple[str, ...] = PE_TYPES) -> None:
    if self.type not in allowed:
      raise ConfigError(f'unknown pe.type {self.type!r}; choose one of {", ".join(allowed)}')
    if self.type in _AXES and data_dim not in _AXES[self.type]:
      raise ConfigError(f'pe.type={self.type} supports {_AXES[self.type]}-D positions, '
                        f'not {data_dim}-D')
    if self.type == 'seqpe':
      if self.apply not in SEQPE_APPLY:
        raise ConfigError(f'unknown pe.seqpe.apply {self.apply!r}; one of {SEQPE_APPLY}')
      if self.width % self.heads:
        raise ConfigError(f'pe.seqpe.width={self.width} is not divisible by '
                          f'pe.seqpe.heads={self.heads}')

  def injection(self) -> Injection:
    if self.type == 'seqpe':
      method = 'none' if self.apply == 'input_add' else self.apply
    else:
      method = {'rope': 'rope', 'rope2d': 'rope', 'rope_mixed': 'rope_mixed',
                'alibi': 'alibi'}.get(self.type, 'none')
    mult = 1.0
    if self.type == 'rope' and self.rope_scaling == 'yarn':
      mult = baselines.yarn_mscale(self.rope_factor) ** 2
    return Injection(method=method, pe_qk=self.pe_qk, multi_head=self.multi_head,
                     scalar_scale=self.scalar_scale, scalar_form=self.scalar_form,
                     alibi_before_scale=self.alibi_before_scale,
                     rope_mixed_theta=self.rope_mixed_theta, logit_mult=mult)

  def seqpe_out_dim(self, model_width: int, num_heads: int) -> int:
    if self.out_dim:
      return self.out_dim
    if self.apply == 'input_add' or self.multi_head:
      return model_width
    return model_width // num_heads


@flax.struct.dataclass
class PEOutput:
  ctx: PEContext
  main_embed: jax.Array | None = None  # [P, L, D] SeqPE of the main positions (OOD teacher)
  aux_embed: jax.Array | None = None   # [M, D] SeqPE of the auxiliary positions


class PositionEncoder(nn.Module):
  """Builds the `PEContext` for a backbone from integer positions.

  Attributes:
    cfg: the position-encoding settings.
    width, num_heads: the backbone's model width and heads.
    data_dim: position axes (1 LM, 2 ViT).
    train_grid: the training length `(L,)` or patch grid `(h, w)`; sizes the
      learned table and is the source grid of `mode='interpolate'`.
    num_prefix: tokens before the positions (the ViT CLS: 1); they get a learned
      PE vector for embedding-type PEs and no rotation for RoPE types.
  """

  cfg: PEConfig
  width: int
  num_heads: int
  data_dim: int = 1
  train_grid: tuple[int, ...] = (512,)
  num_prefix: int = 0
  causal: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.cfg
    if cfg.type == 'seqpe':
      self.out_dim = cfg.seqpe_out_dim(self.width, self.num_heads)
      self.seqpe_encoder = SeqPEEncoder(
          data_dim=self.data_dim, max_digits=cfg.max_digits, width=cfg.width,
          num_heads=cfg.heads, num_layers=cfg.layers, out_dim=self.out_dim, causal=cfg.causal,
          dropout_rate=cfg.dropout, attn_dropout_rate=cfg.attn_dropout, final_ln=cfg.final_ln,
          temperature=cfg.temperature, mask_padding=cfg.mask_padding, dtype=self.dtype,
          param_dtype=self.param_dtype)
      if cfg.apply != 'input_add' and cfg.pe_qk == 'single':
        self.pe_qk = nn.Dense(
            2 * self.out_dim, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=layers.partitioned(layers.normal(0.02), ('pe_out', 'pe_qk')),
            bias_init=layers.partitioned(nn.initializers.zeros, ('pe_qk',)))
    if cfg.type == 'learned':
      self.table = self.param(
          'table', layers.partitioned(layers.normal(0.02), (None,) * self.data_dim + ('embed',)),
          (*self.train_grid, self.width), self.param_dtype)
    if self.num_prefix and (cfg.type in ('seqpe', 'learned')):
      d = self.out_dim if cfg.type == 'seqpe' else self.width
      self.prefix_pos = self.param(
          'prefix_pos', layers.partitioned(layers.normal(0.02), (None, 'embed')),
          (self.num_prefix, d), self.param_dtype)

  def __call__(self, positions_PxLxd: jax.Array, *, grid_shape: tuple[int, ...] | None = None,
               aux_positions_Mxd: jax.Array | None = None, mode: str = 'extend',
               deterministic: bool = True) -> PEOutput:
    """Encodes positions.

    Args:
      positions_PxLxd: int positions (row-major grid for the ViT, no prefix).
      grid_shape: static grid of the positions, `(L,)` or `(h, w)`; defaults
        to `(L,)`. Needed for learned-table resizing and 'interpolate' mode.
      aux_positions_Mxd: extra positions embedded in the same SeqPE call.
      mode: 'extend' (encode the given positions) or 'interpolate' (encode
        the training grid and resize to `grid_shape`; SeqPE only; learned
        tables always resize).
      deterministic: disables SeqPE dropout.
    """
    cfg = self.cfg
    p, l, d = positions_PxLxd.shape
    grid_shape = tuple(grid_shape or (l,))
    t = cfg.type
    ctx = PEContext()
    main, aux = None, None
    if t == 'seqpe':
      main, aux = self._seqpe(positions_PxLxd, grid_shape, aux_positions_Mxd, mode, deterministic)
      e = self._prepend(main, learned=True)
      if cfg.apply == 'input_add':
        ctx = ctx.replace(input_embed=e)
      elif cfg.pe_qk == 'single':
        q_pe, k_pe = jnp.split(self.pe_qk(e), 2, axis=-1)
        ctx = ctx.replace(q_pe=q_pe, k_pe=k_pe)
      elif cfg.pe_qk == 'multi':
        ctx = ctx.replace(embed=e)
      else:  # no projection: PE_q = PE_k = E (or E already holds both halves)
        hp = self.num_heads if cfg.multi_head else 1
        if e.shape[-1] == hp * (self.width // self.num_heads):
          ctx = ctx.replace(q_pe=e, k_pe=e)
        else:
          q_pe, k_pe = jnp.split(e, 2, axis=-1)
          ctx = ctx.replace(q_pe=q_pe, k_pe=k_pe)
    elif t == 'learned':
      ctx = ctx.replace(input_embed=self._prepend(self._learned(positions_PxLxd, grid_shape), True))
    elif t == 'sinusoidal':
      scale = cfg.sinusoidal_scale or 1.0 / math.sqrt(self.width)
      pe = baselines.sinusoidal_1d(positions_PxLxd[..., 0], self.width, cfg.sinusoidal_base)
      ctx = ctx.replace(input_embed=self._prepend(scale * pe))
    elif t == 'sincos2d':
      scale = cfg.sinusoidal_scale or 1.0
      ctx = ctx.replace(input_embed=self._prepend(scale * baselines.sincos_2d(positions_PxLxd, self.width)))
    elif t == 'rope':
      inv = baselines.rope_inv_freq(self.width // self.num_heads, cfg.rope_theta,
                                    cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_length)
      ctx = ctx.replace(angles=self._prepend(baselines.rope_angles(positions_PxLxd[..., 0], inv)))
    elif t == 'rope2d':
      ang = baselines.axial_rope_angles(positions_PxLxd, self.width // self.num_heads, cfg.rope_theta)
      ctx = ctx.replace(angles=self._prepend(ang))
    elif t == 'rope_mixed':
      mask = jnp.ones((p, l), bool)
      ctx = ctx.replace(positions=self._prepend(positions_PxLxd), rope_mask=self._prepend(mask))
    elif t == 'alibi':
      ctx = ctx.replace(positions=positions_PxLxd)
    return PEOutput(ctx=ctx, main_embed=main, aux_embed=aux)

  def _prepend(self, x_PxLx: jax.Array, learned: bool = False) -> jax.Array:
    """Adds the prefix rows: the learned prefix vectors, or zeros / False."""
    if not self.num_prefix:
      return x_PxLx
    p = x_PxLx.shape[0]
    if learned:
      pre = jnp.broadcast_to(jnp.asarray(self.prefix_pos, x_PxLx.dtype),
                             (p, self.num_prefix, x_PxLx.shape[-1]))
    else:
      pre = jnp.zeros((p, self.num_prefix, *x_PxLx.shape[2:]), x_PxLx.dtype)
    return jnp.concatenate([pre, x_PxLx], axis=1)

  def _seqpe(self, positions_PxLxd, grid_shape, aux_Mxd, mode, deterministic):
    p, l, d = positions_PxLxd.shape
    interpolate = mode == 'interpolate' and grid_shape != tuple(self.train_grid)
    if interpolate:  # encode the training grid, resize the embedding grid afterwards
      src = _grid(self.train_grid)[None]
      positions_PxLxd = jnp.broadcast_to(src, (p, *src.shape[1:]))
    flat = positions_PxLxd.reshape(-1, d)
    n_main = flat.shape[0]
    if aux_Mxd is not None:
      flat = jnp.concatenate([flat, aux_Mxd.astype(flat.dtype)], axis=0)
    e = self.seqpe_encoder(flat, deterministic=deterministic)  # the one encoder call
    main = e[:n_main].reshape(p, -1, e.shape[-1])
    aux = e[n_main:] if aux_Mxd is not None else None
    if interpolate:
      main = jax.vmap(lambda m: _resize_flat(m, self.train_grid, grid_shape, 'bicubic'))(main)
    return main, aux

  def _learned(self, positions_PxLxd, grid_shape):
    table = self.table
    if tuple(grid_shape) != tuple(self.train_grid):
      if self.data_dim == 1 and grid_shape[0] < self.train_grid[0]:
        table = table[: grid_shape[0]]  # a shorter length uses the first rows as they are
      elif self.cfg.learned_resize == 'none':
        raise ConfigError(
            f'learned position table has {self.train_grid} entries but {grid_shape} were '
            'requested; set pe.learned.resize=linear or bicubic to interpolate it')
      elif self.data_dim == 1:
        table = baselines.resize_table_1d(table, grid_shape[0], self.cfg.learned_resize)
      else:
        table = baselines.resize_grid(table, grid_shape, self.cfg.learned_resize)
    idx = tuple(jnp.clip(positions_PxLxd[..., a], 0, table.shape[a] - 1)
                for a in range(self.data_dim))
    return jnp.asarray(table, self.dtype)[idx]


def _grid(shape: tuple[int, ...]) -> jax.Array:
  axes = jnp.meshgrid(*[jnp.arange(s, dtype=jnp.int32) for s in shape], indexing='ij')
  return jnp.stack([a.reshape(-1) for a in axes], axis=-1)


def _resize_flat(e_NxD: jax.Array, src: tuple[int, ...], dst: tuple[int, ...], method: str):
  grid = e_NxD.reshape(*src, e_NxD.shape[-1])
  if len(src) == 1:
    return baselines.resize_table_1d(grid, dst[0], 'linear')
  return baselines.resize_grid(grid, dst, method).reshape(-1, e_NxD.shape[-1])
