"""The position-encoding registry: each PE type is one class, registered by name.

`PositionEncoder(cfg=PEConfig(type=...))` maps integer positions `[P, L, n]`
(P position sets; P divides the batch; n position axes) to a `PEContext` that
the backbones consume, plus, for SeqPE, the raw embeddings of the main
positions and of any auxiliary positions (contrastive pivots/candidates, OOD
students) computed in the same single encoder call. Shape letters: see
`seqpe_jax/__init__.py`.

A PE type (`PEType` subclass, `@register('name')`) declares, in one place:
its allowed position axes (`dims`), its options (`Options`, a dataclass whose
fields and defaults are the `config.pe.<name>` group of `configs/common.pe_config`),
the parameters and `PEContext` it computes (`encode`, inside the
`PositionEncoder`), its attention hook (`hook`: an `injection.AttentionHook`),
and which of its submodules form their own optimizer group (`param_groups`).

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
| fire       | learned f(psi(i-j)/psi(max(L, i))) logit bias (`relbias.py`) | 1 |
| kerple     | -r1 log(1 + r2 (i - j)) logit bias (`relbias.py`) | 1 |
| nope       | nothing                        | any |
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from seqpe_jax import baselines, layers
from seqpe_jax.errors import ConfigError
from seqpe_jax.injection import (SCALAR_FORMS, AlibiHook, AttentionHook, PEContext, RopeHook,
                                 RopeMixedHook, SeqPEHook)
from seqpe_jax.seqpe import SeqPEEncoder

Dtype = Any

# The attribute name the backbones give their `PositionEncoder` (parameter paths start with it).
MODULE_NAME = 'posenc'
SEQPE_GROUP = 'seqpe_encoder'  # optimizer group of the SeqPE encoder's parameters
SEQPE_APPLY = ('input_add', 'attn_add', 'attn_mul', 'attn_scalar')
SEQPE_QK = ('single', 'multi', 'none')

_REGISTRY: dict[str, type['PEType']] = {}


def register(name: str) -> Callable[[type['PEType']], type['PEType']]:
  """Class decorator: registers a `PEType` under `config.pe.type=name`."""
  def wrap(cls: type['PEType']) -> type['PEType']:
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f'position encoding {name!r} is already registered')
    cls.name = name
    _REGISTRY[name] = cls
    return cls
  return wrap


def unregister(name: str) -> None:
  """Removes a registered type (tests that register a toy PE clean up with it)."""
  _REGISTRY.pop(name, None)


def get(name: str) -> type['PEType']:
  """The registered class of `name` (ConfigError if unknown)."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ConfigError(f'unknown pe.type {name!r}; choose one of {", ".join(_REGISTRY)}') from None


def names(data_dim: int | None = None) -> tuple[str, ...]:
  """Registered type names, in registration order; those supporting `data_dim` axes if given."""
  return tuple(n for n, c in _REGISTRY.items()
               if data_dim is None or c.dims is None or data_dim in c.dims)


def registered() -> dict[str, type['PEType']]:
  return dict(_REGISTRY)


@dataclasses.dataclass(frozen=True)
class NoOptions:
  """A PE type without options (no `config.pe.<name>` group)."""


