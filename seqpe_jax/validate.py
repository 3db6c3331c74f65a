"""One validation pass over the run-level config sections, before anything is written.

`check_config(config)` checks `train`, `optim`, `mesh`, `data` and the checkpoint fields
(`eval.checkpoint`): every enum, numeric range, probability and path, each
failure one `ConfigError` line (main: `error: ...`, exit 2). It reads no data and
touches no file. Model / PE / regulariser / evaluation fields are checked where they are
consumed (`main.validate_config_early`, the task, `evaluate.check_eval_config`); the
checks that need the device count (mesh sizes, batch divisibility) run in `main.build_run`.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import ml_collections

from seqpe_jax.errors import ConfigError, check_choice

SCHEDULES = ('cosine', 'linear', 'constant')
NONFINITE = ('stop', 'skip')
EVAL_CHECKPOINTS = ('latest', 'best')
TOKENIZERS = ('bytes', 'sentencepiece', 'gpt2')
SPM_MODEL_TYPES = ('unigram', 'bpe', 'char', 'word')
FLIP = ('auto', 'on', 'off')
MESH_AXES = ('data', 'fsdp', 'tensor')


# ---------------------------------------------------------------------------- primitives

def _number(section: ml_collections.ConfigDict, name: str, key: str, kind: type = float):
  try:
    return kind(section[key])
  except (TypeError, ValueError):
    raise ConfigError(f'{name}.{key} must be a{"n integer" if kind is int else " number"}, '
                      f'got {section[key]!r}') from None


def _at_least(section, name: str, key: str, lo: float, kind: type = int) -> None:
  v = _number(section, name, key, kind)
  if v < lo:
    bound = 'positive' if lo == 1 and kind is int else f'>= {lo}'
    raise ConfigError(f'{name}.{key} must be {bound}, got {section[key]}')


def _in_range(section, name: str, key: str, lo: float, hi: float, *, lo_open: bool = False,
              hi_open: bool = False) -> None:
  v = _number(section, name, key)
  if (v <= lo if lo_open else v < lo) or (v >= hi if hi_open else v > hi):
    raise ConfigError(f'{name}.{key} must lie in {"(" if lo_open else "["}{lo}, {hi}'
                      f'{")" if hi_open else "]"}, got {section[key]}')


def _choice(section, name: str, key: str, choices: Sequence[str]) -> None:
  check_choice(f'{name}.{key}', section[key], tuple(choices))


def _directory(value: str, what: str) -> None:
  """A configured directory must exist ('' is the documented default)."""
  if value and not pathlib.Path(value).expanduser().is_dir():
    raise ConfigError(f'{what}={value} is not a directory')


# ---------------------------------------------------------------------------- sections

def check_train(t: ml_collections.ConfigDict) -> None:
  for key in ('steps', 'batch_size', 'grad_accum', 'log_every', 'checkpoint_every',
              'keep_checkpoints'):
    _at_least(t, 'train', key, 1)
  _at_least(t, 'train', 'eval_every', 0)
  if int(t.batch_size) % int(t.grad_accum):
    raise ConfigError(f'train.batch_size={t.batch_size} must be divisible by '
                      f'train.grad_accum={t.grad_accum}')
  _choice(t, 'train', 'nonfinite', NONFINITE)
  if t.keep_best and not int(t.eval_every):
    raise ConfigError('train.keep_best needs train.eval_every > 0 (validation picks the best)')
  for key in ('seq_len', 'image_size'):  # the task's training size
    if key in t:
      _at_least(t, 'train', key, 1)
  if 'label_smoothing' in t:
    _in_range(t, 'train', 'label_smoothing', 0.0, 1.0, hi_open=True)


def check_optim(o: ml_collections.ConfigDict) -> None:
  if _number(o, 'optim', 'lr') <= 0:
    raise ConfigError(f'optim.lr must be positive, got {o.lr}')
  for key in ('pe_lr', 'weight_decay', 'pe_weight_decay', 'clip_norm', 'pe_clip_norm'):
    _at_least(o, 'optim', key, 0.0, float)
  _at_least(o, 'optim', 'warmup_steps', 0)
  _at_least(o, 'optim', 'decay_steps', 0)
  if not 0.0 <= _number(o, 'optim', 'warmup_init_lr') <= float(o.lr):
    raise ConfigError(f'optim.warmup_init_lr must lie in [0, optim.lr={o.lr}], got '
                      f'{o.warmup_init_lr}')
  _choice(o, 'optim', 'schedule', SCHEDULES)
  _in_range(o, 'optim', 'min_lr_ratio', 0.0, 1.0)
  for key in ('b1', 'b2'):
    _in_range(o, 'optim', key, 0.0, 1.0, hi_open=True)
  if _number(o, 'optim', 'eps') <= 0:
    raise ConfigError(f'optim.eps must be positive, got {o.eps}')


def check_mesh(m: ml_collections.ConfigDict) -> None:
  sizes = {a: _number(m, 'mesh', a, int) for a in MESH_AXES}
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ConfigError(f'mesh axes must be positive or -1, got {sizes}')
  if list(sizes.values()).count(-1) > 1:
    raise ConfigError(f'at most one mesh axis may be -1, got {sizes}')
  _at_least(m, 'mesh', 'num_devices', 0)


def check_checkpointing(config: ml_collections.ConfigDict) -> None:
  _choice(config.eval, 'eval', 'checkpoint', EVAL_CHECKPOINTS)
  if config.eval.checkpoint == 'best' and not config.train.keep_best:
    raise ConfigError('eval.checkpoint=best needs train.keep_best=True (and train.eval_every > 0)')
  # `init_from` is checked by `checkpoint.check_init_from` in `main.build_run` (only a fresh
  # run reads it: a resumed fine-tuning run must not need the source run any more).


def _check_data_common(data_cfg: ml_collections.ConfigDict) -> None:
  _at_least(data_cfg, 'data', 'num_workers', 0)
  for key in ('max_train_examples', 'max_eval_examples'):
    _at_least(data_cfg, 'data', key, 0)
  if data_cfg.dir:  # a missing data dir: the loader's one-line DataError, now
    from seqpe_jax.data import common  # pylint: disable=g-import-not-at-top
    common.resolve_data_dir(data_cfg.dir)
  cache = pathlib.Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else None
  if cache is not None and cache.exists() and not cache.is_dir():
    raise ConfigError(f'data.cache_dir={data_cfg.cache_dir} exists and is not a directory')
  if not str(data_cfg.eval_split):
    raise ConfigError('data.eval_split must name a split, got an empty string')
  tfds = str(data_cfg.name).startswith('tfds:')
  if tfds and not str(data_cfg.name)[len('tfds:'):]:
    raise ConfigError("data.name=tfds: needs a dataset name, e.g. 'tfds:wikitext103'")
  if data_cfg.tfds_data_dir and not tfds:
    raise ConfigError(f'data.tfds_data_dir is only read with data.name=tfds:<name> (got '
                      f'data.name={data_cfg.name!r}); clear it')
  _directory(data_cfg.tfds_data_dir, 'data.tfds_data_dir')


def _data_file(data_cfg: ml_collections.ConfigDict, value: str, what: str) -> None:
  """A file of the config: absolute, or relative to the data directory."""
  from seqpe_jax.data import common  # pylint: disable=g-import-not-at-top
  path = common.resolve_path(value, data_cfg.dir)  # a missing data dir: one-line DataError
  if not path.is_file():
    raise ConfigError(f'{what}: {path} is not a file')


def check_lm_data(data_cfg: ml_collections.ConfigDict) -> None:
  """`data` of a language-modelling run (corpus, tokenizer, QA fine-tuning source)."""
  from seqpe_jax.data import qa, text  # pylint: disable=g-import-not-at-top
  _check_data_common(data_cfg)
  name = str(data_cfg.name)
  if name not in text.CORPORA and not name.startswith('tfds:'):
    raise ConfigError(f'data.name must be one of {", ".join(text.CORPORA)} or '
                      f'tfds:<name>, got {name!r}')
  for key in ('train_files', 'eval_files'):
    if data_cfg[key] and name != 'files':
      raise ConfigError(f'data.{key} is only read with data.name=files (got data.name={name!r});'
                        f' set data.name=files or clear data.{key}')
  if name == 'files' and not data_cfg.train_files:
    raise ConfigError('data.name=files needs data.train_files (comma-separated text files; '
                      'they also train the tokenizer)')
  for key in ('train_files', 'eval_files'):
    for p in filter(None, (s.strip() for s in data_cfg[key].split(','))):
      _data_file(data_cfg, p, f'data.{key}')
  if not name.startswith('tfds:'):
    for key in ('max_train_examples', 'max_eval_examples'):
      if int(data_cfg[key]):
        raise ConfigError(f'data.{key} is only read with data.name=tfds:<name> for text '
                          f'(got data.name={name!r}); use eval.max_tokens, or set it to 0')
  _choice(data_cfg, 'data', 'tokenizer', TOKENIZERS)
  _at_least(data_cfg, 'data', 'vocab_size', 1)
  _choice(data_cfg, 'data', 'spm_model_type', SPM_MODEL_TYPES)
  if bool(data_cfg.bpe_vocab) != bool(data_cfg.bpe_merges):
    raise ConfigError('data.bpe_vocab and data.bpe_merges must be set together')
  for key in ('bpe_vocab', 'bpe_merges'):
    if data_cfg[key] and data_cfg.tokenizer != 'gpt2':
      raise ConfigError(f'data.{key} is only read with data.tokenizer=gpt2 (got '
                        f'{data_cfg.tokenizer!r}); clear it')
    if data_cfg[key]:
      _data_file(data_cfg, data_cfg[key], f'data.{key}')
  qa.SFTConfig.from_config(data_cfg.sft)  # source, counts, jsonl file named


def check_image_data(data_cfg: ml_collections.ConfigDict) -> None:
  """`data` of an image-classification run (source, augmentation recipe, eval transform)."""
  from seqpe_jax.data import augment, vision  # pylint: disable=g-import-not-at-top
  _check_data_common(data_cfg)
  name = str(data_cfg.name)  # a folder:<path> is read (and its absence reported) by the loader
  if not name.startswith(('folder:', 'tfds:')) and name not in ('mnist', 'cifar10'):
    raise ConfigError(f"data.name must be mnist, cifar10, folder:<path> or tfds:<name>, got "
                      f'{name!r}')
  _choice(data_cfg, 'data', 'recipe', vision.RECIPES)
  _choice(data_cfg, 'data', 'eval_transform', vision.EVAL_TRANSFORMS)
  _choice(data_cfg, 'data', 'flip', FLIP)
  augment.AugmentConfig.from_config(data_cfg.timm)  # probabilities, ranges, RandAugment string


def check_config(config: ml_collections.ConfigDict) -> None:
  """All checks of the run-level sections; raises the first `ConfigError`."""
  from seqpe_jax.tasks import kind_of  # pylint: disable=g-import-not-at-top
  kind = kind_of(config.task)  # the task kind owns its data check
  try:
    check_train(config.train)
    check_optim(config.optim)
    check_mesh(config.mesh)
    check_checkpointing(config)
    kind.check_data_config(config.data)
  except (AttributeError, KeyError) as e:  # a config built in Python without a field
    raise ConfigError(f'config lacks a field: {_missing(e)}') from None


def _missing(e: BaseException) -> Any:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__
