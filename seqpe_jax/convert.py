r"""Load the official PyTorch SeqPE checkpoints: the encoder alone, GPT-2 + SeqPE, ViT + SeqPE.

Layouts and forward semantics: `../shared/parity/README.md` and
`README_full_models.md`. Every function returns `(module, variables)` in our
own layout; every missing, extra or mis-shaped tensor and every official
config value we cannot represent is a one-line `CheckpointError` /
`ConfigError` naming it.

The official `SequentialPE` state_dict (encoder):

    token_of_seqpe_embed.weight [10, W]      → token_embed
    pos_of_seqpe_embed.weight   [k*d, W]     → digit_pos_embed
    dim_token_embed             [d, 1, W]    → axis_embed (d > 1)
    cls_token_embed             [1, 1, W]    → cls_embed
    transformers.{i}.layernorm_1/2           → block_i/ln_1, ln_2
    transformers.{i}.attn.c_attn  [W, 3W]    → block_i/attn/qkv   (GPT-2 Conv1D: [in, out])
    transformers.{i}.attn.c_proj  [W, W]     → block_i/attn/out
    transformers.{i}.mlp.c_fc/c_proj         → block_i/mlp/fc, proj
    layernorm                                → ln_f
    out_proj.weight [O, W] (torch Linear)    → out_proj (transposed)

GPT2LMHeadModel (text): `transformer.wte` → tok_embed, `transformer.pe_qk`
(Linear) → posenc/pe_qk, `transformer.h.{i}` (Conv1D) → block_i, `ln_f`,
`lm_head` (tied, or → head). ViT (vision, all Linear): `cls_token`,
`cls_token_pos_embed` → posenc/prefix_pos, `patch_embed.proj` (OIHW) →
patch_embed (HWIO), `blocks.{i}.{norm1,attn.qkv,attn.proj,attn.pe_qk,norm2,
mlp.fc1,mlp.fc2}` → block_i, `norm` → ln_f, `head`.

CLI (no torch needed; `.pth` pickles go through a restricted unpickler):

  python -m seqpe_jax.convert --official=<dir> --task=lm|vit --workdir=<new run dir> \
      [--override=data.name=wikitext-103 ...]
  python -m seqpe_jax.main --config=configs/from_workdir.py:<run dir> --workdir=<run dir> \
      --mode=eval

`lm` reads accelerate's `model.safetensors` (GPT-2) + `model_1.safetensors`
(SeqPE) + `pe_config.json` and a Hugging Face GPT-2 `config.json`
(`--model_config`); `vit` reads `best_model.pth` (entries `model` and
`pe_model`), `pe_config.json` (or the PE keys of the pickled yacs config) and a
JSON of the timm ViT sizes (`--model_config`, default `<dir>/vit_config.json`).
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
import pickle
import sys
import zipfile
from typing import Any, Mapping

import numpy as np

from seqpe_jax.errors import CheckpointError, ConfigError
from seqpe_jax.seqpe import SeqPEEncoder

_ANCHOR = 'token_of_seqpe_embed.weight'


# ---------------------------------------------------------------------------- tensors

class _Tensors:
  """A state dict taken tensor by tensor (each shape-checked); `finish` rejects leftovers."""

  def __init__(self, state_dict: Mapping[str, Any], what: str,
               ignore: tuple[str, ...] = ()):
    self.what = what
    self.sd: dict[str, np.ndarray] = {}
    for k, v in state_dict.items():
      if any(k.endswith(s) for s in ignore):
        continue
      try:
        self.sd[k] = np.asarray(v, dtype=np.float32)
      except (TypeError, ValueError) as e:
        raise CheckpointError(f'{what} entry {k!r} is not a tensor ({type(v).__name__}: '
                              f'{str(e)[:80]})') from None
    self.used: set[str] = set()

  def has(self, name: str) -> bool:
    return name in self.sd

  def take(self, name: str, shape: tuple[int, ...], ours: str) -> np.ndarray:
    if name not in self.sd:
      raise CheckpointError(f'{self.what} state_dict is missing {name!r} (our {ours})')
    x = self.sd[name]
    if tuple(x.shape) != tuple(shape):
      raise CheckpointError(f'{self.what} tensor {name!r} (our {ours}) has shape '
                            f'{tuple(x.shape)}, expected {tuple(shape)} from the config')
    self.used.add(name)
    return x

  def finish(self) -> None:
    extra = sorted(set(self.sd) - self.used)
    if extra:
      more = f' and {len(extra) - 3} more' if len(extra) > 3 else ''
      raise CheckpointError(f'{self.what} state_dict has unexpected tensor(s) '
                            f'{", ".join(repr(k) for k in extra[:3])}{more} '
                            '(a configuration this converter does not know)')


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  anchors = [k for k in state_dict if k.endswith(_ANCHOR)]
  if len(anchors) != 1:
    raise CheckpointError(
        f'expected exactly one "{_ANCHOR}" in the state_dict, found {len(anchors)}')
  prefix = anchors[0][:-len(_ANCHOR)]
  return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _strip_module(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drops a DDP `module.` prefix carried by every key."""
  if state_dict and all(k.startswith('module.') for k in state_dict):
    return {k[len('module.'):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _ln(t: _Tensors, name: str, width: int, ours: str) -> dict:
  return {'ln': {'scale': t.take(f'{name}.weight', (width,), f'{ours}/ln/scale'),
                 'bias': t.take(f'{name}.bias', (width,), f'{ours}/ln/bias')}}


def _conv1d(t: _Tensors, name: str, n_in: int, n_out: int, ours: str) -> dict:
  """A GPT-2 Conv1D (weight [in, out]) as a Dense kernel."""
  return {'kernel': t.take(f'{name}.weight', (n_in, n_out), f'{ours}/kernel'),
          'bias': t.take(f'{name}.bias', (n_out,), f'{ours}/bias')}


def _linear(t: _Tensors, name: str, n_in: int, n_out: int, ours: str,
            bias: bool = True) -> dict:
  """A torch Linear (weight [out, in]) as a Dense kernel; an absent bias is exactly zero."""
  b = t.take(f'{name}.bias', (n_out,), f'{ours}/bias') if bias else np.zeros(n_out, np.float32)
  return {'kernel': t.take(f'{name}.weight', (n_out, n_in), f'{ours}/kernel').T, 'bias': b}


def _attn(qkv: dict, out: dict, width: int, heads: int) -> dict:
  """Fused q|k|v (heads contiguous) → our qkv [C, 3, H, dh] and out [H, dh, C]."""
  dh = width // heads
  return {'qkv': {'kernel': qkv['kernel'].reshape(width, 3, heads, dh),
                  'bias': qkv['bias'].reshape(3, heads, dh)},
          'out': {'kernel': out['kernel'].reshape(heads, dh, width), 'bias': out['bias']}}


# ---------------------------------------------------------------------------- encoder

def _seqpe_params(t: _Tensors, *, data_dim: int, max_digits: int, width: int, heads: int,
                  layers: int, out_dim: int, final_ln: bool = True) -> dict:
  if heads < 1 or width % heads:
    raise ConfigError(f'SeqPE width {width} is not divisible by its heads {heads}')
  params: dict[str, Any] = {
      'token_embed': t.take('token_of_seqpe_embed.weight', (10, width), 'token_embed'),
      'digit_pos_embed': t.take('pos_of_seqpe_embed.weight', (data_dim * max_digits, width),
                                'digit_pos_embed'),
      'cls_embed': t.take('cls_token_embed', (1, 1, width), 'cls_embed').reshape(width),
      'out_proj': _linear(t, 'out_proj', width, out_dim, 'out_proj'),
  }
  if data_dim > 1:
    params['axis_embed'] = t.take('dim_token_embed', (data_dim, 1, width),
                                  'axis_embed').reshape(data_dim, width)
  if final_ln:
    params['ln_f'] = _ln(t, 'layernorm', width, 'ln_f')
  for i in range(layers):
    p, o = f'transformers.{i}', f'block_{i}'
    params[o] = {
        'ln_1': _ln(t, f'{p}.layernorm_1', width, f'{o}/ln_1'),
        'ln_2': _ln(t, f'{p}.layernorm_2', width, f'{o}/ln_2'),
        'attn': _attn(_conv1d(t, f'{p}.attn.c_attn', width, 3 * width, f'{o}/attn/qkv'),
                      _conv1d(t, f'{p}.attn.c_proj', width, width, f'{o}/attn/out'),
                      width, heads),
        'mlp': {'fc': _conv1d(t, f'{p}.mlp.c_fc', width, 4 * width, f'{o}/mlp/fc'),
                'proj': _conv1d(t, f'{p}.mlp.c_proj', 4 * width, width, f'{o}/mlp/proj')},
    }
  return params


def load_official_seqpe(state_dict: Mapping[str, Any], *, data_dim: int, max_digits: int,
                        width: int, heads: int, layers: int, out_dim: int,
                        **encoder_kwargs) -> tuple[SeqPEEncoder, dict]:
  """Builds `(module, variables)` from an official SeqPE state_dict.

  `module.apply(variables, positions_Mxd)` (deterministic by default) returns
  the encoder output `[M, out_dim]`. Extra keyword arguments go to
  `SeqPEEncoder` (e.g. `causal=False` for a bidirectional checkpoint). Keys
  may carry a prefix (e.g. `module.pe_encoder.`); it is detected and stripped.
  """
  t = _Tensors(_strip_prefix(state_dict), 'official SeqPE')
  module = SeqPEEncoder(data_dim=data_dim, max_digits=max_digits, width=width,
                        num_heads=heads, num_layers=layers, out_dim=out_dim, **encoder_kwargs)
  params = _seqpe_params(t, data_dim=data_dim, max_digits=max_digits, width=width, heads=heads,
                         layers=layers, out_dim=out_dim, final_ln=module.final_ln)
  t.finish()
  return module, {'params': params}


# ---------------------------------------------------------------------------- configs

_MISSING = object()


def _get(cfg: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
  if key not in cfg or cfg[key] is None:
    if default is _MISSING:
      raise ConfigError(f'{where} has no {key}')
    return default
  return cfg[key]


def _require(cfg: Mapping[str, Any], key: str, allowed: tuple, where: str,
             default: Any = _MISSING) -> Any:
  v = _get(cfg, key, where, default)
  if v not in allowed:
    raise ConfigError(f'{where} {key}={v!r} cannot be represented (supported: '
                      f'{", ".join(repr(a) for a in allowed)})')
  return v


def _int(cfg: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> int:
  v = _get(cfg, key, where, default)
  if isinstance(v, bool) or not float(v).is_integer() or int(v) < 1:
    raise ConfigError(f'{where} {key}={v!r} must be a positive integer')
  return int(v)


def official_pe_config(pe_config: Mapping[str, Any], *, task: str, width: int,
                       num_heads: int):
  """Our `PEConfig` from the official PE config (`PE_*` / `SEQPE_*` keys).

  `width`, `num_heads`: the backbone's. Only what decides the forward is read;
  training-only keys (losses, samplers, learning rates) are ignored.
  """
  from seqpe_jax.posenc import PEConfig  # pylint: disable=g-import-not-at-top
  w = 'pe_config'
  text = task == 'lm'
  _require(pe_config, 'PE_TYPE', ('seq_pe',), w)
  _require(pe_config, 'PE_DATA_DIM', (1,) if text else (2,), w)
  apply = _require(pe_config, 'PE_APPLY_METHOD',
                   ('input_add', 'attn_add', 'attn_mul', 'attn_scalar'), w)
  multi_head = bool(_require(pe_config, 'USE_PE_MULTI_HEAD', (True, False), w))
  per_layer = _require(pe_config, 'USE_PE_QK_PER_LAYER', ('single', 'multi', True, False), w,
                       default='single' if apply == 'input_add' else _MISSING)
  pe_qk = {True: 'multi', False: 'single'}.get(per_layer, per_layer)
  _require(pe_config, 'SEQPE_ACTIVATION_FUNCTION', ('gelu_new',), w)
  _require(pe_config, 'SEQPE_SCALE_ATTN_WEIGHTS', (True,), w)
  _require(pe_config, 'SEQPE_ADD_OUT_PROJ', (True,), w, default=True)
  direction = _require(pe_config, 'SEQPE_ATTN_DIRECTION', ('causal', 'bi'), w)
  out_dim = _int(pe_config, 'PE_OUT_PROJ_DIM', w)
  # The official ViT attention ignores SEQPE_SCALAR_SCALE (its pe bias is never scaled).
  scale = float(_get(pe_config, 'SEQPE_SCALAR_SCALE', w, 1.0)) if text else 1.0
  pe = PEConfig(
      type='seqpe', apply=apply, pe_qk=pe_qk, multi_head=multi_head, scalar_scale=scale,
      scalar_form='auto', max_digits=_int(pe_config, 'SEQPE_MAX_DIGITS', w),
      width=_int(pe_config, 'PE_EMBED_DIM', w), heads=_int(pe_config, 'NUM_ATTENTION_HEADS', w),
      layers=_int(pe_config, 'SEQPE_LAYER_NUM', w), out_dim=out_dim,
      causal=direction == 'causal',
      dropout=float(_get(pe_config, 'SEQPE_RESID_PDROP', w, 0.0)),
      attn_dropout=float(_get(pe_config, 'SEQPE_ATTN_PDROP', w, 0.0)),
      final_ln=bool(_require(pe_config, 'SEQPE_LAST_LAYERNORM', (True, False), w)),
      temperature=float(_get(pe_config, 'SEQPE_TEMPERATURE', w, 1.0)),
      mask_padding=bool(_require(pe_config, 'SEQPE_MASK_PADDING', (True, False), w)))
  if pe.width % pe.heads:
    raise ConfigError(f'{w} PE_EMBED_DIM={pe.width} is not divisible by '
                      f'NUM_ATTENTION_HEADS={pe.heads}')
  dh = width // num_heads
  if apply == 'input_add':
    if out_dim != width:
      raise ConfigError(f'{w} PE_OUT_PROJ_DIM={out_dim} must equal the model width {width} '
                        'for input_add')
    return pe
  if text and pe_qk == 'single' and 2 * out_dim == width:
    raise ConfigError(
        f'{w} PE_OUT_PROJ_DIM={out_dim} is half the model width {width}: the official GPT-2 '
        'then takes its concatenation branch (pe = cat([pe, pe]), query-PE = key-PE), which '
        'released checkpoints never use; not supported')
  hp = num_heads if multi_head else 1
  if out_dim % hp or out_dim // hp != dh:
    raise ConfigError(
        f'{w} PE_OUT_PROJ_DIM={out_dim} splits into {hp} PE head(s) of {out_dim / hp:g}, but '
        f'our {apply} needs the attention head dim {dh} (model width {width} / {num_heads} '
        'heads)')
  return pe


def official_gpt2_config(gpt2_config: Mapping[str, Any]):
  """Our `GPTConfig` from Hugging Face GPT-2 config fields (HF defaults where absent)."""
  from seqpe_jax.gpt import GPTConfig  # pylint: disable=g-import-not-at-top
  w = 'gpt2_config'
  width, heads = _int(gpt2_config, 'n_embd', w), _int(gpt2_config, 'n_head', w)
  if width % heads:
    raise ConfigError(f'{w} n_embd={width} is not divisible by n_head={heads}')
  inner = gpt2_config.get('n_inner') or 4 * width
  if inner % width:
    raise ConfigError(f'{w} n_inner={inner} is not a multiple of n_embd={width}')
  act = _require(gpt2_config, 'activation_function', ('gelu_new', 'gelu'), w, 'gelu_new')
  _require(gpt2_config, 'scale_attn_weights', (True,), w, True)
  _require(gpt2_config, 'scale_attn_by_inverse_layer_idx', (False,), w, False)
  _require(gpt2_config, 'add_cross_attention', (False,), w, False)
  _require(gpt2_config, 'lm_head_bias', (False,), w, False)
  _require(gpt2_config, 'wpe_exists', (False,), w, False)
  _require(gpt2_config, 'wpe_used', (False,), w, False)
  return GPTConfig(
      vocab_size=_int(gpt2_config, 'vocab_size', w), num_layers=_int(gpt2_config, 'n_layer', w),
      width=width, num_heads=heads, mlp_ratio=inner // width,
      dropout=float(_get(gpt2_config, 'resid_pdrop', w, 0.1)),
      attn_dropout=float(_get(gpt2_config, 'attn_pdrop', w, 0.1)),
      tie_embeddings=bool(_require(gpt2_config, 'tie_word_embeddings', (True, False), w, True)),
      ln_eps=float(_get(gpt2_config, 'layer_norm_epsilon', w, 1e-5)),
      gelu_approximate=act == 'gelu_new')


def official_vit_config(vit_config: Mapping[str, Any]):
  """Our `ViTConfig` (plus train image size, input channels, qkv_bias) from timm ViT sizes."""
  from seqpe_jax.vit import ViTConfig  # pylint: disable=g-import-not-at-top
  w = 'vit_config'
  width, heads = _int(vit_config, 'embed_dim', w), _int(vit_config, 'num_heads', w)
  if width % heads:
    raise ConfigError(f'{w} embed_dim={width} is not divisible by num_heads={heads}')
  ratio = float(_get(vit_config, 'mlp_ratio', w, 4.0))
  if not ratio.is_integer() or ratio < 1:
    raise ConfigError(f'{w} mlp_ratio={ratio} cannot be represented (integers only)')
  size_key = 'img_size_train' if 'img_size_train' in vit_config else 'img_size'
  cfg = ViTConfig(
      num_classes=_int(vit_config, 'num_classes', w), patch_size=_int(vit_config, 'patch_size', w),
      num_layers=_int(vit_config, 'depth', w), width=width, num_heads=heads,
      mlp_ratio=int(ratio), ln_eps=float(_get(vit_config, 'layer_norm_eps', w, 1e-6)),
      gelu_approximate=False)  # timm nn.GELU: exact erf
  qkv_bias = bool(_require(vit_config, 'qkv_bias', (True, False), w, True))
  return cfg, _int(vit_config, size_key, w), _int(vit_config, 'in_chans', w, 3), qkv_bias


# ---------------------------------------------------------------------------- whole models

def _check_tree(module, variables: dict, *init_args) -> None:
  """The converted tree must be exactly the module's own (names and shapes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0),
                                                              *init_args)))
  want = {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(abstract['params'])}
  got = {jax.tree_util.keystr(p): tuple(np.shape(x))
         for p, x in jax.tree_util.tree_leaves_with_path(variables['params'])}
  for k in sorted(set(want) | set(got)):
    if want.get(k) != got.get(k):
      raise CheckpointError(f'converted parameter {k} is {got.get(k)}, the model expects '
                            f'{want.get(k)} (converter bug or unsupported configuration)')


def _official_encoder(pe_state, pe: Any, *, data_dim: int, out_dim: int) -> dict:
  """Our encoder params from the official SeqPE state dict (every tensor used exactly once)."""
  enc = _Tensors(_strip_prefix(pe_state), 'official SeqPE')
  params = _seqpe_params(enc, data_dim=data_dim, max_digits=pe.max_digits, width=pe.width,
                         heads=pe.heads, layers=pe.layers, out_dim=out_dim, final_ln=pe.final_ln)
  enc.finish()
  return params


def load_official_gpt2(model_state: Mapping[str, Any], pe_state: Mapping[str, Any], *,
                       pe_config: Mapping[str, Any], gpt2_config: Mapping[str, Any]):
  """`(GPT, variables)` from the official GPT2LMHeadModel + SequentialPE state dicts.

  `module.apply(variables, tokens_BxL, positions_PxL)` returns `(logits, pe)`.
  `lm_head.weight` may be absent when tied (accelerate drops the shared tensor).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seqpe_jax.gpt import GPT  # pylint: disable=g-import-not-at-top
  cfg = official_gpt2_config(gpt2_config)
  pe = official_pe_config(pe_config, task='lm', width=cfg.width, num_heads=cfg.num_heads)
  c, v, h, p = cfg.width, cfg.vocab_size, cfg.num_heads, pe.out_dim
  t = _Tensors(_strip_module(model_state), 'official GPT-2',
               ignore=('.attn.bias', '.attn.masked_bias'))  # causal-mask buffers, not weights
  params: dict[str, Any] = {
      'tok_embed': {'embedding': t.take('transformer.wte.weight', (v, c), 'tok_embed')}}
  if cfg.tie_embeddings:
    if t.has('lm_head.weight'):
      head = t.take('lm_head.weight', (v, c), 'tok_embed (tied)')
      if not np.array_equal(head, params['tok_embed']['embedding']):
        raise CheckpointError('official GPT-2 lm_head.weight differs from transformer.wte.weight '
                              'although gpt2_config says tie_word_embeddings=True')
  else:
    params['head'] = {'kernel': t.take('lm_head.weight', (v, c), 'head/kernel').T}
  attn_pe = pe.apply != 'input_add'
  posenc: dict[str, Any] = {}
  if attn_pe and pe.pe_qk == 'single':
    posenc['pe_qk'] = _linear(t, 'transformer.pe_qk', p, 2 * p, 'posenc/pe_qk')
  for i in range(cfg.num_layers):
    s, o = f'transformer.h.{i}', f'block_{i}'
    f = cfg.mlp_ratio * c
    block = {
        'ln_1': _ln(t, f'{s}.ln_1', c, f'{o}/ln_1'), 'ln_2': _ln(t, f'{s}.ln_2', c, f'{o}/ln_2'),
        'attn': _attn(_conv1d(t, f'{s}.attn.c_attn', c, 3 * c, f'{o}/attn/qkv'),
                      _conv1d(t, f'{s}.attn.c_proj', c, c, f'{o}/attn/out'), c, h),
        'mlp': {'fc': _conv1d(t, f'{s}.mlp.c_fc', c, f, f'{o}/mlp/fc'),
                'proj': _conv1d(t, f'{s}.mlp.c_proj', f, c, f'{o}/mlp/proj')}}
    if attn_pe and pe.pe_qk == 'multi':
      block['attn']['pe_qk'] = _linear(t, f'{s}.attn.pe_qk', p, 2 * p, f'{o}/attn/pe_qk')
    params[o] = block
  params['ln_f'] = _ln(t, 'transformer.ln_f', c, 'ln_f')
  t.finish()
  posenc['seqpe_encoder'] = _official_encoder(pe_state, pe, data_dim=1, out_dim=p)
  params['posenc'] = posenc
  train_len = int(gpt2_config.get('n_positions') or 1024)
  module = GPT(cfg, pe, train_len=train_len)
  variables = {'params': params}
  _check_tree(module, variables, jnp.zeros((1, 2), jnp.int32))
  return module, variables


def load_official_vit(model_state: Mapping[str, Any], pe_state: Mapping[str, Any], *,
                      pe_config: Mapping[str, Any], vit_config: Mapping[str, Any]):
  """`(ViT, variables)` from the official VisionTransformer + SequentialPE state dicts.

  `module.apply(variables, images_BxHxWxC, positions_PxNx2)` returns `(logits, pe)`;
  the learned `cls_token_pos_embed` is the PE row in front of the SeqPE grid.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from seqpe_jax.vit import ViT  # pylint: disable=g-import-not-at-top
  cfg, image_size, chans, qkv_bias = official_vit_config(vit_config)
  pe = official_pe_config(pe_config, task='vit', width=cfg.width, num_heads=cfg.num_heads)
  c, h, p, k = cfg.width, cfg.num_heads, pe.out_dim, cfg.patch_size
  t = _Tensors(_strip_module(model_state), 'official ViT')
  params: dict[str, Any] = {
      'cls_token': t.take('cls_token', (1, 1, c), 'cls_token').reshape(c),
      'patch_embed': {
          'kernel': t.take('patch_embed.proj.weight', (c, chans, k, k),
                           'patch_embed/kernel').transpose(2, 3, 1, 0),  # OIHW → HWIO
          'bias': t.take('patch_embed.proj.bias', (c,), 'patch_embed/bias')},
  }
  posenc: dict[str, Any] = {
      'prefix_pos': t.take('cls_token_pos_embed', (1, 1, p), 'posenc/prefix_pos').reshape(1, p)}
  attn_pe = pe.apply != 'input_add'
  if attn_pe and pe.pe_qk == 'single':
    posenc['pe_qk'] = _linear(t, 'pe_qk', p, 2 * p, 'posenc/pe_qk', bias=qkv_bias)
  f = cfg.mlp_ratio * c
  for i in range(cfg.num_layers):
    s, o = f'blocks.{i}', f'block_{i}'
    block = {
        'ln_1': _ln(t, f'{s}.norm1', c, f'{o}/ln_1'), 'ln_2': _ln(t, f'{s}.norm2', c, f'{o}/ln_2'),
        'attn': _attn(_linear(t, f'{s}.attn.qkv', c, 3 * c, f'{o}/attn/qkv', bias=qkv_bias),
                      _linear(t, f'{s}.attn.proj', c, c, f'{o}/attn/out'), c, h),
        'mlp': {'fc': _linear(t, f'{s}.mlp.fc1', c, f, f'{o}/mlp/fc'),
                'proj': _linear(t, f'{s}.mlp.fc2', f, c, f'{o}/mlp/proj')}}
    if attn_pe and pe.pe_qk == 'multi':
      block['attn']['pe_qk'] = _linear(t, f'{s}.attn.pe_qk', p, 2 * p, f'{o}/attn/pe_qk',
                                       bias=qkv_bias)
    params[o] = block
  params['ln_f'] = _ln(t, 'norm', c, 'ln_f')
  params['head'] = _linear(t, 'head', c, cfg.num_classes, 'head')
  t.finish()
  posenc['seqpe_encoder'] = _official_encoder(pe_state, pe, data_dim=2, out_dim=p)
  params['posenc'] = posenc
  module = ViT(cfg, pe, train_image_size=image_size)
  variables = {'params': params}
  _check_tree(module, variables, jnp.zeros((1, k, k, chans), jnp.float32))
  return module, variables


# ---------------------------------------------------------------------------- torch .pth

_TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_}


class _StorageType:
  """Stands in for `torch.<X>Storage` in a pickle: only carries the numpy dtype."""

  def __init__(self, name: str):
    self.name = name
    dtype = _TORCH_STORAGES[name]
    if dtype == 'bfloat16':
      import ml_dtypes  # pylint: disable=g-import-not-at-top  # ships with jax
      dtype = ml_dtypes.bfloat16
    self.dtype = np.dtype(dtype)


class _SkippedConfig(dict):
  """Stands in for a pickled yacs `CfgNode`: keeps its plain items, runs no code."""

  def __setstate__(self, state: Any) -> None:
    if isinstance(state, dict):
      self.update({k: v for k, v in state.items() if not str(k).startswith('_')})


def _rebuild_tensor_v2(storage: np.ndarray, offset: int, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> np.ndarray:
  del requires_grad, backward_hooks, metadata
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if size and (min(size) == 0):
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or last >= storage.size:
    raise CheckpointError(f'a tensor of shape {size} reaches past its storage '
                          f'({storage.size} elements): corrupt checkpoint')
  view = np.lib.stride_tricks.as_strided(storage[offset:], size,
                                         tuple(s * storage.itemsize for s in stride))
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


try:
  from numpy._core.multiarray import scalar as _np_scalar  # pylint: disable=g-import-not-at-top
except ImportError:  # numpy < 2
  from numpy.core.multiarray import scalar as _np_scalar  # pylint: disable=g-import-not-at-top

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('yacs.config', 'CfgNode'): _SkippedConfig,
    ('numpy.core.multiarray', 'scalar'): _np_scalar,  # numpy scalars (e.g. max_accuracy)
    ('numpy._core.multiarray', 'scalar'): _np_scalar,
    ('numpy', 'dtype'): np.dtype,
    ('builtins', 'set'): set, ('builtins', 'frozenset'): frozenset,
}
_SAFE_GLOBALS.update({('torch', name): _StorageType(name) for name in _TORCH_STORAGES})


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles tensors (as numpy) and plain containers; every other global is refused.

  `storages(key, dtype, numel)` supplies the raw storages of a torch zip archive.
  Never use `pickle.load` on a downloaded checkpoint: a pickle can run any code.
  """

  def __init__(self, file, storages=None, source: str = 'checkpoint'):
    super().__init__(file)
    self._storages = storages
    self._source = source

  def find_class(self, module: str, name: str) -> Any:
    module = {'__builtin__': 'builtins'}.get(module, module)  # protocol-2 spelling
    found = _SAFE_GLOBALS.get((module, name))
    if found is None:
      raise CheckpointError(f'refusing to unpickle the global {module}.{name} from '
                            f'{self._source}: only tensors and plain containers are loaded')
    return found

  def persistent_load(self, pid: Any) -> Any:
    if (self._storages is None or not isinstance(pid, tuple) or len(pid) != 5
        or pid[0] != 'storage' or not isinstance(pid[1], _StorageType)):
      raise CheckpointError(f'refusing the persistent object {str(pid)[:60]!r} in '
                            f'{self._source}: only torch tensor storages are loaded')
    _, stype, key, _, numel = pid
    return self._storages(str(key), stype.dtype, int(numel))


def load_torch_checkpoint(path: str | pathlib.Path) -> Any:
  """Reads a torch zip-format `.pth` (`torch.save` since 1.6) without torch.

  Tensors come back as numpy arrays, a yacs `CfgNode` as a plain dict; any other
  object is refused (`CheckpointError` naming its global).
  """
  path = pathlib.Path(path)
  if not zipfile.is_zipfile(path):
    # Not torch's zip layout: still never unpickled without the allowlist, so a
    # malicious plain pickle is refused by name.
    with path.open('rb') as f:
      obj = RestrictedUnpickler(f, None, str(path)).load()
    raise CheckpointError(f'{path} is not a torch zip checkpoint (legacy torch<1.6 format or a '
                          f'plain pickle of {type(obj).__name__}); re-save it with torch.save')
  with zipfile.ZipFile(path) as z:
    pkls = [n for n in z.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pkls) != 1:
      raise CheckpointError(f'{path} holds {len(pkls)} data.pkl entries, expected 1')
    root = pkls[0][:-len('data.pkl')]
    names = set(z.namelist())
    if f'{root}byteorder' in names and z.read(f'{root}byteorder').strip() != b'little':
      raise CheckpointError(f'{path} stores big-endian tensors; not supported')

    def storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
      name = f'{root}data/{key}'
      if name not in names:
        raise CheckpointError(f'{path} lacks the tensor storage {name}')
      raw = z.read(name)
      if len(raw) < numel * dtype.itemsize:
        raise CheckpointError(f'{path}: storage {name} has {len(raw)} bytes, expected '
                              f'{numel * dtype.itemsize} (truncated?)')
      return np.frombuffer(raw, dtype=dtype, count=numel)

    with z.open(pkls[0]) as f:
      return RestrictedUnpickler(f, storage, str(path)).load()


# ---------------------------------------------------------------------------- CLI

def _read_json(path: pathlib.Path, what: str) -> dict:
  if not path.is_file():
    raise CheckpointError(f'{what} not found: {path}')
  text = path.read_text()
  try:
    out = json.loads(text)
  except ValueError:
    try:  # yacs `dump()` writes YAML
      import yaml  # pylint: disable=g-import-not-at-top
      out = yaml.safe_load(text)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f'{what} {path} is neither JSON nor YAML ({str(e)[:80]})') from None
  if not isinstance(out, dict):
    raise CheckpointError(f'{what} {path} does not hold a mapping')
  return out


def _flatten_pe(cfg: Mapping[str, Any]) -> dict:
  """The PE keys, top level or under a `PE`/`MODEL` group."""
  flat = dict(cfg)
  for group in ('PE', 'MODEL'):
    sub = cfg.get(group)
    if isinstance(sub, Mapping):
      flat.update({k: v for k, v in sub.items() if k.startswith(('PE_', 'SEQPE_', 'USE_PE'))
                   and k not in flat})
  return flat


def read_official(official: str | pathlib.Path, task: str, *, pe_config: str = '',
                  model_config: str = '') -> tuple[dict, dict, dict, dict]:
  """`(model_state, pe_state, pe_config, model_config)` from an official run directory."""
  d = pathlib.Path(official)
  if not d.is_dir():
    raise CheckpointError(f'--official={d} is not a directory')
  if task == 'lm':
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise CheckpointError('reading .safetensors needs the safetensors package '
                            '(pip install -r requirements.txt)') from None
    states = []
    for name in ('model.safetensors', 'model_1.safetensors'):
      if not (d / name).is_file():
        raise CheckpointError(f'{d / name} not found (the accelerate save_state layout: '
                              'model.safetensors = GPT-2, model_1.safetensors = SeqPE)')
      try:
        states.append(load_file(str(d / name)))
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(f'{d / name} is not a readable safetensors file '
                              f'({str(e)[:100]})') from None
    pe_cfg = _read_json(pathlib.Path(pe_config) if pe_config else d / 'pe_config.json',
                        'PE config')
    model_cfg = _read_json(pathlib.Path(model_config) if model_config else d / 'config.json',
                           'GPT-2 config (a Hugging Face config.json; pass --model_config)')
    return states[0], states[1], _flatten_pe(pe_cfg), model_cfg
  path = d / 'best_model.pth'
  ckpt = load_torch_checkpoint(path)
  if not isinstance(ckpt, Mapping) or 'model' not in ckpt or 'pe_model' not in ckpt:
    raise CheckpointError(f'{path} has no "model" and "pe_model" entries')
  if pe_config or (d / 'pe_config.json').is_file():
    pe_cfg = _read_json(pathlib.Path(pe_config) if pe_config else d / 'pe_config.json',
                        'PE config')
  elif isinstance(ckpt.get('config'), Mapping):
    pe_cfg = dict(ckpt['config'])  # the pickled yacs config's plain items
  else:
    raise CheckpointError(f'no PE config: put pe_config.json in {d} or pass --pe_config')
  model_cfg = _read_json(pathlib.Path(model_config) if model_config else d / 'vit_config.json',
                         'ViT sizes (timm: patch_size, embed_dim, depth, num_heads, '
                         'num_classes, img_size; pass --model_config)')
  return dict(ckpt['model']), dict(ckpt['pe_model']), _flatten_pe(pe_cfg), model_cfg


def _seqpe_section(pe) -> dict:
  names = ('apply', 'pe_qk', 'multi_head', 'scalar_scale', 'scalar_form', 'max_digits', 'width',
           'heads', 'layers', 'out_dim', 'causal', 'dropout', 'attn_dropout', 'final_ln',
           'temperature', 'mask_padding', 'share_prefixes')
  return {n: getattr(pe, n) for n in names}


def run_config(task: str, module, pe_config: Mapping[str, Any], *, image_size: int = 0):
  """A full run config (defaults of configs/lm_wikitext2.py or vit_cifar10.py) for `module`."""
  root = pathlib.Path(__file__).resolve().parents[1]
  if str(root) not in sys.path:
    sys.path.append(str(root))
  from configs import common, lm_wikitext2, vit_cifar10  # pylint: disable=g-import-not-at-top
  cfg, pe = module.cfg, module.pe
  capacity = 10 ** pe.max_digits
  max_pos = int(pe_config.get('PE_MAX_POSITION') or capacity)
  if task == 'lm':
    c = lm_wikitext2.get_config()
    c.model.update(num_layers=cfg.num_layers, width=cfg.width, num_heads=cfg.num_heads,
                   mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
                   tie_embeddings=cfg.tie_embeddings, ln_eps=cfg.ln_eps,
                   gelu_approximate=cfg.gelu_approximate)
    if cfg.vocab_size == 50257:  # the released models: GPT-2 BPE on raw WikiText-103
      c.data.update(name='wikitext-103-raw', tokenizer='gpt2')
    elif cfg.vocab_size != 256:  # the bytes tokenizer has 256 ids
      c.data.update(tokenizer='sentencepiece', vocab_size=cfg.vocab_size)
  else:
    c = vit_cifar10.get_config(f'size={image_size}')
    c.model.update(patch_size=cfg.patch_size, num_layers=cfg.num_layers, width=cfg.width,
                   num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
                   attn_dropout=cfg.attn_dropout, ln_eps=cfg.ln_eps,
                   gelu_approximate=cfg.gelu_approximate)
    max_pos = math.isqrt(max_pos)  # the official 2-D range is per axis: sqrt(PE_MAX_POSITION)
  c.pe = common.pe_config('seqpe', **_seqpe_section(pe))
  c.aux.max_position = min(max_pos, capacity)
  return c


def _apply_override(c, item: str) -> None:
  key, eq, raw = item.partition('=')
  if not eq:
    raise ConfigError(f'--override={item!r} must be key=value, e.g. data.name=wikitext-103')
  node, parts = c, key.split('.')
  for part in parts[:-1]:
    if part not in node:
      raise ConfigError(f'--override: unknown config key {key}')
    node = node[part]
  if parts[-1] not in node:
    raise ConfigError(f'--override: unknown config key {key}')
  old = node[parts[-1]]
  if isinstance(old, bool):
    value: Any = raw.lower() in ('1', 'true', 'yes')
  elif isinstance(old, (int, float, str)):
    value = type(old)(raw)
  else:
    import ast  # pylint: disable=g-import-not-at-top
    value = ast.literal_eval(raw)
  node[parts[-1]] = value


def convert(official: str, task: str, workdir: str, *, overrides: tuple[str, ...] = (),
            pe_config: str = '', model_config: str = '') -> pathlib.Path:
  """Converts an official run directory into a new run directory of ours.

  Writes `<workdir>/checkpoints/0` (orbax: params + fresh optimizer state, as
  `train.create_train_state` makes them) and `<workdir>/config.json`.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from seqpe_jax import checkpoint, optim, sharding  # pylint: disable=g-import-not-at-top
  from seqpe_jax.tasks import Task  # pylint: disable=g-import-not-at-top
  from seqpe_jax.train import create_train_state  # pylint: disable=g-import-not-at-top
  if task not in ('lm', 'vit'):
    raise ConfigError(f'--task={task!r}: use lm or vit')
  out = pathlib.Path(workdir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise CheckpointError(f'--workdir={out} exists and is not empty; give a new run directory')
  model_state, pe_state, pe_cfg, model_cfg = read_official(
      official, task, pe_config=pe_config, model_config=model_config)
  if task == 'lm':
    module, variables = load_official_gpt2(model_state, pe_state, pe_config=pe_cfg,
                                           gpt2_config=model_cfg)
    config = run_config(task, module, pe_cfg)
  else:
    module, variables = load_official_vit(model_state, pe_state, pe_config=pe_cfg,
                                          vit_config=model_cfg)
    _, size, chans, _ = official_vit_config(model_cfg)
    config = run_config(task, module, pe_cfg, image_size=size)
  for item in overrides:
    _apply_override(config, item)
  if task == 'lm':
    run_task = Task(config, vocab_size=module.cfg.vocab_size)
  else:
    run_task = Task(config, num_classes=module.cfg.num_classes, channels=chans)
  if (run_task.model.cfg != module.cfg or run_task.pe.type != 'seqpe'
      or _seqpe_section(run_task.pe) != _seqpe_section(module.pe)):
    raise ConfigError('--override changed the model or PE settings; only data, train, eval, '
                      'optim and aux settings may be overridden')
  mesh = sharding.make_mesh(config.mesh)
  tx, _ = optim.build_optimizer(config.optim, int(config.train.steps))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    state, shardings = create_train_state(run_task, tx, mesh, jax.random.PRNGKey(0))
    want = jax.tree.map(lambda x: (x.shape, x.dtype), state.params)
    got = jax.tree.map(lambda x: (np.shape(x), np.dtype(np.float32)), variables['params'])
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
      raise CheckpointError('the converted parameters do not fit the run config (converter bug)')
    params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s),
                          variables['params'], shardings.params)
    state = state.replace(params=params)
  out.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.Checkpointer(out, every=1, keep=1, async_save=False)
  try:
    ckpt.save(0, state, None, force=True)
    ckpt.wait()
  finally:
    ckpt.close_quietly()
  checkpoint.write_config(out, config)
  return out


def _main() -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  from seqpe_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(
      prog='python -m seqpe_jax.convert',
      description='Convert an official SeqPE checkpoint (GPT-2 or ViT) into a run directory.')
  ap.add_argument('--official', required=True, help='official run directory')
  ap.add_argument('--task', required=True, choices=('lm', 'vit'))
  ap.add_argument('--workdir', required=True, help='new run directory to write')
  ap.add_argument('--pe_config', default='', help='PE config (default <official>/pe_config.json)')
  ap.add_argument('--model_config', default='',
                  help='GPT-2 HF config.json / ViT sizes json (default <official>/config.json '
                       'for lm, <official>/vit_config.json for vit)')
  ap.add_argument('--override', action='append', default=[],
                  help='key=value of the written config, e.g. data.name=wikitext-103 (repeat)')
  a = ap.parse_args()
  try:
    out = convert(a.official, a.task, a.workdir, overrides=tuple(a.override),
                  pe_config=a.pe_config, model_config=a.model_config)
  except UserError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  print(f'wrote {out}/checkpoints/0 and {out}/config.json; evaluate with\n'
        f'  python -m seqpe_jax.main --config=configs/from_workdir.py:{out} --workdir={out} '
        '--mode=eval', flush=True)


if __name__ == '__main__':
  _main()