@dataclasses.dataclass(frozen=True)
class PEConfig:
  """Static position-encoding settings (built from `config.pe` by `from_config`).

  The built-in types keep their options as the flat fields below (`rope_theta`,
  ...; their classes name the prefix in `flat_prefix`); any other registered type
  receives its `Options` instance in `options` (`PEType.options_of` reads either).
  """

  type: str = 'seqpe'
  # SeqPE encoder and how it is injected.
  apply: str = 'attn_scalar'
  pe_qk: str = 'single'
  multi_head: bool = True
  scalar_scale: float = 1.0
  scalar_form: str = 'auto'
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
  share_prefixes: bool = True
  # Set by the task, not the config: training positions lie in [0, bound) per axis
  # (`aux.max_position`); sizes SeqPE's prefix tree (0: no tree).
  position_bound: int = 0
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
  # Options of a registered type without flat fields (its `Options` instance; None: defaults).
  options: Any = None

  @classmethod
  def from_config(cls, cfg) -> 'PEConfig':
    """Builds from an ml_collections `config.pe` (one option group per registered type)."""
    flat: dict[str, Any] = {'type': cfg.type}
    for name, pe_cls in _REGISTRY.items():
      sub = cfg.get(name)
      if sub is None or pe_cls.Options is NoOptions:
        continue
      if pe_cls.flat_prefix is not None:
        prefix = pe_cls.flat_prefix
        for k, v in sub.items():
          flat[k if prefix == '' or k.startswith(prefix) else prefix + k] = v
        continue
      known = {f.name for f in dataclasses.fields(pe_cls.Options)}
      unknown = sorted(f'{name}.{k}' for k in set(sub) - known)
      if unknown:
        raise ConfigError(f'unknown position-encoding option(s): {", ".join(unknown)}')
      if name == cfg.type:
        flat['options'] = pe_cls.Options(**dict(sub))
    names_ = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(flat) - names_)
    if unknown:
      raise ConfigError(f'unknown position-encoding option(s): {", ".join(unknown)}')
    return cls(**flat)

  @property
  def cls(self) -> type['PEType']:
    return get(self.type)

  def validate(self, data_dim: int, allowed: tuple[str, ...] | None = None) -> None:
    allowed = names() if allowed is None else allowed
    if self.type not in allowed or self.type not in _REGISTRY:
      raise ConfigError(f'unknown pe.type {self.type!r}; choose one of {", ".join(allowed)}')
    pe_cls = self.cls
    if pe_cls.dims is not None and data_dim not in pe_cls.dims:
      raise ConfigError(f'pe.type={self.type} supports {pe_cls.dims}-D positions, '
                        f'not {data_dim}-D')
    pe_cls.validate(self, data_dim)

  def injection(self) -> AttentionHook:
    """The attention hook of this type (static, hashable)."""
    return self.cls.hook(self)

  def seqpe_out_dim(self, model_width: int, num_heads: int) -> int:
    if self.out_dim:
      return self.out_dim
    if self.apply == 'input_add' or self.multi_head:
      return model_width
    return model_width // num_heads


class PEType:
  """Base class of a position-encoding type (subclass, then `@register('name')`).

  Everything is a classmethod: the class is the static description of the
  type; `encode` runs inside the `PositionEncoder` (create parameters with
  `enc.param(...)` / named submodules there).
  """

  name: ClassVar[str] = ''
  dims: ClassVar[tuple[int, ...] | None] = None   # allowed position axes; None: any
  Options: ClassVar[type] = NoOptions              # the `config.pe.<name>` group
  flat_prefix: ClassVar[str | None] = None         # built-ins: options are PEConfig fields
  # Submodule names this type creates in the PositionEncoder → optimizer group
  # (with its own LR / clip / weight decay; see `optim.py`). Others are 'backbone'.
  param_groups: ClassVar[dict[str, str]] = {}
  prefix_learned: ClassVar[bool] = False           # prefix rows (ViT CLS) get a learned vector

  @classmethod
  def options_of(cls, pe: PEConfig) -> Any:
    """This type's `Options` instance from `pe`."""
    if cls.flat_prefix is not None:
      p = cls.flat_prefix
      return cls.Options(**{f.name: getattr(pe, f.name if p == '' or f.name.startswith(p)
                                            else p + f.name)
                            for f in dataclasses.fields(cls.Options)})
    return pe.options if isinstance(pe.options, cls.Options) else cls.Options()

  @classmethod
  def validate(cls, pe: PEConfig, data_dim: int) -> None:
    """Raises ConfigError on an invalid option (after the type/axes checks)."""

  @classmethod
  def hook(cls, pe: PEConfig) -> AttentionHook:
    """How the type enters attention; the default: not at all."""
    return AttentionHook()

  @classmethod
  def position_capacity(cls, pe: PEConfig) -> int | None:
    """Largest encodable position + 1 per axis (None: unbounded)."""
    return None

  @classmethod
  def encode(cls, enc: 'PositionEncoder', positions_PxLxn: jax.Array,
             grid_shape: tuple[int, ...], aux_positions_Mxn: jax.Array | None, mode: str,
             deterministic: bool) -> 'PEOutput':
    """The context of these positions (no prefix rows; `PositionEncoder` adds them)."""
    return PEOutput(ctx=PEContext())


