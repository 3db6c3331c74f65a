"""Shared config pieces: `parse_arg` (big_vision style) and the common sections."""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses `'key=value,flag'` after the colon of `--config=path.py:<arg>`.

  Values take the type of their default in `spec`; a bare `name` sets a bool
  to True; a bare value with no `=` sets the first key of `spec`.
  """
  out = ml_collections.ConfigDict(spec)
  if not arg:
    return out
  first = next(iter(spec))
  for item in filter(None, (s.strip() for s in arg.split(','))):
    key, eq, val = item.partition('=')
    if not eq:
      if key in spec and isinstance(spec[key], bool):
        out[key] = True
        continue
      key, val = first, item
    if key not in spec:
      raise ValueError(f'unknown config argument {key!r}; known: {", ".join(spec)}')
    default = spec[key]
    out[key] = (val.lower() in ('1', 'true', 'yes')) if isinstance(default, bool) else type(default)(val)
  return out


def pe_config(type_: str = 'seqpe', **seqpe: Any) -> ml_collections.ConfigDict:
  """The `config.pe` section: the type plus one option group per registered PE type.

  Each group is the type's `Options` dataclass (fields, defaults and their
  comments live there: `seqpe_jax/posenc.py`, `seqpe_jax/relbias.py`), so a new
  registered PE needs no edit here. `seqpe` overrides the SeqPE group's defaults.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  from seqpe_jax import posenc  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {'type': type_}  # one of posenc.names(): LM 1-D, ViT 2-D types
  for name, cls in posenc.registered().items():
    if cls.Options is not posenc.NoOptions:
      out[name] = dataclasses.asdict(cls.Options())
  out['seqpe'].update(seqpe)
  return ml_collections.ConfigDict(out)


def aux_config(**overrides: Any) -> ml_collections.ConfigDict:
  """SeqPE regularisers and random shifts (`config.aux`); text defaults (method doc §4-6)."""
  return ml_collections.ConfigDict({
      'contrastive_weight': 0.1,   # lambda_delta
      'ood_weight': 0.1,           # lambda_OOD
      'weight_warmup_steps': 0,    # linear warm-up of both lambdas (0: constant)
      'max_position': 10000,       # per-axis range [0, P) of pivots, candidates, OOD students, shifts
      'num_pivots': 16,            # contrastive pivots per step (B_ct)
      'num_candidates': 32,        # candidates per pivot (K)
      'mode_probs': (0.0, 0.4, 0.6),  # candidate modes: random / digit-edit hard negatives / window
      'hard_ratio': 0.25,          # hard negatives = int(hard_ratio * K)
      'window': 256,               # window side for the window mode
      'ood_items': 16,             # OOD distillation items per step (B_t)
      'ood_points': 32,            # positions per item (n_t)
      'ood_min_offset': -1,        # 1-D smallest student shift; -1: train length // 4 (official)
      'ood_heads': 0,              # heads of the per-head KL; 0: the encoder's heads
      'ood_beta': 1.0,             # beta of the symmetric KL (1: teacher always detached)
      'shift_rate': 0.1,           # probability of a random-shift step
      'shift_pool': 320,           # fixed pool of start offsets (0: all offsets)
      'shift_sets': 16,            # position sets on a shifted step (B_pe); must divide the batch
      'counts_per_device': False,  # num_pivots / ood_items / shift_sets per data-parallel device
                                   # (x the data-parallel size, as the official per-GPU samplers)
      'encoder_remat': 'auto',     # the step's encoder call in the backward: auto | full (recompute)
                                   # | dots (keep matmul outputs) | none (keep all); same gradients
      **overrides,
  })


def optim_config(**overrides: Any) -> ml_collections.ConfigDict:
  """AdamW with warm-up + decay, separate clipping/LR/decay for the SeqPE encoder."""
  return ml_collections.ConfigDict({
      'lr': 2e-3,              # peak learning rate
      'pe_lr': 0.0,            # SeqPE encoder peak LR (0: same as lr)
      'warmup_steps': 50,      # linear warm-up from warmup_init_lr
      'warmup_init_lr': 0.0,   # LR at step 0 of the warm-up (timm's warmup_lr_init)
      'schedule': 'cosine',    # cosine | linear | constant (after warm-up)
      'min_lr_ratio': 0.1,     # final LR as a fraction of the peak
      'decay_steps': 0,        # schedule length (0: train.steps); fix it to extend a run later
      'weight_decay': 0.0,     # backbone AdamW decay (never on norms, biases, embeddings)
      'pe_weight_decay': 0.0,  # SeqPE encoder decay
      'b1': 0.9,
      'b2': 0.99,
      'eps': 1e-8,
      'clip_norm': 1.0,        # global-norm clip of the backbone gradients (0: off)
      'pe_clip_norm': 1.0,     # separate global-norm clip of the SeqPE encoder gradients
      **overrides,
  })


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Device mesh axes; -1 takes the remaining devices. data*fsdp*tensor = #devices."""
  return ml_collections.ConfigDict({
      'data': data,         # data parallel
      'fsdp': fsdp,         # data parallel with parameters/optimizer state sharded (FSDP)
      'tensor': tensor,     # tensor parallel: heads and MLP width split
      'num_devices': 0,     # use the first N devices (single host; 0: all)
  })


def evals_config(**entries: dict) -> ml_collections.ConfigDict:
  """Extra evaluations (`config.evals.<name>`), none by default.

  Each entry is `{'type': <registered evaluator>, 'every': <steps; 0: only at the end>,
  ...its fields}`; fields of a built-in evaluator override its `config.eval.*`.
  """
  return ml_collections.ConfigDict(entries)
