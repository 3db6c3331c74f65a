r"""Entry point: train and/or evaluate a config.

  python -m seqpe_jax.main --config=configs/lm_wikitext2.py --workdir=runs/wt2 \
      [--config.pe.type=rope] [--config.train.steps=2000] [--mode=train|eval]

User mistakes (bad config, missing data, positions past the SeqPE capacity,
incompatible checkpoints, ...) print one line and exit with code 2 before
anything is written. SIGTERM checkpoints and exits with 75; a NaN/Inf stops
with 3. Set `--distributed` (or SEQPE_DISTRIBUTED=1) on multi-host TPU pods /
SLURM to call `jax.distributed.initialize()` first.
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, results).')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                          'train (resumes, then evaluates) or eval (latest checkpoint only).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', os.environ.get('SEQPE_DISTRIBUTED') == '1',
                                 'Call jax.distributed.initialize() (multi-host).')


def _fail(message: str, code: int) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(code)


def build_run(config, workdir: str):
  """Validates everything, loads data, builds task/optimizer; writes nothing."""
  import jax

  from seqpe_jax import evaluate, optim, sharding
  from seqpe_jax.checkpoint import check_compatible
  from seqpe_jax.data import text, vision
  from seqpe_jax.errors import ConfigError
  from seqpe_jax.tasks import Task
  from seqpe_jax.train import Run

  if config.task not in ('lm', 'vit'):
    raise ConfigError(f'unknown task {config.task!r}; use lm or vit')
  t = config.train
  for key in ('steps', 'batch_size', 'log_every', 'checkpoint_every'):
    if int(t[key]) < 1:
      raise ConfigError(f'train.{key} must be positive, got {t[key]}')
  mesh = sharding.make_mesh(config.mesh)
  dp = sharding.data_parallel_size(mesh)
  accum = int(t.get('grad_accum', 1))
  if int(t.batch_size) % (dp * accum) or int(t.batch_size) % jax.process_count():
    raise ConfigError(f'train.batch_size={t.batch_size} must be divisible by the data-parallel '
                      f'devices ({dp}) x grad_accum ({accum}) and by the process count')
  if t.get('nonfinite', 'stop') not in ('stop', 'skip'):
    raise ConfigError(f"train.nonfinite must be stop or skip, got {t.nonfinite!r}")
  local_batch = int(t.batch_size) // jax.process_count()
  seed = int(config.seed)
  pidx, pcount = jax.process_index(), jax.process_count()
  if config.task == 'lm':
    data = text.build_lm_data(config.data, seq_len=int(t.seq_len), batch_size=local_batch,
                              seed=seed, process_index=pidx, process_count=pcount)
    task = Task(config, vocab_size=data.tokenizer.vocab_size)
  else:
    data = vision.build_image_data(config.data, image_size=int(t.image_size),
                                   batch_size=local_batch, seed=seed, process_index=pidx,
                                   process_count=pcount)
    task = Task(config, num_classes=data.num_classes, channels=data.channels)
  evaluate.check_eval_config(task, config)
  tx, lr_fn = optim.build_optimizer(config.optim, int(t.steps))
  ckpt_dir = pathlib.Path(workdir) / 'checkpoints'
  has_ckpt = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
  check_compatible(workdir, config, has_ckpt)
  return Run(config, pathlib.Path(workdir), task, mesh, data, tx, lr_fn)


def validate_config_early(config) -> None:
  """Checks that need no data (PE type, heads, ...) before the data is loaded."""
  from seqpe_jax import posenc
  from seqpe_jax.errors import ConfigError
  pe = posenc.PEConfig.from_config(config.pe)
  pe.validate(1 if config.task == 'lm' else 2,
              posenc.LM_PE_TYPES if config.task == 'lm' else posenc.VIT_PE_TYPES)
  m = config.model
  if int(m.width) % int(m.num_heads):
    raise ConfigError(f'model.width={m.width} is not divisible by model.num_heads={m.num_heads}')


def main(argv) -> None:
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # keep the console to the progress bar
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize()
  from seqpe_jax.errors import UserError
  from seqpe_jax.train import NonFiniteError, Preempted, evaluate_run, restore_params, train

  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    if config is None:
      raise UserError('--config is required, e.g. --config=configs/lm_wikitext2.py')
    if not workdir:
      raise UserError('--workdir is required, e.g. --workdir=runs/wt2')
    validate_config_early(config)
    run = build_run(config, workdir)
    run.workdir.mkdir(parents=True, exist_ok=True)
    if _MODE.value == 'train':
      state, step = train(run)
      params = state.params
    else:
      params, step = restore_params(run)
    report = evaluate_run(run, params)
  except UserError as e:
    _fail(str(e).splitlines()[0], e.exit_code)
  except (Preempted, NonFiniteError) as e:
    _fail(str(e), e.exit_code)
  from seqpe_jax.evaluate import markdown_table
  import jax
  if jax.process_index() == 0:
    print(f'\nstep {step}: extrapolation results (also in {run.workdir}/extrapolation.md)\n')
    print(markdown_table(report), flush=True)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a one-line error and exit code 2 for user mistakes."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0], 2)
  except (ValueError, KeyError, AttributeError, TypeError, OSError, SyntaxError) as e:
    _fail(f'invalid --config: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}', 2)
  return []


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