@flax.struct.dataclass
class PEOutput:
  ctx: PEContext
  main_embed: jax.Array | None = None  # [P, L, E] SeqPE of the main positions (OOD teacher)
  aux_embed: jax.Array | None = None   # [M, E] SeqPE of the auxiliary positions


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

  @nn.compact
  def __call__(self, positions_PxLxn: jax.Array, *, grid_shape: tuple[int, ...] | None = None,
               aux_positions_Mxn: jax.Array | None = None, mode: str = 'extend',
               deterministic: bool = True) -> PEOutput:
    """Encodes positions.

    Args:
      positions_PxLxn: int positions (row-major grid for the ViT, no prefix).
      grid_shape: static grid of the positions, `(L,)` or `(h, w)`; defaults
        to `(L,)`. Needed for learned-table resizing and 'interpolate' mode.
      aux_positions_Mxn: extra positions embedded in the same SeqPE call.
      mode: 'extend' (encode the given positions) or 'interpolate' (encode
        the training grid and resize to `grid_shape`; SeqPE only; learned
        tables always resize).
      deterministic: disables SeqPE dropout.
    """
    grid_shape = tuple(grid_shape or (positions_PxLxn.shape[1],))
    return self.cfg.cls.encode(self, positions_PxLxn, grid_shape, aux_positions_Mxn, mode,
                               deterministic)

  def prepend(self, x_PxLx: jax.Array, learned: bool = False) -> jax.Array:
    """Adds the prefix rows: learned prefix vectors (param `prefix_pos`), or zeros / False."""
    if not self.num_prefix:
      return x_PxLx
    p = x_PxLx.shape[0]
    if learned:
      prefix = self.param('prefix_pos', layers.partitioned(layers.normal(0.02), (None, 'embed')),
                          (self.num_prefix, x_PxLx.shape[-1]), self.param_dtype)
      pre = jnp.broadcast_to(jnp.asarray(prefix, x_PxLx.dtype),
                             (p, self.num_prefix, x_PxLx.shape[-1]))
    else:
      pre = jnp.zeros((p, self.num_prefix, *x_PxLx.shape[2:]), x_PxLx.dtype)
    return jnp.concatenate([pre, x_PxLx], axis=1)


def param_group(path_keys: tuple[str, ...]) -> str | None:
  """The optimizer group a registered type declares for a parameter path, or None.

  A path belongs to a group if it passes through `<MODULE_NAME>/<submodule>`
  with `<submodule>` in some type's `param_groups`.
  """
  groups = {k: g for c in _REGISTRY.values() for k, g in c.param_groups.items()}
  for a, b in zip(path_keys[:-1], path_keys[1:]):
    if a == MODULE_NAME and b in groups:
      return groups[b]
  return None


def all_param_groups() -> tuple[str, ...]:
  """Every optimizer group some registered type declares."""
  return tuple(sorted({g for c in _REGISTRY.values() for g in c.param_groups.values()}))


def _grid(shape: tuple[int, ...]) -> jax.Array:
  axes = jnp.meshgrid(*[jnp.arange(s, dtype=jnp.int32) for s in shape], indexing='ij')
  return jnp.stack([a.reshape(-1) for a in axes], axis=-1)


def _resize_flat(e_MxE: jax.Array, src: tuple[int, ...], dst: tuple[int, ...], method: str):
  grid = e_MxE.reshape(*src, e_MxE.shape[-1])
  if len(src) == 1:
    return baselines.resize_table_1d(grid, dst[0], 'linear')
  return baselines.resize_grid(grid, dst, method).reshape(-1, e_MxE.shape[-1])


# ----------------------------------------------------------------------------- SeqPE

