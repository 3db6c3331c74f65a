"""Load the official PyTorch SeqPE encoder weights into `SeqPEEncoder`.

The official `SequentialPE` state_dict (see `../shared/parity/README.md`):

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

Keys may carry a prefix (e.g. `module.pe_encoder.`); it is detected and stripped.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from seqpe_jax.errors import CheckpointError
from seqpe_jax.seqpe import SeqPEEncoder

_ANCHOR = 'token_of_seqpe_embed.weight'


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  anchors = [k for k in state_dict if k.endswith(_ANCHOR)]
  if len(anchors) != 1:
    raise CheckpointError(
        f'expected exactly one "{_ANCHOR}" in the state_dict, found {len(anchors)}')
  prefix = anchors[0][:-len(_ANCHOR)]
  return {k[len(prefix):]: np.asarray(v, dtype=np.float32)
          for k, v in state_dict.items() if k.startswith(prefix)}


def _ln(sd: dict[str, np.ndarray], name: str) -> dict:
  return {'ln': {'scale': sd[f'{name}.weight'], 'bias': sd[f'{name}.bias']}}


def _dense(sd: dict[str, np.ndarray], name: str, transpose: bool = False) -> dict:
  w = sd[f'{name}.weight']
  return {'kernel': w.T if transpose else w, 'bias': sd[f'{name}.bias']}


def load_official_seqpe(state_dict: Mapping[str, Any], *, data_dim: int, max_digits: int,
                        width: int, heads: int, layers: int, out_dim: int,
                        **encoder_kwargs) -> tuple[SeqPEEncoder, dict]:
  """Builds `(module, variables)` from an official SeqPE state_dict.

  `module.apply(variables, positions_Mxd)` (deterministic by default) returns
  the encoder output `[M, out_dim]`. Extra keyword arguments go to
  `SeqPEEncoder` (e.g. `causal=False` for a bidirectional checkpoint).
  """
  sd = _strip_prefix(state_dict)
  dh = width // heads
  module = SeqPEEncoder(data_dim=data_dim, max_digits=max_digits, width=width,
                        num_heads=heads, num_layers=layers, out_dim=out_dim, **encoder_kwargs)
  try:
    params: dict[str, Any] = {
        'token_embed': sd['token_of_seqpe_embed.weight'],
        'digit_pos_embed': sd['pos_of_seqpe_embed.weight'],
        'cls_embed': sd['cls_token_embed'].reshape(width),
        'ln_f': _ln(sd, 'layernorm'),
        'out_proj': _dense(sd, 'out_proj', transpose=True),
    }
    if data_dim > 1:
      params['axis_embed'] = sd['dim_token_embed'].reshape(data_dim, width)
    for i in range(layers):
      p = f'transformers.{i}'
      qkv = _dense(sd, f'{p}.attn.c_attn')
      out = _dense(sd, f'{p}.attn.c_proj')
      params[f'block_{i}'] = {
          'ln_1': _ln(sd, f'{p}.layernorm_1'),
          'ln_2': _ln(sd, f'{p}.layernorm_2'),
          'attn': {
              # GPT-2 fuses q|k|v along the output axis, heads contiguous inside each.
              'qkv': {'kernel': qkv['kernel'].reshape(width, 3, heads, dh),
                      'bias': qkv['bias'].reshape(3, heads, dh)},
              'out': {'kernel': out['kernel'].reshape(heads, dh, width), 'bias': out['bias']},
          },
          'mlp': {'fc': _dense(sd, f'{p}.mlp.c_fc'), 'proj': _dense(sd, f'{p}.mlp.c_proj')},
      }
  except KeyError as e:
    raise CheckpointError(f'official SeqPE state_dict is missing {e.args[0]!r}') from None
  except ValueError as e:  # reshape of a wrong-sized tensor
    raise CheckpointError(f'official SeqPE weights do not match the given shape '
                          f'arguments: {e}') from None
  expected = {'token_embed': (module.base, width),
              'digit_pos_embed': (data_dim * max_digits, width),
              'out_proj/kernel': (width, out_dim)}
  got = {'token_embed': params['token_embed'].shape,
         'digit_pos_embed': params['digit_pos_embed'].shape,
         'out_proj/kernel': params['out_proj']['kernel'].shape}
  for k, shape in expected.items():
    if got[k] != shape:
      raise CheckpointError(f'official SeqPE {k} has shape {got[k]}, expected {shape} '
                            f'for data_dim={data_dim}, max_digits={max_digits}, '
                            f'width={width}, out_dim={out_dim}')
  return module, {'params': params}