@dataclasses.dataclass(frozen=True)
class SeqPEOptions:
  """`config.pe.seqpe` (method doc §1-3)."""

  apply: str = 'attn_scalar'    # input_add | attn_add | attn_mul | attn_scalar
  pe_qk: str = 'single'         # single (one shared projection) | multi (per layer) | none
  multi_head: bool = True       # split PE_q/PE_k over heads
  scalar_scale: float = 1.0     # s in attn_scalar
  scalar_form: str = 'auto'     # attn_scalar: auto (bias where the logits are materialised,
                                # concat for the fused kernels) | concat ([q; sPE_q]·[k; PE_k],
                                # fused-kernel and KV-cache friendly) | bias (s PE_q·PE_k added)
  max_digits: int = 4           # digits per axis: positions < 10**max_digits
  width: int = 64               # encoder width (paper: 768 text, 384 vision)
  heads: int = 2                # encoder heads (paper: width / 64)
  layers: int = 2               # encoder layers (paper: 2)
  out_dim: int = 0              # 0: derived from the model (width, or head dim)
  causal: bool = True           # causal digit attention (paper) or bidirectional
  dropout: float = 0.1          # encoder residual dropout
  attn_dropout: float = 0.0     # encoder attention dropout
  final_ln: bool = True         # final LayerNorm before out_proj
  temperature: float = 1.0      # output divided by it
  mask_padding: bool = False    # mask leading zeros as keys (off in the paper)
  share_prefixes: bool = True   # training encodes each distinct digit prefix once (causal
                                # encoder: same function; with encoder dropout, one mask per
                                # prefix); False: one digit sequence per position (official)


@register('seqpe')
class SeqPE(PEType):
  """The SeqPE encoder (`seqpe.py`) and its four injections."""

  Options = SeqPEOptions
  flat_prefix = ''
  param_groups = {SEQPE_GROUP: SEQPE_GROUP}  # the encoder submodule is named after its group
  prefix_learned = True

  @classmethod
  def validate(cls, pe, data_dim):
    if pe.apply not in SEQPE_APPLY:
      raise ConfigError(f'unknown pe.seqpe.apply {pe.apply!r}; one of {SEQPE_APPLY}')
    if pe.scalar_form not in SCALAR_FORMS:
      raise ConfigError(f'unknown pe.seqpe.scalar_form {pe.scalar_form!r}; one of '
                        f'{SCALAR_FORMS}')
    if pe.pe_qk not in SEQPE_QK:
      raise ConfigError(f'unknown pe.seqpe.pe_qk {pe.pe_qk!r}; one of {SEQPE_QK}')
    if pe.width % pe.heads:
      raise ConfigError(f'pe.seqpe.width={pe.width} is not divisible by '
                        f'pe.seqpe.heads={pe.heads}')

  @classmethod
  def hook(cls, pe):
    if pe.apply == 'input_add':
      return AttentionHook()
    return SeqPEHook(method=pe.apply, pe_qk=pe.pe_qk, multi_head=pe.multi_head,
                     scalar_scale=pe.scalar_scale, scalar_form=pe.scalar_form)

  @classmethod
  def position_capacity(cls, pe):
    return 10 ** pe.max_digits

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    pe = enc.cfg
    out_dim = pe.seqpe_out_dim(enc.width, enc.num_heads)
    encoder = SeqPEEncoder(
        data_dim=enc.data_dim, max_digits=pe.max_digits, width=pe.width,
        num_heads=pe.heads, num_layers=pe.layers, out_dim=out_dim, causal=pe.causal,
        dropout_rate=pe.dropout, attn_dropout_rate=pe.attn_dropout, final_ln=pe.final_ln,
        temperature=pe.temperature, mask_padding=pe.mask_padding,
        share_prefixes=pe.share_prefixes, position_bound=pe.position_bound, dtype=enc.dtype,
        param_dtype=enc.param_dtype, name=SEQPE_GROUP)
    p, _, n = positions_PxLxn.shape
    interpolate = mode == 'interpolate' and grid_shape != tuple(enc.train_grid)
    if interpolate:  # encode the training grid, resize the embedding grid afterwards
      src = _grid(enc.train_grid)[None]
      positions_PxLxn = jnp.broadcast_to(src, (p, *src.shape[1:]))
    flat_Mxn = positions_PxLxn.reshape(-1, n)
    n_main = flat_Mxn.shape[0]
    if aux_Mxn is not None:
      flat_Mxn = jnp.concatenate([flat_Mxn, aux_Mxn.astype(flat_Mxn.dtype)], axis=0)
    e_MxE = encoder(flat_Mxn, deterministic=deterministic)  # the one encoder call
    main = e_MxE[:n_main].reshape(p, -1, e_MxE.shape[-1])
    aux = e_MxE[n_main:] if aux_Mxn is not None else None
    if interpolate:
      main = jax.vmap(lambda m: _resize_flat(m, enc.train_grid, grid_shape, 'bicubic'))(main)

    e = enc.prepend(main, learned=True)
    if pe.apply == 'input_add':
      ctx = PEContext(input_embed=e)
    elif pe.pe_qk == 'single':
      pe_qk = nn.Dense(
          2 * out_dim, dtype=enc.dtype, param_dtype=enc.param_dtype,
          kernel_init=layers.partitioned(layers.normal(0.02), ('pe_out', 'pe_qk')),
          bias_init=layers.partitioned(nn.initializers.zeros, ('pe_qk',)), name='pe_qk')
      q_pe, k_pe = jnp.split(pe_qk(e), 2, axis=-1)
      ctx = PEContext(q_pe=q_pe, k_pe=k_pe)
    elif pe.pe_qk == 'multi':
      ctx = PEContext(embed=e)
    else:  # no projection: PE_q = PE_k = E (or E already holds both halves)
      hp = enc.num_heads if pe.multi_head else 1
      if e.shape[-1] == hp * (enc.width // enc.num_heads):
        ctx = PEContext(q_pe=e, k_pe=e)
      else:
        q_pe, k_pe = jnp.split(e, 2, axis=-1)
        ctx = PEContext(q_pe=q_pe, k_pe=k_pe)
    return PEOutput(ctx=ctx, main_embed=main, aux_embed=aux)


# ----------------------------------------------------------------------------- tables, sinusoids

@dataclasses.dataclass(frozen=True)
class LearnedOptions:
  """`config.pe.learned`."""

  resize: str = 'linear'  # past the trained length/grid: linear | bicubic | bicubic_jax | none


@register('learned')
class Learned(PEType):
  """A learned table of the training length / grid, added to the input."""

  dims = (1, 2)
  Options = LearnedOptions
  flat_prefix = 'learned_'
  prefix_learned = True

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    table = enc.param(
        'table', layers.partitioned(layers.normal(0.02), (None,) * enc.data_dim + ('embed',)),
        (*enc.train_grid, enc.width), enc.param_dtype)
    train_grid = tuple(enc.train_grid)
    if tuple(grid_shape) != train_grid:
      if enc.data_dim == 1 and grid_shape[0] < train_grid[0]:
        table = table[: grid_shape[0]]  # a shorter length uses the first rows as they are
      elif enc.cfg.learned_resize == 'none':
        raise ConfigError(
            f'learned position table has {train_grid} entries but {grid_shape} were '
            'requested; set pe.learned.resize=linear or bicubic to interpolate it')
      elif enc.data_dim == 1:
        table = baselines.resize_table_1d(table, grid_shape[0], enc.cfg.learned_resize)
      else:
        table = baselines.resize_grid(table, grid_shape, enc.cfg.learned_resize)
    idx = tuple(jnp.clip(positions_PxLxn[..., a], 0, table.shape[a] - 1)
                for a in range(enc.data_dim))
    e = jnp.asarray(table, enc.dtype)[idx]
    return PEOutput(ctx=PEContext(input_embed=enc.prepend(e, learned=True)))


@dataclasses.dataclass(frozen=True)
class SinusoidalOptions:
  """`config.pe.sinusoidal` (also read by sincos2d)."""

  base: float = 10000.0
  scale: float = 0.0  # 0: 1/sqrt(width) (LM), 1 (sincos2d)


@register('sinusoidal')
class Sinusoidal(PEType):
  dims = (1,)
  Options = SinusoidalOptions
  flat_prefix = 'sinusoidal_'

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    pe = enc.cfg
    scale = pe.sinusoidal_scale or 1.0 / math.sqrt(enc.width)
    e = baselines.sinusoidal_1d(positions_PxLxn[..., 0], enc.width, pe.sinusoidal_base)
    return PEOutput(ctx=PEContext(input_embed=enc.prepend(scale * e)))


@register('sincos2d')
class SinCos2D(PEType):
  """2-D sincos (options: the `sinusoidal` group's `scale`)."""

  dims = (2,)

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    scale = enc.cfg.sinusoidal_scale or 1.0
    e = scale * baselines.sincos_2d(positions_PxLxn, enc.width)
    return PEOutput(ctx=PEContext(input_embed=enc.prepend(e)))


# ----------------------------------------------------------------------------- rotations

@dataclasses.dataclass(frozen=True)
class RopeOptions:
  """`config.pe.rope` (rope2d reads `theta`)."""

  theta: float = 10000.0
  scaling: str = 'none'       # none | linear | ntk | yarn
  factor: float = 1.0
  original_length: int = 2048


@register('rope')
class Rope(PEType):
  dims = (1,)
  Options = RopeOptions
  flat_prefix = 'rope_'

  @classmethod
  def hook(cls, pe):
    mult = baselines.yarn_mscale(pe.rope_factor) ** 2 if pe.rope_scaling == 'yarn' else 1.0
    return RopeHook(logit_mult=mult)

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    pe = enc.cfg
    inv = baselines.rope_inv_freq(enc.width // enc.num_heads, pe.rope_theta, pe.rope_scaling,
                                  pe.rope_factor, pe.rope_original_length)
    angles = baselines.rope_angles(positions_PxLxn[..., 0], inv)
    return PEOutput(ctx=PEContext(angles=enc.prepend(angles)))


@register('rope2d')
class Rope2D(PEType):
  """Axial 2-D RoPE (options: the `rope` group's `theta`)."""

  dims = (2,)

  @classmethod
  def hook(cls, pe):
    return RopeHook()

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    ang = baselines.axial_rope_angles(positions_PxLxn, enc.width // enc.num_heads,
                                      enc.cfg.rope_theta)
    return PEOutput(ctx=PEContext(angles=enc.prepend(ang)))


@dataclasses.dataclass(frozen=True)
class RopeMixedOptions:
  """`config.pe.rope_mixed`."""

  theta: float = 10.0


@register('rope_mixed')
class RopeMixed(PEType):
  """RoPE-Mixed: per-layer learnable frequencies (param `rope_freqs` in each attention)."""

  dims = (2,)
  Options = RopeMixedOptions
  flat_prefix = 'rope_mixed_'

  @classmethod
  def hook(cls, pe):
    return RopeMixedHook(theta=pe.rope_mixed_theta)

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    p, l, _ = positions_PxLxn.shape
    mask = jnp.ones((p, l), bool)
    return PEOutput(ctx=PEContext(positions=enc.prepend(positions_PxLxn),
                                  rope_mask=enc.prepend(mask)))


# ----------------------------------------------------------------------------- biases

@dataclasses.dataclass(frozen=True)
class AlibiOptions:
  """`config.pe.alibi`."""

  before_scale: bool = False  # True: the official code's bias-before-1/sqrt(d) quirk


@register('alibi')
class Alibi(PEType):
  dims = (1,)
  Options = AlibiOptions
  flat_prefix = 'alibi_'

  @classmethod
  def hook(cls, pe):
    return AlibiHook(before_scale=pe.alibi_before_scale)

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    return PEOutput(ctx=PEContext(positions=positions_PxLxn))


@register('nope')
class NoPE(PEType):
  """No position encoding (causal masking alone carries order in the LM)."""


from seqpe_jax import relbias  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position



def __getattr__(name: str) -> tuple[str, ...]:
  """`PE_TYPES` / `LM_PE_TYPES` / `VIT_PE_TYPES`, read from the registry when asked for: a
  snapshot taken here would miss `relbias`'s types whenever `relbias` is imported first (its
  import of this module then reaches the line above while `relbias` is half loaded)."""
  dims = {'PE_TYPES': None, 'LM_PE_TYPES': 1, 'VIT_PE_TYPES': 2}
  if name in dims:
    return names(dims[name])
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
